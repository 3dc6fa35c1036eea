"""Helpers the tests share: real worker processes, a TCP proxy that can fail, waiting."""

"""Reusable Dramatiq middleware: fleet-wide quota, semaphore and circuit breaker."""

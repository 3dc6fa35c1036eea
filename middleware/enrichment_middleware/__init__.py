"""Reusable Dramatiq middleware: fleet-wide quota, semaphore, circuit breaker, pause and pacing."""

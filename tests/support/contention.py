"""A CPU hog for the tests' own process: threads of busy arithmetic while a block runs.

Contention bugs hide on an idle machine: a step that takes microseconds there
takes a whole GIL switch interval (5 ms) or more when a thread is parsing a
large body next to it. Worker processes get theirs from :mod:`tests.support.hog`.

Examples:
  >>> with cpu_hog(threads=2):
  ...     pass
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


def spin(stop: threading.Event | None = None) -> None:
    """Busy arithmetic until ``stop`` is set (forever without one): a pure-Python loop, as JSON parsing is."""
    total = 0
    while stop is None or not stop.is_set():
        for i in range(10_000):
            total = (total + i * i) % 1_000_003


@contextmanager
def cpu_hog(threads: int = 1) -> Iterator[None]:
    """Run ``threads`` hog threads in this process while the block runs; they stop when it ends."""
    stop = threading.Event()
    hogs = [
        threading.Thread(target=spin, args=(stop,), name=f"cpu-hog-{i}", daemon=True) for i in range(threads)
    ]
    for hog in hogs:
        hog.start()
    try:
        yield
    finally:
        stop.set()
        for hog in hogs:
            hog.join()

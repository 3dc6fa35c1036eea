"""A CPU hog for worker processes: threads that do busy arithmetic beside the worker threads.

Contention bugs hide on an idle machine: a step that takes microseconds
there takes a whole GIL switch interval (5 ms) or more when a thread is
parsing a large body next to it. Loaded as one more module of the
``dramatiq`` CLI (``dramatiq enrichment_actors.worker:build tests.support.hog``), this
starts, in each worker process, ``CPU_HOG_THREADS`` daemon threads (default
1) that compute without pause and without ever releasing the GIL by
themselves, so the worker threads, the parking releaser and the heartbeat
all compete with them. ``CPU_HOG_THREADS=0`` loads it and starts none.

The hog never stops by itself: it is a daemon thread, and ends with its
process. The tests' own process gets its hog from :mod:`tests.support.contention`.

Examples:
  >>> WorkerProcesses(env, modules=["tests.support.hog"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import threading

from tests.support.contention import spin

#: The environment variable saying how many hog threads each process runs.
ENV = "CPU_HOG_THREADS"


def start(threads: int) -> list[threading.Thread]:
    """Start ``threads`` hog threads in this process; returns them."""
    started = [threading.Thread(target=spin, name=f"cpu-hog-{i}", daemon=True) for i in range(threads)]
    for thread in started:
        thread.start()
    return started


def _threads_from_env() -> int:
    text = os.environ.get(ENV, "1")
    try:
        threads = int(text)
    except ValueError:
        threads = -1
    if threads < 0:
        raise ValueError(f"{ENV}={text!r} is not understood: give the number of hog threads (0 or more).")
    return threads


HOGS = start(_threads_from_env())
# Said once per process, so that a test can tell the hog really runs beside its workers.
logging.getLogger(__name__).info("CPU hog: %d threads started in this process.", len(HOGS))

"""Clocks for a backend that keeps time in this process: the system clock, or a hand-moved one in tests.

Policies take their time from their backend, the one clock of the fleet
(:meth:`~enrichment_middleware.backends.base.Backend.now`; on Redis, the server's
``TIME``).  :class:`~enrichment_middleware.backends.memory.MemoryBackend` takes a
``clock`` so that windows, leases and cooldowns can be tested exactly and
instantly: a test moves a :class:`ManualClock` to 23:59:59.999 instead of
waiting for midnight.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the current time as epoch seconds."""

    def now(self) -> float:
        """Return the current time in seconds since the epoch."""
        ...


class SystemClock:
    """The real wall clock (:func:`time.time`).

    Examples:
      >>> SystemClock().now() > 1_600_000_000
      True
    """

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to; safe to move from several threads.

    Examples:
      >>> clock = ManualClock(start=100.0)
      >>> clock.advance(2.5)
      >>> clock.now()
      102.5
      >>> clock.set(0.0)
      >>> clock.now()
      0.0

    Parameters:
      start(float): The initial time in epoch seconds.  Defaults to
        2023-11-14T22:13:20Z, an arbitrary fixed instant.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = float(start)

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (a negative value moves it back)."""
        with self._lock:
            self._now += seconds

    def set(self, t: float) -> None:
        """Jump to the epoch time ``t``."""
        with self._lock:
            self._now = float(t)

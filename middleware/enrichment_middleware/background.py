"""A worker process's background loop: one daemon thread, started when the worker boots, stopped when it
shuts down (the parking lot's releaser, the fair rooms' sweeper)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable


class BackgroundLoop:
    """Runs ``tick`` about every ``every_s`` seconds in a thread of its own, from :meth:`start` to :meth:`stop`.

    The wait before each tick is jittered (half to all of ``every_s``), so
    that the loops of a fleet's processes spread out rather than line up.
    ``tick`` handles its own errors; one that escapes ends the loop.

    Examples:
      >>> ticks = []
      >>> loop = BackgroundLoop("ticker", lambda: ticks.append(1), every_s=0.01)
      >>> loop.start(); loop.start()  # a second start does nothing
      >>> loop.stop()
      >>> loop.running
      False
    """

    def __init__(
        self, name: str, tick: Callable[[], None], *, every_s: float, rng: random.Random | None = None
    ) -> None:
        self._name = name
        self._tick = tick
        self._every_s = every_s
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was asked: a tick that loops should end."""
        return self._stop.is_set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._every_s * self._rng.uniform(0.5, 1.0)):
            self._tick()

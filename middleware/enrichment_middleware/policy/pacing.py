"""Fleet-wide pacing: at most one call per interval (with a small burst), as reserved slots.

The algorithm is GCRA, the generic cell rate algorithm: the backend keeps one
time per policy, the *theoretical arrival time* (TAT) of the next call, and
one atomic script moves it by one interval per call.  A token bucket would
need two numbers (tokens and the time they were counted) and a refill
computed from elapsed time; GCRA keeps one time, needs no refill, and its
answer to "too early" is the exact instant the call may start, which is what
a job needs to reserve.  Both allow the same calls.

Every call *reserves* a slot: the earliest instant the schedule allows.  A
slot near enough (``max_wait_s``) is taken at once and the job sleeps until
it; a later one is kept for the job, which is deferred to just before it
(``lead_s``) and, when it comes back, is admitted on that slot without
taking another.  Reservations are distinct instants an interval apart, so
the deferred jobs come back one at a time, never all for one slot.

A second time, the earliest next *start*, makes the spacing exact even when
a job comes back late (its slot passed while it waited for a permit, say):
a start pushes it to the start plus one interval, and a job on its
reservation waits for it.  So consecutive starts are never closer than the
interval, by the backend's clock, whoever is late.  A job pushed further
than ``max_wait_s`` by such a late start gives its reservation up and takes
a new, distinct one (see :meth:`PacingPolicy.claim`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from enrichment_middleware.backends.base import Backend
from enrichment_middleware.policy.base import Policy


@dataclass(frozen=True)
class PacingLimits:
    """How fast calls may start, fleet-wide.

    Examples:
      >>> PacingLimits(interval_s=8.64)  # 10,000 calls spread over a day
      PacingLimits(interval_s=8.64, burst=1, tolerance_s=0.05, max_wait_s=1.0, lead_s=0.5)

    Parameters:
      interval_s(float): Seconds between call starts; 0 turns pacing off.  A
        policy given an ``interval`` callable asks it instead, at every decision.
      burst(int): Calls that may start back to back after a quiet spell (GCRA's
        tolerance of ``(burst - 1) * interval``); 1 = strictly one per interval.
      tolerance_s(float): The slack of the guarantee: with ``burst`` 1, two call
        starts are never closer than ``interval_s - tolerance_s`` (the time from
        the admission to the call itself, a thread's wake-up, varies by that
        much).  The pacing never starts a job early; this is what tests assert.
      max_wait_s(float): A job whose start is at most this far ahead sleeps until
        it rather than being deferred (a deferral costs a round trip through
        the queue, and a late return).
      lead_s(float): A deferred job comes back this long before its slot, so
        that the delay of the deferral itself (the releaser's poll, the queue)
        is spent before the slot, not after it; it then sleeps the rest.
        At most ``max_wait_s``.
    """

    interval_s: float
    burst: int = 1
    tolerance_s: float = 0.05
    max_wait_s: float = 1.0
    lead_s: float = 0.5

    def __post_init__(self) -> None:
        check_interval(self.interval_s)
        if self.burst < 1:
            raise ValueError(f"PacingLimits.burst must be 1 or more calls, got {self.burst}")
        if self.tolerance_s < 0:
            raise ValueError(f"PacingLimits.tolerance_s must not be negative, got {self.tolerance_s}")
        if not 0 <= self.lead_s <= self.max_wait_s:
            raise ValueError(
                f"PacingLimits needs 0 <= lead_s <= max_wait_s (a job that comes back early sleeps "
                f"the lead), got lead_s={self.lead_s} and max_wait_s={self.max_wait_s}"
            )


def check_interval(interval_s: float) -> float:
    """Return ``interval_s`` if it is a usable interval (finite, 0 or more), else raise ValueError."""
    if not (math.isfinite(interval_s) and interval_s >= 0):
        raise ValueError(
            f"A pacing interval must be a finite number of seconds, 0 (off) or more, got {interval_s!r}"
        )
    return float(interval_s)


@dataclass(frozen=True)
class Reservation:
    """The answer to :meth:`PacingPolicy.reserve` and :meth:`PacingPolicy.claim`.

    Parameters:
      slot_at(float): The instant (backend clock) the job may start: its slot.
      delay_s(float): ``slot_at`` minus the backend's now (0 when due).
      admitted(bool): True: the slot is the job's start, counted; it sleeps
        ``delay_s`` and calls.  False: the slot is reserved for it; defer the
        job to it and :meth:`~PacingPolicy.claim` it when it comes back.
      interval_s(float): The interval the decision used (0: pacing off).
      now(float): The backend's time of the decision (0 with pacing off).
    """

    slot_at: float
    delay_s: float
    admitted: bool = True
    interval_s: float = 0.0
    now: float = 0.0

    @property
    def start_at(self) -> float:
        """When the job starts if admitted (backend clock): its slot, or now if that passed."""
        return max(self.slot_at, self.now)


@dataclass(frozen=True)
class PacingStatus:
    """Where a pacing schedule stands (for status pages and metrics).

    Parameters:
      name(str): The policy's name.
      interval_s(float): The interval in force now (0: pacing off).
      next_slot_at(float): The slot a job arriving now would get (backend clock).
      now(float): The backend's time of the reading.
      reserved_s(float): How far ahead slots are reserved: ``next_slot_at - now``,
        0 when a job could start at once.
      burst(int): The burst allowed.
    """

    name: str
    interval_s: float
    next_slot_at: float
    now: float
    reserved_s: float
    burst: int


class PacingPolicy(Policy[PacingLimits]):
    """Spaces call starts by an interval, fleet-wide, with reserved slots (GCRA).

    Examples:
      >>> from enrichment_middleware.backends.memory import MemoryBackend
      >>> from enrichment_middleware.policy.clock import ManualClock
      >>> clock = ManualClock(start=1_000.0)
      >>> pacing = PacingPolicy("api", PacingLimits(interval_s=10.0), MemoryBackend(clock=clock))
      >>> pacing.reserve()
      Reservation(slot_at=1000.0, delay_s=0.0, admitted=True, interval_s=10.0, now=1000.0)
      >>> later = pacing.reserve()  # ten seconds on: reserved, not admitted
      >>> later.slot_at, later.admitted
      (1010.0, False)
      >>> clock.advance(10.0)  # the deferred job comes back at its slot
      >>> pacing.claim(later.slot_at).admitted
      True

    Parameters:
      name(str): Names the schedule in the backend; policies of the same name
        share it, wherever they run.
      limits(PacingLimits): The interval, burst and waits.
      backend(Backend): Where the schedule lives, and whose clock counts.
      interval: If given, called at every decision for the interval to use
        now (say, what is left of a day spread over the calls left of a daily
        budget); it must return a finite number of seconds, 0 (off) or more.
        Without it, ``limits.interval_s``.
      rng(random.Random): Unused (no jitter: slots are distinct already); kept
        for the common policy signature.
    """

    kind = "pacing"

    def __init__(
        self,
        name: str,
        limits: PacingLimits,
        backend: Backend,
        *,
        interval: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name, limits, backend, rng=rng)
        self._interval = interval

    def interval_s(self) -> float:
        """The interval in force now: the callable's answer, or the limits'."""
        if self._interval is None:
            return self._limits.interval_s
        return check_interval(self._interval())

    def reserve(self, *, interval_s: float | None = None) -> Reservation:
        """Reserve the next slot of the schedule: admitted when it is at most ``max_wait_s`` away.

        One atomic backend call.  With pacing off (interval 0) nothing is kept
        and the answer is "admitted, now" (``slot_at`` 0).  ``interval_s``: the
        interval :meth:`interval_s` answered already (asked once, it may read the backend).
        """
        interval = self.interval_s() if interval_s is None else interval_s
        if interval == 0:
            return Reservation(0.0, 0.0, True, 0.0)
        slot_at, now = self._backend.gcra_reserve(
            self._key, interval, self._limits.burst, wait_s=self._limits.max_wait_s
        )
        return self._answer(slot_at, now, interval)

    def claim(self, slot_at: float) -> Reservation:
        """Admit a job that comes back with the slot :meth:`reserve` kept for it, without taking another.

        - Its start is its slot, or later if starts since (late ones) push the
          schedule: admitted when that is at most ``max_wait_s`` away.
        - Still too early, and not pushed: the same slot, not admitted (defer
          it again).
        - Pushed further than ``max_wait_s`` by later starts: the slot is
          given up and a new, distinct one reserved (admitted if near), so the
          jobs pushed by one late start do not all come back for one instant.
        """
        interval = self.interval_s()
        if interval == 0:
            return Reservation(0.0, 0.0, True, 0.0)
        start_at, now = self._backend.gcra_claim(
            self._key, slot_at, interval, self._limits.burst, wait_s=self._limits.max_wait_s
        )
        return self._answer(start_at, now, interval)

    def _answer(self, slot_at: float, now: float, interval: float) -> Reservation:
        # The backend made the same comparison on the same numbers.
        delay = slot_at - now
        return Reservation(slot_at, max(0.0, delay), delay <= self._limits.max_wait_s, interval, now)

    def status(self) -> PacingStatus:
        """The interval in force and the slot a job arriving now would get (reserves nothing)."""
        interval = self.interval_s()
        schedule, now = self._backend.gcra_get(self._key)
        tau = (self._limits.burst - 1) * interval
        next_slot = max(now, schedule - tau)
        return PacingStatus(self._name, interval, next_slot, now, next_slot - now, self._limits.burst)

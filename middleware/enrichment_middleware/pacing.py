"""Pacing: at most one call per interval across the fleet (a small burst allowed), never spun on.

Put it right before the call, after the permit and the breaker: the slot is
taken only by a job that is otherwise ready.  A job whose slot is near
(``max_wait_s``) sleeps until it and runs; a job that is too early keeps the
slot it reserved in the message option ``pacing_slot`` and is deferred
(:class:`~.deferral.AdmissionDenied`, reason ``paced``: a deferral, not a
retry) to just before it.  When it comes back it is admitted on that slot,
without taking another, so the deferred jobs come back one slot apart.
A job that comes back after its slot (an earlier middleware held it up) still
starts no closer than one interval after the previous start: see
:mod:`enrichment_middleware.policy.pacing`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

from dramatiq.broker import Broker, MessageProxy

from .admission import AdmissionMiddleware, Part
from .backends.base import Backend
from .deferral import AdmissionDenied
from .failpoints import failpoint
from .policy.clock import Clock
from .policy.pacing import PacingLimits, PacingPolicy, PacingStatus, Reservation

#: Deferral reason when the job's slot is later.
PACED = "paced"

#: Message option holding the slot a deferred job reserved: ``{"name": POLICY, "at": SLOT}``.
PACING_SLOT = "pacing_slot"


class Pacing(AdmissionMiddleware[PacingPolicy, None]):
    """Start calls of a named schedule at most one per interval, fleet-wide.

    Examples:
      >>> broker.add_middleware(Pacing(backend, {"api": PacingLimits(interval_s=8.64)}))
      >>> @dramatiq.actor(rate="api")
      ... def fetch(): ...

      The interval can follow the day (say, what is left of a daily budget
      spread over what is left of the day), asked at every decision::

        Pacing(backend, {"api": PacingLimits(interval_s=8.64)}, intervals={"api": budget.interval_now})

    Parameters:
      backend: where the schedules live (Redis for a fleet); its clock is the one
        slots are reckoned by.
      limits: pacing limits by policy name; actors opt in with ``rate=NAME`` (a
        message option ``rate`` overrides the actor's).
      intervals: by policy name, a callable returning the interval to use now
        (overrides ``limits.interval_s``; 0 turns pacing off).
      clock, rng: injectable time and randomness.
      unavailable_retry_s: delay before a message comes back when the backend
        cannot be reached.
      sleep: how a job waits for a slot that is near (tests may record it).
    """

    option = "rate"
    admission_rank = 5  # enrichment_middleware.order.RANKS says why
    policy_class = PacingPolicy

    def __init__(
        self,
        backend: Backend,
        limits: Mapping[str, PacingLimits],
        *,
        intervals: Mapping[str, Callable[[], float]] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        unavailable_retry_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(backend, limits, clock=clock, rng=rng, unavailable_retry_s=unavailable_retry_s)
        intervals = dict(intervals or {})
        unknown = sorted(set(intervals) - set(limits))
        if unknown:
            raise ValueError(
                f"Pacing got intervals for {', '.join(unknown)} but no limits for them; "
                f"give each a PacingLimits too (known: {', '.join(sorted(limits)) or 'none'})."
            )
        self.policies = {
            name: PacingPolicy(name, limit, backend, interval=intervals.get(name), rng=rng)
            for name, limit in limits.items()
        }
        self.sleep = sleep

    def part(self, broker: Broker, message: MessageProxy, policy: PacingPolicy) -> Part | None:
        if message.options.get(PACING_SLOT) is not None:
            return None  # it comes back to a slot kept for it: the pacing decides alone
        # Asked once: the step and the decision from its reply must use the same interval.
        interval = policy.interval_s()

        def reserve(p: PacingPolicy) -> Reservation:
            return p.reserve(interval_s=interval)

        # Only a slot due now: a job that would sleep for its slot must count its request
        # after the sleep (the quota decides last, right before the call), so it decides alone.
        return self.part_of(
            policy,
            reserve,
            condition="due_now",
            allowed=lambda reservation: reservation.admitted and reservation.delay_s <= 0,
            take=lambda reservation: self._take(message, reservation),
        )

    def _take(self, message: MessageProxy, reservation: Reservation) -> None:
        message.options.pop(PACING_SLOT, None)
        if reservation.delay_s > 0:
            self.sleep(reservation.delay_s)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        policy = self.policy_for(broker, message)
        if policy is None:
            return
        if self.admitted_together(broker, message):
            failpoint("pacing.admitted")
            return
        kept = message.options.get(PACING_SLOT)
        with self.failing_closed():
            if isinstance(kept, dict) and kept.get("name") == policy.name:
                reservation = policy.claim(float(kept["at"]))
            else:
                # No slot, or one of another schedule (the message was routed elsewhere).
                reservation = policy.reserve()
        if not reservation.admitted:
            message.options[PACING_SLOT] = {"name": policy.name, "at": reservation.slot_at}
            raise self._deferral(policy, reservation)
        self._take(message, reservation)
        failpoint("pacing.admitted")

    def _deferral(self, policy: PacingPolicy, reservation: Reservation) -> AdmissionDenied:
        # Back a little before the slot: the deferral's own delay is spent
        # before the slot, and the job sleeps the rest (at most max_wait_s).
        return AdmissionDenied(reservation.delay_s - policy.limits.lead_s, PACED)

    def status(self) -> dict[str, PacingStatus]:
        """Every schedule's :class:`~.policy.pacing.PacingStatus`, by name (reads only)."""
        return {name: policy.status() for name, policy in self.policies.items()}

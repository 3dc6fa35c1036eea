"""Circuit breaker: stop calling an upstream that keeps failing, fleet-wide.

Closed, it counts consecutive failures; at the threshold it opens and
messages make no call, deferred until the cooldown ends (plus jitter).
Then exactly one message in the whole fleet is admitted as a probe (a claim
that expires, so a probe whose worker dies cannot wedge the breaker): its
success closes the circuit, its failure reopens it for a fresh cooldown. An
outcome of a call admitted before the latest transition does not move it.
Messages denied while the probe is out come back after a short re-check
interval (``probe_recheck_s`` plus jitter), so they run soon after the probe
closes the circuit, not when its claim would have expired.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from typing import Any

from dramatiq.broker import Broker, MessageProxy

from .admission import AdmissionMiddleware, CallEnd, Ending, Part
from .attempt import attempt_of
from .backends.base import Backend
from .deferral import AdmissionDenied, Defer
from .failpoints import failpoint
from .policy.breaker import Admission, BreakerLimits, BreakerPolicy
from .policy.clock import Clock

#: Deferral reason while the circuit is open (or another worker probes).
CIRCUIT_OPEN = "circuit_open"


class Verdict(enum.Enum):
    """What one finished call says about the upstream."""

    SUCCESS = "success"
    FAILURE = "failure"
    #: Says nothing (the call never happened, or failed for a reason of ours).
    IGNORE = "ignore"


def every_exception_fails(exception: BaseException | None) -> Verdict:
    """The default verdict: a return is a success, an exception a failure, a deferral nothing.

    An actor that raises :class:`~.deferral.Defer` asks to run later for a
    reason of its own; it says nothing about the upstream's health.
    """
    if exception is None:
        return Verdict.SUCCESS
    return Verdict.IGNORE if isinstance(exception, Defer) else Verdict.FAILURE


class CircuitBreaker(AdmissionMiddleware[BreakerPolicy, tuple[BreakerPolicy, Admission, str]]):
    """Admit messages only while the upstream is believed healthy.

    Examples:
      >>> breaker = CircuitBreaker(backend, {"api": BreakerLimits(failure_threshold=3, cooldown_s=60)},
      ...                          verdict=lambda exc: Verdict.FAILURE if isinstance(exc, IOError) else Verdict.SUCCESS)
      >>> @dramatiq.actor(breaker="api")
      ... def fetch(): ...

    Parameters:
      backend: where the breaker state lives (Redis for a fleet); its clock says
        when a cooldown ends (tests give a ``MemoryBackend`` a ``ManualClock``).
      limits: breaker limits by policy name; actors opt in with ``breaker=NAME``.
      verdict: maps the actor's exception (``None`` when it returned) to a
        :class:`Verdict`. Denials by other middlewares, and calls the actor
        reports never left (:func:`~enrichment_middleware.usage.report_no_call`), never
        reach it: the call did not happen.
      clock: this host's clock, for what is not shared state; the policies never read it.
      rng: injectable randomness.
    """

    option = "breaker"
    admission_rank = 4  # enrichment_middleware.order.RANKS says why
    policy_class = BreakerPolicy

    def __init__(
        self,
        backend: Backend,
        limits: Mapping[str, BreakerLimits],
        *,
        verdict: Callable[[BaseException | None], Verdict] = every_exception_fails,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        unavailable_retry_s: float = 5.0,
    ) -> None:
        super().__init__(backend, limits, clock=clock, rng=rng, unavailable_retry_s=unavailable_retry_s)
        self.verdict = verdict

    def part(self, broker: Broker, message: MessageProxy, policy: BreakerPolicy) -> Part | None:
        holder = self.new_holder()

        def admit(p: BreakerPolicy) -> Admission:
            return p.admit(holder)

        return self.part_of(
            policy,
            admit,
            condition="closed",
            allowed=lambda admission: admission.allowed,
            take=lambda admission: self._take(broker, message, policy, admission, holder),
            give_back=lambda admission: policy.abandon(admission, holder),
        )

    def _take(
        self, broker: Broker, message: MessageProxy, policy: BreakerPolicy, admission: Admission, holder: str
    ) -> None:
        self.hold(broker, message, (policy, admission, holder))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        policy = self.policy_for(broker, message)
        if policy is None:
            return
        if self.admitted_together(broker, message):
            failpoint("breaker.admitted")
            return
        holder = self.new_holder()
        with self.failing_closed():
            admission = policy.admit(holder)
        if not admission.allowed:
            raise self.denial(admission.retry_at, CIRCUIT_OPEN)
        self._take(broker, message, policy, admission, holder)
        failpoint("breaker.admitted")

    def ending(self, broker: Broker, message: MessageProxy, end: CallEnd) -> Ending | None:
        if not end.finished and end.succeeded is None:
            return None  # the outcome is the actor's end's to say
        held = self.release_held(message)
        if held is None:
            return None
        policy, admission, holder = held
        # A call that never happened (denied later, or the actor says it never
        # left) says nothing about the upstream, even when it was the probe.
        if isinstance(end.exception, AdmissionDenied) or attempt_of(message, broker).no_call:
            verdict = Verdict.IGNORE
        elif end.finished:
            verdict = self.verdict(end.exception)
        else:
            verdict = Verdict.SUCCESS if end.succeeded else Verdict.FAILURE

        def alone() -> None:
            with self.logging_unavailable(f"record a {verdict.value} on breaker {policy.name!r}"):
                if verdict is Verdict.IGNORE:
                    policy.abandon(admission, holder)
                else:
                    policy.record(admission, success=verdict is Verdict.SUCCESS)
            failpoint("breaker.recorded")

        if verdict is Verdict.IGNORE and not admission.probe:
            return None  # no probe claim to give back: nothing changes
        if verdict is not Verdict.SUCCESS or admission.probe:
            return Ending((), alone)  # it moves the circuit: a read and a compare-and-set, alone

        def record_success(p: BreakerPolicy) -> None:
            p.record(admission, success=True)

        # A success that finds the circuit closed with no failure counted writes nothing: its read
        # is the batch's condition, and the batch runs only if it holds.
        step = policy.step_of(record_success, condition="unchanged_by_success")
        if step is None:
            return None  # a denied admission records nothing

        def done(replies: list[Any]) -> None:
            policy.decided(record_success, step, replies[0])
            failpoint("breaker.recorded")

        return Ending((step,), alone, done)

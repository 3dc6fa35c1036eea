"""Quota: a request, byte and cost budget per window, shared by every worker.

Requests are counted atomically at admission, so however many processes
race, no more calls are admitted than the limit; a request whose call never
happened (a later middleware deferred the job, or the actor reported
:func:`~enrichment_middleware.usage.report_no_call`) is given back. Response bytes are
charged as the actor reports them, failed calls included, and so is the cost
(see :mod:`enrichment_middleware.usage`). Put the quota last, after the permit: the byte
budget is checked at admission, so it must be checked right before the
call, not before a wait. A denied message makes no call and is deferred to
the start of the next window plus jitter.
"""

from __future__ import annotations

from collections.abc import Mapping

from dramatiq.broker import Broker, MessageProxy

from .admission import AdmissionMiddleware, CallEnd, Ending, Part
from .attempt import attempt_of
from .backends.base import BackendUnavailable
from .deferral import AdmissionDenied
from .failpoints import failpoint
from .policy.quota import QuotaDecision, QuotaPolicy

#: Deferral reason when the window's budget is spent.
QUOTA_EXHAUSTED = "quota_exhausted"


class Quota(AdmissionMiddleware[QuotaPolicy, tuple[QuotaPolicy, float]]):
    """Admit a message only while its quota window has budget left.

    Examples:
      >>> broker.add_middleware(Quota(backend, {"api": QuotaLimits(requests=10_000, bytes=2**30)}))
      >>> @dramatiq.actor(quota="api")
      ... def fetch(): ...

    Parameters:
      backend: where the counters live (Redis for a fleet); its clock says which
        window it is (tests give a ``MemoryBackend`` a ``ManualClock``).
      limits: quota limits by policy name; actors opt in with ``quota=NAME``.
      clock: this host's clock, for what is not shared state; the policies never read it.
      rng: randomness for the deferral jitter.
    """

    option = "quota"
    admission_rank = 6  # enrichment_middleware.order.RANKS says why
    policy_class = QuotaPolicy

    def part(self, broker: Broker, message: MessageProxy, policy: QuotaPolicy) -> Part | None:
        return self.part_of(
            policy,
            QuotaPolicy.admit,
            condition="admitted",
            allowed=lambda decision: decision.allowed,
            take=lambda decision: self._hold(broker, message, policy, decision),
            give_back=lambda decision: policy.refund(decision.window_start),
        )

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        policy = self.policy_for(broker, message)
        if policy is None:
            return
        if self.admitted_together(broker, message):
            failpoint("quota.admitted")
            return
        with self.failing_closed():
            decision = policy.admit()
        if not decision.allowed:
            raise self.denial(decision.retry_at, QUOTA_EXHAUSTED)
        self._hold(broker, message, policy, decision)
        failpoint("quota.admitted")

    def _hold(
        self, broker: Broker, message: MessageProxy, policy: QuotaPolicy, decision: QuotaDecision
    ) -> None:
        self.hold(broker, message, (policy, decision.window_start))

    def ending(self, broker: Broker, message: MessageProxy, end: CallEnd) -> Ending | None:
        # Every byte downloaded and every unit of cost is charged, whatever the outcome: a failed
        # call used the upstream too. Given back early, the hold stays: what is reported later is
        # charged at the actor's end, and so is a refund.
        held = self.release_held(message) if end.finished else self.held_by(message)
        if held is None:
            return None
        policy, window_start = held
        attempt = attempt_of(message, broker)
        uncharged = attempt.take_usage()
        # A middleware after this one deferred the job, or the actor says its
        # call never left the process: the request is given back.
        refund = end.finished and (attempt.no_call or isinstance(end.exception, AdmissionDenied))
        if not uncharged and not refund:
            return None
        steps = policy.charge_steps(uncharged, window_start)
        if refund:
            steps.append(policy.refund_step(window_start))

        def charge_alone() -> None:
            if uncharged and not self._charge(policy, window_start, uncharged) and not end.finished:
                attempt.report(**uncharged)  # kept: charged again when the actor returns

        def alone() -> None:
            charge_alone()
            if refund:
                with self.logging_unavailable(f"refund a request to quota {policy.name!r}"):
                    policy.refund(window_start)

        # The batch's reply lost: a charge made twice counts too much, a refund made twice too little.
        return Ending(tuple(steps), alone, unsure=charge_alone)

    def _charge(self, policy: QuotaPolicy, window_start: float, amounts: Mapping[str, int]) -> bool:
        """Charge ``amounts`` (by unit) to the window the call was admitted in; False if the backend failed."""
        try:
            policy.record(amounts, window_start)
        except BackendUnavailable as exc:
            self.logger.error("Could not charge %s to quota %r: %s", dict(amounts), policy.name, exc)
            return False
        return True

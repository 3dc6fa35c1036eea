"""Quota: a request and byte budget per window, shared by every worker.

Requests are counted atomically at admission, so however many processes
race, no more calls are admitted than the limit; a request whose job a later
middleware defers (no call made) is given back. Response bytes are charged
after each call (see :mod:`middleware.usage`). A denied message makes no
call and is deferred to the start of the next window plus jitter.
"""

from __future__ import annotations

from dramatiq.broker import Broker, MessageProxy

from .admission import AdmissionMiddleware
from .deferral import AdmissionDenied
from .policy.quota import QuotaPolicy
from .usage import take_charged_bytes

#: Deferral reason when the window's budget is spent.
QUOTA_EXHAUSTED = "quota_exhausted"


class Quota(AdmissionMiddleware[QuotaPolicy, tuple[QuotaPolicy, float]]):
    """Admit a message only while its quota window has budget left.

    Examples:
      >>> broker.add_middleware(Quota(backend, {"overpass": QuotaLimits(requests=10_000, bytes=2**30)}))
      >>> @dramatiq.actor(quota="overpass")
      ... def fetch(): ...

    Parameters:
      backend: where the counters live (Redis for a fleet).
      limits: quota limits by policy name; actors opt in with ``quota=NAME``.
      clock: time source (tests inject a manual clock).
      rng: randomness for the deferral jitter.
    """

    option = "quota"
    policy_class = QuotaPolicy

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        policy = self.policy_for(broker, message)
        if policy is None:
            return
        take_charged_bytes()
        with self.failing_closed():
            decision = policy.admit()
        if not decision.allowed:
            raise self.denial(decision.retry_at, QUOTA_EXHAUSTED)
        self.hold(message, (policy, decision.window_start))

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        held = self.release_held(message)
        if held is None:
            return
        policy, window_start = held
        if isinstance(exception, AdmissionDenied):
            # A middleware after this one deferred the job: no call was made.
            with self.logging_unavailable(f"refund a request to quota {policy.name!r}"):
                policy.refund(window_start)
            return
        charged = take_charged_bytes()
        if charged:
            with self.logging_unavailable(f"charge {charged} bytes to quota {policy.name!r}"):
                policy.record_bytes(charged, window_start)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.after_process_message(broker, message, exception=AdmissionDenied(0, "skipped"))

"""Pause: stop every call to an upstream, fleet-wide, until a time or until a hold is lifted.

While a policy is paused, messages of the actors that opted into it make
no call: they are deferred to the pause end plus jitter. While it is held
they come back every ``hold_recheck_s`` (plus jitter) and never run. Either
way the deferral is an :class:`~.deferral.AdmissionDenied`: not a retry,
not an outcome. An actor pauses its policy for everyone by raising
:class:`PauseUpstream`, holds it by raising :class:`HoldUpstream`, or
calls the policy itself. Put it first among the limiting middlewares: it
refuses cheaply (one read) and nothing waits or is counted for a job it
refuses.
"""

from __future__ import annotations

from dramatiq.broker import Broker, MessageProxy

from .admission import AdmissionMiddleware, CallEnd, Ending, Part
from .attempt import attempt_of
from .backends.base import BackendUnavailable
from .deferral import AdmissionDenied, Defer
from .failpoints import failpoint
from .policy.pause import HELD, PAUSED, PausePolicy

__all__ = ["HELD", "PAUSED", "HoldUpstream", "Pause", "PauseUpstream"]


class PauseUpstream(Defer):
    """Raised by an actor whose upstream asked it to slow down: pause its policy for everyone.

    The :class:`Pause` middleware pauses the actor's policy for ``seconds``
    (at least the policy's ``min_pause_s``; never shortening a pause in
    force) and defers the message to the pause end plus jitter. Without a
    pause policy on the actor it is a plain deferral of ``seconds``.

    Examples:
      >>> @dramatiq.actor(pause="api")
      ... def fetch(url):
      ...     response = session.get(url)
      ...     if response.status_code == 429:
      ...         raise PauseUpstream(30.0, "rate_limited")

    Parameters:
      seconds: how long the whole fleet should stop calling.
      reason: a short machine-readable word, kept with the pause.
    """

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(seconds, reason)
        self.seconds = float(seconds)


class HoldUpstream(Defer):
    """Raised by an actor whose upstream refuses every call the same way: hold its policy for everyone.

    The :class:`Pause` middleware holds the actor's policy (no calls on any
    worker until :meth:`~.policy.pause.PausePolicy.release_hold`) and defers
    the message to the policy's next re-check. Without a pause policy on the
    actor it is a plain deferral of ``recheck_s``.

    Examples:
      >>> @dramatiq.actor(pause="api")
      ... def fetch(url):
      ...     response = session.get(url)
      ...     if response.status_code == 403:
      ...         raise HoldUpstream("forbidden", fingerprint=settings_fingerprint)

    Parameters:
      reason: a short machine-readable word, kept with the hold.
      fingerprint: names the settings that failed; a worker started with
        other settings lifts the hold (``release_hold(fingerprint)``).
      recheck_s: the deferral when the actor has no pause policy.
    """

    def __init__(self, reason: str, fingerprint: str, recheck_s: float = 60.0) -> None:
        super().__init__(recheck_s, reason)
        self.fingerprint = fingerprint


class Pause(AdmissionMiddleware[PausePolicy, PausePolicy]):
    """Admit messages only while their policy is neither paused nor held.

    Examples:
      >>> pause = Pause(backend, {"api": PauseLimits(min_pause_s=30.0)})
      >>> broker.add_middleware(pause)  # after Retries, before the other limiting middlewares
      >>> @dramatiq.actor(pause="api")
      ... def fetch(): ...
      >>> pause.policies["api"].hold("rejected", fingerprint="settings-v1")  # no calls until released

    Parameters:
      backend: where the pauses live (Redis for a fleet); its clock says when they end.
      limits: pause limits by policy name; actors opt in with ``pause=NAME``,
        and a message option ``pause=NAME`` overrides the actor's.
      clock, rng: injectable time and randomness.
      unavailable_retry_s: delay before a message comes back when the
        backend cannot be reached (calls stop rather than run unchecked).

    Add it after :class:`~.retries.Retries`: Dramatiq runs after hooks in
    reverse order, so this one sets a :class:`PauseUpstream`'s delay to the
    pause end before Retries puts the message back.
    """

    option = "pause"
    admission_rank = 2  # enrichment_middleware.order.RANKS says why
    policy_class = PausePolicy

    def part(self, broker: Broker, message: MessageProxy, policy: PausePolicy) -> Part | None:
        return self.part_of(
            policy,
            PausePolicy.admit,
            condition="not_paused",
            allowed=lambda decision: decision.allowed,
            take=lambda decision: self.hold(broker, message, policy),
        )

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        policy = self.policy_for(broker, message)
        if policy is None:
            return
        if self.admitted_together(broker, message):
            failpoint("pause.admitted")
            return
        with self.failing_closed():
            decision = policy.admit()
        if not decision.allowed:
            raise AdmissionDenied(decision.delay_s, decision.reason or PAUSED)
        self.hold(broker, message, policy)
        failpoint("pause.admitted")

    def ending(self, broker: Broker, message: MessageProxy, end: CallEnd) -> Ending | None:
        exception = end.exception
        policy = self.release_held(message) if end.finished else None
        if policy is None or not isinstance(exception, PauseUpstream | HoldUpstream):
            return None
        # Recorded first, before any hold ends (a permit, a seat), so that no call they let start
        # finds the upstream not paused yet; then the others, in order.
        return Ending((), lambda: self._stop_calls(broker, message, policy, exception), first=True)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        super().after_process_message(broker, message, result=result, exception=exception)
        if isinstance(exception, PauseUpstream | HoldUpstream) and self.policy_for(broker, message) is None:
            self.logger.warning(
                "Actor %r raised %s but has no pause policy: only this message waits %.1fs. "
                "Give the actor the option pause=NAME to stop every worker.",
                message.actor_name,
                type(exception).__name__,
                exception.delay_s,
            )

    def _stop_calls(
        self,
        broker: Broker,
        message: MessageProxy,
        policy: PausePolicy,
        exception: PauseUpstream | HoldUpstream,
    ) -> None:
        """Pause or hold the upstream for every worker, as the actor's ``exception`` asks."""
        try:
            if isinstance(exception, PauseUpstream):
                opened = policy.pause(exception.seconds, exception.reason)
            else:
                opened = policy.hold(exception.reason, exception.fingerprint)
            decision = policy.admit()
        except BackendUnavailable as exc:
            self.logger.error(
                "Could not stop calls on %r (%s); message %s waits %.1fs, the other workers are not told.",
                policy.name,
                exc,
                message.message_id,
                exception.delay_s,
            )
            return
        if opened and isinstance(exception, PauseUpstream):
            self.logger.warning(
                "Paused %r for every worker for %.1fs (%s).", policy.name, decision.delay_s, exception.reason
            )
        elif opened:
            self.logger.error(
                "Held %r for every worker (%s): no calls, jobs deferred, until the hold is released. "
                "Fix the cause, then start the workers with the new settings or release the hold by hand.",
                policy.name,
                exception.reason,
            )
        if not decision.allowed:
            # The job comes back when the pause ends (Retries reads it from the attempt).
            attempt_of(message, broker).deferral_s = decision.delay_s
        failpoint("pause.recorded")

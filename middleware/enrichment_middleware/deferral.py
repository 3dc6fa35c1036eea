"""Deferral: "come back later" as an exception, distinct from failure and retry.

A middleware that refuses to admit a message now (no quota, circuit open, no
permit) raises :class:`AdmissionDenied`; an actor that learns it must wait
(the upstream asked it to slow down) raises :class:`Defer`. The
:class:`~enrichment_middleware.retries.Retries` middleware puts the message back with
the delay, without counting a retry and without holding it in worker memory
when the wait is long. A deferral is no outcome: it never reaches
``retry_when`` or ``on_retry_exhausted``, :class:`~enrichment_middleware.callbacks.Callbacks`
fires neither ``on_success`` nor ``on_failure`` for it, and the breaker's
default verdict ignores it.
"""

from __future__ import annotations

from dramatiq import Retry
from dramatiq.middleware import MiddlewareError


class Defer(MiddlewareError, Retry):
    """Run this message again after ``delay_s`` seconds; not a failure, not a retry.

    It is a ``MiddlewareError`` so that it propagates out of a
    ``before_process_message`` hook, and a ``Retry`` so that Dramatiq neither
    logs it as an error nor, under its stock ``Retries``, loses the delay.

    Parameters:
      delay_s: seconds to wait (never negative).
      reason: a short machine-readable word: why the job waits.
    """

    #: The message waits elsewhere (a fair room keeps it): Retries puts nothing back.
    kept_elsewhere = False

    def __init__(self, delay_s: float, reason: str) -> None:
        self.delay_s = max(0.0, float(delay_s))
        self.reason = reason
        Retry.__init__(self, f"deferred for {self.delay_s:.3f}s: {reason}", delay=int(self.delay_s * 1000))


class AdmissionDenied(Defer):
    """A limiting middleware refused the message before the actor ran: no call was made."""


class Waiting(AdmissionDenied):
    """A fair room keeps the message (or another copy of it) and sends it again when its turn
    comes: this delivery ends, and :class:`~enrichment_middleware.retries.Retries` puts nothing back."""

    kept_elsewhere = True

    def __init__(self, reason: str) -> None:
        super().__init__(0.0, reason)

"""The attempt: what one delivery of a message holds for its call, carried from the gates to the actor and back.

Dramatiq runs a message's before-hooks, its actor and its after-hooks in
one worker thread. The first gate that sees a delivery starts its
:class:`Attempt`, attached to the delivery (its ``MessageProxy``) and made
the thread's current one. The gates read and write it through the
delivery (:func:`attempt_of`); the actor reaches it through the functions
that report to it (:mod:`enrichment_middleware.usage`,
:func:`enrichment_middleware.admission.release_early`), which act on the
current one; the end of the call ends it. Nothing else passes between the
gates, or between them and the actor, and nothing is left over from an
earlier message of the thread: each attempt starts empty.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from dramatiq.broker import Broker, MessageProxy

from .deferral import Defer

#: The attribute of a delivery holding its attempt.
_ATTEMPT = "_enrichment_attempt"

_thread = threading.local()


@dataclass(eq=False)
class Attempt:
    """What one delivery holds for its call, and what its actor reported.

    Parameters:
      broker: the broker the delivery came from (None: no delivery, reports go nowhere).
      message: the delivery.
      held: what each gate holds for the call, by gate (``id``): the gate and its hold; a gate
        that holds something is asked for its part of the call's end.
      together: the gates whose part of a one-step admission is done (None: not tried yet).
      bytes: response bytes the actor reported and no gate charged yet.
      cost: units of cost the actor reported and no gate charged yet.
      no_call: the actor reported that its call never left the process.
      deferral_s: when a deferred delivery comes back, said after the deferral was raised (a pause
        the actor's exception began, another endpoint ready): None, the deferral's own delay.
    """

    broker: Broker | None = None
    message: MessageProxy | None = None
    held: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    together: set[int] | None = None
    bytes: int = 0
    cost: int = 0
    no_call: bool = False
    deferral_s: float | None = None

    def report(self, *, bytes: int = 0, cost: int = 0) -> None:
        """Add usage of the call (what :func:`enrichment_middleware.usage.charge` reports)."""
        self.bytes += max(0, int(bytes))
        self.cost += max(0, int(cost))

    def take_usage(self) -> dict[str, int]:
        """The usage reported and not charged yet, by unit (``bytes``, ``cost``); taken, so charged once."""
        usage = {unit: amount for unit, amount in (("bytes", self.bytes), ("cost", self.cost)) if amount}
        self.bytes = self.cost = 0
        return usage


def attempt_of(message: MessageProxy, broker: Broker) -> Attempt:
    """The attempt of this delivery, started (and made this thread's current one) if it has none."""
    attempt = started_attempt(message)
    if attempt is None:
        attempt = Attempt(broker, message)
        setattr(message, _ATTEMPT, attempt)
        _thread.current = attempt
    return attempt


def started_attempt(message: object) -> Attempt | None:
    """The attempt of this delivery, if a gate started one."""
    attempt = getattr(message, _ATTEMPT, None)
    return attempt if isinstance(attempt, Attempt) else None


def deferral_of(message: MessageProxy, exception: Defer) -> float:
    """In how many seconds the deferred ``message`` comes back: what its attempt says, else
    ``exception``'s own delay (what ``Retries`` puts it back with)."""
    attempt = started_attempt(message)
    if attempt is not None and attempt.deferral_s is not None:
        return attempt.deferral_s
    return exception.delay_s


def current_attempt() -> Attempt:
    """The attempt of the message this thread runs; outside one, the thread's own (what is reported
    there reaches no gate, and the next delivery starts afresh)."""
    attempt: Attempt | None = getattr(_thread, "current", None)
    if attempt is None:
        attempt = _thread.current = Attempt()
    return attempt


def end_attempt(attempt: Attempt) -> None:
    """``attempt`` is over: it is no longer this thread's current one."""
    if getattr(_thread, "current", None) is attempt:
        _thread.current = None

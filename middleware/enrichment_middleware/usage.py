"""Usage that an actor reports to the quota after the fact: response bytes, cost, or that no call was made.

The quota admits a call before it is made, when the size of the answer is
unknown; the actor reports the bytes once it has them (or as much of the
answer as arrived before a failure: every byte downloaded counts). A report
is charged to the shared budget, in the window the call was admitted in,
when the call ends: with its permit, when the actor gives it back early
(:func:`enrichment_middleware.admission.release_early`), else when the actor
returns, in the same round trip (:mod:`enrichment_middleware.admission`,
"the end of a call"). So no call starts after the permit came back without
seeing them: report the bytes before giving the permit back early. A report
the backend could not take is kept and charged again when the actor
returns. The cost (the quota's third budget, in whatever unit the actor
measures: server milliseconds, credits) is reported the same way, with
:func:`charge_cost`; both at once with :func:`charge`.

An actor whose call never left the process (it failed before sending) says
so with :func:`report_no_call`, and the quota gives the request back. The
reports go to the attempt of the message the thread runs
(:mod:`enrichment_middleware.attempt`), where the gates read them.
"""

from __future__ import annotations

from .attempt import current_attempt


def charge_bytes(amount: int) -> None:
    """Add ``amount`` bytes to what the current message used (no-op outside a quota)."""
    charge(bytes=amount)


def charge_cost(amount: int) -> None:
    """Add ``amount`` units of cost (say, server milliseconds) to what the current message used."""
    charge(cost=amount)


def charge(*, bytes: int = 0, cost: int = 0) -> None:
    """Add what one call used, its ``bytes`` and its ``cost``, to what the current message used;
    charged together when the call ends (see the module's docstring)."""
    current_attempt().report(bytes=bytes, cost=cost)


def take_charged(unit: str) -> int:
    """The amount of ``unit`` the current message reported that is not charged yet; resets it."""
    attempt = current_attempt()
    amount: int = getattr(attempt, unit)
    setattr(attempt, unit, 0)
    return amount


def take_charged_bytes() -> int:
    """Bytes the current message reported that are not charged yet, and reset the count."""
    return take_charged("bytes")


def take_charged_cost() -> int:
    """Units of cost the current message reported that are not charged yet, and reset the count."""
    return take_charged("cost")


def report_no_call() -> None:
    """The current message's call never left the process: the quota gives its request back."""
    current_attempt().no_call = True


def take_no_call() -> bool:
    """Whether the current message reported :func:`report_no_call`, and reset it."""
    attempt = current_attempt()
    no_call, attempt.no_call = attempt.no_call, False
    return no_call

"""Usage that an actor reports to the quota after the fact: response bytes, cost, or that no call was made.

The quota admits a call before it is made, when the size of the answer is
unknown; the actor reports the bytes once it has them (or as much of the
answer as arrived before a failure: every byte downloaded counts). While
the quota middleware admits a message it meters this thread, so a report is
charged to the shared budget at once, in the window the call was admitted
in: a call admitted after the report sees it. Report the bytes before
giving a permit back early (``release_permit_early``), so that no call
starts with them uncharged. A report the backend could not take is kept
and charged again when the actor returns. The cost (the quota's third
budget, in whatever unit the actor measures: server milliseconds, credits)
is reported the same way, with :func:`charge_cost`.

An actor whose call never left the process (it failed before sending) says
so with :func:`report_no_call`, and the quota gives the request back. The
reports are per worker thread, which is where Dramatiq runs a message and
its hooks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_local = threading.local()

#: The units a message reports: the quota's counters other than requests.
UNITS = ("bytes", "cost")

#: Charges an amount of a unit to the budget now; False if it could not (it is kept for later).
Sink = Callable[[str, int], bool]


def charge_bytes(amount: int) -> None:
    """Add ``amount`` bytes to what the current message used (no-op outside a quota)."""
    _charge("bytes", amount)


def charge_cost(amount: int) -> None:
    """Add ``amount`` units of cost (say, server milliseconds) to what the current message used."""
    _charge("cost", amount)


def _charge(unit: str, amount: int) -> None:
    amount = max(0, int(amount))
    if not amount:
        return
    sink: Sink | None = getattr(_local, "sink", None)
    if sink is not None and sink(unit, amount):
        return
    setattr(_local, unit, getattr(_local, unit, 0) + amount)


def take_charged(unit: str) -> int:
    """The amount of ``unit`` the current message reported that is not charged yet; resets it."""
    amount: int = getattr(_local, unit, 0)
    setattr(_local, unit, 0)
    return amount


def take_charged_bytes() -> int:
    """Bytes the current message reported that are not charged yet, and reset the count."""
    return take_charged("bytes")


def take_charged_cost() -> int:
    """Units of cost the current message reported that are not charged yet, and reset the count."""
    return take_charged("cost")


def report_no_call() -> None:
    """The current message's call never left the process: the quota gives its request back."""
    _local.no_call = True


def no_call_reported() -> bool:
    """Whether the current message reported :func:`report_no_call` (the report stays until
    :func:`take_no_call`, so every middleware's after hook sees it, in any order)."""
    return bool(getattr(_local, "no_call", False))


def take_no_call() -> bool:
    """Whether the current message reported :func:`report_no_call`, and reset it."""
    no_call: bool = getattr(_local, "no_call", False)
    _local.no_call = False
    return no_call


def meter_into(sink: Sink | None) -> None:
    """Charge this thread's byte and cost reports to ``sink`` as they come (``None``: keep them
    for :func:`take_charged`). The quota middleware meters a message from its admission
    to its end."""
    _local.sink = sink

"""Usage that an actor reports to the quota after the fact: response bytes, or that no call was made.

The quota admits a call before it is made, when the size of the answer is
unknown; the actor reports it here once it has the answer (or as much of it
as arrived before a failure), and the quota middleware charges it to the
window the call was admitted in. An actor whose call never left the process
(it failed before sending) says so, and the quota gives the request back.
The reports are per worker thread, which is where Dramatiq runs a message
and its hooks.
"""

from __future__ import annotations

import threading

_local = threading.local()


def charge_bytes(amount: int) -> None:
    """Add ``amount`` bytes to what the current message used (no-op outside a quota)."""
    _local.bytes = getattr(_local, "bytes", 0) + max(0, int(amount))


def take_charged_bytes() -> int:
    """Bytes the current message reported, and reset the count."""
    amount: int = getattr(_local, "bytes", 0)
    _local.bytes = 0
    return amount


def report_no_call() -> None:
    """The current message's call never left the process: the quota gives its request back."""
    _local.no_call = True


def take_no_call() -> bool:
    """Whether the current message reported :func:`report_no_call`, and reset it."""
    no_call: bool = getattr(_local, "no_call", False)
    _local.no_call = False
    return no_call

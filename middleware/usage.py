"""Usage that an actor reports to the quota after the fact (response bytes).

The quota admits a call before it is made, when the size of the answer is
unknown; the actor reports it here once it has the answer, and the quota
middleware charges it to the window the call was admitted in. The report is
per worker thread, which is where Dramatiq runs a message and its hooks.
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

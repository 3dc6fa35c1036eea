"""The app's own middleware, in a top-level ``middleware.py`` as Flask projects have one.

The product's middleware package is ``enrichment_middleware``: this module
keeps its name, and the app imports both.

:class:`Ledger` writes one line per attempt of every actor to the file
``MYAPP_LEDGER`` names (``actor retries=N ok`` or ``... ErrorType``), and
tells the app's actors which attempt they run (:func:`retries`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy

_current = threading.local()


def record(line: str) -> None:
    """Append ``line`` to the ledger (one write: lines of concurrent processes do not mix)."""
    with open(os.environ.get("MYAPP_LEDGER", "ledger.log"), "a", encoding="utf-8") as ledger:
        ledger.write(line + "\n")


def retries() -> int:
    """How many times the message this thread runs was retried before (0: its first attempt)."""
    return int(getattr(_current, "retries", 0))


class Ledger(dramatiq.Middleware):
    """Records each attempt's outcome in the ledger."""

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        _current.retries = message.options.get("retries", 0)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        # The retries the attempt began with: Retries may have counted this failure already.
        outcome = "ok" if exception is None else type(exception).__name__
        record(f"{message.actor_name} retries={retries()} {outcome}")

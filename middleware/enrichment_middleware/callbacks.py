"""Dramatiq's ``on_success`` / ``on_failure`` callbacks, blind to deferrals.

A :class:`~.deferral.Defer` (raised by an actor, or by a limiting middleware
that did not admit the message) means "run me again later": the job has
neither succeeded nor failed. Dramatiq's own ``Callbacks`` sees an exception
and sends ``on_failure`` for every deferral (a job deferred seven times would
report seven failures and then, when it runs, one success). This one sends
nothing for a deferral: ``on_success`` when an attempt returns, ``on_failure``
when an attempt fails (retried or not, exactly as Dramatiq's). Only this
package raises a ``Defer``: for an app's actors on the same broker, this is
Dramatiq's ``Callbacks`` (tests/unit/test_retries_parity.py).
"""

from __future__ import annotations

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Callbacks as StockCallbacks

from .deferral import Defer


class Callbacks(StockCallbacks):
    """Chain ``on_success`` and ``on_failure`` actors, as Dramatiq's, except that a deferral fires neither.

    Examples:
      >>> replace_stock_callbacks(broker)  # where Dramatiq's stood, before any actor is declared

    Parameters:
      none: the actor options ``on_success`` and ``on_failure`` name the actors
        to send ``(message.asdict(), result)`` or ``(message.asdict(), {"type":
        ..., "message": ...})`` to, as in Dramatiq.
    """

    #: A deferral is no failure here (what enrichment_middleware.order checks beside the gates).
    understands_deferrals = True

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        if isinstance(exception, Defer):
            # Not an outcome: the job runs again later, and reports then.
            return
        super().after_process_message(broker, message, result=result, exception=exception)  # type: ignore[no-untyped-call]


def replace_stock_callbacks(broker: Broker) -> Callbacks:
    """Put :class:`Callbacks` where Dramatiq's stood on ``broker`` (or at the end) and return it."""
    callbacks = Callbacks()
    for index, middleware in enumerate(broker.middleware):
        if isinstance(middleware, StockCallbacks):
            # Same place, same actor options: the hooks run in the same order as before.
            broker.middleware[index] = callbacks
            return callbacks
    broker.add_middleware(callbacks)
    return callbacks

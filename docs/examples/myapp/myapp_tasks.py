"""The example app's tasks module: its own broker, its own actors, and the product beside them.

``dramatiq myapp_tasks`` runs the app's worker. The app's settings:

- ``MYAPP_BROKER_URL``: the app's broker, ``redis://...`` or ``amqp://...``.
- ``MYAPP_ENRICHMENT``: how the product is deployed beside the app:
  ``send`` (the default, deployment 1: the app only sends ``enrich`` jobs,
  the product's own workers, ``dramatiq enrichment_actors.worker:build``,
  run them), ``install`` (deployment 2: ``enrichment_actors.install(broker)``
  puts the product's actors on this broker, and this worker runs them too; it
  then needs the product's worker settings), or ``off`` (the app without the
  product, to compare).
- ``MYAPP_LEDGER``: the file the app's :class:`middleware.Ledger` writes to.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries, default_middleware

# The app's own middleware.py, beside the product's enrichment_middleware.
from middleware import Ledger, record, retries

BROKER_URL = os.environ.get("MYAPP_BROKER_URL", "redis://127.0.0.1:6379/0")
ENRICHMENT = os.environ.get("MYAPP_ENRICHMENT", "send")

# Dramatiq's middleware, with the app's own retry policy for all its actors.
MIDDLEWARE = [
    Retries(max_retries=2, min_backoff=100, max_backoff=1_000) if m is Retries else m()
    for m in default_middleware
]
broker: dramatiq.Broker = (
    RabbitmqBroker(url=BROKER_URL, middleware=MIDDLEWARE)
    if BROKER_URL.startswith("amqp")
    else RedisBroker(url=BROKER_URL, middleware=MIDDLEWARE)
)
broker.add_middleware(Ledger())
dramatiq.set_broker(broker)
if ENRICHMENT == "install":
    import enrichment_actors

    # Before the app's actors: a middleware must be on the broker before the actors it serves.
    enrichment_actors.install(broker)


class PaymentDeclined(Exception):
    """The bank said no, this time."""


@dramatiq.actor(on_failure="charge_failed")
def charge(order_id: int, declines: int) -> None:
    """Charge an order; the bank declines its first ``declines`` attempts."""
    if retries() < declines:
        raise PaymentDeclined(f"order {order_id} declined")


@dramatiq.actor
def charge_failed(message: dict[str, Any], error: dict[str, str]) -> None:
    """The app's ``on_failure`` callback: tell the shop (here, the ledger) that a charge failed."""
    record(f"on_failure order={message['args'][0]} {error['type']}: {error['message']}")

"""Jobs for a fleet of workers: sent as plain Dramatiq messages, which every actor module
of the benchmarks understands (the product, the product without its middleware, and
Dramatiq's ``ConcurrentRateLimiter`` alternative). The fleet itself is
:class:`tests.support.workers.WorkerProcesses`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker


def sender(redis_url: str) -> RedisBroker:
    """A broker that only sends: no middleware, so it works for any fleet's actors."""
    broker = RedisBroker(url=redis_url, middleware=[])  # type: ignore[no-untyped-call]
    return broker


def rabbitmq_sender(url: str) -> dramatiq.Broker:
    """The same on RabbitMQ, each publish confirmed as the product's are (``confirm_delivery``)."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    return RabbitmqBroker(url=url, middleware=[], confirm_delivery=True)


def send(broker: dramatiq.Broker, queue: str, actor: str, jobs: Iterable[Mapping[str, Any]]) -> int:
    """Enqueue one ``actor`` message per job (its keyword arguments); returns how many."""
    sent = 0
    for kwargs in jobs:
        broker.enqueue(
            dramatiq.Message(queue_name=queue, actor_name=actor, args=(), kwargs=dict(kwargs), options={})
        )
        sent += 1
    return sent


def grid_boxes(
    count: int, *, size_deg: float = 0.03, origin: tuple[float, float] = (10.0, 10.0)
) -> list[dict[str, float]]:
    """``count`` disjoint boxes of ``size_deg`` on a side, so that no two jobs share a POI."""
    south0, west0 = origin
    per_row = 100
    boxes = []
    for i in range(count):
        row, col = divmod(i, per_row)
        south = round(south0 + row * size_deg * 1.5, 6)
        west = round(west0 + col * size_deg * 1.5, 6)
        boxes.append(
            {
                "south": south,
                "west": west,
                "north": round(south + size_deg, 6),
                "east": round(west + size_deg, 6),
            }
        )
    return boxes

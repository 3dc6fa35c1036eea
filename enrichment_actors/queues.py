"""How many messages wait in each of the broker's queues, on Redis or RabbitMQ.

``enrichment status`` and the fleet gauges read them. The two brokers count
differently: Redis keeps every message of a queue in one hash until it is
acknowledged, so its count is waiting + delayed + in flight; AMQP tells a
queue's ready messages only (``queue.declare`` answers ``message_count``),
so on RabbitMQ it is waiting + delayed, without the messages workers hold
unacknowledged (``rabbitmqctl list_queues name messages_unacknowledged``
shows those). Parked messages are in neither: the state backend counts them.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker


class QueuesUnreachable(ConnectionError):
    """The broker did not answer a count."""


def queue_sizes(broker: dramatiq.Broker) -> tuple[tuple[str, int], ...]:
    """``(queue, messages)`` for each queue declared on ``broker``, by name; empty for a broker that cannot tell.

    Raises:
      QueuesUnreachable: RabbitMQ did not answer, even on a fresh connection.
    """
    queues = sorted(broker.get_declared_queues())
    if isinstance(broker, RedisBroker):
        return tuple((queue, int(broker.do_qsize(queue))) for queue in queues)
    if type(broker).__name__ == "RabbitmqBroker":
        return tuple((queue, _rabbitmq_ready(broker, queue)) for queue in queues)
    return ()


def _rabbitmq_ready(broker: dramatiq.Broker, queue: str) -> int:
    import pika.exceptions

    # Imported only here: pika is needed only where RabbitMQ is the broker.
    for attempt in (1, 2):
        try:
            ready, delayed, _dead = broker.get_queue_message_counts(queue)  # type: ignore[attr-defined]
            return int(ready) + int(delayed)
        except pika.exceptions.AMQPError as exc:
            # The thread's connection may have been idle past its heartbeat: one more try on a new one.
            del broker.connection  # type: ignore[attr-defined]
            if attempt == 2:
                raise QueuesUnreachable(
                    f"RabbitMQ did not answer the size of queue {queue!r} ({type(exc).__name__}: "
                    f"{exc or 'no reason given'}). Check that it is running and that RABBITMQ_URL points at it."
                ) from None
    raise AssertionError("unreachable")  # pragma: no cover

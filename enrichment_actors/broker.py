"""Dramatiq's Redis broker, with consumers that take back the messages a lost fetch reply stranded.

Dramatiq's fetch is one Lua script: it pops message ids off the queue, adds
them to this worker's acknowledgement set (``__acks__.<broker id>.<queue>``)
and returns the messages. If the connection drops after the script ran and
before the reply arrived (Redis restarted, a proxy cut the connection), the
messages sit in the acknowledgement set of a worker that never received
them. Maintenance hands an acknowledgement set on only when its worker's
heartbeat lapses, and every command this worker sends renews that heartbeat:
the messages wait until the worker process stops.

:class:`RecoveringRedisBroker` keeps, per queue, the ids of the messages
this process received and has not yet acknowledged, rejected or requeued.
Each consumer, when it starts (Dramatiq starts a new one after a connection
error), after a connection error of its own, and every ``recover_interval``
while it runs, moves every member of its acknowledgement set that this
process does not hold back to the queue, in one script.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed

from middleware.failpoints import failpoint

logger = logging.getLogger(__name__)

#: Seconds between two checks of a consumer's acknowledgement set while nothing goes wrong.
DEFAULT_RECOVER_INTERVAL_S = 5.0

# KEYS: the acknowledgement set, the queue, the queue's messages hash.
# ARGV: the ids this process holds. Returns the ids moved back to the queue.
# A member whose message is gone (acknowledged meanwhile elsewhere) is only removed.
RECOVER_STRANDED = """
local held = {}
for i = 1, #ARGV do held[ARGV[i]] = true end
local requeued = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not held[id] then
    redis.call('SREM', KEYS[1], id)
    if redis.call('HEXISTS', KEYS[3], id) == 1 then
      redis.call('RPUSH', KEYS[2], id)
      requeued[#requeued + 1] = id
    end
  end
end
return requeued
"""


class RecoveringRedisBroker(RedisBroker):
    """A :class:`dramatiq.brokers.redis.RedisBroker` whose consumers take back messages stranded by a lost reply.

    Everything else is Dramatiq's broker: same keys, same scripts, same
    heartbeat and maintenance. The ids a process holds are tracked from the
    moment a consumer yields a message until it is acknowledged, rejected or
    requeued (after Redis confirmed it, so a check never takes back a message
    being acknowledged). Messages with an ``eta`` that Dramatiq's consumer
    thread drops from memory on a connection error are forgotten with them,
    so they are taken back too.

    Examples:
      >>> broker = RecoveringRedisBroker(url="redis://localhost:6379/0", heartbeat_timeout=60_000)
      >>> dramatiq.set_broker(broker)  # doctest: +SKIP

    Parameters:
      recover_interval_s: seconds between two checks of a consumer's
        acknowledgement set when no error was seen (default 5 s). A check
        also runs when a consumer starts and after any connection error.
      **kwargs: as :class:`~dramatiq.brokers.redis.RedisBroker`.
    """

    def __init__(self, *, recover_interval_s: float = DEFAULT_RECOVER_INTERVAL_S, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self.recover_interval_s = recover_interval_s
        self._recover_script = self.client.register_script(RECOVER_STRANDED)
        self._held: defaultdict[str, set[str]] = defaultdict(set)
        self._delayed: defaultdict[str, set[str]] = defaultdict(set)
        self._held_lock = threading.Lock()

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _RecoveringConsumer

    def held(self, queue_name: str) -> set[str]:
        """The Redis ids of ``queue_name``'s messages this process received and has not settled."""
        with self._held_lock:
            return set(self._held[queue_name])

    def recover_stranded(self, queue_name: str) -> list[str]:
        """Move the members of this worker's acknowledgement set for ``queue_name`` that it does not hold
        back to the queue; returns their Redis ids. Raises ``redis.ConnectionError`` when Redis is away."""
        held = self.held(queue_name)
        keys = [
            f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}",
            f"{self.namespace}:{queue_name}",
            f"{self.namespace}:{queue_name}.msgs",
        ]
        requeued = [_text(i) for i in self._recover_script(keys=keys, args=sorted(held))]
        if requeued:
            logger.warning(
                "Took back %d message(s) of queue %r that this worker's acknowledgement set held but it never "
                "received (a fetch reply was lost); they are queued again.",
                len(requeued),
                queue_name,
            )
        return requeued

    def _hold(self, queue_name: str, message: MessageProxy) -> None:
        redis_id = message.options["redis_message_id"]
        with self._held_lock:
            self._held[queue_name].add(redis_id)
            if "eta" in message.options:
                self._delayed[queue_name].add(redis_id)

    def _settle(self, queue_name: str, redis_ids: list[str]) -> None:
        with self._held_lock:
            self._held[queue_name].difference_update(redis_ids)
            self._delayed[queue_name].difference_update(redis_ids)

    def _forget_delayed(self, queue_name: str) -> None:
        # Dramatiq's ConsumerThread empties its in-memory delay queue on a
        # connection error: those messages exist only in Redis now.
        with self._held_lock:
            self._held[queue_name].difference_update(self._delayed[queue_name])
            self._delayed[queue_name].clear()


class _RecoveringConsumer(_RedisConsumer):
    broker: RecoveringRedisBroker

    def __init__(self, broker: RecoveringRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        # A new consumer follows a worker start or a connection error: check at once.
        self._check_at = 0.0

    def __next__(self) -> MessageProxy | None:
        # Only with nothing prefetched: then every member of the acknowledgement set
        # that this process received has been yielded, so it is in held().
        if not self.message_cache and time.monotonic() >= self._check_at:
            try:
                self.broker.recover_stranded(self.queue_name)
            except redis.ConnectionError as exc:
                raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
            self._check_at = time.monotonic() + self.broker.recover_interval_s
        try:
            message: MessageProxy | None = super().__next__()  # type: ignore[no-untyped-call]
        except ConnectionClosed:
            self.broker._forget_delayed(self.queue_name)
            self._check_at = 0.0
            raise
        if message is not None:
            failpoint(
                "broker.fetched"
            )  # received, not yet held: only this thread checks, so no check sees it
            self.broker._hold(self.queue_name, message)
        return message

    def ack(self, message: MessageProxy) -> None:
        super().ack(message)  # type: ignore[no-untyped-call]
        failpoint("broker.acked")  # acknowledged in Redis, still held: a check leaves it alone
        self.broker._settle(self.queue_name, [message.options["redis_message_id"]])

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)  # type: ignore[no-untyped-call]
        self.broker._settle(self.queue_name, [message.options["redis_message_id"]])

    def requeue(self, messages: Any) -> None:
        messages = list(messages)
        super().requeue(messages)  # type: ignore[no-untyped-call]
        self.broker._settle(self.queue_name, [m.options["redis_message_id"] for m in messages])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

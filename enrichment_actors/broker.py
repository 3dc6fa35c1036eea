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
Each consumer, when it starts (Dramatiq starts a new one 3 s after a
connection error) and every ``recover_interval_s`` while it runs (a client
that retried the fetch by itself never reports the error), moves every
member of its acknowledgement set that this process does not hold back to
the queue, in one script. Failpoints: ``broker.fetched`` (a fetch reply
arrived, its messages not yet held) and ``broker.acked`` (acknowledged in
Redis, not yet let go).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message

from enrichment_middleware.failpoints import failpoint

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
    heartbeat and maintenance. A message is held from the moment its fetch
    reply arrives until it is acknowledged, rejected or requeued (after Redis
    confirmed it, so a check never takes back a message being acknowledged).
    A fetch and a check of the same queue never overlap in one process (one
    lock per queue), so a check never sees a fetched message not yet held,
    however many workers share the broker. What Dramatiq drops from memory is
    let go too, and so taken back: a consumer's prefetched messages when it
    is closed, and messages with an ``eta`` that its consumer thread forgets
    on a connection error.

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
        self._queue_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _RecoveringConsumer

    def held(self, queue_name: str) -> set[str]:
        """The Redis ids of ``queue_name``'s messages this process received and has not settled."""
        with self._held_lock:
            return set(self._held[queue_name])

    def do_fetch(self, queue_name: str, prefetch: int) -> list[bytes | None]:
        """Dramatiq's fetch; the messages it returns are held before any check of the queue can run."""
        with self._queue_lock(queue_name):
            reply: list[bytes | None] = self._dispatch("fetch")(queue_name, prefetch)  # type: ignore[no-untyped-call]
            failpoint("broker.fetched")  # in Redis's set, not yet held: the lock keeps checks out
            with self._held_lock:
                for redis_id, delayed in _ids(reply):
                    self._held[queue_name].add(redis_id)
                    if delayed:
                        self._delayed[queue_name].add(redis_id)
        return reply

    def recover_stranded(self, queue_name: str) -> list[str]:
        """Move the members of this worker's acknowledgement set for ``queue_name`` that it does not hold
        back to the queue; returns their Redis ids. Raises ``redis.ConnectionError`` when Redis is away."""
        keys = [
            f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}",
            f"{self.namespace}:{queue_name}",
            f"{self.namespace}:{queue_name}.msgs",
        ]
        with self._queue_lock(queue_name):
            held = self.held(queue_name)
            requeued = [_text(i) for i in self._recover_script(keys=keys, args=sorted(held))]
        if requeued:
            logger.warning(
                "Took back %d message(s) of queue %r that this worker's acknowledgement set held but it never "
                "received or no longer holds (a fetch reply was lost); they are queued again.",
                len(requeued),
                queue_name,
            )
        return requeued

    def _queue_lock(self, queue_name: str) -> threading.Lock:
        with self._held_lock:
            return self._queue_locks[queue_name]

    def _settle(self, queue_name: str, redis_ids: Iterable[str]) -> None:
        with self._held_lock:
            for redis_id in redis_ids:
                self._held[queue_name].discard(redis_id)
                self._delayed[queue_name].discard(redis_id)

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
        if time.monotonic() >= self._check_at:
            try:
                self.broker.recover_stranded(self.queue_name)
            except redis.ConnectionError as exc:
                raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
            self._check_at = time.monotonic() + self.broker.recover_interval_s
        try:
            message: MessageProxy | None = super().__next__()  # type: ignore[no-untyped-call]
        except ConnectionClosed:
            self.broker._forget_delayed(self.queue_name)
            raise
        return message

    def ack(self, message: MessageProxy) -> None:
        super().ack(message)  # type: ignore[no-untyped-call]
        failpoint("broker.acked")  # acknowledged in Redis, still held: a check leaves it alone
        self.broker._settle(self.queue_name, [message.options["redis_message_id"]])

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)  # type: ignore[no-untyped-call]
        redis_id = message.options["redis_message_id"]
        self.broker._settle(self.queue_name, [redis_id])
        self._keep_dead_letter(message, redis_id)

    def _keep_dead_letter(self, message: MessageProxy, redis_id: str) -> None:
        """Dead-letter ``message`` from this worker's copy if Redis lost its own.

        Dramatiq's nack moves the message it holds in Redis to the dead-letter
        queue. A Redis restarted without persistence while a worker held the
        message has neither the acknowledgement nor the body, so that moves
        nothing and the dead letter would be gone, reported only in a log line.
        """
        canonical = self.queue_name.removesuffix(".DQ")
        dead = f"{self.broker.namespace}:{canonical}.XQ"
        try:
            if self.broker.client.hexists(f"{dead}.msgs", redis_id):
                return
            pipe = self.broker.client.pipeline(transaction=True)
            pipe.zadd(dead, {redis_id: int(time.time() * 1000)}, nx=True)
            pipe.hsetnx(f"{dead}.msgs", redis_id, message._message.encode())
            pipe.execute()
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        logger.warning(
            "Message %s was dead-lettered after Redis lost its own copy (a restart without persistence): "
            "it was kept from the worker's.",
            message.message_id,
        )

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        messages = list(messages)
        super().requeue(messages)  # type: ignore[no-untyped-call]
        self.broker._settle(self.queue_name, [m.options["redis_message_id"] for m in messages])

    def close(self) -> None:
        # Prefetched messages not yet handed out leave memory with this consumer:
        # let them go, so that the next check takes them back.
        cached, self.message_cache = self.message_cache, []
        self.broker._settle(self.queue_name, [redis_id for redis_id, _ in _ids(cached)])
        super().close()


def _ids(reply: Iterable[bytes | None]) -> Iterator[tuple[str, bool]]:
    """The Redis id of each message in a fetch reply, and whether it carries an ``eta``."""
    for data in reply:
        if data is None:
            continue  # the hash had no such message: a check clears the id
        try:
            message = Message.decode(data)
        except DecodeError:
            continue  # Dramatiq's consumer reports it when it gets there
        yield message.options["redis_message_id"], "eta" in message.options


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

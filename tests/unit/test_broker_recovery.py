"""A fetch reply lost on the way: the messages it moved into the worker's acknowledgement set come back.

A TCP proxy in front of the session's Redis lets the fetch script run and
then cuts the connection instead of passing its reply on, as a Redis restart
between the two would. Dramatiq's own broker leaves those messages in the
live worker's acknowledgement set (its heartbeat keeps them claimed) until the
worker stops; :class:`RecoveringRedisBroker` queues them again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from redis.backoff import NoBackoff
from redis.retry import Retry

from enrichment_actors.broker import RecoveringRedisBroker
from enrichment_middleware import failpoints
from tests.support.contention import spin
from tests.support.proxy import FlakyProxy
from tests.support.workers import eventually

QUEUE = "strand-test"
MESSAGES = 12
#: A non-empty fetch reply (an empty one is "*0\r\n"): only a reply that carries messages is cut.
EMPTY_REPLY = b"*0\r\n"


@pytest.fixture
def proxy(redis_url: str, redis_client: redis.Redis[bytes]) -> Iterator[FlakyProxy]:
    port = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    flaky = FlakyProxy("127.0.0.1", port).up()
    yield flaky
    flaky.down()


def _broker(kind: type[RedisBroker], url: str, *, silent_retries: bool, **options: Any) -> RedisBroker:
    # Dramatiq builds its pool with redis-py's default for a pool: no retry, so the
    # consumer sees the error. A client that retries hides it: the fetch simply runs again.
    extra = {"retry": Retry(NoBackoff(), 3)} if silent_retries else {}
    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, **extra))
    # A minute of heartbeat: maintenance cannot be what brings the messages back here.
    return kind(client=client, heartbeat_timeout=60_000, **options)  # type: ignore[no-untyped-call]


class _Run:
    """A worker on ``broker`` with one actor that records each message it processes."""

    def __init__(
        self, broker: RedisBroker, *, threads: int = 2, work_s: float = 0.0, workers: int = 1
    ) -> None:
        self.broker = broker
        self.seen: Counter[int] = Counter()
        lock = threading.Lock()

        def record(n: int) -> None:
            time.sleep(work_s)
            with lock:
                self.seen[n] += 1

        self.actor = dramatiq.actor(record, broker=broker, queue_name=QUEUE, actor_name="strand_record")
        # Several workers on one broker (as tests and embedded uses run them): one consumer per queue each.
        self.workers = [
            dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50) for _ in range(workers)
        ]

    def send(self, count: int) -> None:
        for n in range(count):
            self.actor.send(n)

    def stranded(self, client: redis.Redis[bytes]) -> int:
        return int(client.scard(f"dramatiq:__acks__.{self.broker.broker_id}.{QUEUE}"))

    def __enter__(self) -> _Run:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop(timeout=5000)
        self.broker.close()


def _proxied_url(proxy: FlakyProxy) -> str:
    return f"redis://127.0.0.1:{proxy.port}/0"


@pytest.mark.parametrize("silent_retries", [False, True], ids=["error-seen", "redis-py-retries"])
def test_messages_of_a_lost_fetch_reply_are_queued_again_without_a_worker_restart(
    proxy: FlakyProxy, redis_client: redis.Redis[bytes], silent_retries: bool
) -> None:
    broker = _broker(
        RecoveringRedisBroker, _proxied_url(proxy), silent_retries=silent_retries, recover_interval_s=0.5
    )
    run = _Run(broker)
    run.send(MESSAGES)
    proxy.cut_replies(b"fetch", unless=EMPTY_REPLY)
    with run:
        took = eventually(lambda: len(run.seen) == MESSAGES, timeout_s=30, message="every message processed")
        eventually(lambda: run.stranded(redis_client) == 0, timeout_s=10, message="acknowledgement set empty")
        print(
            f"\nlost fetch reply ({'silent retry' if silent_retries else 'error'}): all back in {took:.1f}s"
        )
    assert proxy.cuts == 1
    assert set(run.seen) == set(range(MESSAGES))
    assert all(count == 1 for count in run.seen.values()), run.seen


# make chaos (9 s): it shows Dramatiq's own broker's fault; the recovery of ours stays in make test
# (test_messages_of_a_lost_fetch_reply_are_queued_again_without_a_worker_restart, both variants).
@pytest.mark.chaos
@pytest.mark.soak
def test_dramatiqs_own_broker_leaves_them_to_the_worker_that_never_got_them(
    proxy: FlakyProxy, redis_client: redis.Redis[bytes]
) -> None:
    """The fault above is real: without the recovery the messages wait in the live worker's set."""
    run = _Run(_broker(RedisBroker, _proxied_url(proxy), silent_retries=False))
    run.send(MESSAGES)
    proxy.cut_replies(b"fetch", unless=EMPTY_REPLY)
    with run:
        eventually(lambda: proxy.cuts == 1 and run.stranded(redis_client) > 0, timeout_s=10, message="a cut")
        stranded = run.stranded(redis_client)
        eventually(lambda: len(run.seen) == MESSAGES - stranded, timeout_s=30, message="the others processed")
        time.sleep(6.0)  # twice Dramatiq's consumer restart delay: nothing brings them back
        assert run.stranded(redis_client) == stranded
        assert len(run.seen) == MESSAGES - stranded


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
@pytest.mark.parametrize(
    "pauses",
    ["", "broker.acked=sleep:0-0.01", "broker.fetched=sleep:0-0.01"],
    ids=["none", "acked", "fetched"],
)
def test_checks_never_take_back_a_message_the_worker_holds(
    proxy: FlakyProxy,
    redis_client: redis.Redis[bytes],
    caplog: pytest.LogCaptureFixture,
    pauses: str,
    workers: int,
) -> None:
    """Checks every 10 ms while eight threads work on held messages beside a CPU hog, with pauses
    between the steps of receiving and acknowledging: no false recovery. Two workers in one
    process share the broker, so each consumer's checks meet the other's fetches."""
    failpoints.configure(pauses)
    broker = _broker(
        RecoveringRedisBroker, _proxied_url(proxy), silent_retries=False, recover_interval_s=0.01
    )
    run = _Run(broker, threads=8 // workers, work_s=0.02, workers=workers)
    run.send(200)
    stop = threading.Event()
    hog = threading.Thread(target=spin, args=(stop,), daemon=True)
    hog.start()
    try:
        with run:
            eventually(lambda: len(run.seen) == 200, timeout_s=60, message="every message processed")
            time.sleep(0.3)
    finally:
        stop.set()
        hog.join()
        failpoints.configure("")
    assert all(count == 1 for count in run.seen.values()), "a held message was taken back and run twice"
    assert "Took back" not in caplog.text
    assert run.stranded(redis_client) == 0


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(RecoveringRedisBroker, id="recovering"),
        # make chaos (9 s): Dramatiq's own broker's fault; the recovering one stays in make test.
        pytest.param(RedisBroker, id="dramatiq", marks=[pytest.mark.chaos, pytest.mark.soak]),
    ],
)
def test_a_delayed_message_dropped_from_memory_on_a_connection_error_comes_back(
    proxy: FlakyProxy, redis_client: redis.Redis[bytes], kind: type[RedisBroker]
) -> None:
    """Dramatiq's consumer thread empties its in-memory delay queue on a connection error; the
    message stays in the worker's set for the delay queue. Recovered, it runs when due; with
    Dramatiq's broker it waits for the worker to stop."""
    options = {"recover_interval_s": 0.5} if kind is RecoveringRedisBroker else {}
    run = _Run(_broker(kind, _proxied_url(proxy), silent_retries=False, **options))
    with run:
        run.actor.send_with_options(args=(7,), delay=2000)
        delayed = f"dramatiq:__acks__.{run.broker.broker_id}.{QUEUE}.DQ"
        eventually(lambda: redis_client.scard(delayed) == 1, timeout_s=10, message="held in memory")
        proxy.down()
        time.sleep(0.5)
        proxy.up()
        if kind is RecoveringRedisBroker:
            eventually(lambda: run.seen[7] == 1, timeout_s=30, message="the delayed message run")
            assert redis_client.scard(delayed) == 0
        else:
            time.sleep(8.0)  # well past its due time and Dramatiq's consumer restart delay
            assert run.seen[7] == 0 and redis_client.scard(delayed) == 1


@pytest.mark.parametrize("lost", [False, True], ids=["redis kept it", "redis lost it"])
def test_a_dead_letter_is_kept_when_redis_lost_the_message_a_worker_held(
    redis_url: str, redis_client: redis.Redis[bytes], lost: bool
) -> None:
    """Dramatiq's nack moves the message Redis holds to the dead letters; after a restart
    without persistence Redis holds nothing, so the worker's own copy is dead-lettered."""
    broker = RecoveringRedisBroker(url=redis_url)

    @dramatiq.actor(broker=broker, queue_name="deadq")
    def job() -> None: ...

    sent = job.send()
    consumer = broker.consume("deadq", prefetch=1, timeout=100)
    try:
        message = next(m for m in consumer if m is not None)
        if lost:
            redis_client.flushall()  # a restart without persistence: the ack and the body are gone
        message.fail()
        consumer.nack(message)
        dead = [dramatiq.Message.decode(raw) for raw in redis_client.hvals("dramatiq:deadq.XQ.msgs")]
        assert [m.message_id for m in dead] == [sent.message_id]
        assert redis_client.zcard("dramatiq:deadq.XQ") == 1
    finally:
        consumer.close()
        broker.close()

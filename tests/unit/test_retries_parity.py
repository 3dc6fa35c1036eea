"""An app's actors on a broker the product was installed on act exactly as under Dramatiq's own middleware.

Deployment 2 (README, "Adding it to your app") replaces the ``Retries`` and
``Callbacks`` of the app's broker with the product's. Each case here runs the
same app actor twice, once on a broker with Dramatiq's stock middleware and
once with ours in their place (and a gate of ours on the broker, which the
app's actors do not opt into), and compares what the app can see: the
attempts, the retry delays (each within Dramatiq's formula, and in the
broker), the callbacks, the dead letters, the log lines, and that
``broker.join`` and ``worker.join`` returned only once it was all over, as
Dramatiq's testing guide has app tests rely on.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, TimeLimit
from dramatiq.middleware import Retries as StockRetries

from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.callbacks import replace_stock_callbacks
from enrichment_middleware.policy.quota import QuotaLimits
from enrichment_middleware.quota import Quota
from enrichment_middleware.retries import Retries, replace_stock_retries

#: The backoffs (ms) of the app's Retries. Dramatiq's backoff after ``n`` retries: min * 2**n * uniform(1, 2);
#: over max, max * uniform(0.5, 1).
MIN_BACKOFF, MAX_BACKOFF = 10, 60


class AppError(Exception):
    """What the app's actor raises."""


def first_two(retries: int, exception: BaseException) -> bool:
    return retries < 1


@dataclass(frozen=True)
class AppActor:
    """One of the app's actors: its options, and how many attempts fail (None: every one)."""

    options: dict[str, Any]
    fails: int | None = None
    error: Callable[[], BaseException] = lambda: AppError("the app failed")
    #: Seconds each attempt works before it ends (in small sleeps, so that TimeLimit can interrupt it).
    works_s: float = 0.0


CASES = [
    pytest.param(
        AppActor({"max_retries": 3, "on_success": "succeeded", "on_failure": "failed"}, fails=2),
        id="fails twice, then succeeds",
    ),
    pytest.param(AppActor({"on_failure": "failed"}), id="always fails, on_failure, the app's max_retries"),
    pytest.param(
        AppActor(
            {"max_retries": 5, "throws": (ValueError,), "on_failure": "failed"},
            error=lambda: ValueError("no"),
        ),
        id="throws: dead at once",
    ),
    pytest.param(
        AppActor({"max_retries": 9, "retry_when": first_two, "on_failure": "failed"}), id="retry_when says no"
    ),
    pytest.param(
        # Attempt 1 at 0 s, attempt 2 after 0.2 s and a 10-20 ms backoff, attempt 3 would start after
        # 0.44 s: AgeLimit drops it, as the age counts from the first enqueue (a retry keeps it).
        AppActor({"max_retries": 5, "max_age": 350, "on_failure": "failed"}, works_s=0.2),
        id="max_age: a retry keeps the message's age",
    ),
    pytest.param(
        AppActor({"max_retries": 1, "time_limit": 50, "on_failure": "failed"}, fails=0, works_s=1.0),
        id="time_limit: interrupted, retried, dead",
    ),
]


@dataclass
class Seen:
    """What the app sees of one job, read right after ``broker.join`` and ``worker.join`` returned."""

    #: The ``retries`` option of each attempt.
    attempts: list[int] = field(default_factory=list)
    #: The delay (ms) of each retry, as enqueued on the broker.
    delays: list[int] = field(default_factory=list)
    callbacks: list[str] = field(default_factory=list)
    #: The ``retries`` option of each dead letter.
    dead: list[int | None] = field(default_factory=list)
    #: Log lines (logger, level, text with ids and numbers blanked), counted.
    logs: Counter[tuple[str, str, str]] = field(default_factory=Counter)


class EnqueueDelays(dramatiq.Middleware):
    """Records the delay of every message of ``actor_name`` enqueued with one (a retry in the broker)."""

    def __init__(self, actor_name: str, delays: list[int]) -> None:
        self.actor_name = actor_name
        self.delays = delays

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        if message.actor_name == self.actor_name and delay:
            self.delays.append(delay)


class LogLines(logging.Handler):
    """Counts the log lines of Dramatiq and of the product, ids and numbers blanked."""

    def __init__(self, into: Counter[tuple[str, str, str]]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("dramatiq", "enrichment")) and record.levelno >= logging.INFO:
            text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+", "N", record.getMessage())
            self.into[(record.name, record.levelname, text)] += 1


def app_broker(broker: dramatiq.Broker) -> dramatiq.Broker:
    """The app's broker: Dramatiq's middleware, its ``Retries`` configured by the app, its time limits checked often."""
    for index, middleware in enumerate(broker.middleware):
        if isinstance(middleware, StockRetries):
            broker.middleware[index] = StockRetries(
                max_retries=2, min_backoff=MIN_BACKOFF, max_backoff=MAX_BACKOFF
            )
        elif isinstance(middleware, TimeLimit):
            broker.middleware[index] = TimeLimit(interval=10)
    return broker


def with_product(broker: dramatiq.Broker) -> dramatiq.Broker:
    """What ``install(broker)`` does to the app's broker's retries and callbacks, with a gate of ours beside."""
    backend = MemoryBackend()
    # The product's own settings differ from the app's (Dramatiq's defaults here): the app's must win.
    retries = Retries(
        backend=backend, max_retries=7, min_backoff=5_000, max_backoff=9_000, poll_interval_s=0.01
    )
    replace_stock_retries(broker, retries)
    replace_stock_callbacks(broker)
    broker.add_middleware(Quota(backend, {"overpass": QuotaLimits(requests=0)}))
    return broker


def run(broker: dramatiq.Broker, app: AppActor, dead: Callable[[], list[int | None]]) -> Seen:
    """Send one job of ``app`` on ``broker``, join as an app's test does, and return what was seen then."""
    seen = Seen()
    lock = threading.Lock()
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(EnqueueDelays("subject", seen.delays))

    @dramatiq.actor(broker=broker, actor_name="subject", **app.options)
    def subject() -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        with lock:
            seen.attempts.append(message.options.get("retries", 0))
            attempt = len(seen.attempts)
        for _ in range(int(app.works_s * 100)):
            time.sleep(0.01)
        if app.fails is None or attempt <= app.fails:
            raise app.error()

    @dramatiq.actor(broker=broker, actor_name="succeeded")
    def succeeded(job: dict[str, Any], result: Any) -> None:
        with lock:
            seen.callbacks.append(f"on_success {job['actor_name']} {result}")

    @dramatiq.actor(broker=broker, actor_name="failed")
    def failed(job: dict[str, Any], error: dict[str, str]) -> None:
        with lock:
            seen.callbacks.append(f"on_failure {job['actor_name']} {error['type']}: {error['message']}")

    handler = LogLines(seen.logs)
    logging.getLogger().addHandler(handler)
    # What the CLI emits in each worker process: TimeLimit starts its watch then.
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        subject.send()
        # No polling: the app's tests read the outcome right after these return.
        broker.join(
            subject.queue_name,
            timeout=10_000,
            **({"fail_fast": False} if isinstance(broker, StubBroker) else {}),
        )
        worker.join()
        seen.dead = dead()
        return seen
    finally:
        worker.stop()
        logging.getLogger().removeHandler(handler)


def stub_dead(broker: StubBroker) -> Callable[[], list[int | None]]:
    return lambda: [m.options.get("retries") for m in broker.dead_letters]


def within_dramatiq_formula(delays: list[int]) -> bool:
    """Each retry's delay as Dramatiq's ``compute_backoff`` gives it, for retries 0, 1, 2..."""
    for retries, delay in enumerate(delays):
        ceiling = MIN_BACKOFF * 2**retries
        if ceiling * 2 <= MAX_BACKOFF:
            low, high = ceiling, ceiling * 2
        else:
            low, high = MAX_BACKOFF // 2, MAX_BACKOFF
        if not low <= delay <= high:
            return False
    return True


@pytest.mark.parametrize("app", CASES)
def test_an_apps_actor_acts_as_under_dramatiqs_own_retries_and_callbacks(app: AppActor) -> None:
    stock_broker = app_broker(StubBroker())
    stock = run(stock_broker, app, stub_dead(stock_broker))
    ours_broker = with_product(app_broker(StubBroker()))
    ours = run(ours_broker, app, stub_dead(ours_broker))

    assert within_dramatiq_formula(ours.delays) and within_dramatiq_formula(stock.delays), (ours, stock)
    # The delays are random, within that formula; all else is equal.
    ours.delays = stock.delays = []
    assert ours == stock
    assert stock.attempts and stock.callbacks  # the cases are not empty


def test_the_cases_see_what_dramatiq_does() -> None:
    """The stock runs themselves, pinned: a comparison of two empty runs would pass too."""
    broker = app_broker(StubBroker())
    seen = run(broker, CASES[0].values[0], stub_dead(broker))
    assert seen.attempts == [0, 1, 2] and len(seen.delays) == 2
    assert seen.callbacks == ["on_failure subject AppError: the app failed"] * 2 + ["on_success subject None"]
    assert seen.dead == []
    broker = app_broker(StubBroker())
    seen = run(broker, CASES[1].values[0], stub_dead(broker))
    assert seen.attempts == [0, 1, 2] and seen.dead == [3] and len(seen.callbacks) == 3
    broker = app_broker(StubBroker())
    seen = run(broker, CASES[4].values[0], stub_dead(broker))
    assert seen.attempts == [0, 1] and seen.dead == [2] and len(seen.callbacks) == 2  # the third was too old
    broker = app_broker(StubBroker())
    seen = run(broker, CASES[5].values[0], stub_dead(broker))
    assert seen.attempts == [0, 1] and seen.dead == [2]
    assert all("TimeLimitExceeded" in callback for callback in seen.callbacks) and len(seen.callbacks) == 2


@pytest.fixture
def redis_broker(redis_client: Any, redis_url: str) -> Iterator[Callable[[], RedisBroker]]:
    made: list[RedisBroker] = []

    def make() -> RedisBroker:
        redis_client.flushdb()
        made.append(RedisBroker(url=redis_url))
        app_broker(made[-1])
        return made[-1]

    yield make
    for broker in made:
        broker.close()


def test_on_redis_a_retry_waits_in_the_broker_and_join_waits_for_it(
    redis_broker: Callable[[], RedisBroker], redis_client: Any
) -> None:
    app = AppActor({"max_retries": 1, "on_success": "succeeded", "on_failure": "failed"}, fails=1)

    def dead() -> list[int | None]:
        return [None] * redis_client.zcard("dramatiq:default.XQ")

    stock = run(redis_broker(), app, dead)
    broker = redis_broker()
    with_product(broker)
    ours = run(broker, app, dead)
    assert within_dramatiq_formula(ours.delays) and len(ours.delays) == 1
    ours.delays = stock.delays = []
    assert ours == stock
    assert stock.attempts == [0, 1] and stock.callbacks[-1] == "on_success subject None"

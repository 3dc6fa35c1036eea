"""Steps shared by the behaviour scenarios: real workers, real Redis and PostgreSQL, the stand-in server."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import pytest
import redis
from pytest_bdd import given, parsers, then, when

from enrichment_actors.stub_overpass import StubOverpass
from tests.support.proxy import FlakyProxy
from tests.support.rooms import in_rooms
from tests.support.scrape import Scrape, scrape
from tests.support.workers import WorkerProcesses, eventually

QUEUE = "enrichment"


@dataclass
class World:
    """What one scenario has set up and observed."""

    redis_url: str
    database_url: str
    stub: StubOverpass | None = None
    settings: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcesses] = field(default_factory=list)
    db_proxy: FlakyProxy | None = None
    last_job: dict[str, Any] = field(default_factory=dict)
    #: The broker the workers and the app use: "redis", or "rabbitmq" (then ``rabbit`` is its server).
    broker: str = "redis"
    rabbit: Any = None

    def dead_letters(self) -> list[dramatiq.Message[Any]]:
        """The dead-lettered messages, from whichever broker holds them."""
        if self.broker == "rabbitmq":
            from tests.support import rabbitmq

            return [dramatiq.Message.decode(raw) for raw in rabbitmq.dead_letters(self.rabbit.url, QUEUE)]
        return dead_letters(self.redis_url)

    @property
    def policy(self) -> str:
        """The policy name of the stand-in server's endpoint (its quota, permits, breaker; metric label)."""
        from enrichment_actors.overpass_endpoints import endpoint_name, policy_name

        assert self.stub is not None, "start the stand-in server first"
        return policy_name(endpoint_name(self.stub.interpreter_url))

    def fleet(self, app: Any) -> Any:
        """A runtime with the workers' settings on the app's backend: the workers' policies, to read their state."""
        import os

        from enrichment_actors.runtime import build_runtime
        from enrichment_actors.settings import load_settings
        from tests.support.workers import FAST_SETTINGS

        settings = load_settings({**os.environ, **FAST_SETTINGS, **self.worker_env(), "BROKER": "stub"})
        return build_runtime(settings, backend=app.runtime.backend)

    def worker_env(self) -> dict[str, str]:
        assert self.stub is not None, "start the stand-in server first"
        database_url = self.database_url
        if self.db_proxy is not None:
            parts = urlsplit(database_url)
            database_url = parts._replace(netloc=f"{parts.username}@127.0.0.1:{self.db_proxy.port}").geturl()
        return {
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": database_url,
            "OVERPASS_URL": self.stub.interpreter_url,
            "BROKER": self.broker,
            **({"RABBITMQ_URL": self.rabbit.url} if self.rabbit is not None else {}),
            **self.settings,
        }


@pytest.fixture
def broker_kind() -> str:
    """The broker of a scenario: Redis, unless a test module parametrises this (test_pipeline.py)."""
    return "redis"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """RabbitMQ runs of scenarios not tagged ``@rabbitmq_fast`` are ``make chaos`` only (marked chaos and soak).

    ``make test`` keeps a fast subset on RabbitMQ; every scenario runs on both brokers in ``make chaos``.
    """
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("broker_kind") == "rabbitmq" and item.get_closest_marker("rabbitmq_fast") is None:
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.soak)


@pytest.fixture
def world(
    redis_url: str, postgres_url: str, broker_kind: str, request: pytest.FixtureRequest
) -> Iterator[World]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    w = World(redis_url, postgres_url, broker=broker_kind)
    if broker_kind == "rabbitmq":
        from tests.support import rabbitmq

        w.rabbit = request.getfixturevalue("rabbitmq_server")
        rabbitmq.purge(w.rabbit.url, (QUEUE,))
    yield w
    for workers in w.workers:
        workers.stop()
    if w.stub is not None:
        w.stub.stop()
    if w.db_proxy is not None:
        w.db_proxy.down()
    client.flushdb()
    client.close()


@pytest.fixture
def app(world: World) -> Iterator[Any]:
    """The product as app code uses it: ``enrich`` (the sender), with the runtime built in this process.

    ``runtime`` (its shared state) and ``broker`` (the product's, the sender's) are
    those of :func:`tests.support.product.product`. On RabbitMQ the sender
    enqueues on a RabbitMQ broker of the scenario's server (the process's own
    broker was built for Redis).
    """
    import enrichment_actors
    from enrichment_actors.sender import Sender
    from tests.support.product import product

    built = product()
    if world.broker != "rabbitmq":
        yield SimpleNamespace(enrich=enrichment_actors.enrich, runtime=built.runtime, broker=built.broker)
        return
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=world.rabbit.url, confirm_delivery=True)
    yield SimpleNamespace(enrich=Sender(broker=broker), runtime=built.runtime, broker=broker)
    broker.close()


@pytest.fixture
def store(postgres_url: str) -> Iterator[Any]:
    from enrichment_actors.store import PoiStore

    poi_store = PoiStore(postgres_url)
    yield poi_store
    poi_store.close()


@given("the POI table and the coverage ledger are empty")
def empty_ledger(store: Any) -> None:
    store.ensure_schema()
    store.model.delete().execute()
    store.ledger.coverage.delete().execute()
    store.ledger.elements.delete().execute()


def dead_letters(redis_url: str) -> list[dramatiq.Message[Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [dramatiq.Message.decode(raw) for raw in client.hvals(f"dramatiq:{QUEUE}.XQ.msgs")]
    finally:
        client.close()


def expected_pois_full(job: dict[str, Any]) -> list[tuple[str, int, float, float, dict[str, str]]]:
    """What the stand-in server answers for ``job``: its data is deterministic, so a fresh one tells."""
    from enrichment_actors.jobs import build_query, validate_job
    from enrichment_actors.overpass_client import OverpassClient

    query = build_query(validate_job(job["bbox"], job.get("tags")), timeout_s=5, maxsize_bytes=1 << 26)
    with StubOverpass() as fresh:
        client = OverpassClient(fresh.interpreter_url, user_agent="tests/expected", http_timeout_s=5)
        return [tuple(p) for p in client.fetch(query).parsed.pois]  # type: ignore[misc]


def expected_pois(job: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p[0], p[1]) for p in expected_pois_full(job)}


# --- Given -------------------------------------------------------------------


@given("the stand-in Overpass server is running")
def stand_in_server(world: World) -> None:
    world.stub = StubOverpass(slots=2).start()


@given(parsers.parse("the stand-in server answers every call with latency {ms:d} ms"))
def stand_in_latency(world: World, ms: int) -> None:
    assert world.stub is not None
    world.stub.set_latency(ms / 1000)


@given(parsers.parse('the stand-in server will answer "{outcomes}"'))
def stand_in_script(world: World, outcomes: str) -> None:
    assert world.stub is not None
    world.stub.script(*[o.strip() for o in outcomes.split(",")])


@given(parsers.parse('the stand-in server answers "{outcome}" from now on'))
def stand_in_default(world: World, outcome: str) -> None:
    assert world.stub is not None
    world.stub.set_default(outcome)


@given(parsers.parse('the setting {name} is "{value}"'))
def setting(world: World, name: str, value: str) -> None:
    world.settings[name] = value


@given("the POI table is empty")
def empty_table(store: Any) -> None:
    store.ensure_schema()
    store.model.delete().execute()


@given("the database is down")
def database_down(world: World, postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    world.db_proxy = FlakyProxy(parts.hostname or "127.0.0.1", parts.port or 5432)


@given("workers are running")
@given(parsers.parse("{processes:d} worker processes with {threads:d} threads are running"))
def workers_running(world: World, processes: int = 1, threads: int = 4) -> None:
    world.workers.append(WorkerProcesses(world.worker_env(), processes=processes, threads=threads).start())


# --- When --------------------------------------------------------------------


def _send(world: World, app: Any, **kwargs: Any) -> None:
    world.last_job = kwargs
    app.enrich.send(**kwargs)


@when(parsers.parse('I enqueue an enrich job for box "{box}" with tags "{tags}"'))
def enqueue_job(world: World, app: Any, box: str, tags: str) -> None:
    south, west, north, east = (float(v) for v in box.split(","))
    bbox = {"south": south, "west": west, "north": north, "east": east}
    _send(world, app, bbox=bbox, tags=[t.strip() for t in tags.split(",")])


@when("I enqueue the same job again")
def enqueue_again(world: World, app: Any) -> None:
    _send(world, app, **world.last_job)


@when(parsers.parse("I send enrich with {arguments}"))
def send_raw(world: World, app: Any, arguments: str) -> None:
    """Enqueue an ``enrich`` message as a client without the sender's check would (another language, say):
    the workers check it again."""
    if match := re.fullmatch(r"tags (.+) in box (\{.*\})", arguments):
        kwargs = {"tags": json.loads(match[1]), "bbox": json.loads(match[2])}
    elif arguments.startswith("bbox "):
        kwargs = {"bbox": json.loads(arguments[5:])}
    elif arguments.startswith("unexpected "):
        kwargs = json.loads(arguments[11:])
    else:
        raise ValueError(f"unknown arguments form: {arguments}")
    world.last_job = kwargs
    app.broker.enqueue(
        dramatiq.Message(queue_name=QUEUE, actor_name="enrich", args=(), kwargs=kwargs, options={})
    )


def wait_until_done(app: Any, timeout_s: float = 30.0, *, world: World | None = None) -> None:
    """Until no message is queued, in flight or parked (a retried or deferred job waits there)."""
    parking = app.runtime.retries.parking
    if world is not None and world.broker == "rabbitmq":
        _wait_until_settled_on_rabbitmq(world, parking, app.runtime.backend, timeout_s)
        return
    deadline = time.monotonic() + timeout_s
    while True:
        app.broker.join(QUEUE, timeout=max(1, int((deadline - time.monotonic()) * 1000)))
        # A message released from the parking lot, or sent on by a fair room, is enqueued
        # before it leaves: the queue is looked at again after the counts.
        if parking.count() == 0 and in_rooms(app.runtime.backend) == 0 and app.broker.do_qsize(QUEUE) == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"jobs still waiting after {timeout_s}s: {parking.count()} parked, "
                f"{in_rooms(app.runtime.backend)} in the fair rooms"
            )
        time.sleep(0.05)


def _wait_until_settled_on_rabbitmq(world: World, parking: Any, backend: Any, timeout_s: float) -> None:
    """Until nothing is parked, ready or unacknowledged, twice in a row (rabbitmqctl tells the unacknowledged).

    The parking lot is read first: a released message is enqueued (confirmed)
    before it leaves the lot, and a fetch is acknowledged only after its store
    message is confirmed; the second reading catches a message parked between
    the two reads of the first.
    """
    from tests.support import rabbitmq

    calm = 0

    def settled() -> bool:
        nonlocal calm
        idle = parking.count() == 0 and in_rooms(backend) == 0
        calm = calm + 1 if idle and rabbitmq.settled(world.rabbit, (QUEUE,)) else 0
        return calm >= 2

    eventually(
        settled, timeout_s=timeout_s, interval_s=0.2, message=f"jobs still waiting: {parking.count()} parked"
    )


@when("all jobs are done")
def all_done(app: Any, world: World) -> None:
    wait_until_done(app, world=world)


@when("storing has failed at least twice")
def storing_failed(world: World) -> None:
    def failed_stores() -> int:
        # A refusal is retried; PostgreSQL unreachable is waited out (enrichment_actors/outages.py).
        return sum(
            ("Retrying message" in line or "unreachable: this job waits" in line)
            and "Could not store" in line
            for w in world.workers
            for line in w.lines
        )

    eventually(lambda: failed_stores() >= 2, message="two failed store attempts")


@when("the database comes back")
def database_back(world: World) -> None:
    assert world.db_proxy is not None
    world.db_proxy.up()


# --- Then --------------------------------------------------------------------


@then(parsers.parse("the stand-in server received {count:d} call"))
@then(parsers.parse("the stand-in server received {count:d} calls"))
def stub_calls(world: World, count: int) -> None:
    stub = world.stub
    assert stub is not None
    if stub.stats().calls < count:
        # Jobs admitted may still be on their way to the call (a busy machine): wait for them, then
        # long enough for one more to show.
        eventually(lambda: stub.stats().calls >= count, timeout_s=10, message=f"{count} calls")
        time.sleep(0.2)
    assert stub.stats().calls == count, [r.outcome for r in stub.requests]


@then("the database holds exactly the POIs the stand-in server has for that job")
def stored_match(world: World, store: Any) -> None:
    stored = {(row[0], row[1]) for row in store.fetch_all()}
    expected = expected_pois(world.last_job)
    assert expected, "the stand-in server returned no POIs: pick a box with some"
    assert stored == expected


@then("no job is dead-lettered")
def no_dead_letters(world: World) -> None:
    assert world.dead_letters() == []


@then(parsers.parse('{count:d} job is dead-lettered with an error mentioning "{reason}"'))
def dead_lettered(world: World, count: int, reason: str) -> None:
    assert len(world.dead_letters()) == count
    logged = [line for w in world.workers for line in w.lines if "Dead-lettering message" in line]
    assert len(logged) == count and all(reason in line for line in logged), logged


@then(parsers.parse("every query it received has exactly {count:d} statement, for the key {key}"))
def query_statements(world: World, count: int, key: str) -> None:
    from enrichment_actors.jobs import build_query, validate_job

    assert world.stub is not None
    job = validate_job(world.last_job["bbox"], world.last_job["tags"])
    assert job.tags[0].key == key
    for request in world.stub.requests:
        assert request.query.count("nwr[") == count
        assert request.query == build_query(job, timeout_s=5, maxsize_bytes=67108864)


def scrape_workers(world: World) -> Scrape:
    """Scrape the (first) fleet's metrics, waiting for its exposition process to listen."""
    found: list[Scrape] = []

    def answered() -> bool:
        try:
            found.append(scrape(world.workers[0].metrics_url))
        except OSError:
            return False
        return True

    eventually(answered, timeout_s=10, message=f"an answer from {world.workers[0].metrics_url}")
    return found[-1]

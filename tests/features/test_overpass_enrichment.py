"""The three limiting middlewares on real workers (overpass_enrichment.feature)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from enrichment_middleware.backends.base import window_key
from enrichment_middleware.policy.breaker import BreakerStatus
from enrichment_middleware.policy.quota import QuotaLimits, QuotaPolicy
from tests.features.conftest import World, expected_pois_full
from tests.support.rooms import waiting_in_rooms
from tests.support.workers import WorkerProcesses, eventually

# Every scenario on the Redis broker and on RabbitMQ (the state stays in Redis
# either way); on RabbitMQ, `make test` runs those tagged @rabbitmq_fast, the
# rest are `make chaos` (tests/features/conftest.py).
pytestmark = pytest.mark.usefixtures("broker_kind")

scenarios("overpass_enrichment.feature")


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def interpreter_calls(world: World) -> list[Any]:
    """The stand-in's /api/interpreter requests (not status or kill), in the order they started."""
    assert world.stub is not None
    return sorted(
        (r for r in world.stub.requests if r.path == "/api/interpreter"), key=lambda r: r.started_at
    )


def boxes(count: int) -> list[dict[str, float]]:
    """``count`` small, distinct boxes in Paris, each with POIs at the stand-in."""
    return [
        {"south": 48.80 + i * 0.01, "west": 2.30, "north": 48.805 + i * 0.01, "east": 2.31}
        for i in range(count)
    ]


@given(parsers.parse('the database holds a stale copy of the POIs of box "{box}" with tags "{tags}"'))
def stale_copy(store: Any, box: str, tags: str) -> None:
    south, west, north, east = (float(v) for v in box.split(","))
    job = {"bbox": {"south": south, "west": west, "north": north, "east": east}, "tags": tags.split(",")}
    stale = [(p[0], p[1], p[2] + 0.5, p[3] - 0.5, {"stale": "yes"}) for p in expected_pois_full(job)]
    store.upsert(stale)


@given(parsers.parse("the stand-in server refuses calls beyond {slots:d} slots"))
def enforce_slots(world: World, slots: int) -> None:
    """Like the real server: a call beyond its slots gets a 429 (so an overshoot would show)."""
    from enrichment_actors.stub_overpass import StubOverpass

    assert world.stub is not None
    old = world.stub
    world.stub = StubOverpass(slots=slots, enforce_slots=True, latency_s=old.latency_s).start()
    old.stop()


@given(parsers.parse("the stand-in server reports a rate limit of {slots:d} slot"))
def reported_rate_limit(world: World, slots: int) -> None:
    from enrichment_actors.stub_overpass import StubOverpass

    assert world.stub is not None
    world.stub.stop()
    world.stub = StubOverpass(slots=slots).start()


@when(parsers.parse("I wait for the start of a quota window of {seconds:d} seconds"))
def wait_for_window(seconds: int) -> None:
    time.sleep(seconds - time.time() % seconds + 0.05)


@when(parsers.parse("I enqueue {count:d} enrich jobs"))
@when(parsers.parse("I enqueue {count:d} enrich job"))
def enqueue_many(world: World, app: Any, count: int) -> None:
    for bbox in boxes(count):
        world.last_job = {"bbox": bbox, "tags": ["amenity", "shop"]}
        app.enrich.send(**world.last_job)


@when("the stand-in server heals")
def heals(world: World) -> None:
    assert world.stub is not None
    world.stub.set_default("ok")


@when("a call is in flight at the stand-in")
def call_in_flight(world: World) -> None:
    assert world.stub is not None
    stub = world.stub
    eventually(lambda: stub.stats().in_flight >= 1, message="a call in flight")


@when("I kill -9 the worker process making it")
def kill_worker(world: World, app: Any) -> None:
    workers = world.workers[-1]
    assert world.fleet(app).semaphore.policies[world.policy].in_use() == 1
    workers.kill_worker()
    world.killed_at = time.monotonic()  # type: ignore[attr-defined]
    assert workers.proc is not None
    workers.proc.wait(timeout=20)  # the CLI shuts its other processes down, as on a dyno
    workers.stop()


@when("workers are started again")
def restart_workers(world: World) -> None:
    world.workers.append(WorkerProcesses(world.worker_env()).start())


@then(parsers.parse("the permit is free again within {seconds:d} seconds"))
def permit_free(world: World, app: Any, seconds: int) -> None:
    semaphore = world.fleet(app).semaphore.policies[world.policy]
    eventually(lambda: semaphore.in_use() == 0, timeout_s=seconds, message="the permit back")
    assert time.monotonic() - world.killed_at <= seconds  # type: ignore[attr-defined]


@then("the second call was made in a later quota window than the first")
def later_window(world: World) -> None:
    window = int(world.settings["QUOTA_WINDOW_S"])
    first, second = (r.started_at for r in interpreter_calls(world))
    assert int(second // window) > int(first // window)


@then("the stand-in server was asked for its status once")
def status_asked(world: World) -> None:
    assert world.stub is not None
    assert world.stub.stats().status_calls == 1


@then(parsers.parse("the second call came at least {seconds:d} second after the first"))
def second_call_later(world: World, seconds: int) -> None:
    first, second = interpreter_calls(world)
    assert first.outcome == "429"
    assert second.started_at - first.ended_at >= seconds


@then(parsers.parse("the fleet's permits in effect are {count:d}"))
def permits_in_effect(world: World, app: Any, count: int) -> None:
    assert world.fleet(app).semaphore.policies[world.policy].effective_permits() == count


@then(parsers.parse("the circuit breaker is {status}"))
def breaker_status(world: World, app: Any, status: str) -> None:
    assert world.fleet(app).breaker.policies[world.policy].state().status is BreakerStatus(status)


@then("the first call after the failures ran alone")
def probe_alone(world: World) -> None:
    calls = interpreter_calls(world)
    probe, rest = calls[3], calls[4:]
    assert probe.outcome == "ok"
    assert all(r.started_at >= probe.ended_at for r in rest)


@then(parsers.parse("the stand-in server was asked to kill my queries {count:d} times"))
def kills(world: World, count: int) -> None:
    assert world.stub is not None
    assert world.stub.stats().kill_calls == count


@then(parsers.parse("at most {count:d} calls were in flight at the stand-in at once"))
def peak(world: World, count: int) -> None:
    assert world.stub is not None
    assert world.stub.stats().peak_in_flight == count


@then("the stand-in server refused no call for lack of a slot")
def no_refusals(world: World) -> None:
    assert world.stub is not None
    assert world.stub.stats().rejected_over_slots == 0


@then("every stored POI has the position and tags the stand-in server sent")
def positions_and_tags(world: World, store: Any) -> None:
    assert sorted(store.fetch_all()) == sorted(expected_pois_full(world.last_job))


@then(parsers.parse("the quota shows {count:d} requests used"))
def quota_used(world: World, app: Any, count: int) -> None:
    limits = QuotaLimits(
        requests=int(world.settings["QUOTA_REQUESTS"]), window_s=int(world.settings["QUOTA_WINDOW_S"])
    )
    assert QuotaPolicy(world.policy, limits, app.runtime.backend).usage().requests_used == count


def counted(world: World, outcome: str) -> float:
    """How many ``outcome`` the running workers' metrics show, over every actor."""
    from enrichment_actors import metrics
    from tests.support.scrape import scrape

    total = 0.0
    for workers in world.workers:
        if workers.proc is None:
            continue
        for labels, value in scrape(workers.metrics_url).series(metrics.JOBS.sample_name).items():
            if dict(labels).get(metrics.OUTCOME) == outcome:
                total += value
    return total


def _reachable(world: World, outcome: str) -> float:
    try:
        return counted(world, outcome)
    except OSError:
        return -1.0


@when(parsers.parse('the workers have counted {count:d} "{outcome}" outcomes'))
@when(parsers.parse('the workers have counted {count:d} "{outcome}" outcome'))
def have_counted(world: World, count: int, outcome: str) -> None:
    eventually(lambda: _reachable(world, outcome) >= count, message=f"{count} {outcome} outcomes")
    assert counted(world, outcome) == count


@when(parsers.parse("{count:d} jobs wait for the next quota window"))
def wait_for_next_window(world: World, app: Any, count: int) -> None:
    """The seated jobs the quota denied are parked for the next window, keeping their seats (one more
    than the permits); the others wait behind them in the fair room."""
    parking = app.runtime.retries.parking
    eventually(
        lambda: parking.count() + waiting_in_rooms(app.runtime.backend) == count,
        message=f"{count} jobs parked or waiting in the fair room",
    )


@then(parsers.parse('the workers counted {count:d} "{outcome}" outcomes'))
@then(parsers.parse('the workers counted {count:d} "{outcome}" outcome'))
def workers_counted(world: World, count: int, outcome: str) -> None:
    eventually(lambda: _reachable(world, outcome) >= 0, timeout_s=10, message="the metrics endpoint")
    assert counted(world, outcome) == count


def charged_server_s(world: World, app: Any) -> dict[float, float]:
    """Server seconds the quota charged, per window a call started in (the quota counts ms)."""
    window = int(world.settings["QUOTA_WINDOW_S"])
    starts = sorted({r.started_at - r.started_at % window for r in interpreter_calls(world)})
    keys = [window_key(f"quota:{world.policy}", start, "cost") for start in starts]
    return {
        start: ms / 1000 for start, ms in zip(starts, app.runtime.backend.counters_get(keys), strict=True)
    }


@then("the calls spanned at least 2 quota windows, each within its server time plus the calls in flight")
def server_time_per_window(world: World, app: Any) -> None:
    charged = charged_server_s(world, app)
    budget = float(world.settings["QUOTA_SERVER_S"])
    longest = max(r.server_s for r in interpreter_calls(world))
    permits = int(world.settings.get("SEMAPHORE_PERMITS", "2"))
    assert len(charged) >= 2, charged
    assert all(0 < used <= budget + permits * longest * 1.1 for used in charged.values()), charged


@then("the server time charged is never under the stand-in's own measure and at most 10% over")
def server_time_exact(world: World, app: Any) -> None:
    measured = sum(r.server_s for r in interpreter_calls(world))
    charged = sum(charged_server_s(world, app).values())
    assert measured <= charged <= measured * 1.1, (charged, measured)

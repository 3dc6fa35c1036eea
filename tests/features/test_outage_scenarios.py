"""Outages (outages.feature): finding 3 of issue 16, on real workers, Redis, PostgreSQL (through a proxy
the scenario takes down) and the stand-in server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from tests.features.conftest import World, expected_pois
from tests.support.proxy import FlakyProxy
from tests.support.workers import eventually

scenarios("outages.feature")

#: What a worker logs each time a job is deferred for PostgreSQL (enrichment_actors/outages.py).
WAITED = "PostgreSQL unreachable: this job waits"


@pytest.fixture
def jobs() -> list[dict[str, Any]]:
    """The jobs a scenario sent."""
    return []


@given("the database refuses every POI")
def database_refuses(store: Any, request: pytest.FixtureRequest) -> None:
    """A CHECK no POI passes: every store is refused as a constraint violation, the server up all along."""
    database = store.database
    database.execute_sql("ALTER TABLE pois ADD CONSTRAINT refuse_every_poi CHECK (lat > 1000) NOT VALID")
    request.addfinalizer(lambda: database.execute_sql("ALTER TABLE pois DROP CONSTRAINT refuse_every_poi"))


@pytest.fixture
def state_proxy(world: World) -> Iterator[FlakyProxy]:
    """The workers' state backend (STATE_REDIS_URL): the session's Redis through a proxy; the broker stays direct."""
    parts = urlsplit(world.redis_url)
    proxy = FlakyProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    world.settings["STATE_REDIS_URL"] = parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    yield proxy
    proxy.down()


@given("the state backend is down")
def state_down(state_proxy: FlakyProxy) -> None:
    state_proxy.down()


@when("the state backend comes back")
def state_back(state_proxy: FlakyProxy) -> None:
    state_proxy.up()


@when(parsers.parse('I enqueue {count:d} enrich jobs, one tile each, with tags "{tags}"'))
@when(parsers.parse('I enqueue {count:d} enrich job, one tile each, with tags "{tags}"'))
def enqueue_tiles(app: Any, jobs: list[dict[str, Any]], count: int, tags: str) -> None:
    for n in range(count):
        # One tile of the 0.02-degree grid each, side by side: one call each.
        west = round(2.00 + 0.02 * n, 2)
        job = {
            "bbox": {"south": 48.00, "west": west, "north": 48.02, "east": round(west + 0.02, 2)},
            "tags": [t.strip() for t in tags.split(",")],
        }
        jobs.append(job)
        app.enrich.send(**job)


def _retries(world: World, setting: str) -> Any:
    """The workers' settings, and the value of ``setting`` (a name of the README's table) among them."""
    from enrichment_actors.settings import load_settings

    settings = load_settings(world.workers[0].env)
    return settings, getattr(settings, setting.lower())


@when(parsers.parse("PostgreSQL stays down longer than {setting} retries would last"))
@when(parsers.parse("the state backend stays down longer than {setting} retries would last"))
def down_beyond_retries(world: World, setting: str) -> None:
    """Twice the longest the retries could take (each backoff at its ceiling), and 2 s for the work between."""
    settings, retries = _retries(world, setting)
    low, high = settings.retry_min_backoff_s, settings.retry_max_backoff_s
    time.sleep(2 * sum(min(high, low * 2**n) for n in range(retries)) + 2)


@then(parsers.parse("every job waited for PostgreSQL more times than {setting} allows retries"))
def waited_beyond_retries(world: World, jobs: list[dict[str, Any]], setting: str) -> None:
    _, retries = _retries(world, setting)
    needed = len(jobs) * (retries + 2)  # the first attempt, its retries, and one more
    eventually(
        lambda: _logged(world, WAITED) >= needed,
        timeout_s=10,
        message=f"{needed} deferrals for PostgreSQL, {retries + 2} a job; {_logged(world, WAITED)} so far",
    )


@then("the database holds exactly the POIs the stand-in server has for those jobs")
def stored_all(store: Any, jobs: list[dict[str, Any]]) -> None:
    expected = set().union(*(expected_pois(job) for job in jobs))
    assert expected, "the stand-in server returned no POIs: pick boxes with some"
    assert {(row[0], row[1]) for row in store.fetch_all()} == expected


@then("the workers put waits in the broker's delay queue, the state backend being down")
def waited_in_the_broker(world: World) -> None:
    assert _logged(world, "The state backend (Redis) unreachable: this job waits") >= 2
    assert _logged(world, "in the broker's delay queue instead") >= 2


@then("no job waited for PostgreSQL")
def never_waited(world: World) -> None:
    assert _logged(world, WAITED) == 0


def _logged(world: World, text: str) -> int:
    return sum(w.count(text) for w in world.workers)

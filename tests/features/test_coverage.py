"""Coverage (coverage.feature): issue 10's ledger, tiles and claims on real workers, Redis, PostgreSQL
and the stand-in server."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from tests.features.conftest import World, expected_pois, scrape_workers, wait_until_done
from tests.support.workers import WorkerProcesses, eventually

scenarios("coverage.feature")


@pytest.fixture
def upstream() -> dict[str, list[tuple[str, int]]]:
    """What a scenario changed upstream: the POIs ``deleted``, the POI ``missing`` from the first version."""
    return {}


@when(parsers.parse('I enqueue {count:d} identical enrich jobs for box "{box}" with tags "{tags}"'))
def enqueue_identical(world: World, app: Any, count: int, box: str, tags: str) -> None:
    south, west, north, east = (float(v) for v in box.split(","))
    world.last_job = {
        "bbox": {"south": south, "west": west, "north": north, "east": east},
        "tags": [t.strip() for t in tags.split(",")],
    }
    for _ in range(count):
        app.enrich.send(**world.last_job)


@when("I enqueue the same job again with force")
def enqueue_forced(world: World, app: Any) -> None:
    app.enrich.send(**world.last_job, force=True)


@when(parsers.parse("{count:d} POIs of that job are deleted upstream"))
def delete_upstream(world: World, count: int, upstream: dict[str, list[tuple[str, int]]]) -> None:
    assert world.stub is not None
    gone = sorted(expected_pois(world.last_job))[:count]
    assert len(gone) == count
    upstream["deleted"] = gone
    world.stub.edit_data(removed=gone, osm_base="2025-01-02T08:00:00Z")


@when(parsers.parse('the stand-in server is set to answer "{outcome}" next'))
def answer_next(world: World, outcome: str) -> None:
    assert world.stub is not None
    world.stub.script(outcome)


@given(parsers.parse("{count:d} POI of the job's box is missing upstream"))
def missing_upstream(world: World, count: int, upstream: dict[str, list[tuple[str, int]]]) -> None:
    assert world.stub is not None
    box = {"south": 48.00, "west": 2.00, "north": 48.04, "east": 2.04}
    missing = sorted(expected_pois({"bbox": box, "tags": ["amenity"]}))[-count:]
    upstream["missing"] = missing
    world.stub.edit_data(removed=missing)  # in the first version: never there


@given(parsers.parse('{count:d} POI of box "{box}" is missing upstream'))
def missing_in_box(world: World, count: int, box: str, upstream: dict[str, list[tuple[str, int]]]) -> None:
    assert world.stub is not None
    south, west, north, east = (float(part) for part in box.split(","))
    job = {"bbox": {"south": south, "west": west, "north": north, "east": east}, "tags": ["amenity"]}
    missing = sorted(expected_pois(job))[-count:]
    upstream["missing"] = missing
    world.stub.edit_data(removed=missing)  # in the first version: never there


@when(parsers.parse('upstream, as of "{osm_base}", the missing POI is created'))
def missing_created(world: World, osm_base: str, upstream: dict[str, list[tuple[str, int]]]) -> None:
    assert world.stub is not None
    world.stub.edit_data(restored=upstream["missing"], osm_base=osm_base)


@when(parsers.parse('upstream, as of "{osm_base}", the POI created is deleted again'))
def created_deleted(world: World, osm_base: str, upstream: dict[str, list[tuple[str, int]]]) -> None:
    assert world.stub is not None
    world.stub.edit_data(removed=upstream["missing"], osm_base=osm_base)


@then("the last call fetched the tiles whole")
def fetched_whole(world: World) -> None:
    assert world.stub is not None
    calls = [r for r in world.stub.requests if r.path == "/api/interpreter"]
    assert calls[-1].query.startswith("[out:json]"), calls[-1].query


@when(
    parsers.parse(
        'upstream, as of "{osm_base}", the missing POI is added, {deleted:d} POIs are deleted and {retagged:d} loses its tag'
    )
)
def upstream_changes(
    world: World, osm_base: str, deleted: int, retagged: int, upstream: dict[str, list[tuple[str, int]]]
) -> None:
    assert world.stub is not None
    present = sorted(expected_pois(world.last_job) - set(upstream["missing"]))
    gone, lost = present[:deleted], present[deleted : deleted + retagged]
    world.stub.edit_data(
        restored=upstream["missing"],
        removed=gone,
        retagged={key: {"shop": "bakery"} for key in lost},
        osm_base=osm_base,
    )


@then(parsers.parse('the last call asked for an augmented diff since "{since}"'))
def asked_for_diff(world: World, since: str) -> None:
    assert world.stub is not None
    last = [r for r in world.stub.requests if r.path == "/api/interpreter"][-1]
    assert last.query.startswith(f'[out:xml][adiff:"{since}"]'), last.query


@then("the last call asked for the tiles whole")
def asked_whole(world: World) -> None:
    assert world.stub is not None
    calls = [r for r in world.stub.requests if r.path == "/api/interpreter"]
    assert "[adiff:" in calls[-2].query and calls[-2].outcome == "400", calls[-2]
    assert calls[-1].query.startswith("[out:json]"), calls[-1].query


@then("the database holds exactly what the stand-in server now has for that job")
def stored_now(world: World, store: Any) -> None:
    from enrichment_actors.jobs import build_query, validate_job

    assert world.stub is not None
    job = validate_job(world.last_job["bbox"], world.last_job["tags"])
    # Those with a position: a way printed without a centre is no POI.
    now = set(world.stub.elements(build_query(job, timeout_s=5, maxsize_bytes=1 << 26))) & expected_pois(
        world.last_job
    )
    assert now
    assert {(row[0], row[1]) for row in store.fetch_all()} == now


@then(parsers.parse('the ledger holds {tiles:d} tiles as of "{osm_base}"'))
def ledger_as_of(store: Any, tiles: int, osm_base: str) -> None:
    rows = list(store.ledger.coverage.select())
    assert len(rows) == tiles
    assert {row.osm_base for row in rows} == {osm_base}


@when(parsers.parse("the stand-in server has answered {count:d} call"))
def answered_calls(world: World, count: int) -> None:
    assert world.stub is not None
    stub = world.stub
    eventually(lambda: stub.stats().calls >= count and stub.stats().in_flight == 0, timeout_s=15)


@when(parsers.parse("{seconds:d} seconds pass"))
def seconds_pass(seconds: int) -> None:
    time.sleep(seconds)


@when("a call is in flight at the stand-in server")
def call_in_flight(world: World) -> None:
    assert world.stub is not None
    stub = world.stub
    eventually(lambda: stub.stats().in_flight >= 1, timeout_s=15, message="a call in flight")


@when("the worker is killed")
def worker_killed(world: World) -> None:
    workers = world.workers[-1]
    workers.kill_worker()
    assert workers.proc is not None
    workers.proc.wait(timeout=30)


@when("the tile claims have expired")
def claims_expired(world: World) -> None:
    time.sleep(float(world.settings["ENRICH_CLAIM_TTL_S"]) + 0.5)


@when("new workers are running")
def new_workers(world: World) -> None:
    assert world.stub is not None
    world.stub.set_latency(0)
    world.workers.append(WorkerProcesses(world.worker_env()).start())


def _logged(world: World, text: str) -> int:
    return sum(w.count(text) for w in world.workers)


@then(parsers.parse("{count:d} job ended as {outcome}"))
@then(parsers.parse("{count:d} jobs ended as {outcome}"))
def jobs_ended(world: World, count: int, outcome: str) -> None:
    assert _logged(world, f"no call ({outcome})") == count


@then(parsers.parse("no job ended as {outcome}"))
def no_job_ended(world: World, outcome: str) -> None:
    assert _logged(world, f"no call ({outcome})") == 0


@then(parsers.parse("the ledger holds {tiles:d} tiles fetched with {calls:d} call in all"))
def ledger_holds(store: Any, tiles: int, calls: int) -> None:
    rows = list(store.ledger.coverage.select())
    assert len(rows) == tiles
    assert round(sum(row.calls for row in rows), 6) == calls
    assert {row.osm_base for row in rows} == {"2025-01-01T21:21:00Z"}


def _deleted(world: World) -> set[tuple[str, int]]:
    return {tuple(pair) for pair in eval(world.settings["_deleted"])}


@then(parsers.parse("the {count:d} deleted POIs are not in the database"))
def deleted_gone(world: World, store: Any, count: int, upstream: dict[str, list[tuple[str, int]]]) -> None:
    stored = {(row[0], row[1]) for row in store.fetch_all()}
    assert len(set(upstream["deleted"])) == count
    assert not stored & set(upstream["deleted"])


@then("every other POI of that job is in the database")
def others_kept(world: World, store: Any, upstream: dict[str, list[tuple[str, int]]]) -> None:
    stored = {(row[0], row[1]) for row in store.fetch_all()}
    assert stored == expected_pois(world.last_job) - set(upstream["deleted"])


@then(parsers.parse("the {count:d} deleted POIs are still in the database"))
def deleted_kept(world: World, store: Any, count: int, upstream: dict[str, list[tuple[str, int]]]) -> None:
    stored = {(row[0], row[1]) for row in store.fetch_all()}
    assert len(set(upstream["deleted"])) == count
    assert set(upstream["deleted"]) <= stored


@then(parsers.parse("the workers counted {count:d} POIs deleted"))
def deletions_counted(world: World, count: int) -> None:
    samples = scrape_workers(world)
    assert samples.value("enrichment_pois_deleted_total") == count


@then(
    parsers.parse(
        "within {seconds:d} seconds the database holds exactly the POIs the stand-in server has for that job"
    )
)
def eventually_stored(world: World, store: Any, seconds: int) -> None:
    expected = expected_pois(world.last_job)
    assert expected

    def landed() -> bool:
        return {(row[0], row[1]) for row in store.fetch_all()} == expected

    eventually(landed, timeout_s=seconds, message="the POIs of the job after the claims expired")


__all__ = ["wait_until_done"]

"""Fair shares between sources (fair_shares.feature): issue 22's scenarios on real workers.

The order is asserted, never the time: which calls the stand-in server
received, in the order they started, and which source each was for (each
source's boxes lie in a band of latitudes of its own).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from pytest_bdd import parsers, scenarios, then, when

from enrichment_actors.stub_overpass import RecordedRequest
from tests.bench.fleet import grid_boxes
from tests.features.conftest import World, wait_until_done
from tests.support.workers import eventually

scenarios("fair_shares.feature")

#: Each source's boxes start at its own latitude, so a query's box says whose it is.
ORIGINS = {"import": (30.0, 30.0), "maps": (50.0, 30.0)}


@dataclass
class Sent:
    jobs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)


@pytest.fixture
def sent() -> Sent:
    return Sent()


def source_of(request: RecordedRequest) -> str:
    south = float(request.query.split("](", 1)[1].split(",", 1)[0])
    return min(ORIGINS, key=lambda source: abs(ORIGINS[source][0] - south))


def calls(world: World) -> list[RecordedRequest]:
    assert world.stub is not None
    return sorted(
        (r for r in world.stub.requests if r.path == "/api/interpreter"), key=lambda r: r.started_at
    )


@when(parsers.parse('source "{source}" sends {count:d} jobs'))
def source_sends(world: World, app: Any, sent: Sent, source: str, count: int) -> None:
    import time

    jobs = [
        {"bbox": box, "tags": ["amenity"]} for box in grid_boxes(count, size_deg=0.02, origin=ORIGINS[source])
    ]
    sent.jobs[source] = jobs
    sent.sent_at[source] = time.time()
    for job in jobs:
        app.enrich.send(**job, source=source)


@when(parsers.parse("the stand-in server has received {count:d} calls"))
def received(world: World, count: int) -> None:
    eventually(lambda: len(calls(world)) >= count, timeout_s=30, message=f"{count} calls at the stand-in")


@when("every job of both sources is stored")
def all_stored(world: World, app: Any) -> None:
    wait_until_done(app, timeout_s=60, world=world)


@then(
    parsers.parse('the {k:d} calls of source "{source}" are among the first {first:d} calls after its send')
)
def among_the_first(world: World, sent: Sent, k: int, source: str, first: int) -> None:
    after = [r for r in calls(world) if r.started_at >= sent.sent_at[source]]
    weights = {"maps": 4, "import": 1}
    # The bound: ceil(k (wA + wB) / wB) + 2.
    assert first == math.ceil(k * (weights["import"] + weights[source]) / weights[source]) + 2
    order = [source_of(r) for r in after]
    assert order[:first].count(source) == k, order[: first + 5]


@then("each job was called once")
def called_once(world: World, sent: Sent) -> None:
    boxes = Counter(r.query.split("](", 1)[1].split(")", 1)[0] for r in calls(world))
    assert sum(len(jobs) for jobs in sent.jobs.values()) == len(boxes)
    assert set(boxes.values()) == {1}, boxes


def stored_jobs(world: World, jobs: list[dict[str, Any]]) -> int:
    """How many of ``jobs`` have POIs in the table (a job's box holds only its own POIs)."""
    from enrichment_actors.store import PoiStore

    store = PoiStore(world.database_url)
    try:
        rows = list(store.model.select(store.model.lat, store.model.lon).tuples())
        done = 0
        for job in jobs:
            box = job["bbox"]
            if any(
                box["south"] <= lat <= box["north"] and box["west"] <= lon <= box["east"] for lat, lon in rows
            ):
                done += 1
        return done
    finally:
        store.close()


@then(parsers.parse('{n:d} jobs of source "{capped}" and every job of source "{other}" are stored'))
def capped_and_others_stored(world: World, sent: Sent, n: int, capped: str, other: str) -> None:
    eventually(
        lambda: (
            stored_jobs(world, sent.jobs[other]) == len(sent.jobs[other])
            and stored_jobs(world, sent.jobs[capped]) >= n
        ),
        timeout_s=60,
        message="the jobs within the cap stored",
    )
    assert stored_jobs(world, sent.jobs[capped]) == n
    assert sum(source_of(r) == capped for r in calls(world)) == n


@then(parsers.parse('{n:d} jobs of source "{source}" wait for the next window'))
def wait_for_next_window(world: World, app: Any, n: int, source: str) -> None:
    parking = app.runtime.retries.parking
    eventually(lambda: parking.count() == n, timeout_s=30, message=f"{n} jobs parked for the next window")


@then(parsers.parse('the status shows source "{source}" with {calls_made:d} calls this window (cap {cap:d})'))
def status_shows(world: World, app: Any, source: str, calls_made: int, cap: int) -> None:
    from enrichment_actors.cli import _sources_status
    from enrichment_middleware.policy.fair import FairLimits, FairPolicy

    limits = FairLimits(caps={source: cap}, window_s=app.runtime.settings.quota_window_s)
    lines = "\n".join(_sources_status(FairPolicy(world.policy, limits, app.runtime.backend)))
    assert f"source {source}  weight 1, 0 waiting, {calls_made} calls this window (cap {cap})" in lines, lines

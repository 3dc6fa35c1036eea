"""Prometheus metrics of real worker processes (metrics.feature)."""

from __future__ import annotations

from typing import Any

from pytest_bdd import scenarios, then

from enrichment_actors import metrics as m
from enrichment_actors.overpass_client import OverpassClient
from enrichment_actors.runtime import OVERPASS
from enrichment_actors.stub_overpass import StubOverpass
from middleware.policy.breaker import BreakerStatus
from tests.features.conftest import QUEUE, World
from tests.support.scrape import Scrape, sample_key, scrape
from tests.support.workers import eventually

scenarios("metrics.feature")


def _scrape(world: World) -> Scrape:
    """Scrape the (only) workers' endpoint, waiting for the exposition process to listen."""
    found: list[Scrape] = []

    def answered() -> bool:
        try:
            found.append(scrape(world.workers[0].metrics_url))
        except OSError:
            return False
        return True

    eventually(answered, timeout_s=10, message=f"an answer from {world.workers[0].metrics_url}")
    return found[-1]


def _rows(datatable: list[list[str]]) -> list[dict[str, str]]:
    header, *rows = datatable
    return [dict(zip(header, row, strict=True)) for row in rows]


def _nonzero(scrape: Scrape, name: str) -> dict[Any, float]:
    return {labels: value for labels, value in scrape.series(name).items() if value}


@then("the metrics endpoint shows exactly these job outcomes")
def job_outcomes(world: World, datatable: list[list[str]]) -> None:
    expected = {
        sample_key(m.JOBS.sample_name, {m.ACTOR: r["actor"], m.OUTCOME: r["outcome"], m.FINAL: r["final"]})[
            1
        ]: float(r["count"])
        for r in _rows(datatable)
    }
    found = _scrape(world)
    assert _nonzero(found, m.JOBS.sample_name) == expected, "\n".join(found.lines(m.JOBS.name))


@then("the metrics endpoint shows exactly these Overpass calls")
def overpass_calls(world: World, datatable: list[list[str]]) -> None:
    expected = {((m.STATUS, r["status"]),): float(r["count"]) for r in _rows(datatable)}
    found = _scrape(world)
    assert _nonzero(found, m.OVERPASS_CALLS.sample_name) == expected, "\n".join(
        found.lines(m.OVERPASS_CALLS.name)
    )
    durations = {
        labels: value
        for labels, value in found.series(f"{m.OVERPASS_CALL_SECONDS.name}_count").items()
        if value
    }
    assert durations == expected, "one duration per call, by the same status"


@then("the stock Dramatiq metrics count each retry once")
def stock_metrics(world: World, datatable: list[list[str]]) -> None:
    found = _scrape(world)
    columns = {
        "messages": m.MESSAGES,
        "errors": m.MESSAGE_ERRORS,
        "retries": m.MESSAGE_RETRIES,
        "rejects": m.MESSAGE_REJECTS,
    }
    for row in _rows(datatable):
        labels = {m.QUEUE_NAME: QUEUE, m.ACTOR_NAME: row["actor"]}
        counted = {column: found.value(spec.sample_name, **labels) or 0.0 for column, spec in columns.items()}
        assert counted == {column: float(row[column]) for column in columns}, row["actor"]


@then("no message is in progress or held delayed")
def nothing_in_flight(world: World) -> None:
    found = _scrape(world)
    in_progress = found.series(m.MESSAGES_IN_PROGRESS.name)
    assert in_progress and set(in_progress.values()) == {0.0}, found.lines(m.MESSAGES_IN_PROGRESS.name)
    # Retries parks its waits in Redis, so usually no message was ever held delayed.
    delayed = found.series(m.DELAYED_MESSAGES_IN_PROGRESS.name)
    assert set(delayed.values()) <= {0.0}, found.lines(m.DELAYED_MESSAGES_IN_PROGRESS.name)


def _what_the_stub_sent(world: World) -> tuple[int, int, int]:
    """(answers with POIs, POIs in them, their bytes): its data is deterministic, so a fresh one tells."""
    assert world.stub is not None
    answered = [r.query for r in world.stub.requests if r.path == "/api/interpreter" and r.outcome == "ok"]
    pois = response_bytes = 0
    with StubOverpass() as fresh:
        client = OverpassClient(fresh.interpreter_url, user_agent="tests/expected", http_timeout_s=5)
        for query in answered:
            result = client.fetch(query)
            pois += len(result.parsed.pois)
            response_bytes += result.response_bytes
    return len(answered), pois, response_bytes


@then("the POIs upserted and response bytes are what the stand-in server sent")
def pois_and_bytes(world: World) -> None:
    answers, pois, response_bytes = _what_the_stub_sent(world)
    found = _scrape(world)
    assert answers == 6 and pois > 0
    assert found.value(m.POIS_UPSERTED.sample_name) == pois
    assert found.value(f"{m.OVERPASS_RESPONSE_BYTES.name}_count") == answers
    assert found.value(f"{m.OVERPASS_RESPONSE_BYTES.name}_sum") == response_bytes


@then("the fleet gauges show the breaker closed and the quota charged 10 requests and the bytes received")
def fleet_gauges(world: World) -> None:
    found = _scrape(world)
    policy = OVERPASS
    assert found.value(m.STATE_BACKEND_UP.name) == 1
    assert found.value(m.BREAKER_STATE.name, **{m.POLICY: policy, m.STATE: BreakerStatus.CLOSED.value}) == 1
    assert found.value(m.BREAKER_STATE.name, **{m.POLICY: policy, m.STATE: BreakerStatus.OPEN.value}) == 0
    assert found.value(m.QUOTA_USED.name, **{m.POLICY: policy, m.RESOURCE: m.REQUESTS}) == 10
    _, _, response_bytes = _what_the_stub_sent(world)
    assert found.value(m.QUOTA_USED.name, **{m.POLICY: policy, m.RESOURCE: m.BYTES}) == response_bytes
    assert found.value(m.PERMITS_IN_USE.name, **{m.POLICY: policy}) == 0
    assert found.value(m.QUEUE_MESSAGES.name, **{m.QUEUE: QUEUE}) == 0
    assert found.value(m.PARKED_JOBS.name) == 0
    # The excerpt for reports (shown with pytest -s).
    print(
        "\n".join(
            line for line in found.lines("enrichment_", "dramatiq_message") if not line.endswith(" 0.0")
        )
    )

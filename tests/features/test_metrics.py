"""Prometheus metrics of real worker processes (metrics.feature)."""

from __future__ import annotations

from typing import Any

from pytest_bdd import scenarios, then

from enrichment_actors import metrics as m
from enrichment_actors.overpass_client import OverpassClient
from enrichment_actors.overpass_responses import OverpassError
from enrichment_actors.stub_overpass import StubOverpass
from enrichment_middleware.policy.breaker import BreakerStatus
from tests.features.conftest import QUEUE, World, scrape_workers
from tests.support.scrape import Scrape, sample_key

scenarios("metrics.feature")


def _rows(datatable: list[list[str]]) -> list[dict[str, str]]:
    header, *rows = datatable
    return [dict(zip(header, row, strict=True)) for row in rows]


def _nonzero(scrape: Scrape, name: str) -> dict[Any, float]:
    return {labels: value for labels, value in scrape.series(name).items() if value}


#: Deferrals whose count depends on timing: which fetches reached admission within
#: RATE_LIMIT_PAUSE_S of the 429 (paused), which found others waiting in the fair room
#: (waiting_turn). Each is a processed message too.
_TIMING = (m.Outcome.PAUSED.value, m.Outcome.WAITING_TURN.value)


def _paused(scrape: Scrape, actor: str) -> float:
    """Messages of ``actor`` deferred for a reason that depends on timing (:data:`_TIMING`)."""
    return sum(
        scrape.value(m.JOBS.sample_name, **{m.ACTOR: actor, m.OUTCOME: outcome, m.FINAL: m.FINAL_FALSE})
        or 0.0
        for outcome in _TIMING
    )


def _endpoint(world: World) -> str:
    """The stand-in's endpoint name: host:port."""
    assert world.stub is not None
    return world.stub.interpreter_url.split("/")[2]


@then("the metrics endpoint shows exactly these job outcomes")
def job_outcomes(world: World, datatable: list[list[str]]) -> None:
    expected = {
        sample_key(m.JOBS.sample_name, {m.ACTOR: r["actor"], m.OUTCOME: r["outcome"], m.FINAL: r["final"]})[
            1
        ]: float(r["count"])
        for r in _rows(datatable)
    }
    found = scrape_workers(world)
    outcomes = {
        labels: v
        for labels, v in _nonzero(found, m.JOBS.sample_name).items()
        if not any((m.OUTCOME, outcome) in labels for outcome in _TIMING)
    }
    assert outcomes == expected, "\n".join(found.lines(m.JOBS.name))


@then("the metrics endpoint shows exactly these Overpass calls")
def overpass_calls(world: World, datatable: list[list[str]]) -> None:
    by_status = {((m.STATUS, r["status"]),): float(r["count"]) for r in _rows(datatable)}
    endpoint = (m.ENDPOINT, _endpoint(world))
    expected = {(endpoint, *labels): count for labels, count in by_status.items()}
    found = scrape_workers(world)
    assert _nonzero(found, m.OVERPASS_CALLS.sample_name) == expected, "\n".join(
        found.lines(m.OVERPASS_CALLS.name)
    )
    durations = {
        labels: value
        for labels, value in found.series(f"{m.OVERPASS_CALL_SECONDS.name}_count").items()
        if value
    }
    assert durations == by_status, "one duration per call, by the same status"


@then("the stock Dramatiq metrics count each retry once")
def stock_metrics(world: World, datatable: list[list[str]]) -> None:
    found = scrape_workers(world)
    columns = {
        "messages": m.MESSAGES,
        "errors": m.MESSAGE_ERRORS,
        "retries": m.MESSAGE_RETRIES,
        "rejects": m.MESSAGE_REJECTS,
    }
    for row in _rows(datatable):
        labels = {m.QUEUE_NAME: QUEUE, m.ACTOR_NAME: row["actor"]}
        counted = {column: found.value(spec.sample_name, **labels) or 0.0 for column, spec in columns.items()}
        counted["messages"] -= _paused(found, row["actor"])
        assert counted == {column: float(row[column]) for column in columns}, row["actor"]


@then("no message is in progress or held delayed")
def nothing_in_flight(world: World) -> None:
    found = scrape_workers(world)
    in_progress = found.series(m.MESSAGES_IN_PROGRESS.name)
    assert in_progress and set(in_progress.values()) == {0.0}, found.lines(m.MESSAGES_IN_PROGRESS.name)
    # Retries parks its waits in Redis, so usually no message was ever held delayed.
    delayed = found.series(m.DELAYED_MESSAGES_IN_PROGRESS.name)
    assert set(delayed.values()) <= {0.0}, found.lines(m.DELAYED_MESSAGES_IN_PROGRESS.name)


def _what_the_stub_sent(world: World) -> tuple[int, int, int, int]:
    """(answers with POIs, POIs in them, their bytes, every byte of every answer, failed ones too).

    Its pages and data are deterministic, so a fresh one, scripted with the
    same outcomes for the same queries, tells.
    """
    assert world.stub is not None
    calls = [r for r in world.stub.requests if r.path == "/api/interpreter"]
    answers = pois = answer_bytes = every_byte = 0
    with StubOverpass() as fresh:
        client = OverpassClient(fresh.interpreter_url, user_agent="tests/expected", http_timeout_s=5)
        for call in calls:
            fresh.script(call.outcome)
            try:
                result = client.fetch(call.query)
            except OverpassError as exc:
                every_byte += exc.response_bytes
                continue
            answers += 1
            pois += len(result.parsed.pois)
            answer_bytes += result.response_bytes
            every_byte += result.response_bytes
    return answers, pois, answer_bytes, every_byte


@then("the POIs upserted and response bytes are what the stand-in server sent")
def pois_and_bytes(world: World) -> None:
    answers, pois, response_bytes, _ = _what_the_stub_sent(world)
    found = scrape_workers(world)
    assert answers == 6 and pois > 0
    assert found.value(m.POIS_UPSERTED.sample_name) == pois
    assert found.value(f"{m.OVERPASS_RESPONSE_BYTES.name}_count") == answers
    assert found.value(f"{m.OVERPASS_RESPONSE_BYTES.name}_sum") == response_bytes


@then("the fleet gauges show the breaker closed and the quota charged 10 requests and every byte received")
def fleet_gauges(world: World) -> None:
    found = scrape_workers(world)
    policy = world.policy
    assert found.value(m.STATE_BACKEND_UP.name) == 1
    assert found.value(m.BREAKER_STATE.name, **{m.POLICY: policy, m.STATE: BreakerStatus.CLOSED.value}) == 1
    assert found.value(m.BREAKER_STATE.name, **{m.POLICY: policy, m.STATE: BreakerStatus.OPEN.value}) == 0
    assert found.value(m.QUOTA_USED.name, **{m.POLICY: policy, m.RESOURCE: m.REQUESTS}) == 10
    # Every byte downloaded is charged, the failed answers' too (a 504 page, a remark after the POIs).
    _, _, answer_bytes, every_byte = _what_the_stub_sent(world)
    assert every_byte > answer_bytes
    assert found.value(m.QUOTA_USED.name, **{m.POLICY: policy, m.RESOURCE: m.BYTES}) == every_byte
    assert found.value(m.PERMITS_IN_USE.name, **{m.POLICY: policy}) == 0
    assert found.value(m.QUEUE_MESSAGES.name, **{m.QUEUE: QUEUE}) == 0
    assert found.value(m.PARKED_JOBS.name) == 0
    assert found.value(m.PARKED_ORPHANS.name) == 0
    # The 429's pause is over, nothing is held, pacing is off on a private endpoint.
    assert found.value(m.ENDPOINT_PAUSED.name, **{m.POLICY: policy}) == 0
    assert found.value(m.ENDPOINT_HELD.name, **{m.POLICY: policy}) == 0
    assert found.value(m.PACING_INTERVAL.name, **{m.POLICY: policy}) == 0
    # The excerpt for reports (shown with pytest -s).
    print(
        "\n".join(
            line for line in found.lines("enrichment_", "dramatiq_message") if not line.endswith(" 0.0")
        )
    )

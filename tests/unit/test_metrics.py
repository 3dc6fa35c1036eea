"""Outcomes: each kind of message ending increments exactly its own series; the docs name only real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from prometheus_client import CollectorRegistry

from enrichment_actors import metrics as m
from enrichment_actors.jobs import InvalidJob
from enrichment_actors.metrics import Outcome, is_final, note_outcome, outcome_of
from enrichment_actors.outages import DATABASE_UNAVAILABLE, OutageTooLong
from enrichment_actors.overpass_responses import (
    BadResponse,
    ClientTimeout,
    ConnectionFailed,
    QueryFailed,
    QueryOutOfMemory,
    QueryRejected,
    QueryTimedOut,
    RateLimited,
    ServerBusy,
    ServerUnwell,
    UnexpectedStatus,
    UserAgentRejected,
)
from enrichment_actors.prometheus import EnrichmentPrometheus
from enrichment_actors.store import PersistenceError
from enrichment_middleware.admission import STATE_UNAVAILABLE
from enrichment_middleware.breaker import CIRCUIT_OPEN
from enrichment_middleware.deferral import AdmissionDenied, Defer, Waiting
from enrichment_middleware.fair import SOURCE_CAPPED, WAITING_TURN
from enrichment_middleware.policy.pause import HELD, PAUSED
from enrichment_middleware.quota import QUOTA_EXHAUSTED
from enrichment_middleware.semaphore import NO_PERMIT

DOCS = Path(__file__).resolve().parents[2] / "docs"
ENRICH, FETCH, STORE = "enrich", "fetch_pois", "store_pois"


class Case(NamedTuple):
    """One way a message ends, and what it must record."""

    actor: str
    exception: BaseException | None
    failed: bool  # dead-lettered by Retries
    noted: Outcome | None  # noted by the actor without raising
    outcome: Outcome
    final: bool


CASES: list[Any] = [
    pytest.param(Case(STORE, None, False, None, Outcome.SUCCESS, True), id="stored"),
    pytest.param(Case(ENRICH, InvalidJob("south must be below north"), True, None, Outcome.INVALID_REQUEST, True), id="invalid"),
    pytest.param(Case(FETCH, InvalidJob("depth"), True, None, Outcome.INVALID_REQUEST, True), id="invalid-at-fetch"),
    pytest.param(Case(FETCH, AdmissionDenied(60, QUOTA_EXHAUSTED), False, None, Outcome.QUOTA_DENIED, False), id="quota"),
    pytest.param(Case(FETCH, AdmissionDenied(5, CIRCUIT_OPEN), False, None, Outcome.CIRCUIT_OPEN, False), id="breaker"),
    pytest.param(Case(FETCH, Defer(30, Outcome.RATE_LIMITED.value), False, None, Outcome.RATE_LIMITED, False), id="429"),
    pytest.param(Case(FETCH, RateLimited("429", status=429), False, None, Outcome.RATE_LIMITED, False), id="429-raw"),
    pytest.param(Case(FETCH, Defer(40, Outcome.DUPLICATE_QUERY.value), False, None, Outcome.DUPLICATE_QUERY, False), id="duplicate"),
    pytest.param(Case(FETCH, AdmissionDenied(30, PAUSED), False, None, Outcome.PAUSED, False), id="paused"),
    pytest.param(Case(FETCH, AdmissionDenied(60, HELD), False, None, Outcome.HELD, False), id="held"),
    pytest.param(Case(FETCH, Defer(60, HELD), False, None, Outcome.HELD, False), id="406-held-by-the-actor"),
    pytest.param(Case(FETCH, AdmissionDenied(8.6, "paced"), False, None, Outcome.PACED, False), id="paced"),
    pytest.param(Case(FETCH, ServerUnwell("enomem", status=200), False, None, Outcome.UPSTREAM_ERROR, False), id="server-unwell"),
    pytest.param(Case(FETCH, AdmissionDenied(0.5, NO_PERMIT), False, None, Outcome.DEFERRED_PERMIT, False), id="permit"),
    pytest.param(Case(FETCH, Waiting(WAITING_TURN), False, None, Outcome.WAITING_TURN, False), id="waiting-turn"),
    pytest.param(Case(FETCH, AdmissionDenied(60, SOURCE_CAPPED), False, None, Outcome.SOURCE_CAPPED, False), id="source-capped"),
    pytest.param(Case(FETCH, AdmissionDenied(5, STATE_UNAVAILABLE), False, None, Outcome.STATE_UNAVAILABLE, False), id="redis"),
    pytest.param(Case(STORE, Defer(5, STATE_UNAVAILABLE), False, None, Outcome.STATE_UNAVAILABLE, False), id="redis-at-store"),
    pytest.param(Case(STORE, Defer(5, DATABASE_UNAVAILABLE), False, None, Outcome.DATABASE_UNAVAILABLE, False), id="db-down"),
    pytest.param(Case(ENRICH, Defer(5, DATABASE_UNAVAILABLE), False, None, Outcome.DATABASE_UNAVAILABLE, False), id="db-down-at-enrich"),
    pytest.param(Case(STORE, OutageTooLong("PostgreSQL unreachable for 24 h"), True, None, Outcome.OUTAGE_TOO_LONG, True), id="outage-too-long"),
    pytest.param(Case(FETCH, ServerBusy("504", status=504), False, None, Outcome.UPSTREAM_ERROR, False), id="504"),
    pytest.param(Case(FETCH, ConnectionFailed("refused"), False, None, Outcome.UPSTREAM_ERROR, False), id="connection"),
    pytest.param(Case(FETCH, UnexpectedStatus("502", status=502), False, None, Outcome.UPSTREAM_ERROR, False), id="502"),
    pytest.param(Case(FETCH, ClientTimeout("read timeout"), False, None, Outcome.TIMEOUT, False), id="timeout"),
    pytest.param(Case(FETCH, BadResponse("cut off", status=200), False, None, Outcome.BAD_RESPONSE, False), id="cutoff"),
    pytest.param(Case(FETCH, None, False, Outcome.SPLIT, Outcome.SPLIT, True), id="split"),
    pytest.param(Case(ENRICH, None, False, Outcome.FRESH, Outcome.FRESH, True), id="fresh"),
    pytest.param(Case(ENRICH, None, False, Outcome.COALESCED, Outcome.COALESCED, True), id="coalesced"),
    pytest.param(Case(FETCH, None, False, Outcome.FRESH, Outcome.FRESH, True), id="fresh-at-fetch"),
    pytest.param(Case(FETCH, QueryTimedOut("remark", status=200), True, None, Outcome.QUERY_TOO_LARGE, True), id="too-large"),
    pytest.param(Case(FETCH, QueryOutOfMemory("remark", status=200), True, None, Outcome.QUERY_TOO_LARGE, True), id="oom"),
    pytest.param(Case(FETCH, QueryRejected("400", messages=["parse error"]), True, None, Outcome.REJECTED, True), id="400"),
    pytest.param(Case(FETCH, UserAgentRejected("406", status=406), True, None, Outcome.REJECTED, True), id="406"),
    pytest.param(Case(FETCH, QueryFailed("remark", status=200), True, None, Outcome.REJECTED, True), id="runtime-error"),
    pytest.param(Case(FETCH, UnexpectedStatus("403", status=403), True, None, Outcome.REJECTED, True), id="403"),
    pytest.param(Case(FETCH, ServerBusy("504", status=504), True, None, Outcome.RETRIES_EXHAUSTED, True), id="exhausted"),
    pytest.param(Case(ENRICH, ConnectionError("broker"), True, None, Outcome.RETRIES_EXHAUSTED, True), id="exhausted-ours"),
    pytest.param(Case(STORE, PersistenceError("db down"), False, None, Outcome.PERSISTENCE_ERROR, False), id="db-retry"),
    pytest.param(Case(STORE, PersistenceError("db down"), True, None, Outcome.PERSISTENCE_ERROR, True), id="db-final"),
    pytest.param(Case(STORE, RuntimeError("bug"), True, None, Outcome.PERSISTENCE_ERROR, True), id="store-bug-final"),
    pytest.param(Case(ENRICH, RuntimeError("bug"), False, None, Outcome.INTERNAL_ERROR, False), id="bug"),
    pytest.param(Case(FETCH, Defer(1, "a reason nobody mapped"), False, None, Outcome.INTERNAL_ERROR, False), id="unmapped"),
    pytest.param(Case(FETCH, ServerBusy("504", status=504), False, Outcome.SPLIT, Outcome.UPSTREAM_ERROR, False), id="raise-wins"),
    pytest.param(Case(STORE, None, True, None, Outcome.SKIPPED, True), id="failed-before-actor"),
]  # fmt: skip

#: Messages that only hand the job on record nothing.
HANDED_ON = [pytest.param(ENRICH, id="enrich"), pytest.param(FETCH, id="fetch")]


@pytest.fixture
def recorder() -> tuple[EnrichmentPrometheus, CollectorRegistry]:
    metrics = EnrichmentPrometheus()
    registry = CollectorRegistry()
    metrics.start_recording(registry)
    return metrics, registry


def jobs_series(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    """Every enrichment_jobs_total sample above zero, by (actor, outcome, final)."""
    return {
        (s.labels[m.ACTOR], s.labels[m.OUTCOME], s.labels[m.FINAL]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == m.JOBS.sample_name and s.value
    }


def process(
    metrics: EnrichmentPrometheus,
    actor: str,
    exception: BaseException | None,
    *,
    failed: bool,
    noted: Outcome | None,
) -> None:
    """Run one message through the middleware's hooks as a worker does, the actor in between."""
    proxy = MessageProxy(
        dramatiq.Message(queue_name="enrichment", actor_name=actor, args=(), kwargs={}, options={})
    )
    broker = StubBroker()
    metrics.before_process_message(broker, proxy)
    if noted is not None:
        note_outcome(noted)  # what the actor does on a split
    if failed:
        proxy.fail()  # what Retries does on a dead letter, before this after-hook runs
    metrics.after_process_message(broker, proxy, exception=exception)


@pytest.mark.parametrize("case", CASES)
def test_each_ending_increments_exactly_its_own_series(
    recorder: tuple[EnrichmentPrometheus, CollectorRegistry], case: Case
) -> None:
    metrics, registry = recorder
    process(metrics, case.actor, case.exception, failed=case.failed, noted=case.noted)
    assert jobs_series(registry) == {(case.actor, case.outcome.value, m.final_label(case.final)): 1.0}
    assert outcome_of(case.actor, case.exception, failed=case.failed, noted=case.noted) is case.outcome
    assert is_final(case.outcome, failed=case.failed) is case.final


@pytest.mark.parametrize("actor", HANDED_ON)
def test_a_message_that_hands_the_job_on_records_no_outcome(
    recorder: tuple[EnrichmentPrometheus, CollectorRegistry], actor: str
) -> None:
    metrics, registry = recorder
    process(metrics, actor, None, failed=False, noted=None)
    assert jobs_series(registry) == {}


def test_the_cases_cover_every_outcome() -> None:
    covered = {param.values[0].outcome for param in CASES}
    assert covered == set(Outcome)


def test_a_note_is_read_by_its_own_message_only(
    recorder: tuple[EnrichmentPrometheus, CollectorRegistry],
) -> None:
    metrics, registry = recorder
    note_outcome(Outcome.SPLIT)  # left behind, say, by a message whose hooks did not run
    process(metrics, FETCH, None, failed=False, noted=None)
    assert jobs_series(registry) == {}


def test_every_deferral_reason_of_the_product_has_its_own_outcome() -> None:
    reasons = [
        QUOTA_EXHAUSTED,
        CIRCUIT_OPEN,
        NO_PERMIT,
        STATE_UNAVAILABLE,
        Outcome.RATE_LIMITED.value,
        PAUSED,
        HELD,
        "paced",
        WAITING_TURN,
        SOURCE_CAPPED,
    ]
    outcomes = {outcome_of(FETCH, Defer(1, reason), failed=False) for reason in reasons}
    assert len(outcomes) == len(reasons) and Outcome.INTERNAL_ERROR not in outcomes


def test_recording_before_boot_does_nothing() -> None:
    metrics = EnrichmentPrometheus()
    assert not metrics.recording
    process(metrics, STORE, None, failed=False, noted=None)
    metrics.observe_overpass_call(m.CALL_OK, 0.1, endpoint="a.example", response_bytes=10)
    metrics.count_pois_upserted(3)
    metrics.count_elements_dropped(2)
    metrics.count_osm_base_unusable()


def test_call_metrics_record_status_duration_and_bytes(
    recorder: tuple[EnrichmentPrometheus, CollectorRegistry],
) -> None:
    metrics, registry = recorder
    metrics.observe_overpass_call(m.CALL_OK, 0.3, endpoint="a.example", response_bytes=52_000)
    metrics.observe_overpass_call(ServerBusy.label, 0.02, endpoint="b.example:8080")
    metrics.observe_overpass_call(ServerBusy.label, 0.02, endpoint="b.example:8080")
    metrics.count_pois_upserted(17)
    metrics.count_elements_dropped(0)
    metrics.count_elements_dropped(2)
    metrics.count_osm_base_unusable()
    value = registry.get_sample_value
    assert value(m.OSM_BASE_UNUSABLE.sample_name) == 1
    assert value(m.OVERPASS_CALLS.sample_name, {m.ENDPOINT: "a.example", m.STATUS: m.CALL_OK}) == 1
    assert value(m.OVERPASS_CALLS.sample_name, {m.ENDPOINT: "b.example:8080", m.STATUS: "server_busy"}) == 2
    assert value(m.OVERPASS_CALLS.sample_name, {m.ENDPOINT: "a.example", m.STATUS: "server_busy"}) is None
    assert value(f"{m.OVERPASS_CALL_SECONDS.name}_sum", {m.STATUS: m.CALL_OK}) == pytest.approx(0.3)
    assert value(f"{m.OVERPASS_CALL_SECONDS.name}_bucket", {m.STATUS: "server_busy", "le": "0.05"}) == 2
    assert value(f"{m.OVERPASS_RESPONSE_BYTES.name}_count") == 1  # failures have no body size
    assert value(f"{m.OVERPASS_RESPONSE_BYTES.name}_sum") == 52_000
    assert value(m.POIS_UPSERTED.sample_name) == 17
    assert value(m.ELEMENTS_DROPPED.sample_name) == 2


# --- The docs name only metrics defined in metrics.py, and document all of them ----------------------

_METRIC_NAME = re.compile(r"\b((?:enrichment|dramatiq)_[a-z_]+)\b")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in {s.name for s in m.ALL_METRICS}:
            return name[: -len(suffix)]
    return name


def _named_metrics(text: str) -> set[str]:
    """Metric names in ``text``; not the package, settings, or families written as ``enrichment_quota_*``."""
    other = ("enrichment_actors", "dramatiq_prom_")
    return {_base(n) for n in _METRIC_NAME.findall(text) if not n.startswith(other) and not n.endswith("_")}


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DOCS / "grafana" / "enrichment.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.mark.parametrize(
    "source",
    [
        pytest.param((DOCS / "operations.md").read_text, id="operations.md"),
        pytest.param((DOCS / "prometheus" / "alerts.yml").read_text, id="alerts.yml"),
        pytest.param(lambda: "\n".join(_dashboard_exprs()), id="enrichment.json"),
    ],
)
def test_docs_name_only_defined_metrics(source: Any) -> None:
    assert _named_metrics(source()) <= {spec.name for spec in m.ALL_METRICS}


def test_operations_documents_every_metric_outcome_and_call_status() -> None:
    text = (DOCS / "operations.md").read_text()
    rows = {match for match in re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE)}
    assert {spec.sample_name for spec in m.ALL_METRICS} <= rows
    assert {outcome.value for outcome in Outcome} <= rows
    statuses = text.split("### Overpass call statuses", 1)[1].split("\n", 1)[1].split("## Dashboard", 1)[0]
    assert set(re.findall(r"`([a-z_]+)`", statuses)) == set(m.call_statuses())


def test_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads((DOCS / "grafana" / "enrichment.json").read_text())
    titles = " / ".join(panel["title"].lower() for panel in dashboard["panels"])
    for needed in ("outcomes", "latency", "breaker", "quota burn", "permits"):
        assert needed in titles
    exprs = "\n".join(_dashboard_exprs())
    assert "histogram_quantile" in exprs and m.OVERPASS_CALL_SECONDS.name in exprs
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])

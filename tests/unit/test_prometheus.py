"""The Prometheus middleware, its multiprocess directory, the fleet collector and the exposition."""

from __future__ import annotations

import collections
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis
from dramatiq.middleware import Retries as StockRetries
from prometheus_client import CollectorRegistry, Counter, generate_latest

from enrichment_actors import metrics as m
from enrichment_actors.overpass_responses import ServerBusy
from enrichment_actors.prometheus import (
    EndpointReading,
    EnrichmentPrometheus,
    FleetCollector,
    FleetReading,
    claim_directory,
    launcher_identity,
    make_exposition_server,
    read_endpoints,
    read_fleet,
    read_sources,
)
from enrichment_actors.runtime import OVERPASS, build_runtime
from enrichment_actors.settings import load_settings
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.deferral import Defer
from enrichment_middleware.policy.breaker import BreakerStatus
from enrichment_middleware.policy.fair import FairLimits, FairPolicy
from enrichment_middleware.policy.pacing import PacingLimits, PacingPolicy
from enrichment_middleware.policy.pause import PauseLimits, PausePolicy
from enrichment_middleware.policy.quota import QuotaUsage
from enrichment_middleware.retries import Retries
from tests.support.scrape import Scrape

REPO = Path(__file__).resolve().parents[2]
QUEUE = "enrichment"
RATE_LIMITED = m.Outcome.RATE_LIMITED.value
EMPTY_READING = FleetReading(quotas=(), breakers=(), permits=(), parked=0, queued=())


# --- Stock metrics, made right -------------------------------------------------------------------


@pytest.fixture
def recorded_broker() -> Iterator[tuple[StubBroker, CollectorRegistry]]:
    """A stub broker with the product's Retries and the metrics middleware before it, recording."""
    broker = StubBroker()
    broker.middleware[:] = [mw for mw in broker.middleware if not isinstance(mw, StockRetries)]
    broker.add_middleware(Retries(max_retries=3, min_backoff=10, max_backoff=50))
    metrics = EnrichmentPrometheus()
    broker.add_middleware(metrics, before=Retries)
    registry = CollectorRegistry()
    metrics.start_recording(registry)
    yield broker, registry
    broker.close()


def run(broker: StubBroker, send: Any) -> None:
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        send()
        broker.join(QUEUE, fail_fast=False, timeout=10_000)
        worker.join()
    finally:
        worker.stop()


def test_a_retry_counts_once_and_a_deferral_never(
    recorded_broker: tuple[StubBroker, CollectorRegistry],
) -> None:
    broker, registry = recorded_broker
    attempts: collections.Counter[str] = collections.Counter()

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def flaky() -> None:
        attempts["flaky"] += 1
        if attempts["flaky"] < 3:
            raise ServerBusy("504 too busy", status=504)

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def deferring() -> None:
        attempts["deferring"] += 1
        if attempts["deferring"] < 3:
            raise Defer(0.01, RATE_LIMITED)

    run(broker, lambda: (flaky.send(), deferring.send()))

    def value(spec: m.MetricSpec, actor: str) -> float | None:
        return registry.get_sample_value(spec.sample_name, {m.QUEUE_NAME: QUEUE, m.ACTOR_NAME: actor})

    assert attempts == {"flaky": 3, "deferring": 3}
    # The stock middleware counts 4 retries for flaky: each enqueue to the delay
    # queue and each move back from it.
    assert (value(m.MESSAGE_RETRIES, "flaky"), value(m.MESSAGE_ERRORS, "flaky")) == (2, 2)
    assert value(m.MESSAGE_RETRIES, "deferring") is None and value(m.MESSAGE_ERRORS, "deferring") is None
    assert (value(m.MESSAGES, "flaky"), value(m.MESSAGES, "deferring")) == (3, 3)
    jobs = {
        (s.labels[m.ACTOR], s.labels[m.OUTCOME], s.labels[m.FINAL]): s.value
        for f in registry.collect()
        for s in f.samples
        if s.name == m.JOBS.sample_name and s.value
    }
    assert jobs == {("flaky", "upstream_error", "false"): 2, ("deferring", "rate_limited", "false"): 2}


@pytest.mark.parametrize("stock", [True, False], ids=["app-without-prometheus", "app-with-prometheus"])
def test_on_an_apps_broker_only_our_actors_are_counted(stock: bool) -> None:
    """``install(broker)``: the app's actor is not ours to count; with the app's own Prometheus
    middleware, Dramatiq's stock metrics are its to record (ours would count our actors twice)."""
    broker = StubBroker()
    broker.middleware[:] = [mw for mw in broker.middleware if not isinstance(mw, StockRetries)]
    broker.add_middleware(Retries(max_retries=0))
    metrics = EnrichmentPrometheus(actors=["store_pois"], stock=stock)
    broker.add_middleware(metrics, before=Retries)
    registry = CollectorRegistry()
    metrics.start_recording(registry)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="store_pois")
    def ours() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def app_job() -> None:
        pass

    run(broker, lambda: (ours.send(), app_job.send()))
    broker.close()

    def counted(spec: m.MetricSpec) -> dict[str, float]:
        return {
            s.labels.get(m.ACTOR_NAME) or s.labels[m.ACTOR]: s.value
            for f in registry.collect()
            for s in f.samples
            if s.name == spec.sample_name and s.value
        }

    assert counted(m.JOBS) == {"store_pois": 1}
    assert counted(m.MESSAGES) == ({"store_pois": 1} if stock else {})


def test_gauges_return_to_zero_on_the_queue_they_rose_on(
    recorded_broker: tuple[StubBroker, CollectorRegistry],
) -> None:
    broker, registry = recorded_broker
    attempts: collections.Counter[str] = collections.Counter()

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def deferring() -> None:
        attempts["deferring"] += 1
        if attempts["deferring"] < 4:
            raise Defer(0.01, RATE_LIMITED)

    run(broker, deferring.send)
    gauges = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in registry.collect()
        for s in f.samples
        if s.name in (m.DELAYED_MESSAGES_IN_PROGRESS.name, m.MESSAGES_IN_PROGRESS.name)
    }
    labels = ((m.ACTOR_NAME, "deferring"), (m.QUEUE_NAME, QUEUE))
    # The stock gauge rises on "enrichment.DQ" and falls on "enrichment": -3 there.
    assert gauges == {
        (m.DELAYED_MESSAGES_IN_PROGRESS.name, labels): 0.0,
        (m.MESSAGES_IN_PROGRESS.name, labels): 0.0,
    }
    assert attempts["deferring"] == 4


def test_a_skipped_message_ends_its_job_and_is_not_left_in_progress(
    recorded_broker: tuple[StubBroker, CollectorRegistry],
) -> None:
    broker, registry = recorded_broker

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def too_old() -> None:
        raise AssertionError("AgeLimit should have skipped it")

    stale = too_old.message_with_options(max_age=1_000).copy(message_timestamp=current_millis() - 60_000)
    run(broker, lambda: broker.enqueue(stale))
    value = registry.get_sample_value
    assert value(m.JOBS.sample_name, {m.ACTOR: "too_old", m.OUTCOME: "skipped", m.FINAL: "true"}) == 1
    assert value(m.MESSAGES.sample_name, {m.QUEUE_NAME: QUEUE, m.ACTOR_NAME: "too_old"}) == 1
    assert value(m.MESSAGES_IN_PROGRESS.name, {m.QUEUE_NAME: QUEUE, m.ACTOR_NAME: "too_old"}) is None


# --- Wiring --------------------------------------------------------------------------------------


def test_metrics_sit_right_before_retries_with_the_redis_broker(redis_url: str) -> None:
    runtime = build_runtime(load_settings({"REDIS_URL": redis_url, "BROKER": "redis"}))
    kinds = [type(mw) for mw in runtime.broker.middleware]
    assert kinds.index(EnrichmentPrometheus) == kinds.index(Retries) - 1
    assert runtime.broker.middleware[kinds.index(EnrichmentPrometheus)] is runtime.metrics
    assert not runtime.metrics.recording  # until process boot


def test_metrics_are_off_with_the_stub_broker() -> None:
    runtime = build_runtime(load_settings({"BROKER": "stub", "STATE_BACKEND": "memory"}))
    assert not any(isinstance(mw, EnrichmentPrometheus) for mw in runtime.broker.middleware)
    runtime.metrics.observe_overpass_call(
        m.CALL_OK, 0.1, endpoint="a.example"
    )  # the actors may still call it


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (process boot changes process-wide state)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env={**os.environ, "BROKER": "stub", "STATE_BACKEND": "memory", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_importing_the_product_does_not_import_prometheus_client() -> None:
    done = _python(
        "import sys, enrichment_actors; print('prometheus_client' in sys.modules)", env={"BROKER": "redis"}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


BOOT = """
import logging, sys
logging.basicConfig(level=logging.INFO)
import prometheus_client  # too early, on purpose: boot must repair it and say so
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from dramatiq.brokers.stub import StubBroker
from enrichment_actors.prometheus import EnrichmentPrometheus

metrics = EnrichmentPrometheus(db_path=sys.argv[1])
metrics.after_process_boot(StubBroker())
metrics.observe_overpass_call("ok", 0.2, endpoint="a.example", response_bytes=1234)
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry, path=sys.argv[1])
print(generate_latest(registry).decode())
"""


def test_process_boot_clears_stale_files_and_writes_multiprocess_files(tmp_path: Path) -> None:
    (tmp_path / "counter_999999.db").write_bytes(b"left by a run that crashed")
    done = _python(BOOT, str(tmp_path))
    assert done.returncode == 0, done.stderr
    scrape = Scrape.parse(done.stdout)
    assert scrape.value(m.OVERPASS_CALLS.sample_name, endpoint="a.example", status=m.CALL_OK) == 1
    assert scrape.value(f"{m.OVERPASS_RESPONSE_BYTES.name}_sum") == 1234
    assert not (tmp_path / "counter_999999.db").exists()
    assert "imported before process boot" in done.stderr
    assert "Deleted 1 metrics files of an earlier run" in done.stderr


# --- The multiprocess directory ------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_files_are_cleared_once_per_cli_start(tmp_path: Path) -> None:
    dead = _dead_pid()
    (tmp_path / f"counter_{dead}.db").write_bytes(b"an earlier run")
    assert claim_directory(str(tmp_path), "cli-pid:start-1")
    assert not (tmp_path / f"counter_{dead}.db").exists()
    (tmp_path / f"gauge_liveall_{dead}.db").write_bytes(b"a worker of this run, gone since")
    assert not claim_directory(str(tmp_path), "cli-pid:start-1")  # the second worker of the same start
    assert (tmp_path / f"gauge_liveall_{dead}.db").exists()
    assert claim_directory(str(tmp_path), "cli-pid:start-2")  # the next CLI start
    assert not (tmp_path / f"gauge_liveall_{dead}.db").exists()


def test_a_second_fleet_keeps_the_live_files_of_the_first(tmp_path: Path) -> None:
    """Two fleets on one host: the second's start deletes only files of processes that are gone."""
    live = tmp_path / f"counter_{os.getpid()}.db"
    live.write_bytes(b"a worker of the first fleet, still running")
    dead = tmp_path / f"histogram_{_dead_pid()}.db"
    dead.write_bytes(b"an earlier run")
    assert claim_directory(str(tmp_path), "first-cli:1")
    assert claim_directory(str(tmp_path), "second-cli:1")
    assert live.exists()
    assert not dead.exists()


def test_racing_workers_clear_exactly_once(tmp_path: Path) -> None:
    results: list[bool] = []
    start = threading.Barrier(8)

    def boot() -> None:
        start.wait()
        results.append(claim_directory(str(tmp_path / "prom"), "cli:1"))

    threads = [threading.Thread(target=boot) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_the_launcher_is_the_parent_process_at_its_start_time() -> None:
    identity = launcher_identity()
    assert identity == launcher_identity()
    pid, started = identity.split(":")
    assert int(pid) == os.getppid() and started.isdigit()


# --- Fleet gauges --------------------------------------------------------------------------------


def _scrape(collector: FleetCollector) -> Scrape:
    registry = CollectorRegistry()
    registry.register(collector)
    return Scrape.parse(generate_latest(registry).decode())


def test_fleet_gauges_read_the_shared_state(redis_client: Any, redis_url: str) -> None:
    runtime = build_runtime(
        load_settings(
            {
                "REDIS_URL": redis_url,
                # A private endpoint: its permits and quota are as configured.
                "OVERPASS_URL": "http://127.0.0.1:9/api/interpreter",
                "QUOTA_REQUESTS": "100",
                "QUOTA_BYTES": "1000",
                "SEMAPHORE_PERMITS": "3",
                "BREAKER_FAILURE_THRESHOLD": "2",
                "PACING_INTERVAL_S": "2.5",
            }
        )
    )
    quota = runtime.quota.policies[runtime.endpoint().policy]
    decision = quota.admit()
    quota.admit()
    quota.record_bytes(300, decision.window_start)
    assert runtime.semaphore.policies[runtime.endpoint().policy].try_acquire("holder-1") is not None
    breaker = runtime.breaker.policies[runtime.endpoint().policy]
    for holder in ("a", "b"):
        breaker.record(breaker.admit(holder), success=False)
    assert runtime.retries.parking is not None
    runtime.retries.parking.park("parked-1", b"payload", delay_s=3600)
    runtime.broker.declare_queue(QUEUE)
    runtime.broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="x", args=(), kwargs={}, options={}))
    runtime.pause.policies[runtime.endpoint().policy].hold("user_agent_rejected", "fingerprint-1")

    scrape = _scrape(FleetCollector(lambda: read_fleet(runtime)))
    policy = {m.POLICY: "overpass@127.0.0.1:9"}
    assert scrape.value(m.STATE_BACKEND_UP.name) == 1
    assert {labels: v for labels, v in scrape.series(m.BREAKER_STATE.name).items() if v} == {
        ((m.POLICY, "overpass@127.0.0.1:9"), (m.STATE, BreakerStatus.OPEN.value)): 1.0
    }
    assert len(scrape.series(m.BREAKER_STATE.name)) == len(BreakerStatus)
    assert scrape.value(m.PERMITS_IN_USE.name, **policy) == 1
    assert scrape.value(m.PERMITS_LIMIT.name, **policy) == 3
    assert scrape.value(m.QUOTA_USED.name, **policy, resource=m.REQUESTS) == 2
    assert scrape.value(m.QUOTA_LEFT.name, **policy, resource=m.REQUESTS) == 98
    assert scrape.value(m.QUOTA_LIMIT.name, **policy, resource=m.BYTES) == 1000
    assert scrape.value(m.QUOTA_LEFT.name, **policy, resource=m.BYTES) == 700
    # Server time, in seconds (the quota counts ms): the default 300 s, nothing charged yet.
    assert scrape.value(m.QUOTA_LIMIT.name, **policy, resource=m.SERVER_SECONDS) == 300
    assert scrape.value(m.QUOTA_USED.name, **policy, resource=m.SERVER_SECONDS) == 0
    assert scrape.value(m.QUOTA_SERVER_SECONDS_PER_CALL.name, **policy) == 0  # two calls, none charged
    start = scrape.value(m.QUOTA_WINDOW_START.name, **policy)
    end = scrape.value(m.QUOTA_WINDOW_END.name, **policy)
    assert start is not None and end == start + 86_400 and start <= time.time() < end
    assert scrape.value(m.PARKED_JOBS.name) == 1
    assert scrape.value(m.PARKED_ORPHANS.name) == 0
    assert scrape.value(m.QUEUE_MESSAGES.name, queue=QUEUE) == 1
    assert scrape.value(m.ENDPOINT_HELD.name, **policy) == 1
    assert scrape.value(m.ENDPOINT_PAUSED.name, **policy) == 0
    assert scrape.value(m.PACING_INTERVAL.name, **policy) == 2.5


def test_endpoint_gauges_and_orphans_are_exported() -> None:
    reading = FleetReading(
        quotas=(),
        breakers=(),
        permits=(),
        parked=0,
        queued=(),
        endpoints=(
            EndpointReading("overpass@a", paused=True, pause_remaining_s=12.5, pacing_interval_s=8.64),
            EndpointReading("overpass@b", held=True),
        ),
        orphans=2,
    )
    scrape = _scrape(FleetCollector(lambda: reading))
    assert scrape.series(m.ENDPOINT_PAUSED.name) == {
        ((m.POLICY, "overpass@a"),): 1.0,
        ((m.POLICY, "overpass@b"),): 0.0,
    }
    assert scrape.series(m.ENDPOINT_HELD.name) == {
        ((m.POLICY, "overpass@a"),): 0.0,
        ((m.POLICY, "overpass@b"),): 1.0,
    }
    assert scrape.value(m.ENDPOINT_PAUSE_REMAINING.name, policy="overpass@a") == 12.5
    # No pacing policy on b: no interval sample rather than a made-up 0.
    assert scrape.series(m.PACING_INTERVAL.name) == {((m.POLICY, "overpass@a"),): 8.64}
    assert scrape.value(m.PARKED_ORPHANS.name) == 2


def test_source_gauges_name_the_configured_sources_and_sum_the_others(
    redis_client: Any, redis_url: str
) -> None:
    backend = RedisBackend.from_url(redis_url, namespace="enrichment")
    room = FairPolicy("overpass@a", FairLimits(seats=1, weights={"maps": 4.0}, caps={"refresh": 5}), backend)
    first = room.enter("maps", "m0", b"")
    for lane, member in [("maps", "m1"), ("import-1", "i1"), ("import-2", "i2"), ("refresh", "r1")]:
        room.enter(lane, member, b"")
    room.leave(room.seat_of(first, "m0"), called="maps")

    reading = FleetReading(
        quotas=(), breakers=(), permits=(), parked=0, queued=(), sources=read_sources({"a": room})
    )
    scrape = _scrape(FleetCollector(lambda: reading))

    waiting = {labels[1][1]: value for labels, value in scrape.series(m.SOURCE_WAITING.name).items()}
    assert waiting == {"maps": 0.0, "other": 2.0, "refresh": 1.0}  # m1 was handed the seat
    calls = {labels[1][1]: value for labels, value in scrape.series(m.SOURCE_CALLS.name).items()}
    assert calls == {"maps": 1.0, "other": 0.0, "refresh": 0.0}
    assert scrape.series(m.SOURCE_CAP.name) == {((m.POLICY, "a"), (m.SOURCE, "refresh")): 5.0}


def test_endpoint_gauges_read_the_shared_state(redis_client: Any, redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, namespace="enrichment")
    pauses = {name: PausePolicy(name, PauseLimits(), backend) for name in ("overpass@a", "overpass@b")}
    pacing = {"overpass@a": PacingPolicy("overpass@a", PacingLimits(interval_s=8.64), backend)}
    assert pauses["overpass@a"].pause(30.0, "rate_limited")
    assert pauses["overpass@b"].hold("user_agent_rejected", "fingerprint-1")

    a, b = read_endpoints(pauses, pacing)

    assert (a.policy, a.paused, a.held, a.pacing_interval_s) == ("overpass@a", True, False, 8.64)
    assert 25.0 < a.pause_remaining_s <= 30.0
    assert (b.policy, b.paused, b.held, b.pacing_interval_s) == ("overpass@b", False, True, None)


def test_an_unlimited_quota_exports_use_but_no_limit() -> None:
    usage = QuotaUsage(OVERPASS, 0.0, 86_400.0, 12, -1, 3400, -1)
    scrape = _scrape(FleetCollector(lambda: FleetReading((usage,), (), (), 0, ())))
    assert scrape.value(m.QUOTA_USED.name, policy=OVERPASS, resource=m.REQUESTS) == 12
    assert scrape.value(m.QUOTA_USED.name, policy=OVERPASS, resource=m.BYTES) == 3400
    assert scrape.series(m.QUOTA_LIMIT.name) == {} and scrape.series(m.QUOTA_LEFT.name) == {}


def test_unreachable_redis_exports_backend_down_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    runtime = build_runtime(load_settings({"REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0"}))
    collector = FleetCollector(lambda: read_fleet(runtime), max_age_s=0)
    with caplog.at_level(logging.DEBUG, logger="enrichment_actors.prometheus"):
        started = time.monotonic()
        scrapes = [_scrape(collector), _scrape(collector)]
        elapsed = time.monotonic() - started
    for scrape in scrapes:
        assert scrape.samples == {(m.STATE_BACKEND_UP.name, ()): 0.0}
    assert elapsed < 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()


def _closed_port() -> int:
    """A loopback port with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_slow_backend_does_not_hang_a_scrape(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    reads = []

    def slow_read() -> FleetReading:
        reads.append(1)
        release.wait(5)
        return EMPTY_READING

    collector = FleetCollector(slow_read, timeout_s=0.1)
    started = time.monotonic()
    first, second = _scrape(collector), _scrape(collector)
    assert time.monotonic() - started < 1
    assert first.samples == second.samples == {(m.STATE_BACKEND_UP.name, ()): 0.0}
    assert len(reads) == 1, "a hung read is waited on, never piled up"
    assert "no answer within 0.1s" in caplog.text
    release.set()
    time.sleep(0.05)
    assert _scrape(collector).value(m.STATE_BACKEND_UP.name) == 1
    assert len(reads) == 1, "the late reading is used while fresh"


def test_a_reading_is_reused_while_fresh() -> None:
    now = [100.0]
    reads = []

    def read() -> FleetReading:
        reads.append(now[0])
        return EMPTY_READING

    collector = FleetCollector(read, max_age_s=2.0, clock=lambda: now[0])
    _scrape(collector)
    now[0] += 1.5
    _scrape(collector)
    now[0] += 1.0
    _scrape(collector)
    assert reads == [100.0, 102.5]


def test_a_bug_in_the_reading_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> FleetReading:
        raise KeyError("a bug of ours")

    scrape = _scrape(FleetCollector(broken))
    assert scrape.value(m.STATE_BACKEND_UP.name) == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].exc_info is not None and "KeyError" in errors[0].getMessage()


# --- The exposition ------------------------------------------------------------------------------


@pytest.fixture
def serve() -> Iterator[Any]:
    servers = []

    def start(registry: CollectorRegistry) -> str:
        server = make_exposition_server(registry, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/metrics"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_exposition_serves_worker_and_fleet_metrics(serve: Any) -> None:
    registry = CollectorRegistry()
    Counter("worker_thing", "A worker counter.", registry=registry).inc(3)
    registry.register(FleetCollector(lambda: EMPTY_READING))
    with urllib.request.urlopen(serve(registry), timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        scrape = Scrape.parse(response.read().decode())
    assert scrape.value("worker_thing_total") == 3
    assert scrape.value(m.STATE_BACKEND_UP.name) == 1
    assert scrape.value(m.PARKED_JOBS.name) == 0


def test_an_export_error_answers_500_and_is_logged(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def collect(self) -> Iterator[Any]:
            raise OSError("corrupt multiprocess file")

    registry = CollectorRegistry()
    registry.register(Broken())  # type: ignore[arg-type]
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(serve(registry), timeout=5)
    assert failed.value.code == 500
    assert "Could not export the metrics" in caplog.text and "corrupt multiprocess file" in caplog.text

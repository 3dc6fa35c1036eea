"""The circuit breaker lets its waiters go when the probe ends, and a Defer says nothing about the upstream.

Finding 9 of issue 8: jobs denied while the half-open probe was out came
back only when the probe's claim would have expired (the lease time, 95 s in
production), long after a probe that succeeded in a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries as StockRetries

from enrichment_middleware.backends.base import Backend
from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.breaker import CircuitBreaker, Verdict, every_exception_fails
from enrichment_middleware.deferral import AdmissionDenied, Defer
from enrichment_middleware.policy.breaker import BreakerLimits, BreakerPolicy, BreakerStatus
from enrichment_middleware.policy.semaphore import SemaphoreLimits
from enrichment_middleware.retries import Retries
from enrichment_middleware.semaphore import ConcurrencySemaphore
from enrichment_middleware.usage import report_no_call
from tests.support.contention import cpu_hog
from tests.support.workers import eventually

#: A probe claim far longer than the test may take: the old code made waiters wait for it.
PROBE_TTL_S = 60.0


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    from enrichment_middleware.backends.redis import RedisBackend

    request.getfixturevalue("redis_client")
    yield RedisBackend.from_url(request.getfixturevalue("redis_url"), namespace="waiters")


def make_broker(backend: Backend, limits: BreakerLimits) -> tuple[StubBroker, CircuitBreaker]:
    """A broker in the product's order: permit, breaker (then the quota, not needed here)."""
    broker = StubBroker()
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, StockRetries)]
    broker.add_middleware(Retries(backend=backend, max_retries=0, poll_interval_s=0.02))
    semaphore = ConcurrencySemaphore(
        backend,
        {
            "up": SemaphoreLimits(
                permits=2, lease_s=PROBE_TTL_S, wait_s=0.2, retry_min_s=0.01, retry_max_s=0.05
            )
        },
    )
    breaker = CircuitBreaker(backend, {"up": limits})
    broker.add_middleware(semaphore)
    broker.add_middleware(breaker)
    return broker, breaker


def test_waiters_run_within_seconds_of_a_probe_that_succeeds(backend: Backend) -> None:
    limits = BreakerLimits(
        failure_threshold=1, cooldown_s=0.2, probe_ttl_s=PROBE_TTL_S, jitter_s=0.3, probe_recheck_s=0.5
    )
    broker, breaker = make_broker(backend, limits)
    policy = breaker.policies["up"]
    probing = threading.Event()
    calls: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, breaker="up")
    def call(name: str, duration_s: float) -> None:
        started = time.monotonic()
        if name == "probe":
            probing.set()
        time.sleep(duration_s)
        with lock:
            calls[name] = (started, time.monotonic())

    # The circuit is open; once its cooldown is over, the first job is the probe.
    policy.record(policy.admit("seed"), success=False)
    eventually(lambda: time.time() > policy.state().open_until, timeout_s=5, interval_s=0.01)
    call.send("probe", 1.0)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=20)
    with cpu_hog():
        worker.start()
        try:
            eventually(probing.is_set, timeout_s=10, interval_s=0.01)
            for i in range(6):
                call.send(f"waiter{i}", 0.0)
            eventually(lambda: len(calls) == 7, timeout_s=PROBE_TTL_S / 3, message="waiters still held back")
        finally:
            worker.stop()
    _, probe_ended = calls.pop("probe")
    waiters_started = sorted(started for started, _ in calls.values())
    # Not one waiter called while the probe was out; all called within a few
    # seconds after it ended (re-check 0.5 s + jitter 0.3 s, on a busy machine).
    assert waiters_started[0] >= probe_ended
    assert waiters_started[-1] - probe_ended < 5.0, waiters_started[-1] - probe_ended
    assert policy.state().status is BreakerStatus.CLOSED


@pytest.mark.parametrize(
    ("exception", "verdict"),
    [
        pytest.param(None, Verdict.SUCCESS, id="a return is a success"),
        pytest.param(RuntimeError("500"), Verdict.FAILURE, id="an exception is a failure"),
        pytest.param(Defer(30.0, "asked to wait"), Verdict.IGNORE, id="the actor's own Defer says nothing"),
        pytest.param(AdmissionDenied(1.0, "no_permit"), Verdict.IGNORE, id="a denial says nothing"),
    ],
)
def test_the_default_verdict(exception: BaseException | None, verdict: Verdict) -> None:
    assert every_exception_fails(exception) is verdict


def test_an_actors_defer_neither_opens_the_circuit_nor_keeps_the_probe(backend: Backend) -> None:
    # Threshold 1 and a long cooldown: a Defer counted as a failure would
    # keep the job out for a minute.
    limits = BreakerLimits(failure_threshold=1, cooldown_s=60.0, probe_ttl_s=PROBE_TTL_S, jitter_s=0.05)
    broker, breaker = make_broker(backend, limits)
    policy = breaker.policies["up"]
    runs: list[str] = []

    @dramatiq.actor(broker=broker, breaker="up")
    def polite(name: str) -> None:
        runs.append(name)
        if runs.count(name) == 1:
            raise Defer(0.05, "the upstream asked us to slow down")

    polite.send("closed")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        eventually(lambda: runs.count("closed") == 2, timeout_s=10, interval_s=0.01)
        state = policy.state()
        assert state.status is BreakerStatus.CLOSED and state.failures == 0
        # Half-open (opened by a policy of the same name with a short
        # cooldown): a probe that defers gives its claim back, and runs again
        # as the probe, rather than reopening the circuit for a minute.
        short = BreakerPolicy("up", replace(limits, cooldown_s=0.1), backend)
        short.record(short.admit("seed"), success=False)
        eventually(lambda: time.time() > policy.state().open_until, timeout_s=5, interval_s=0.01)
        polite.send("probe")
        eventually(lambda: runs.count("probe") == 2, timeout_s=10, interval_s=0.01)
        eventually(lambda: policy.state().status is BreakerStatus.CLOSED, timeout_s=5, interval_s=0.01)
    finally:
        worker.stop()


def test_a_probe_whose_call_never_left_does_not_close_the_circuit(backend: Backend) -> None:
    # A retried fetch that resends a staged answer makes no call: if it was
    # admitted as the probe, its "success" says nothing about the upstream.
    limits = BreakerLimits(failure_threshold=1, cooldown_s=0.1, probe_ttl_s=PROBE_TTL_S, jitter_s=0.05)
    broker, breaker = make_broker(backend, limits)
    policy = breaker.policies["up"]
    runs: list[str] = []

    @dramatiq.actor(broker=broker, breaker="up")
    def resend(name: str) -> None:
        runs.append(name)
        report_no_call()

    policy.record(policy.admit("seed"), success=False)
    eventually(lambda: time.time() > policy.state().open_until, timeout_s=5, interval_s=0.01)
    resend.send("no call")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        eventually(lambda: runs == ["no call"], timeout_s=10, interval_s=0.01)
        broker.join(resend.queue_name)
        worker.join()
    finally:
        worker.stop()
    state = policy.state()
    # Still half-open, with the claim given back so the next real call probes at once.
    assert state.status is BreakerStatus.HALF_OPEN, state
    assert state.probe_holder is None

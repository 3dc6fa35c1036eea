"""Budgets do not leak: bytes checked at the moment of the call, every byte charged, unsent calls given back.

Finding 3 of issue 8: with a byte budget of 1, 8 to 10 calls were made,
because jobs admitted by the quota before the bytes ran out waited for a
permit and then called; a call that never left the process still spent its
request. These tests run the middlewares in the product's order (permit,
breaker, quota) on a real Redis backend, with several worker threads and a
CPU hog in the same process.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries as StockRetries

from enrichment_middleware.backends.base import Backend
from enrichment_middleware.breaker import CircuitBreaker
from enrichment_middleware.policy.breaker import BreakerLimits
from enrichment_middleware.policy.quota import QuotaLimits
from enrichment_middleware.policy.semaphore import SemaphoreLimits
from enrichment_middleware.quota import Quota
from enrichment_middleware.retries import Retries
from enrichment_middleware.semaphore import ConcurrencySemaphore, release_permit_early
from enrichment_middleware.usage import charge_bytes, report_no_call
from tests.support.contention import cpu_hog
from tests.support.workers import eventually

#: The size of every answer in these tests.
ANSWER_BYTES = 500


class NotSent(Exception):
    """The actor failed before its call left the process."""


class CutOff(Exception):
    """The answer broke off after some bytes had arrived."""


@dataclass
class Fleet:
    broker: StubBroker
    quota: Quota
    retries: Retries
    calls: list[str] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, name: str, duration_s: float) -> None:
        with self.lock:
            self.calls.append(name)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        time.sleep(duration_s)
        with self.lock:
            self.in_flight -= 1


def settle(fleet: Fleet, worker: dramatiq.Worker, timeout_s: float = 30.0) -> None:
    """Wait until every message ran to its end: none queued, none in a worker, none parked.

    A job that found no permit in time is parked in the backend, not queued,
    so the broker's queue can be empty while it still has to come back.
    """
    parking = fleet.retries.parking
    assert parking is not None

    def done() -> bool:
        fleet.broker.join("default", fail_fast=False, timeout=int(timeout_s * 1000))
        worker.join()
        return parking.count() == 0 and not fleet.broker.queues["default"].qsize()

    eventually(done, timeout_s=timeout_s, interval_s=0.05, message="messages still parked or queued")


@pytest.fixture
def backend(redis_client: object, redis_url: str) -> Backend:
    from enrichment_middleware.backends.redis import RedisBackend

    return RedisBackend.from_url(redis_url, namespace="budget")


def make_fleet(backend: Backend, *, permits: int, requests: int = -1, bytes_: int = -1) -> Fleet:
    broker = StubBroker()
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, StockRetries)]
    retries = Retries(backend=backend, max_retries=0, poll_interval_s=0.02)
    semaphore = ConcurrencySemaphore(
        backend,
        {"up": SemaphoreLimits(permits=permits, lease_s=30, wait_s=0.3, retry_min_s=0.01, retry_max_s=0.05)},
    )
    breaker = CircuitBreaker(backend, {"up": BreakerLimits(failure_threshold=1000)})
    quota = Quota(backend, {"up": QuotaLimits(requests=requests, bytes=bytes_, window_s=3600, jitter_s=0.0)})
    broker.add_middleware(retries)
    # The product's order (enrichment_actors/runtime.py).
    for middleware in (semaphore, breaker, quota):
        broker.add_middleware(middleware)
    return Fleet(broker, quota, retries)


@pytest.mark.parametrize("permits", [1, 2])
def test_a_byte_budget_of_one_allows_at_most_the_calls_in_flight_together(
    backend: Backend, permits: int
) -> None:
    """The true bound: limit - 1 + the answers of the calls in flight when it ran out, so at most ``permits`` calls."""
    fleet = make_fleet(backend, permits=permits, bytes_=1)
    jobs = 16

    @dramatiq.actor(broker=fleet.broker, quota="up", semaphore="up", breaker="up")
    def fetch(i: int) -> None:
        fleet.call(f"job{i}", 0.05)
        # The usage is reported before the permit goes back, as usage.py asks.
        charge_bytes(ANSWER_BYTES)
        release_permit_early()
        time.sleep(0.05)  # handing the answer on

    for i in range(jobs):
        fetch.send(i)
    worker = dramatiq.Worker(fleet.broker, worker_threads=8, worker_timeout=20)
    assert fleet.retries.parking is not None
    parking = fleet.retries.parking
    with cpu_hog():
        worker.start()
        try:
            # Every job has either called or been put off to the next window.
            eventually(lambda: len(fleet.calls) + parking.count() >= jobs, timeout_s=30)
            time.sleep(0.5)
        finally:
            worker.stop()
    usage = fleet.quota.policies["up"].usage()
    assert 1 <= len(fleet.calls) <= permits, fleet.calls
    assert usage.bytes_used == ANSWER_BYTES * len(fleet.calls)
    assert usage.requests_used == len(fleet.calls)
    if permits == 1:
        assert fleet.calls and len(fleet.calls) == 1


def test_every_byte_is_charged_failed_calls_too(backend: Backend) -> None:
    fleet = make_fleet(backend, permits=2)
    outcomes = ["ok", "cut off", "ok", "cut off", "ok", "cut off"]

    @dramatiq.actor(broker=fleet.broker, quota="up", semaphore="up", breaker="up")
    def fetch(outcome: str) -> None:
        fleet.call(outcome, 0.01)
        charge_bytes(ANSWER_BYTES)
        if outcome == "cut off":
            raise CutOff("the body ended early")

    for outcome in outcomes:
        fetch.send(outcome)
    worker = dramatiq.Worker(fleet.broker, worker_threads=4, worker_timeout=20)
    with cpu_hog():
        worker.start()
        try:
            settle(fleet, worker)
        finally:
            worker.stop()
    assert len(fleet.calls) == 6 and len(fleet.broker.dead_letters) == 3
    assert fleet.quota.policies["up"].usage().bytes_used == 6 * ANSWER_BYTES


def test_requests_counted_equal_calls_made_when_some_calls_never_leave(backend: Backend) -> None:
    fleet = make_fleet(backend, permits=2, requests=1000)
    rng = random.Random(8)
    plan = [rng.random() < 0.4 for _ in range(30)]  # True: the call fails before it is sent

    @dramatiq.actor(broker=fleet.broker, quota="up", semaphore="up", breaker="up")
    def fetch(i: int, unsent: bool) -> None:
        if unsent:
            report_no_call()
            raise NotSent("the request could not be encoded")
        fleet.call(f"job{i}", 0.005)
        charge_bytes(ANSWER_BYTES)

    for i, unsent in enumerate(plan):
        fetch.send(i, unsent)
    worker = dramatiq.Worker(fleet.broker, worker_threads=6, worker_timeout=20)
    with cpu_hog():
        worker.start()
        try:
            settle(fleet, worker)
        finally:
            worker.stop()
    usage = fleet.quota.policies["up"].usage()
    assert len(fleet.calls) == plan.count(False)
    assert len(fleet.broker.dead_letters) == plan.count(True)
    assert usage.requests_used == len(fleet.calls)
    assert usage.bytes_used == ANSWER_BYTES * len(fleet.calls)


def test_the_product_checks_the_permit_then_the_breaker_then_the_quota() -> None:
    """The runtime's order, which the tests above rely on (docs/architecture.md, "Admission")."""
    from enrichment_actors.runtime import build_runtime
    from enrichment_actors.settings import load_settings
    from enrichment_middleware.callbacks import Callbacks

    runtime = build_runtime(load_settings({"BROKER": "stub", "STATE_BACKEND": "memory"}))
    order = [type(m) for m in runtime.broker.middleware]
    assert order.index(ConcurrencySemaphore) < order.index(CircuitBreaker) < order.index(Quota)
    # A deferral fires no on_failure callback.
    assert [type(m) for m in runtime.broker.middleware if isinstance(m, dramatiq.middleware.Callbacks)] == [
        Callbacks
    ]

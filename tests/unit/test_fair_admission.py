"""Fair admission on a real Dramatiq worker, with a throwaway actor: order by weight, caps, nothing lost.

The order is asserted, never the time: with one seat and source A's backlog
waiting, source B's k calls are among the first ceil(k (wA + wB) / wB) + 2
calls after B's first send (issue 22).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from enrichment_middleware import install
from enrichment_middleware.backends.base import Backend
from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.failpoints import configure, hooked
from enrichment_middleware.fair import FAIR_KEY, FairAdmission
from enrichment_middleware.policy.fair import FairLimits
from enrichment_middleware.policy.semaphore import SemaphoreLimits
from enrichment_middleware.retries import Retries
from enrichment_middleware.semaphore import ConcurrencySemaphore, release_permit_early
from tests.support.contention import cpu_hog


@dataclass
class Rig:
    broker: StubBroker
    backend: Backend
    fair: FairAdmission
    retries: Retries
    calls: list[str] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, lane: str, name: str) -> None:
        self.broker.get_actor("call").send_with_options(args=(name,), **{FAIR_KEY: lane})

    def worker(self, threads: int) -> dramatiq.Worker:
        worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=20)
        worker.start()
        return worker

    def settle(self, expected: int, timeout_s: float = 30.0) -> None:
        """Wait until ``expected`` calls were made and the room is empty."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            counts = self.fair.policies["api"].counts()
            if len(self.calls) >= expected and not counts.waiting:
                return
            time.sleep(0.02)
        raise AssertionError(
            f"{len(self.calls)} calls of {expected}; room: {self.fair.policies['api'].counts()}"
        )


def make_rig(backend: Backend, *, seats: int = 1, call_s: float = 0.005, **limits: Any) -> Rig:
    broker = StubBroker()
    broker.emit_after("process_boot")
    fair = FairAdmission(backend, {"api": FairLimits(seats=seats, sweep_s=0.1, **limits)})
    semaphore = ConcurrencySemaphore(backend, {"api": SemaphoreLimits(permits=seats, wait_s=1.0)})
    retries = Retries(backend=backend, max_retries=0, poll_interval_s=0.05)
    install(broker, fair, semaphore, retries=retries)
    rig = Rig(broker, backend, fair, retries)

    @dramatiq.actor(broker=broker, actor_name="call", fair="api", semaphore="api")
    def call(name: str) -> None:
        with rig.lock:
            rig.calls.append(name)
            rig.in_flight += 1
            rig.peak = max(rig.peak, rig.in_flight)
        time.sleep(call_s)
        with rig.lock:
            rig.in_flight -= 1
        release_permit_early()  # the call is over: the permit and the seat go on at once

    return rig


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend()
    client: redis.Redis[bytes] = request.getfixturevalue("redis_client")
    return RedisBackend(client)


@pytest.mark.parametrize(("w_a", "w_b", "k"), [(1, 1, 6), (1, 4, 8)], ids=["equal", "b-weighs-4"])
def test_a_late_source_is_served_by_weight_not_behind_the_backlog(
    backend: Backend, w_a: int, w_b: int, k: int
) -> None:
    rig = make_rig(backend, weights={"a": float(w_a), "b": float(w_b)})
    backlog = 40
    for i in range(backlog):
        rig.send("a", f"a{i}")
    worker = rig.worker(threads=8)
    try:
        deadline = time.monotonic() + 10
        while len(rig.calls) < 5 and time.monotonic() < deadline:  # A's backlog is being served
            time.sleep(0.005)
        with rig.lock:
            before = len(rig.calls)
        for i in range(k):
            rig.send("b", f"b{i}")
        rig.settle(backlog + k)
    finally:
        worker.stop()
    after = rig.calls[before:]
    bound = math.ceil(k * (w_a + w_b) / w_b) + 2
    assert sum(name.startswith("b") for name in after[:bound]) == k, after[:bound]
    assert sorted(rig.calls) == sorted([f"a{i}" for i in range(backlog)] + [f"b{i}" for i in range(k)])
    assert rig.peak == 1


def test_first_come_first_served_without_the_room_is_what_it_replaces(backend: Backend) -> None:
    """The baseline the room is measured against: without it, B's jobs wait behind A's backlog."""
    broker = StubBroker()
    broker.emit_after("process_boot")
    semaphore = ConcurrencySemaphore(backend, {"api": SemaphoreLimits(permits=1, wait_s=1.0)})
    install(broker, semaphore, retries=Retries(backend=backend, max_retries=0, poll_interval_s=0.05))
    calls: list[str] = []

    @dramatiq.actor(broker=broker, semaphore="api")
    def call(name: str) -> None:
        calls.append(name)
        time.sleep(0.002)

    for i in range(30):
        call.send(f"a{i}")
    for i in range(4):
        call.send(f"b{i}")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        broker.join(call.queue_name, timeout=30_000)
        worker.join()
    finally:
        worker.stop()
    assert [name for name in calls[:30] if name.startswith("b")] == []


def test_many_threads_and_a_cpu_hog_seat_two_at_most_and_lose_nothing(backend: Backend) -> None:
    rig = make_rig(backend, seats=2, call_s=0.002, weights={"a": 1.0, "b": 2.0, "c": 4.0})
    jobs = [(lane, f"{lane}{i}") for i in range(25) for lane in "abc"]
    for lane, name in jobs:
        rig.send(lane, name)
    with cpu_hog():
        worker = rig.worker(threads=16)
        try:
            rig.settle(len(jobs), timeout_s=60)
        finally:
            worker.stop()
    assert Counter(rig.calls) == Counter(name for _, name in jobs)
    assert rig.peak <= 2
    assert rig.fair.policies["api"].counts().calls == {"a": 25, "b": 25, "c": 25}


def test_a_cap_holds_under_many_threads_and_a_cpu_hog_and_the_rest_waits_for_the_next_window(
    backend: Backend,
) -> None:
    rig = make_rig(backend, seats=2, call_s=0.001, caps={"refresh": 7}, window_s=3600)
    for i in range(20):
        rig.send("refresh", f"r{i}")
        rig.send("maps", f"m{i}")
    with cpu_hog():
        worker = rig.worker(threads=16)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                refreshed = sum(name.startswith("r") for name in rig.calls)
                parked = rig.retries.parking.count() if rig.retries.parking is not None else 0
                if sum(name.startswith("m") for name in rig.calls) == 20 and refreshed + parked >= 20:
                    break
                time.sleep(0.05)
        finally:
            worker.stop()
    assert sorted(name for name in rig.calls if name.startswith("m")) == sorted(f"m{i}" for i in range(20))
    assert sum(name.startswith("r") for name in rig.calls) == 7
    # The other 13 wait, parked, for the next window: not lost.
    assert rig.retries.parking is not None and rig.retries.parking.count() == 13


def test_a_job_whose_hand_on_is_lost_is_handed_again(backend: Backend) -> None:
    """Killed between the room's step and the broker (failpoint ``fair.handed``): the seat lapses and
    the job waits again at the head of its lane, then runs; exactly once."""
    rig = make_rig(backend, handoff_s=0.3)
    lost = threading.Event()

    def lose_once() -> None:
        if not lost.is_set():
            lost.set()
            raise ConnectionError("the broker went away between the room and the enqueue")

    for i in range(6):
        rig.send("a", f"a{i}")
    with hooked("fair.handed", lose_once):
        worker = rig.worker(threads=4)
        try:
            rig.settle(6, timeout_s=20)
        finally:
            worker.stop()
    assert lost.is_set()
    assert Counter(rig.calls) == Counter(f"a{i}" for i in range(6))


def test_a_pause_between_the_room_and_the_broker_hands_nothing_twice(backend: Backend) -> None:
    """A sweep runs while a hand-on sleeps between the room's step and the enqueue: one copy runs."""
    rig = make_rig(backend, handoff_s=5.0)
    for i in range(8):
        rig.send("a", f"a{i}")
    configure("fair.handed=sleep:0.05")
    try:
        worker = rig.worker(threads=4)
        try:
            rig.settle(8, timeout_s=20)
        finally:
            worker.stop()
    finally:
        configure("")
    assert Counter(rig.calls) == Counter(f"a{i}" for i in range(8))

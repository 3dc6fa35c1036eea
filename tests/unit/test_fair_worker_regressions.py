"""What a review of the fair room (issue 22) found wrong, on a real Dramatiq worker (StubBroker).

Each test failed before its fix: retries of failed calls went over a lane's
cap, a hand-on slower than ``handoff_s`` ran its job twice, a finished job
whose leave failed ran again, a capped job admitted in one step spent a
pacing slot.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from enrichment_middleware import install
from enrichment_middleware.backends.base import Backend, BackendUnavailable
from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.failpoints import hooked
from enrichment_middleware.fair import FAIR_KEY, FairAdmission
from enrichment_middleware.pacing import Pacing
from enrichment_middleware.policy.fair import FairLimits
from enrichment_middleware.policy.pacing import PacingLimits
from enrichment_middleware.policy.semaphore import SemaphoreLimits
from enrichment_middleware.retries import Retries
from enrichment_middleware.semaphore import ConcurrencySemaphore, release_permit_early


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """Redis: the room's rules are the same on memory (tests/unit/test_fair_regressions.py runs both)."""
    client: redis.Redis[bytes] = request.getfixturevalue("redis_client")
    return RedisBackend(client)


class Rig:
    def __init__(
        self,
        backend: Backend,
        *,
        fail_first: bool = False,
        call_s: float = 0.01,
        max_retries: int = 0,
        **limits: Any,
    ) -> None:
        self.broker = StubBroker()
        self.broker.emit_after("process_boot")
        self.backend = backend
        seats = limits.get("seats", 1)
        self.fair = FairAdmission(backend, {"api": FairLimits(sweep_s=0.1, **limits)})
        semaphore = ConcurrencySemaphore(backend, {"api": SemaphoreLimits(permits=seats, wait_s=1.0)})
        self.retries = Retries(
            backend=backend, max_retries=max_retries, min_backoff=10, max_backoff=20, poll_interval_s=0.05
        )
        install(self.broker, self.fair, semaphore, retries=self.retries)
        self.calls: list[str] = []
        attempts: Counter[str] = Counter()
        lock = threading.Lock()

        @dramatiq.actor(broker=self.broker, actor_name="call", fair="api", semaphore="api")
        def call(name: str) -> None:
            with lock:
                self.calls.append(name)
                attempts[name] += 1
                first = attempts[name] == 1
            time.sleep(call_s)
            if fail_first and first:
                raise ConnectionError("the upstream timed out (the call was made)")
            release_permit_early()

        self.actor = call

    def send(self, lane: str, name: str) -> dramatiq.Message[Any]:
        return self.actor.send_with_options(args=(name,), **{FAIR_KEY: lane})

    def run(self, until: Callable[[], bool], *, linger_s: float, timeout_s: float = 15.0) -> None:
        """Run a worker until ``until()`` holds, then ``linger_s`` more (for what must not happen
        after: a second run, a call over the cap), at most ``timeout_s``."""
        worker = dramatiq.Worker(self.broker, worker_threads=4, worker_timeout=20)
        worker.start()
        try:
            deadline = time.monotonic() + timeout_s
            while not until() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(linger_s)
        finally:
            worker.stop()

    def parked(self) -> int:
        return self.retries.parking.count() if self.retries.parking is not None else 0


def test_a_lane_cap_is_not_overshot_by_retries_of_failed_calls(backend: Backend) -> None:
    """caps={'r': 2}: at most 2 calls of lane r per window. Each call fails once (a timeout: the call
    was made, the room counts it) and is retried; the retry keeps FAIR_COUNTED and is not counted."""
    rig = Rig(backend, fail_first=True, max_retries=1, caps={"r": 2}, window_s=86_400)
    for i in range(4):
        rig.send("r", f"r{i}")
    # Two calls, then every other attempt waits for the next window: the two retries and r2, r3.
    rig.run(lambda: rig.parked() >= 4, linger_s=0.5)
    room_calls = rig.fair.policies["api"].counts().calls
    print("calls made:", rig.calls, "room's count:", room_calls)
    assert len(rig.calls) <= 2, (
        f"{len(rig.calls)} calls of lane r with a cap of 2: {rig.calls}; room says {room_calls}"
    )


def test_a_hand_on_slower_than_handoff_s_runs_the_job_once(backend: Backend) -> None:
    """The first hand-on's enqueue is slow (broker flow control, a GC pause, a prefetch buffer of a
    busy or dying worker): longer than handoff_s. The room hands the job again; then the slow copy
    arrives too. Each job must still run once."""
    rig = Rig(backend, handoff_s=0.3, seats=1, call_s=0.05)
    slowed = threading.Event()

    def slow_once() -> None:
        if not slowed.is_set():
            slowed.set()
            time.sleep(0.8)

    for i in range(4):
        rig.send("a", f"a{i}")
    with hooked("fair.handed", slow_once):
        # Every job ran; then long enough for the slow copy (0.8 s) to arrive and show a second run.
        rig.run(lambda: slowed.is_set() and len(set(rig.calls)) == 4, linger_s=1.2)
    print("calls:", rig.calls)
    assert slowed.is_set()
    assert Counter(rig.calls) == Counter(f"a{i}" for i in range(4)), Counter(rig.calls)


class LeaveFailsOnce:
    """A backend whose leaving of one member fails (a Redis blip after the call): the end of the
    call in one batch, then the room_leave each gate tries alone after it."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner
        self.target: str | None = None
        self.failed = threading.Event()
        self._failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _blink(self, member: str | None) -> None:
        if member is not None and member == self.target and self._failures < 2:
            self._failures += 1
            self.failed.set()
            raise BackendUnavailable("Redis blinked")

    def all_or_nothing(self, steps: Any) -> Any:
        for step in steps:
            if step.primitive == "room_leave":
                self._blink(step.args[1])
        return self._inner.all_or_nothing(steps)

    def room_leave(self, key: str, member: str | None, token: str, **kw: Any) -> Any:
        self._blink(member)
        return self._inner.room_leave(key, member, token, **kw)


def test_a_finished_job_whose_leave_failed_is_not_run_again() -> None:
    """A waiting job is handed a seat, arrives through the one-step admission (room_seat), runs and
    succeeds; its room_leave fails ("the seat lapses by itself", fair.py:214). The seat lapses and
    the room, which still holds its entry and payload, sends it again: it runs twice."""
    wrapped = LeaveFailsOnce(MemoryBackend())
    # all_or_nothing needs the real object: batch through the wrapped backend's inner one.
    rig = Rig(wrapped, seats=1, seat_s=0.5, handoff_s=30.0, call_s=0.2)  # type: ignore[arg-type]
    rig.send("a", "a0")
    j = rig.send("a", "j")
    wrapped.target = j.message_id
    # Both ran; then long enough for j's seat to lapse (0.5 s) and a sweep to send it again.
    rig.run(lambda: wrapped.failed.is_set() and len(rig.calls) >= 2, linger_s=1.2)
    print("calls:", rig.calls)
    assert wrapped.failed.is_set()
    assert Counter(rig.calls) == Counter(["a0", "j"]), Counter(rig.calls)


def test_a_capped_job_admitted_in_one_step_spends_no_pacing_slot() -> None:
    """Cap 0 for lane r: no call of r. In the one-step path the fair gate checks the cap after the
    batch took the pacing slot (the quota's request is refunded, the slot is not)."""
    from enrichment_middleware.policy.clock import SystemClock

    backend = MemoryBackend()
    broker = StubBroker()
    broker.emit_after("process_boot")
    fair = FairAdmission(backend, {"api": FairLimits(seats=1, sweep_s=0.1, caps={"r": 0})})
    pacing = Pacing(backend, {"api": PacingLimits(interval_s=30.0)})
    retries = Retries(backend=backend, max_retries=0, poll_interval_s=0.05)
    install(broker, fair, pacing, retries=retries)
    calls: list[str] = []

    @dramatiq.actor(broker=broker, actor_name="call", fair="api", rate="api")
    def call(name: str) -> None:
        calls.append(name)

    before = pacing.policies["api"].status()
    call.send_with_options(args=("r0",), **{FAIR_KEY: "r"})
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    worker.start()
    time.sleep(0.5)
    worker.stop()
    after = pacing.policies["api"].status()
    print("calls:", calls, "pacing before:", before, "after:", after, "now:", SystemClock().now())
    assert calls == []
    assert before.reserved_s == 0
    assert after.reserved_s == 0, (
        f"the capped job (no call) spent a pacing slot: next one in {after.reserved_s:.1f}s"
    )


def test_a_copy_routed_to_another_room_leaves_the_first_ones_seat(backend: Backend) -> None:
    """A router sent a seated copy to another endpoint's room: the first room's seat is left at once
    (not held until it lapses, nor handed on again), and the job runs in the second room, once.
    (The actor names e2; the copies that hold a seat of e1 stand for what the router moved.)"""
    broker = StubBroker()
    broker.emit_after("process_boot")
    fair = FairAdmission(
        backend, {"e1": FairLimits(seats=1, sweep_s=0.1), "e2": FairLimits(seats=1, sweep_s=0.1)}
    )
    install(broker, fair, retries=Retries(backend=backend, max_retries=0, poll_interval_s=0.05))
    calls: list[str] = []

    @dramatiq.actor(broker=broker, actor_name="call", fair="e2")
    def call(name: str) -> None:
        calls.append(name)

    e1 = fair.policies["e1"]
    seated = e1.enter("default", "moved", b"")
    waiting = call.message_with_options(args=("next",)).copy(message_id="next")
    assert e1.enter("default", "next", waiting.encode()).status == "waiting"
    message = call.message_with_options(args=("moved",), fair_seat={"name": "e1", "token": seated.token})
    broker.enqueue(message.copy(message_id="moved"))
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        broker.join("default", fail_fast=False, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    # e1's seat went on at once to the job waiting there (not held until it lapsed), which the router
    # had sent to e2 as well: both ran, once, and e1 holds nobody.
    assert sorted(calls) == ["moved", "next"]
    assert e1.counts() == type(e1.counts())(0, {})


def test_an_abandoned_one_step_admission_loses_no_handed_copy(backend: Backend) -> None:
    """The batch admitted a handed copy (its token), then failed before the gate took its seat
    (failpoint admission.together): the seat is given back and the copy put back runs, once."""
    rig = Rig(backend, seats=1, call_s=0.2)
    for gate in rig.broker.middleware:
        if hasattr(gate, "unavailable_retry_s"):
            gate.unavailable_retry_s = 0.1
    batches = [0]

    def fail_the_second() -> None:
        batches[0] += 1
        if batches[0] == 2:  # a1's: handed a seat when a0 left, it arrives holding the token
            raise RuntimeError("interrupted between the batch and the gates' takes")

    rig.send("a", "a0")
    rig.send("a", "a1")
    with hooked("admission.together", fail_the_second):
        rig.run(lambda: len(set(rig.calls)) == 2, linger_s=0.3)
    assert batches[0] >= 2
    assert sorted(rig.calls) == ["a0", "a1"], rig.calls

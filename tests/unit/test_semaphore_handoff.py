"""A released permit handed straight to a waiting thread of the same process: exact, fair, and still a lease.

The hand-off moves the lease to the waiter in one backend step
(``lease_transfer``), so the fleet's count never moves; these tests check
that it happens, that it never lets more calls run than there are permits
(many threads, a CPU hog, pauses at the failpoints, two processes), that
the other process is not starved, and that a handed-on permit of a killed
process still lapses.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from enrichment_middleware.backends import Backend, MemoryBackend
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.failpoints import configure
from enrichment_middleware.installation import install
from enrichment_middleware.policy.clock import ManualClock
from enrichment_middleware.policy.semaphore import Permit, SemaphoreLimits, SemaphorePolicy
from enrichment_middleware.semaphore import ConcurrencySemaphore
from tests.support.workers import REPO, eventually

NOW = 1_700_000_000.0


class CountingBackend(MemoryBackend):
    """A MemoryBackend on a manual clock that counts the lease calls made on it."""

    def __init__(self) -> None:
        self.clock = ManualClock(NOW)
        super().__init__(clock=self.clock)
        self.calls: dict[str, int] = {"acquire": 0, "release": 0, "transfer": 0, "wait": 0}

    def lease_acquire(self, key: str, holder: str, limit: int, lease_s: float) -> float | None:
        self.calls["acquire"] += 1
        return super().lease_acquire(key, holder, limit, lease_s)

    def lease_release(self, key: str, holder: str) -> bool:
        self.calls["release"] += 1
        return super().lease_release(key, holder)

    def lease_transfer(
        self, key: str, holder: str, to_holder: str, limit: int, lease_s: float
    ) -> float | None:
        self.calls["transfer"] += 1
        return super().lease_transfer(key, holder, to_holder, limit, lease_s)

    def lease_wait(self, key: str, timeout_s: float) -> bool:
        self.calls["wait"] += 1
        return super().lease_wait(key, timeout_s)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend(clock=ManualClock(NOW))
    client: redis.Redis[bytes] = request.getfixturevalue("redis_client")
    return RedisBackend(client)


class Waiting:
    """Threads inside ``policy.acquire``, each one queued before the next starts."""

    def __init__(self, policy: SemaphorePolicy) -> None:
        self.policy = policy
        self.permits: dict[str, Permit | None] = {}
        self.threads: list[threading.Thread] = []

    def start(self, holder: str, wait_s: float = 5.0) -> None:
        queued = len(self.policy._waiters)

        def run() -> None:
            self.permits[holder] = self.policy.acquire(holder, wait_s=wait_s)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)
        eventually(lambda: len(self.policy._waiters) > queued, timeout_s=5, message=f"{holder} waits")

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=10)


def test_a_released_permit_goes_to_a_waiting_thread_of_the_process_with_a_fresh_lease() -> None:
    backend = CountingBackend()
    policy = SemaphorePolicy("api", SemaphoreLimits(permits=1, lease_s=60), backend)
    held = policy.try_acquire("holder")
    assert held is not None
    waiting = Waiting(policy)
    waiting.start("leader")  # waits on the backend for releases elsewhere
    waiting.start("follower")  # waits for a hand-off
    backend.clock.advance(50)
    before = dict(backend.calls)
    policy.release(held)
    eventually(lambda: "follower" in waiting.permits, timeout_s=5, message="the follower got its permit")
    permit = waiting.permits["follower"]
    assert permit is not None and permit.holder == "follower" and permit.handoffs == 1
    assert permit.acquired_at == NOW + 50  # a fresh lease, not the rest of the old one
    # One backend step moved the lease; the follower took nothing from the backend itself.
    assert backend.calls["transfer"] - before["transfer"] == 1
    assert backend.calls["acquire"] == before["acquire"]
    assert backend.calls["release"] == before["release"]
    assert policy.in_use() == 1
    backend.clock.advance(20)  # past the old lease's end, within the new one's
    assert policy.in_use() == 1
    policy.release(permit)  # to the leader, through the backend: it waits there
    waiting.join()
    assert waiting.permits["leader"] is not None and waiting.permits["leader"].handoffs == 0


def test_the_hand_off_moves_the_lease_in_the_backend(backend: Backend) -> None:
    policy = SemaphorePolicy("api", SemaphoreLimits(permits=1, lease_s=60), backend)
    held = policy.try_acquire("holder")
    assert held is not None
    waiting = Waiting(policy)
    waiting.start("leader")
    waiting.start("follower")
    policy.release(held)
    eventually(lambda: "follower" in waiting.permits, timeout_s=5, message="the follower got its permit")
    assert policy.in_use() == 1
    assert backend.lease_release("semaphore:api", "holder") is False  # the old holder's lease is gone
    follower = waiting.permits["follower"]
    assert follower is not None
    assert backend.lease_release("semaphore:api", "follower") is True  # the new holder's is there
    waiting.join()


@pytest.mark.parametrize(
    ("handoff_max", "handed_on"),
    [(0, 0), (1, 1), (3, 3)],
)
def test_a_permit_goes_back_to_the_fleet_after_handoff_max_hand_offs(
    handoff_max: int, handed_on: int
) -> None:
    """Fairness between processes: a chain of hand-offs ends, the permit is released, and the
    backend wakes whoever waited there longest (here: this process's leader)."""
    backend = CountingBackend()
    policy = SemaphorePolicy("api", SemaphoreLimits(permits=1, handoff_max=handoff_max), backend)
    permit = policy.try_acquire("first")
    assert permit is not None
    waiting = Waiting(policy)
    waiting.start("leader", wait_s=10)
    for i in range(5):
        waiting.start(f"f{i}", wait_s=10)
    chain = 0
    while permit is not None and permit.handoffs < handoff_max and chain < 5:
        policy.release(permit)
        holder = f"f{chain}"
        eventually(
            lambda holder=holder: holder in waiting.permits,
            timeout_s=5,
            message=f"{holder} was handed the permit",
        )
        permit = waiting.permits[holder]
        assert permit is not None
        chain += 1
    assert chain == handed_on
    assert backend.calls["transfer"] == handed_on
    releases = backend.calls["release"]
    assert permit is not None
    policy.release(permit)
    assert backend.calls["release"] == releases + 1  # released to the fleet, not handed on
    eventually(lambda: "leader" in waiting.permits, timeout_s=5, message="the leader got the released permit")
    leader = waiting.permits["leader"]
    assert leader is not None and leader.handoffs == 0
    # The rest drain one by one, each releasing what it was given.
    pending: Permit = leader
    for _ in range(5 - handed_on):
        before = set(waiting.permits)
        policy.release(pending)
        eventually(
            lambda before=before: len(waiting.permits) > len(before),
            timeout_s=5,
            message="the next waiter served",
        )
        (new,) = set(waiting.permits) - before
        served = waiting.permits[new]
        assert served is not None
        pending = served
    policy.release(pending)
    waiting.join()
    assert policy.in_use() == 0


def test_a_hand_off_that_finds_the_lease_lapsed_lets_the_waiter_try_again() -> None:
    backend = CountingBackend()
    policy = SemaphorePolicy("api", SemaphoreLimits(permits=1, lease_s=10), backend)
    held = policy.try_acquire("holder")
    assert held is not None
    backend.clock.advance(11)  # the holder overran its lease...
    assert backend.lease_acquire("semaphore:api", "elsewhere", 1, 100) is not None  # ...and it went elsewhere
    waiting = Waiting(policy)
    waiting.start("leader", wait_s=0.5)
    waiting.start("follower", wait_s=0.5)
    policy.release(held)
    waiting.join()
    assert waiting.permits == {"leader": None, "follower": None}  # never two calls on one permit
    assert policy.in_use() == 1


def test_a_lowered_cap_is_kept_by_the_hand_off() -> None:
    backend = CountingBackend()
    policy = SemaphorePolicy("api", SemaphoreLimits(permits=2), backend)
    first, second = policy.try_acquire("a"), policy.try_acquire("b")
    assert first is not None and second is not None
    policy.cap(1)  # two held, one allowed: the next release must not hand on
    waiting = Waiting(policy)
    waiting.start("leader", wait_s=0.5)
    waiting.start("follower", wait_s=0.5)
    policy.release(first)
    assert policy.in_use() == 1
    waiting.join()
    assert waiting.permits == {"leader": None, "follower": None}


# -- many threads, a CPU hog, pauses at the failpoints --------------------------------------------


@pytest.fixture
def hog() -> Iterator[None]:
    """A thread of busy arithmetic beside the workers, as a parser would be: GIL switches at every step."""
    stop = threading.Event()

    def spin() -> None:
        total = 0
        while not stop.is_set():
            for i in range(10_000):
                total = (total + i * i) % 1_000_003

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=5)


@pytest.fixture
def paused() -> Iterator[None]:
    configure(
        "semaphore.acquired=sleep:0-0.004,semaphore.released=sleep:0-0.004,semaphore.handed_off=sleep:0-0.004"
    )
    yield
    configure("")


class Transferring(RedisBackend):
    """Counts hand-offs that moved a lease."""

    handed = 0

    def lease_transfer(
        self, key: str, holder: str, to_holder: str, limit: int, lease_s: float
    ) -> float | None:
        granted = super().lease_transfer(key, holder, to_holder, limit, lease_s)
        if granted is not None:
            Transferring.handed += 1
        return granted


def test_two_workers_of_eight_threads_never_exceed_the_permits(
    redis_client: redis.Redis[bytes], hog: None, paused: None
) -> None:
    """Two brokers (two 'processes') of 8 worker threads each, sharing 2 permits in Redis."""
    permits, jobs = 2, 60
    lock = threading.Lock()
    state = {"in_flight": 0, "peak": 0, "calls": 0}
    per_broker: dict[int, int] = {0: 0, 1: 0}
    Transferring.handed = 0
    workers = []
    for index in range(2):
        broker = StubBroker()
        install(
            broker,
            ConcurrencySemaphore(
                Transferring(redis_client),
                {"up": SemaphoreLimits(permits=permits, lease_s=30, wait_s=30, handoff_max=4)},
            ),
        )

        def call(index: int = index) -> None:
            with lock:
                state["in_flight"] += 1
                state["peak"] = max(state["peak"], state["in_flight"])
            time.sleep(random.uniform(0.001, 0.006))
            with lock:
                state["in_flight"] -= 1
                state["calls"] += 1
                per_broker[index] += 1

        actor = dramatiq.actor(call, actor_name="call", broker=broker, semaphore="up", max_retries=0)
        for _ in range(jobs):
            actor.send()
        worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=50)
        workers.append((broker, worker))
    for _, worker in workers:
        worker.start()
    try:
        for broker, _ in workers:
            broker.join("default", fail_fast=True, timeout=60_000)
    finally:
        for _, worker in workers:
            worker.stop()
    assert state["calls"] == 2 * jobs
    assert state["peak"] <= permits
    assert Transferring.handed > 0  # the hand-off was exercised, not only the backend path
    assert RedisBackend(redis_client).lease_count("semaphore:up") == 0


# -- two real processes ---------------------------------------------------------------------------

#: Run by each child process: 8 threads take permits for ``seconds``, count the calls in flight in
#: Redis (INCR after the permit, DECR before the release) and print what they saw.
#: How long, at least, the child's first thread holds the permit in "hold" mode.
HOLD_S = 1.0
CHILD = """
import json, random, sys, threading, time
import redis
import tests.support.hog
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.semaphore import SemaphoreLimits, SemaphorePolicy

url, permits, seconds, lease_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
client = redis.Redis.from_url(url)
policy = SemaphorePolicy("api", SemaphoreLimits(permits=permits, lease_s=lease_s, handoff_max=4), RedisBackend(client))
lock = threading.Lock()
seen = {"calls": 0, "peak": 0, "handed": 0, "timeouts": 0}
mode = sys.argv[5]
held = threading.Event()

def work(n):
    if mode == "hold":
        # Thread 0 takes the permit; then 1 and 2 queue behind it, in that order (a leader, then a
        # follower, to which the release hands the permit on). Each step waits for the one before:
        # with a CPU hog on a busy machine (clean-clone CI runs) fixed delays came out of order.
        if n == 0:
            permit = policy.acquire("holder", wait_s=30)
            print(json.dumps({"holder": permit.holder, "acquired_at": permit.acquired_at}), flush=True)
            held.set()
            time.sleep(1.0)  # HOLD_S
            end = time.monotonic() + 2.0  # the lease (4 s) outlives the hold
            while len(policy._waiters) < 2 and time.monotonic() < end:
                time.sleep(0.01)
            policy.release(permit)
        else:
            held.wait(30)
            while len(policy._waiters) < n - 1:
                time.sleep(0.01)
            policy.acquire(f"waiter-{n}", wait_s=30)
        return
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        permit = policy.acquire(f"t{n}-{random.random()}", wait_s=10)
        if permit is None:
            with lock: seen["timeouts"] += 1
            continue
        peak = client.incr("in-flight")
        time.sleep(random.uniform(0.001, 0.005))
        client.decr("in-flight")
        policy.release(permit)
        with lock:
            seen["calls"] += 1
            seen["peak"] = max(seen["peak"], peak)
            seen["handed"] += permit.handoffs > 0

threads = [threading.Thread(target=work, args=(n,)) for n in range(int(sys.argv[6]))]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(seen), flush=True)
"""


def _child(redis_url: str, *args: Any, failpoints: str = "") -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAILPOINTS": failpoints, "CPU_HOG_THREADS": "1"}
    command = [sys.executable, "-c", CHILD, redis_url, *map(str, args)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def test_two_processes_share_the_permits_exactly_and_both_get_calls(
    redis_client: redis.Redis[bytes], redis_url: str
) -> None:
    permits = 2
    children = [
        _child(redis_url, permits, 4.0, 30, "run", 8, failpoints="semaphore.handed_off=sleep:0-0.005")
        for _ in range(2)
    ]
    seen = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        seen.append(json.loads(out.strip().splitlines()[-1]))
    print(f"\ntwo processes, {permits} permits, 8 threads each, hog, pauses: {seen}")
    assert max(s["peak"] for s in seen) <= permits
    assert all(s["calls"] > 0 for s in seen), f"a process was starved: {seen}"
    assert sum(s["handed"] for s in seen) > 0
    # Neither process keeps the permits: each gets a fair part of the calls (half would be even).
    total = sum(s["calls"] for s in seen)
    assert min(s["calls"] for s in seen) >= 0.1 * total, f"shares {[s['calls'] for s in seen]}"


def test_a_permit_handed_on_in_a_killed_process_still_lapses(
    redis_client: redis.Redis[bytes], redis_url: str
) -> None:
    """The process dies (SIGKILL) right after moving the lease to its waiter, before waking it: the
    new holder's lease, with its fresh expiry, is the only one left, and it lapses."""
    # Longer than the longest hold (HOLD_S, then up to 2 s for the waiters to queue), or the holder's own
    # lease lapses before it releases: nothing would be handed on.
    lease_s = 4.0
    child = _child(redis_url, 1, 0, lease_s, "hold", 3, failpoints="semaphore.handed_off=kill:1")
    out, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, out
    first = json.loads(out.strip().splitlines()[0])
    leases = redis_client.zrange(
        RedisBackend(redis_client).key("lease", "semaphore:api"), 0, -1, withscores=True
    )
    assert len(leases) == 1, leases
    holder, expires = leases[0]
    assert holder.decode() != first["holder"]  # moved to a waiter...
    assert expires >= first["acquired_at"] + HOLD_S + lease_s - 0.01  # ...with a fresh expiry
    policy = SemaphorePolicy("api", SemaphoreLimits(permits=1, lease_s=lease_s), RedisBackend(redis_client))
    assert policy.try_acquire("parent") is None  # it counts while it runs
    eventually(lambda: policy.in_use() == 0, timeout_s=lease_s + 5, message="the handed-on lease lapsed")
    assert policy.try_acquire("parent") is not None

"""SemaphorePolicy: leases that lapse, caps, wake-ups on release, bounded waits that never spin."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
import redis

from enrichment_middleware.backends import Backend, MemoryBackend
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.clock import ManualClock
from enrichment_middleware.policy.semaphore import Permit, SemaphoreLimits, SemaphorePolicy

NOW = 1_700_000_000.0


class CountingBackend(MemoryBackend):
    """A MemoryBackend that counts the lease calls made on it."""

    def __init__(self) -> None:
        super().__init__(clock=ManualClock(NOW))
        self.acquires = 0
        self.waits = 0

    def lease_acquire(self, key: str, holder: str, limit: int, lease_s: float) -> float | None:
        self.acquires += 1
        return super().lease_acquire(key, holder, limit, lease_s)

    def lease_wait(self, key: str, timeout_s: float) -> bool:
        self.waits += 1
        return super().lease_wait(key, timeout_s)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend(clock=ManualClock(NOW))
    client: redis.Redis[bytes] = request.getfixturevalue("redis_client")
    return RedisBackend(client)


def semaphore(backend: Backend, **limits: Any) -> SemaphorePolicy:
    return SemaphorePolicy("api", SemaphoreLimits(**limits), backend, rng=random.Random(0))


def test_permits_are_shared_up_to_the_limit_and_come_back_on_release(backend: Backend) -> None:
    policy = semaphore(backend, permits=2)
    first = policy.try_acquire("a")
    second = policy.try_acquire("b")
    assert first is not None and (first.name, first.holder) == ("api", "a")
    assert abs(first.acquired_at - backend.now()) < 1  # the backend's clock
    assert second is not None
    assert policy.try_acquire("c") is None
    assert policy.in_use() == 2
    policy.release(first)
    policy.release(first)  # twice is harmless
    assert policy.in_use() == 1
    assert policy.try_acquire("c") is not None


def test_a_holder_that_never_releases_stops_counting_after_the_lease() -> None:
    clock = ManualClock(NOW)
    policy = semaphore(MemoryBackend(clock=clock), permits=2, lease_s=120.0)
    assert policy.try_acquire("killed-worker") is not None  # never released
    for n in range(5):
        permit = policy.try_acquire(f"job-{n}")
        assert permit is not None
        assert policy.try_acquire("latecomer") is None
        policy.release(permit)
        clock.advance(20)
    assert policy.in_use() == 1
    clock.set(NOW + 120)
    assert policy.in_use() == 0
    assert policy.try_acquire("x") is not None
    assert policy.try_acquire("y") is not None


def test_a_cap_lowers_the_permits_in_effect_until_removed(backend: Backend) -> None:
    policy = semaphore(backend, permits=3)
    assert policy.effective_permits() == 3
    policy.cap(1)
    assert policy.effective_permits() == 1
    assert policy.try_acquire("a") is not None
    assert policy.try_acquire("b") is None
    policy.cap(10)
    assert policy.effective_permits() == 3
    policy.cap(None)
    assert policy.effective_permits() == 3
    assert policy.try_acquire("b") is not None


def test_a_cap_is_fleet_wide() -> None:
    backend = MemoryBackend()
    semaphore(backend, permits=3).cap(1)
    assert semaphore(backend, permits=3).effective_permits() == 1


@pytest.mark.parametrize("bad_cap", [0, -1])
def test_a_cap_below_one_is_refused(bad_cap: int) -> None:
    with pytest.raises(ValueError, match="pass None to remove the cap"):
        semaphore(MemoryBackend()).cap(bad_cap)


def test_a_release_wakes_a_waiter_at_once(backend: Backend) -> None:
    policy = semaphore(backend, permits=1)
    held = policy.try_acquire("holder")
    assert held is not None
    result: dict[str, Any] = {}

    def wait() -> None:
        result["permit"] = policy.acquire("waiter", wait_s=2.0)
        result["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)  # the waiter is now inside its first 0.25 s wait
    released_at = time.monotonic()
    policy.release(held)
    waiter.join(timeout=3)
    assert isinstance(result["permit"], Permit) and result["permit"].holder == "waiter"
    assert result["at"] - released_at < 0.05


def test_a_bounded_wait_gives_up_after_wait_s(backend: Backend) -> None:
    policy = semaphore(backend, permits=1)
    assert policy.try_acquire("holder") is not None
    started = time.monotonic()
    assert policy.acquire("waiter", wait_s=0.3) is None
    # Redis checks blocking timeouts every 100 ms, so a wait may overrun by that much.
    assert 0.3 <= time.monotonic() - started < 0.5


def test_the_default_wait_comes_from_the_limits() -> None:
    policy = semaphore(MemoryBackend(), permits=1, wait_s=0.1)
    assert policy.try_acquire("holder") is not None
    started = time.monotonic()
    assert policy.acquire("waiter") is None
    assert 0.1 <= time.monotonic() - started < 0.2


def test_try_acquire_and_a_zero_wait_never_block() -> None:
    policy = semaphore(MemoryBackend(), permits=1)
    assert policy.try_acquire("holder") is not None
    started = time.monotonic()
    assert policy.try_acquire("a") is None
    assert policy.acquire("b", wait_s=0.0) is None
    assert time.monotonic() - started < 0.02


def test_waiting_never_spins() -> None:
    backend = CountingBackend()
    policy = semaphore(backend, permits=1)
    assert policy.try_acquire("holder") is not None
    backend.acquires = 0
    assert policy.acquire("waiter", wait_s=0.6) is None
    # One try, then a try after each 0.25 s wait: about 4 calls, not hundreds.
    assert 2 <= backend.acquires <= 5
    assert 2 <= backend.waits <= 4


def test_a_waiter_that_gets_a_permit_still_counts_one_acquire_per_wake() -> None:
    """The only waiter of its process waits on the backend (a release here finds no other thread
    to hand the permit to), so it is woken and takes the lease itself."""
    backend = CountingBackend()
    policy = semaphore(backend, permits=1)
    held = policy.try_acquire("holder")
    assert held is not None
    backend.acquires = 0
    threading.Timer(0.1, policy.release, args=(held,)).start()
    assert policy.acquire("waiter", wait_s=1.0) is not None
    assert backend.acquires == 2


@pytest.mark.parametrize("seed", range(10))
def test_retry_delay_is_within_its_bounds(seed: int) -> None:
    policy = SemaphorePolicy(
        "api", SemaphoreLimits(retry_min_s=0.5, retry_max_s=3.0), MemoryBackend(), rng=random.Random(seed)
    )
    assert 0.5 <= policy.retry_delay() <= 3.0


def test_a_permit_is_released_only_to_its_own_semaphore() -> None:
    backend = MemoryBackend()
    permit = semaphore(backend).try_acquire("a")
    assert permit is not None
    other = SemaphorePolicy("other", SemaphoreLimits(), backend)
    with pytest.raises(ValueError, match="release it to the policy that granted it"):
        other.release(permit)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"permits": 0}, "permits", id="no permits"),
        pytest.param({"lease_s": 0.0}, "lease_s", id="zero lease"),
        pytest.param({"wait_s": -1.0}, "wait_s", id="negative wait"),
        pytest.param({"retry_min_s": 4.0}, "retry_min_s <= retry_max_s", id="min above max"),
        pytest.param({"cap_ttl_s": 0.0}, "cap_ttl_s", id="zero cap ttl"),
        pytest.param({"handoff_max": -1}, "handoff_max", id="negative hand-offs"),
    ],
)
def test_limits_refuse_nonsense(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SemaphoreLimits(**fields)  # type: ignore[arg-type]


def test_a_lapsed_lease_is_reckoned_by_the_backends_clock(redis_client: redis.Redis[bytes]) -> None:
    """On Redis leases lapse by the server's clock: real time, here."""
    policy = semaphore(RedisBackend(redis_client), permits=1, lease_s=0.2)
    assert policy.try_acquire("killed-worker") is not None
    assert policy.try_acquire("next") is None
    time.sleep(0.25)
    assert policy.in_use() == 0
    assert policy.try_acquire("next") is not None

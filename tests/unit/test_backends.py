"""The backend contract: every primitive behaves the same in memory and in Redis, by the backend's clock."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from enrichment_middleware.backends import Backend, BackendUnavailable, MemoryBackend
from enrichment_middleware.backends.base import WAKE_TOKENS_KEPT, ParkedClaim
from enrichment_middleware.backends.redis import RedisBackend, RedisTopologyError
from enrichment_middleware.policy.clock import ManualClock
from tests.support.redis_topologies import MASTER

NOW = 1_700_000_000.0


@dataclass
class Timed:
    """A backend and a way to let its time pass: a manual clock in memory, real sleep on Redis."""

    backend: Backend
    advance: Callable[[float], None]


@pytest.fixture(params=["memory", "redis", "redis-cluster", "redis-sentinel"])
def timed(request: pytest.FixtureRequest) -> Timed:
    """Every backend and Redis topology: memory, one Redis, a 3-master Redis Cluster, Sentinel."""
    if request.param == "memory":
        clock = ManualClock(NOW)
        return Timed(MemoryBackend(clock=clock), clock.advance)
    if request.param == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return Timed(RedisBackend.from_url(cluster.url, cluster=True), time.sleep)
    if request.param == "redis-sentinel":
        sentinel = request.getfixturevalue("redis_sentinel")
        sentinel.flush()
        backend = RedisBackend.from_url(
            "redis://127.0.0.1/0", sentinels=sentinel.sentinels, sentinel_master=MASTER
        )
        return Timed(backend, time.sleep)
    client = request.getfixturevalue("redis_client")
    return Timed(RedisBackend(client), time.sleep)


@pytest.fixture
def backend(timed: Timed) -> Backend:
    return timed.backend


def window(
    backend: Backend, names: list[str], limits: list[int], increments: list[int], window_s: int = 3600
):
    """window_admit with a long window, so a test never straddles two."""
    return backend.window_admit("q", names, limits, increments, window_s=window_s, ttl_s=60)


def claims(found: tuple[list[ParkedClaim], list[str]]) -> list[tuple[str, bytes]]:
    """The (member, payload) pairs of a claim_due answer that found no orphans."""
    claimed, orphans = found
    assert orphans == []
    return [(claim.member, claim.payload) for claim in claimed]


# -- the clock ---------------------------------------------------------------


def test_now_is_the_backends_clock(timed: Timed) -> None:
    before = timed.backend.now()
    timed.advance(0.05)
    after = timed.backend.now()
    assert 0.049 <= after - before < 1.0
    if isinstance(timed.backend, MemoryBackend):
        assert before == NOW
    else:
        assert abs(before - time.time()) < 5  # the server's clock, here on the same host


def test_a_memory_backend_without_a_clock_keeps_system_time() -> None:
    assert abs(MemoryBackend().now() - time.time()) < 1


# -- counters ---------------------------------------------------------------


def test_window_admit_adds_increments_while_every_counter_is_under_its_limit(backend: Backend) -> None:
    first = window(backend, ["a", "b"], [2, 10], [1, 5])
    second = window(backend, ["a", "b"], [2, 10], [1, 5])
    assert (first.allowed, first.values, second.allowed, second.values) == (True, [1, 5], True, [2, 10])
    assert second.window_start == first.window_start
    assert first.window_start % 3600 == 0
    assert first.window_start <= first.now < first.window_start + 3600
    assert backend.counters_get([f"q:{int(first.window_start)}:a", f"q:{int(first.window_start)}:b"]) == [
        2,
        10,
    ]


@pytest.mark.parametrize(
    ("limits", "admitted"),
    [
        pytest.param([3, 5], False, id="first at its limit"),
        pytest.param([10, 4], False, id="second over its limit"),
        pytest.param([4, 5], True, id="both under"),
        pytest.param([-1, -1], True, id="both unlimited"),
        pytest.param([-1, 4], False, id="unlimited does not rescue the other"),
    ],
)
def test_window_admit_refuses_without_change_when_any_counter_is_at_its_limit(
    backend: Backend, limits: list[int], admitted: bool
) -> None:
    window(backend, ["a", "b"], [-1, -1], [3, 4])
    before = window(backend, ["a", "b"], [-1, -1], [0, 0]).values
    counted = window(backend, ["a", "b"], limits, [1, 2])
    assert counted.allowed is admitted
    assert counted.values == ([before[0] + 1, before[1] + 2] if admitted else before)
    assert window(backend, ["a", "b"], [-1, -1], [0, 0]).values == counted.values


def test_a_limit_of_zero_refuses_even_an_absent_counter(backend: Backend) -> None:
    counted = window(backend, ["fresh"], [0], [1])
    assert (counted.allowed, counted.values) == (False, [0])


def test_window_admit_does_not_create_counters_it_adds_nothing_to(backend: Backend) -> None:
    counted = window(backend, ["requests", "bytes"], [5, 5], [1, 0])
    assert (counted.allowed, counted.values) == (True, [1, 0])
    if isinstance(backend, RedisBackend):
        assert backend.client.exists(backend._key("counter", f"q:{int(counted.window_start)}:bytes")) == 0


def test_window_admit_needs_one_limit_and_increment_per_counter(backend: Backend) -> None:
    with pytest.raises(ValueError, match="one limit and one increment per counter"):
        window(backend, ["a", "b"], [1], [1, 1])


@pytest.mark.parametrize(
    ("used", "limit", "prior", "admitted"),
    [
        pytest.param([0, 0], 3000, 2000, True, id="no call yet: the prior fits"),
        pytest.param([0, 0], 1999, 2000, False, id="no call yet: less left than the prior"),
        pytest.param([3, 2400], 3000, 2000, False, id="mean 800, 600 left"),
        pytest.param([3, 2100], 3000, 2000, True, id="mean 700, 900 left"),
        pytest.param([2, 2000], 3000, 2000, True, id="mean 1000, exactly 1000 left"),
        pytest.param([2, 2002], 3000, 2000, False, id="mean 1001, 998 left"),
        pytest.param([4, 0], 3000, 2000, True, id="calls in flight, nothing charged yet"),
        pytest.param([4, 3000], 3000, 2000, False, id="at the limit"),
        pytest.param([4, 9000], -1, 2000, True, id="unlimited"),
    ],
)
def test_a_counter_with_a_prior_admits_only_while_its_mean_per_admission_is_left(
    backend: Backend, used: list[int], limit: int, prior: int, admitted: bool
) -> None:
    window(backend, ["n", "cost"], [-1, -1], used)
    counted = backend.window_admit(
        "q", ["n", "cost"], [-1, limit], [1, 0], window_s=3600, ttl_s=60, priors=[0, prior]
    )
    assert counted.allowed is admitted
    assert counted.values == ([used[0] + 1, used[1]] if admitted else used)


def test_windows_follow_the_backends_clock() -> None:
    clock = ManualClock(NOW - NOW % 60 + 59.999)  # the last millisecond of a minute
    backend = MemoryBackend(clock=clock)
    last = backend.window_admit("q", ["n"], [1], [1], window_s=60, ttl_s=120)
    clock.advance(0.001)
    first = backend.window_admit("q", ["n"], [1], [1], window_s=60, ttl_s=120)
    assert (last.allowed, first.allowed) == (True, True)
    assert first.window_start == last.window_start + 60 == clock.now()


def test_counter_add_accumulates_and_absent_counters_read_zero(backend: Backend) -> None:
    assert backend.counter_add("bytes", 100, ttl_s=60) == 100
    assert backend.counter_add("bytes", 50, ttl_s=60) == 150
    assert backend.counters_get(["bytes", "never-written"]) == [150, 0]
    assert backend.counters_get([]) == []


@pytest.mark.parametrize(
    ("before", "amount", "after"),
    [
        pytest.param(None, -1, 0, id="absent stays absent"),
        pytest.param(3, -1, 2, id="lowered"),
        pytest.param(1, -5, 0, id="not below zero"),
        pytest.param(0, -1, 0, id="zero stays zero"),
    ],
)
def test_a_refund_never_creates_a_counter_nor_takes_it_below_zero(
    backend: Backend, before: int | None, amount: int, after: int
) -> None:
    if before is not None:
        backend.counter_add("c", before + 1, ttl_s=60)
        backend.counter_add("c", -1, ttl_s=60)
    assert backend.counter_add("c", amount, ttl_s=60) == after
    assert backend.counters_get(["c"]) == [after]
    if isinstance(backend, RedisBackend):
        assert backend.client.exists(backend._key("counter", "c")) == (before is not None)


def test_counters_expire_after_their_ttl(timed: Timed) -> None:
    backend = timed.backend
    backend.counter_add("short", 1, ttl_s=0.05)
    counted = backend.window_admit("short-window", ["n"], [5], [1], window_s=3600, ttl_s=0.05)
    backend.counter_add("long", 1, ttl_s=60)
    timed.advance(0.1)
    window_counter = f"short-window:{int(counted.window_start)}:n"
    assert backend.counters_get(["short", window_counter, "long"]) == [0, 0, 1]


def test_counter_ttl_is_set_only_when_the_counter_is_created(redis_client: redis.Redis[bytes]) -> None:
    backend = RedisBackend(redis_client)
    backend.counter_add("c", 1, ttl_s=100)
    backend.counter_add("c", 1, ttl_s=5000)
    backend.counter_add("c", -1, ttl_s=5000)
    assert 0 < backend.client.pttl(backend._key("counter", "c")) <= 100_000


# -- leases -----------------------------------------------------------------


def test_leases_are_granted_up_to_the_limit(backend: Backend) -> None:
    granted = backend.lease_acquire("s", "a", 2, 10)
    assert granted is not None and abs(granted - backend.now()) < 1
    assert backend.lease_acquire("s", "b", 2, 10) is not None
    assert backend.lease_acquire("s", "c", 2, 10) is None
    assert backend.lease_count("s") == 2


def test_reacquiring_renews_the_holders_lease_even_at_the_limit(timed: Timed) -> None:
    backend = timed.backend
    assert backend.lease_acquire("s", "a", 1, 0.2) is not None
    timed.advance(0.1)
    assert backend.lease_acquire("s", "a", 1, 0.2) is not None
    timed.advance(0.15)
    assert backend.lease_count("s") == 1  # the renewed lease counts
    assert backend.lease_acquire("s", "b", 1, 0.2) is None


def test_lapsed_leases_are_dropped_by_the_next_acquire(timed: Timed) -> None:
    backend = timed.backend
    assert backend.lease_acquire("s", "dead-worker", 1, 0.1) is not None
    assert backend.lease_acquire("s", "next", 1, 10) is None
    timed.advance(0.1)
    assert backend.lease_acquire("s", "next", 1, 10) is not None
    assert backend.lease_count("s") == 1


@pytest.mark.parametrize(
    ("elapsed", "granted"),
    [
        pytest.param(9.999, False, id="before expiry"),
        pytest.param(10, True, id="exactly at expiry"),
        pytest.param(11, True, id="after expiry"),
    ],
)
def test_a_lease_lapses_exactly_at_its_expiry(elapsed: float, granted: bool) -> None:
    clock = ManualClock(NOW)
    backend = MemoryBackend(clock=clock)
    assert backend.lease_acquire("s", "dead-worker", 1, 10) == NOW
    clock.advance(elapsed)
    assert (backend.lease_acquire("s", "next", 1, 10) is not None) is granted
    assert backend.lease_count("s") == 1


def test_lease_count_ignores_lapsed_leases_without_an_acquire(timed: Timed) -> None:
    backend = timed.backend
    backend.lease_acquire("s", "a", 5, 0.1)
    backend.lease_acquire("s", "b", 5, 10)
    assert backend.lease_count("s") == 2
    timed.advance(0.1)
    assert backend.lease_count("s") == 1


def test_release_frees_the_lease_and_tells_whether_it_was_held(backend: Backend) -> None:
    backend.lease_acquire("s", "a", 1, 10)
    assert backend.lease_release("s", "a") is True
    assert backend.lease_release("s", "a") is False
    assert backend.lease_release("s", "stranger") is False
    assert backend.lease_acquire("s", "b", 1, 10) is not None


def test_a_cap_lowers_the_limit_until_removed(backend: Backend) -> None:
    assert backend.lease_get_cap("s") is None
    backend.lease_set_cap("s", 1, ttl_s=60)
    assert backend.lease_get_cap("s") == 1
    assert backend.lease_acquire("s", "a", 3, 10) is not None
    assert backend.lease_acquire("s", "b", 3, 10) is None
    backend.lease_set_cap("s", 5, ttl_s=60)  # a cap above the limit does not raise it
    assert backend.lease_acquire("s", "b", 2, 10) is not None
    assert backend.lease_acquire("s", "c", 2, 10) is None
    backend.lease_set_cap("s", None, ttl_s=60)
    assert backend.lease_get_cap("s") is None
    assert backend.lease_acquire("s", "c", 3, 10) is not None


def test_a_cap_expires_after_its_ttl(timed: Timed) -> None:
    backend = timed.backend
    backend.lease_set_cap("s", 1, ttl_s=0.05)
    timed.advance(0.1)
    assert backend.lease_get_cap("s") is None
    assert backend.lease_acquire("s", "a", 2, 10) is not None
    assert backend.lease_acquire("s", "b", 2, 10) is not None


def test_lease_wait_times_out_when_nothing_is_released(backend: Backend) -> None:
    started = time.monotonic()
    assert backend.lease_wait("s", 0.1) is False
    assert 0.09 <= time.monotonic() - started < 0.5


def test_a_release_just_before_the_wait_is_not_lost(backend: Backend) -> None:
    backend.lease_acquire("s", "a", 1, 10)
    backend.lease_release("s", "a")
    started = time.monotonic()
    assert backend.lease_wait("s", 1.0) is True
    assert time.monotonic() - started < 0.05
    assert backend.lease_wait("s", 0.05) is False  # one release, one wake-up


def test_releasing_a_lease_not_held_wakes_nobody(backend: Backend) -> None:
    backend.lease_release("s", "stranger")
    assert backend.lease_wait("s", 0.05) is False


def test_unconsumed_wake_ups_are_capped(backend: Backend) -> None:
    for holder in range(WAKE_TOKENS_KEPT + 3):
        backend.lease_acquire("s", f"h{holder}", 100, 10)
        backend.lease_release("s", f"h{holder}")
    woken = sum(backend.lease_wait("s", 0.02) for _ in range(WAKE_TOKENS_KEPT + 3))
    assert woken == WAKE_TOKENS_KEPT


def test_a_release_wakes_a_waiter_at_once(backend: Backend) -> None:
    backend.lease_acquire("s", "a", 1, 10)
    result: dict[str, Any] = {}

    def wait() -> None:
        result["woken"] = backend.lease_wait("s", 2.0)
        result["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    released_at = time.monotonic()
    backend.lease_release("s", "a")
    waiter.join(timeout=3)
    assert result["woken"] is True
    assert result["at"] - released_at < 0.05


def test_waits_on_other_keys_are_not_woken(backend: Backend) -> None:
    backend.lease_acquire("other", "a", 1, 10)
    backend.lease_release("other", "a")
    assert backend.lease_wait("s", 0.05) is False


def test_lease_wait_of_zero_only_takes_a_pending_wake_up(backend: Backend) -> None:
    assert backend.lease_wait("s", 0) is False
    backend.lease_acquire("s", "a", 1, 10)
    backend.lease_release("s", "a")
    assert backend.lease_wait("s", 0) is True


# -- versioned state --------------------------------------------------------


def test_absent_state_reads_as_version_zero_and_none(backend: Backend) -> None:
    assert backend.state_get("breaker") == (0, None)


def test_state_cas_writes_only_over_the_expected_version(backend: Backend) -> None:
    first = {"status": "open", "open_until": 1_700_000_060.125, "holder": None, "n": 3}
    assert backend.state_cas("breaker", 0, first) is True
    assert backend.state_get("breaker") == (1, first)
    assert backend.state_cas("breaker", 0, {"status": "stale"}) is False
    assert backend.state_cas("breaker", 2, {"status": "future"}) is False
    assert backend.state_get("breaker") == (1, first)
    assert backend.state_cas("breaker", 1, {"status": "closed"}) is True
    assert backend.state_get("breaker") == (2, {"status": "closed"})


def test_concurrent_cas_on_one_version_has_one_winner(backend: Backend) -> None:
    barrier = threading.Barrier(8)
    wins: list[bool] = []

    def write(n: int) -> None:
        barrier.wait()
        wins.append(backend.state_cas("breaker", 0, {"writer": n}))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1
    assert backend.state_get("breaker")[0] == 1


# -- parking lot ------------------------------------------------------------

PAYLOAD = b"\x00\xff binary \x80 payload"


def test_parked_members_come_due_earliest_first_up_to_the_limit(timed: Timed) -> None:
    backend = timed.backend
    # Tenths of a second, not hundredths: on a busy machine (a clean-clone run) the four parks and the
    # count took over 10 ms on a Redis Cluster, and "early" was due before the first claim.
    backend.park("lot", "late", b"3", 0.5, "t3")
    backend.park("lot", "early", PAYLOAD, 0.3, "t1")
    backend.park("lot", "middle", b"2", 0.4, "t2")
    backend.park("lot", "future", b"4", 1000, "t4")
    assert backend.parked_count("lot") == 4
    assert claims(backend.claim_due("lot", 10, 60)) == []
    timed.advance(0.6)
    claimed, _ = backend.claim_due("lot", 2, 60)
    assert claimed == [ParkedClaim("early", PAYLOAD, "t1"), ParkedClaim("middle", b"2", "t2")]
    assert claims(backend.claim_due("lot", 10, 60)) == [("late", b"3")]
    assert backend.parked_count("lot") == 4  # claimed is not removed
    assert backend.claim_due("lot", 0, 60) == ([], [])


def test_parking_a_member_again_replaces_payload_due_time_and_token(timed: Timed) -> None:
    backend = timed.backend
    backend.park("lot", "m", b"old", 0, "old-token")
    backend.park("lot", "m", b"new", 0.1, "new-token")
    assert backend.parked_count("lot") == 1
    assert claims(backend.claim_due("lot", 10, 60)) == []
    timed.advance(0.1)
    assert backend.claim_due("lot", 10, 60) == ([ParkedClaim("m", b"new", "new-token")], [])


def test_a_claim_hides_members_until_it_expires(timed: Timed) -> None:
    backend = timed.backend
    backend.park("lot", "m", PAYLOAD, 0, "t")
    assert claims(backend.claim_due("lot", 10, 0.2)) == [("m", PAYLOAD)]
    assert claims(backend.claim_due("lot", 10, 0.2)) == []
    # The claimer died without calling unpark: the member comes due again.
    timed.advance(0.2)
    assert claims(backend.claim_due("lot", 10, 0.2)) == [("m", PAYLOAD)]


def test_unpark_removes_member_and_payload_of_its_own_parking(backend: Backend) -> None:
    backend.park("lot", "m", PAYLOAD, 0, "t")
    backend.park("lot", "other", b"x", 0, "u")
    assert backend.unpark("lot", "m", "t") is True
    assert backend.unpark("lot", "m", "t") is False
    assert backend.unpark("lot", "never-parked", "t") is False
    assert backend.parked_count("lot") == 1
    assert claims(backend.claim_due("lot", 10, 60)) == [("other", b"x")]


def test_unpark_keeps_a_member_parked_again_since_its_claim(backend: Backend) -> None:
    backend.park("lot", "m", b"first", 0, "first-token")
    [claim], _ = backend.claim_due("lot", 10, 60)
    # Released, run, and deferred again before the releaser cleared its claim.
    backend.park("lot", "m", b"second", 0, "second-token")
    assert backend.unpark("lot", claim.member, claim.token) is False
    assert backend.parked_count("lot") == 1
    assert backend.claim_due("lot", 10, 60) == ([ParkedClaim("m", b"second", "second-token")], [])


def test_a_member_without_payload_is_reported_as_an_orphan_not_dropped_silently(backend: Backend) -> None:
    backend.park("lot", "lost", b"p", 0, "t")
    backend.park("lot", "kept", b"k", 0, "u")
    if isinstance(backend, RedisBackend):
        backend.client.hdel(backend._key("park-payload", "lot"), "lost")
    else:
        assert isinstance(backend, MemoryBackend)
        backend.lose_payload("lot", "lost")
    assert backend.parked_orphans("lot") == 0
    claimed, orphans = backend.claim_due("lot", 10, 60)
    assert [claim.member for claim in claimed] == ["kept"]
    assert orphans == ["lost"]
    assert backend.parked_orphans("lot") == 1
    assert backend.parked_count("lot") == 1  # the orphan is gone, counted


def test_concurrent_claimers_never_get_the_same_member(backend: Backend) -> None:
    members = {f"m{n:03d}" for n in range(200)}
    for member in members:
        backend.park("lot", member, member.encode(), 0, member)
    barrier = threading.Barrier(8)
    found: list[list[ParkedClaim]] = [[] for _ in range(8)]

    def claim(worker: int) -> None:
        barrier.wait()
        while batch := backend.claim_due("lot", 7, 60)[0]:
            found[worker].extend(batch)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [claim.member for batch in found for claim in batch]
    assert len(claimed) == len(members)
    assert set(claimed) == members
    assert all(claim.payload == claim.member.encode() for batch in found for claim in batch)


# -- stages -----------------------------------------------------------------


def test_a_stage_keeps_its_fields_together_and_drops_the_ones_asked(backend: Backend) -> None:
    assert backend.stage_look("s1") == (set(), {})
    assert backend.stage_put("s1", {"chunk:0": b"\x00zlib", "chunks": b"1"}, 60.0) == {"chunk:0", "chunks"}
    assert backend.stage_get("s1", "chunk:0") == b"\x00zlib" and backend.stage_get("s1", "nope") is None
    after = backend.stage_put("s1", {"stored:0": b"1"}, 60.0, remove=["chunk:0", "absent"])
    assert after == {"chunks", "stored:0"}
    assert backend.stage_look("s1", ["chunks", "chunk:0"]) == ({"chunks", "stored:0"}, {"chunks": b"1"})
    # Nothing to write still sets the TTL again, and tells the fields.
    assert backend.stage_put("s1", {}, 60.0) == {"chunks", "stored:0"}
    assert backend.stage_get("s2", "chunks") is None and backend.stage_put("s2", {}, 60.0) == set()


def test_a_stage_expires_whole_ttl_after_its_last_write(timed: Timed) -> None:
    backend = timed.backend
    backend.stage_put("s1", {"a": b"1"}, 1.0)
    timed.advance(0.6)
    backend.stage_put("s1", {"b": b"2"}, 1.0)
    timed.advance(0.6)
    assert backend.stage_look("s1", ["a"]) == ({"a", "b"}, {"a": b"1"})
    timed.advance(0.6)
    assert backend.stage_look("s1", ["a"]) == (set(), {})


# -- keys, namespaces, reachability -----------------------------------------


def test_each_kind_of_primitive_keeps_its_own_keys(backend: Backend) -> None:
    backend.counter_add("x", 7, ttl_s=60)
    backend.lease_acquire("x", "a", 1, 10)
    backend.lease_set_cap("x", 3, ttl_s=60)
    backend.state_cas("x", 0, {"v": 1})
    backend.park("x", "a", b"p", 0, "t")
    assert backend.counters_get(["x"]) == [7]
    assert backend.lease_count("x") == 1
    assert backend.lease_get_cap("x") == 3
    assert backend.state_get("x") == (1, {"v": 1})
    assert backend.parked_count("x") == 1


def test_namespaces_keep_deployments_apart(redis_client: redis.Redis[bytes]) -> None:
    blue = RedisBackend(redis_client, namespace="blue")
    green = RedisBackend(redis_client, namespace="green")
    blue.counter_add("requests", 5, ttl_s=60)
    assert green.counters_get(["requests"]) == [0]
    assert redis_client.get("blue:counter:{requests}") == b"5"


def test_a_client_that_decodes_responses_is_refused(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisBackend(client)  # type: ignore[arg-type]
    client.close()


def test_ping_succeeds_on_a_running_server(backend: Backend) -> None:
    backend.ping()


def test_from_url_reaches_the_server(redis_url: str, redis_client: redis.Redis[bytes]) -> None:
    backend = RedisBackend.from_url(redis_url, namespace="n", socket_timeout_s=1.0)
    backend.ping()
    backend.counter_add("c", 2, ttl_s=60)
    assert redis_client.get("n:counter:{c}") == b"2"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


PRIMITIVE_CALLS: list[tuple[str, Callable[[Backend], object]]] = [
    ("now", lambda b: b.now()),
    ("window_admit", lambda b: b.window_admit("k", ["n"], [1], [1], window_s=60, ttl_s=60)),
    ("counter_add", lambda b: b.counter_add("k", 1, ttl_s=60)),
    ("counters_get", lambda b: b.counters_get(["k"])),
    ("lease_acquire", lambda b: b.lease_acquire("k", "h", 1, 1)),
    ("lease_release", lambda b: b.lease_release("k", "h")),
    ("lease_count", lambda b: b.lease_count("k")),
    ("lease_wait", lambda b: b.lease_wait("k", 0.1)),
    ("lease_set_cap", lambda b: b.lease_set_cap("k", 1, ttl_s=60)),
    ("lease_get_cap", lambda b: b.lease_get_cap("k")),
    ("state_get", lambda b: b.state_get("k")),
    ("state_get_now", lambda b: b.state_get_now("k")),
    ("state_cas", lambda b: b.state_cas("k", 0, {})),
    ("park", lambda b: b.park("k", "m", b"p", 0, "t")),
    ("claim_due", lambda b: b.claim_due("k", 1, 1)),
    ("unpark", lambda b: b.unpark("k", "m", "t")),
    ("parked_count", lambda b: b.parked_count("k")),
    ("parked_orphans", lambda b: b.parked_orphans("k")),
    ("ping", lambda b: b.ping()),
]


@pytest.mark.parametrize(
    "call", [call for _, call in PRIMITIVE_CALLS], ids=[name for name, _ in PRIMITIVE_CALLS]
)
def test_an_unreachable_redis_raises_backend_unavailable(call: Callable[[Backend], object]) -> None:
    port = _closed_port()
    backend = RedisBackend.from_url(f"redis://:hunter2@127.0.0.1:{port}/0", socket_timeout_s=0.5)
    with pytest.raises(BackendUnavailable) as raised:
        call(backend)
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message
    assert "hunter2" not in message
    assert "Check that the server is running" in message


@pytest.mark.parametrize(("refusal", "error"), [("READONLY", "ReadOnlyError"), ("OOM", "OutOfMemoryError")])
def test_a_redis_that_refuses_writes_for_now_is_unavailable_not_an_error(
    redis_client: redis.Redis[bytes], refusal: str, error: str
) -> None:
    """A failover's READONLY or a full memory's OOM is "try again later", like a lost connection."""
    backend = RedisBackend(redis_client)
    if refusal == "READONLY":
        redis_client.execute_command("REPLICAOF", "127.0.0.1", str(_closed_port()))
    else:
        redis_client.config_set("maxmemory", "1")
    try:
        with pytest.raises(BackendUnavailable, match=rf"refuses the command for now \({error}"):
            backend.park("lot", "m", b"p", 0, "t")
        with pytest.raises(BackendUnavailable, match=error):
            backend.window_admit("q", ["n"], [5], [1], window_s=60, ttl_s=60)
        with pytest.raises(BackendUnavailable, match=error):
            backend.counter_add("c", 1, ttl_s=60)
    finally:
        redis_client.execute_command("REPLICAOF", "NO", "ONE")
        redis_client.config_set("maxmemory", "0")


def test_other_error_replies_are_not_taken_for_unavailability(redis_client: redis.Redis[bytes]) -> None:
    backend = RedisBackend(redis_client)
    redis_client.set(backend._key("park-due", "lot"), "not a sorted set")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        backend.park("lot", "m", b"p", 0, "t")


def test_importing_the_backends_package_does_not_import_redis() -> None:
    check = (
        "import sys, enrichment_middleware.backends, enrichment_middleware.policy; "
        "assert 'redis' not in sys.modules, 'redis was imported'; "
        "from enrichment_middleware.backends import RedisBackend; assert 'redis' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", check], check=True, cwd=Path(__file__).resolve().parents[2])


# -- topologies ----------------------------------------------------------------


def test_a_cluster_node_given_as_a_standalone_redis_fails_the_start_check(redis_cluster: Any) -> None:
    backend = RedisBackend.from_url(redis_cluster.url)
    with pytest.raises(RedisTopologyError, match="REDIS_CLUSTER=true"):
        backend.check_topology()


def test_a_standalone_redis_given_as_a_cluster_fails_at_once(redis_url: str) -> None:
    with pytest.raises(RedisTopologyError, match="No Redis Cluster answers"):
        RedisBackend.from_url(redis_url, cluster=True)


def test_sentinels_that_do_not_know_the_primary_fail_the_start_check(redis_sentinel: Any) -> None:
    backend = RedisBackend.from_url(
        "redis://127.0.0.1/0", sentinels=redis_sentinel.sentinels, sentinel_master="other"
    )
    with pytest.raises(RedisTopologyError, match="know no primary named 'other' \\(they know: mymaster\\)"):
        backend.check_topology()


def test_a_sentinel_given_as_a_redis_url_fails_the_start_check(redis_sentinel: Any) -> None:
    backend = RedisBackend.from_url(f"redis://{redis_sentinel.sentinels.split(',')[0]}/0")
    with pytest.raises(RedisTopologyError, match="REDIS_SENTINELS"):
        backend.check_topology()


@pytest.mark.parametrize("timed", ["redis", "redis-cluster", "redis-sentinel"], indirect=True)
def test_the_right_topology_passes_the_start_check(timed: Timed) -> None:
    assert isinstance(timed.backend, RedisBackend)
    timed.backend.check_topology()


def test_one_policys_keys_share_a_cluster_hash_tag(redis_client: redis.Redis[bytes]) -> None:
    backend = RedisBackend(redis_client, namespace="n")
    kinds = ("lease", "lease-cap", "lease-wake", "park-due", "park-payload", "pause", "hold", "counter")
    names = [backend.key(kind, "semaphore:api") for kind in kinds]
    names.append(backend.key("counter", "semaphore:api:1700000000:requests"))
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert len({key_slot(backend.key("lease", f"semaphore:{n}").encode()) for n in range(20)}) > 1


def test_a_park_no_replica_confirmed_is_an_error_to_retry(redis_client: redis.Redis[bytes]) -> None:
    backend = RedisBackend(redis_client, park_replicas=1)  # a standalone server: no replica will answer
    with pytest.raises(BackendUnavailable, match="0 of 1 replicas confirmed"):
        backend.park("lot", "m", b"payload", 1.0, "t")


def test_a_park_on_sentinel_waits_for_the_replica(redis_sentinel: Any) -> None:
    redis_sentinel.flush()
    backend = RedisBackend.from_url(
        "redis://127.0.0.1/0", sentinels=redis_sentinel.sentinels, sentinel_master=MASTER
    )
    assert backend.park_replicas == 1
    backend.park("lot", "m", b"payload", 0.0, "t")  # returns only once the replica has it
    replica = redis.Redis(host="127.0.0.1", port=redis_sentinel.replica_ports[0])
    assert replica.hget(backend.key("park-payload", "lot"), "m") == b"payload"

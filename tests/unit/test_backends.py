"""The backend contract: every primitive behaves the same in memory and in Redis."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from middleware.backends import Backend, BackendUnavailable, MemoryBackend
from middleware.backends.base import WAKE_TOKENS_KEPT
from middleware.backends.redis import RedisBackend

NOW = 1_700_000_000.0


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend()
    client = request.getfixturevalue("redis_client")
    return RedisBackend(client)


# -- counters ---------------------------------------------------------------


def test_counters_admit_adds_increments_while_every_counter_is_under_its_limit(backend: Backend) -> None:
    assert backend.counters_admit(["a", "b"], [2, 10], [1, 5], ttl_s=60) == (True, [1, 5])
    assert backend.counters_admit(["a", "b"], [2, 10], [1, 5], ttl_s=60) == (True, [2, 10])
    assert backend.counters_get(["a", "b"]) == [2, 10]


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
def test_counters_admit_refuses_without_change_when_any_counter_is_at_its_limit(
    backend: Backend, limits: list[int], admitted: bool
) -> None:
    backend.counter_add("a", 3, ttl_s=60)
    backend.counter_add("b", 4, ttl_s=60)
    before = backend.counters_get(["a", "b"])
    allowed, values = backend.counters_admit(["a", "b"], limits, [1, 2], ttl_s=60)
    assert allowed is admitted
    if admitted:
        assert values == [before[0] + 1, before[1] + 2]
    else:
        assert values == before
    assert backend.counters_get(["a", "b"]) == values


def test_a_limit_of_zero_refuses_even_an_absent_counter(backend: Backend) -> None:
    assert backend.counters_admit(["fresh"], [0], [1], ttl_s=60) == (False, [0])


def test_counters_admit_does_not_create_counters_it_adds_nothing_to(backend: Backend) -> None:
    assert backend.counters_admit(["requests", "bytes"], [5, 5], [1, 0], ttl_s=60) == (True, [1, 0])
    if isinstance(backend, RedisBackend):
        assert backend.client.exists(backend._key("counter", "bytes")) == 0


def test_counters_admit_needs_one_limit_and_increment_per_key(backend: Backend) -> None:
    with pytest.raises(ValueError, match="one limit and one increment per key"):
        backend.counters_admit(["a", "b"], [1], [1, 1], ttl_s=60)


def test_counter_add_accumulates_and_absent_counters_read_zero(backend: Backend) -> None:
    assert backend.counter_add("bytes", 100, ttl_s=60) == 100
    assert backend.counter_add("bytes", 50, ttl_s=60) == 150
    assert backend.counters_get(["bytes", "never-written"]) == [150, 0]
    assert backend.counters_get([]) == []


def test_counters_expire_after_their_ttl(backend: Backend) -> None:
    backend.counter_add("short", 1, ttl_s=0.05)
    backend.counters_admit(["short-admit"], [5], [1], ttl_s=0.05)
    backend.counter_add("long", 1, ttl_s=60)
    time.sleep(0.1)
    assert backend.counters_get(["short", "short-admit", "long"]) == [0, 0, 1]


def test_counter_ttl_is_set_only_when_the_counter_is_created(redis_client: redis.Redis[bytes]) -> None:
    backend = RedisBackend(redis_client)
    backend.counter_add("c", 1, ttl_s=100)
    backend.counter_add("c", 1, ttl_s=5000)
    backend.counters_admit(["c"], [10], [1], ttl_s=5000)
    assert 0 < backend.client.pttl(backend._key("counter", "c")) <= 100_000


# -- leases -----------------------------------------------------------------


def test_leases_are_granted_up_to_the_limit(backend: Backend) -> None:
    assert backend.lease_acquire("s", "a", 2, NOW, NOW + 10)
    assert backend.lease_acquire("s", "b", 2, NOW, NOW + 10)
    assert not backend.lease_acquire("s", "c", 2, NOW, NOW + 10)
    assert backend.lease_count("s", NOW) == 2


def test_reacquiring_refreshes_the_holders_lease_even_at_the_limit(backend: Backend) -> None:
    assert backend.lease_acquire("s", "a", 1, NOW, NOW + 10)
    assert backend.lease_acquire("s", "a", 1, NOW + 5, NOW + 15)
    assert backend.lease_count("s", NOW + 12) == 1  # the refreshed expiry counts
    assert not backend.lease_acquire("s", "b", 1, NOW + 12, NOW + 22)


@pytest.mark.parametrize(
    ("now", "granted"),
    [
        pytest.param(NOW + 9.999, False, id="before expiry"),
        pytest.param(NOW + 10, True, id="exactly at expiry"),
        pytest.param(NOW + 11, True, id="after expiry"),
    ],
)
def test_expired_leases_are_dropped_by_the_next_acquire(backend: Backend, now: float, granted: bool) -> None:
    assert backend.lease_acquire("s", "dead-worker", 1, NOW, NOW + 10)
    assert backend.lease_acquire("s", "next", 1, now, now + 10) is granted
    assert backend.lease_count("s", now) == 1


def test_lease_count_ignores_expired_leases_without_an_acquire(backend: Backend) -> None:
    backend.lease_acquire("s", "a", 5, NOW, NOW + 10)
    backend.lease_acquire("s", "b", 5, NOW, NOW + 20)
    assert backend.lease_count("s", NOW + 9) == 2
    assert backend.lease_count("s", NOW + 10) == 1
    assert backend.lease_count("s", NOW + 20) == 0


def test_release_frees_the_lease_and_tells_whether_it_was_held(backend: Backend) -> None:
    backend.lease_acquire("s", "a", 1, NOW, NOW + 10)
    assert backend.lease_release("s", "a") is True
    assert backend.lease_release("s", "a") is False
    assert backend.lease_release("s", "stranger") is False
    assert backend.lease_acquire("s", "b", 1, NOW, NOW + 10)


def test_a_cap_lowers_the_limit_until_removed(backend: Backend) -> None:
    assert backend.lease_get_cap("s") is None
    backend.lease_set_cap("s", 1, ttl_s=60)
    assert backend.lease_get_cap("s") == 1
    assert backend.lease_acquire("s", "a", 3, NOW, NOW + 10)
    assert not backend.lease_acquire("s", "b", 3, NOW, NOW + 10)
    backend.lease_set_cap("s", 5, ttl_s=60)  # a cap above the limit does not raise it
    assert backend.lease_acquire("s", "b", 2, NOW, NOW + 10)
    assert not backend.lease_acquire("s", "c", 2, NOW, NOW + 10)
    backend.lease_set_cap("s", None, ttl_s=60)
    assert backend.lease_get_cap("s") is None
    assert backend.lease_acquire("s", "c", 3, NOW, NOW + 10)


def test_a_cap_expires_after_its_ttl(backend: Backend) -> None:
    backend.lease_set_cap("s", 1, ttl_s=0.05)
    time.sleep(0.1)
    assert backend.lease_get_cap("s") is None
    assert backend.lease_acquire("s", "a", 2, NOW, NOW + 10)
    assert backend.lease_acquire("s", "b", 2, NOW, NOW + 10)


def test_lease_wait_times_out_when_nothing_is_released(backend: Backend) -> None:
    started = time.monotonic()
    assert backend.lease_wait("s", 0.1) is False
    assert 0.09 <= time.monotonic() - started < 0.5


def test_a_release_just_before_the_wait_is_not_lost(backend: Backend) -> None:
    backend.lease_acquire("s", "a", 1, NOW, NOW + 10)
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
        backend.lease_acquire("s", f"h{holder}", 100, NOW, NOW + 10)
        backend.lease_release("s", f"h{holder}")
    woken = sum(backend.lease_wait("s", 0.02) for _ in range(WAKE_TOKENS_KEPT + 3))
    assert woken == WAKE_TOKENS_KEPT


def test_a_release_wakes_a_waiter_at_once(backend: Backend) -> None:
    backend.lease_acquire("s", "a", 1, NOW, NOW + 10)
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
    backend.lease_acquire("other", "a", 1, NOW, NOW + 10)
    backend.lease_release("other", "a")
    assert backend.lease_wait("s", 0.05) is False


def test_lease_wait_of_zero_only_takes_a_pending_wake_up(backend: Backend) -> None:
    assert backend.lease_wait("s", 0) is False
    backend.lease_acquire("s", "a", 1, NOW, NOW + 10)
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


def test_parked_members_come_due_earliest_first_up_to_the_limit(backend: Backend) -> None:
    backend.park("lot", "late", b"3", NOW + 30)
    backend.park("lot", "early", PAYLOAD, NOW + 10)
    backend.park("lot", "middle", b"2", NOW + 20)
    backend.park("lot", "future", b"4", NOW + 1000)
    assert backend.parked_count("lot") == 4
    assert backend.claim_due("lot", NOW + 5, 10, NOW + 65) == []
    assert backend.claim_due("lot", NOW + 30, 2, NOW + 90) == [("early", PAYLOAD), ("middle", b"2")]
    assert backend.claim_due("lot", NOW + 30, 10, NOW + 90) == [("late", b"3")]
    assert backend.parked_count("lot") == 4  # claimed is not removed
    assert backend.claim_due("lot", NOW + 30, 0, NOW + 90) == []


def test_parking_a_member_again_replaces_payload_and_due_time(backend: Backend) -> None:
    backend.park("lot", "m", b"old", NOW + 10)
    backend.park("lot", "m", b"new", NOW + 100)
    assert backend.parked_count("lot") == 1
    assert backend.claim_due("lot", NOW + 50, 10, NOW + 110) == []
    assert backend.claim_due("lot", NOW + 100, 10, NOW + 160) == [("m", b"new")]


def test_a_claim_hides_members_until_it_expires(backend: Backend) -> None:
    backend.park("lot", "m", PAYLOAD, NOW)
    assert backend.claim_due("lot", NOW, 10, NOW + 60) == [("m", PAYLOAD)]
    assert backend.claim_due("lot", NOW + 59.999, 10, NOW + 120) == []
    # The claimer died without calling unpark: the member comes due again.
    assert backend.claim_due("lot", NOW + 60, 10, NOW + 120) == [("m", PAYLOAD)]


def test_unpark_removes_member_and_payload(backend: Backend) -> None:
    backend.park("lot", "m", PAYLOAD, NOW)
    backend.park("lot", "other", b"x", NOW)
    backend.unpark("lot", "m")
    backend.unpark("lot", "never-parked")
    assert backend.parked_count("lot") == 1
    assert backend.claim_due("lot", NOW, 10, NOW + 60) == [("other", b"x")]


def test_concurrent_claimers_never_get_the_same_member(backend: Backend) -> None:
    members = {f"m{n:03d}" for n in range(200)}
    for member in members:
        backend.park("lot", member, member.encode(), NOW)
    barrier = threading.Barrier(8)
    claims: list[list[tuple[str, bytes]]] = [[] for _ in range(8)]

    def claim(worker: int) -> None:
        barrier.wait()
        while batch := backend.claim_due("lot", NOW, 7, NOW + 60):
            claims[worker].extend(batch)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [member for batch in claims for member, _ in batch]
    assert len(claimed) == len(members)
    assert set(claimed) == members
    assert all(payload == member.encode() for batch in claims for member, payload in batch)


# -- keys, namespaces, reachability -----------------------------------------


def test_each_kind_of_primitive_keeps_its_own_keys(backend: Backend) -> None:
    backend.counter_add("x", 7, ttl_s=60)
    backend.lease_acquire("x", "a", 1, NOW, NOW + 10)
    backend.lease_set_cap("x", 3, ttl_s=60)
    backend.state_cas("x", 0, {"v": 1})
    backend.park("x", "a", b"p", NOW)
    assert backend.counters_get(["x"]) == [7]
    assert backend.lease_count("x", NOW) == 1
    assert backend.lease_get_cap("x") == 3
    assert backend.state_get("x") == (1, {"v": 1})
    assert backend.parked_count("x") == 1


def test_namespaces_keep_deployments_apart(redis_client: redis.Redis[bytes]) -> None:
    blue = RedisBackend(redis_client, namespace="blue")
    green = RedisBackend(redis_client, namespace="green")
    blue.counter_add("requests", 5, ttl_s=60)
    assert green.counters_get(["requests"]) == [0]
    assert redis_client.get("blue:counter:requests") == b"5"


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
    assert redis_client.get("n:counter:c") == b"2"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


PRIMITIVE_CALLS: list[tuple[str, Callable[[Backend], object]]] = [
    ("counters_admit", lambda b: b.counters_admit(["k"], [1], [1], ttl_s=60)),
    ("counter_add", lambda b: b.counter_add("k", 1, ttl_s=60)),
    ("counters_get", lambda b: b.counters_get(["k"])),
    ("lease_acquire", lambda b: b.lease_acquire("k", "h", 1, NOW, NOW + 1)),
    ("lease_release", lambda b: b.lease_release("k", "h")),
    ("lease_count", lambda b: b.lease_count("k", NOW)),
    ("lease_wait", lambda b: b.lease_wait("k", 0.1)),
    ("lease_set_cap", lambda b: b.lease_set_cap("k", 1, ttl_s=60)),
    ("lease_get_cap", lambda b: b.lease_get_cap("k")),
    ("state_get", lambda b: b.state_get("k")),
    ("state_cas", lambda b: b.state_cas("k", 0, {})),
    ("park", lambda b: b.park("k", "m", b"p", NOW)),
    ("claim_due", lambda b: b.claim_due("k", NOW, 1, NOW + 1)),
    ("unpark", lambda b: b.unpark("k", "m")),
    ("parked_count", lambda b: b.parked_count("k")),
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


def test_importing_the_backends_package_does_not_import_redis() -> None:
    check = (
        "import sys, middleware.backends, middleware.policy; "
        "assert 'redis' not in sys.modules, 'redis was imported'; "
        "from middleware.backends import RedisBackend; assert 'redis' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", check], check=True, cwd=Path(__file__).resolve().parents[2])

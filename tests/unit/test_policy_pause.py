"""The pause and hold policy: window edges on a manual clock, the backend primitives in memory and in
Redis, and concurrent openers (exactly one is told it opened the pause)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from enrichment_middleware.backends import Backend, MemoryBackend
from enrichment_middleware.backends.base import PAUSE_KEPT_S
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.failpoints import FailpointError, configure
from enrichment_middleware.policy.clock import ManualClock
from enrichment_middleware.policy.pause import (
    HELD,
    PAUSED,
    PauseDecision,
    PauseLimits,
    PausePolicy,
    PauseStatus,
    decide,
    pause_length,
    read_status,
)
from tests.support.contention import cpu_hog
from tests.support.workers import eventually

NOW = 1_700_000_000.0
LIMITS = PauseLimits(min_pause_s=30.0, jitter_s=2.0, hold_recheck_s=60.0, max_pause_s=600.0)


@dataclass
class Timed:
    """A backend and a way to let its time pass: a manual clock in memory, real sleep on Redis."""

    backend: Backend
    advance: Callable[[float], None]
    exact: bool


@pytest.fixture(params=["memory", "redis"])
def timed(request: pytest.FixtureRequest) -> Timed:
    if request.param == "memory":
        clock = ManualClock(NOW)
        return Timed(MemoryBackend(clock=clock), clock.advance, exact=True)
    client = request.getfixturevalue("redis_client")
    return Timed(RedisBackend(client), time.sleep, exact=False)


def manual(limits: PauseLimits = LIMITS, seed: int = 0) -> tuple[PausePolicy, ManualClock]:
    clock = ManualClock(NOW)
    return PausePolicy("api", limits, MemoryBackend(clock=clock), rng=random.Random(seed)), clock


# -- pure functions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (None, PauseStatus(None, 0.0, False, None, None)),
        (
            {"now": 100.0, "paused_until": 130.0, "pause_reason": "slow", "held": False},
            PauseStatus(130.0, 30.0, False, "slow", None, pause_reason="slow"),
        ),
        # The end exactly at now: over.
        (
            {"now": 130.0, "paused_until": 130.0, "pause_reason": "slow", "held": False},
            PauseStatus(None, 0.0, False, None, None),
        ),
        (
            {"now": 131.0, "paused_until": 130.0, "pause_reason": "slow", "held": False},
            PauseStatus(None, 0.0, False, None, None),
        ),
        (
            {"now": 100.0, "paused_until": None, "held": True, "hold_reason": "refused", "fingerprint": "f1"},
            PauseStatus(None, 0.0, True, "refused", "f1", hold_reason="refused"),
        ),
        (
            {
                "now": 100.0,
                "paused_until": 110.0,
                "pause_reason": "slow",
                "held": True,
                "hold_reason": "refused",
                "fingerprint": "f1",
            },
            PauseStatus(110.0, 10.0, True, "refused", "f1", pause_reason="slow", hold_reason="refused"),
        ),
    ],
    ids=["nothing", "paused", "end-exactly-now", "ended", "held", "held-and-paused"],
)
def test_read_status(record: dict[str, Any] | None, expected: PauseStatus) -> None:
    assert read_status(record) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (PauseStatus(None, 0.0, False, None, None), PauseDecision(True, None, 0.0)),
        (PauseStatus(130.0, 30.0, False, "slow", None), PauseDecision(False, PAUSED, 30.0)),
        (PauseStatus(None, 0.0, True, "refused", "f"), PauseDecision(False, HELD, 60.0)),
        # Held and paused longer than the re-check: the job waits for the pause end.
        (PauseStatus(200.0, 100.0, True, "refused", "f"), PauseDecision(False, HELD, 100.0)),
        (PauseStatus(110.0, 10.0, True, "refused", "f"), PauseDecision(False, HELD, 60.0)),
    ],
    ids=["free", "paused", "held", "held-paused-longer", "held-paused-shorter"],
)
def test_decide(status: PauseStatus, expected: PauseDecision) -> None:
    assert decide(status, limits=LIMITS) == expected


@pytest.mark.parametrize(
    ("asked", "length"),
    [
        (-5.0, 30.0),
        (0.0, 30.0),
        (29.999, 30.0),
        (45.0, 45.0),
        (600.0, 600.0),
        (1e9, 600.0),
        (float("inf"), 600.0),
    ],
)
def test_pause_length_is_within_the_limits(asked: float, length: float) -> None:
    assert pause_length(asked, limits=LIMITS) == length


def test_a_nan_pause_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        pause_length(float("nan"), limits=LIMITS)


@pytest.mark.parametrize(
    "fields",
    [
        {"min_pause_s": 0.0},
        {"min_pause_s": -1.0},
        {"jitter_s": -0.1},
        {"hold_recheck_s": 0.0},
        {"min_pause_s": 60.0, "max_pause_s": 30.0},
        {"max_pause_s": float("inf")},
        {"min_pause_s": float("nan")},
    ],
)
def test_limits_refuse_nonsense(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="PauseLimits needs"):
        PauseLimits(**fields)


# -- window edges on a manual clock -------------------------------------------


def test_the_first_pause_opens_and_later_ones_do_not() -> None:
    policy, _ = manual()
    assert policy.pause(30.0, "slow") is True
    assert policy.pause(30.0, "slow") is False
    assert policy.status() == PauseStatus(NOW + 30.0, 30.0, False, "slow", None, pause_reason="slow")


def test_a_short_pause_lasts_the_minimum() -> None:
    policy, _ = manual()
    assert policy.extend(1.0, "slow") == (True, NOW + 30.0)


def test_a_longer_pause_moves_the_end_and_a_shorter_one_keeps_it() -> None:
    policy, clock = manual()
    policy.pause(30.0, "slow")
    clock.advance(10.0)
    assert policy.extend(100.0, "status says 100 s") == (False, NOW + 110.0)
    assert policy.status().reason == "status says 100 s"
    clock.advance(10.0)
    # A shorter pause (ends at NOW + 50) keeps the longer end and its reason.
    assert policy.extend(30.0, "slow again") == (False, NOW + 110.0)
    assert policy.status() == PauseStatus(
        NOW + 110.0, 90.0, False, "status says 100 s", None, pause_reason="status says 100 s"
    )


def test_the_pause_ends_exactly_at_its_end() -> None:
    policy, clock = manual(PauseLimits(min_pause_s=30.0, jitter_s=0.0))
    policy.pause(30.0, "slow")
    clock.set(NOW + 30.0 - 0.001)
    decision = policy.admit()
    assert (decision.allowed, decision.reason) == (False, PAUSED)
    assert decision.delay_s == pytest.approx(0.001, abs=1e-6)
    clock.set(NOW + 30.0)  # the end exactly: over
    assert policy.admit() == PauseDecision(True, None, 0.0)
    assert not policy.status().paused
    # The next pause opens anew, from now.
    assert policy.extend(30.0, "slow") == (True, NOW + 60.0)


@pytest.mark.parametrize("seed", range(5))
def test_denials_while_paused_come_back_after_the_end_within_the_jitter(seed: int) -> None:
    policy, clock = manual(seed=seed)
    policy.pause(30.0, "slow")
    clock.advance(12.5)
    decision = policy.admit()
    assert decision.reason == PAUSED
    assert 17.5 <= decision.delay_s <= 17.5 + LIMITS.jitter_s


def test_a_pause_is_kept_for_status_pages_then_forgotten() -> None:
    policy, clock = manual()
    backend = policy.backend
    policy.pause(30.0, "slow")
    clock.advance(30.0 + PAUSE_KEPT_S - 1)
    record = backend.pause_get("pause:api")
    assert record is not None and record["paused_until"] == NOW + 30.0 and record["paused_since"] == NOW
    clock.advance(1)
    assert backend.pause_get("pause:api") is None


# -- holds ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_a_hold_stops_calls_until_released(seed: int) -> None:
    policy, clock = manual(seed=seed)
    assert policy.hold("refused", "settings-1") is True
    assert policy.hold("refused again", "settings-2") is False  # held already; the latest settings kept
    status = policy.status()
    assert (status.held, status.reason, status.fingerprint) == (True, "refused again", "settings-2")
    clock.advance(10**6)  # a hold never ends by itself
    decision = policy.admit()
    assert decision.reason == HELD
    assert LIMITS.hold_recheck_s <= decision.delay_s <= LIMITS.hold_recheck_s + LIMITS.jitter_s
    assert policy.release_hold() is True
    assert policy.admit().allowed
    assert policy.release_hold() is False


@pytest.mark.parametrize(
    ("stored", "given", "released"),
    [
        ("settings-1", "settings-1", False),  # the same settings: they would fail the same way
        ("settings-1", "settings-2", True),  # the settings changed: try again
        ("settings-1", None, True),  # by hand: unconditionally
        ("", "", False),
        ("", "settings-1", True),
    ],
)
def test_release_by_fingerprint(stored: str, given: str | None, released: bool) -> None:
    policy, _ = manual()
    policy.hold("refused", stored)
    assert policy.release_hold(given) is released
    assert policy.status().held is not released


def test_a_hold_outranks_a_pause_and_outlives_it() -> None:
    policy, clock = manual(PauseLimits(min_pause_s=30.0, jitter_s=0.0, hold_recheck_s=5.0))
    policy.pause(100.0, "slow")
    policy.hold("refused", "f")
    assert policy.admit() == PauseDecision(False, HELD, 100.0)
    clock.advance(100.0)
    assert policy.admit() == PauseDecision(False, HELD, 5.0)
    policy.release_hold()
    assert policy.admit().allowed


def test_policies_of_other_names_are_apart() -> None:
    clock = ManualClock(NOW)
    backend = MemoryBackend(clock=clock)
    a, b = (PausePolicy(name, LIMITS, backend) for name in ("a", "b"))
    a.pause(30.0, "slow")
    b.hold("refused", "f")
    assert a.status().paused and not a.status().held
    assert b.status().held and not b.status().paused


def test_opening_a_pause_reaches_its_failpoint() -> None:
    policy, _ = manual()
    configure("pause.opened=raise:1")
    try:
        with pytest.raises(FailpointError, match=r"pause\.opened"):
            policy.pause(30.0, "slow")
        policy.pause(30.0, "slow")  # in force: not opened, no failpoint
    finally:
        configure("")


# -- the backend primitives, in memory and in Redis -----------------------------


def test_pause_extend_opens_once_and_only_moves_later(timed: Timed) -> None:
    backend = timed.backend
    before = backend.now()
    opened, until = backend.pause_extend("k", 0.5, "first")
    assert opened
    assert 0.5 <= until - before < 1.5
    assert backend.pause_extend("k", 0.1, "shorter") == (False, until)
    opened, later = backend.pause_extend("k", 5.0, "longer")
    assert not opened and later > until
    record = backend.pause_get("k")
    assert record is not None
    assert record["paused_until"] == later
    assert record["pause_reason"] == "longer"
    assert record["held"] is False and record["fingerprint"] is None
    assert record["paused_since"] is not None and before <= record["paused_since"] <= record["now"]


def test_a_pause_opens_again_after_its_end(timed: Timed) -> None:
    backend = timed.backend
    opened, until = backend.pause_extend("k", 0.2, "first")
    assert opened
    timed.advance(0.3)
    record = backend.pause_get("k")
    assert record is not None and record["now"] >= until  # ended, still recorded
    opened, again = backend.pause_extend("k", 0.2, "second")
    assert opened and again > until
    record = backend.pause_get("k")
    assert record is not None and record["pause_reason"] == "second" and record["paused_since"] > until - 0.2


def test_pause_get_of_nothing_is_none(timed: Timed) -> None:
    assert timed.backend.pause_get("nothing") is None


def test_hold_set_and_clear(timed: Timed) -> None:
    backend = timed.backend
    assert backend.hold_set("k", "refused", "f1") is True
    since = backend.pause_get("k")
    assert since is not None
    assert backend.hold_set("k", "refused again", "f2") is False
    record = backend.pause_get("k")
    assert record is not None
    assert (record["held"], record["hold_reason"], record["fingerprint"]) == (True, "refused again", "f2")
    assert record["held_since"] == since["held_since"]  # the hold started at the first
    assert record["paused_until"] is None
    assert backend.hold_clear("k", "f2") is False
    assert backend.hold_clear("k", "f1") is True
    assert backend.pause_get("k") is None
    assert backend.hold_clear("k", None) is False
    backend.hold_set("k", "refused", "f1")
    assert backend.hold_clear("k", None) is True


def test_policy_over_each_backend(timed: Timed) -> None:
    policy = PausePolicy("api", PauseLimits(min_pause_s=0.3, jitter_s=0.0), timed.backend)
    assert policy.pause(0.0, "slow")
    decision = policy.admit()
    assert decision.reason == PAUSED and 0.0 < decision.delay_s <= 0.3
    timed.advance(0.35)
    assert policy.admit().allowed
    assert policy.hold("refused", "f")
    assert policy.admit().reason == HELD
    assert policy.release_hold("g")
    assert policy.admit().allowed


def test_redis_keeps_an_ended_pause_for_status_pages_only(redis_client: redis.Redis[bytes]) -> None:
    backend = RedisBackend(redis_client)
    backend.pause_extend("k", 0.5, "slow")
    ttl_ms = redis_client.pttl(backend.key("pause", "k"))
    assert PAUSE_KEPT_S * 1000 < ttl_ms <= (PAUSE_KEPT_S + 0.5) * 1000 + 1
    backend.hold_set("k", "refused", "f")
    assert redis_client.pttl(backend.key("hold", "k")) == -1  # a hold never expires


# -- concurrent openers -----------------------------------------------------------


def pause_together(policies: list[PausePolicy], seconds: float) -> list[bool]:
    """Every policy pauses at the same moment, each from its own thread."""
    barrier = threading.Barrier(len(policies))
    opened: list[bool | None] = [None] * len(policies)

    def pause(n: int) -> None:
        barrier.wait()
        opened[n] = policies[n].pause(seconds, f"worker-{n}")

    threads = [threading.Thread(target=pause, args=(n,)) for n in range(len(policies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert None not in opened
    return [bool(o) for o in opened]


def test_concurrent_openers_in_memory_exactly_one_opens() -> None:
    clock = ManualClock(NOW)
    backend = MemoryBackend(clock=clock)
    policies = [PausePolicy("api", LIMITS, backend) for _ in range(16)]
    with cpu_hog():
        for _ in range(5):
            assert pause_together(policies, 30.0).count(True) == 1
            clock.advance(30.0)  # the end exactly: the next round opens anew


def test_concurrent_openers_on_redis_exactly_one_opens(
    redis_client: redis.Redis[bytes], redis_url: str
) -> None:
    # Long enough that no opener, however slow to be scheduled, comes after the end.
    limits = PauseLimits(min_pause_s=2.0, jitter_s=0.0)
    # One backend (own connection pool) per opener, as separate processes would have.
    backends = [RedisBackend.from_url(redis_url) for _ in range(12)]
    policies = [PausePolicy("api", limits, backend) for backend in backends]
    watcher = PausePolicy("api", limits, RedisBackend(redis_client))
    try:
        with cpu_hog():
            for _ in range(3):
                opened = pause_together(policies, 0.0)
                assert opened.count(True) == 1
                status = watcher.status()
                assert status.paused
                time.sleep(status.remaining_s + 0.05)
                assert not watcher.status().paused
    finally:
        for backend in backends:
            backend.client.close()


def test_docstring_examples_hold() -> None:
    import doctest

    import enrichment_middleware.policy.pause

    failed, attempted = doctest.testmod(enrichment_middleware.policy.pause, report=False)
    assert attempted > 0 and failed == 0


def test_while_the_opener_reads_how_long_to_wait_the_others_are_refused(timed: Timed) -> None:
    # The protocol: the opener alone asks the upstream how long to wait (here it stops at
    # pause.opened for that long), then pauses again with the answer; meanwhile the others
    # are neither blocked nor told to open, and their jobs are denied.
    limits = PauseLimits(min_pause_s=3.0, jitter_s=0.0)
    opener, *others = (PausePolicy("api", limits, timed.backend) for _ in range(6))
    answers: list[bool] = []

    def open_read_extend() -> None:
        answers.append(opener.pause(0.0, "slow"))
        opener.pause(8.0, "status said 8 s")

    configure("pause.opened=sleep:1.0")
    try:
        with cpu_hog():
            thread = threading.Thread(target=open_read_extend)
            thread.start()
            eventually(lambda: others[0].status().paused, timeout_s=10)
            assert thread.is_alive()  # the opener still reads
            assert [policy.pause(0.0, "slow too") for policy in others] == [False] * len(others)
            assert [policy.admit().reason for policy in others] == [PAUSED] * len(others)
            assert thread.is_alive(), "the others waited for the opener"
            thread.join()
    finally:
        configure("")
    assert answers == [True]
    status = others[0].status()
    assert status.reason == "status said 8 s" and status.remaining_s > 3.0

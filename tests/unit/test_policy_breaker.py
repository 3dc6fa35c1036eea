"""The circuit breaker: every transition of the pure state machine, the policy over a backend, races."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from enrichment_middleware.backends import MemoryBackend
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.breaker import (
    Admission,
    BreakerLimits,
    BreakerPolicy,
    BreakerState,
    BreakerStatus,
    abandon,
    decide,
    record,
)
from enrichment_middleware.policy.clock import ManualClock

CLOSED, OPEN, HALF_OPEN = BreakerStatus.CLOSED, BreakerStatus.OPEN, BreakerStatus.HALF_OPEN
LIMITS = BreakerLimits(failure_threshold=3, cooldown_s=60.0, probe_ttl_s=120.0, jitter_s=5.0)
T = 1_700_000_000.0

Transition = Callable[[BreakerState], tuple[BreakerState, Admission | None]]


def deciding(now: float, holder: str) -> Transition:
    return lambda state: decide(state, now=now, holder=holder, limits=LIMITS)


def recording(generation: int, success: bool, now: float = T) -> Transition:
    return lambda state: (record(state, generation=generation, success=success, now=now, limits=LIMITS), None)


def abandoning(generation: int, holder: str) -> Transition:
    return lambda state: (abandon(state, generation=generation, holder=holder), None)


OPENED = BreakerState(OPEN, failures=3, generation=5, open_until=T + 60)
PROBING = BreakerState(
    HALF_OPEN, failures=3, generation=6, open_until=T + 60, probe_holder="a", probe_expires=T + 180
)

TRANSITIONS = [
    # -- decide --
    pytest.param(
        BreakerState(failures=2, generation=4),
        deciding(T, "a"),
        BreakerState(failures=2, generation=4),
        Admission(True, 4, False, None, CLOSED),
        id="closed admits without change",
    ),
    pytest.param(
        OPENED,
        deciding(T + 59.999, "a"),
        OPENED,
        Admission(False, 5, False, T + 60, OPEN),
        id="open denies before the cooldown ends",
    ),
    pytest.param(
        OPENED,
        deciding(T + 60, "a"),
        BreakerState(HALF_OPEN, 3, 6, T + 60, "a", T + 180),
        Admission(True, 6, True, None, HALF_OPEN),
        id="open turns half-open at the cooldown end, first asker probes",
    ),
    pytest.param(
        OPENED,
        deciding(T + 500, "a"),
        BreakerState(HALF_OPEN, 3, 6, T + 60, "a", T + 620),
        Admission(True, 6, True, None, HALF_OPEN),
        id="open turns half-open long after the cooldown",
    ),
    pytest.param(
        PROBING,
        deciding(T + 100, "b"),
        PROBING,
        Admission(False, 6, False, T + 101, HALF_OPEN),
        id="a live probe claim excludes everyone else, who re-check soon",
    ),
    pytest.param(
        PROBING,
        deciding(T + 179.5, "b"),
        PROBING,
        Admission(False, 6, False, T + 180, HALF_OPEN),
        id="a re-check is never later than the claim's expiry",
    ),
    pytest.param(
        PROBING,
        deciding(T + 100, "a"),
        PROBING,
        Admission(False, 6, False, T + 101, HALF_OPEN),
        id="a live probe claim is not granted twice",
    ),
    pytest.param(
        PROBING,
        deciding(T + 180, "b"),
        BreakerState(HALF_OPEN, 3, 7, T + 60, "b", T + 300),
        Admission(True, 7, True, None, HALF_OPEN),
        id="an expired probe claim is taken over with a new generation",
    ),
    pytest.param(
        BreakerState(HALF_OPEN, 3, 6, T + 60, None, 0.0),
        deciding(T + 100, "b"),
        BreakerState(HALF_OPEN, 3, 7, T + 60, "b", T + 220),
        Admission(True, 7, True, None, HALF_OPEN),
        id="an abandoned probe claim is taken at once",
    ),
    # -- record while closed --
    pytest.param(
        BreakerState(failures=1, generation=4),
        recording(4, success=False),
        BreakerState(failures=2, generation=4),
        None,
        id="closed failure below the threshold counts",
    ),
    pytest.param(
        BreakerState(failures=2, generation=4),
        recording(4, success=False),
        BreakerState(OPEN, failures=3, generation=5, open_until=T + 60),
        None,
        id="closed failure at the threshold opens",
    ),
    pytest.param(
        BreakerState(failures=2, generation=4),
        recording(4, success=True),
        BreakerState(failures=0, generation=4),
        None,
        id="closed success resets the failures",
    ),
    pytest.param(
        BreakerState(generation=4),
        recording(4, success=True),
        BreakerState(generation=4),
        None,
        id="closed success with no failures changes nothing",
    ),
    pytest.param(
        BreakerState(failures=2, generation=4),
        recording(2, success=False),
        BreakerState(failures=2, generation=4),
        None,
        id="closed ignores a stale failure",
    ),
    pytest.param(
        BreakerState(failures=2, generation=4),
        recording(2, success=True),
        BreakerState(failures=2, generation=4),
        None,
        id="closed ignores a stale success",
    ),
    # -- record while open --
    pytest.param(OPENED, recording(4, success=True), OPENED, None, id="open ignores a stale success"),
    pytest.param(OPENED, recording(4, success=False), OPENED, None, id="open ignores a stale failure"),
    pytest.param(OPENED, recording(5, success=True), OPENED, None, id="open ignores any outcome"),
    # -- record while half-open --
    pytest.param(
        PROBING,
        recording(6, success=True, now=T + 100),
        BreakerState(CLOSED, failures=0, generation=7),
        None,
        id="the probe's success closes",
    ),
    pytest.param(
        PROBING,
        recording(6, success=False, now=T + 100),
        BreakerState(OPEN, failures=3, generation=7, open_until=T + 160),
        None,
        id="the probe's failure reopens with a fresh cooldown",
    ),
    pytest.param(PROBING, recording(4, success=True), PROBING, None, id="half-open ignores a stale success"),
    pytest.param(PROBING, recording(5, success=False), PROBING, None, id="half-open ignores a stale failure"),
    # -- abandon --
    pytest.param(
        PROBING,
        abandoning(6, "a"),
        BreakerState(HALF_OPEN, 3, 6, T + 60, None, 0.0),
        None,
        id="the probe holder's abandon releases the claim",
    ),
    pytest.param(PROBING, abandoning(6, "b"), PROBING, None, id="abandon by a non-holder is ignored"),
    pytest.param(PROBING, abandoning(5, "a"), PROBING, None, id="abandon of an older generation is ignored"),
    pytest.param(OPENED, abandoning(5, "a"), OPENED, None, id="abandon while open is ignored"),
    pytest.param(
        BreakerState(failures=1, generation=4),
        abandoning(4, "a"),
        BreakerState(failures=1, generation=4),
        None,
        id="abandon while closed is ignored",
    ),
]


@pytest.mark.parametrize(("before", "transition", "after", "admission"), TRANSITIONS)
def test_transitions(
    before: BreakerState, transition: Transition, after: BreakerState, admission: Admission | None
) -> None:
    state, granted = transition(before)
    assert state == after
    assert granted == admission


@pytest.mark.parametrize("state", [p.values[0] for p in TRANSITIONS] + [p.values[2] for p in TRANSITIONS])
def test_states_survive_a_json_round_trip(state: BreakerState) -> None:
    assert BreakerState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_the_threshold_is_reached_only_by_consecutive_failures() -> None:
    state = BreakerState()
    for success in [False, False, True, False, False]:
        state = record(state, generation=state.generation, success=success, now=T, limits=LIMITS)
    assert state.status is CLOSED
    state = record(state, generation=state.generation, success=False, now=T, limits=LIMITS)
    assert state.status is OPEN


# -- the policy over a backend ------------------------------------------------


class CountingBackend(MemoryBackend):
    """A MemoryBackend that counts state reads and writes, and can slip in a rival write."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        super().__init__(clock=clock or ManualClock(T))
        self.reads = 0
        self.writes = 0
        self.clock_reads = 0
        self.before_next_cas: Callable[[], None] | None = None

    def state_get(self, key: str) -> tuple[int, dict[str, Any] | None]:
        self.reads += 1
        return super().state_get(key)

    def state_get_now(self, key: str) -> tuple[int, dict[str, Any] | None, float]:
        self.reads += 1
        return super().state_get_now(key)

    def now(self) -> float:
        self.clock_reads += 1
        return super().now()

    def state_cas(self, key: str, version: int, value: dict[str, Any]) -> bool:
        self.writes += 1
        rival, self.before_next_cas = self.before_next_cas, None
        if rival is not None:
            rival()
        return super().state_cas(key, version, value)


def breaker(
    backend: MemoryBackend | RedisBackend, seed: int = 0, limits: BreakerLimits = LIMITS
) -> BreakerPolicy:
    return BreakerPolicy("api", limits, backend, rng=random.Random(seed))


def test_the_policy_opens_probes_and_closes_over_a_backend() -> None:
    clock = ManualClock(T)
    policy = breaker(MemoryBackend(clock=clock))
    for _ in range(3):
        policy.record(policy.admit("job"), success=False)
    assert policy.state().status is OPEN
    denied = policy.admit("job")
    assert not denied.allowed
    assert denied.retry_at is not None and T + 60 <= denied.retry_at <= T + 65
    clock.advance(60)
    probe = policy.admit("prober")
    assert probe.allowed and probe.probe
    assert not policy.admit("other").allowed
    policy.record(probe, success=True)
    assert policy.state().status is CLOSED
    assert policy.admit("other").allowed


def test_a_slow_call_from_before_the_circuit_opened_cannot_close_it() -> None:
    policy = breaker(MemoryBackend(clock=ManualClock(T)))
    slow = policy.admit("slow")
    for _ in range(3):
        policy.record(policy.admit("job"), success=False)
    policy.record(slow, success=True)
    assert policy.state().status is OPEN


def test_an_abandoned_probe_goes_to_the_next_job() -> None:
    clock = ManualClock(T)
    policy = breaker(MemoryBackend(clock=clock))
    for _ in range(3):
        policy.record(policy.admit("job"), success=False)
    clock.advance(60)
    probe = policy.admit("deferred")
    policy.abandon(probe, "someone-else")
    assert not policy.admit("next").allowed
    policy.abandon(probe, "deferred")
    next_probe = policy.admit("next")
    assert next_probe.allowed and next_probe.probe
    assert next_probe.generation == probe.generation + 1


def test_a_denied_admission_records_nothing() -> None:
    backend = CountingBackend()
    policy = breaker(backend)
    denied = Admission(False, 0, False, T + 60, OPEN)
    backend.reads = 0
    policy.record(denied, success=False)
    policy.abandon(denied, "job")
    assert backend.reads == 0
    assert policy.state() == BreakerState()


def test_the_hot_path_is_a_single_read() -> None:
    backend = CountingBackend()
    policy = breaker(backend)
    admission = policy.admit("job")
    assert (backend.reads, backend.writes, backend.clock_reads) == (1, 0, 0)
    policy.record(admission, success=True)
    assert (backend.reads, backend.writes, backend.clock_reads) == (2, 0, 0)


class CountingRedis(redis.Redis):  # type: ignore[type-arg]
    """A Redis client that counts the commands it sends (one command, one round trip here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        return super().execute_command(*args, **options)


@pytest.mark.parametrize(
    ("failures_before", "success", "expected"),
    [
        # closed, nothing to change: one script for the admission, one for the outcome
        (0, True, ["EVALSHA", "EVALSHA"]),
        # a success after a failure resets the count: the outcome adds its compare-and-set
        (1, True, ["EVALSHA", "EVALSHA", "EVALSHA"]),
        # a failure below the threshold: the same
        (0, False, ["EVALSHA", "EVALSHA", "EVALSHA"]),
    ],
)
def test_a_closed_breaker_costs_one_round_trip_per_step_on_redis(
    redis_url: str, failures_before: int, success: bool, expected: list[str]
) -> None:
    client = CountingRedis.from_url(redis_url)
    client.flushdb()
    try:
        policy = breaker(RedisBackend(client))
        for _ in range(failures_before):
            policy.record(policy.admit("earlier"), success=False)
        policy.record(policy.admit("warm"), success=True)  # loads the scripts
        for _ in range(failures_before):
            policy.record(policy.admit("earlier"), success=False)
        client.commands.clear()
        policy.record(policy.admit("job"), success=success)
        # No separate TIME, no HMGET: the state and the server's clock come in one script.
        assert client.commands == expected
    finally:
        client.flushdb()
        client.close()


def test_state_get_now_reads_the_state_and_the_server_clock(redis_client: redis.Redis[bytes]) -> None:
    backend = RedisBackend(redis_client)
    version, value, now = backend.state_get_now("api")
    assert (version, value) == (0, None)
    assert abs(now - backend.now()) < 5
    assert backend.state_cas("api", 0, {"status": "open"})
    version, value, _ = backend.state_get_now("api")
    assert (version, value) == (1, {"status": "open"})
    assert (version, value) == backend.state_get("api")


@pytest.mark.parametrize("seed", range(10))
def test_retries_while_open_are_jittered_within_bounds(seed: int) -> None:
    policy = breaker(MemoryBackend(clock=ManualClock(T)), seed=seed)
    for _ in range(3):
        policy.record(policy.admit("job"), success=False)
    retry_at = policy.admit("job").retry_at
    assert retry_at is not None
    assert T + 60 <= retry_at <= T + 65


def test_a_lost_compare_and_set_is_retried_on_fresh_state() -> None:
    backend = CountingBackend()
    worker_a = breaker(backend)
    worker_b = breaker(backend)
    admission_a = worker_a.admit("a")
    admission_b = worker_b.admit("b")
    # Worker B's failure lands between worker A's read and its write.
    backend.before_next_cas = lambda: worker_b.record(admission_b, success=False)
    worker_a.record(admission_a, success=False)
    assert worker_a.state().failures == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"failure_threshold": 0}, "failure_threshold", id="zero threshold"),
        pytest.param({"cooldown_s": -1.0}, "cooldown_s", id="negative cooldown"),
        pytest.param({"probe_ttl_s": 0.0}, "probe_ttl_s", id="zero probe ttl"),
        pytest.param({"probe_recheck_s": 0.0}, "probe_recheck_s", id="zero probe re-check"),
    ],
)
def test_limits_refuse_nonsense(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BreakerLimits(**fields)  # type: ignore[arg-type]


def admit_together(workers: list[BreakerPolicy]) -> list[Admission]:
    """Every worker asks for admission at the same moment, each from its own thread."""
    barrier = threading.Barrier(len(workers))
    admissions: list[Admission | None] = [None] * len(workers)

    def admit(n: int) -> None:
        barrier.wait()
        admissions[n] = workers[n].admit(f"worker-{n}")

    threads = [threading.Thread(target=admit, args=(n,)) for n in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [admission for admission in admissions if admission is not None]


def test_racing_workers_get_exactly_one_probe(redis_client: redis.Redis[bytes], redis_url: str) -> None:
    # The cooldown runs on the Redis server's clock: real time, so a short one.
    limits = BreakerLimits(failure_threshold=3, cooldown_s=0.2, probe_ttl_s=120.0, jitter_s=0.0)
    policy = breaker(RedisBackend(redis_client), limits=limits)
    for _ in range(3):
        policy.record(policy.admit("job"), success=False)
    # One backend (own connection pool) per worker, as separate processes would have.
    backends = [RedisBackend.from_url(redis_url) for _ in range(8)]
    workers = [breaker(backend, seed=n, limits=limits) for n, backend in enumerate(backends)]
    for _ in range(5):
        assert not policy.admit("early").allowed
        time.sleep(0.25)
        assert policy.state().status is OPEN
        admissions = admit_together(workers)
        assert len(admissions) == len(workers)
        probes = [a for a in admissions if a.allowed]
        assert len(probes) == 1
        assert probes[0].probe
        policy.record(probes[0], success=False)  # the probe fails: open again for the next round
    for backend in backends:
        backend.client.close()

"""QuotaPolicy: per-window admission, UTC-day rollover, byte accounting, exactness under races."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

import pytest
import redis

from enrichment_middleware.backends import Backend, MemoryBackend
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.clock import ManualClock
from enrichment_middleware.policy.quota import QuotaLimits, QuotaPolicy, window_bounds

MIDNIGHT = datetime(2024, 3, 1, tzinfo=UTC).timestamp()  # 2024-03-01T00:00:00Z
DAY = 86_400


def quota(
    limits: QuotaLimits, *, clock: ManualClock, backend: Backend | None = None, seed: int = 0
) -> QuotaPolicy:
    return QuotaPolicy("api", limits, backend or MemoryBackend(clock=clock), rng=random.Random(seed))


@pytest.mark.parametrize(
    ("now", "window_s", "start", "end"),
    [
        pytest.param(MIDNIGHT, DAY, MIDNIGHT, MIDNIGHT + DAY, id="exactly midnight starts the day"),
        pytest.param(MIDNIGHT - 0.001, DAY, MIDNIGHT - DAY, MIDNIGHT, id="23:59:59.999 is the day before"),
        pytest.param(MIDNIGHT + 43_200.5, DAY, MIDNIGHT, MIDNIGHT + DAY, id="noon"),
        pytest.param(MIDNIGHT + 3599.999, 3600, MIDNIGHT, MIDNIGHT + 3600, id="hourly window"),
        pytest.param(MIDNIGHT + 3600, 3600, MIDNIGHT + 3600, MIDNIGHT + 7200, id="next hour"),
        pytest.param(0.0, 60, 0.0, 60.0, id="the epoch"),
    ],
)
def test_windows_are_aligned_to_the_epoch(now: float, window_s: int, start: float, end: float) -> None:
    assert window_bounds(now, window_s) == (start, end)


def test_window_bounds_refuses_a_non_positive_window() -> None:
    with pytest.raises(ValueError, match="positive"):
        window_bounds(MIDNIGHT, 0)


def test_admits_up_to_the_limit_then_denies() -> None:
    clock = ManualClock(MIDNIGHT + 100)
    policy = quota(QuotaLimits(requests=3), clock=clock)
    used = [policy.admit() for _ in range(3)]
    assert [d.allowed for d in used] == [True, True, True]
    assert [d.requests_used for d in used] == [1, 2, 3]
    assert all(d.retry_at is None and d.window_start == MIDNIGHT for d in used)
    denied = policy.admit()
    assert denied.allowed is False
    assert denied.requests_used == 3  # a denial is not counted
    assert denied.retry_at is not None
    assert policy.usage().requests_used == 3


def test_the_quota_rolls_over_exactly_at_utc_midnight() -> None:
    clock = ManualClock(MIDNIGHT - 0.001)
    policy = quota(QuotaLimits(requests=2), clock=clock)
    assert policy.admit().allowed
    assert policy.admit().allowed
    denied = policy.admit()
    assert not denied.allowed
    assert denied.window_start == MIDNIGHT - DAY
    clock.set(MIDNIGHT)
    fresh = policy.admit()
    assert fresh.allowed
    assert fresh.window_start == MIDNIGHT
    assert fresh.requests_used == 1


@pytest.mark.parametrize("seed", range(20))
def test_a_denied_job_retries_at_the_next_window_start_plus_jitter(seed: int) -> None:
    clock = ManualClock(MIDNIGHT + 5000)
    policy = quota(QuotaLimits(requests=0, jitter_s=60.0), clock=clock, seed=seed)
    retry_at = policy.admit().retry_at
    assert retry_at is not None
    assert MIDNIGHT + DAY <= retry_at <= MIDNIGHT + DAY + 60.0


def test_jitter_spreads_the_retries() -> None:
    clock = ManualClock(MIDNIGHT + 5000)
    policy = quota(QuotaLimits(requests=0, jitter_s=60.0), clock=clock)
    retries = {policy.admit().retry_at for _ in range(50)}
    assert len(retries) == 50


def test_without_jitter_a_denied_job_retries_exactly_at_the_window_start() -> None:
    clock = ManualClock(MIDNIGHT + 5000)
    policy = quota(QuotaLimits(requests=0, jitter_s=0.0), clock=clock)
    assert policy.admit().retry_at == MIDNIGHT + DAY


def test_admission_is_refused_once_the_bytes_used_reach_the_limit() -> None:
    clock = ManualClock(MIDNIGHT + 100)
    policy = quota(QuotaLimits(requests=100, bytes=1000), clock=clock)
    decision = policy.admit()
    policy.record_bytes(999, decision.window_start)
    decision = policy.admit()
    assert decision.allowed
    assert decision.bytes_used == 999
    policy.record_bytes(1, decision.window_start)
    denied = policy.admit()
    assert not denied.allowed
    assert denied.bytes_used == 1000
    assert denied.retry_at is not None and denied.retry_at >= MIDNIGHT + DAY
    assert policy.usage().requests_used == 2


def test_bytes_are_charged_to_the_window_of_the_admission_even_after_rollover() -> None:
    clock = ManualClock(MIDNIGHT - 0.001)
    policy = quota(QuotaLimits(requests=100, bytes=1000), clock=clock)
    decision = policy.admit()
    clock.set(MIDNIGHT + 2)  # the response arrived after midnight
    policy.record_bytes(700, decision.window_start)
    assert policy.usage().bytes_used == 0
    clock.set(MIDNIGHT - 0.001)
    assert policy.usage().bytes_used == 700


def test_recording_zero_bytes_is_a_no_op_and_negative_bytes_are_refused() -> None:
    policy = quota(QuotaLimits(requests=1, bytes=10), clock=ManualClock(MIDNIGHT))
    policy.record_bytes(0, MIDNIGHT)
    assert policy.usage().bytes_used == 0
    with pytest.raises(ValueError, match="0 or more"):
        policy.record_bytes(-5, MIDNIGHT)


def test_an_unlimited_quota_admits_everything_and_still_counts() -> None:
    policy = quota(QuotaLimits(requests=-1, bytes=-1), clock=ManualClock(MIDNIGHT))
    assert all(policy.admit().allowed for _ in range(500))
    policy.record_bytes(10**12, MIDNIGHT)
    assert policy.admit().allowed
    usage = policy.usage()
    assert usage.requests_used == 501
    assert usage.requests_left is None
    assert usage.bytes_left is None


def test_usage_reports_the_current_window() -> None:
    clock = ManualClock(MIDNIGHT + 10)
    policy = quota(QuotaLimits(requests=10, bytes=1000), clock=clock)
    for _ in range(3):
        policy.admit()
    policy.record_bytes(1200, MIDNIGHT)  # a big response may overshoot the byte limit
    usage = policy.usage()
    assert (usage.name, usage.window_start, usage.window_end) == ("api", MIDNIGHT, MIDNIGHT + DAY)
    assert (usage.requests_used, usage.requests_limit, usage.requests_left) == (3, 10, 7)
    assert (usage.bytes_used, usage.bytes_limit, usage.bytes_left) == (1200, 1000, 0)


def test_policies_of_the_same_name_share_one_quota() -> None:
    clock = ManualClock(MIDNIGHT)
    backend = MemoryBackend(clock=clock)
    worker_a = quota(QuotaLimits(requests=2), clock=clock, backend=backend)
    worker_b = quota(QuotaLimits(requests=2), clock=clock, backend=backend)
    other = QuotaPolicy("other-api", QuotaLimits(requests=2), backend)
    assert worker_a.admit().allowed
    assert worker_b.admit().allowed
    assert not worker_a.admit().allowed
    assert other.admit().allowed


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"window_s": 0}, "window_s", id="zero window"),
        pytest.param({"jitter_s": -1.0}, "jitter_s", id="negative jitter"),
    ],
)
def test_limits_refuse_nonsense(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuotaLimits(requests=1, **fields)  # type: ignore[arg-type]


def test_no_request_over_the_limit_is_admitted_however_many_threads_race(
    redis_client: redis.Redis[bytes],
) -> None:
    clock = ManualClock(MIDNIGHT + 100)
    policy = quota(QuotaLimits(requests=100), clock=clock, backend=RedisBackend(redis_client))
    barrier = threading.Barrier(8)
    allowed = [0] * 8

    def hammer(worker: int) -> None:
        barrier.wait()
        for _ in range(40):
            allowed[worker] += policy.admit().allowed

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 100
    assert policy.usage().requests_used == 100


def test_a_refund_gives_one_request_back_and_never_goes_below_zero() -> None:
    policy = quota(QuotaLimits(requests=1), clock=ManualClock(MIDNIGHT + 10))
    decision = policy.admit()
    assert not policy.admit().allowed
    policy.refund(decision.window_start)
    assert policy.usage().requests_used == 0
    policy.refund(decision.window_start)  # a second refund for one admission
    assert policy.usage().requests_used == 0
    assert policy.admit().allowed
    assert not policy.admit().allowed


def test_a_refund_after_the_counters_vanished_admits_no_extra_call(redis_client: redis.Redis[bytes]) -> None:
    """Redis restarted without persistence between an admission and its refund."""
    policy = quota(QuotaLimits(requests=1), clock=ManualClock(), backend=RedisBackend(redis_client))
    decision = policy.admit()
    assert decision.allowed
    redis_client.flushdb()  # what a restart without persistence leaves
    policy.refund(decision.window_start)
    admitted = [policy.admit().allowed for _ in range(3)]
    assert admitted == [True, False, False]
    assert policy.usage().requests_used == 1


def test_the_window_is_the_backends_not_the_callers(redis_client: redis.Redis[bytes]) -> None:
    """On Redis the server's clock picks the window; the decision names it."""
    backend = RedisBackend(redis_client)
    policy = quota(QuotaLimits(requests=5, window_s=60), clock=ManualClock(0.0), backend=backend)
    decision = policy.admit()
    start, _ = window_bounds(backend.now(), 60)
    assert decision.window_start in (start, start - 60)  # a minute may have turned meanwhile
    assert policy.usage().window_start in (decision.window_start, decision.window_start + 60)


# -- the third budget: a cost known only after the call -------------------------


@pytest.fixture(params=["memory", "redis"])
def cost_quota(request: pytest.FixtureRequest) -> QuotaPolicy:
    """A quota of 10 requests, 10^6 bytes and 3,000 units of cost a day (prior 1,000), on either backend."""
    limits = QuotaLimits(requests=10, bytes=10**6, cost=3000, cost_prior=1000)
    if request.param == "memory":
        return quota(limits, clock=ManualClock(MIDNIGHT + 10))
    client = request.getfixturevalue("redis_client")
    client.flushdb()
    return QuotaPolicy("api", limits, RedisBackend(client))


@pytest.mark.parametrize(
    ("costs", "admitted"),
    [
        pytest.param([], True, id="no call yet: the prior of 1000 fits in 3000"),
        pytest.param([1000, 1000], True, id="mean 1000, 1000 left"),
        pytest.param([1000, 1100], False, id="mean 1050, 900 left"),
        pytest.param([100, 100, 100], True, id="cheap calls: mean 100, 2700 left"),
        pytest.param([2999], False, id="one call of 2999: 1 left, mean 2999"),
        pytest.param([3500], False, id="overshot by a call in flight"),
    ],
)
def test_the_cost_budget_admits_while_what_is_left_covers_the_mean_cost_per_call(
    cost_quota: QuotaPolicy, costs: list[int], admitted: bool
) -> None:
    for cost in costs:
        decision = cost_quota.admit()
        assert decision.allowed
        cost_quota.record_cost(cost, decision.window_start)
    decision = cost_quota.admit()
    assert decision.allowed is admitted
    assert decision.cost_used == sum(costs)
    assert (decision.retry_at is None) is admitted
    usage = cost_quota.usage()
    assert usage.requests_used == len(costs) + admitted
    assert (usage.cost_used, usage.cost_limit, usage.cost_left) == (
        sum(costs),
        3000,
        max(0, 3000 - sum(costs)),
    )


@pytest.mark.parametrize(
    ("calls", "cost", "nbytes", "left"),
    [
        pytest.param(0, 0, 0, 3, id="the prior: 3000 / 1000"),
        pytest.param(2, 200, 0, 8, id="requests bind: 8 left"),
        pytest.param(2, 1000, 0, 4, id="cost binds: 2000 left at 500 a call"),
        pytest.param(1, 10, 500_000, 1, id="bytes bind: 500,000 left at 500,000 a call"),
    ],
)
def test_calls_left_is_the_smallest_of_what_each_budget_covers_at_its_mean(
    cost_quota: QuotaPolicy, calls: int, cost: int, nbytes: int, left: int
) -> None:
    for _ in range(calls):
        decision = cost_quota.admit()
    if calls:
        cost_quota.record_cost(cost, decision.window_start)
        cost_quota.record_bytes(nbytes, decision.window_start)
    usage = cost_quota.usage()
    assert usage.calls_left == left
    assert usage.cost_per_request == (cost / calls if calls else 1000)


def test_the_cost_prior_must_be_a_positive_guess() -> None:
    with pytest.raises(ValueError, match="cost_prior"):
        QuotaLimits(requests=1, cost=100, cost_prior=0)

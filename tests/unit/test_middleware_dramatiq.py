"""The middlewares on a real Dramatiq worker, with a throwaway actor: nothing here knows Overpass.

Each test builds a StubBroker with our Retries, semaphore, breaker and quota
on it, declares an actor that opts in through actor options, and runs it on
a real in-process Worker.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit
from dramatiq.middleware import Retries as StockRetries

from enrichment_middleware.backends.base import Backend, BackendUnavailable
from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.breaker import CircuitBreaker, Verdict
from enrichment_middleware.deferral import Defer
from enrichment_middleware.failpoints import hooked
from enrichment_middleware.installation import install
from enrichment_middleware.order import MiddlewareOrderError
from enrichment_middleware.pause import Pause, PauseUpstream
from enrichment_middleware.policy.breaker import BreakerLimits, BreakerStatus
from enrichment_middleware.policy.pause import PauseLimits
from enrichment_middleware.policy.quota import QuotaLimits
from enrichment_middleware.policy.semaphore import SemaphoreLimits
from enrichment_middleware.quota import Quota
from enrichment_middleware.retries import DEFERRALS, Retries
from enrichment_middleware.semaphore import ConcurrencySemaphore, release_permit_early
from enrichment_middleware.usage import charge_bytes, charge_cost, report_no_call


class UpstreamDown(Exception):
    """What the throwaway actor raises to stand for an upstream failure."""


def verdict(exception: BaseException | None) -> Verdict:
    if exception is None or isinstance(exception, Defer):
        return Verdict.SUCCESS
    return Verdict.FAILURE if isinstance(exception, UpstreamDown) else Verdict.IGNORE


@dataclass
class Rig:
    broker: StubBroker
    backend: Backend
    quota: Quota
    semaphore: ConcurrencySemaphore
    breaker: CircuitBreaker
    retries: Retries
    calls: list[tuple[str, float]] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, threads: int = 4, timeout_s: float = 10) -> None:
        worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=50)
        worker.start()
        try:
            self.broker.join("default", fail_fast=False, timeout=int(timeout_s * 1000))
            worker.join()
        finally:
            worker.stop()

    def run_for(self, seconds: float, threads: int = 1) -> None:
        """Run a worker for ``seconds``, for jobs that are meant not to finish (deferred again and again)."""
        worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=50)
        worker.start()
        time.sleep(seconds)
        worker.stop()

    def call(self, name: str, duration_s: float = 0.0) -> None:
        with self.lock:
            self.calls.append((name, time.time()))
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        time.sleep(duration_s)
        with self.lock:
            self.in_flight -= 1


def make_rig(
    backend: Backend,
    *,
    requests: int = -1,
    bytes_: int = -1,
    cost: int = -1,
    window_s: int = 3600,
    permits: int = 10,
    wait_s: float = 0.2,
    threshold: int = 3,
    cooldown_s: float = 0.3,
    park_after_s: float = 30.0,
    breaker_first: bool = False,
) -> Rig:
    broker = StubBroker()
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, StockRetries)]
    retries = Retries(
        backend=backend,
        max_retries=2,
        min_backoff=10,
        max_backoff=50,
        park_after_s=park_after_s,
        poll_interval_s=0.05,
    )
    semaphore = ConcurrencySemaphore(
        backend,
        {
            "up": SemaphoreLimits(
                permits=permits, lease_s=5, wait_s=wait_s, retry_min_s=0.01, retry_max_s=0.05
            )
        },
    )
    breaker = CircuitBreaker(
        backend,
        {
            "up": BreakerLimits(
                failure_threshold=threshold, cooldown_s=cooldown_s, probe_ttl_s=5, jitter_s=0.01
            )
        },
        verdict=verdict,
    )
    quota = Quota(
        backend,
        {"up": QuotaLimits(requests=requests, bytes=bytes_, window_s=window_s, jitter_s=0.05, cost=cost)},
    )
    # By hand, as an app without install() would: the product's order, or (breaker_first) one
    # a worker refuses to boot with.
    order = (breaker, quota, semaphore) if breaker_first else (semaphore, breaker, quota)
    for middleware in (retries, *order):
        broker.add_middleware(middleware)
    return Rig(broker, backend, quota, semaphore, breaker, retries)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    from enrichment_middleware.backends.redis import RedisBackend

    request.getfixturevalue("redis_client")
    yield RedisBackend.from_url(request.getfixturevalue("redis_url"), namespace="mwtest")


def test_an_actor_without_options_is_not_limited(backend: Backend) -> None:
    rig = make_rig(backend, requests=0, permits=1)

    @dramatiq.actor(broker=rig.broker)
    def free() -> None:
        rig.call("free")

    for _ in range(3):
        free.send()
    rig.run()
    assert len(rig.calls) == 3


def test_quota_admits_exactly_the_limit_then_defers_to_the_next_window(backend: Backend) -> None:
    rig = make_rig(backend, requests=3, window_s=1)

    @dramatiq.actor(broker=rig.broker, quota="up")
    def limited(i: int) -> None:
        rig.call(f"job{i}")

    # Start early in a one-second window, so the five sends all land in it.
    time.sleep(1 - time.time() % 1 + 0.01)
    first_window_end = int(time.time()) + 1
    for i in range(5):
        limited.send(i)
    rig.run(threads=2)
    assert sorted(name for name, _ in rig.calls) == [f"job{i}" for i in range(5)]
    early = [t for _, t in rig.calls if t < first_window_end]
    assert len(early) == 3


def test_a_deferral_is_not_a_retry(backend: Backend) -> None:
    rig = make_rig(backend, requests=1, window_s=1)
    seen: list[dict[str, Any]] = []

    @dramatiq.actor(broker=rig.broker, quota="up", max_retries=0)
    def limited(i: int) -> None:
        seen.append(dict(dramatiq.middleware.CurrentMessage.get_current_message().options))
        rig.call("x")

    rig.broker.add_middleware(dramatiq.middleware.CurrentMessage())
    limited.send(1)
    limited.send(2)
    rig.run(threads=1)
    assert len(rig.calls) == 2
    deferred = [options for options in seen if options.get(DEFERRALS)]
    assert deferred and deferred[0].get("retries", 0) == 0
    assert not rig.broker.dead_letters


@pytest.mark.parametrize("unit", ["bytes", "cost"])
def test_response_bytes_and_cost_are_charged_and_stop_admission(backend: Backend, unit: str) -> None:
    rig = make_rig(backend, **({"bytes_": 1000} if unit == "bytes" else {"cost": 1200}), window_s=3600)  # type: ignore[arg-type]
    charge = charge_bytes if unit == "bytes" else charge_cost
    used = (
        (lambda: rig.quota.policies["up"].usage().bytes_used)
        if unit == "bytes"
        else (lambda: rig.quota.policies["up"].usage().cost_used)
    )

    @dramatiq.actor(broker=rig.broker, quota="up", max_retries=0)
    def big() -> None:
        rig.call("big")
        charge(600)

    for _ in range(3):
        big.send()
    worker = dramatiq.Worker(rig.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while used() < 1200 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        worker.stop()
    # Two calls spend 1200; the third is refused (bytes: used >= limit;
    # cost: the mean per call, 600, is more than the 0 left).
    assert len(rig.calls) == 2
    assert used() == 1200


def test_semaphore_caps_calls_in_flight_and_every_job_runs(backend: Backend) -> None:
    rig = make_rig(backend, permits=2, wait_s=0.05)

    @dramatiq.actor(broker=rig.broker, semaphore="up")
    def slow(i: int) -> None:
        rig.call(f"job{i}", 0.05)

    for i in range(12):
        slow.send(i)
    rig.run(threads=6)
    assert len(rig.calls) == 12
    assert rig.peak == 2
    assert rig.semaphore.policies["up"].in_use() == 0


def test_a_request_is_refunded_when_no_permit_comes_free(backend: Backend) -> None:
    rig = make_rig(backend, requests=5, permits=1, wait_s=0.0)
    semaphore = rig.semaphore.policies["up"]
    blocker = semaphore.try_acquire("someone else")

    @dramatiq.actor(broker=rig.broker, quota="up", semaphore="up")
    def limited() -> None:
        rig.call("limited")

    limited.send()
    worker = dramatiq.Worker(rig.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    time.sleep(0.3)
    # Denied for want of a permit, again and again: no call, and the requests
    # do not pile up (one may be between its admission and its refund).
    assert rig.calls == []
    assert rig.quota.policies["up"].usage().requests_used <= 1
    assert blocker is not None
    semaphore.release(blocker)
    deadline = time.monotonic() + 3
    while not rig.calls and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.stop()
    assert len(rig.calls) == 1
    assert rig.quota.policies["up"].usage().requests_used == 1


def test_an_actor_can_give_its_permit_back_before_it_returns(backend: Backend) -> None:
    rig = make_rig(backend, permits=1)
    in_use_after: list[int] = []

    @dramatiq.actor(broker=rig.broker, semaphore="up")
    def early() -> None:
        rig.call("early")
        release_permit_early()
        in_use_after.append(rig.semaphore.policies["up"].in_use())
        release_permit_early()  # twice is harmless

    early.send()
    rig.run(threads=1)
    assert in_use_after == [0]
    assert rig.semaphore.policies["up"].in_use() == 0


def test_a_permit_is_released_when_the_actor_fails(backend: Backend) -> None:
    rig = make_rig(backend, permits=1)

    @dramatiq.actor(broker=rig.broker, semaphore="up", max_retries=0)
    def broken() -> None:
        rig.call("broken")
        raise RuntimeError("boom")

    broken.send()
    rig.run(threads=1)
    assert rig.semaphore.policies["up"].in_use() == 0
    assert len(rig.broker.dead_letters) == 1


def test_breaker_opens_then_one_probe_closes_it(backend: Backend) -> None:
    rig = make_rig(backend, threshold=2, cooldown_s=0.3)
    healthy = threading.Event()

    @dramatiq.actor(broker=rig.broker, breaker="up", max_retries=0)
    def flaky(i: int) -> None:
        rig.call(f"job{i}")
        if not healthy.is_set():
            raise UpstreamDown("503")

    flaky.send(0)
    flaky.send(1)
    rig.run(threads=1)
    state = rig.breaker.policies["up"].state()
    assert state.status is BreakerStatus.OPEN
    healthy.set()
    for i in range(2, 6):
        flaky.send(i)
    rig.run(threads=4)
    later = [t for name, t in rig.calls if name not in {"job0", "job1"}]
    # No call while open; the four jobs all ran after the cooldown.
    assert len(later) == 4 and min(later) >= state.open_until
    assert rig.breaker.policies["up"].state().status is BreakerStatus.CLOSED


def test_a_job_the_quota_denies_gives_the_probe_claim_back(backend: Backend) -> None:
    # The product's order: the breaker admits the probe, then the quota denies.
    rig = make_rig(backend, requests=0, threshold=1, cooldown_s=0.01)

    @dramatiq.actor(broker=rig.broker, breaker="up", quota="up", max_retries=0)
    def never() -> None:
        rig.call("never")

    policy = rig.breaker.policies["up"]
    policy.record(policy.admit("seed"), success=False)
    time.sleep(0.02)
    never.send()
    rig.run_for(0.3)
    assert rig.calls == []
    state = policy.state()
    # No call was made: the claim is free again for the next job.
    assert state.status is BreakerStatus.HALF_OPEN and state.probe_holder is None and state.probe_expires == 0


def test_gates_put_on_in_another_order_stop_the_worker_at_boot_saying_why(backend: Backend) -> None:
    """The order is code: the breaker before the permit would decide before a wait, stale after it."""
    rig = make_rig(backend, breaker_first=True)
    worker = dramatiq.Worker(rig.broker, worker_threads=1)
    with pytest.raises(MiddlewareOrderError, match=r"ConcurrencySemaphore \(semaphore=\) stands after Quota"):
        worker.start()
    worker.stop()


def test_transient_failures_are_retried_with_capped_backoff_then_dead_lettered(backend: Backend) -> None:
    rig = make_rig(backend)

    @dramatiq.actor(broker=rig.broker, max_retries=3, min_backoff=20, max_backoff=40, park_retries=True)
    def failing() -> None:
        rig.call("failing")
        raise UpstreamDown("always")

    failing.send()
    rig.run(threads=1)
    assert len(rig.calls) == 4
    gaps = [b[1] - a[1] for a, b in zip(rig.calls, rig.calls[1:], strict=False)]
    assert all(gap < 0.04 + 0.1 for gap in gaps), gaps
    (dead,) = rig.broker.dead_letters
    # As in Dramatiq: "retries" counts every failed attempt, the last one too.
    assert dead.options["retries"] == 4
    assert "UpstreamDown: always" in dead.options["last_error"]


def test_throws_are_never_retried(backend: Backend) -> None:
    rig = make_rig(backend)

    @dramatiq.actor(broker=rig.broker, throws=(ValueError,), park_retries=True)
    def invalid() -> None:
        rig.call("invalid")
        raise ValueError("bad input")

    invalid.send()
    rig.run(threads=1)
    assert len(rig.calls) == 1
    assert len(rig.broker.dead_letters) == 1


def test_long_waits_are_parked_in_the_backend_and_come_back(backend: Backend) -> None:
    rig = make_rig(backend, park_after_s=0.1)
    attempts: list[float] = []

    @dramatiq.actor(broker=rig.broker)
    def patient() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise Defer(0.4, "later")

    patient.send()
    worker = dramatiq.Worker(rig.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while len(attempts) < 2 and time.monotonic() < deadline:
            if len(attempts) == 1:
                # While it waits it is in the backend, not in Dramatiq's delay queue.
                assert rig.retries.parking is not None
                assert rig.retries.parking.count() <= 1
            time.sleep(0.02)
    finally:
        worker.stop()
    assert len(attempts) == 2
    assert 0.35 <= attempts[1] - attempts[0] <= 2.0
    assert rig.retries.parking is not None and rig.retries.parking.count() == 0


def test_a_deferral_refreshes_the_age_limit(backend: Backend) -> None:
    rig = make_rig(backend)
    rig.broker.middleware[:] = [m for m in rig.broker.middleware if not isinstance(m, AgeLimit)]
    rig.broker.add_middleware(AgeLimit(), before=Retries)
    runs: list[int] = []

    @dramatiq.actor(broker=rig.broker, max_age=300)
    def aging() -> None:
        runs.append(1)
        if len(runs) == 1:
            time.sleep(0.35)
            raise Defer(0.0, "again")

    aging.send()
    rig.run(threads=1)
    assert len(runs) == 2


def test_an_unreachable_backend_stops_calls_and_keeps_the_job() -> None:
    import socket

    from enrichment_middleware.backends.redis import RedisBackend

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rig = make_rig(RedisBackend.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.2))
    rig.quota.unavailable_retry_s = 0.05

    @dramatiq.actor(broker=rig.broker, quota="up")
    def guarded() -> None:
        rig.call("guarded")

    guarded.send()
    rig.run_for(0.5)
    assert rig.calls == []
    assert not rig.broker.dead_letters


def test_an_unknown_policy_name_is_refused_when_the_actor_is_declared() -> None:
    rig = make_rig(MemoryBackend())
    with pytest.raises(ValueError, match="no such policy"):

        @dramatiq.actor(broker=rig.broker, quota="nope")
        def misconfigured() -> None:
            pass


# -- the admission in one step (docs/architecture.md, "One step when nothing waits") -----------


def _one_step_rig(backend: Backend) -> tuple[Rig, dramatiq.Actor[Any, None]]:
    rig = make_rig(backend, requests=10, permits=1, wait_s=0.05)
    for gate in (rig.semaphore, rig.breaker, rig.quota):
        gate.unavailable_retry_s = 0.05  # a deferral after a failure comes back at once

    @dramatiq.actor(broker=rig.broker, semaphore="up", breaker="up", quota="up")
    def limited() -> None:
        rig.call("limited")

    return rig, limited


def test_a_failure_after_the_one_step_admission_defers_the_job_and_gives_everything_back(
    backend: Backend,
) -> None:
    rig, limited = _one_step_rig(backend)
    failed: list[int] = []

    def fail_once() -> None:
        if not failed:
            failed.append(rig.semaphore.policies["up"].in_use())
            raise RuntimeError("stopped between the admission and the gates taking their parts")

    with hooked("admission.together", fail_once):
        limited.send()
        rig.run(threads=1)
    # The failure came after the permit and the request were taken in one step, and both came back.
    assert failed == [1] and len(rig.calls) == 1
    assert rig.quota.policies["up"].usage().requests_used == 1
    assert rig.semaphore.policies["up"].in_use() == 0


def test_a_job_paused_after_the_one_step_admission_holds_the_permit_and_the_request(backend: Backend) -> None:
    rig, limited = _one_step_rig(backend)
    paused, go = threading.Event(), threading.Event()
    seen: list[tuple[int, int]] = []

    def pause_the_first() -> None:
        if not paused.is_set():
            paused.set()
            assert go.wait(10)

    with hooked("admission.together", pause_the_first):
        limited.send()
        limited.send()
        running = threading.Thread(target=rig.run, kwargs={"threads": 2})
        running.start()
        assert paused.wait(10)
        time.sleep(0.3)  # the second job tries meanwhile: no permit is free
        seen.append((rig.semaphore.policies["up"].in_use(), rig.quota.policies["up"].usage().requests_used))
        go.set()
        running.join(30)
    # Both were taken at once, before the pause: nothing between them for the second job to slip into.
    assert seen == [(1, 1)]
    assert len(rig.calls) == 2 and rig.peak == 1
    assert rig.quota.policies["up"].usage().requests_used == 2


# -- the end of a call, in one step (admission.py) --------------------------------------------


def test_a_success_given_back_early_is_recorded_and_a_later_error_says_nothing(backend: Backend) -> None:
    rig = make_rig(backend, threshold=1, permits=1)

    @dramatiq.actor(broker=rig.broker, quota="up", semaphore="up", breaker="up", max_retries=0)
    def fetch() -> None:
        rig.call("fetch")
        charge_bytes(600)
        release_permit_early(succeeded=True)
        # Handing the answer on fails: an error of the actor's, after the call's success was said.
        raise UpstreamDown("the hand-on failed")

    fetch.send()
    rig.run(threads=1)
    usage = rig.quota.policies["up"].usage()
    state = rig.breaker.policies["up"].state()
    assert (usage.requests_used, usage.bytes_used) == (1, 600)
    assert (state.status, state.failures) == (BreakerStatus.CLOSED, 0)
    assert rig.semaphore.policies["up"].in_use() == 0


@pytest.mark.parametrize("early", [True, False], ids=["given-back-early", "at-the-actor-end"])
def test_a_success_resets_the_failures_another_worker_counted(backend: Backend, early: bool) -> None:
    """The batch's condition (a success writes nothing) fails: every gate ends alone, and the success counts."""
    rig = make_rig(backend, threshold=3, permits=1)
    breaker = rig.breaker.policies["up"]
    breaker.record(breaker.admit("another-worker"), success=False)
    assert breaker.state().failures == 1

    @dramatiq.actor(broker=rig.broker, quota="up", semaphore="up", breaker="up", max_retries=0)
    def fetch() -> None:
        rig.call("fetch")
        charge_bytes(300)
        if early:
            release_permit_early(succeeded=True)

    fetch.send()
    rig.run(threads=1)
    assert breaker.state().failures == 0
    assert rig.quota.policies["up"].usage().bytes_used == 300
    assert rig.semaphore.policies["up"].in_use() == 0


def test_usage_reported_after_the_permit_went_back_early_is_charged_at_the_actor_end(
    backend: Backend,
) -> None:
    rig = make_rig(backend, permits=1)

    @dramatiq.actor(broker=rig.broker, quota="up", semaphore="up", breaker="up", max_retries=0)
    def fetch() -> None:
        rig.call("fetch")
        charge_bytes(100)
        release_permit_early(succeeded=True)
        assert rig.quota.policies["up"].usage().bytes_used == 100  # charged with the permit
        charge_bytes(20)  # reported late: charged when the actor returns, never dropped

    fetch.send()
    rig.run(threads=1)
    assert len(rig.calls) == 1 and not rig.broker.dead_letters
    assert rig.quota.policies["up"].usage().bytes_used == 120


class _RecordingEnds(MemoryBackend):
    """Records each batch's primitives, and each permit moved to a waiting thread of this process."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.transfers = 0

    def all_or_nothing(self, steps: Any) -> Any:
        self.batches.append([step.primitive for step in steps])
        return super().all_or_nothing(steps)

    def lease_transfer(self, *args: Any, **kwargs: Any) -> Any:
        self.transfers += 1
        return super().lease_transfer(*args, **kwargs)


def test_a_permit_handed_to_a_waiting_thread_ends_alone_and_the_gates_before_it_in_one_step() -> None:
    """The charge and the breaker's read still go in one batch before the permit moves to the thread
    that waits for it (one round trip sooner than each alone), and the order holds: charged, then
    released."""
    backend = _RecordingEnds()
    rig = make_rig(backend, permits=1, wait_s=5.0)

    @dramatiq.actor(broker=rig.broker, quota="up", semaphore="up", breaker="up", max_retries=0)
    def fetch(name: str) -> None:
        rig.call(name, 0.3)  # the other job waits for the permit meanwhile, in this process
        charge_bytes(100)
        release_permit_early(succeeded=True)

    for name in "abcd":
        fetch.send(name)
    rig.run(threads=4)  # one calls, one waits on the backend for the permit, the others in this process
    assert len(rig.calls) == 4 and rig.peak == 1 and not rig.broker.dead_letters
    assert backend.transfers >= 1
    ends_before_a_transfer = [b for b in backend.batches if b == ["counter_add", "state_get_now"]]
    assert len(ends_before_a_transfer) == backend.transfers, backend.batches
    assert rig.quota.policies["up"].usage().bytes_used == 400
    assert rig.semaphore.policies["up"].in_use() == 0


class _LostEndReplyOnce(MemoryBackend):
    """Runs the first end-of-call batch that gives a request back, then loses its reply (a timeout)."""

    lost = False

    def all_or_nothing(self, steps: Any) -> Any:
        replies = super().all_or_nothing(steps)
        if not self.lost and any(s.primitive == "counter_add" and s.args[1] == -1 for s in steps):
            self.lost = True
            raise BackendUnavailable("socket timeout reading the reply (the script ran)")
        return replies


def test_a_lost_reply_at_the_end_of_a_call_never_gives_a_request_back_twice() -> None:
    """Each gate then ends alone with only what is safe twice: a second refund would let the quota
    admit a call more than its limit."""
    backend = _LostEndReplyOnce()
    rig = make_rig(backend, requests=2, permits=5)
    seen: Counter[str] = Counter()

    @dramatiq.actor(broker=rig.broker, quota="up", semaphore="up", breaker="up", max_retries=0)
    def fetch(name: str) -> None:
        seen[name] += 1
        if name == "b" and seen[name] == 1:
            report_no_call()  # its call never left: the request is given back
            raise Defer(0.01, reason="paused")
        rig.call(name)

    for name in ("a", "b", "c"):
        fetch.send(name)
        rig.run(threads=1)
    assert backend.lost
    assert len(rig.calls) <= 2, f"{len(rig.calls)} calls in a window of 2 requests: {rig.calls}"


class _ErrorEndReplyOnce(MemoryBackend):
    failed = False

    def all_or_nothing(self, steps: Any) -> Any:
        if not self.failed and any(s.primitive == "lease_release" for s in steps):
            self.failed = True
            raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return super().all_or_nothing(steps)


def test_an_error_at_the_end_of_a_call_never_reaches_the_actor() -> None:
    """An error reply of the batch (not a connection error) in release_early: raised into the actor, it
    would mean a retry, and a second call of an answered job. Each gate ends alone instead."""
    backend = _ErrorEndReplyOnce()
    rig = make_rig(backend, permits=1)

    @dramatiq.actor(broker=rig.broker, quota="up", semaphore="up", breaker="up", max_retries=1)
    def fetch() -> None:
        rig.call("fetch")
        charge_bytes(600)
        release_permit_early(succeeded=True)

    fetch.send()
    rig.run(threads=1)
    assert backend.failed
    assert len(rig.calls) == 1, f"{len(rig.calls)} upstream calls for one job that succeeded"
    assert rig.quota.policies["up"].usage().bytes_used == 600
    assert rig.semaphore.policies["up"].in_use() == 0


def test_an_actors_429_is_recorded_before_its_permit_goes_to_a_waiting_thread() -> None:
    """The pause's ending goes first: a thread of this process waiting for the permit gets it only
    once the upstream is paused, so it finds the pause before its call."""
    backend = MemoryBackend()
    broker = StubBroker()
    pause = Pause(backend, {"up": PauseLimits(min_pause_s=5.0, jitter_s=0.0)})
    semaphore = ConcurrencySemaphore(
        backend,
        {"up": SemaphoreLimits(permits=1, lease_s=30, wait_s=3.0, retry_min_s=0.01, retry_max_s=0.05)},
    )
    install(
        broker,
        pause,
        semaphore,
        retries=Retries(backend=backend, max_retries=0, min_backoff=10, max_backoff=50, poll_interval_s=0.05),
    )
    b_ran = threading.Event()
    seen: list[tuple[str, bool]] = []

    @dramatiq.actor(broker=broker, pause="up", semaphore="up", max_retries=0)
    def fetch(name: str) -> None:
        if name == "a":
            time.sleep(0.3)  # b waits for the permit meanwhile
            raise PauseUpstream(5.0, "rate_limited")  # the call met a 429
        seen.append(
            (name, pause.policies["up"].admit().allowed)
        )  # the product reads it right before its call
        b_ran.set()

    fetch.send("a")
    fetch.send("b")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    # A slow backend between the permit's release and what follows it.
    with hooked("semaphore.released", lambda: b_ran.wait(2.0)):
        worker.start()
        time.sleep(2.5)
    worker.stop()
    assert ("b", True) not in seen, f"b got a's permit and found no pause: {seen}"

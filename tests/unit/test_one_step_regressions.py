"""What a review found wrong in the one-step admission, each as a test that failed before its fix.

1. A job that would sleep for its pacing slot had its request counted before the sleep: across a
   window's edge, a quota of one call a window let two into one window.
2. A budget-spread pacing interval (it reads the quota) was asked twice, answered twice
   differently, and the slot the batch reserved was wasted: the job waited a whole interval more.
3. A decision that failed after the batch escaped as an error Dramatiq ignores: the job ran with a
   second permit and a second request.
4. An interrupt (a worker shutting down) after the batch left the request counted.
5. Putting back a key in its last millisecond (``PTTL`` 0) made it last for ever on Redis.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Shutdown

from enrichment_middleware import (
    BackendUnavailable,
    ConcurrencySemaphore,
    MemoryBackend,
    Pacing,
    PacingLimits,
    Quota,
    QuotaLimits,
    SemaphoreLimits,
    install,
)
from enrichment_middleware.admission import Part
from enrichment_middleware.backends.base import Step
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.failpoints import hooked
from enrichment_middleware.policy.clock import ManualClock
from enrichment_middleware.policy.quota import QuotaPolicy

DAY = 1_700_006_400.0  # a UTC day's start


def gate_by_gate(backend: MemoryBackend) -> None:
    backend.all_or_nothing = lambda steps: None  # type: ignore[method-assign]


def admit(broker: StubBroker, actor: dramatiq.Actor[Any, Any]) -> BaseException | None:
    """One delivery through the broker's hooks, as a worker thread runs it; the exception, if any."""
    message = MessageProxy(actor.message())
    try:
        broker.emit_before("process_message", message)
    except BaseException as exc:
        broker.emit_after("process_message", message, exception=exc)
        return exc
    broker.emit_after("process_message", message, result=None)
    return None


@pytest.mark.parametrize("one_step", [False, True])
def test_a_job_that_sleeps_for_its_slot_counts_its_request_after_the_sleep(one_step: bool) -> None:
    clock = ManualClock(start=DAY + 59.7)  # 0.3 s before a 60 s window ends
    backend = MemoryBackend(clock=clock)
    if not one_step:
        gate_by_gate(backend)
    quota = Quota(backend, {"up": QuotaLimits(requests=1, window_s=60, jitter_s=0)})
    pacing = Pacing(
        backend, {"up": PacingLimits(interval_s=0.5, max_wait_s=1.0, lead_s=0.5)}, sleep=clock.advance
    )
    broker = StubBroker()
    install(broker, pacing, quota)
    calls: list[float] = []

    @dramatiq.actor(broker=broker, rate="up", quota="up")
    def call() -> None: ...

    pacing.policies["up"].reserve()  # the slot now is taken: the next job sleeps 0.5 s for its own
    for _ in range(2):
        if admit(broker, call) is None:
            calls.append(clock.now() - DAY)
    assert len([t for t in calls if 60 <= t < 120]) <= 1, calls


def test_a_budget_spread_interval_is_asked_once_and_the_slot_is_not_wasted() -> None:
    clock = ManualClock(start=DAY)
    backend = MemoryBackend(clock=clock)
    quota = Quota(backend, {"up": QuotaLimits(requests=1000, window_s=86_400)})
    usage = quota.policies["up"]

    def spread() -> float:  # as overpass_endpoints.budget_spread: what is left, spread over the day
        left = usage.usage()
        return max(1.0, (left.window_end - backend.now()) / max(1, 1000 - left.requests_used))

    pacing = Pacing(backend, {"up": PacingLimits(interval_s=0, max_wait_s=1.0)}, intervals={"up": spread})
    semaphore = ConcurrencySemaphore(backend, {"up": SemaphoreLimits(permits=5)})
    broker = StubBroker()
    install(broker, semaphore, pacing, quota)

    @dramatiq.actor(broker=broker, semaphore="up", rate="up", quota="up")
    def call() -> None: ...

    assert admit(broker, call) is None
    next_reservation, _ = backend.gcra_get("pacing:up")
    assert next_reservation - clock.now() == pytest.approx(86.4, abs=0.1)  # one interval, not two
    assert usage.usage().requests_used == 1


class _FailingDecision(Quota):
    """A quota whose decision from the batch's reply fails (say, a read it needs hits a Redis blip)."""

    def part(self, broker: Any, message: MessageProxy, policy: QuotaPolicy) -> Part | None:
        part = super().part(broker, message, policy)
        assert part is not None and part.step is not None

        def decide(reply: Any) -> Any:
            raise BackendUnavailable("Redis at redis://state cannot be reached (a blip)")

        return Part(part.step, decide=decide, allowed=part.allowed, take=part.take, give_back=part.give_back)


def test_a_decision_that_fails_after_the_batch_defers_the_job_and_leaks_no_permit() -> None:
    backend = MemoryBackend()
    semaphore = ConcurrencySemaphore(backend, {"up": SemaphoreLimits(permits=5, lease_s=300)})
    quota = _FailingDecision(backend, {"up": QuotaLimits(requests=10, window_s=3600)})
    broker = StubBroker()
    install(broker, semaphore, quota)
    ran: list[int] = []

    @dramatiq.actor(broker=broker, semaphore="up", quota="up")
    def call() -> None:
        ran.append(1)

    refused = admit(broker, call)
    assert isinstance(refused, dramatiq.middleware.MiddlewareError), refused  # deferred, not run
    assert semaphore.policies["up"].in_use() == 0
    # The request whose decision failed stays counted: too much rather than too little.
    assert quota.policies["up"].usage().requests_used <= 1


def test_a_worker_interrupted_after_the_batch_gives_back_the_permit_and_the_request() -> None:
    backend = MemoryBackend()
    semaphore = ConcurrencySemaphore(backend, {"up": SemaphoreLimits(permits=5)})
    quota = Quota(backend, {"up": QuotaLimits(requests=10, window_s=3600)})
    broker = StubBroker()
    install(broker, semaphore, quota)

    @dramatiq.actor(broker=broker, semaphore="up", quota="up")
    def call() -> None: ...

    def shut_down() -> None:
        raise Shutdown("the worker is shutting down")

    with hooked("admission.together", shut_down):
        assert isinstance(admit(broker, call), Shutdown)
    assert semaphore.policies["up"].in_use() == 0
    assert quota.policies["up"].usage().requests_used == 0


def test_a_key_put_back_in_its_last_millisecond_still_expires(redis_client: object, redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, namespace="lastms")
    cap = backend._key("lease-cap", "k")
    steps = [
        Step("lease_acquire", ("k", "h1", 3, 30.0), {}, "granted"),
        Step("pause_get", ("k",), {}, "not_paused"),
    ]
    for _ in range(5):
        backend.hold_set("k", "held", "fp")  # the batch refuses at its second step, every time
        backend.lease_set_cap("k", 1, ttl_s=0.05)
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            assert backend.all_or_nothing(steps) is None
        assert backend.client.pttl(cap) != -1, "a cap set for 50 ms was put back for ever"

"""The Pause middleware on real Dramatiq workers (StubBroker), in memory and on Redis.

Jobs arriving during a pause run only after it ends, deferred (never a
retry: the actors allow none, so a retry would dead-letter them); an actor
that raises PauseUpstream pauses its policy for every worker sharing the
backend; a hold stops every job until it is released.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage
from dramatiq.middleware import Retries as StockRetries

from enrichment_middleware.backends.base import Backend
from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.deferral import AdmissionDenied
from enrichment_middleware.pause import HELD, PAUSED, HoldUpstream, Pause, PauseUpstream
from enrichment_middleware.policy.pause import PauseLimits, PausePolicy
from enrichment_middleware.retries import DEFERRALS, Retries
from tests.support.workers import eventually

#: Short pauses on the real clock (Redis keeps the server's time); jitter small but not zero.
LIMITS = PauseLimits(min_pause_s=1.0, jitter_s=0.1, hold_recheck_s=0.2)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    from enrichment_middleware.backends.redis import RedisBackend

    request.getfixturevalue("redis_client")
    yield RedisBackend.from_url(request.getfixturevalue("redis_url"), namespace="pausetest")


@dataclass
class Rig:
    """One worker's broker: our Retries (waits in Dramatiq's delay queue) and the Pause middleware."""

    broker: StubBroker
    pause: Pause
    backend: Backend
    calls: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, name: str) -> None:
        """Record a call: its name, the backend's time (the clock pauses end by) and the message options."""
        options = dict(CurrentMessage.get_current_message().options)
        with self.lock:
            self.calls.append((name, self.backend.now(), options))

    def names(self) -> list[str]:
        with self.lock:
            return sorted(name for name, _, _ in self.calls)

    @property
    def policy(self) -> PausePolicy:
        return self.pause.policies["up"]

    def worker(self, threads: int = 2) -> dramatiq.Worker:
        worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=50)
        worker.start()
        return worker


def make_rig(backend: Backend, limits: dict[str, PauseLimits] | None = None) -> Rig:
    broker = StubBroker()
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, StockRetries)]
    # Retries first: after hooks run in reverse, so Pause sets a PauseUpstream's delay before Retries reads it.
    broker.add_middleware(
        Retries(
            backend=backend,
            max_retries=0,
            min_backoff=10,
            max_backoff=50,
            park_after_s=30.0,
            poll_interval_s=0.05,
        )
    )
    pause = Pause(backend, limits or {"up": LIMITS})
    broker.add_middleware(pause)
    broker.add_middleware(CurrentMessage())
    return Rig(broker, pause, backend)


def join(rig: Rig, worker: dramatiq.Worker, timeout_s: float = 20) -> None:
    try:
        rig.broker.join("default", fail_fast=True, timeout=int(timeout_s * 1000))
        worker.join()
    finally:
        worker.stop()


def test_a_job_arriving_during_a_pause_runs_after_its_end_deferred_not_retried(backend: Backend) -> None:
    rig = make_rig(backend)

    @dramatiq.actor(broker=rig.broker, pause="up", max_retries=0)
    def job(i: int) -> None:
        rig.call(f"job{i}")

    assert rig.policy.pause(0.0, "slow_down")  # the shortest pause: 1 s
    until = rig.policy.status().paused_until
    assert until is not None
    for i in range(4):
        job.send(i)
    join(rig, rig.worker())
    assert rig.names() == [f"job{i}" for i in range(4)]
    for name, at, options in rig.calls:
        assert at >= until, f"{name} ran {until - at:.3f}s before the pause ended"
        assert at <= until + LIMITS.jitter_s + 5, f"{name} ran long after the pause ended"
        assert options.get(DEFERRALS, 0) >= 1
        assert options.get("retries", 0) == 0
    assert not rig.broker.dead_letters


def test_an_actor_raising_pause_upstream_pauses_every_worker(backend: Backend) -> None:
    # Two workers (say, two processes) sharing one backend.
    first, second = make_rig(backend), make_rig(backend)
    raised: list[float] = []

    @dramatiq.actor(broker=first.broker, pause="up", max_retries=0)
    def slow_down() -> None:
        if not raised:
            raised.append(first.backend.now())
            # Less than the policy's shortest pause: the fleet pauses 1 s all the same.
            raise PauseUpstream(0.1, "rate_limited")
        first.call("slow_down")

    @dramatiq.actor(broker=second.broker, pause="up", max_retries=0)
    def other(i: int) -> None:
        second.call(f"other{i}")

    workers = [first.worker(), second.worker()]
    slow_down.send()
    eventually(lambda: second.policy.status().paused, timeout_s=10, message="the pause was never opened")
    status = second.policy.status()
    assert status.pause_reason == "rate_limited"
    until = status.paused_until
    assert until is not None and until - raised[0] >= LIMITS.min_pause_s - 0.01
    for i in range(3):
        other.send(i)
    join(first, workers[0])
    join(second, workers[1])
    assert first.names() == ["slow_down"]
    assert second.names() == ["other0", "other1", "other2"]
    for name, at, options in first.calls + second.calls:
        assert at >= until, f"{name} ran {until - at:.3f}s before the pause ended"
        assert options.get("retries", 0) == 0
    # The raising job came back at the pause end, not after its own 0.1 s.
    assert first.calls[0][2][DEFERRALS] == 1
    assert not first.broker.dead_letters and not second.broker.dead_letters


def test_a_held_policy_runs_nothing_until_released(backend: Backend) -> None:
    rig = make_rig(backend)

    @dramatiq.actor(broker=rig.broker, pause="up", max_retries=0)
    def job(i: int) -> None:
        rig.call(f"job{i}")

    assert rig.policy.hold("refused", "settings-1")
    for i in range(3):
        job.send(i)
    worker = rig.worker()
    try:
        # Re-checks every 0.2 s (plus jitter) for a second: none runs.
        threading.Event().wait(1.0)
        assert rig.calls == []
        assert not rig.policy.release_hold("settings-1")  # the same settings: still held
        assert rig.policy.release_hold("settings-2")  # new settings lift it
        eventually(lambda: len(rig.calls) == 3, timeout_s=10, message="held jobs never ran after the release")
    finally:
        worker.stop()
    for _, _, options in rig.calls:
        assert options[DEFERRALS] >= 1 and options.get("retries", 0) == 0
    assert not rig.broker.dead_letters


def test_an_actor_raising_hold_upstream_holds_every_worker_until_released(backend: Backend) -> None:
    first, second = make_rig(backend), make_rig(backend)
    refused: list[int] = []

    @dramatiq.actor(broker=first.broker, pause="up", max_retries=0)
    def refusing() -> None:
        if not refused:
            refused.append(1)
            raise HoldUpstream("refused", fingerprint="settings-1")
        first.call("refusing")

    @dramatiq.actor(broker=second.broker, pause="up", max_retries=0)
    def other(i: int) -> None:
        second.call(f"other{i}")

    workers = [first.worker(), second.worker()]
    try:
        refusing.send()
        eventually(lambda: second.policy.status().held, timeout_s=10, message="the hold was never set")
        status = second.policy.status()
        assert (status.reason, status.fingerprint) == ("refused", "settings-1")
        for i in range(3):
            other.send(i)
        threading.Event().wait(1.0)  # several re-checks (0.2 s plus jitter)
        assert first.calls == [] and second.calls == []
        assert second.policy.release_hold("settings-2")
        eventually(lambda: len(first.calls) + len(second.calls) == 4, timeout_s=10, message="not all ran")
    finally:
        for worker in workers:
            worker.stop()
    for _, _, options in first.calls + second.calls:
        assert options[DEFERRALS] >= 1 and options.get("retries", 0) == 0
    assert not first.broker.dead_letters and not second.broker.dead_letters


@pytest.mark.parametrize(
    ("hold", "reason"),
    [(False, PAUSED), (True, HELD)],
)
def test_the_denial_is_an_admission_denied_with_its_reason(hold: bool, reason: str) -> None:
    backend = MemoryBackend()
    rig = make_rig(backend)
    if hold:
        rig.policy.hold("refused", "f")
    else:
        rig.policy.pause(5.0, "slow_down")

    @dramatiq.actor(broker=rig.broker, pause="up")
    def job() -> None:
        raise AssertionError("must not run")

    message = job.message()
    with pytest.raises(AdmissionDenied) as denied:
        rig.pause.before_process_message(rig.broker, MessageProxy(message))
    assert denied.value.reason == reason
    low = LIMITS.hold_recheck_s if hold else 4.9
    assert low <= denied.value.delay_s <= (LIMITS.hold_recheck_s if hold else 5.0) + LIMITS.jitter_s


def test_pause_upstream_without_a_pause_policy_defers_only_that_message() -> None:
    backend = MemoryBackend()
    rig = make_rig(backend)
    runs: list[float] = []

    @dramatiq.actor(broker=rig.broker, max_retries=0)
    def alone() -> None:
        runs.append(backend.now())
        if len(runs) == 1:
            raise PauseUpstream(0.2, "rate_limited")

    alone.send()
    join(rig, rig.worker())
    assert len(runs) == 2 and runs[1] - runs[0] >= 0.2
    assert not rig.policy.status().paused


def test_a_message_option_names_the_pause_instead_of_the_actor() -> None:
    backend = MemoryBackend()
    rig = make_rig(backend, {"a": LIMITS, "b": LIMITS})
    rig.pause.policies["b"].pause(1.0, "slow_down")
    until = rig.pause.policies["b"].status().paused_until
    assert until is not None

    @dramatiq.actor(broker=rig.broker, pause="a", max_retries=0)
    def job(name: str) -> None:
        rig.call(name)

    job.send("by-actor")
    job.send_with_options(args=("by-message",), pause="b")
    join(rig, rig.worker())
    when = {name: at for name, at, _ in rig.calls}
    assert when["by-actor"] < until
    assert when["by-message"] >= until

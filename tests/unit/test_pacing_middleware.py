"""The Pacing middleware: its decisions by a manual clock, then a backlog on a real Dramatiq worker."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage
from dramatiq.middleware import Retries as StockRetries

from enrichment_middleware.admission import STATE_UNAVAILABLE, UnknownPolicy
from enrichment_middleware.backends import Backend, BackendUnavailable, MemoryBackend
from enrichment_middleware.deferral import AdmissionDenied
from enrichment_middleware.failpoints import FailpointError, configure
from enrichment_middleware.pacing import PACED, PACING_SLOT, Pacing
from enrichment_middleware.policy.clock import ManualClock
from enrichment_middleware.policy.pacing import PacingLimits
from enrichment_middleware.retries import DEFERRALS, Retries
from tests.support.workers import eventually

NOW = 1_700_000_000.0
LIMITS = PacingLimits(interval_s=10.0, max_wait_s=1.0, lead_s=0.5)


class Rig:
    """A StubBroker with Pacing on it, a paced actor and an unpaced one, and the sleeps it asked for."""

    def __init__(self, backend: Backend, **pacing: Any) -> None:
        self.broker = StubBroker()
        self.slept: list[float] = []
        self.pacing = Pacing(backend, {"api": LIMITS, "other": LIMITS}, sleep=self.slept.append, **pacing)
        self.broker.add_middleware(self.pacing)
        self.paced = dramatiq.actor(lambda: None, actor_name="paced", broker=self.broker, rate="api")
        self.free = dramatiq.actor(lambda: None, actor_name="free", broker=self.broker)

    def admit(self, message: dramatiq.Message[Any]) -> None:
        self.pacing.before_process_message(self.broker, MessageProxy(message))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def rig(clock: ManualClock) -> Rig:
    return Rig(MemoryBackend(clock=clock))


def test_a_job_too_early_keeps_its_slot_and_is_deferred_to_just_before_it(
    rig: Rig, clock: ManualClock
) -> None:
    rig.admit(rig.paced.message())  # the first starts at once
    second = rig.paced.message()
    with pytest.raises(AdmissionDenied) as denied:
        rig.admit(second)
    assert (denied.value.reason, denied.value.delay_s) == (PACED, 9.5)  # lead_s before the slot
    assert second.options[PACING_SLOT] == {"name": "api", "at": NOW + 10.0}
    assert rig.slept == []

    clock.advance(9.5)  # it comes back: admitted on its slot, sleeping the lead
    rig.admit(second)
    assert rig.slept == [0.5]
    assert PACING_SLOT not in second.options
    # It took no other slot: a newcomer gets the one after it.
    assert rig.pacing.status()["api"].next_slot_at == NOW + 20.0


def test_deferred_jobs_come_back_one_slot_apart_not_all_for_one(rig: Rig) -> None:
    rig.admit(rig.paced.message())
    backlog = [rig.paced.message() for _ in range(5)]
    delays = []
    for message in backlog:
        with pytest.raises(AdmissionDenied) as denied:
            rig.admit(message)
        delays.append(denied.value.delay_s)
    assert delays == [9.5, 19.5, 29.5, 39.5, 49.5]
    assert [m.options[PACING_SLOT]["at"] - NOW for m in backlog] == [10.0, 20.0, 30.0, 40.0, 50.0]


def test_a_slot_of_another_schedule_is_not_used(rig: Rig, clock: ManualClock) -> None:
    """The message was routed to another policy since it reserved: it reserves on the new one."""
    message = rig.paced.message_with_options(**{PACING_SLOT: {"name": "other", "at": NOW + 500.0}})
    rig.admit(message)  # "api" has a slot now: admitted at once
    assert PACING_SLOT not in message.options and rig.slept == []
    assert rig.pacing.status()["api"].next_slot_at == NOW + 10.0


def test_an_actor_without_rate_is_not_paced(rig: Rig) -> None:
    for _ in range(3):
        rig.admit(rig.free.message())
    assert rig.pacing.status()["api"].next_slot_at == NOW


def test_intervals_follow_the_callable(clock: ManualClock) -> None:
    interval = [0.0]
    rig = Rig(MemoryBackend(clock=clock), intervals={"api": lambda: interval[0]})
    for _ in range(3):
        rig.admit(rig.paced.message())  # off: nothing paced
    interval[0] = 2.0
    rig.admit(rig.paced.message())
    with pytest.raises(AdmissionDenied) as denied:
        rig.admit(rig.paced.message())  # 2 s away, beyond max_wait_s (1 s): deferred
    assert denied.value.delay_s == 1.5
    assert rig.slept == []
    assert rig.pacing.status()["api"].interval_s == 2.0


def test_intervals_for_unknown_policies_are_refused(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="no limits for them"):
        Pacing(MemoryBackend(clock=clock), {"api": LIMITS}, intervals={"apl": lambda: 1.0})


def test_an_actor_asking_for_an_unknown_rate_is_refused_at_declaration(rig: Rig) -> None:
    with pytest.raises(UnknownPolicy, match="rate='nope'"):
        dramatiq.actor(lambda: None, actor_name="typo", broker=rig.broker, rate="nope")


class Unreachable(MemoryBackend):
    def gcra_reserve(
        self, key: str, interval_s: float, burst: int, *, wait_s: float = 0.0
    ) -> tuple[float, float]:
        raise BackendUnavailable("the store is down")


def test_an_unreachable_store_defers_the_job_rather_than_letting_it_call(clock: ManualClock) -> None:
    rig = Rig(Unreachable(clock=clock))
    with pytest.raises(AdmissionDenied) as denied:
        rig.admit(rig.paced.message())
    assert denied.value.reason == STATE_UNAVAILABLE


@pytest.fixture
def failpoints() -> Iterator[None]:
    yield
    configure("")


def test_the_admission_passes_the_pacing_admitted_failpoint(rig: Rig, failpoints: None) -> None:
    configure("pacing.admitted=raise:1")
    with pytest.raises(FailpointError):
        rig.admit(rig.paced.message())


def test_a_message_option_rate_overrides_the_actors(rig: Rig) -> None:
    rig.admit(rig.free.message_with_options(rate="api"))  # the free actor, routed onto "api"
    assert rig.pacing.status()["api"].next_slot_at == NOW + 10.0


# -- a backlog on a real worker -----------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend()
    from enrichment_middleware.backends.redis import RedisBackend

    request.getfixturevalue("redis_client")
    return RedisBackend.from_url(request.getfixturevalue("redis_url"), namespace="pacingtest")


def test_a_backlog_on_a_worker_is_spaced_and_uses_the_slots_without_retries(backend: Backend) -> None:
    # The tolerance covers this loaded machine's scheduling: a thread descheduled between its
    # admission and its call (tens of ms with seven test sessions on two cores) starts late.
    interval = 0.4
    limits = PacingLimits(interval_s=interval, tolerance_s=0.15, max_wait_s=0.5, lead_s=0.25)
    broker = StubBroker()
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, StockRetries)]
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(Retries(backend=backend, max_retries=0, poll_interval_s=0.02))
    broker.add_middleware(Pacing(backend, {"api": limits}))
    starts: list[float] = []
    options: list[dict[str, Any]] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, rate="api", max_retries=0)
    def call(i: int) -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        with lock:
            starts.append(time.time())
            options.append(dict(message.options))

    jobs = 16
    for i in range(jobs):
        call.send(i)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        eventually(lambda: len(starts) == jobs, timeout_s=jobs * interval + 20, message="every job called")
    finally:
        worker.stop()
    starts.sort()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    used = (jobs - 1) * interval / (starts[-1] - starts[0])
    print(
        f"worker backlog: {jobs} calls, smallest gap {min(gaps):.4f}s (interval {interval}s), use {used:.3f}"
    )
    assert min(gaps) >= interval - limits.tolerance_s
    assert used >= 0.85  # issue 12's 0.97 is a benchmark target, measured in make bench
    assert not broker.dead_letters
    assert all(o.get("retries", 0) == 0 for o in options)
    assert sum(1 for o in options if o.get(DEFERRALS)) >= jobs - 4  # all but the first few were paced
    assert all(PACING_SLOT not in o for o in options)

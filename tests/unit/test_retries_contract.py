"""Our Retries against Dramatiq's own, option by option, on real StubBroker workers.

Each case runs the same actor, with the same options and the same sequence
of failures, once under Dramatiq's stock ``Retries`` and once under ours
(parking in a memory backend, as the product does for its own actors, which
``park_retries=True`` stands for here: an actor that opts into no gate is
retried by Dramatiq's own, tests/unit/test_retries_parity.py), and compares what a user
can see: the ``retries`` and ``requeue_timestamp`` options at each attempt,
the dead letters, the ``on_retry_exhausted`` messages and the
``on_success``/``on_failure`` callbacks. Only the backoff's spread differs
(documented); so does a deferral, which has its own tests below.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage
from dramatiq.middleware import Retries as StockRetries

from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.callbacks import replace_stock_callbacks
from enrichment_middleware.deferral import AdmissionDenied, Defer
from enrichment_middleware.retries import DEFERRALS, Retries
from tests.support.workers import eventually

#: Backoffs short enough for a table of cases (milliseconds).
FAST: dict[str, Any] = {"min_backoff": 1, "max_backoff": 10}


class UpstreamDown(Exception):
    """What the actor raises for a failure."""


@dataclass
class Seen:
    """What a user of the broker can observe of one job."""

    #: Per attempt: the ``retries`` option it ran with, and whether ``requeue_timestamp`` was set.
    attempts: list[tuple[int, bool]] = field(default_factory=list)
    #: Per dead letter: ``retries``, and whether ``requeue_timestamp`` and ``traceback`` were set.
    dead: list[tuple[int | None, bool, bool]] = field(default_factory=list)
    #: Per ``on_retry_exhausted`` message: its ``retries`` and ``max_retries``, and whether it names the job.
    exhausted: list[tuple[int, int | None, bool]] = field(default_factory=list)
    failures: int = 0
    successes: int = 0


@dataclass(frozen=True)
class Case:
    """One row: the middleware's arguments, the actor's and the message's options, and the failures."""

    middleware: dict[str, Any]
    actor: dict[str, Any] = field(default_factory=dict)
    message: dict[str, Any] = field(default_factory=dict)
    #: How many attempts fail before one succeeds; None: every attempt fails.
    fails: int | None = None
    error: Callable[[], BaseException] = lambda: UpstreamDown("down")


def only_key_errors(retries: int, exception: BaseException) -> bool:
    return isinstance(exception, KeyError)


def fewer_than_two(retries: int, exception: BaseException) -> bool:
    return retries < 2


CASES = [
    pytest.param(Case({"max_retries": 2, **FAST}), id="max_retries in the constructor"),
    pytest.param(Case({"max_retries": 0, **FAST}), id="max_retries=0: one attempt"),
    pytest.param(Case({"max_retries": 5, **FAST}, actor={"max_retries": 1}), id="actor max_retries wins"),
    pytest.param(Case({"max_retries": 5, **FAST}, message={"max_retries": 0}), id="message max_retries wins"),
    pytest.param(Case({"max_retries": None, **FAST}, fails=4), id="max_retries=None: until it succeeds"),
    pytest.param(
        Case({"max_retries": 0, **FAST}, actor={"max_retries": None}, fails=3), id="actor max_retries=None"
    ),
    pytest.param(Case(dict(FAST)), id="default max_retries (20)"),
    pytest.param(Case({"max_retries": 3, **FAST}, fails=2), id="succeeds before the limit"),
    pytest.param(
        Case({"max_retries": 0, "retry_when": fewer_than_two, **FAST}), id="retry_when in the constructor"
    ),
    pytest.param(
        Case({"max_retries": 9, **FAST}, actor={"retry_when": only_key_errors}), id="actor retry_when says no"
    ),
    pytest.param(
        Case(
            {"max_retries": 0, **FAST},
            actor={"retry_when": only_key_errors},
            fails=2,
            error=lambda: KeyError("k"),
        ),
        id="actor retry_when says yes",
    ),
    pytest.param(
        Case({"max_retries": 5, **FAST}, actor={"throws": (ValueError,)}, error=lambda: ValueError("bad")),
        id="throws: never retried",
    ),
    pytest.param(
        Case({"max_retries": 1, **FAST}, actor={"on_retry_exhausted": "exhausted"}),
        id="actor on_retry_exhausted",
    ),
    pytest.param(
        Case({"max_retries": 1, **FAST}, message={"on_retry_exhausted": "exhausted"}),
        id="message on_retry_exhausted",
    ),
    pytest.param(
        Case(
            {"max_retries": 9, "retry_when": fewer_than_two, **FAST},
            actor={"on_retry_exhausted": "exhausted"},
        ),
        id="on_retry_exhausted after retry_when",
    ),
    pytest.param(
        Case(
            {"max_retries": 5, **FAST},
            actor={"on_retry_exhausted": "exhausted", "throws": (ValueError,)},
            error=lambda: ValueError("bad"),
        ),
        id="no on_retry_exhausted for throws",
    ),
    pytest.param(
        Case({"max_retries": 3, **FAST}, error=lambda: dramatiq.Retry("again", delay=5)),
        id="Retry(delay) counts as a retry",
    ),
    pytest.param(
        Case({"max_retries": 2}, actor={"min_backoff": 1, "max_backoff": 5}), id="actor min/max_backoff"
    ),
    pytest.param(
        Case({"max_retries": 2}, message={"min_backoff": 1, "max_backoff": 5}), id="message min/max_backoff"
    ),
]


def run(flavour: str, case: Case, timeout_s: float = 30.0) -> Seen:
    """Send one job under ``flavour`` ("stock" or "ours") and return what was seen once it ended."""
    broker = StubBroker()
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, StockRetries)]
    if flavour == "stock":
        broker.add_middleware(StockRetries(**case.middleware))
    else:
        broker.add_middleware(
            Retries(backend=MemoryBackend(), park_after_s=0.0, poll_interval_s=0.01, **case.middleware)
        )
        replace_stock_callbacks(broker)
    broker.add_middleware(CurrentMessage())
    seen = Seen()
    lock = threading.Lock()

    # Ours retries an actor that opts into no gate as Dramatiq's own does; park_retries compares its own path.
    parked = {"park_retries": True} if flavour == "ours" else {}

    @dramatiq.actor(
        broker=broker,
        actor_name="subject",
        on_success="succeeded",
        on_failure="failed",
        **case.actor,
        **parked,
    )
    def subject() -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        with lock:
            attempt = len(seen.attempts)
            seen.attempts.append((message.options.get("retries", 0), "requeue_timestamp" in message.options))
        if case.fails is None or attempt < case.fails:
            raise case.error()

    @dramatiq.actor(broker=broker, actor_name="exhausted")
    def exhausted(job: dict[str, Any], info: dict[str, Any]) -> None:
        with lock:
            seen.exhausted.append((info["retries"], info["max_retries"], job["actor_name"] == "subject"))

    @dramatiq.actor(broker=broker, actor_name="succeeded")
    def succeeded(job: dict[str, Any], result: Any) -> None:
        with lock:
            seen.successes += 1

    @dramatiq.actor(broker=broker, actor_name="failed")
    def failed(job: dict[str, Any], error: dict[str, str]) -> None:
        with lock:
            seen.failures += 1

    subject.send_with_options(**case.message)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=10)
    worker.start()
    try:
        eventually(lambda: seen.successes or broker.dead_letters, timeout_s=timeout_s, interval_s=0.01)
        broker.join("default", fail_fast=False, timeout=int(timeout_s * 1000))
        worker.join()
    finally:
        worker.stop()
    seen.dead = [
        (m.options.get("retries"), "requeue_timestamp" in m.options, "traceback" in m.options)
        for m in broker.dead_letters
    ]
    return seen


@pytest.mark.parametrize("case", CASES)
def test_every_option_means_what_it_means_in_dramatiq(case: Case) -> None:
    stock = run("stock", case)
    ours = run("ours", case)
    assert ours == stock


def test_requeue_timestamp_is_the_time_of_the_failure() -> None:
    broker = StubBroker()
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, StockRetries)]
    broker.add_middleware(Retries(backend=MemoryBackend(), max_retries=1, poll_interval_s=0.01, **FAST))

    @dramatiq.actor(broker=broker, park_retries=True)
    def failing() -> None:
        raise UpstreamDown("down")

    before = int(time.time() * 1000)
    failing.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=10)
    worker.start()
    try:
        eventually(lambda: broker.dead_letters, timeout_s=10, interval_s=0.01)
    finally:
        worker.stop()
    (dead,) = broker.dead_letters
    assert before <= dead.options["requeue_timestamp"] <= int(time.time() * 1000)


class DenyFirst(dramatiq.Middleware):
    """A limiting middleware that turns the first ``times`` attempts away, as the quota would."""

    def __init__(self, times: int) -> None:
        self.left = times

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.broker.MessageProxy) -> None:
        if self.left > 0:
            self.left -= 1
            raise AdmissionDenied(0.01, "not yet")


def test_a_deferral_is_no_outcome_for_callbacks_retries_or_on_retry_exhausted() -> None:
    """Two denials by a middleware and two Defers by the actor, then a success: one on_success, nothing else."""
    broker = StubBroker()
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, StockRetries)]
    broker.add_middleware(Retries(backend=MemoryBackend(), max_retries=0, poll_interval_s=0.01, **FAST))
    replace_stock_callbacks(broker)
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(DenyFirst(2))
    runs: list[dict[str, Any]] = []
    callbacks: list[str] = []

    @dramatiq.actor(
        broker=broker, on_success="succeeded", on_failure="failed", on_retry_exhausted="exhausted"
    )
    def patient() -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        runs.append(dict(message.options))
        if len(runs) <= 2:
            raise Defer(0.01, "upstream asked us to wait")

    @dramatiq.actor(broker=broker)
    def succeeded(job: dict[str, Any], result: Any) -> None:
        callbacks.append("on_success")

    @dramatiq.actor(broker=broker)
    def failed(job: dict[str, Any], error: dict[str, str]) -> None:
        callbacks.append("on_failure")

    @dramatiq.actor(broker=broker)
    def exhausted(job: dict[str, Any], info: dict[str, Any]) -> None:
        callbacks.append("on_retry_exhausted")

    patient.send()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=10)
    worker.start()
    try:
        eventually(lambda: callbacks, timeout_s=10, interval_s=0.01)
        broker.join("default", fail_fast=False, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    assert callbacks == ["on_success"]
    assert len(runs) == 3 and not broker.dead_letters
    assert runs[-1].get("retries", 0) == 0 and runs[-1][DEFERRALS] == 4


def test_a_failure_after_deferrals_still_fires_on_failure_and_on_retry_exhausted() -> None:
    broker = StubBroker()
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, StockRetries)]
    broker.add_middleware(Retries(backend=MemoryBackend(), max_retries=0, poll_interval_s=0.01, **FAST))
    replace_stock_callbacks(broker)
    broker.add_middleware(DenyFirst(3))
    callbacks: list[str] = []

    @dramatiq.actor(broker=broker, on_failure="failed", on_retry_exhausted="exhausted", park_retries=True)
    def doomed() -> None:
        raise UpstreamDown("down")

    @dramatiq.actor(broker=broker)
    def failed(job: dict[str, Any], error: dict[str, str]) -> None:
        callbacks.append(f"on_failure {error['type']}")

    @dramatiq.actor(broker=broker)
    def exhausted(job: dict[str, Any], info: dict[str, Any]) -> None:
        callbacks.append(f"on_retry_exhausted {info['retries']}")

    doomed.send()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=10)
    worker.start()
    try:
        eventually(lambda: len(callbacks) == 2, timeout_s=10, interval_s=0.01)
        broker.join("default", fail_fast=False, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    assert sorted(callbacks) == ["on_failure UpstreamDown", "on_retry_exhausted 0"]
    (dead,) = broker.dead_letters
    assert dead.options["retries"] == 1 and dead.options[DEFERRALS] == 3

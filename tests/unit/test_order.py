"""One ordered admission: ``install`` puts the gates in order whatever order they come in, and a
worker refuses a broker whose gates, or whose ``Retries``, stand where admission cannot work.
"""

from __future__ import annotations

import itertools
import logging

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Callbacks as StockCallbacks
from dramatiq.middleware import Retries as StockRetries

from enrichment_middleware import (
    BreakerLimits,
    Callbacks,
    CircuitBreaker,
    ConcurrencySemaphore,
    MemoryBackend,
    MiddlewareOrderError,
    Pacing,
    PacingLimits,
    Pause,
    PauseLimits,
    Quota,
    QuotaLimits,
    Retries,
    SemaphoreLimits,
    install,
)
from enrichment_middleware.order import check_order


def gates(backend: MemoryBackend) -> list[dramatiq.Middleware]:
    """One of each gate, in admission order."""
    return [
        Pause(backend, {"up": PauseLimits()}),
        ConcurrencySemaphore(backend, {"up": SemaphoreLimits(permits=1)}),
        CircuitBreaker(backend, {"up": BreakerLimits()}),
        Pacing(backend, {"up": PacingLimits(interval_s=1.0)}),
        Quota(backend, {"up": QuotaLimits(requests=10)}),
    ]


@pytest.mark.parametrize("order", list(itertools.permutations(range(5))))
def test_install_puts_the_gates_in_admission_order_whatever_order_they_come_in(
    order: tuple[int, ...],
) -> None:
    backend = MemoryBackend()
    in_order = gates(backend)
    broker = StubBroker()
    stock_retries = next(m for m in broker.middleware if isinstance(m, StockRetries))
    retries = install(broker, *(in_order[i] for i in order))
    assert [m for m in broker.middleware if m in in_order] == in_order
    # Ours stand where Dramatiq's stood, which keeps serving the actors that opt into no gate.
    assert retries.dramatiq_retries is stock_retries and retries.parking is not None
    assert sum(isinstance(m, StockRetries) for m in broker.middleware) == 1
    assert [type(m) for m in broker.middleware if isinstance(m, StockCallbacks)] == [Callbacks]
    check_order(broker.middleware)


def _by_hand(*names: str) -> list[dramatiq.Middleware]:
    backend = MemoryBackend()
    pause, semaphore, breaker, pacing, quota = gates(backend)
    parts = {
        "retries": Retries(backend=backend),
        "stock_retries": StockRetries(),
        "stock_callbacks": StockCallbacks(),
        "pause": pause,
        "semaphore": semaphore,
        "semaphore_again": ConcurrencySemaphore(backend, {"up": SemaphoreLimits(permits=1)}),
        "breaker": breaker,
        "pacing": pacing,
        "quota": quota,
    }
    return [parts[name] for name in names]


@pytest.mark.parametrize(
    ("names", "refusal"),
    [
        (("retries", "pause", "semaphore", "breaker", "pacing", "quota"), None),
        (("retries", "semaphore", "quota"), None),
        (("retries", "quota"), None),
        (("stock_retries",), None),  # no gate: nothing to check
        (
            ("retries", "breaker", "semaphore"),
            r"ConcurrencySemaphore \(semaphore=\) stands after CircuitBreaker",
        ),
        (("retries", "semaphore", "pause"), r"Pause \(pause=\) stands after ConcurrencySemaphore .*one read"),
        (
            ("retries", "quota", "pacing"),
            r"Pacing \(rate=\) stands after Quota .*must not have spent a request",
        ),
        (("retries", "semaphore", "semaphore_again"), r"Two ConcurrencySemaphore \(semaphore=\) gates"),
        (("stock_retries", "semaphore"), r"Dramatiq's own Retries is on the broker beside the gates"),
        (("semaphore",), r"without enrichment_middleware.Retries"),
        (("semaphore", "retries"), r"Retries stands after ConcurrencySemaphore"),
    ],
)
def test_a_broker_assembled_by_hand_is_refused_unless_admission_works_as_documented(
    names: tuple[str, ...], refusal: str | None
) -> None:
    middleware = _by_hand(*names)
    if refusal is None:
        check_order(middleware)
    else:
        with pytest.raises(MiddlewareOrderError, match=refusal):
            check_order(middleware)


def test_dramatiqs_callbacks_beside_the_gates_is_warned_of_not_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="enrichment_middleware.order"):
        check_order(_by_hand("retries", "stock_callbacks", "semaphore"))
    assert "on_failure will be sent for every deferral" in caplog.text


def test_a_worker_on_a_broker_in_another_order_does_not_start() -> None:
    broker = StubBroker()
    install(broker, *gates(MemoryBackend()))
    # Moved by hand afterwards: the quota now decides before the permit's wait.
    quota = broker.middleware.pop()
    broker.middleware.insert(
        broker.middleware.index(next(m for m in broker.middleware if isinstance(m, Pause))), quota
    )
    worker = dramatiq.Worker(broker, worker_threads=1)
    with pytest.raises(MiddlewareOrderError, match=r"Pause \(pause=\) stands after Quota"):
        worker.start()
    worker.stop()


@pytest.mark.parametrize("how", ["twice", "not_a_gate", "another_retries"])
def test_install_refuses_what_would_admit_twice_or_is_no_gate(how: str) -> None:
    backend = MemoryBackend()
    broker = StubBroker()
    install(broker, Quota(backend, {"up": QuotaLimits(requests=1)}))
    with pytest.raises(MiddlewareOrderError) as refused:
        if how == "twice":
            install(broker, Quota(backend, {"up": QuotaLimits(requests=1)}))
        elif how == "not_a_gate":
            install(broker, dramatiq.middleware.TimeLimit())
        else:
            install(broker, Pause(backend, {"up": PauseLimits()}), retries=Retries(backend=backend))
    assert {
        "twice": "is on the broker already",
        "not_a_gate": "is no gate",
        "another_retries": "Another enrichment_middleware.Retries",
    }[how] in str(refused.value)

"""What a limiting middleware holds belongs to one delivery of a message, not to its id; admission fails closed.

Two copies of one message can run in one process at once (a redelivery
while the first copy still runs, a producer that sends a message twice):
each holds its own permit and gives back its own (issue 8, finding 16).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker

from enrichment_middleware.admission import STATE_UNAVAILABLE, AdmissionMiddleware
from enrichment_middleware.backends import MemoryBackend
from enrichment_middleware.breaker import CircuitBreaker
from enrichment_middleware.deferral import AdmissionDenied
from enrichment_middleware.installation import install
from enrichment_middleware.policy.breaker import BreakerLimits
from enrichment_middleware.policy.quota import QuotaLimits
from enrichment_middleware.policy.semaphore import SemaphoreLimits
from enrichment_middleware.quota import Quota
from enrichment_middleware.semaphore import ConcurrencySemaphore


@pytest.mark.parametrize("copies", [2, 3])
def test_copies_of_one_message_running_together_each_give_back_their_own_permit(copies: int) -> None:
    backend = MemoryBackend()
    semaphore = ConcurrencySemaphore(backend, {"up": SemaphoreLimits(permits=copies, lease_s=600)})
    broker = StubBroker()
    install(broker, semaphore)
    together = threading.Barrier(copies, timeout=10)
    in_use_inside: list[int] = []

    @dramatiq.actor(broker=broker, semaphore="up", max_retries=0)
    def call() -> None:
        together.wait()  # every copy holds its permit now
        in_use_inside.append(semaphore.policies["up"].in_use())
        together.wait()

    message: dramatiq.Message[Any] = call.message()
    for _ in range(copies):
        broker.enqueue(message)  # the same message, id and all
    worker = dramatiq.Worker(broker, worker_threads=copies, worker_timeout=50)
    worker.start()
    try:
        broker.join(call.queue_name, fail_fast=True)
        worker.join()
    finally:
        worker.stop()
    assert in_use_inside == [copies] * copies
    assert semaphore.policies["up"].in_use() == 0, "a copy's permit was never given back"


class ErringBackend(MemoryBackend):
    """A store that answers every admission with an error reply that is not "unreachable"."""

    def _err(self) -> ValueError:
        return ValueError("WRONGTYPE Operation against a key holding the wrong kind of value")

    def window_admit(self, *args: Any, **kwargs: Any) -> Any:
        raise self._err()

    def lease_acquire(self, *args: Any, **kwargs: Any) -> Any:
        raise self._err()

    def state_get(self, *args: Any, **kwargs: Any) -> Any:
        raise self._err()

    def state_get_now(self, *args: Any, **kwargs: Any) -> Any:
        raise self._err()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda b: Quota(b, {"up": QuotaLimits(requests=5)}), id="quota"),
        pytest.param(lambda b: ConcurrencySemaphore(b, {"up": SemaphoreLimits(permits=1)}), id="semaphore"),
        pytest.param(lambda b: CircuitBreaker(b, {"up": BreakerLimits()}), id="breaker"),
    ],
)
def test_an_error_while_admitting_defers_the_message_instead_of_running_it_unaccounted(
    make: Callable[[MemoryBackend], AdmissionMiddleware[Any, Any]],
) -> None:
    """Dramatiq runs the actor anyway when a before-hook raises anything but a MiddlewareError."""
    middleware = make(ErringBackend())
    broker = StubBroker()
    broker.add_middleware(middleware)

    def call() -> None: ...

    actor = dramatiq.actor(call, broker=broker, **{middleware.option: "up"})

    with pytest.raises(AdmissionDenied) as denied:
        middleware.before_process_message(broker, MessageProxy(actor.message()))
    assert denied.value.reason == STATE_UNAVAILABLE

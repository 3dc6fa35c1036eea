"""What a limiting middleware holds belongs to one delivery of a message, not to its id.

Two copies of one message can run in one process at once (a redelivery
while the first copy still runs, a producer that sends a message twice):
each holds its own permit and gives back its own (issue 8, finding 16).
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from middleware.backends import MemoryBackend
from middleware.policy.semaphore import SemaphoreLimits
from middleware.semaphore import ConcurrencySemaphore


@pytest.mark.parametrize("copies", [2, 3])
def test_copies_of_one_message_running_together_each_give_back_their_own_permit(copies: int) -> None:
    backend = MemoryBackend()
    semaphore = ConcurrencySemaphore(backend, {"up": SemaphoreLimits(permits=copies, lease_s=600)})
    broker = StubBroker()
    broker.add_middleware(semaphore)
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

"""Faults on the RabbitMQ broker: workers killed with ``kill -9`` during 300 jobs, and the broker restarted.

RabbitMQ hands a message back to the queue when the connection of the
consumer that held it closes (a killed worker, a restarted broker): at least
once, as on Redis. What keeps that from costing Overpass calls is the stage
(enrichment_actors/staging.py): a fetch's answer is kept in the state backend
under the fetch message's id, so a redelivered fetch whose answer had landed
hands it on without calling. Only a call still in flight when its worker died
is made again.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.bench.fleet import send
from tests.chaos.conftest import POIS_PER_JOB, QUEUE, TAGS, Chaos
from tests.support import rabbitmq
from tests.support.rooms import in_rooms
from tests.support.workers import eventually

pytestmark = pytest.mark.chaos


def send_jobs(url: str, count: int) -> list[dict[str, Any]]:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from tests.bench.fleet import grid_boxes

    jobs = [{"bbox": box, "tags": TAGS} for box in grid_boxes(count, size_deg=0.02, origin=(40.0, 40.0))]
    broker = RabbitmqBroker(url=url, middleware=[], confirm_delivery=True)
    send(broker, QUEUE, "enrich", jobs)  # type: ignore[arg-type]
    broker.close()
    return jobs


@pytest.fixture
def rabbit() -> Any:
    """A RabbitMQ server of this test's own: it is restarted, so not the session's."""
    if not rabbitmq.rabbitmq_installed():
        pytest.skip("rabbitmq-server is not installed: run `make servers` (as root) or apt-get install it")
    server = rabbitmq.RabbitServer().start()
    yield server
    server.remove()


# The graceful restart (``rabbitmqctl stop``, a rolling upgrade) in ``make test``; the
# crash (SIGKILL: only confirmed, persistent messages survive) in ``make chaos``.
# Both restarts are soak-sized (make chaos): make test keeps the redelivery scenarios on
# RabbitMQ and the fast pipeline subset.
@pytest.mark.soak
@pytest.mark.parametrize("restart", ["graceful", "hard"])
def test_workers_killed_and_the_broker_restarted_lose_no_job_and_make_no_extra_call(
    chaos: Chaos, rabbit: rabbitmq.RabbitServer, restart: str
) -> None:
    from enrichment_middleware.backends.redis import RedisBackend
    from enrichment_middleware.policy.parking import ParkingLot

    chaos.stub.set_latency(0.15)
    settings = {"broker": "rabbitmq", "rabbitmq_url": rabbit.url, "semaphore_permits": 4}
    # The dramatiq CLI stops its other processes when one dies, and a supervisor starts it
    # again: three one-process fleets, and a fresh one for each killed.
    fleets = [chaos.workers(processes=1, threads=4, **settings) for _ in range(3)]
    jobs = 300
    send_jobs(rabbit.url, jobs)
    kills: list[tuple[int, int]] = []
    restarted_after = 0
    for round_ in range(4):
        eventually(lambda: chaos.stub.stats().in_flight > 0, timeout_s=60, message="a call in flight")
        victim = fleets[round_ % len(fleets)]
        pid = victim.worker_pids()[0]
        in_flight = chaos.stub.stats().in_flight
        victim.kill_worker(pid)
        kills.append((pid, in_flight))
        fleets[round_ % len(fleets)] = chaos.workers(processes=1, threads=4, **settings)
        if round_ == 1:
            # Mid-run, between the kills: every worker's connection drops, their
            # unacknowledged messages go back to the queues.
            restarted_after = chaos.stub.stats().calls
            rabbit.restart(hard=restart == "hard")
        time.sleep(1.0)
    took = eventually(
        lambda: chaos.stored() >= jobs * POIS_PER_JOB, timeout_s=240, message="every job stored"
    )
    backend = RedisBackend.from_url(chaos.redis_url, namespace="enrichment")
    parking = ParkingLot(backend)
    eventually(
        lambda: parking.count() == 0 and in_rooms(backend) == 0 and rabbitmq.settled(rabbit, (QUEUE,)),
        timeout_s=60,
        interval_s=0.5,
        message="nothing parked, queued or held",
    )
    stats = chaos.stub.stats()
    killed_in_flight = sum(n for _, n in kills)
    print(
        f"\nRabbitMQ ({restart} restart after {restarted_after} calls), {len(kills)} kills "
        f"(calls in flight at each: {[n for _, n in kills]}): {stats.calls} calls for {jobs} jobs, "
        f"{chaos.stored()} POIs stored, done {took:.1f}s after the last kill"
    )
    assert chaos.stored() == jobs * POIS_PER_JOB
    assert rabbitmq.dead_letters(rabbit.url, QUEUE) == []
    # At most the calls in flight when a worker was killed are made again (the
    # fleet-wide count at each kill: an upper bound of the victim's own).
    assert jobs <= stats.calls <= jobs + killed_in_flight, (stats.calls, kills)
    assert all(f.proc is not None and f.proc.poll() is None for f in fleets), "a fleet stopped"


# make chaos only (26 s, with a RabbitMQ of its own): its fast counterpart in make test is the
# quota scenario on RabbitMQ (a job deferred to the next window waits parked and runs then,
# tests/features/overpass_enrichment.feature) beside the Retries contract (every wait parked).
@pytest.mark.soak
def test_a_job_deferred_past_consumer_timeout_waits_parked_not_held(chaos: Chaos) -> None:
    """RabbitMQ closes the channel of a consumer that holds a delivery unacknowledged past
    ``consumer_timeout`` (and hands every delivery of that channel back). Dramatiq's delay
    queue holds a delayed message unacknowledged until it is due; the product parks every
    wait in the state backend instead. A job the quota defers for longer than the timeout
    comes back after the window without a channel ever being closed, and one call each."""
    if not rabbitmq.rabbitmq_installed():
        pytest.skip("rabbitmq-server is not installed: run `make servers` (as root) or apt-get install it")
    from enrichment_middleware.backends.redis import RedisBackend
    from enrichment_middleware.policy.parking import ParkingLot

    timeout_ms, window_s = 2000, 8
    server = rabbitmq.RabbitServer(consumer_timeout_ms=timeout_ms).start()
    try:
        fleet = chaos.workers(
            processes=1,
            threads=2,
            broker="rabbitmq",
            rabbitmq_url=server.url,
            quota_requests=1,
            quota_window_s=window_s,
        )
        time.sleep(
            window_s - time.time() % window_s + 0.05
        )  # the start of a window: the second job waits ~8 s
        send_jobs(server.url, 2)
        parking = ParkingLot(RedisBackend.from_url(chaos.redis_url, namespace="enrichment"))
        parked_seen = 0

        def stored_both() -> bool:
            nonlocal parked_seen
            parked_seen = max(parked_seen, parking.count())
            return chaos.stored() >= 2 * POIS_PER_JOB

        eventually(stored_both, timeout_s=4 * window_s, interval_s=0.2, message="both jobs stored")
        eventually(
            lambda: rabbitmq.settled(server, (QUEUE,)), timeout_s=20, interval_s=0.5, message="settled"
        )
        closed = fleet.count("PRECONDITION_FAILED") + fleet.count("acknowledgement on channel")
        print(
            f"\nconsumer_timeout {timeout_ms} ms, a job deferred up to {window_s} s: {closed} channels closed"
        )
        assert closed == 0, fleet.tail()
        assert chaos.stub.stats().calls == 2
        assert rabbitmq.dead_letters(server.url, QUEUE) == []
    finally:
        for fleet_ in chaos.fleets:
            fleet_.stop()
        server.remove()


@pytest.mark.parametrize(
    ("killed_at", "calls"),
    [
        ("fetch.handed_off", 1),  # the answer staged and handed on: the redelivered fetch makes no call
        # Storing its one-chunk answer itself, upserted, not marked stored: the redelivered fetch stores
        # it again from the stage (the same rows), no call.
        ("store.upserted", 1),
        ("fetch.answered", 2),  # the answer in hand, not yet staged: the redelivered fetch calls again
    ],
)
def test_a_redelivered_fetch_calls_again_only_if_its_answer_had_not_landed(
    chaos: Chaos, rabbitmq_server: rabbitmq.RabbitServer, killed_at: str, calls: int
) -> None:
    """A worker killed (SIGKILL, by a failpoint) while it holds the fetch: RabbitMQ hands the
    fetch to the next worker at once, and the stage decides whether it calls again."""
    from tests.support.workers import WorkerProcesses

    rabbitmq_url = rabbitmq_server.url
    rabbitmq.purge(rabbitmq_url, (QUEUE,))
    settings = {"broker": "rabbitmq", "rabbitmq_url": rabbitmq_url}
    dying = WorkerProcesses(
        {**chaos.env(**settings), "FAILPOINTS": f"{killed_at}=kill:1"}, processes=1, threads=1
    )
    chaos.fleets.append(dying.start())
    send_jobs(rabbitmq_url, 1)
    eventually(
        lambda: dying.proc is not None and dying.proc.poll() is not None, timeout_s=30, message="killed"
    )
    assert chaos.stub.stats().calls == 1
    chaos.workers(processes=1, threads=1, **settings)
    eventually(lambda: chaos.stored() >= POIS_PER_JOB, timeout_s=30, message="the job stored")
    eventually(lambda: rabbitmq.settled(rabbitmq_server, (QUEUE,)), timeout_s=20, interval_s=0.5)
    assert chaos.stub.stats().calls == calls
    assert chaos.stored() == POIS_PER_JOB

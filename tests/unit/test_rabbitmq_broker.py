"""BROKER=rabbitmq: the broker built, queue sizes, ``enrichment status`` and errors, on the session's RabbitMQ."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dramatiq
import pytest

from enrichment_actors.queues import QueuesUnreachable, queue_sizes
from enrichment_actors.runtime import make_backend, make_broker
from enrichment_actors.settings import load_settings
from tests.support.rabbitmq import purge
from tests.support.workers import free_port


def message(queue: str) -> dramatiq.Message[object]:
    return dramatiq.Message(queue_name=queue, actor_name="enrich", args=(), kwargs={}, options={})


def test_broker_rabbitmq_confirms_publishes_and_keeps_the_state_in_redis() -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from enrichment_middleware.backends.redis import RedisBackend

    settings = load_settings(
        {
            "BROKER": "rabbitmq",
            "RABBITMQ_URL": "amqp://u:p@mq.example:5673/jobs",
            "REDIS_URL": "redis://r:6380/3",
        }
    )
    broker = make_broker(settings)
    assert isinstance(broker, RabbitmqBroker)
    assert broker.confirm_delivery, (
        "a publish must be confirmed before the message it replaces is acknowledged"
    )
    assert (broker.parameters.host, broker.parameters.port, broker.parameters.virtual_host) == (
        "mq.example",
        5673,
        "jobs",
    )
    backend = make_backend(settings)
    assert isinstance(backend, RedisBackend)
    kwargs = backend.client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("r", 6380, 3)


def test_queue_sizes_on_rabbitmq_count_waiting_and_delayed_messages(rabbitmq_url: str) -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    purge(rabbitmq_url, ("sizes",))
    broker = RabbitmqBroker(url=rabbitmq_url, middleware=[], confirm_delivery=True)
    try:
        broker.declare_queue("sizes")
        assert queue_sizes(broker) == (("sizes", 0),)
        for _ in range(3):
            broker.enqueue(message("sizes"))
        broker.enqueue(message("sizes"), delay=60_000)
        assert queue_sizes(broker) == (("sizes", 4),)
    finally:
        broker.close()
        purge(rabbitmq_url, ("sizes",))


def test_queue_sizes_of_an_unreachable_rabbitmq_say_what_to_check() -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", middleware=[])
    broker.declare_queue("sizes")
    with pytest.raises(QueuesUnreachable, match="RABBITMQ_URL"):
        queue_sizes(broker)


def enrichment(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("enrichment")), *argv],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_status_shows_the_queue_sizes_from_rabbitmq(rabbitmq_url: str, redis_url: str) -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    purge(rabbitmq_url, ("statusq",))
    broker = RabbitmqBroker(url=rabbitmq_url, middleware=[], confirm_delivery=True)
    broker.enqueue(message("statusq"))
    broker.enqueue(message("statusq"))
    broker.close()
    try:
        done = enrichment(
            ["status"],
            {
                "BROKER": "rabbitmq",
                "RABBITMQ_URL": rabbitmq_url,
                "REDIS_URL": redis_url,
                "ENRICH_QUEUE": "statusq",
            },
        )
    finally:
        purge(rabbitmq_url, ("statusq",))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "queue 'statusq'  2 messages (rabbitmq)" in done.stdout


@pytest.mark.parametrize("argv", [["status"], ["enqueue", "--bbox", "48.85,2.29,48.86,2.30"]])
def test_an_unreachable_rabbitmq_is_one_clear_line_without_the_password(
    argv: list[str], redis_url: str
) -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{free_port()}/%2F"
    done = enrichment(argv, {"BROKER": "rabbitmq", "RABBITMQ_URL": url, "REDIS_URL": redis_url})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "RabbitMQ at amqp://guest:***@127.0.0.1:" in lines[0] and "cannot be reached" in lines[0]
    assert "RABBITMQ_URL" in lines[0]
    assert "s3cret" not in done.stdout + done.stderr


def test_the_fleet_gauges_count_the_rabbitmq_queue(
    rabbitmq_server: object, redis_url: str, postgres_url: str, redis_client: object
) -> None:
    """The workers' exposition reads the queue from RabbitMQ and the rest from the state's Redis."""
    from tests.support.rabbitmq import RabbitServer
    from tests.support.scrape import scrape
    from tests.support.workers import WorkerProcesses, eventually

    assert isinstance(rabbitmq_server, RabbitServer)
    url = rabbitmq_server.url
    purge(url, ("gauged",))
    env = {
        "BROKER": "rabbitmq",
        "RABBITMQ_URL": url,
        "REDIS_URL": redis_url,
        "DATABASE_URL": postgres_url,
        "ENRICH_QUEUE": "gauged",
    }
    with WorkerProcesses(env, processes=1, threads=1) as workers:

        def gauge() -> float | None:
            try:
                return scrape(workers.metrics_url).value("enrichment_queue_messages", queue="gauged")
            except OSError:  # the exposition is not listening yet
                return None

        eventually(lambda: gauge() == 0, timeout_s=30, message="the queue gauge")
        assert scrape(workers.metrics_url).value("enrichment_state_backend_up") == 1
    purge(url, ("gauged",))


def test_an_unreachable_rabbitmq_leaves_the_fleet_gauges_of_the_shared_state(redis_url: str) -> None:
    """The broker is down, not Redis: the quota, breaker and permits still read; only the queue sizes go."""
    from enrichment_actors.prometheus import read_fleet
    from enrichment_actors.runtime import build_runtime

    settings = load_settings(
        {
            "BROKER": "rabbitmq",
            "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
            "REDIS_URL": redis_url,
            "OVERPASS_URL": "http://127.0.0.1:9/api/interpreter",
        }
    )
    runtime = build_runtime(settings)
    runtime.broker.declare_queue("enrichment")
    reading = read_fleet(runtime)
    assert reading.queued == ()
    assert reading.quotas and reading.breakers and reading.permits

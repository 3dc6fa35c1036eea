"""What every chaos scenario needs: an emptied Redis and POI table, the stand-in server, job helpers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import psycopg
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from enrichment_actors.stub_overpass import StubOverpass
from tests.bench.fleet import grid_boxes, send, sender
from tests.support.workers import FAST_SETTINGS, WorkerProcesses

QUEUE = "enrichment"
TAGS = ["amenity"]
POIS_PER_JOB = 5


@dataclass
class Chaos:
    """One scenario's servers, fleets and measurements."""

    redis_url: str
    database_url: str
    stub: StubOverpass
    fleets: list[WorkerProcesses] = field(default_factory=list)

    def env(self, **settings: Any) -> dict[str, str]:
        return {
            **FAST_SETTINGS,
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
            "OVERPASS_URL": self.stub.interpreter_url,
            "BROKER": "redis",
            "STATE_BACKEND": "redis",
            "dramatiq_worker_timeout": "100",
            **{name.upper(): str(value) for name, value in settings.items()},
        }

    def workers(self, processes: int = 2, threads: int = 4, **settings: Any) -> WorkerProcesses:
        fleet = WorkerProcesses(self.env(**settings), processes=processes, threads=threads)
        self.fleets.append(fleet)
        return fleet.start()

    def send_jobs(self, count: int, *, origin: tuple[float, float] = (20.0, 20.0)) -> list[dict[str, Any]]:
        jobs = [{"bbox": box, "tags": TAGS} for box in grid_boxes(count, size_deg=0.02, origin=origin)]
        broker = sender(self.redis_url)
        send(broker, QUEUE, "enrich", jobs)
        broker.close()
        return jobs

    def stored(self) -> int:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pois").fetchone()
        return int(row[0]) if row else 0

    def dead_letters(self) -> list[dramatiq.Message[Any]]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            return [dramatiq.Message.decode(raw) for raw in client.hvals(f"dramatiq:{QUEUE}.XQ.msgs")]
        finally:
            client.close()


def reset_servers(redis_url: str, database_url: str) -> None:
    from enrichment_actors.store import PoiStore

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    store = PoiStore(database_url)
    store.ensure_schema()
    store.model.delete().execute()
    store.close()


@pytest.fixture
def chaos(redis_url: str, postgres_url: str) -> Iterator[Chaos]:
    reset_servers(redis_url, postgres_url)
    with StubOverpass(pois_per_box=POIS_PER_JOB) as stub:
        world = Chaos(redis_url, postgres_url, stub)
        yield world
        for fleet in world.fleets:
            fleet.stop()


class Sweeper:
    """Stands in for fleet traffic: runs Dramatiq's queue maintenance on every command.

    Dramatiq's Redis broker hands a dead worker's unacknowledged messages to
    others during "maintenance", which a command triggers with probability
    ``maintenance_chance`` / 1,000,000 (0.1 % by default); a quiet fleet may
    take minutes to get there. This client makes it happen every 100 ms.
    """

    def __init__(self, redis_url: str, heartbeat_timeout_s: float) -> None:
        self.broker = RedisBroker(  # type: ignore[no-untyped-call]
            url=redis_url,
            middleware=[],
            maintenance_chance=1_000_000,
            heartbeat_timeout=int(heartbeat_timeout_s * 1000),
        )

    def sweep(self) -> None:
        for queue in (QUEUE, f"{QUEUE}.DQ"):
            self.broker.do_qsize(queue)

    def close(self) -> None:
        self.broker.close()


def wait_for(predicate: Any, *, timeout_s: float, sweeper: Sweeper | None = None, message: str = "") -> float:
    """Poll until ``predicate()``; returns the seconds it took. Fails the test after ``timeout_s``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {message or predicate}")
        if sweeper is not None:
            sweeper.sweep()
        time.sleep(0.1)
    return time.monotonic() - started

"""What every chaos scenario needs: an emptied Redis and POI table, the stand-in server, job helpers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import psycopg
import pytest
import redis

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

    @property
    def policy(self) -> str:
        """The policy name of the stand-in server's endpoint: the workers' quota, permits and breaker."""
        from enrichment_actors.overpass_endpoints import endpoint_name, policy_name

        return policy_name(endpoint_name(self.stub.interpreter_url))

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

    def replace_stub(self, **options: Any) -> StubOverpass:
        """A new stand-in server with ``options`` (before the workers start: they read its URL)."""
        self.stub.stop()
        self.stub = StubOverpass(pois_per_box=POIS_PER_JOB, **options).start()
        return self.stub

    def workers(
        self, processes: int = 2, threads: int = 4, *, modules: Sequence[str] = (), **settings: Any
    ) -> WorkerProcesses:
        """A started fleet with ``settings`` (lower-case setting names) and extra ``modules``."""
        fleet = WorkerProcesses(self.env(**settings), modules=modules, processes=processes, threads=threads)
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
    world = Chaos(redis_url, postgres_url, StubOverpass(pois_per_box=POIS_PER_JOB).start())
    yield world
    for fleet in world.fleets:
        fleet.stop()
    world.stub.stop()

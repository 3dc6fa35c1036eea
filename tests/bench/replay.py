"""The app-traffic replay (issue 10): repeated map views of a sparse area, with and without the ledger.

2,000 ``enrich`` jobs, each a map view inside one of 100 tiles, the tile of
each drawn from a Zipf-like distribution (weight ``1 / rank**1.1``, seeded),
sent in 10 bursts over about 5 s to a 2-process fleet. With the coverage
ledger, a tile is fetched at most once in its freshness window: the rest of
its jobs end ``fresh`` or ``coalesced``. Without it, every job is a call.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import redis

from enrichment_actors.coverage.tiles import Tile, tile_units
from enrichment_actors.stub_overpass import StubOverpass
from tests.support.workers import WorkerProcesses, eventually

from .fleet import send, sender
from .throughput import Environment, product_env, reset, stored

TILE_DEG = 0.02
ORIGIN_ROW, ORIGIN_COL = 6000, 9500  # about 30 N, 10 E
QUEUE = "enrichment"


@dataclass(frozen=True)
class ReplayResult:
    jobs: int
    distinct_tiles: int
    calls: int
    pois: int
    elapsed_s: float
    outcomes: dict[str, int]

    @property
    def calls_per_tile(self) -> float:
        return self.calls / self.distinct_tiles

    @property
    def pois_per_call(self) -> float:
        return self.pois / self.calls if self.calls else 0.0


def traffic(jobs: int, tiles: int, *, seed: int = 10) -> list[tuple[Tile, dict[str, float]]]:
    """``jobs`` map views: a box strictly inside a tile drawn by rank with weight ``1 / rank**1.1``."""
    rng = random.Random(seed)
    units = tile_units(TILE_DEG)
    grid = [Tile(units, ORIGIN_ROW + i // 10, ORIGIN_COL + i % 10) for i in range(tiles)]
    weights = [1 / (rank + 1) ** 1.1 for rank in range(tiles)]
    views = []
    for tile in rng.choices(grid, weights, k=jobs):
        box = tile.bbox
        # A view of a quarter to a half of the tile, somewhere inside it.
        side = TILE_DEG * rng.uniform(0.25, 0.5)
        south = round(box.south + rng.uniform(0.001, TILE_DEG - side - 0.001), 6)
        west = round(box.west + rng.uniform(0.001, TILE_DEG - side - 0.001), 6)
        view = {"south": south, "west": west, "north": round(south + side, 6), "east": round(west + side, 6)}
        views.append((tile, view))
    return views


def _settled(client: redis.Redis) -> bool:
    """Every job has ended: nothing queued, delayed, unacknowledged or parked."""
    busy = sum(int(client.hlen(key)) for key in client.scan_iter("dramatiq:*.msgs"))
    parked = sum(int(client.zcard(key)) for key in client.scan_iter("enrichment:park-due:*"))
    return busy == 0 and parked == 0


def replay(env: Environment, *, coverage: bool, jobs: int = 2000, tiles: int = 100) -> ReplayResult:
    views = traffic(jobs, tiles)
    distinct = len({tile for tile, _ in views})
    reset(env)
    with StubOverpass(latency_s=0.05) as stub:
        fleet_env = product_env(
            env,
            stub,
            enrich_coverage="true" if coverage else "false",
            enrich_tile_deg=TILE_DEG,
            semaphore_permits=8,
            semaphore_wait_s=15,
        )
        with WorkerProcesses(fleet_env, processes=2, threads=8, defaults={}) as fleet:
            if coverage:
                # The ledger's tables, so the first jobs do not race to create them.
                from enrichment_actors.store import PoiStore

                PoiStore(env.database_url).ensure_schema()
            broker = sender(env.redis_url)
            client = redis.Redis.from_url(env.redis_url)
            started = time.monotonic()
            for burst in range(10):
                send(broker, QUEUE, "enrich", ({"bbox": v, "tags": ["amenity"]} for _, v in views[burst::10]))
                time.sleep(0.5)
            eventually(
                lambda: _settled(client),
                timeout_s=600,
                interval_s=0.5,
                message=f"the replay's jobs to end\n{fleet.tail()}",
            )
            elapsed = time.monotonic() - started
            outcomes = {
                "fresh": fleet.count("no call (fresh)"),
                "coalesced": fleet.count("no call (coalesced)"),
            }
            client.close()
            broker.close()
        calls = stub.stats().calls
    return ReplayResult(jobs, distinct, calls, stored(env), elapsed, outcomes)


@dataclass(frozen=True)
class RefreshBytes:
    pois: int
    changed: int
    whole_bytes: int
    diff_bytes: int


def refresh_bytes(*, changed: int = 3) -> RefreshBytes:
    """The body of a whole refetch of one tile against the augmented diff of a refresh, ``changed`` POIs edited.

    One deleted, one retagged out of the tag set, the rest given a new name.
    """
    from enrichment_actors.coverage.cover import TileCover
    from enrichment_actors.jobs import validate_job
    from enrichment_actors.overpass_adiff import adiff_query, read_adiff
    from enrichment_actors.overpass_client import OverpassClient
    from enrichment_actors.stub_overpass.pages import OSM_BASE

    tile = Tile(tile_units(TILE_DEG), 6942, 9117)  # 48.84 N, 2.34 E
    job = validate_job(tile.bbox.as_dict(), ["amenity", "shop"])
    query = TileCover((tile,), job.tags, owner="bench").query(timeout_s=25, maxsize_bytes=1 << 26)
    with StubOverpass() as stub:
        client = OverpassClient(stub.interpreter_url, user_agent="bench", http_timeout_s=30)
        whole = client.fetch(query)
        pois = whole.parsed.pois
        first, second, *others = [(p.element_type, p.osm_id, p.tags) for p in pois[:changed]]
        stub.edit_data(
            removed=[first[:2]],
            retagged={
                second[:2]: {"building": "yes"},
                **{(kind, osm_id): {**tags, "name": "Renamed"} for kind, osm_id, tags in others},
            },
            osm_base="2025-01-08T00:00:00Z",
        )
        diff = client.fetch(
            adiff_query(query, OSM_BASE), read=lambda status, body: read_adiff(status, body, job.tags)
        )
    assert len(diff.parsed.gone) == 2 and len(diff.parsed.pois) == changed - 2
    return RefreshBytes(len(pois), changed, whole.response_bytes, diff.response_bytes)

"""Upsert rate: POIs per second through ``PoiStore.upsert`` against ``COPY`` of the same rows.

Both write the same rows into the same, emptied ``pois`` table of a real
PostgreSQL, one job's POIs (``batch`` rows) per transaction, as the
``store_pois`` actor does. ``COPY`` is the fastest way PostgreSQL takes
rows at all, so the ratio says how much of that our idempotent upsert keeps.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass

import psycopg

from enrichment_actors.store import PoiStore
from enrichment_actors.stub_overpass import StubOverpass


@dataclass
class StorageResult:
    rows: int
    batch: int
    upsert_s: float
    update_s: float
    copy_s: float

    @property
    def upsert_per_s(self) -> float:
        return self.rows / self.upsert_s

    @property
    def update_per_s(self) -> float:
        return self.rows / self.update_s

    @property
    def copy_per_s(self) -> float:
        return self.rows / self.copy_s


def sample_pois(count: int) -> list[list[object]]:
    """``count`` POIs as the stand-in server (and so the parser) produces them: realistic tags."""
    from enrichment_actors.jobs import build_query, validate_job
    from enrichment_actors.overpass_client import OverpassClient

    pois: list[list[object]] = []
    with StubOverpass() as stub:
        client = OverpassClient(stub.interpreter_url, user_agent="bench/storage", http_timeout_s=60)
        south = 40.0
        while len(pois) < count:
            box = {"south": south, "west": 5.0, "north": south + 0.4, "east": 5.5}
            query = build_query(validate_job(box, None, limits=None), timeout_s=60, maxsize_bytes=1 << 28)
            pois.extend(list(p) for p in client.fetch(query).parsed.pois)
            south += 0.5
    return pois[:count]


def _truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pois")
        conn.execute("VACUUM ANALYZE pois")


def measure(database_url: str, dsn: str, *, rows: int = 50_000, batch: int = 500) -> StorageResult:
    """Time upserts into an empty table, upserts over existing rows, and COPY into an empty table."""
    pois = sample_pois(rows)
    batches = [pois[i : i + batch] for i in range(0, len(pois), batch)]
    store = PoiStore(database_url)
    store.ensure_schema()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)

    _truncate(dsn)
    started = time.perf_counter()
    for chunk in batches:
        store.upsert(chunk, refreshed_at=now)
    upsert_s = time.perf_counter() - started

    # The same POIs again: every row is a conflict and an update (a job run twice).
    started = time.perf_counter()
    for chunk in batches:
        store.upsert(chunk, refreshed_at=now)
    update_s = time.perf_counter() - started
    store.close()

    _truncate(dsn)
    columns = "element_type, osm_id, lat, lon, tags, refreshed_at"
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        for chunk in batches:
            with (
                conn.transaction(),
                conn.cursor() as cursor,
                cursor.copy(f"COPY pois ({columns}) FROM STDIN") as copy,
            ):
                for kind, osm_id, lat, lon, tags in chunk:
                    copy.write_row(
                        (kind, osm_id, lat, lon, json.dumps(tags, ensure_ascii=False, sort_keys=True), now)
                    )
        copy_s = time.perf_counter() - started
        stored = conn.execute("SELECT count(*) FROM pois").fetchone()
    if stored is None or stored[0] != len(pois):
        raise RuntimeError(f"COPY stored {stored} rows, expected {len(pois)}")
    _truncate(dsn)
    return StorageResult(rows=len(pois), batch=batch, upsert_s=upsert_s, update_s=update_s, copy_s=copy_s)

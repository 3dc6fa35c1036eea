"""The POI store: idempotent upserts of POIs into PostgreSQL (or SQLite) with peewee.

Table ``pois`` is keyed by (``element_type``, ``osm_id``): the same numeric id
can be a node and a way. One job's POIs go in one transaction, in batches,
with ``INSERT ... ON CONFLICT DO UPDATE``, so running a job twice, or a
redelivered message, leaves the same rows. The schema is created on first
use if it is missing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import peewee
from playhouse import db_url

#: One POI as the parser produces it: (element_type, osm_id, lat, lon, tags).
PoiRow = tuple[str, int, float, float, dict[str, str]]

_BATCH = 500


class PersistenceError(Exception):
    """The database did not take the POIs. Transient: the store step is retried, Overpass is not called again."""

    outcome = "persistence_error"


class TagsField(peewee.Field):
    """Tags as JSONB on PostgreSQL and JSON text on SQLite (the column type is set per database)."""

    field_type = "POI_TAGS"

    def db_value(self, value: dict[str, str] | None) -> str:
        return json.dumps(value or {}, ensure_ascii=False, separators=(",", ":"), sort_keys=True)

    def python_value(self, value: Any) -> dict[str, str]:
        # psycopg2 already decodes JSONB; SQLite hands back the text.
        return json.loads(value) if isinstance(value, str | bytes) else dict(value or {})


class PoiModel(peewee.Model):
    element_type = peewee.CharField(max_length=8)
    osm_id = peewee.BigIntegerField()
    lat = peewee.DoubleField()
    lon = peewee.DoubleField()
    tags = TagsField()
    refreshed_at = peewee.DateTimeField(index=True)

    class Meta:
        table_name = "pois"
        primary_key = peewee.CompositeKey("element_type", "osm_id")


def _model_bound_to(database: peewee.Database) -> type[PoiModel]:
    """PoiModel bound to one database: each store has its own, so stores never share a binding."""
    meta = type("Meta", (), {"database": database, "table_name": "pois"})
    return type("BoundPoiModel", (PoiModel,), {"Meta": meta, "__module__": __name__})


def open_database(url: str) -> peewee.Database:
    """A peewee database for ``url`` (``postgresql://...`` or ``sqlite:///path``)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    database: peewee.Database
    if url.startswith("postgresql"):
        database = db_url.connect(url, field_types={"POI_TAGS": "JSONB"})
        return database
    database = db_url.connect(
        url,
        field_types={"POI_TAGS": "TEXT"},
        pragmas={"journal_mode": "wal", "busy_timeout": 10_000, "synchronous": "normal"},
    )
    return database


class PoiStore:
    """Stores POIs; safe to share between the threads of a worker process.

    Examples:
      >>> store = PoiStore("sqlite:///pois.sqlite3")
      >>> store.upsert([("node", 1, 48.85, 2.29, {"amenity": "cafe"})])
      1

    Parameters:
      url: the database URL (``DATABASE_URL``).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.database = open_database(url)
        self.model = _model_bound_to(self.database)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def ensure_schema(self) -> None:
        """Create table ``pois`` when it is missing (idempotent)."""
        if self._schema_ready:
            return
        with self._schema_lock:
            self.database.create_tables([self.model], safe=True)
            self._schema_ready = True

    def upsert(self, pois: Iterable[Sequence[Any]], *, refreshed_at: dt.datetime | None = None) -> int:
        """Insert or update ``pois`` in one transaction; returns how many rows were written.

        Raises:
          PersistenceError: the database is unreachable or refused the rows.
        """
        now = refreshed_at or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        rows = [
            {
                "element_type": p[0],
                "osm_id": p[1],
                "lat": p[2],
                "lon": p[3],
                "tags": p[4],
                "refreshed_at": now,
            }
            for p in pois
        ]
        try:
            self.ensure_schema()
            model = self.model
            with self.database.atomic():
                for start in range(0, len(rows), _BATCH):
                    model.insert_many(rows[start : start + _BATCH]).on_conflict(
                        conflict_target=[model.element_type, model.osm_id],
                        preserve=[model.lat, model.lon, model.tags, model.refreshed_at],
                    ).execute()
        except peewee.PeeweeException as exc:
            self._drop_connection()
            raise PersistenceError(
                f"Could not store {len(rows)} POIs in {self._safe_url()}: {exc}. "
                "The fetched POIs are kept in the store message and retried; check DATABASE_URL and the server."
            ) from exc
        return len(rows)

    def count(self) -> int:
        """How many POIs are stored."""
        self.ensure_schema()
        return int(self.model.select().count())

    def fetch_all(self) -> list[PoiRow]:
        """Every stored POI, ordered by key (tests, demo)."""
        self.ensure_schema()
        query = self.model.select().order_by(self.model.element_type, self.model.osm_id)
        return [(p.element_type, p.osm_id, p.lat, p.lon, p.tags) for p in query]

    def close(self) -> None:
        self._drop_connection()

    def _drop_connection(self) -> None:
        # A failed connection (say the server restarted) must not be reused by
        # this thread's next attempt.
        with contextlib.suppress(peewee.PeeweeException):
            self.database.close()

    def _safe_url(self) -> str:
        head, _, tail = self.url.rpartition("@")
        return f"{head.split('://')[0]}://...@{tail}" if head else self.url

"""The POI store: idempotent upserts of POIs into PostgreSQL (or SQLite) with peewee.

Table ``pois`` is keyed by (``element_type``, ``osm_id``): the same numeric id
can be a node and a way. One job's POIs go in one transaction with
``INSERT ... ON CONFLICT DO UPDATE`` (on PostgreSQL fed by ``COPY`` through
a temporary table, which is four times faster than a multi-row INSERT), so
running a job twice, or a redelivered message, leaves the same rows. The schema is created on first
use if it is missing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import peewee
from playhouse import db_url

from enrichment_middleware.failpoints import failpoint
from enrichment_middleware.redaction import redact, redact_url

from .coverage.ledger import Answer, Ledger
from .store_errors import DatabaseUnreachable, PersistenceError, is_outage, must_run_again, sqlstate

#: One POI as the parser produces it: (element_type, osm_id, lat, lon, tags).
PoiRow = tuple[str, int, float, float, dict[str, str]]

logger = logging.getLogger(__name__)

_BATCH = 500
T = TypeVar("T")

_COLUMNS = "element_type, osm_id, lat, lon, tags, refreshed_at, osm_base, version"
#: Rows of one upsert on their way in; private to the connection, emptied at commit.
_STAGING = "pois_incoming"
_CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} (LIKE pois INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
# DISTINCT ON: a key twice in one batch would make ON CONFLICT touch a row twice (an error). ORDER BY:
# rows are locked in key order, as the ledger's finish locks them (no deadlock between the two).
_MERGE_STAGING = (
    f"INSERT INTO pois ({_COLUMNS}) "
    f"SELECT DISTINCT ON (element_type, osm_id) {_COLUMNS} FROM {_STAGING} ORDER BY element_type, osm_id "
    "ON CONFLICT (element_type, osm_id) DO UPDATE SET lat = EXCLUDED.lat, lon = EXCLUDED.lon, "
    "tags = EXCLUDED.tags, refreshed_at = EXCLUDED.refreshed_at, osm_base = EXCLUDED.osm_base, "
    "version = EXCLUDED.version "
    # An older answer never overwrites a newer one's row (the row is locked all the same).
    "WHERE pois.version IS NULL OR EXCLUDED.version IS NULL OR pois.version <= EXCLUDED.version"
)
_TRANSACTION_ATTEMPTS = 5
#: The advisory lock that serialises schema changes between processes (any number no other lock uses).
_SCHEMA_LOCK = 0x706F69735F736368  # "pois_sch"
#: Columns added since a table's first release: (table, column, SQL type), added in place when missing.
_ADDED_COLUMNS = (
    ("pois", "osm_base", "VARCHAR(32)"),
    ("pois", "version", "VARCHAR(64)"),
    ("coverage", "version", "VARCHAR(64)"),
    ("coverage_elements", "version", "VARCHAR(64)"),
)
#: COPY's text format: backslash, tab, newline and carriage return are escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


#: Maps driver exceptions to peewee's (peewee's own context manager, not exported).
_PEEWEE_ERRORS: Any = vars(peewee)["__exception_wrapper__"]

_TAGS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _encode_tags(tags: dict[str, str] | None) -> str:
    """Tags as stored: compact JSON with sorted keys."""
    return _TAGS_ENCODER.encode(tags or {})


def _copy_text(value: Any) -> str:
    """One field in COPY's text format: NULL as \\N, the four special characters escaped."""
    if value is None:
        return "\\N"
    text = str(value)
    return text.translate(_COPY_ESCAPES) if isinstance(value, str) else text


class TagsField(peewee.Field):
    """Tags as JSONB on PostgreSQL and JSON text on SQLite (the column type is set per database)."""

    field_type = "POI_TAGS"

    def db_value(self, value: dict[str, str] | None) -> str:
        return _encode_tags(value)

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
    #: ``osm3s.timestamp_osm_base`` of the answer that wrote the row (ISO 8601, so it sorts as text).
    osm_base = peewee.CharField(max_length=32, null=True)
    #: The :attr:`~.coverage.ledger.Answer.version` of that answer: an older one never overwrites the row.
    version = peewee.CharField(max_length=64, null=True)

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
        self.ledger = Ledger(self.database, self.model)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def ensure_schema(self) -> None:
        """Create tables ``pois``, ``coverage`` and ``coverage_elements`` when missing; upgrade an older
        ``pois`` in place (idempotent)."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            with self.database.atomic():
                database: Any = self.database
                if isinstance(self.database, peewee.PostgresqlDatabase):
                    # Every worker process starts by this: one at a time, or two CREATE TABLE IF NOT
                    # EXISTS (or two ALTERs) race and the loser fails. The next finds the tables made.
                    database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                self.database.create_tables([self.model], safe=True)
                self.ledger.create_tables()
                for table, column, sql_type in _ADDED_COLUMNS:
                    # NULL for the rows an older release wrote: they count as older than any answer.
                    if column not in {c.name for c in self.database.get_columns(table)}:
                        database.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
            self._schema_ready = True

    def upsert(
        self,
        pois: Iterable[Sequence[Any]],
        *,
        refreshed_at: dt.datetime | None = None,
        answer: Answer | None = None,
        members: Mapping[str, Iterable[tuple[str, int]]] | None = None,
    ) -> int:
        """Insert or update ``pois`` in one transaction; returns how many rows were written.

        With ``answer``, the rows carry its ``timestamp_osm_base`` (a row a
        newer answer wrote is left as it is) and ``members`` (which elements
        each tile returned) goes into the coverage ledger in the same transaction.

        Raises:
          DatabaseUnreachable: the database cannot be reached (an outage: wait for it).
          PersistenceError: the database refused the rows.
        """
        now = refreshed_at or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        osm_base = answer.osm_base if answer is not None else None
        version = answer.version if answer is not None else None
        pois = list(pois)

        def work() -> None:
            rows, kept = pois, None
            if answer is not None and members is not None:
                rows, kept = self.ledger.current(answer, members, pois)
            if isinstance(self.database, peewee.PostgresqlDatabase):
                self._copy_and_merge(rows, now, osm_base, version)
            else:
                self._insert_many(rows, now, osm_base, version)
            if answer is not None and kept is not None:
                self.ledger.note_elements(answer, kept)
            failpoint("store.chunk_written")

        self._in_transaction(work, f"store {len(pois)} POIs", fetched=True)
        return len(pois)

    def finish_answer(self, answer: Answer, *, gone: Sequence[tuple[str, int]] = ()) -> int:
        """Every chunk of ``answer`` is stored: update the ledger, delete what left; POIs deleted."""
        return self._in_transaction(
            lambda: self.ledger.finish(answer, gone=gone), "finish an answer", fetched=True
        )

    def tile_bases(self, tagset: str, tiles: Sequence[str]) -> dict[str, str | None]:
        """The ``timestamp_osm_base`` each of ``tiles`` was last fetched at (those the ledger holds)."""
        return self._in_transaction(lambda: self.ledger.bases(tagset, tiles), "read the coverage")

    def fresh_tiles(self, tagset: str, tiles: Sequence[str], *, max_age_s: float) -> set[str]:
        """Those of ``tiles`` fetched for ``tagset`` at most ``max_age_s`` ago."""
        since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=max_age_s)
        return self._in_transaction(
            lambda: self.ledger.fresh_tiles(tagset, tiles, since), "read the coverage"
        )

    def _transaction(self) -> Any:
        """A transaction; on SQLite one that takes the write lock at once.

        A deferred SQLite transaction that reads and then writes fails with
        "database is locked" when another writer got in between, whatever the
        busy timeout: an immediate one waits its turn.
        """
        if isinstance(self.database, peewee.SqliteDatabase):
            return self.database.atomic(lock_type="IMMEDIATE")
        return self.database.atomic()

    def _in_transaction(self, work: Callable[[], T], what: str, *, fetched: bool = False) -> T:
        """``work()`` in one transaction; a database error becomes a :class:`PersistenceError` without secrets.

        ``fetched``: the work stores what a call fetched (then the message says it is kept staged).
        """
        try:
            self.ensure_schema()
            for attempt in range(1, _TRANSACTION_ATTEMPTS + 1):
                try:
                    with self._transaction():
                        return work()
                except Exception as exc:
                    # (peewee leaves the driver's deadlock and serialization errors unwrapped.)
                    if not must_run_again(exc):
                        raise
                    if attempt == _TRANSACTION_ATTEMPTS:
                        raise peewee.OperationalError(exc) from exc
                    logger.info("Transaction to %s aborted (%s); running it again.", what, sqlstate(exc))
                    time.sleep(random.uniform(0, 0.01 * attempt))
            raise AssertionError("unreachable")
        except peewee.PeeweeException as exc:
            self._drop_connection()
            # The message is logged and kept in the message's last_error on every
            # retry: it must not carry the password, nor may the chained cause.
            cause = str(exc).strip()
            reason = redact(cause, self.url)
            where = f"Could not {what} in {redact_url(self.url)}: {reason}."
            error: PersistenceError
            if isinstance(self.database, peewee.PostgresqlDatabase) and is_outage(exc):
                error = DatabaseUnreachable(
                    f"{where} PostgreSQL is unreachable: check that the server is up and that DATABASE_URL "
                    "points at it."
                )
            else:
                then = (
                    "The fetched POIs are kept staged and retried"
                    if fetched
                    else "Nothing was fetched: the job is retried"
                )
                error = PersistenceError(f"{where} {then}; check DATABASE_URL and the server.")
            raise error from (exc if reason == cause else None)

    def _insert_many(
        self, pois: list[Sequence[Any]], now: dt.datetime, osm_base: str | None, version: str | None
    ) -> None:
        model = self.model
        rows = [
            {
                "element_type": p[0],
                "osm_id": p[1],
                "lat": p[2],
                "lon": p[3],
                "tags": p[4],
                "refreshed_at": now,
                "osm_base": osm_base,
                "version": version,
            }
            for p in pois
        ]
        incoming = peewee.EXCLUDED.version
        for start in range(0, len(rows), _BATCH):
            model.insert_many(rows[start : start + _BATCH]).on_conflict(
                conflict_target=[model.element_type, model.osm_id],
                preserve=[
                    model.lat,
                    model.lon,
                    model.tags,
                    model.refreshed_at,
                    model.osm_base,
                    model.version,
                ],
                # An older answer never overwrites a newer one's row.
                where=(model.version.is_null() | incoming.is_null() | (model.version <= incoming)),
            ).execute()

    def _copy_and_merge(
        self, pois: list[Sequence[Any]], now: dt.datetime, osm_base: str | None, version: str | None
    ) -> None:
        """PostgreSQL: COPY the rows into a session-local staging table, then one INSERT ... ON CONFLICT.

        Building a multi-row INSERT in Python (peewee) costs four times what
        the database spends on it; COPY hands the rows over at the server's pace.
        """
        lines = io.StringIO()
        write = lines.write
        refreshed = f"\t{now.isoformat(' ')}\t{_copy_text(osm_base)}\t{_copy_text(version)}\n"
        for kind, osm_id, lat, lon, tags in pois:
            encoded = _encode_tags(tags)
            if "\\" in encoded:
                encoded = encoded.translate(_COPY_ESCAPES)
            write(
                f"{_copy_text(kind)}\t{_copy_text(osm_id)}\t{_copy_text(lat)}\t{_copy_text(lon)}\t"
                f"{encoded}{refreshed}"
            )
        lines.seek(0)
        database: Any = self.database
        database.execute_sql(_CREATE_STAGING)
        # The raw cursor's errors become peewee's, as execute_sql's do.
        with _PEEWEE_ERRORS:
            cursor = database.connection().cursor()
            try:
                cursor.copy_expert(f"COPY {_STAGING} ({_COLUMNS}) FROM STDIN", lines)
            finally:
                cursor.close()
        database.execute_sql(_MERGE_STAGING)

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


__all__ = [
    "DatabaseUnreachable",
    "PersistenceError",
    "PoiModel",
    "PoiRow",
    "PoiStore",
    "TagsField",
    "open_database",
]

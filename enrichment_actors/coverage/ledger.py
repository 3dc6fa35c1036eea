"""The coverage ledger: what each tile and tag set last returned, when, and what it cost.

Two tables beside ``pois``, created with it (PostgreSQL and SQLite):

- ``coverage``: one row per (tile, tag set): when it was last fetched, the
  ``osm3s.timestamp_osm_base`` of that answer, its outcome, how many POIs it
  held, the calls spent on it (a call over several tiles counts a share in
  each) and which answer (stage) wrote it;
- ``coverage_elements``: which elements each (tile, tag set) last returned,
  and from which answer. A POI can belong to several tiles and tag sets; it
  leaves ``pois`` only when no row here names it any more.

An answer lands in chunks, out of order, on different workers: each chunk
writes its elements' rows (in the transaction of its upsert), and the worker
that stores the last chunk *finishes* the answer: the rows of its tiles that
an older answer wrote and this one did not are the elements gone upstream;
they are removed, and so are their POIs that no other tile or tag set holds.
A partial or failed answer never finishes, so it deletes nothing.

Answers are ordered by their *version* (:attr:`Answer.version`): the
``timestamp_osm_base`` of their data, then the time they were fetched. An
answer older than what a tile holds writes nothing to it, nor to a row a
newer answer wrote. docs/architecture.md, "The deletion rule", says why
the locks below make the rule hold under any interleaving of transactions:

1. a chunk takes its tiles' locks *shared*, a finish *exclusive* (PostgreSQL
   advisory locks, in key order): a tile's rows do not change under a finish;
2. both then lock the ``pois`` rows they touch, in key order (the chunk by
   its upsert, the finish by ``SELECT ... FOR UPDATE``), *before* writing or
   deleting ``coverage_elements`` rows of those elements;
3. a finish asks "does anyone else hold it?" in a statement after it holds
   the row lock: every writer of a holder of that element has committed by
   then, or will write its ``pois`` row again after this one commits.

On SQLite one writer runs at a time (``BEGIN IMMEDIATE``): no locks needed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import peewee

from enrichment_middleware.failpoints import failpoint

logger = logging.getLogger(__name__)

_BATCH = 400
#: The width of the ``osm_base`` columns; a longer timestamp is not one.
OSM_BASE_MAX = 32
#: The width of the ``version`` columns: a timestamp, "|", a fetch time with microseconds.
VERSION_MAX = 64
_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"
#: The fetch time of an answer that has none (staged by a release before fetch times): older than any.
_EARLIEST = "0001-01-01T00:00:00.000000Z"


def read_osm_base(raw: object) -> tuple[str | None, bool]:
    """``timestamp_osm_base`` as the ledger keeps it, and whether it was unusable.

    One rule per odd value: empty or missing means a server without
    replication (None, not unusable); a time without a zone is UTC; any
    readable time becomes ``YYYY-MM-DDTHH:MM:SSZ`` (so timestamps sort as
    text); anything else, or longer than the column, is None and unusable.

    Examples:
      >>> read_osm_base("2026-12-01T10:00:00Z")
      ('2026-12-01T10:00:00Z', False)
      >>> read_osm_base("2026-12-01T10:00:00")
      ('2026-12-01T10:00:00Z', False)
      >>> read_osm_base("2026-12-01T11:00:00+01:00")
      ('2026-12-01T10:00:00Z', False)
      >>> read_osm_base("")
      (None, False)
      >>> read_osm_base("yesterday")
      (None, True)
    """
    if raw is None or raw == "":
        return None, False
    if not isinstance(raw, str) or len(raw) > OSM_BASE_MAX:
        return None, True
    try:
        when = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        return None, True
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime(_TIMESTAMP), False


def fetch_time(when: dt.datetime | None = None) -> str:
    """A fetch time as answers carry it: UTC with microseconds, sortable as text."""
    when = when or dt.datetime.now(dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tile_lock_key(tagset: str, tile: str) -> int:
    """The PostgreSQL advisory lock (a signed 64-bit number) of one tile and tag set."""
    digest = hashlib.blake2b(f"coverage\n{tagset}\n{tile}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class CoverageModel(peewee.Model):
    tile = peewee.CharField(max_length=40)
    tagset = peewee.CharField(max_length=16)
    tags = peewee.TextField()
    fetched_at = peewee.DateTimeField(index=True)
    osm_base = peewee.CharField(max_length=32, null=True)
    outcome = peewee.CharField(max_length=32)
    pois = peewee.IntegerField()
    calls = peewee.DoubleField()
    answer = peewee.CharField(max_length=80)
    #: :attr:`Answer.version` of the answer that wrote the row (NULL: written by an older release).
    version = peewee.CharField(max_length=VERSION_MAX, null=True)

    class Meta:
        table_name = "coverage"
        primary_key = peewee.CompositeKey("tile", "tagset")


class CoverageElementModel(peewee.Model):
    tile = peewee.CharField(max_length=40)
    tagset = peewee.CharField(max_length=16)
    element_type = peewee.CharField(max_length=8)
    osm_id = peewee.BigIntegerField()
    answer = peewee.CharField(max_length=80)
    osm_base = peewee.CharField(max_length=32, null=True)
    version = peewee.CharField(max_length=VERSION_MAX, null=True)

    class Meta:
        table_name = "coverage_elements"
        primary_key = peewee.CompositeKey("tile", "tagset", "element_type", "osm_id")
        indexes = ((("element_type", "osm_id"), False),)


@dataclass(frozen=True)
class Answer:
    """One fetched answer as the ledger knows it: its tiles, tag set, timestamp and name."""

    key: str
    tagset: str
    tags: tuple[str, ...]
    tiles: tuple[str, ...]
    osm_base: str | None
    calls: float = 1.0
    #: The leader whose tile claims the answer gives back once it has landed.
    owner: str | None = None
    #: An augmented diff: what it does not name is unchanged (only ``gone`` elements leave).
    diff: bool = False
    #: When it was fetched (:func:`fetch_time`): orders answers of one ``osm_base``, or of none.
    fetched_at: str = ""
    #: Elements the answer named but the parser dropped (unusable position...): their rows are kept.
    kept: tuple[tuple[str, int], ...] = ()

    @property
    def version(self) -> str:
        """What orders answers, as text: the data's timestamp, then the fetch time.

        Without a ``timestamp_osm_base`` (a server without replication) the
        fetch time stands for it: the data is no newer than the moment it
        was fetched. The answer with the greater version is the newer one;
        of two answers of the same timestamp, the one fetched later.
        """
        # Both times in one form, with microseconds: "10:00:00Z" would sort after "10:00:00.5Z". An
        # answer staged by an older release has no fetch time: the earliest, never "" (which sorts last).
        fetched = self.fetched_at or _EARLIEST
        base = self.osm_base or fetched
        if base.endswith("Z") and "." not in base:
            base = base[:-1] + ".000000Z"
        return f"{base}|{fetched}"

    def as_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "diff": self.diff,
            "fetched_at": self.fetched_at,
            "kept": [list(key) for key in self.kept],
            "key": self.key,
            "tagset": self.tagset,
            "tags": list(self.tags),
            "tiles": list(self.tiles),
            "osm_base": self.osm_base,
            "calls": self.calls,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Answer:
        return cls(
            key=str(data["key"]),
            tagset=str(data["tagset"]),
            tags=tuple(data["tags"]),
            tiles=tuple(data["tiles"]),
            # Staged by an older release, it may not be normalised yet.
            osm_base=read_osm_base(data.get("osm_base"))[0],
            calls=float(data.get("calls", 1.0)),
            owner=data.get("owner"),
            diff=bool(data.get("diff", False)),
            fetched_at=str(data.get("fetched_at") or ""),
            kept=tuple((str(kind), int(osm_id)) for kind, osm_id in data.get("kept") or ()),
        )


@dataclass(frozen=True)
class TileCoverage:
    """One row of ``coverage``, for ``enrichment coverage`` and ``enrichment refresh``."""

    tile: str
    tagset: str
    tags: tuple[str, ...]
    fetched_at: dt.datetime
    osm_base: str | None
    outcome: str
    pois: int
    calls: float


class Ledger:
    """The ledger's tables in one database (the store's); every method is one transaction.

    Parameters:
      database: the peewee database of the :class:`~enrichment_actors.store.PoiStore`.
      pois: the store's bound POI model (deletions remove its rows).
    """

    def __init__(self, database: peewee.Database, pois: type[peewee.Model]) -> None:
        self.database = database
        self.pois = pois
        self.coverage = _bind(CoverageModel, database)
        self.elements = _bind(CoverageElementModel, database)

    def create_tables(self) -> None:
        self.database.create_tables([self.coverage, self.elements], safe=True)

    def fresh_tiles(self, tagset: str, tiles: Sequence[str], since: dt.datetime) -> set[str]:
        """Those of ``tiles`` fetched for ``tagset`` at or after ``since``."""
        fresh: set[str] = set()
        model = self.coverage
        for start in range(0, len(tiles), _BATCH):
            query = model.select(model.tile).where(
                (model.tagset == tagset)
                & model.tile.in_(list(tiles[start : start + _BATCH]))
                & (model.fetched_at >= since)
            )
            fresh.update(row.tile for row in query)
        return fresh

    @property
    def _postgres(self) -> bool:
        return isinstance(self.database, peewee.PostgresqlDatabase)

    def lock_tiles(self, tagset: str, tiles: Iterable[str], *, exclusive: bool) -> None:
        """Take the transaction's locks of ``tiles`` (PostgreSQL; nothing on SQLite, one writer at a time).

        In key order, so that two transactions never wait on each other in a
        circle: chunks take them shared (they write side by side), a finish
        exclusive (no chunk writes a tile's rows while it judges them).
        """
        if not self._postgres:
            return
        keys = sorted({tile_lock_key(tagset, tile) for tile in tiles})
        if not keys:
            return
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        database: Any = self.database
        # A function scan returns the array in order, and each row's lock is taken as it is read.
        database.execute_sql(f"SELECT count({function}(key)) FROM unnest(%s::bigint[]) AS key", (keys,))

    def _lock_pois(self, keys: Sequence[tuple[str, int]]) -> None:
        """Lock the ``pois`` rows of ``keys`` (sorted) in key order, as upserts write them (PostgreSQL)."""
        if not self._postgres:
            return
        pois = self.pois
        poi_keys = peewee.Tuple(pois.element_type, pois.osm_id)  # type: ignore[attr-defined]
        for start in range(0, len(keys), _BATCH):
            batch = list(keys[start : start + _BATCH])
            query = (
                pois.select(pois.element_type, pois.osm_id)  # type: ignore[attr-defined]
                .where(poi_keys.in_(batch))
                .order_by(pois.element_type, pois.osm_id)  # type: ignore[attr-defined]
                .for_update()
            )
            list(query.tuples())

    def _newer(self, answer: Answer) -> set[str]:
        """Tiles of ``answer`` that hold a newer answer (a greater :attr:`Answer.version`): it must not touch them."""
        model = self.coverage
        query = model.select(model.tile).where(
            (model.tagset == answer.tagset)
            & model.tile.in_(list(answer.tiles))
            & model.version.is_null(False)
            & (model.version > answer.version)
        )
        return {row.tile for row in query}

    def current(
        self, answer: Answer, members: Mapping[str, Iterable[tuple[str, int]]], pois: Sequence[Sequence[Any]]
    ) -> tuple[list[Sequence[Any]], dict[str, list[tuple[str, int]]]]:
        """The POIs of one chunk that may be written, and the tiles' elements to note.

        Tiles that hold a newer answer are left out, and so are POIs filed
        only under such tiles: an older answer landing late must not bring
        back a POI the newer one dropped. Call it in the chunk's transaction:
        it takes the shared locks of the tiles the chunk files elements under.
        """
        filed_tiles = sorted(tile for tile, elements in members.items() if elements)
        self.lock_tiles(answer.tagset, filed_tiles, exclusive=False)
        newer = self._newer(answer)
        kept = {tile: sorted(set(elements)) for tile, elements in members.items() if tile not in newer}
        if not newer:
            return list(pois), kept
        wanted = {element for elements in kept.values() for element in elements}
        filed = {element for elements in members.values() for element in elements}
        rows = [p for p in pois if (p[0], p[1]) in wanted or (p[0], p[1]) not in filed]
        return rows, kept

    def note_elements(self, answer: Answer, members: Mapping[str, Iterable[tuple[str, int]]]) -> None:
        """Record which elements each tile returned (call with what :meth:`current` kept, in the chunk's
        upsert transaction, after the POIs: their rows are locked first). A row a newer answer wrote stays."""
        rows = [
            {
                "tile": tile,
                "tagset": answer.tagset,
                "element_type": kind,
                "osm_id": osm_id,
                "answer": answer.key,
                "osm_base": answer.osm_base,
                "version": answer.version,
            }
            for tile in sorted(members)
            # An element twice in one chunk would make ON CONFLICT touch its row twice (an error).
            for kind, osm_id in sorted(set(members[tile]))
        ]
        model = self.elements
        incoming = peewee.EXCLUDED.version
        for start in range(0, len(rows), _BATCH):
            model.insert_many(rows[start : start + _BATCH]).on_conflict(
                conflict_target=[model.tile, model.tagset, model.element_type, model.osm_id],
                preserve=[model.answer, model.osm_base, model.version],
                where=(model.version.is_null() | (model.version <= incoming)),
            ).execute()

    def bases(self, tagset: str, tiles: Sequence[str]) -> dict[str, str | None]:
        """The ``timestamp_osm_base`` each of ``tiles`` was last fetched at, for those the ledger holds.

        A tile that holds rows of a newer answer still landing has none (None): a diff since its
        timestamp would miss what that answer brought and is gone since (at neither end of the diff).
        """
        model, el = self.coverage, self.elements
        found: dict[str, str | None] = {}
        for start in range(0, len(tiles), _BATCH):
            batch = list(tiles[start : start + _BATCH])
            query = model.select(model.tile, model.osm_base).where(
                (model.tagset == tagset) & model.tile.in_(batch)
            )
            found.update((row.tile, row.osm_base) for row in query)
            landing = (
                el.select(el.tile)
                .join(model, on=((model.tile == el.tile) & (model.tagset == el.tagset)))
                .where((el.tagset == tagset) & el.tile.in_(batch) & (el.version > model.version))
                .distinct()
            )
            found.update((row.tile, None) for row in landing)
        return found

    def finish(
        self, answer: Answer, *, gone: Sequence[tuple[str, int]] = (), now: dt.datetime | None = None
    ) -> int:
        """The whole answer has landed: drop what it no longer holds, mark its tiles fetched; returns POIs deleted.

        A full answer no longer holds what an older answer filed and it did
        not; an augmented diff (``answer.diff``) no longer holds ``gone``, nor
        the earlier rows of the elements it moved to another tile. Elements
        the parser dropped (``answer.kept``) keep their rows. Idempotent: a
        second call for the same answer, or a call after a newer answer
        finished, changes nothing.
        """
        with self.database.atomic():
            return self._finish(answer, gone, now or dt.datetime.now(dt.UTC).replace(tzinfo=None))

    def _finish(self, answer: Answer, gone: Sequence[tuple[str, int]], now: dt.datetime) -> int:
        cov, el = self.coverage, self.elements
        self.lock_tiles(answer.tagset, answer.tiles, exclusive=True)
        done = {
            row.tile
            for row in cov.select(cov.tile).where(
                (cov.tagset == answer.tagset) & cov.tile.in_(list(answer.tiles)) & (cov.answer == answer.key)
            )
        }
        newer = self._newer(answer)
        targets = [t for t in answer.tiles if t not in done and t not in newer]
        if not targets:
            return 0
        stale = [self._stale(answer, targets[i : i + _BATCH], gone) for i in range(0, len(targets), _BATCH)]
        candidates = sorted(
            {(row.element_type, row.osm_id) for where in stale for row in el.select().where(where)}
        )
        # The POI rows first, as a chunk's upsert does, then the ledger rows.
        self._lock_pois(candidates)
        for where in stale:
            el.delete().where(where).execute()
        failpoint("ledger.finish.unfiled")
        deleted = self._delete_orphans(candidates)
        failpoint("ledger.finish.checked")
        self._mark_fetched(answer, targets, now)
        return deleted

    def _stale(self, answer: Answer, tiles: Sequence[str], gone: Sequence[tuple[str, int]]) -> Any:
        """Which rows of ``tiles`` finishing ``answer`` removes: older answers' rows it no longer holds."""
        el = self.elements
        keys = peewee.Tuple(el.element_type, el.osm_id)
        # Rows of an answer as new or newer, still landing, are not this one's to judge.
        stale = (
            (el.tagset == answer.tagset)
            & el.tile.in_(list(tiles))
            & (el.answer != answer.key)
            & (el.version.is_null() | (el.version < answer.version))
        )
        if answer.kept:
            stale &= ~keys.in_(sorted(set(answer.kept)))
        if not answer.diff:
            return stale
        mine = el.select(el.element_type, el.osm_id).where(
            (el.tagset == answer.tagset) & (el.answer == answer.key)
        )
        changed = keys.in_(mine)
        if gone:
            changed |= keys.in_(sorted(set(gone)))
        return stale & changed

    def _mark_fetched(self, answer: Answer, targets: Sequence[str], now: dt.datetime) -> None:
        cov, el = self.coverage, self.elements
        counts = dict(
            el.select(el.tile, peewee.fn.COUNT(el.osm_id))
            .where((el.tagset == answer.tagset) & el.tile.in_(list(targets)))
            .group_by(el.tile)
            .tuples()
        )
        share = answer.calls / len(answer.tiles)
        rows = [
            {
                "tile": tile,
                "tagset": answer.tagset,
                "tags": "\n".join(answer.tags),
                "fetched_at": now,
                "osm_base": answer.osm_base,
                "outcome": "ok",
                "pois": int(counts.get(tile, 0)),
                "calls": share,
                "answer": answer.key,
                "version": answer.version,
            }
            for tile in targets
        ]
        for start in range(0, len(rows), _BATCH):
            cov.insert_many(rows[start : start + _BATCH]).on_conflict(
                conflict_target=[cov.tile, cov.tagset],
                preserve=[
                    cov.tags,
                    cov.fetched_at,
                    cov.osm_base,
                    cov.outcome,
                    cov.pois,
                    cov.answer,
                    cov.version,
                ],
                update={cov.calls: cov.calls + peewee.EXCLUDED.calls},
            ).execute()

    def _delete_orphans(self, candidates: Sequence[tuple[str, int]]) -> int:
        """Delete the POIs of ``candidates`` (their rows locked) that no tile or tag set holds any more; how many.

        The holders are read in a statement of their own, after the locks:
        it sees every holder committed by a writer that had the row before us.
        """
        el, pois = self.elements, self.pois
        deleted = 0
        for start in range(0, len(candidates), _BATCH):
            batch = list(candidates[start : start + _BATCH])
            keys = peewee.Tuple(el.element_type, el.osm_id)
            held = {
                (r.element_type, r.osm_id)
                for r in el.select(el.element_type, el.osm_id).where(keys.in_(batch))
            }
            orphans = [key for key in batch if key not in held]
            if orphans:
                poi_keys = peewee.Tuple(pois.element_type, pois.osm_id)  # type: ignore[attr-defined]
                deleted += int(pois.delete().where(poi_keys.in_(orphans)).execute())
        return deleted

    def tiles(self, tile_ids: Sequence[str]) -> list[TileCoverage]:
        """The ledger rows of ``tile_ids`` (every tag set)."""
        found: list[TileCoverage] = []
        model = self.coverage
        for start in range(0, len(tile_ids), _BATCH):
            query = model.select().where(model.tile.in_(list(tile_ids[start : start + _BATCH])))
            found.extend(_row(row) for row in query)
        return sorted(found, key=lambda row: (row.tile, row.tagset))

    def stalest(self, older_than: dt.datetime, limit: int) -> list[TileCoverage]:
        """Up to ``limit`` rows fetched before ``older_than``, the oldest first."""
        model = self.coverage
        query = (
            model.select()
            .where(model.fetched_at < older_than)
            .order_by(model.fetched_at, model.tile, model.tagset)
            .limit(limit)
        )
        return [_row(row) for row in query]


def _row(row: Any) -> TileCoverage:
    return TileCoverage(
        tile=row.tile,
        tagset=row.tagset,
        tags=tuple(row.tags.split("\n")) if row.tags else (),
        fetched_at=row.fetched_at,
        osm_base=row.osm_base,
        outcome=row.outcome,
        pois=row.pois,
        calls=row.calls,
    )


def _bind(model: type[peewee.Model], database: peewee.Database) -> Any:
    """``model`` bound to ``database``: each store has its own binding."""
    meta = type("Meta", (), {"database": database, "table_name": model._meta.table_name})
    return type(f"Bound{model.__name__}", (model,), {"Meta": meta, "__module__": __name__})


__all__ = [
    "Answer",
    "CoverageElementModel",
    "CoverageModel",
    "Ledger",
    "TileCoverage",
    "fetch_time",
    "read_osm_base",
    "tile_lock_key",
]

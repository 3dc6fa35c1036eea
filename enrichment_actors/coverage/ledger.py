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
an earlier answer wrote and this one did not are the elements gone upstream;
they are removed, and so are their POIs that no other tile or tag set holds.
An answer older than what a tile holds (an earlier ``timestamp_osm_base``)
writes nothing to it, and a partial or failed answer never finishes, so
it deletes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import peewee

_BATCH = 400


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

    def as_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "diff": self.diff,
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
            osm_base=data.get("osm_base"),
            calls=float(data.get("calls", 1.0)),
            owner=data.get("owner"),
            diff=bool(data.get("diff", False)),
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

    def _newer(self, answer: Answer, *, or_as_new: bool = False) -> set[str]:
        """Tiles of ``answer`` that hold a newer answer (a later ``timestamp_osm_base``): it must not touch them.

        With ``or_as_new``, also those another answer of the same timestamp
        finished (the same data: finishing again would only drop its rows).
        """
        if answer.osm_base is None:
            return set()
        model = self.coverage
        newer = model.osm_base > answer.osm_base
        if or_as_new:
            newer = newer | ((model.osm_base == answer.osm_base) & (model.answer != answer.key))
        query = model.select(model.tile).where(
            (model.tagset == answer.tagset) & model.tile.in_(list(answer.tiles)) & newer
        )
        return {row.tile for row in query}

    def current(
        self, answer: Answer, members: Mapping[str, Iterable[tuple[str, int]]], pois: Sequence[Sequence[Any]]
    ) -> tuple[list[Sequence[Any]], dict[str, list[tuple[str, int]]]]:
        """The POIs of one chunk that may be written, and the tiles' elements to note.

        Tiles that hold a newer answer are left out, and so are POIs filed
        only under such tiles: an older answer landing late must not bring
        back a POI the newer one dropped.
        """
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
        upsert transaction)."""
        rows = [
            {
                "tile": tile,
                "tagset": answer.tagset,
                "element_type": kind,
                "osm_id": osm_id,
                "answer": answer.key,
                "osm_base": answer.osm_base,
            }
            for tile, elements in members.items()
            # An element twice in one chunk would make ON CONFLICT touch its row twice (an error).
            for kind, osm_id in sorted(set(elements))
        ]
        model = self.elements
        for start in range(0, len(rows), _BATCH):
            model.insert_many(rows[start : start + _BATCH]).on_conflict(
                conflict_target=[model.tile, model.tagset, model.element_type, model.osm_id],
                preserve=[model.answer, model.osm_base],
            ).execute()

    def bases(self, tagset: str, tiles: Sequence[str]) -> dict[str, str | None]:
        """The ``timestamp_osm_base`` each of ``tiles`` was last fetched at, for those the ledger holds."""
        model = self.coverage
        found: dict[str, str | None] = {}
        for start in range(0, len(tiles), _BATCH):
            query = model.select(model.tile, model.osm_base).where(
                (model.tagset == tagset) & model.tile.in_(list(tiles[start : start + _BATCH]))
            )
            found.update((row.tile, row.osm_base) for row in query)
        return found

    def finish(
        self, answer: Answer, *, gone: Sequence[tuple[str, int]] = (), now: dt.datetime | None = None
    ) -> int:
        """The whole answer has landed: drop what it no longer holds, mark its tiles fetched; returns POIs deleted.

        A full answer no longer holds what an earlier answer filed and it did
        not; an augmented diff (``answer.diff``) no longer holds ``gone``, nor
        the earlier rows of the elements it moved to another tile.
        Idempotent: a second call for the same answer changes nothing.
        """
        now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with self.database.atomic():
            cov, el = self.coverage, self.elements
            done = {
                row.tile
                for row in cov.select(cov.tile).where(
                    (cov.tagset == answer.tagset)
                    & cov.tile.in_(list(answer.tiles))
                    & (cov.answer == answer.key)
                )
            }
            newer = self._newer(answer, or_as_new=True)
            targets = [t for t in answer.tiles if t not in done and t not in newer]
            if not targets:
                return 0
            dropped: set[tuple[str, int]] = set()
            keys = peewee.Tuple(el.element_type, el.osm_id)
            for start in range(0, len(targets), _BATCH):
                batch = targets[start : start + _BATCH]
                earlier = (el.tagset == answer.tagset) & el.tile.in_(batch) & (el.answer != answer.key)
                if answer.osm_base is not None:
                    # Rows of an answer as new or newer, still landing, are not this one's to judge.
                    earlier &= el.osm_base.is_null() | (el.osm_base < answer.osm_base)
                if answer.diff:
                    mine = el.select(el.element_type, el.osm_id).where(
                        (el.tagset == answer.tagset) & (el.answer == answer.key)
                    )
                    changed = keys.in_(mine)
                    if gone:
                        changed |= keys.in_(sorted(set(gone)))
                    stale = earlier & changed
                else:
                    stale = earlier
                dropped.update((row.element_type, row.osm_id) for row in el.select().where(stale))
                el.delete().where(stale).execute()
            deleted = self._delete_orphans(dropped)
            counts = dict(
                el.select(el.tile, peewee.fn.COUNT(el.osm_id))
                .where((el.tagset == answer.tagset) & el.tile.in_(targets))
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
                }
                for tile in targets
            ]
            for start in range(0, len(rows), _BATCH):
                cov.insert_many(rows[start : start + _BATCH]).on_conflict(
                    conflict_target=[cov.tile, cov.tagset],
                    preserve=[cov.tags, cov.fetched_at, cov.osm_base, cov.outcome, cov.pois, cov.answer],
                    update={cov.calls: cov.calls + peewee.EXCLUDED.calls},
                ).execute()
            return deleted

    def _delete_orphans(self, gone: set[tuple[str, int]]) -> int:
        """Delete the POIs of ``gone`` that no tile or tag set holds any more; how many."""
        el, pois = self.elements, self.pois
        candidates = sorted(gone)
        deleted = 0
        for start in range(0, len(candidates), _BATCH):
            batch = candidates[start : start + _BATCH]
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


__all__ = ["Answer", "CoverageElementModel", "CoverageModel", "Ledger", "TileCoverage"]

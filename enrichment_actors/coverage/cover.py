"""The tiles one fetch covers: what it asks Overpass for and how its answer is filed by tile.

A fetch with tiles asks for the union of their boxes (few rectangles, so the
query text stays short) and files each POI under the tiles it lies in
(:func:`~.tiles.assign`); the ledger then knows, per tile and tag set, what the
answer held.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..jobs import InvalidJob, Job, TagFilter, build_union_query
from .ledger import Answer
from .tiles import Tile, TileIndex, normalise_tags, rectangles, split_tiles, tagset_key, tile_units, tiles_of


@dataclass(frozen=True)
class TileCover:
    """The tiles of one fetch for one normalised tag set, claimed by ``owner`` (the leader's fetch id)."""

    tiles: tuple[Tile, ...]
    tags: tuple[TagFilter, ...]
    owner: str

    @property
    def tagset(self) -> str:
        return tagset_key(self.tags)

    @property
    def ids(self) -> list[str]:
        return [tile.id for tile in self.tiles]

    @classmethod
    def of_job(cls, job: Job, *, tile_deg: float, owner: str) -> TileCover:
        """Every tile ``job``'s box touches, for its normalised tag set."""
        return cls(tuple(tiles_of(job.bbox, tile_units(tile_deg))), normalise_tags(job.tags), owner)

    @classmethod
    def from_message(cls, tile_ids: Any, tags: Sequence[TagFilter], owner: Any) -> TileCover:
        """The cover a fetch message names (``tiles``, ``owner``); :class:`InvalidJob` when malformed."""
        try:
            if not isinstance(owner, str) or not isinstance(tile_ids, list) or not tile_ids:
                raise ValueError
            tiles = tuple(Tile.parse(tile_id) for tile_id in tile_ids)
        except (ValueError, TypeError, AttributeError):
            raise InvalidJob(
                "tiles must be a non-empty list of tile ids and owner a string (they are set by enrich)."
            ) from None
        return cls(tiles, normalise_tags(tags), owner)

    def only(self, tile_ids: Iterable[str]) -> TileCover:
        """This cover restricted to ``tile_ids``."""
        wanted = set(tile_ids)
        return TileCover(tuple(t for t in self.tiles if t.id in wanted), self.tags, self.owner)

    def split(self) -> list[TileCover]:
        """Up to four covers for a too-large query; none when it is one tile."""
        if len(self.tiles) < 2:
            return []
        return [TileCover(tuple(group), self.tags, self.owner) for group in split_tiles(self.tiles)]

    def query(self, *, timeout_s: int, maxsize_bytes: int) -> str:
        return build_union_query(
            rectangles(self.tiles), self.tags, timeout_s=timeout_s, maxsize_bytes=maxsize_bytes
        )

    def answer(
        self,
        key: str,
        osm_base: str | None,
        *,
        fetched_at: str,
        diff: bool = False,
        kept: Iterable[tuple[str, int]] = (),
    ) -> Answer:
        """The ledger's view of this fetch's answer (an augmented diff with ``diff``), staged under ``key``.

        ``osm_base`` as :func:`~.ledger.read_osm_base` reads it; ``fetched_at`` as :func:`~.ledger.fetch_time`
        gives it; ``kept``: the elements the answer named but the parser could not use.
        """
        return Answer(
            key=key,
            tagset=self.tagset,
            tags=tuple(str(tag) for tag in self.tags),
            tiles=tuple(self.ids),
            osm_base=osm_base,
            owner=self.owner,
            diff=diff,
            fetched_at=fetched_at,
            kept=tuple(sorted(set(kept))),
        )


def members(tile_ids: Sequence[str], rows: Iterable[Sequence[Any]]) -> dict[str, list[tuple[str, int]]]:
    """Which of ``rows`` (element_type, osm_id, lat, lon, ...) each tile holds."""
    index = TileIndex([Tile.parse(tile_id) for tile_id in tile_ids])
    filed: dict[str, list[tuple[str, int]]] = {tile_id: [] for tile_id in tile_ids}
    for row in rows:
        for tile in index.assign(float(row[2]), float(row[3])):
            filed[tile.id].append((str(row[0]), int(row[1])))
    return filed


__all__ = ["TileCover", "members"]

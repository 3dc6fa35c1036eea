"""Tiles: the fixed global grid a job's box is cut into, and the normalised tag set.

A tile with a tag set is the unit of fetching, deduplication, freshness and
deletion. The grid is global (``ENRICH_TILE_DEG``, a side that divides 180
degrees on OSM's 1e-7 degree grid), so two overlapping jobs share their
tiles whatever their boxes. Tiles are named ``<side in 1e-7 degrees>:<row>:<col>``
with row 0 at the south pole and column 0 at the antimeridian, so a ledger
written under another tile size is never mistaken for this one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..jobs import GRID, BBox, TagFilter, from_grid

_LAT0 = 90 * GRID
_LON0 = 180 * GRID


class TileSizeError(ValueError):
    """``ENRICH_TILE_DEG`` does not cut the globe into whole tiles."""


def tile_units(tile_deg: float) -> int:
    """The tile side in grid units; raises :class:`TileSizeError` unless it divides 180 degrees."""
    units = round(tile_deg * GRID)
    if units <= 0 or (180 * GRID) % units:
        raise TileSizeError(
            f"ENRICH_TILE_DEG={tile_deg:g} does not divide 180 degrees into whole tiles on OSM's 1e-7 degree "
            "grid: pick a side such as 0.01, 0.02, 0.025, 0.05 or 0.1."
        )
    return units


@dataclass(frozen=True, order=True)
class Tile:
    """One cell of the grid: ``row`` counts from the south pole, ``col`` from the antimeridian."""

    units: int
    row: int
    col: int

    @property
    def id(self) -> str:
        return f"{self.units}:{self.row}:{self.col}"

    @classmethod
    def parse(cls, tile_id: str) -> Tile:
        units, row, col = (int(part) for part in tile_id.split(":"))
        return cls(units, row, col)

    @property
    def bbox(self) -> BBox:
        south = self.row * self.units - _LAT0
        west = self.col * self.units - _LON0
        return BBox(
            from_grid(south), from_grid(west), from_grid(south + self.units), from_grid(west + self.units)
        )

    def distance_units(self, lat_e7: int, lon_e7: int) -> int:
        """How far a position is outside this tile, in grid units (0 inside or on its edge)."""
        south = self.row * self.units - _LAT0
        west = self.col * self.units - _LON0
        d_lat = max(south - lat_e7, 0, lat_e7 - (south + self.units))
        # Longitudes wrap: measure both ways round.
        offset = (lon_e7 - west) % (360 * GRID)
        d_lon = 0 if offset <= self.units else min(offset - self.units, 360 * GRID - offset)
        return max(d_lat, d_lon)


def tiles_of(box: BBox, units: int) -> list[Tile]:
    """The tiles a box touches, in (row, col) order; a box edge on a tile edge takes no tile beyond it."""
    rows = 180 * GRID // units
    cols = 360 * GRID // units
    south, _, north, _ = box.grid
    row_lo = (south + _LAT0) // units
    row_hi = min(rows, -(-(north + _LAT0) // units)) - 1
    found: set[Tile] = set()
    for part in box.parts():
        _, west, _, east = part.grid
        col_lo = (west + _LON0) // units
        col_hi = min(cols, -(-(east + _LON0) // units)) - 1
        for row in range(row_lo, row_hi + 1):
            for col in range(col_lo, col_hi + 1):
                found.add(Tile(units, row, col))
    return sorted(found)


class TileIndex:
    """Files positions under ``tiles``: what :func:`assign` does, for many POIs at a constant cost each.

    The cells holding a position are computed from it (one, or two or four
    on an edge or a corner) and looked up; only a position outside every
    tile is compared with each.
    """

    def __init__(self, tiles: Sequence[Tile]) -> None:
        self.tiles = list(tiles)
        self._order = {tile: i for i, tile in enumerate(self.tiles)}
        self._units = self.tiles[0].units if self.tiles else 0

    def assign(self, lat: float, lon: float) -> list[Tile]:
        if not self.tiles:
            return []
        lat_e7, lon_e7 = round(lat * GRID), round(lon * GRID)
        units = self._units
        rows, cols = 180 * GRID // units, 360 * GRID // units
        row, on_row_edge = divmod(lat_e7 + _LAT0, units)
        col, on_col_edge = divmod(lon_e7 + _LON0, units)
        # A closed box holds its edges: on an edge, the cell below or to the west holds it too.
        row_options = {r for r in (row, row - 1 if on_row_edge == 0 else row) if 0 <= r < rows}
        col_options = {c % cols for c in (col, col - 1 if on_col_edge == 0 else col)}
        inside = [
            tile for r in row_options for c in col_options if (tile := Tile(units, r, c)) in self._order
        ]
        if inside:
            return sorted(inside, key=self._order.__getitem__)
        distances = [tile.distance_units(lat_e7, lon_e7) for tile in self.tiles]
        return [self.tiles[distances.index(min(distances))]]


def assign(tiles: Sequence[Tile], lat: float, lon: float) -> list[Tile]:
    """The tiles of ``tiles`` a POI at (lat, lon) belongs to.

    Every tile whose closed box holds it (a POI on an edge belongs to both
    tiles, as Overpass returns it for both boxes); a way or relation whose
    centre lies outside them all (it was returned because it crosses one)
    belongs to the nearest.
    """
    return TileIndex(tiles).assign(lat, lon)


def rectangles(tiles: Iterable[Tile]) -> list[BBox]:
    """Few boxes that cover exactly ``tiles``: the runs of each row, merged with the same run in the next rows.

    So a job's needed tiles go into one query with a short text: a full
    rectangle of tiles is one box.
    """
    by_row: dict[int, list[int]] = {}
    units = 0
    for tile in tiles:
        by_row.setdefault(tile.row, []).append(tile.col)
        units = tile.units
    runs: dict[tuple[int, int], list[int]] = {}
    for row in sorted(by_row):
        for first, last in _runs(sorted(set(by_row[row]))):
            runs.setdefault((first, last), []).append(row)
    boxes: list[BBox] = []
    for (first_col, last_col), rows in runs.items():
        for first_row, last_row in _runs(rows):
            south, west = first_row * units - _LAT0, first_col * units - _LON0
            north, east = (last_row + 1) * units - _LAT0, (last_col + 1) * units - _LON0
            boxes.append(BBox(from_grid(south), from_grid(west), from_grid(north), from_grid(east)))
    return sorted(boxes, key=lambda b: (b.south, b.west))


def _runs(numbers: Sequence[int]) -> list[tuple[int, int]]:
    """Runs of consecutive numbers in a sorted list: ``[1, 2, 3, 7]`` -> ``[(1, 3), (7, 7)]``."""
    runs: list[tuple[int, int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    return runs


def normalise_tags(tags: Iterable[TagFilter]) -> tuple[TagFilter, ...]:
    """The tag set as a canonical tuple: sorted, each once, ``key=value`` dropped where ``key`` is asked too.

    ``nwr[amenity]`` already returns every ``amenity=cafe``: the two sets
    ask for the same elements, so they share tiles.
    """
    tags = set(tags)
    whole_keys = {tag.key for tag in tags if tag.value is None}
    kept = {tag for tag in tags if tag.value is None or tag.key not in whole_keys}
    return tuple(sorted(kept, key=lambda tag: (tag.key, tag.value is not None, tag.value or "")))


def tagset_key(tags: Iterable[TagFilter]) -> str:
    """A short stable name of the normalised tag set (the ledger's and the claims' key)."""
    text = json.dumps([str(tag) for tag in normalise_tags(tags)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_tiles(tiles: Sequence[Tile]) -> list[list[Tile]]:
    """Up to four groups of ``tiles`` for a too-large query: halves by row, then by column."""
    ordered = sorted(tiles)
    if len(ordered) < 2:
        return [list(ordered)]
    rows = sorted({tile.row for tile in ordered})
    groups: list[list[Tile]] = []
    halves = (
        [
            [t for t in ordered if t.row <= rows[len(rows) // 2 - 1]],
            [t for t in ordered if t.row > rows[len(rows) // 2 - 1]],
        ]
        if len(rows) > 1
        else [ordered]
    )
    for half in halves:
        cols = sorted({tile.col for tile in half})
        if len(cols) > 1:
            middle = cols[len(cols) // 2 - 1]
            groups += [[t for t in half if t.col <= middle], [t for t in half if t.col > middle]]
        else:
            groups.append(half)
    return [group for group in groups if group]


__all__ = [
    "Tile",
    "TileIndex",
    "TileSizeError",
    "assign",
    "normalise_tags",
    "rectangles",
    "split_tiles",
    "tagset_key",
    "tile_units",
    "tiles_of",
]

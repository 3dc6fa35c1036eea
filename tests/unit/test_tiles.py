"""The tile grid of the coverage ledger: tile sizes, the tiles a box touches, tile ids, which tiles a POI
belongs to, the rectangles a set of tiles is asked as, the normalised tag set, the split of a too-large
fetch, and the query of a :class:`TileCover`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from enrichment_actors.coverage.cover import TileCover
from enrichment_actors.coverage.tiles import (
    Tile,
    TileIndex,
    TileSizeError,
    assign,
    normalise_tags,
    rectangles,
    split_tiles,
    tagset_key,
    tile_units,
    tiles_of,
)
from enrichment_actors.jobs import BBox, Job, TagFilter, build_union_query, validate_job

#: A tile of 0.1 degrees in grid units (1e-7 degrees).
U = 1_000_000
ROWS = 1800
COLS = 3600


def box(south: float, west: float, north: float, east: float) -> BBox:
    """A validated (grid-snapped) box."""
    return validate_job({"south": south, "west": west, "north": north, "east": east}, ["amenity"]).bbox


def job(south: float, west: float, north: float, east: float, tags: Sequence[str] = ("amenity",)) -> Job:
    return validate_job({"south": south, "west": west, "north": north, "east": east}, list(tags))


def cells(tiles: Sequence[Tile]) -> list[tuple[int, int]]:
    return [(tile.row, tile.col) for tile in tiles]


def t(row: int, col: int) -> Tile:
    return Tile(U, row, col)


# --- tile sizes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tile_deg", "units"),
    [(0.01, 100_000), (0.02, 200_000), (0.025, 250_000), (0.05, 500_000), (0.1, 1_000_000)],
)
def test_a_side_that_divides_180_degrees_is_a_whole_number_of_grid_units(tile_deg: float, units: int) -> None:
    assert tile_units(tile_deg) == units
    assert (180 * 10_000_000) % tile_units(tile_deg) == 0


@pytest.mark.parametrize("tile_deg", [0.07, 0.0, -0.1, -0.01, 1e-9])
def test_a_side_that_does_not_cut_the_globe_into_whole_tiles_is_refused(tile_deg: float) -> None:
    with pytest.raises(TileSizeError, match="does not divide 180 degrees"):
        tile_units(tile_deg)


def test_the_tile_size_error_is_a_value_error() -> None:
    assert issubclass(TileSizeError, ValueError)


# --- tiles_of ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        # Edges exactly on tile edges: no tile beyond them.
        ((48.8, 2.2, 49.0, 2.4), [(1388, 1822), (1388, 1823), (1389, 1822), (1389, 1823)]),
        ((48.8, 2.2, 48.9, 2.3), [(1388, 1822)]),
        # Inside one tile.
        ((48.81, 2.21, 48.82, 2.22), [(1388, 1822)]),
        ((48.85, 2.29, 48.86, 2.3), [(1388, 1822)]),
        # Across one tile boundary (latitude, then longitude, then both).
        ((48.85, 2.21, 48.95, 2.22), [(1388, 1822), (1389, 1822)]),
        ((48.81, 2.25, 48.82, 2.35), [(1388, 1822), (1388, 1823)]),
        ((48.85, 2.25, 48.95, 2.35), [(1388, 1822), (1388, 1823), (1389, 1822), (1389, 1823)]),
        # A south (west) edge on a tile boundary takes no tile below (west of) it.
        ((48.9, 2.21, 48.95, 2.22), [(1389, 1822)]),
        ((48.81, 2.3, 48.82, 2.35), [(1388, 1823)]),
        # Negative coordinates and the equator / prime meridian.
        ((-0.05, -0.05, 0.05, 0.05), [(899, 1799), (899, 1800), (900, 1799), (900, 1800)]),
        ((0.0, 0.0, 0.1, 0.1), [(900, 1800)]),
        ((-0.1, -0.1, 0.0, 0.0), [(899, 1799)]),
    ],
)
def test_tiles_of_a_box_are_the_tiles_it_touches_and_no_tile_beyond_its_edges(
    bounds: tuple[float, float, float, float], expected: list[tuple[int, int]]
) -> None:
    tiles = tiles_of(box(*bounds), U)
    assert cells(tiles) == expected
    assert all(tile.units == U for tile in tiles)


@pytest.mark.parametrize(
    ("tile_deg", "bounds", "expected"),
    [
        (0.01, (48.85, 2.29, 48.86, 2.3), [(13885, 18229)]),
        (0.02, (48.85, 2.29, 48.86, 2.3), [(6942, 9114)]),
        (0.025, (48.85, 2.29, 48.86, 2.3), [(5554, 7291)]),
        (0.05, (48.85, 2.29, 48.86, 2.3), [(2777, 3645)]),
    ],
)
def test_tiles_of_follow_the_tile_size(
    tile_deg: float, bounds: tuple[float, float, float, float], expected: list[tuple[int, int]]
) -> None:
    assert cells(tiles_of(box(*bounds), tile_units(tile_deg))) == expected


@pytest.mark.parametrize(
    ("bounds", "expected_cols"),
    [
        # Edges on tile edges: the last column and the first.
        ((0.0, 179.9, 0.1, -179.9), [0, COLS - 1]),
        # Edges inside tiles: two columns each side.
        ((0.0, 179.85, 0.1, -179.85), [0, 1, COLS - 2, COLS - 1]),
        # Inside the last column and the first.
        ((0.01, 179.95, 0.02, -179.95), [0, COLS - 1]),
        # West on the antimeridian itself: only the first columns.
        ((0.0, 180.0, 0.1, -179.8), [0, 1]),
        # East on the antimeridian itself: only the last columns.
        ((0.0, 179.8, 0.1, -180.0), [COLS - 2, COLS - 1]),
    ],
)
def test_a_box_across_the_antimeridian_takes_the_last_and_first_columns_and_none_between(
    bounds: tuple[float, float, float, float], expected_cols: list[int]
) -> None:
    tiles = tiles_of(box(*bounds), U)
    assert sorted({tile.col for tile in tiles}) == expected_cols
    assert {tile.row for tile in tiles} == {900}
    assert all(0 <= tile.col < COLS for tile in tiles)


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ((89.9, 0.0, 90.0, 0.1), [(ROWS - 1, 1800)]),
        ((89.85, 0.0, 90.0, 0.1), [(ROWS - 2, 1800), (ROWS - 1, 1800)]),
        ((89.95, 0.05, 90.0, 0.06), [(ROWS - 1, 1800)]),
        ((-90.0, 0.0, -89.9, 0.1), [(0, 1800)]),
        ((-90.0, 0.0, -89.85, 0.1), [(0, 1800), (1, 1800)]),
        ((-90.0, 179.9, -89.9, 180.0), [(0, COLS - 1)]),
        ((89.9, -180.0, 90.0, -179.9), [(ROWS - 1, 0)]),
    ],
)
def test_a_box_at_a_pole_gives_valid_rows_and_none_beyond_the_grid(
    bounds: tuple[float, float, float, float], expected: list[tuple[int, int]]
) -> None:
    tiles = tiles_of(box(*bounds), U)
    assert cells(tiles) == expected
    assert all(0 <= tile.row < ROWS and 0 <= tile.col < COLS for tile in tiles)


# --- Tile ids and boxes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tile", "tile_id", "bbox"),
    [
        (Tile(U, 1388, 1822), "1000000:1388:1822", BBox(48.8, 2.2, 48.9, 2.3)),
        (Tile(U, 0, 0), "1000000:0:0", BBox(-90.0, -180.0, -89.9, -179.9)),
        (Tile(U, ROWS - 1, COLS - 1), "1000000:1799:3599", BBox(89.9, 179.9, 90.0, 180.0)),
        (Tile(U, 900, 1800), "1000000:900:1800", BBox(0.0, 0.0, 0.1, 0.1)),
        (Tile(100_000, 13885, 18229), "100000:13885:18229", BBox(48.85, 2.29, 48.86, 2.3)),
        (Tile(250_000, 5554, 7291), "250000:5554:7291", BBox(48.85, 2.275, 48.875, 2.3)),
    ],
)
def test_a_tile_id_names_size_row_and_column_and_parses_back(tile: Tile, tile_id: str, bbox: BBox) -> None:
    assert tile.id == tile_id
    assert Tile.parse(tile_id) == tile
    assert Tile.parse(tile.id).id == tile_id
    assert tile.bbox == bbox


@pytest.mark.parametrize(
    "bounds",
    [
        (48.8, 2.2, 49.0, 2.4),
        (0.0, 179.85, 0.1, -179.85),
        (-90.0, 0.0, -89.85, 0.1),
        (48.85, 2.29, 48.86, 2.3),
    ],
)
def test_each_tile_of_a_box_is_itself_one_tile_of_the_grid(bounds: tuple[float, float, float, float]) -> None:
    for tile in tiles_of(box(*bounds), U):
        assert tiles_of(tile.bbox, U) == [tile]


@pytest.mark.parametrize("tile_id", ["1000000:1388", "a:b:c", "1:2:3:4", ""])
def test_a_malformed_tile_id_is_a_value_error(tile_id: str) -> None:
    with pytest.raises(ValueError):
        Tile.parse(tile_id)


# --- assign -----------------------------------------------------------------------------------------------

BLOCK = [t(1388, 1822), t(1388, 1823), t(1389, 1822), t(1389, 1823)]  # 48.8..49.0, 2.2..2.4
ACROSS = [t(900, COLS - 1), t(900, 0)]  # 0..0.1, 179.9..-179.9


@pytest.mark.parametrize(
    ("tiles", "lat", "lon", "expected"),
    [
        # Inside one tile.
        (BLOCK, 48.85, 2.25, [t(1388, 1822)]),
        (BLOCK, 48.95, 2.35, [t(1389, 1823)]),
        # On an edge two tiles share: both.
        (BLOCK, 48.9, 2.25, [t(1388, 1822), t(1389, 1822)]),
        (BLOCK, 48.85, 2.3, [t(1388, 1822), t(1388, 1823)]),
        # On the corner four tiles share: all four.
        (BLOCK, 48.9, 2.3, BLOCK),
        # On the outer edge of the block: the tile that has it.
        (BLOCK, 48.8, 2.25, [t(1388, 1822)]),
        (BLOCK, 49.0, 2.4, [t(1389, 1823)]),
        # A centre outside every tile: the nearest.
        (BLOCK, 49.05, 2.21, [t(1389, 1822)]),
        (BLOCK, 48.75, 2.39, [t(1388, 1823)]),
        (BLOCK, 48.81, 2.45, [t(1388, 1823)]),
        # Across the antimeridian.
        (ACROSS, 0.05, 179.95, [t(900, COLS - 1)]),
        (ACROSS, 0.05, -179.95, [t(900, 0)]),
        (ACROSS, 0.05, 180.0, [t(900, COLS - 1), t(900, 0)]),
        (ACROSS, 0.05, -180.0, [t(900, COLS - 1), t(900, 0)]),
        (ACROSS, 0.05, 179.8, [t(900, COLS - 1)]),
        (ACROSS, 0.05, -179.85, [t(900, 0)]),
        # The nearest is measured the short way round the antimeridian.
        ([t(900, 3590), t(900, COLS - 1)], 0.05, -179.95, [t(900, COLS - 1)]),
        ([t(900, 0), t(900, 10)], 0.05, 179.95, [t(900, 0)]),
    ],
)
def test_a_poi_belongs_to_every_tile_that_holds_it_or_else_to_the_nearest(
    tiles: list[Tile], lat: float, lon: float, expected: list[Tile]
) -> None:
    assert assign(tiles, lat, lon) == expected


def test_a_poi_belongs_to_no_tile_when_there_are_none() -> None:
    assert assign([], 48.85, 2.25) == []


# --- rectangles -------------------------------------------------------------------------------------------


def covered(boxes: Sequence[BBox]) -> list[Tile]:
    """The tiles the boxes cover, each as often as a box covers it."""
    return [tile for b in boxes for tile in tiles_of(b, U)]


@pytest.mark.parametrize(
    ("tiles", "expected"),
    [
        ([t(1388, 1822)], [BBox(48.8, 2.2, 48.9, 2.3)]),
        # A full block of tiles is one box.
        (BLOCK, [BBox(48.8, 2.2, 49.0, 2.4)]),
        (
            [t(row, col) for row in range(1385, 1390) for col in range(1820, 1823)],
            [BBox(48.5, 2.0, 49.0, 2.3)],
        ),
        # An L shape is two boxes.
        (
            [t(1388, 1822), t(1388, 1823), t(1389, 1822)],
            [BBox(48.8, 2.2, 48.9, 2.4), BBox(48.9, 2.2, 49.0, 2.3)],
        ),
        # Two tiles apart are two boxes.
        ([t(1388, 1822), t(1388, 1824)], [BBox(48.8, 2.2, 48.9, 2.3), BBox(48.8, 2.4, 48.9, 2.5)]),
        # Either side of the antimeridian: boxes that do not cross it.
        (ACROSS, [BBox(0.0, -180.0, 0.1, -179.9), BBox(0.0, 179.9, 0.1, 180.0)]),
        ([], []),
    ],
)
def test_rectangles_are_few_boxes_covering_the_tiles(tiles: list[Tile], expected: list[BBox]) -> None:
    assert rectangles(tiles) == expected


def test_the_order_and_repetition_of_the_tiles_do_not_change_the_rectangles() -> None:
    assert rectangles(list(reversed(BLOCK)) + BLOCK) == rectangles(BLOCK)


RECTANGLE_CASES: list[Any] = [
    pytest.param(BLOCK, id="block"),
    pytest.param([t(1388, 1822), t(1388, 1823), t(1389, 1822)], id="L"),
    pytest.param([t(1388, c) for c in (1820, 1821, 1823, 1824)] + [t(1390, 1821)], id="gaps"),
    pytest.param(
        [t(1388, 1822), t(1389, 1822), t(1389, 1823), t(1390, 1822), t(1390, 1823), t(1391, 1822)],
        id="staircase",
    ),
    pytest.param([t(r, c) for r in (900, 901) for c in (COLS - 2, COLS - 1, 0, 1)], id="antimeridian"),
    pytest.param([t(0, 0), t(0, COLS - 1), t(ROWS - 1, 0), t(ROWS - 1, COLS - 1)], id="corners"),
    pytest.param(
        [t(r, c) for r in range(1380, 1390) for c in range(1820, 1830) if (r * c) % 3], id="irregular"
    ),
]


@pytest.mark.parametrize("tiles", RECTANGLE_CASES)
def test_the_rectangles_cover_exactly_the_tiles_once_each(tiles: list[Tile]) -> None:
    boxes = rectangles(tiles)
    assert sorted(covered(boxes)) == sorted(set(tiles))
    assert all(not b.crosses_antimeridian for b in boxes)
    assert all(b.west < b.east and b.south < b.north for b in boxes)


@pytest.mark.parametrize("tiles", RECTANGLE_CASES)
def test_there_are_no_more_rectangles_than_tiles(tiles: list[Tile]) -> None:
    assert 1 <= len(rectangles(tiles)) <= len(set(tiles))


# --- normalised tag sets ----------------------------------------------------------------------------------


def tags(*texts: str) -> tuple[TagFilter, ...]:
    return validate_job({"south": 0, "west": 0, "north": 0.1, "east": 0.1}, list(texts)).tags


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (tags("shop", "amenity"), (TagFilter("amenity"), TagFilter("shop"))),
        (tags("amenity", "shop"), (TagFilter("amenity"), TagFilter("shop"))),
        (
            (TagFilter("shop"), TagFilter("shop"), TagFilter("amenity")),
            (TagFilter("amenity"), TagFilter("shop")),
        ),
        (tags("amenity=cafe", "amenity"), (TagFilter("amenity"),)),
        (
            tags("amenity", "amenity=cafe", "amenity=bar", "shop=bakery"),
            (TagFilter("amenity"), TagFilter("shop", "bakery")),
        ),
        (tags("amenity=cafe", "amenity=bar"), (TagFilter("amenity", "bar"), TagFilter("amenity", "cafe"))),
        (tags("shop=bakery", "amenity=cafe"), (TagFilter("amenity", "cafe"), TagFilter("shop", "bakery"))),
        (tags("amenity=cafe", "shop"), (TagFilter("amenity", "cafe"), TagFilter("shop"))),
    ],
)
def test_a_tag_set_is_normalised_sorted_once_each_without_values_of_a_whole_key(
    given: tuple[TagFilter, ...], expected: tuple[TagFilter, ...]
) -> None:
    assert normalise_tags(given) == expected


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (tags("amenity", "shop"), tags("shop", "amenity")),
        ((TagFilter("amenity"), TagFilter("amenity"), TagFilter("shop")), tags("shop", "amenity")),
        (tags("amenity", "amenity=cafe"), tags("amenity")),
        (tags("amenity=cafe", "shop", "amenity"), tags("shop", "amenity")),
        (tags("amenity=bar", "amenity=cafe"), tags("amenity=cafe", "amenity=bar")),
    ],
)
def test_the_same_tag_set_in_any_order_has_the_same_key(
    one: tuple[TagFilter, ...], other: tuple[TagFilter, ...]
) -> None:
    assert tagset_key(one) == tagset_key(other)
    assert len(tagset_key(one)) == 16
    int(tagset_key(one), 16)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (tags("amenity"), tags("shop")),
        (tags("amenity"), tags("amenity", "shop")),
        (tags("amenity=cafe"), tags("amenity")),
        (tags("amenity=cafe"), tags("amenity=bar")),
        (tags("amenity=cafe", "shop"), tags("amenity", "shop")),
        (tags("amenity=cafe"), tags("amenity=cafe", "amenity=bar")),
        (tags("shop=bakery"), tags("shop=Bakery")),
    ],
)
def test_different_tag_sets_have_different_keys(
    one: tuple[TagFilter, ...], other: tuple[TagFilter, ...]
) -> None:
    assert tagset_key(one) != tagset_key(other)


# --- split_tiles ------------------------------------------------------------------------------------------

SPLIT_CASES: list[Any] = [
    pytest.param([t(1388, 1822), t(1388, 1823)], id="two-in-a-row"),
    pytest.param([t(1388, 1822), t(1389, 1822)], id="two-in-a-column"),
    pytest.param(BLOCK, id="block"),
    pytest.param([t(1388, c) for c in range(1820, 1825)], id="one-row"),
    pytest.param([t(r, 1822) for r in range(1380, 1387)], id="one-column"),
    pytest.param([t(r, c) for r in range(1385, 1388) for c in range(1820, 1823)], id="three-by-three"),
    pytest.param([t(1388, 1822), t(1388, 1823), t(1389, 1822)], id="L"),
    pytest.param([t(r, c) for r in (900, 901) for c in (COLS - 2, COLS - 1, 0, 1)], id="antimeridian"),
    pytest.param(
        [t(r, c) for r in range(1380, 1390) for c in range(1820, 1830) if (r * c) % 3], id="irregular"
    ),
]


@pytest.mark.parametrize("tiles", SPLIT_CASES)
def test_the_split_groups_partition_the_tiles_into_at_most_four_non_empty_groups(tiles: list[Tile]) -> None:
    groups = split_tiles(tiles)
    assert 2 <= len(groups) <= 4
    assert all(groups)
    assert sorted(tile for group in groups for tile in group) == sorted(tiles)


def test_a_block_of_four_splits_into_its_four_tiles() -> None:
    assert sorted(split_tiles(BLOCK)) == sorted([[tile] for tile in BLOCK])


@pytest.mark.parametrize("tile", [t(1388, 1822), t(0, 0), t(ROWS - 1, COLS - 1)])
def test_one_tile_is_one_group(tile: Tile) -> None:
    assert split_tiles([tile]) == [[tile]]


# --- TileCover.query --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("the_job", "n_boxes"),
    [
        (job(48.8, 2.2, 49.0, 2.4, ["amenity", "shop"]), 1),
        (job(48.85, 2.25, 48.95, 2.35, ["amenity"]), 1),
        (job(0.0, 179.85, 0.1, -179.85, ["amenity", "shop=bakery"]), 2),
        (job(48.85, 2.29, 48.86, 2.3, ["amenity", "amenity=cafe", "shop"]), 1),
    ],
)
def test_a_cover_asks_one_statement_per_rectangle_and_tag(the_job: Job, n_boxes: int) -> None:
    cover = TileCover.of_job(the_job, tile_deg=0.1, owner="leader")
    boxes = rectangles(cover.tiles)
    assert len(boxes) == n_boxes
    query = cover.query(timeout_s=25, maxsize_bytes=1024)
    assert query.count("nwr[") == n_boxes * len(cover.tags)
    for b in boxes:
        for tag in cover.tags:
            assert f"nwr{tag.ql()}({b.ql()});" in query
    assert query == build_union_query(boxes, cover.tags, timeout_s=25, maxsize_bytes=1024)
    assert query.startswith("[out:json][timeout:25][maxsize:1024];(")
    assert query.endswith(");out center tags;")


def test_a_cover_restricted_to_an_l_shape_asks_two_boxes_per_tag() -> None:
    cover = TileCover.of_job(job(48.8, 2.2, 49.0, 2.4, ["amenity", "shop"]), tile_deg=0.1, owner="leader")
    l_shape = cover.only([t(1388, 1822).id, t(1388, 1823).id, t(1389, 1822).id])
    query = l_shape.query(timeout_s=25, maxsize_bytes=1024)
    assert query.count("nwr[") == 4
    assert '(nwr["amenity"](48.8,2.2,48.9,2.4);nwr["shop"](48.8,2.2,48.9,2.4);' in query
    assert 'nwr["amenity"](48.9,2.2,49,2.3);nwr["shop"](48.9,2.2,49,2.3);)' in query


def test_a_cover_names_its_tiles_and_normalised_tags() -> None:
    cover = TileCover.of_job(
        job(48.85, 2.25, 48.95, 2.35, ["shop", "amenity=cafe", "amenity"]), tile_deg=0.1, owner="o"
    )
    assert cover.ids == [tile.id for tile in BLOCK]
    assert cover.tags == (TagFilter("amenity"), TagFilter("shop"))
    assert cover.tagset == tagset_key(tags("amenity", "shop"))
    answer = cover.answer("stage-1", "2026-01-01T00:00:00Z", fetched_at="2026-01-01T00:05:00.000000Z")
    assert answer.tiles == tuple(cover.ids)
    assert answer.tags == ("amenity", "shop")
    assert answer.owner == "o"


def _assign_by_distance(tiles: list[Tile], lat: float, lon: float) -> list[Tile]:
    """The definition: every tile at distance 0, else the nearest one."""
    lat_e7, lon_e7 = round(lat * 10_000_000), round(lon * 10_000_000)
    distances = [tile.distance_units(lat_e7, lon_e7) for tile in tiles]
    inside = [tile for tile, d in zip(tiles, distances, strict=True) if d == 0]
    return inside or [tiles[distances.index(min(distances))]]


@pytest.mark.parametrize(
    "box",
    [
        pytest.param((48.0, 2.0, 48.1, 2.1), id="mid-latitudes"),
        pytest.param((-1.0, 179.9, -0.9, -179.9), id="antimeridian"),
        pytest.param((89.9, -0.1, 90.0, 0.1), id="north-pole"),
        pytest.param((-90.0, 10.0, -89.9, 10.1), id="south-pole"),
    ],
)
def test_the_tile_index_files_every_position_as_the_distance_rule_does(box: tuple[float, ...]) -> None:
    import random

    south, west, north, east = box
    units = tile_units(0.02)
    tiles = tiles_of(BBox(south, west, north, east), units)[::2]  # a sparse set: some positions fall outside
    index = TileIndex(tiles)
    rng = random.Random(7)
    lats = [rng.uniform(south - 0.05, north + 0.05) for _ in range(300)]
    lons = [rng.uniform(west - 0.05, west + 0.15) for _ in range(300)]
    # Edges and corners of the grid exactly, where a closed box shares a position with its neighbours.
    lats += [round(south + 0.02 * k, 2) for k in range(6)] * 6
    lons += [round(west + 0.02 * k, 2) for k in range(6) for _ in range(6)]
    for raw_lat, raw_lon in zip(lats, lons, strict=True):
        lat, lon = max(-90.0, min(90.0, raw_lat)), (raw_lon + 180.0) % 360.0 - 180.0
        assert index.assign(lat, lon) == _assign_by_distance(tiles, lat, lon), (lat, lon)

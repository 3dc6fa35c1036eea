"""The coverage ledger on PostgreSQL and on SQLite: which tiles are fresh, what finishing an answer writes
(osm_base, POI counts, the share of the calls), which POIs it deletes and which it must keep, partial,
repeated and out-of-order answers, and the in-place upgrade of a ``pois`` table of the previous release."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pytest

from enrichment_actors.coverage.cover import members
from enrichment_actors.coverage.ledger import Answer, TileCoverage, fetch_time, read_osm_base
from enrichment_actors.coverage.tiles import tagset_key, tile_units, tiles_of
from enrichment_actors.jobs import BBox, TagFilter
from enrichment_actors.store import PoiStore

#: The four tiles of 0.1 degrees in 48.8..49.0, 2.2..2.4: A south-west, B south-east, C north-west, D north-east.
TILES = [tile.id for tile in tiles_of(BBox(48.8, 2.2, 49.0, 2.4), tile_units(0.1))]
A, B, C, D = TILES
AMENITY = tagset_key([TagFilter("amenity")])
SHOP = tagset_key([TagFilter("shop")])

OLD_BASE = "2026-01-01T00:00:00Z"
BASE = "2026-02-01T00:00:00Z"
NEW_BASE = "2026-03-01T00:00:00Z"

# POIs by the tile they lie in.
X = ("node", 1, 48.85, 2.25, {"amenity": "cafe"})  # A
Y = ("node", 2, 48.85, 2.35, {"amenity": "bar"})  # B
Z = ("way", 3, 48.95, 2.25, {"amenity": "school"})  # C
EDGE = ("node", 4, 48.85, 2.3, {"amenity": "bench"})  # on the edge of A and B: both


def answer(
    key: str,
    osm_base: str | None = BASE,
    tiles: Sequence[str] = TILES,
    *,
    tagset: str = AMENITY,
    calls: float = 1.0,
) -> Answer:
    tag = "amenity" if tagset == AMENITY else "shop"
    return Answer(key=key, tagset=tagset, tags=(tag,), tiles=tuple(tiles), osm_base=osm_base, calls=calls)


def land(store: PoiStore, the_answer: Answer, *chunks: Sequence[Any]) -> int:
    """Store each chunk of ``the_answer`` (as the store step does), then finish it; POIs deleted."""
    for chunk in chunks:
        store.upsert(chunk, answer=the_answer, members=members(the_answer.tiles, chunk))
    return store.finish_answer(the_answer)


def keys(store: PoiStore) -> set[tuple[str, int]]:
    return {(row[0], row[1]) for row in store.fetch_all()}


def key(poi: Sequence[Any]) -> tuple[str, int]:
    return (poi[0], poi[1])


def coverage(store: PoiStore, tiles: Sequence[str] = TILES) -> dict[tuple[str, str], TileCoverage]:
    return {(row.tile, row.tagset): row for row in store.ledger.tiles(list(tiles))}


def elements(store: PoiStore) -> set[tuple[str, str, str, int, str]]:
    model = store.ledger.elements
    return {(r.tile, r.tagset, r.element_type, r.osm_id, r.answer) for r in model.select()}


# --- freshness --------------------------------------------------------------------------------------------

FETCHED = dt.datetime(2026, 3, 1, 12, 0, 0)


@pytest.mark.parametrize(
    ("since", "fresh"),
    [
        (FETCHED - dt.timedelta(hours=1), {A, B}),
        (FETCHED, {A, B}),
        (FETCHED + dt.timedelta(seconds=1), set()),
        (FETCHED + dt.timedelta(days=1), set()),
    ],
)
def test_a_tile_fetched_at_or_after_since_is_fresh_and_an_older_one_is_not(
    store: PoiStore, since: dt.datetime, fresh: set[str]
) -> None:
    store.ledger.finish(answer("a1", tiles=[A, B]), now=FETCHED)
    assert store.ledger.fresh_tiles(AMENITY, TILES, since) == fresh


def test_a_tile_fetched_for_another_tag_set_is_not_fresh(store: PoiStore) -> None:
    store.ledger.finish(answer("a1", tiles=[A, B], tagset=SHOP), now=FETCHED)
    assert store.ledger.fresh_tiles(AMENITY, TILES, FETCHED - dt.timedelta(hours=1)) == set()
    assert store.ledger.fresh_tiles(SHOP, TILES, FETCHED - dt.timedelta(hours=1)) == {A, B}


def test_only_the_tiles_asked_about_are_answered(store: PoiStore) -> None:
    store.ledger.finish(answer("a1"), now=FETCHED)
    assert store.ledger.fresh_tiles(AMENITY, [B, D, "1000000:0:0"], FETCHED) == {B, D}
    assert store.ledger.fresh_tiles(AMENITY, [], FETCHED) == set()


def test_the_store_counts_tiles_fetched_within_max_age_as_fresh(store: PoiStore) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    store.ledger.finish(answer("recent", tiles=[A, B]), now=now - dt.timedelta(minutes=5))
    store.ledger.finish(answer("old", tiles=[C]), now=now - dt.timedelta(hours=2))
    assert store.fresh_tiles(AMENITY, TILES, max_age_s=3600) == {A, B}
    assert store.fresh_tiles(AMENITY, TILES, max_age_s=3 * 3600) == {A, B, C}
    assert store.fresh_tiles(AMENITY, TILES, max_age_s=60) == set()
    assert store.fresh_tiles(SHOP, TILES, max_age_s=3 * 3600) == set()


def test_an_answer_finished_through_the_store_is_fresh_at_once(store: PoiStore) -> None:
    land(store, answer("a1", tiles=[A, D]), [X])
    assert store.fresh_tiles(AMENITY, TILES, max_age_s=60) == {A, D}


# --- what a finished answer writes ------------------------------------------------------------------------


def test_finishing_a_whole_answer_marks_its_tiles_with_osm_base_pois_and_a_share_of_the_calls(
    store: PoiStore,
) -> None:
    assert land(store, answer("a1"), [X, Y], [Z, EDGE]) == 0
    rows = coverage(store)
    assert sorted(rows) == [(tile, AMENITY) for tile in TILES]
    assert {tile: rows[tile, AMENITY].pois for tile in TILES} == {A: 2, B: 2, C: 1, D: 0}
    assert {rows[tile, AMENITY].osm_base for tile in TILES} == {BASE}
    assert {rows[tile, AMENITY].outcome for tile in TILES} == {"ok"}
    assert {rows[tile, AMENITY].calls for tile in TILES} == {0.25}
    assert {rows[tile, AMENITY].tags for tile in TILES} == {("amenity",)}
    assert keys(store) == {key(X), key(Y), key(Z), key(EDGE)}


def test_the_calls_of_two_answers_add_up_in_each_tile(store: PoiStore) -> None:
    land(store, answer("a1"), [X])
    land(store, answer("a2", NEW_BASE), [X])
    rows = coverage(store)
    assert {rows[tile, AMENITY].calls for tile in TILES} == {0.5}
    assert {rows[tile, AMENITY].osm_base for tile in TILES} == {NEW_BASE}


def test_an_answer_of_several_calls_shares_them_among_its_tiles(store: PoiStore) -> None:
    land(store, answer("a1", tiles=[A, B], calls=3.0), [X])
    rows = coverage(store)
    assert {tile: rows[tile, AMENITY].calls for tile, _ in rows} == {A: 1.5, B: 1.5}


def test_the_ledger_files_each_element_under_the_tiles_that_hold_it(store: PoiStore) -> None:
    land(store, answer("a1"), [X, Y, Z, EDGE])
    assert elements(store) == {
        (A, AMENITY, "node", 1, "a1"),
        (B, AMENITY, "node", 2, "a1"),
        (C, AMENITY, "way", 3, "a1"),
        (A, AMENITY, "node", 4, "a1"),
        (B, AMENITY, "node", 4, "a1"),
    }


# --- deletions --------------------------------------------------------------------------------------------


def test_a_poi_removed_upstream_is_deleted_once_the_whole_answer_has_landed(store: PoiStore) -> None:
    land(store, answer("a1"), [X, Y], [Z])
    assert land(store, answer("a2", NEW_BASE), [X], [Z]) == 1
    assert keys(store) == {key(X), key(Z)}
    rows = coverage(store)
    assert {tile: rows[tile, AMENITY].pois for tile in TILES} == {A: 1, B: 0, C: 1, D: 0}
    assert {r[:4] for r in elements(store)} == {(A, AMENITY, "node", 1), (C, AMENITY, "way", 3)}


def test_pois_removed_upstream_from_several_tiles_are_counted(store: PoiStore) -> None:
    land(store, answer("a1"), [X, Y, Z, EDGE])
    assert land(store, answer("a2", NEW_BASE), [X]) == 3
    assert keys(store) == {key(X)}


def test_an_answer_with_no_pois_left_deletes_them_all(store: PoiStore) -> None:
    land(store, answer("a1"), [X, Y])
    assert land(store, answer("a2", NEW_BASE)) == 2
    assert store.count() == 0
    assert {row.pois for row in coverage(store).values()} == {0}


def test_a_poi_another_tile_still_holds_is_not_deleted(store: PoiStore) -> None:
    # EDGE lies on the edge of A and B: a1 files it under both.
    land(store, answer("a1", tiles=[A, B]), [X, EDGE])
    # a2 covers A only and no longer returns EDGE: B still holds it.
    assert land(store, answer("a2", NEW_BASE, tiles=[A]), [X]) == 0
    assert keys(store) == {key(X), key(EDGE)}
    assert (A, AMENITY, "node", 4, "a1") not in elements(store)
    assert (B, AMENITY, "node", 4, "a1") in elements(store)


def test_a_poi_another_tag_set_still_holds_is_not_deleted(store: PoiStore) -> None:
    land(store, answer("amenity-1"), [X, Y])
    land(store, answer("shop-1", tagset=SHOP), [Y])
    assert land(store, answer("amenity-2", NEW_BASE), [X]) == 0
    assert keys(store) == {key(X), key(Y)}
    # The shop tag set then loses it too: no one holds it any more.
    assert land(store, answer("shop-2", NEW_BASE, tagset=SHOP)) == 1
    assert keys(store) == {key(X)}


def test_a_poi_of_a_tile_the_answer_does_not_cover_is_not_deleted(store: PoiStore) -> None:
    land(store, answer("a1"), [X, Y, Z])
    assert land(store, answer("a2", NEW_BASE, tiles=[A, B]), [X]) == 1
    assert keys(store) == {key(X), key(Z)}
    rows = coverage(store)
    assert rows[C, AMENITY].osm_base == BASE
    assert rows[A, AMENITY].osm_base == NEW_BASE


def test_nothing_is_deleted_before_the_whole_answer_has_landed(store: PoiStore) -> None:
    land(store, answer("a1"), [X, Y], [Z])
    before = coverage(store)
    second = answer("a2", NEW_BASE)
    # Only the first chunk of a2 is stored: a partial answer.
    store.upsert([X], answer=second, members=members(second.tiles, [X]))
    assert keys(store) == {key(X), key(Y), key(Z)}
    assert coverage(store) == before
    assert (B, AMENITY, "node", 2, "a1") in elements(store)
    # Its last chunk lands: now Y is gone.
    store.upsert([Z], answer=second, members=members(second.tiles, [Z]))
    assert store.finish_answer(second) == 1
    assert keys(store) == {key(X), key(Z)}


def test_finishing_an_answer_twice_changes_nothing_the_second_time(store: PoiStore) -> None:
    land(store, answer("a1"), [X, Y])
    second = answer("a2", NEW_BASE)
    assert land(store, second, [X]) == 1
    pois, rows, filed = store.fetch_all(), coverage(store), elements(store)
    assert store.finish_answer(second) == 0
    assert store.fetch_all() == pois
    assert coverage(store) == rows
    assert elements(store) == filed
    assert {row.calls for row in coverage(store).values()} == {0.5}


# --- answers out of order ---------------------------------------------------------------------------------


def test_an_older_answer_landing_after_a_newer_one_deletes_nothing_and_overwrites_nothing(
    store: PoiStore,
) -> None:
    moved = ("node", 1, 48.86, 2.26, {"amenity": "cafe", "name": "New"})
    newer = answer("new", NEW_BASE)
    land(store, newer, [moved, Y])
    pois_before, rows_before, filed_before = store.fetch_all(), coverage(store), elements(store)

    older = answer("old", OLD_BASE)
    assert land(store, older, [X]) == 0  # X at its old place, without a name, and no Y.

    assert store.fetch_all() == pois_before
    assert {(p[0], p[1]): p[2:] for p in store.fetch_all()}[key(X)] == moved[2:]
    assert coverage(store) == rows_before
    assert {row.osm_base for row in coverage(store).values()} == {NEW_BASE}
    assert elements(store) == filed_before
    osm_base = {(r.element_type, r.osm_id): r.osm_base for r in store.model.select()}
    assert osm_base == {key(X): NEW_BASE, key(Y): NEW_BASE}


def test_an_older_answer_still_writes_the_tiles_no_newer_answer_holds(store: PoiStore) -> None:
    land(store, answer("new", NEW_BASE, tiles=[A]), [X])
    assert land(store, answer("old", OLD_BASE, tiles=[A, C]), [X, Z]) == 0
    rows = coverage(store)
    assert (rows[A, AMENITY].osm_base, rows[A, AMENITY].calls) == (NEW_BASE, 1.0)
    assert (rows[C, AMENITY].osm_base, rows[C, AMENITY].calls, rows[C, AMENITY].pois) == (OLD_BASE, 0.5, 1)
    assert keys(store) == {key(X), key(Z)}


def test_a_newer_answer_overwrites_what_an_older_one_wrote(store: PoiStore) -> None:
    land(store, answer("old", OLD_BASE), [X])
    moved = ("node", 1, 48.86, 2.26, {"amenity": "cafe", "name": "New"})
    land(store, answer("new", NEW_BASE), [moved])
    assert store.fetch_all() == [moved]
    assert {row.osm_base for row in coverage(store).values()} == {NEW_BASE}


# --- upgrading the pois table of the previous release ------------------------------------------------------

OLD_ROW = ("node", 99, 48.81, 2.21, {"amenity": "fountain"})


def _create_previous_release_pois(store: PoiStore, postgres: bool) -> None:
    db: Any = store.database
    if postgres:
        db.execute_sql("DROP TABLE IF EXISTS pois, coverage, coverage_elements")
        db.execute_sql(
            "CREATE TABLE pois (element_type VARCHAR(8) NOT NULL, osm_id BIGINT NOT NULL, "
            "lat DOUBLE PRECISION NOT NULL, lon DOUBLE PRECISION NOT NULL, tags JSONB NOT NULL, "
            "refreshed_at TIMESTAMP NOT NULL, PRIMARY KEY (element_type, osm_id))"
        )
        db.execute_sql(
            "INSERT INTO pois VALUES ('node', 99, 48.81, 2.21, '{\"amenity\":\"fountain\"}'::jsonb, "
            "'2025-06-01 12:00:00')"
        )
    else:
        db.execute_sql("DROP TABLE IF EXISTS pois")
        db.execute_sql("DROP TABLE IF EXISTS coverage")
        db.execute_sql("DROP TABLE IF EXISTS coverage_elements")
        db.execute_sql(
            "CREATE TABLE pois (element_type VARCHAR(8) NOT NULL, osm_id BIGINT NOT NULL, "
            "lat REAL NOT NULL, lon REAL NOT NULL, tags TEXT NOT NULL, "
            "refreshed_at TIMESTAMP NOT NULL, PRIMARY KEY (element_type, osm_id))"
        )
        db.execute_sql(
            "INSERT INTO pois VALUES ('node', 99, 48.81, 2.21, '{\"amenity\":\"fountain\"}', "
            "'2025-06-01 12:00:00')"
        )
    store.close()


def test_a_pois_table_of_the_previous_release_is_upgraded_in_place(store: PoiStore) -> None:
    postgres = store.url.startswith("postgres")
    _create_previous_release_pois(store, postgres)
    tables = set(store.database.get_tables())
    assert "pois" in tables
    assert not tables & {"coverage", "coverage_elements"}
    assert "osm_base" not in {c.name for c in store.database.get_columns("pois")}
    store.close()

    upgraded = PoiStore(store.url)
    try:
        upgraded.ensure_schema()
        assert "osm_base" in {c.name for c in upgraded.database.get_columns("pois")}
        assert {"pois", "coverage", "coverage_elements"} <= set(upgraded.database.get_tables())
        [(kind, osm_id, lat, lon, tags)] = upgraded.fetch_all()
        assert (kind, osm_id, tags) == (OLD_ROW[0], OLD_ROW[1], OLD_ROW[4])
        assert (lat, lon) == pytest.approx((OLD_ROW[2], OLD_ROW[3]), abs=1e-5)
        assert upgraded.model.get().osm_base is None

        # A second store on the upgraded table changes nothing.
        again = PoiStore(store.url)
        again.ensure_schema()
        assert again.count() == 1
        again.close()

        assert land(upgraded, answer("a1"), [X, Y]) == 0
        assert keys(upgraded) == {key(OLD_ROW), key(X), key(Y)}
        assert land(upgraded, answer("a2", NEW_BASE), [X]) == 1
        assert keys(upgraded) == {key(OLD_ROW), key(X)}
        assert coverage(upgraded)[A, AMENITY].osm_base == NEW_BASE
        osm_base = {(r.element_type, r.osm_id): r.osm_base for r in upgraded.model.select()}
        assert osm_base == {key(OLD_ROW): None, key(X): NEW_BASE}
    finally:
        upgraded.close()


# --- Answers that cross: each of these failed before the ledger compared answers' timestamps ---


def test_a_poi_an_older_answer_brings_back_after_a_newer_one_dropped_it_is_not_resurrected(
    store: PoiStore,
) -> None:
    # Y was removed upstream before NEW_BASE: the newer answer lacks it.
    land(store, answer("new", NEW_BASE), [X])
    # The older answer, which still had Y, lands late.
    land(store, answer("old", OLD_BASE), [X, Y])
    # An even newer answer, still without Y, cannot delete it either: no coverage_elements row names it.
    land(store, answer("newest", "2026-04-01T00:00:00Z"), [X])
    assert keys(store) == {key(X)}


def test_two_answers_in_flight_at_once_keep_the_pois_the_newer_one_holds(store: PoiStore) -> None:
    older, newer = answer("a1", BASE), answer("a2", NEW_BASE)
    store.upsert([X, Y], answer=older, members=members(older.tiles, [X, Y]))
    store.upsert([X, Z], answer=newer, members=members(newer.tiles, [X, Z]))
    store.finish_answer(older)
    store.finish_answer(newer)
    assert keys(store) == {key(X), key(Z)}


def test_finishing_an_answer_again_after_a_later_answer_of_the_same_osm_base_deletes_nothing(
    store: PoiStore,
) -> None:
    first, second = answer("a1", BASE), answer("a2", BASE)
    land(store, first, [X, Y])
    land(store, second, [X, Y, Z])
    assert store.finish_answer(first) == 0
    assert keys(store) == {key(X), key(Y), key(Z)}


def test_an_element_twice_in_one_chunk_is_filed_once(store: PoiStore) -> None:
    first = answer("a1")
    assert store.upsert([X, X], answer=first, members=members(first.tiles, [X, X])) == 2
    assert store.finish_answer(first) == 0
    assert keys(store) == {key(X)}
    assert coverage(store)[A, AMENITY].pois == 1


# --- Odd timestamp_osm_base values: one rule each (each of these failed before the ledger ordered answers by
# --- their version: the timestamp, then the fetch time) ---


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        ("2026-12-01T10:00:00Z", ("2026-12-01T10:00:00Z", False)),
        # No time zone: UTC.
        ("2026-12-01T10:00:00", ("2026-12-01T10:00:00Z", False)),
        ("2026-12-01T11:30:00+01:30", ("2026-12-01T10:00:00Z", False)),
        ("2026-12-01 10:00:00Z", ("2026-12-01T10:00:00Z", False)),
        # No replication: no timestamp, and nothing unusual.
        ("", (None, False)),
        (None, (None, False)),
        # Unusable: stored as none, and counted.
        ("2026-12-01T10:00:00.000000000000000000Z", (None, True)),
        ("now", (None, True)),
        ("2026-13-01T10:00:00Z", (None, True)),
        (20261201, (None, True)),
    ],
)
def test_each_odd_osm_base_is_read_by_one_rule(raw: object, read: tuple[str | None, bool]) -> None:
    assert read_osm_base(raw) == read


def at(minute: int) -> str:
    return fetch_time(dt.datetime(2026, 12, 1, 10, minute, tzinfo=dt.UTC))


@pytest.mark.parametrize("osm_base", [None, BASE], ids=["no-replication", "same-base"])
def test_a_later_answer_of_the_same_or_no_osm_base_replaces_the_earlier_one(
    store: PoiStore, osm_base: str | None
) -> None:
    first = Answer("a1", AMENITY, ("amenity",), tuple(TILES), osm_base, fetched_at=at(0))
    land(store, first, [X, Y])
    renamed = ("node", 1, 48.85, 2.25, {"amenity": "cafe", "name": "Renamed"})
    second = Answer("a2", AMENITY, ("amenity",), tuple(TILES), osm_base, fetched_at=at(5))
    # Y was deleted upstream, X renamed, with no new timestamp: the refetch is recorded and Y goes.
    assert land(store, second, [renamed]) == 1
    assert store.fetch_all() == [renamed]
    assert {row.osm_base for row in coverage(store).values()} == {osm_base}
    assert store.ledger.fresh_tiles(AMENITY, TILES, dt.datetime(2000, 1, 1)) == set(TILES)
    # The first answer finished again (a retry) changes nothing: it is older.
    assert store.finish_answer(first) == 0
    assert store.fetch_all() == [renamed]
    assert {r[4] for r in elements(store)} == {"a2"}


def test_an_answer_without_a_timestamp_counts_as_data_of_its_fetch_time(store: PoiStore) -> None:
    land(store, Answer("a1", AMENITY, ("amenity",), (A,), "2026-12-01T10:02:00Z", fetched_at=at(3)), [X])
    # Fetched later from a server without replication: newer, so it replaces.
    assert land(store, Answer("a2", AMENITY, ("amenity",), (A,), None, fetched_at=at(10))) == 1
    # An answer of data from before that fetch time, landing late: older, so it touches nothing.
    late = Answer("a3", AMENITY, ("amenity",), (A,), "2026-12-01T10:05:00Z", fetched_at=at(20))
    assert land(store, late, [X]) == 0
    assert keys(store) == set()


def test_a_dropped_element_keeps_its_row_and_its_poi(store: PoiStore) -> None:
    land(store, answer("a1", tiles=[A, B]), [X, Y])
    # The new answer named Y with an unusable position: its old row stays, X's too.
    newer = Answer("a2", AMENITY, ("amenity",), (A, B), NEW_BASE, kept=(key(Y),))
    assert land(store, newer, [X]) == 0
    assert keys(store) == {key(X), key(Y)}


def test_ledger_tables_of_the_previous_release_get_their_version_columns_in_place(store: PoiStore) -> None:
    land(store, answer("a1", tiles=[A]), [X])
    db: Any = store.database
    for table in ("pois", "coverage", "coverage_elements"):
        db.execute_sql(f"ALTER TABLE {table} DROP COLUMN version")
    store.close()
    upgraded = PoiStore(store.url)
    try:
        upgraded.ensure_schema()
        for table in ("pois", "coverage", "coverage_elements"):
            assert "version" in {c.name for c in upgraded.database.get_columns(table)}
        # The rows of the previous release count as older than any answer: the next one replaces them.
        assert land(upgraded, answer("a2", OLD_BASE, tiles=[A])) == 1
        assert keys(upgraded) == set()
    finally:
        upgraded.close()


def test_an_answer_without_a_timestamp_fetched_in_the_second_of_a_base_is_ordered_by_the_fraction() -> None:
    based = Answer("a1", AMENITY, ("amenity",), (A,), "2026-12-01T10:00:00Z", fetched_at=at(0))
    later = Answer("a2", AMENITY, ("amenity",), (A,), None, fetched_at="2026-12-01T10:00:00.500000Z")
    assert based.version < later.version


def test_an_answer_staged_by_the_previous_release_is_older_than_any_fetched_since(store: PoiStore) -> None:
    # Its JSON has no fetch time, nor (from a server without replication) a timestamp: its version was "|",
    # which sorted after every other, so no later answer could update or delete what it wrote.
    legacy = Answer.from_json(
        {"key": "old", "tagset": AMENITY, "tags": ["amenity"], "tiles": [A], "osm_base": None}
    )
    land(store, legacy, [X, EDGE])
    renamed = ("node", 1, 48.85, 2.25, {"amenity": "cafe", "name": "Renamed"})
    assert land(store, Answer("new", AMENITY, ("amenity",), (A,), None, fetched_at=at(0)), [renamed]) == 1
    assert store.fetch_all() == [renamed]


@pytest.mark.parametrize(
    ("staged", "read"), [("yesterday", None), ("2026-12-01T10:00:00", "2026-12-01T10:00:00Z")]
)
def test_an_osm_base_staged_by_the_previous_release_is_read_by_todays_rules(
    staged: str, read: str | None
) -> None:
    answer = Answer.from_json({"key": "k", "tagset": AMENITY, "tags": [], "tiles": [A], "osm_base": staged})
    assert answer.osm_base == read


def test_a_tile_with_a_newer_answer_still_landing_offers_no_base_to_diff_from(store: PoiStore) -> None:
    # A diff since the tile's base would miss an element that newer answer brought and that is gone since.
    land(store, answer("a1", BASE, tiles=[A, B]), [X, Y])
    landing = answer("a2", NEW_BASE, tiles=[A])
    store.upsert([X], answer=landing, members=members(landing.tiles, [X]))
    assert store.tile_bases(AMENITY, [A, B]) == {A: None, B: BASE}
    store.finish_answer(landing)
    assert store.tile_bases(AMENITY, [A, B]) == {A: NEW_BASE, B: BASE}

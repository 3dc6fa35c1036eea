"""The deletion rule on PostgreSQL with two transactions side by side, one stopped between its steps.

Under READ COMMITTED a statement does not see another transaction's
uncommitted rows: each test here stops one transaction at a failpoint, right
where the other must not miss what it wrote or removed, lets the second run
until it finishes or waits on a lock (read from ``pg_stat_activity``, not
guessed with a sleep), then lets the first commit. Each failed on every run
with the ledger of issue 10 (no locks: check the holders, then delete).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from enrichment_actors.coverage.cover import members
from enrichment_actors.coverage.ledger import Answer
from enrichment_actors.store import PoiStore
from enrichment_middleware.failpoints import hooked
from tests.support.contention import cpu_hog

from .test_ledger import AMENITY, SHOP, TILES, A, B, answer, key, keys

#: A POI in tile A that moves into tile B (its neighbour) upstream.
IN_A = ("node", 7, 48.85, 2.25, {"amenity": "cafe", "shop": "books"})
IN_B = ("node", 7, 48.85, 2.35, {"amenity": "cafe", "shop": "books"})
OLD, NEW = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[PoiStore]:
    store = PoiStore(postgres_url)
    store.ensure_schema()
    for model in (store.ledger.elements, store.ledger.coverage, store.model):
        model.delete().execute()
    yield store
    store.close()


def land(store: PoiStore, the_answer: Answer, *pois: Any) -> None:
    store.upsert(list(pois), answer=the_answer, members=members(the_answer.tiles, list(pois)))
    store.finish_answer(the_answer)


def waiting_on_a_lock(store: PoiStore) -> int:
    """How many other sessions of this database wait on a lock now."""
    database: Any = store.database
    cursor = database.execute_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    return int(cursor.fetchone()[0])


def interleave(
    store: PoiStore, failpoint: str, first: Callable[[], object], second: Callable[[], object]
) -> None:
    """Run ``first`` until ``failpoint`` (in its transaction), then ``second`` until it ends or waits on a
    lock, then let ``first`` commit; both must end without an error."""
    reached, go = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def stop_first() -> None:
        if threading.current_thread().name == "first":
            reached.set()
            assert go.wait(30), "the test never let the first transaction go on"

    def run(work: Callable[[], object]) -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    with hooked(failpoint, stop_first):
        one = threading.Thread(target=run, args=(first,), name="first")
        one.start()
        assert reached.wait(30), f"the first transaction never reached {failpoint}"
        two = threading.Thread(target=run, args=(second,), name="second")
        two.start()
        deadline = time.monotonic() + 30
        while two.is_alive() and not waiting_on_a_lock(store):
            assert time.monotonic() < deadline, "the second transaction neither ended nor waited"
            time.sleep(0.01)
        go.set()
        one.join(30)
        two.join(30)
    assert not errors, errors


def test_a_poi_a_neighbouring_tile_is_writing_is_not_deleted_by_the_finish_of_the_tile_it_left(
    pg_store: PoiStore,
) -> None:
    # Finding 1: the POI moved from A into B; B's chunk has written it, not yet committed, when A's
    # newer answer (without it) finishes. Before: the finish saw no holder, its DELETE waited on the
    # chunk's row lock, then removed the row the chunk had just written.
    land(pg_store, answer("a-old", OLD, tiles=[A]), IN_A)
    a_new, b_new = answer("a-new", NEW, tiles=[A]), answer("b-new", NEW, tiles=[B])
    interleave(
        pg_store,
        "store.chunk_written",
        lambda: pg_store.upsert([IN_B], answer=b_new, members=members(b_new.tiles, [IN_B])),
        lambda: pg_store.finish_answer(a_new),
    )
    pg_store.finish_answer(b_new)
    assert keys(pg_store) == {key(IN_B)}
    [(_, _, lat, lon, _)] = pg_store.fetch_all()
    assert (lat, lon) == (IN_B[2], IN_B[3])


def test_a_poi_two_tag_sets_drop_at_once_is_deleted(pg_store: PoiStore) -> None:
    # Finding 2: both tag sets of tile A held the POI; upstream deleted it. Before: each finish still
    # saw the other's uncommitted-deleted row as a holder, both kept it, and no ledger row named it.
    land(pg_store, answer("amenity-old", OLD, tiles=[A]), IN_A)
    land(pg_store, answer("shop-old", OLD, tiles=[A], tagset=SHOP), IN_A)
    interleave(
        pg_store,
        "ledger.finish.checked",
        lambda: pg_store.finish_answer(answer("amenity-new", NEW, tiles=[A])),
        lambda: pg_store.finish_answer(answer("shop-new", NEW, tiles=[A], tagset=SHOP)),
    )
    assert keys(pg_store) == set()
    assert not list(pg_store.ledger.elements.select())


def test_a_poi_another_tag_set_writes_while_one_drops_it_is_kept(pg_store: PoiStore) -> None:
    # The same element, written by the shop tag set's chunk while the amenity tag set's finish drops it.
    land(pg_store, answer("amenity-old", OLD, tiles=[A]), IN_A)
    shop = answer("shop-new", NEW, tiles=[A], tagset=SHOP)
    interleave(
        pg_store,
        "store.chunk_written",
        lambda: pg_store.upsert([IN_A], answer=shop, members=members(shop.tiles, [IN_A])),
        lambda: pg_store.finish_answer(answer("amenity-new", NEW, tiles=[A])),
    )
    pg_store.finish_answer(shop)
    assert keys(pg_store) == {key(IN_A)}


def test_a_finish_waits_for_a_chunk_of_its_own_tile_and_then_judges_its_rows(pg_store: PoiStore) -> None:
    # An older answer's chunk writing into the tile while the newer answer finishes: the finish waits for
    # it (the tile's lock), so the older rows it commits are judged and removed, never left for ever.
    land(pg_store, answer("a-first", OLD, tiles=[A]))
    older = answer("a-older", "2026-01-15T00:00:00Z", tiles=[A])
    newer = answer("a-newer", NEW, tiles=[A])
    interleave(
        pg_store,
        "store.chunk_written",
        lambda: pg_store.upsert([IN_A], answer=older, members=members(older.tiles, [IN_A])),
        lambda: pg_store.finish_answer(newer),
    )
    pg_store.finish_answer(older)
    assert keys(pg_store) == set()
    assert not list(pg_store.ledger.elements.select())
    [row] = pg_store.ledger.tiles([A])
    assert row.osm_base == NEW


@pytest.mark.parametrize("threads", [8])
def test_many_finishes_and_chunks_at_once_leave_the_mirror_whole(pg_store: PoiStore, threads: int) -> None:
    # Two tag sets and four tiles, each answer written and finished by its own thread at once, with a
    # pause between the steps: whatever order they commit in, every POI the latest answers hold is there,
    # and no POI is left that no ledger row holds. Deadlocks, if any, are retried, never an error.
    rows = [
        ("node", n, 48.85 if n % 2 else 48.95, 2.25 if n % 3 else 2.35, {"amenity": "x"}) for n in range(40)
    ]
    for tagset in (AMENITY, SHOP):
        land(pg_store, answer(f"{tagset}-old", OLD, tagset=tagset), *rows)
    survivors = [row for row in rows if row[1] % 4]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        tagset = (AMENITY, SHOP)[index % 2]
        tile = TILES[(index // 2) % len(TILES)]
        mine = answer(f"{tagset}-{tile}-new", NEW, tiles=[tile], tagset=tagset)
        try:
            pg_store.upsert(survivors, answer=mine, members=members(mine.tiles, survivors))
            pg_store.finish_answer(mine)
        except BaseException as exc:
            errors.append(exc)

    with cpu_hog(), hooked("ledger.finish.unfiled", lambda: time.sleep(0.01)):
        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(60)
    assert not errors, errors
    assert keys(pg_store) == {key(row) for row in survivors}
    held = {(r.element_type, r.osm_id) for r in pg_store.ledger.elements.select()}
    assert held == keys(pg_store)


def test_a_transaction_postgresql_aborts_for_a_deadlock_runs_again_and_both_commit(
    pg_store: PoiStore,
) -> None:
    # Two transactions that lock two rows in opposite orders: PostgreSQL aborts one (40P01); the store
    # runs it again instead of reporting a persistence error.
    land(pg_store, answer("a", OLD, tiles=[A, B]), IN_A, ("node", 8, 48.85, 2.35, {"amenity": "bar"}))
    database: Any = pg_store.database
    both_hold_one = threading.Barrier(2, timeout=10)
    attempts: list[str] = []
    errors: list[BaseException] = []

    def lock(first: int, second: int) -> Callable[[], None]:
        def work() -> None:
            attempts.append(threading.current_thread().name)
            database.execute_sql("SELECT 1 FROM pois WHERE osm_id = %s FOR UPDATE", (first,))
            if attempts.count(threading.current_thread().name) == 1:
                both_hold_one.wait()
            database.execute_sql("SELECT 1 FROM pois WHERE osm_id = %s FOR UPDATE", (second,))

        return work

    def run(name: str, work: Callable[[], None]) -> None:
        try:
            pg_store._in_transaction(work, name)
        except BaseException as exc:
            errors.append(exc)

    pool = [
        threading.Thread(target=run, args=("one", lock(7, 8)), name="one"),
        threading.Thread(target=run, args=("two", lock(8, 7)), name="two"),
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30)
    assert not errors, errors
    assert len(attempts) == 3  # one of the two ran again


def _previous_release_schema(url: str) -> None:
    store = PoiStore(url)
    store.ensure_schema()
    database: Any = store.database
    for table in ("pois", "coverage", "coverage_elements"):
        database.execute_sql(f"ALTER TABLE {table} DROP COLUMN IF EXISTS version")
    store.close()


def _no_tables(url: str) -> None:
    store = PoiStore(url)
    database: Any = store.database
    database.execute_sql("DROP TABLE IF EXISTS pois, coverage, coverage_elements")
    store.close()


@pytest.mark.parametrize("schema", [_no_tables, _previous_release_schema], ids=["empty", "previous release"])
def test_worker_processes_starting_together_create_or_upgrade_the_schema_once(
    postgres_url: str, schema: Callable[[str], None]
) -> None:
    # Every worker process runs ensure_schema at start: six at once raced their CREATE TABLE IF NOT EXISTS
    # (a duplicate key in pg_type) or their ALTERs (a deadlock), and the losers stopped, blaming DATABASE_URL.
    for _ in range(3):
        schema(postgres_url)
        assert not _start_together(postgres_url, workers=6)


def _start_together(url: str, *, workers: int) -> list[BaseException]:
    """``workers`` stores running ensure_schema at the same instant; the errors they met."""
    start = threading.Barrier(workers, timeout=30)
    errors: list[BaseException] = []

    def start_a_worker() -> None:
        store = PoiStore(url)
        start.wait()
        try:
            store.ensure_schema()
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    pool = [threading.Thread(target=start_a_worker) for _ in range(workers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    return errors

"""Tile claims under contention: many threads, a CPU hog, pauses and failures between the claim's steps.

A claim takes the lock of its set of tiles, then each tile's lease, then
gives the lock back. Whatever interleaves between those steps, a tile is
held by one job at most, and identical sets sent together are held whole by
one of them; a claimer that fails midway keeps what it took (its redelivered
message claims the rest under the same owner) and leaves nothing held twice.
"""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections.abc import Iterator

import pytest

from enrichment_actors.coverage.claims import TileClaims
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.failpoints import FailpointError, configure, hooked
from tests.support.contention import cpu_hog

THREADS = 16
TAGSET = "amenity"


@pytest.fixture
def claims(redis_url: str) -> Iterator[TileClaims]:
    backend = RedisBackend.from_url(redis_url, namespace=f"claims-{uuid.uuid4().hex[:8]}")
    configure("claims.*=sleep:0-0.005")
    try:
        yield TileClaims(backend, ttl_s=60)
    finally:
        configure("")


def _race(claims: TileClaims, wanted: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every owner claims its tiles at once, from its own thread, beside a CPU hog."""
    start = threading.Barrier(len(wanted))
    held: dict[str, list[str]] = {}

    def claim(owner: str) -> None:
        start.wait()
        held[owner] = claims.claim(TAGSET, wanted[owner], owner=owner)

    threads = [threading.Thread(target=claim, args=(owner,)) for owner in wanted]
    with cpu_hog(threads=2):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return held


def _holders(held: dict[str, list[str]]) -> dict[str, list[str]]:
    by_tile: dict[str, list[str]] = {}
    for owner, tiles in held.items():
        for tile in tiles:
            by_tile.setdefault(tile, []).append(owner)
    return by_tile


@pytest.mark.parametrize("run", range(1))
def test_identical_sets_sent_together_are_held_whole_by_one_job(claims: TileClaims, run: int) -> None:
    tiles = [f"200000:{6900 + run}:{9100 + i}" for i in range(9)]
    held = _race(claims, {f"job-{i}": list(tiles) for i in range(THREADS)})
    winners = [owner for owner, got in held.items() if got]
    assert len(winners) == 1, held
    assert sorted(held[winners[0]]) == sorted(tiles)


@pytest.mark.parametrize("run", range(1))
def test_overlapping_sets_never_hold_a_tile_twice_and_leave_none_unheld(claims: TileClaims, run: int) -> None:
    rng = random.Random(run)
    grid = [f"200000:{7000 + run}:{9100 + i}" for i in range(12)]
    wanted = {}
    for i in range(THREADS):
        first = rng.randrange(0, 9)
        wanted[f"job-{i}"] = grid[first : first + rng.randrange(2, 4)]
    held = _race(claims, wanted)
    by_tile = _holders(held)
    assert all(len(owners) == 1 for owners in by_tile.values()), by_tile
    asked = {tile for tiles in wanted.values() for tile in tiles}
    assert set(by_tile) == asked


def test_a_claimer_that_fails_between_its_steps_holds_nothing_twice(claims: TileClaims) -> None:
    tiles = [f"200000:7100:{9100 + i}" for i in range(6)]
    # Chosen tiles claimed fail, the first one among them, not 30% at random: a clean-clone run once
    # failed none, and the test must not depend on luck. A few only: a claim that always met one never
    # completes.
    hits = itertools.count()
    hits_lock = threading.Lock()

    def fail_chosen_hits() -> None:
        with hits_lock:
            hit = next(hits)
        if hit in (0, 2, 5):
            raise FailpointError(f"claims.tile_claimed (hit {hit})")

    failed: list[str] = []
    held: dict[str, list[str]] = {}

    def claim_until_done(owner: str) -> None:
        # A failed claim is retried under the same owner, as a redelivered enrich is.
        while True:
            try:
                held[owner] = claims.claim(TAGSET, tiles, owner=owner)
                return
            except FailpointError:
                failed.append(owner)

    start = threading.Barrier(THREADS)

    def run(owner: str) -> None:
        start.wait()
        claim_until_done(owner)

    threads = [threading.Thread(target=run, args=(f"job-{i}",)) for i in range(THREADS)]
    with cpu_hog(threads=2), hooked("claims.tile_claimed", fail_chosen_hits):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failed, "the failpoint should have failed some claims midway"
    # What each owner holds now, its partial claims included: one owner per tile, every tile held.
    now = {owner: claims.claim(TAGSET, tiles, owner=owner) for owner in held}
    by_tile = _holders(now)
    assert all(len(owners) == 1 for owners in by_tile.values()), by_tile
    assert set(by_tile) == set(tiles)

"""Tile claims: one job fetches a tile and tag set at a time, fleet-wide.

A claim is a lease of one holder (the backend's ``lease_acquire`` with a
limit of 1, timed by the backend's clock) under ``tile:<tag set>:<tile>``,
held by the job that fetches the tile, its *leader*. The leader takes it when
its ``enrich`` runs, takes it again (renewing it) on every attempt of its
fetch and, when the fetch is deferred, for the delay too, and gives it back once the answer has landed or the fetch failed for
good. Another job for the tile meanwhile ends as ``coalesced``. A leader whose
worker died leaves its claim to expire after ``ENRICH_CLAIM_TTL_S``; the tile
is fetched by the next job that asks for it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence

from enrichment_middleware.backends.base import Backend, BackendUnavailable
from enrichment_middleware.failpoints import failpoint

logger = logging.getLogger(__name__)

#: The longest a claim step (one job claiming its tiles) may hold the set's lock, should it die midway.
_STEP_S = 10.0


def _key(tagset: str, tile: str) -> str:
    return f"tile:{tagset}:{tile}"


class TileClaims:
    """Claims of tiles for one tag set on the fleet's backend.

    Examples:
      >>> from enrichment_middleware.backends.memory import MemoryBackend
      >>> claims = TileClaims(MemoryBackend(), ttl_s=60)
      >>> claims.claim("t", ["1:0:0", "1:0:1"], owner="a")
      ['1:0:0', '1:0:1']
      >>> claims.claim("t", ["1:0:1", "1:0:2"], owner="b")
      ['1:0:2']
      >>> claims.claim("t", ["1:0:0", "1:0:1"], owner="a")  # a renewal
      ['1:0:0', '1:0:1']
      >>> claims.release("t", ["1:0:0", "1:0:1"], owner="a")
      >>> claims.claim("t", ["1:0:1"], owner="b")
      ['1:0:1']

    Parameters:
      backend: the state backend shared by the fleet.
      ttl_s: how long a claim outlives its last renewal (``ENRICH_CLAIM_TTL_S``).
    """

    def __init__(self, backend: Backend, *, ttl_s: float) -> None:
        self.backend = backend
        self.ttl_s = ttl_s

    def claim(self, tagset: str, tiles: Sequence[str], *, owner: str) -> list[str]:
        """Take or renew the claims of ``tiles``; the tiles ``owner`` now holds (the others are another's).

        Raises:
          BackendUnavailable: the backend cannot be reached.
        """
        # Identical jobs sent at once would otherwise share the tiles out among
        # themselves, one claim each, and all call: whoever holds the claim step
        # for this very set of tiles claims them all, and the others, finding
        # the step taken, leave the tiles to it.
        step = "set:" + hashlib.sha256("\n".join(sorted(tiles)).encode()).hexdigest()[:16]
        if self.backend.lease_acquire(_key(tagset, step), owner, 1, _STEP_S) is None:
            return []
        try:
            failpoint("claims.step_taken")
            return self.renew(tagset, tiles, owner=owner)
        finally:
            self.backend.lease_release(_key(tagset, step), owner)

    def renew(
        self, tagset: str, tiles: Sequence[str], *, owner: str, ttl_s: float | None = None
    ) -> list[str]:
        """Take again (for ``ttl_s``, default the claims' TTL) the claims of ``tiles`` that ``owner`` holds or
        that are free; the tiles ``owner`` now holds. The leader's own renewals need no claim step.

        Raises:
          BackendUnavailable: the backend cannot be reached.
        """
        held = []
        for tile in tiles:
            if self.backend.lease_acquire(_key(tagset, tile), owner, 1, ttl_s or self.ttl_s) is not None:
                held.append(tile)
            failpoint("claims.tile_claimed")
        return held

    def release(self, tagset: str, tiles: Iterable[str], *, owner: str) -> None:
        """Give back ``owner``'s claims of ``tiles`` (a claim another holds now is left alone).

        Best effort: a claim that cannot be given back expires by itself.
        """
        try:
            for tile in tiles:
                self.backend.lease_release(_key(tagset, tile), owner)
        except BackendUnavailable as exc:
            logger.warning(
                "Could not give back tile claims (%s); they expire within %.0f s.", exc, self.ttl_s
            )


__all__ = ["TileClaims"]

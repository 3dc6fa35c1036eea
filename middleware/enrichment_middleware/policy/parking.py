"""A parking lot for deferred work, kept in the backend instead of in worker memory.

A job that must wait hours (its quota is spent until tomorrow) is parked
here, and a periodic releaser hands due jobs back to the queue.  Claims
expire, so a releaser that dies halfway loses nothing: what it claimed comes
due again.  Each parking has a token, and only the claim of that parking can
forget it: a member handed back, run and parked again before its releaser
says :meth:`ParkingLot.done` keeps its new parking.  Due times are the
backend's clock, the same on every host.
"""

from __future__ import annotations

import logging
import uuid

from enrichment_middleware.backends.base import Backend, ParkedClaim

logger = logging.getLogger(__name__)


class ParkingLot:
    """Deferred work kept in the backend, not in worker memory.

    Ten thousand jobs waiting for tomorrow cost a worker nothing.

    Examples:
      >>> from enrichment_middleware.backends.memory import MemoryBackend
      >>> from enrichment_middleware.policy.clock import ManualClock
      >>> clock = ManualClock(start=1000.0)
      >>> lot = ParkingLot(MemoryBackend(clock=clock))
      >>> token = lot.park("message-1", b"encoded message", delay_s=60.0)
      >>> lot.claim_due()
      []
      >>> clock.advance(60)
      >>> [claim] = lot.claim_due()
      >>> claim.member, claim.payload
      ('message-1', b'encoded message')
      >>> lot.done(claim)  # after it was enqueued again
      True
      >>> lot.count()
      0

    Parameters:
      backend(Backend): Where parked work lives, and whose clock says when it is due.
      key(str): Names the lot in the backend.  Defaults to ``"parked"``.
      claim_s(float): How long a claim holds; a member claimed but not marked
        :meth:`done` within this comes due again.  Defaults to 60 s.
    """

    def __init__(self, backend: Backend, *, key: str = "parked", claim_s: float = 60.0) -> None:
        if claim_s <= 0:
            raise ValueError(f"ParkingLot.claim_s must be positive, got {claim_s}")
        self._backend = backend
        self._key = key
        self._claim_s = claim_s

    @property
    def key(self) -> str:
        return self._key

    def park(self, member: str, payload: bytes, delay_s: float) -> str:
        """Keep ``payload`` for ``delay_s`` seconds.  Parking a member again replaces it.
        Returns the token of this parking."""
        token = uuid.uuid4().hex
        self._backend.park(self._key, member, payload, max(0.0, delay_s), token)
        return token

    def claim_due(self, limit: int = 100) -> list[ParkedClaim]:
        """Claim up to ``limit`` due members for ``claim_s``, earliest first.

        A member found without its payload cannot be handed back: it is logged
        as an error by name and counted (:meth:`orphans`), not dropped silently.
        """
        claims, orphans = self._backend.claim_due(self._key, limit, self._claim_s)
        for member in orphans:
            logger.error(
                "Parked member %r of lot %r had no payload (the store lost part of its data: check its "
                "eviction policy and persistence); it cannot be released and was removed.",
                member,
                self._key,
            )
        return claims

    def done(self, claim: ParkedClaim) -> bool:
        """Forget a claimed member once it was handed on, unless it was parked again since.
        True if it was forgotten."""
        return self._backend.unpark(self._key, claim.member, claim.token)

    def count(self) -> int:
        """Members parked, due or not."""
        return self._backend.parked_count(self._key)

    def orphans(self) -> int:
        """Members ever found due without a payload (and removed): more than 0 means lost work."""
        return self._backend.parked_orphans(self._key)

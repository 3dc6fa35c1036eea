"""A parking lot for deferred work, kept in the backend instead of in worker memory.

A job that must wait hours (its quota is spent until tomorrow) is parked
here, and a periodic sweeper hands due jobs back to the queue.  Claims expire,
so a sweeper that dies halfway loses nothing: what it claimed comes due again.
"""

from __future__ import annotations

from middleware.backends.base import Backend
from middleware.policy.clock import Clock, SystemClock


class ParkingLot:
    """Deferred work kept in the backend, not in worker memory.

    Ten thousand jobs waiting for tomorrow cost a worker nothing.

    Examples:
      >>> from middleware.backends.memory import MemoryBackend
      >>> from middleware.policy.clock import ManualClock
      >>> clock = ManualClock(start=1000.0)
      >>> lot = ParkingLot(MemoryBackend(), clock=clock)
      >>> lot.park("message-1", b"encoded message", due_at=1060.0)
      >>> lot.claim_due()
      []
      >>> clock.advance(60)
      >>> lot.claim_due()
      [('message-1', b'encoded message')]
      >>> lot.done("message-1")  # after it was enqueued again
      >>> lot.count()
      0

    Parameters:
      backend(Backend): Where parked work lives.
      key(str): Names the lot in the backend.  Defaults to ``"parked"``.
      claim_s(float): How long a claim holds; a member claimed but not marked
        :meth:`done` within this comes due again.  Defaults to 60 s.
      clock(Clock): The time source.  Defaults to the system clock.
    """

    def __init__(
        self, backend: Backend, *, key: str = "parked", claim_s: float = 60.0, clock: Clock | None = None
    ) -> None:
        if claim_s <= 0:
            raise ValueError(f"ParkingLot.claim_s must be positive, got {claim_s}")
        self._backend = backend
        self._key = key
        self._claim_s = claim_s
        self._clock: Clock = clock or SystemClock()

    @property
    def key(self) -> str:
        return self._key

    def park(self, member: str, payload: bytes, due_at: float) -> None:
        """Keep ``payload`` until ``due_at`` (epoch seconds).  Parking a member again replaces it."""
        self._backend.park(self._key, member, payload, due_at)

    def claim_due(self, limit: int = 100) -> list[tuple[str, bytes]]:
        """Claim up to ``limit`` due members for ``claim_s``, earliest first, as (member, payload)."""
        now = self._clock.now()
        return self._backend.claim_due(self._key, now, limit, now + self._claim_s)

    def done(self, member: str) -> None:
        """Forget a member once it was handed on."""
        self._backend.unpark(self._key, member)

    def count(self) -> int:
        """Members parked, due or not."""
        return self._backend.parked_count(self._key)

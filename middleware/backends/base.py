"""The contract of a storage backend: the few atomic primitives every policy is built on.

Policies (quota, semaphore, circuit breaker, parking lot) are plain Python on
top of these primitives; a new store means implementing this class, not the
policies.  Each method is atomic with respect to every other caller of the
same store, in this process or any other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

#: How many unconsumed wake-ups a lease key keeps.  A release with nobody
#: waiting leaves a token so that a waiter arriving a moment later is not
#: left asleep; more tokens than this would only cause useless retries.
WAKE_TOKENS_KEPT = 4

#: How long (real seconds) an unconsumed wake-up is kept.
WAKE_TOKEN_TTL_S = 10.0


class BackendUnavailable(Exception):
    """The store behind a backend cannot be reached.

    The message names the store and what to check.  Middleware decides what a
    job does then (run anyway, or come back later); the backend never guesses.
    """


class Backend(ABC):
    """The atomic primitives every policy is built on.

    Keys are plain strings; a backend may prefix them with its namespace, and
    keeps each kind of primitive (counters, leases, state, parking) apart, so
    the same key used by two kinds never collides.  Times passed in (``now``,
    ``expires_at``, ``due_at``) come from the caller's clock; TTLs and wait
    timeouts are real seconds.  Every method raises
    :class:`BackendUnavailable` when the store cannot be reached.
    """

    # -- counters (quota) ---------------------------------------------------

    @abstractmethod
    def counters_admit(
        self, keys: Sequence[str], limits: Sequence[int], increments: Sequence[int], ttl_s: float
    ) -> tuple[bool, list[int]]:
        """Atomically: if EVERY counter's current value (0 when absent) is < its limit
        (a limit < 0 = unlimited), add the increments (setting the TTL on keys that get
        created) and return (True, values after); else change nothing and return
        (False, current values).
        """

    @abstractmethod
    def counter_add(self, key: str, amount: int, ttl_s: float) -> int:
        """Add ``amount`` to a counter (created at 0 with the TTL) and return the new value."""

    @abstractmethod
    def counters_get(self, keys: Sequence[str]) -> list[int]:
        """Return the counters' values, 0 for absent ones."""

    # -- leases (semaphore permits that expire) -----------------------------

    @abstractmethod
    def lease_acquire(self, key: str, holder: str, limit: int, now: float, expires_at: float) -> bool:
        """Atomically drop leases that expired (expires <= now); effective limit =
        min(limit, cap) when a cap is set (see :meth:`lease_set_cap`); grant a lease to
        holder (until expires_at) if fewer than the effective limit are held.
        Re-acquiring by the same holder refreshes it.
        """

    @abstractmethod
    def lease_release(self, key: str, holder: str) -> bool:
        """Drop holder's lease.  True if it held one; only then is one waiter woken
        (see :meth:`lease_wait`)."""

    @abstractmethod
    def lease_count(self, key: str, now: float) -> int:
        """Number of unexpired leases (expires > now)."""

    @abstractmethod
    def lease_wait(self, key: str, timeout_s: float) -> bool:
        """Block (real time, not the injected clock) until a lease on key is released
        or timeout_s passes; True when woken by a release.

        Wakes are not lost if a release happens just before the wait starts: each
        release leaves a token (at most :data:`WAKE_TOKENS_KEPT`, for
        :data:`WAKE_TOKEN_TTL_S`) that one waiter consumes.  A backend may return
        False before timeout_s when it cannot block that long; callers loop.
        """

    @abstractmethod
    def lease_set_cap(self, key: str, cap: int | None, ttl_s: float) -> None:
        """Set a fleet-wide cap on the limit of key (None removes it); it expires after ttl_s."""

    @abstractmethod
    def lease_get_cap(self, key: str) -> int | None:
        """Return the cap in force, or None."""

    # -- versioned state (circuit breaker) ----------------------------------

    @abstractmethod
    def state_get(self, key: str) -> tuple[int, dict[str, Any] | None]:
        """Return (version, value); (0, None) when absent.  Value is JSON-serialisable."""

    @abstractmethod
    def state_cas(self, key: str, version: int, value: dict[str, Any]) -> bool:
        """Write value iff the current version == version; the new version is version + 1."""

    # -- parking lot (deferred work held outside worker memory) -------------

    @abstractmethod
    def park(self, key: str, member: str, payload: bytes, due_at: float) -> None:
        """Store member with payload, due at due_at.  Idempotent per member: the same
        member again replaces payload and due time."""

    @abstractmethod
    def claim_due(self, key: str, now: float, limit: int, claim_until: float) -> list[tuple[str, bytes]]:
        """Atomically take up to ``limit`` members due at or before now and push their due
        time to claim_until (so a claimer that dies does not lose them: they come due
        again), returning (member, payload), earliest due first.  Two concurrent
        claimers never get the same member.
        """

    @abstractmethod
    def unpark(self, key: str, member: str) -> None:
        """Delete member and its payload (after it was handed on).  Absent members are ignored."""

    @abstractmethod
    def parked_count(self, key: str) -> int:
        """Number of parked members, due or not."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`BackendUnavailable` if the store cannot be reached."""


def check_counter_arguments(keys: Sequence[str], limits: Sequence[int], increments: Sequence[int]) -> None:
    """Raise ValueError unless counters_admit got one limit and one increment per key."""
    if not (len(keys) == len(limits) == len(increments)):
        raise ValueError(
            f"counters_admit needs one limit and one increment per key; got {len(keys)} keys, "
            f"{len(limits)} limits and {len(increments)} increments"
        )

"""A fleet-wide semaphore whose permits are leases: a killed holder's permit comes back by itself.

A permit is granted until ``lease_s`` after it was taken.  A worker that dies
while holding one (SIGKILL, OOM, a pulled plug) cannot release it, so the
lease expiring is what returns it; it must outlast the longest call made
under it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from middleware.policy.base import Policy

#: Longest sleep between two attempts while waiting for a permit; a release
#: wakes a waiter sooner, this only bounds how late a missed wake-up is noticed.
_POLL_S = 0.25


@dataclass(frozen=True)
class SemaphoreLimits:
    """How many permits there are and how long jobs wait for them.

    Examples:
      >>> limits = SemaphoreLimits(permits=2, lease_s=200.0)  # 2 concurrent calls, HTTP timeout < 200 s
      >>> limits.wait_s, limits.cap_ttl_s
      (1.0, 3600.0)

    Parameters:
      permits(int): Permits shared by the whole fleet.
      lease_s(float): How long a permit is held at most.  Must exceed the
        longest call made under it (the HTTP timeout): a killed holder's
        permit comes back after this.
      wait_s(float): How long :meth:`SemaphorePolicy.acquire` waits (real
        time) for a permit before giving up, so the job can be deferred.
      retry_min_s(float): Shortest delay before a job that got no permit comes back.
      retry_max_s(float): Longest such delay.
      cap_ttl_s(float): How long a cap set with :meth:`SemaphorePolicy.cap`
        (e.g. learned from the server) holds before the configured permits apply again.
    """

    permits: int = 2
    lease_s: float = 120.0
    wait_s: float = 1.0
    retry_min_s: float = 0.5
    retry_max_s: float = 3.0
    cap_ttl_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.permits < 1:
            raise ValueError(f"SemaphoreLimits.permits must be at least 1, got {self.permits}")
        if self.lease_s <= 0:
            raise ValueError(f"SemaphoreLimits.lease_s must be positive, got {self.lease_s}")
        if self.wait_s < 0:
            raise ValueError(f"SemaphoreLimits.wait_s must not be negative, got {self.wait_s}")
        if not 0 <= self.retry_min_s <= self.retry_max_s:
            raise ValueError(
                "SemaphoreLimits needs 0 <= retry_min_s <= retry_max_s, "
                f"got retry_min_s={self.retry_min_s}, retry_max_s={self.retry_max_s}"
            )
        if self.cap_ttl_s <= 0:
            raise ValueError(f"SemaphoreLimits.cap_ttl_s must be positive, got {self.cap_ttl_s}")


@dataclass(frozen=True)
class Permit:
    """A granted permit; hand it back to :meth:`SemaphorePolicy.release`.

    Parameters:
      name(str): The semaphore it belongs to.
      holder(str): Who holds it (unique per job attempt, e.g. a message id).
      acquired_at(float): When it was granted, by the backend's clock; it lapses at
        acquired_at + lease_s.
    """

    name: str
    holder: str
    acquired_at: float


class SemaphorePolicy(Policy[SemaphoreLimits]):
    """Limits how many calls the whole fleet makes at once.

    Examples:
      >>> from middleware.backends.memory import MemoryBackend
      >>> semaphore = SemaphorePolicy("api", SemaphoreLimits(permits=1), MemoryBackend())
      >>> permit = semaphore.acquire("message-1")
      >>> semaphore.acquire("message-2", wait_s=0.0) is None
      True
      >>> semaphore.release(permit)

    Parameters:
      name(str): Names the semaphore in the backend; policies of the same name
        share its permits, wherever they run.
      limits(SemaphoreLimits): Permits, lease length and waiting.
      backend(Backend): Where the leases live; its clock says when they lapse, the
        same for every host.  Waiting always uses real time.
      rng(random.Random): The source of :meth:`retry_delay`.  Defaults to a new Random.
    """

    kind = "semaphore"

    def try_acquire(self, holder: str) -> Permit | None:
        """Take a permit if one is free right now; never waits."""
        granted_at = self._backend.lease_acquire(
            self._key, holder, self._limits.permits, self._limits.lease_s
        )
        return None if granted_at is None else Permit(self._name, holder, granted_at)

    def acquire(self, holder: str, *, wait_s: float | None = None) -> Permit | None:
        """Take a permit, waiting up to ``wait_s`` real seconds (default ``limits.wait_s``)
        for one to be released.  None when none came free in time.

        Never spins: every retry follows a release's wake-up or a 0.25 s wait.
        """
        deadline = time.monotonic() + (self._limits.wait_s if wait_s is None else wait_s)
        permit = self.try_acquire(holder)
        while permit is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._backend.lease_wait(self._key, min(remaining, _POLL_S))
            permit = self.try_acquire(holder)
        return permit

    def release(self, permit: Permit) -> None:
        """Give a permit back and wake one waiter.  Releasing twice is harmless."""
        if permit.name != self._name:
            raise ValueError(
                f"permit of semaphore {permit.name!r} released to semaphore {self._name!r}: "
                "release it to the policy that granted it"
            )
        self._backend.lease_release(self._key, permit.holder)

    def retry_delay(self) -> float:
        """Seconds until a job that got no permit should come back."""
        return self._rng.uniform(self._limits.retry_min_s, self._limits.retry_max_s)

    def cap(self, limit: int | None) -> None:
        """Cap the fleet's permits at ``limit`` for ``limits.cap_ttl_s`` (e.g. the limit a server
        reports); None removes the cap.  Permits in effect = min(permits, cap)."""
        if limit is not None and limit < 1:
            raise ValueError(
                f"a semaphore cap must be at least 1, got {limit}: a cap of 0 would stop every job "
                "(servers often report 0 for 'unlimited'); pass None to remove the cap"
            )
        self._backend.lease_set_cap(self._key, limit, self._limits.cap_ttl_s)

    def in_use(self) -> int:
        """Permits held right now, fleet-wide (lapsed leases not counted)."""
        return self._backend.lease_count(self._key)

    def effective_permits(self) -> int:
        """Permits in effect: the configured number, lowered by a cap if one is set."""
        cap = self._backend.lease_get_cap(self._key)
        return self._limits.permits if cap is None else min(self._limits.permits, cap)

"""A fleet-wide semaphore whose permits are leases: a killed holder's permit comes back by itself.

A permit is granted until ``lease_s`` after it was taken.  A worker that dies
while holding one (SIGKILL, OOM, a pulled plug) cannot release it, so the
lease expiring is what returns it; it must outlast the longest call made
under it.

Within one process a released permit goes straight to a thread of the same
process that waits for it: one backend call moves the lease to the waiter
with a fresh expiry (:meth:`~enrichment_middleware.backends.base.Backend.lease_transfer`),
and the waiter is woken in memory, without waiting on the backend or taking
the lease itself.  The fleet's count never moves during the hand-off, and a
handed-on lease lapses like any other when its process dies.

Fairness: within a process, waiters are served first come, first served.
One of them, the *leader*, waits on the backend for permits released
elsewhere (and for lapsed leases); the others wait for a hand-off.  A
permit is handed on within its process at most ``handoff_max`` times in a
row; then it is released to the fleet, where the waiter blocked longest on
the backend (whatever its process) is woken first, so no process keeps a
permit from the others for more than ``handoff_max + 1`` calls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from enrichment_middleware.failpoints import failpoint
from enrichment_middleware.policy.base import Policy

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
      handoff_max(int): How many times in a row a released permit may go straight to a
        waiting thread of the same process before it goes back to the fleet (see the
        module's "Fairness"); 0 turns hand-offs off.
    """

    permits: int = 2
    lease_s: float = 120.0
    wait_s: float = 1.0
    retry_min_s: float = 0.5
    retry_max_s: float = 3.0
    cap_ttl_s: float = 3600.0
    handoff_max: int = 4

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
        if self.handoff_max < 0:
            raise ValueError(f"SemaphoreLimits.handoff_max must not be negative, got {self.handoff_max}")


@dataclass(frozen=True)
class Permit:
    """A granted permit; hand it back to :meth:`SemaphorePolicy.release`.

    Parameters:
      name(str): The semaphore it belongs to.
      holder(str): Who holds it (unique per job attempt, e.g. a message id).
      acquired_at(float): When it was granted, by the backend's clock; it lapses at
        acquired_at + lease_s.
      handoffs(int): How many hand-offs in a row, within one process, brought it here
        (0: taken from the backend).
    """

    name: str
    holder: str
    acquired_at: float
    handoffs: int = 0


@dataclass(eq=False)
class _Waiter:
    """A thread of this process inside :meth:`SemaphorePolicy.acquire`; fields change under the policy's lock."""

    holder: str
    woken: threading.Event = field(default_factory=threading.Event)
    #: Waits on the backend (releases elsewhere, lapsed leases) rather than for a hand-off.
    leader: bool = False
    #: A releaser took it off the queue and is moving a lease to it: it must hear the outcome.
    reserved: bool = False
    #: The hand-off failed (the lease had lapsed, or a lowered cap): try the backend again.
    retry: bool = False
    permit: Permit | None = None


class SemaphorePolicy(Policy[SemaphoreLimits]):
    """Limits how many calls the whole fleet makes at once.

    Examples:
      >>> from enrichment_middleware.backends.memory import MemoryBackend
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local = threading.Lock()
        self._waiters: deque[_Waiter] = deque()  # this process's, first come first
        self._leader: _Waiter | None = None

    def try_acquire(self, holder: str) -> Permit | None:
        """Take a permit if one is free right now; never waits."""
        granted_at = self._backend.lease_acquire(
            self._key, holder, self._limits.permits, self._limits.lease_s
        )
        return None if granted_at is None else Permit(self._name, holder, granted_at)

    def has_waiters(self) -> bool:
        """Whether threads of this process wait for a permit (a newcomer queues behind them)."""
        return bool(self._waiters)

    def acquire(self, holder: str, *, wait_s: float | None = None) -> Permit | None:
        """Take a permit, waiting up to ``wait_s`` real seconds (default ``limits.wait_s``)
        for one to be released.  None when none came free in time.

        Never spins: every retry follows a release's wake-up or a 0.25 s wait.  A
        permit released by another thread of this process may arrive handed on
        (see the module's docstring), with no backend call on this side.
        """
        deadline = time.monotonic() + (self._limits.wait_s if wait_s is None else wait_s)
        # Behind threads of this process already waiting, a newcomer queues rather than takes
        # a permit the fleet just got back: that one is for a waiter, maybe of another process.
        if not self._waiters:
            permit = self.try_acquire(holder)
            if permit is not None or deadline <= time.monotonic():
                return permit
        waiter = _Waiter(holder)
        with self._local:
            self._waiters.append(waiter)
            if self._leader is None:
                self._leader = waiter
                waiter.leader = True
        try:
            return self._wait(waiter, deadline)
        finally:
            with self._local:
                self._leave(waiter)

    def _wait(self, waiter: _Waiter, deadline: float) -> Permit | None:
        while True:
            remaining = deadline - time.monotonic()
            if waiter.leader:
                if remaining <= 0:
                    return None
                self._backend.lease_wait(self._key, min(remaining, _POLL_S))
                permit = self.try_acquire(waiter.holder)
                if permit is not None:
                    return permit
                continue
            # Reserved, the releaser is one backend call from setting woken, whatever happens.
            waiter.woken.wait(max(remaining, 0.0) if not waiter.reserved else self._limits.lease_s)
            with self._local:
                waiter.woken.clear()
                if waiter.permit is not None:
                    return waiter.permit
                if waiter.reserved or waiter.leader:
                    continue
                retry, waiter.retry = waiter.retry, False
                if not retry and deadline <= time.monotonic():
                    self._leave(waiter)  # atomically with the check: no releaser can reserve it now
                    return None
            if retry:
                permit = self.try_acquire(waiter.holder)
                if permit is not None:
                    return permit

    def _leave(self, waiter: _Waiter) -> None:
        """Take ``waiter`` off the queue (under the lock); a leaving leader passes the role on."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if self._leader is waiter:
            waiter.leader = False
            self._leader = self._waiters[0] if self._waiters else None
            if self._leader is not None:
                self._leader.leader = True
                self._leader.woken.set()

    def _reserve_follower(self, permit: Permit) -> _Waiter | None:
        """The first waiter of this process not waiting on the backend, taken off the queue, if
        the permit may still be handed on here."""
        if permit.handoffs >= self._limits.handoff_max:
            return None
        with self._local:
            for waiter in self._waiters:
                if not waiter.leader:
                    self._waiters.remove(waiter)
                    waiter.reserved = True
                    return waiter
        return None

    def hands_on_here(self, permit: Permit) -> bool:
        """Whether :meth:`release` would hand ``permit`` to a thread of this process now (else it
        gives it to the fleet: :meth:`release_to_fleet`, one backend step)."""
        if permit.handoffs >= self._limits.handoff_max:
            return False
        with self._local:
            return any(not waiter.leader for waiter in self._waiters)

    def release_to_fleet(self, permit: Permit) -> None:
        """Give a permit back to the fleet, waking one waiter (of any process); harmless twice."""
        self._backend.lease_release(self._key, permit.holder)

    def release(self, permit: Permit) -> None:
        """Give a permit back: to a thread of this process waiting for one (the lease moves to
        it), else to the fleet, waking one waiter.  Releasing twice is harmless."""
        if permit.name != self._name:
            raise ValueError(
                f"permit of semaphore {permit.name!r} released to semaphore {self._name!r}: "
                "release it to the policy that granted it"
            )
        waiter = self._reserve_follower(permit)
        if waiter is None:
            self.release_to_fleet(permit)
            return
        try:
            granted = self._backend.lease_transfer(
                self._key, permit.holder, waiter.holder, self._limits.permits, self._limits.lease_s
            )
            if granted is not None:
                waiter.permit = Permit(self._name, waiter.holder, granted, permit.handoffs + 1)
                failpoint("semaphore.handed_off")
        finally:
            with self._local:
                waiter.reserved = False
                if waiter.permit is None:
                    # Lapsed meanwhile, or a lowered cap: it waits again, first in line.
                    waiter.retry = True
                    self._waiters.appendleft(waiter)
                    if self._leader is None:
                        self._leader = waiter
                        waiter.leader = True
                waiter.woken.set()

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

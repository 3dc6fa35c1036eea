"""Semaphore: at most N calls in flight across the fleet, as expiring leases.

A permit is held from admission until the actor returns (or calls
:func:`release_permit_early`), so give the limited actor only the call itself. Permits are leases: one held by a
worker killed with ``kill -9`` comes back after the lease time even while
other workers keep acquiring. A thread that finds no permit waits a short,
bounded time (woken by releases, never spinning), then defers the message.
A permit given back while another thread of this process waits goes straight
to it (see :mod:`enrichment_middleware.policy.semaphore`): the failpoint
``semaphore.handed_off`` is between moving the lease and waking that thread.
"""

from __future__ import annotations

from dramatiq.broker import Broker, MessageProxy

from .admission import AdmissionMiddleware, CallEnd, Ending, Part, release_early
from .deferral import AdmissionDenied
from .failpoints import failpoint
from .policy.semaphore import Permit, SemaphorePolicy

#: Deferral reason when no permit came free within the wait.
NO_PERMIT = "no_permit"

#: Give back the permit (and a fair room's seat) of the message this thread runs now, not when
#: its actor returns: :func:`enrichment_middleware.admission.release_early`.
release_permit_early = release_early


class ConcurrencySemaphore(AdmissionMiddleware[SemaphorePolicy, tuple[SemaphorePolicy, Permit]]):
    """Hold one of N fleet-wide permits while the actor runs.

    Examples:
      >>> broker.add_middleware(ConcurrencySemaphore(backend, {"api": SemaphoreLimits(permits=2)}))
      >>> @dramatiq.actor(semaphore="api")
      ... def fetch(): ...

    Parameters:
      backend: where the leases live (Redis for a fleet); its clock says when a
        lease lapses (tests give a ``MemoryBackend`` a ``ManualClock``).
      limits: semaphore limits by policy name; actors opt in with ``semaphore=NAME``.
      clock: this host's clock, for what is not shared state; the policies never read it.
      rng: injectable randomness.
    """

    option = "semaphore"
    admission_rank = 3  # enrichment_middleware.order.RANKS says why
    policy_class = SemaphorePolicy

    def cap(self, name: str, limit: int | None) -> None:
        """Cap policy ``name`` fleet-wide at ``limit`` permits (say, the upstream's own rate limit)."""
        with self.logging_unavailable(f"cap semaphore {name!r} at {limit}"):
            self.policies[name].cap(limit)

    def part(self, broker: Broker, message: MessageProxy, policy: SemaphorePolicy) -> Part | None:
        if policy.has_waiters():
            return None  # a newcomer queues behind this process's waiters: it waits
        holder = self.new_holder()

        def try_acquire(p: SemaphorePolicy) -> Permit | None:
            return p.try_acquire(holder)

        return self.part_of(
            policy,
            try_acquire,
            condition="granted",
            allowed=lambda permit: permit is not None,
            take=lambda permit: self._take(broker, message, policy, permit),
            give_back=policy.release,
        )

    def _take(self, broker: Broker, message: MessageProxy, policy: SemaphorePolicy, permit: Permit) -> None:
        self.hold(broker, message, (policy, permit))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        policy = self.policy_for(broker, message)
        if policy is None:
            return
        if self.admitted_together(broker, message):
            failpoint("semaphore.acquired")
            return
        holder = self.new_holder()
        with self.failing_closed():
            permit = policy.acquire(holder)
            if permit is None:
                raise AdmissionDenied(policy.retry_delay(), NO_PERMIT)
        self._take(broker, message, policy, permit)
        failpoint("semaphore.acquired")

    def ending(self, broker: Broker, message: MessageProxy, end: CallEnd) -> Ending | None:
        if end.keeping:
            return None
        held = self.release_held(message)
        if held is None:
            return None
        policy, permit = held

        def alone() -> None:
            # If this fails the lease simply expires; the call is over either way.
            with self.logging_unavailable(f"release a permit of {policy.name!r}"):
                policy.release(permit)
            failpoint("semaphore.released")

        if policy.hands_on_here(permit):
            return Ending((), alone)  # to a thread of this process: no backend step of the fleet's
        step = policy.effect_of(lambda p: p.release_to_fleet(permit))
        return Ending((step,), alone, lambda replies: failpoint("semaphore.released"))

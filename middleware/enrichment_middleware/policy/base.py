"""What every policy has: a name shared by the fleet, its limits, a backend that keeps time, and randomness."""

from __future__ import annotations

import random
from typing import ClassVar, Generic, TypeVar

from enrichment_middleware.backends.base import Backend

LimitsT = TypeVar("LimitsT")


class Policy(Generic[LimitsT]):
    """Base of the quota, semaphore and breaker policies: their state lives under ``KIND:NAME``.

    Policies decide; the backend counts and keeps the time, so every host of a
    fleet agrees on leases, windows and cooldowns whatever its own clock says
    (tests give a :class:`~enrichment_middleware.backends.memory.MemoryBackend` a
    :class:`~enrichment_middleware.policy.clock.ManualClock`).

    Parameters:
      name(str): Names the policy's state in the backend; policies of the same
        name share it, wherever they run.
      limits: What the policy allows.
      backend(Backend): Where the state lives, and whose clock counts.
      rng(random.Random): The source of jitter.  Defaults to a new Random.
    """

    #: The kind of state, first part of the backend key (``quota``, ``semaphore``, ``breaker``).
    kind: ClassVar[str] = ""

    def __init__(
        self, name: str, limits: LimitsT, backend: Backend, *, rng: random.Random | None = None
    ) -> None:
        self._name = name
        self._limits = limits
        self._backend = backend
        self._rng = rng or random.Random()
        self._key = f"{self.kind}:{name}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def limits(self) -> LimitsT:
        return self._limits

    @property
    def backend(self) -> Backend:
        """Where the state lives; its :meth:`~enrichment_middleware.backends.base.Backend.now` is the fleet's clock."""
        return self._backend

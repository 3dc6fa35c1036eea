"""What every policy has: a name shared by the fleet, its limits, a backend, a clock and randomness."""

from __future__ import annotations

import random
from typing import ClassVar, Generic, TypeVar

from middleware.backends.base import Backend
from middleware.policy.clock import Clock, SystemClock

LimitsT = TypeVar("LimitsT")


class Policy(Generic[LimitsT]):
    """Base of the quota, semaphore and breaker policies: their state lives under ``KIND:NAME``.

    Parameters:
      name(str): Names the policy's state in the backend; policies of the same
        name share it, wherever they run.
      limits: What the policy allows.
      backend(Backend): Where the state lives.
      clock(Clock): The time source.  Defaults to the system clock.
      rng(random.Random): The source of jitter.  Defaults to a new Random.
    """

    #: The kind of state, first part of the backend key (``quota``, ``semaphore``, ``breaker``).
    kind: ClassVar[str] = ""

    def __init__(
        self,
        name: str,
        limits: LimitsT,
        backend: Backend,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._name = name
        self._limits = limits
        self._backend = backend
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._key = f"{self.kind}:{name}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def limits(self) -> LimitsT:
        return self._limits

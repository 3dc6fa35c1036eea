"""What every policy has: a name shared by the fleet, its limits, a backend that keeps time, and randomness."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Self, TypeVar

from enrichment_middleware.backends.base import Backend, Step

LimitsT = TypeVar("LimitsT")
PolicyT = TypeVar("PolicyT", bound="Policy[Any]")


class NotOneStep(Exception):
    """A policy decision asked its backend for something else than the one step it was given."""


class _Captured(Exception):
    def __init__(self, step: Step) -> None:
        super().__init__(step.primitive)
        self.step = step


class _Capturing:
    """A stand-in backend: the first primitive a policy calls is captured, and stops the policy."""

    def __getattr__(self, primitive: str) -> Callable[..., Any]:
        def capture(*args: Any, **kwargs: Any) -> Any:
            raise _Captured(Step(primitive, args, kwargs))

        return capture


class _Answering:
    """A stand-in backend that answers the one primitive it was given with the reply it was given."""

    def __init__(self, step: Step, reply: Any) -> None:
        self._step = step
        self._reply = reply

    def __getattr__(self, primitive: str) -> Callable[..., Any]:
        def answer(*args: Any, **kwargs: Any) -> Any:
            if Step(primitive, args, kwargs) != Step(
                self._step.primitive, self._step.args, self._step.kwargs
            ):
                raise NotOneStep(f"{primitive}{args} after {self._step.primitive}{self._step.args}")
            return self._reply

        return answer


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

    def step_of(self, decision: Callable[[PolicyT], Any], *, condition: str) -> Step | None:
        """The one backend step ``decision(policy)`` takes, with the condition its reply must meet
        to admit; None when it takes no step (it decides without the backend)."""
        capturing = self._on(_Capturing())
        try:
            decision(capturing)  # type: ignore[arg-type]
        except _Captured as captured:
            return Step(captured.step.primitive, captured.step.args, captured.step.kwargs, condition)
        return None

    def effect_of(self, call: Callable[[Self], Any]) -> Step:
        """The one backend step ``call(policy)`` takes, as an effect that always goes (condition
        ``any``): a release, a charge, for a caller that batches it with others'."""
        step = self.step_of(call, condition="any")
        if step is None:
            raise NotOneStep(f"{call!r} takes no backend step")
        return step

    def decided(self, decision: Callable[[PolicyT], Any], step: Step, reply: Any) -> Any:
        """What ``decision(policy)`` decides when its step, taken elsewhere, replied ``reply``.

        Raises:
          NotOneStep: the decision needs more of the backend than that step.
        """
        return decision(self._on(_Answering(step, reply)))  # type: ignore[arg-type]

    def _on(self, backend: Any) -> Policy[LimitsT]:
        """This policy (its name, limits and randomness) over another backend."""
        twin = copy.copy(self)
        twin._backend = backend
        return twin

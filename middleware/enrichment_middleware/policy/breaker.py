"""A circuit breaker shared by a fleet: a pure state machine, and a policy that keeps its state in a backend.

:func:`decide`, :func:`record` and :func:`abandon` are pure functions on a
frozen :class:`BreakerState`; they are the single source of truth.
:class:`BreakerPolicy` applies them through the backend's versioned state
(read, compute, compare-and-set, again on conflict), so no store needs
breaker-specific code.

Every transition bumps ``generation``.  An admission carries the generation
it was made in, and an outcome from an older generation is ignored: a slow
call admitted before the circuit opened cannot close it again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from enrichment_middleware.policy.backoff import jittered
from enrichment_middleware.policy.base import Policy

#: Compare-and-set conflicts tolerated before giving up; each conflict means
#: another worker moved the breaker, so this is only reached under a storm.
_MAX_CAS_ATTEMPTS = 100


class BreakerStatus(StrEnum):
    """Where a breaker is: closed (calls flow), open (calls refused), half_open (one probe decides)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerLimits:
    """When a breaker opens and how it recovers.

    Examples:
      >>> BreakerLimits(failure_threshold=5, cooldown_s=300.0)
      BreakerLimits(failure_threshold=5, cooldown_s=300.0, probe_ttl_s=120.0, jitter_s=5.0, probe_recheck_s=1.0)

    Parameters:
      failure_threshold(int): Consecutive failures that open the circuit.
      cooldown_s(float): How long it stays open before one probe is let through.
      probe_ttl_s(float): A half-open probe claim expires after this (its worker
        may have died), and the next job probes instead.
      jitter_s(float): Jobs denied while open come back at open_until + uniform(0, jitter_s).
      probe_recheck_s(float): Jobs denied while a probe is out come back after
        this (plus uniform(0, jitter_s)), not when its claim expires: a probe
        usually ends long before its claim would, and then they may run.
    """

    failure_threshold: int = 3
    cooldown_s: float = 60.0
    probe_ttl_s: float = 120.0
    jitter_s: float = 5.0
    probe_recheck_s: float = 1.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(
                f"BreakerLimits.failure_threshold must be at least 1, got {self.failure_threshold}"
            )
        if self.cooldown_s < 0 or self.probe_ttl_s <= 0 or self.jitter_s < 0 or self.probe_recheck_s <= 0:
            raise ValueError(
                "BreakerLimits needs cooldown_s >= 0, probe_ttl_s > 0, jitter_s >= 0 and probe_recheck_s > 0, "
                f"got cooldown_s={self.cooldown_s}, probe_ttl_s={self.probe_ttl_s}, jitter_s={self.jitter_s}, "
                f"probe_recheck_s={self.probe_recheck_s}"
            )


@dataclass(frozen=True)
class BreakerState:
    """Everything a breaker knows; stored as a JSON object.

    Parameters:
      status(BreakerStatus): closed (calls flow), open (calls refused) or
        half_open (one probe call decides).
      failures(int): Consecutive failures counted while closed.
      generation(int): Bumped by every transition; stale outcomes are ignored.
      open_until(float): While open, the epoch time the cooldown ends.
      probe_holder(str | None): While half-open, who holds the probe claim.
      probe_expires(float): When that claim lapses (0 when released).
    """

    status: BreakerStatus = BreakerStatus.CLOSED
    failures: int = 0
    generation: int = 0
    open_until: float = 0.0
    probe_holder: str | None = None
    probe_expires: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BreakerState:
        default = cls()
        return cls(
            status=BreakerStatus(data.get("status", default.status.value)),
            failures=int(data.get("failures", default.failures)),
            generation=int(data.get("generation", default.generation)),
            open_until=float(data.get("open_until", default.open_until)),
            probe_holder=data.get("probe_holder"),
            probe_expires=float(data.get("probe_expires", default.probe_expires)),
        )


@dataclass(frozen=True)
class Admission:
    """The answer to one admission request.

    Parameters:
      allowed(bool): Whether the call may be made.
      generation(int): The breaker generation it was made in; report the
        outcome with it.
      probe(bool): True when this call is the half-open probe that decides
        whether the circuit closes.
      retry_at(float | None): When denied, the epoch time to try again.
      status(BreakerStatus): The status the decision was made in (after any
        transition it caused).
    """

    allowed: bool
    generation: int
    probe: bool
    retry_at: float | None
    status: BreakerStatus


def decide(
    state: BreakerState, *, now: float, holder: str, limits: BreakerLimits
) -> tuple[BreakerState, Admission]:
    """Whether ``holder`` may make a call now, and the state after asking.

    Closed admits; open refuses until the cooldown ends, then the first asker
    claims the half-open probe (a new generation); while a probe claim is live
    everyone else is refused, and told to ask again after ``probe_recheck_s``
    (the probe may end any moment; its claim's expiry is only the worst
    case); an expired claim is taken over by the next asker.
    """
    if state.status is BreakerStatus.CLOSED:
        return state, Admission(True, state.generation, False, None, state.status)
    if state.status is BreakerStatus.OPEN and now < state.open_until:
        return state, Admission(False, state.generation, False, state.open_until, state.status)
    if state.status is BreakerStatus.HALF_OPEN and now < state.probe_expires:
        recheck_at = min(state.probe_expires, now + limits.probe_recheck_s)
        return state, Admission(False, state.generation, False, recheck_at, state.status)
    probing = replace(
        state,
        status=BreakerStatus.HALF_OPEN,
        generation=state.generation + 1,
        probe_holder=holder,
        probe_expires=now + limits.probe_ttl_s,
    )
    return probing, Admission(True, probing.generation, True, None, probing.status)


def _opened(state: BreakerState, *, now: float, limits: BreakerLimits, failures: int) -> BreakerState:
    return replace(
        state,
        status=BreakerStatus.OPEN,
        failures=failures,
        generation=state.generation + 1,
        open_until=now + limits.cooldown_s,
        probe_holder=None,
        probe_expires=0.0,
    )


def record(
    state: BreakerState, *, generation: int, success: bool, now: float, limits: BreakerLimits
) -> BreakerState:
    """The state after the outcome of a call admitted in ``generation``.

    Closed: a success resets the failure count, a failure adds one and opens
    the circuit at the threshold.  Half-open (the probe's outcome): a success
    closes it, a failure opens it for a fresh cooldown.  Outcomes from another
    generation, or while open, change nothing.
    """
    if generation != state.generation:
        return state
    if state.status is BreakerStatus.CLOSED:
        if success:
            return state if state.failures == 0 else replace(state, failures=0)
        failures = state.failures + 1
        if failures >= limits.failure_threshold:
            return _opened(state, now=now, limits=limits, failures=failures)
        return replace(state, failures=failures)
    if state.status is BreakerStatus.HALF_OPEN:
        if success:
            return BreakerState(generation=state.generation + 1)
        return _opened(state, now=now, limits=limits, failures=state.failures)
    return state


def abandon(state: BreakerState, *, generation: int, holder: str) -> BreakerState:
    """The state after an admitted call was never made (e.g. another middleware deferred the job).

    If ``holder`` holds the probe of ``generation``, the claim is released
    (still half-open, ``probe_expires`` 0) so the next job probes at once;
    anything else changes nothing.
    """
    if (
        state.status is BreakerStatus.HALF_OPEN
        and state.generation == generation
        and state.probe_holder == holder
    ):
        return replace(state, probe_holder=None, probe_expires=0.0)
    return state


class BreakerPolicy(Policy[BreakerLimits]):
    """A circuit breaker whose state the whole fleet shares.

    Examples:
      >>> from enrichment_middleware.backends.memory import MemoryBackend
      >>> breaker = BreakerPolicy("api", BreakerLimits(failure_threshold=1), MemoryBackend())
      >>> admission = breaker.admit("message-1")
      >>> admission.allowed
      True
      >>> breaker.record(admission, success=False)  # the call failed
      >>> breaker.admit("message-2").allowed
      False

    Parameters:
      name(str): Names the breaker in the backend; policies of the same name
        share one circuit, wherever they run.
      limits(BreakerLimits): Threshold, cooldown, probe claim and jitter.
      backend(Backend): Where the state lives.
      rng(random.Random): The source of jitter.  Defaults to a new Random.

    Cooldowns and probe claims are reckoned by the backend's clock
    (:meth:`~enrichment_middleware.backends.base.Backend.now`), the same for every host:
    a host whose clock runs ahead cannot end a cooldown early.  The state and
    that clock are read together (:meth:`~enrichment_middleware.backends.base.Backend.state_get_now`):
    a closed breaker's admission, and a success that changes nothing, cost one
    round trip; a transition adds its compare-and-set.
    """

    kind = "breaker"

    def _read(self) -> tuple[int, BreakerState]:
        version, value = self._backend.state_get(self._key)
        return version, BreakerState() if value is None else BreakerState.from_dict(value)

    def _read_now(self) -> tuple[int, BreakerState, float]:
        # The state and the backend's clock in one round trip: an admission of a
        # closed breaker (nothing to write) and a plain success cost one each.
        version, value, now = self._backend.state_get_now(self._key)
        return version, BreakerState() if value is None else BreakerState.from_dict(value), now

    def _write(self, version: int, before: BreakerState, after: BreakerState) -> bool:
        # Unchanged state is not written: a closed breaker's success is one read.
        return after == before or self._backend.state_cas(self._key, version, after.to_dict())

    def _conflict(self) -> RuntimeError:
        return RuntimeError(
            f"circuit breaker {self._name!r} lost {_MAX_CAS_ATTEMPTS} compare-and-set races in a row; "
            "the backend is overloaded or something else writes its key. Retry the job later."
        )

    def admit(self, holder: str) -> Admission:
        """Whether ``holder`` may make a call now; a denial's retry_at carries jitter."""
        for _ in range(_MAX_CAS_ATTEMPTS):
            version, state, now = self._read_now()
            after, admission = decide(state, now=now, holder=holder, limits=self._limits)
            if self._write(version, state, after):
                if admission.retry_at is None:
                    return admission
                retry_at = jittered(admission.retry_at, jitter_s=self._limits.jitter_s, rng=self._rng)
                return replace(admission, retry_at=retry_at)
        raise self._conflict()

    def record(self, admission: Admission, *, success: bool) -> None:
        """Report the outcome of an admitted call.  Denied admissions are ignored."""
        if not admission.allowed:
            return
        for _ in range(_MAX_CAS_ATTEMPTS):
            version, state, now = self._read_now()
            after = record(
                state,
                generation=admission.generation,
                success=success,
                now=now,
                limits=self._limits,
            )
            if self._write(version, state, after):
                return
        raise self._conflict()

    def abandon(self, admission: Admission, holder: str) -> None:
        """Say an admitted call was never made, so a probe claim it held goes to the next job."""
        if not (admission.allowed and admission.probe):
            return
        for _ in range(_MAX_CAS_ATTEMPTS):
            version, state = self._read()
            after = abandon(state, generation=admission.generation, holder=holder)
            if self._write(version, state, after):
                return
        raise self._conflict()

    def state(self) -> BreakerState:
        """The breaker's current state (for status pages and metrics)."""
        return self._read()[1]

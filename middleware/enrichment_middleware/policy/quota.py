"""A fleet-wide quota per fixed window: so many requests, response bytes and units of cost a day.

The cost is a third budget in any unit the actor reports after its call
(the Overpass actors report the server's time, in milliseconds). Since a
call's cost is known only afterwards, a call is admitted only while what is
left covers what a call costs on average in the window (cost used over
requests used, or a prior before any call): the budget is overshot by at
most the calls in flight, as for bytes.

Windows are aligned to the epoch, so a 86,400 s window is a UTC day, and
the backend's clock says which window it is, so every worker agrees on when
it starts whatever its own clock says.  Admission is one atomic backend call, so
however many workers race, no more than the limit are admitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from enrichment_middleware.backends.base import Step, WindowCounts, mean_cost, window_key
from enrichment_middleware.policy.backoff import jittered
from enrichment_middleware.policy.base import Policy

#: Counters outlive their window by this much, so late byte counts still land.
_COUNTER_GRACE_S = 3600

#: The counters of each window; the first counts admissions (the mean cost is per admission).
_COUNTERS = ("requests", "bytes", "cost")


@dataclass(frozen=True)
class QuotaLimits:
    """What a quota allows per window.

    Examples:
      >>> QuotaLimits(requests=10_000, bytes=1_000_000_000)  # a public API's daily allowance
      QuotaLimits(requests=10000, bytes=1000000000, window_s=86400, jitter_s=60.0, cost=-1, cost_prior=1)

    Parameters:
      requests(int): Admissions per window; below 0 means unlimited.
      bytes(int): Response bytes per window; below 0 means unlimited.  Bytes are
        counted after the fact, so admission is refused once used >= limit.
      window_s(int): Window length in seconds, aligned to the epoch: 86,400 is a UTC day.
      jitter_s(float): A denied job comes back at the next window start plus
        uniform(0, jitter_s), so the fleet does not stampede at midnight.
      cost(int): Units of cost per window (any unit the actor reports with
        :func:`~enrichment_middleware.usage.charge_cost`); below 0 means unlimited.  A call
        is admitted only while what is left covers the mean cost per call.
      cost_prior(int): The mean cost per call assumed before any call of the
        window (at least 1).
    """

    requests: int
    bytes: int = -1
    window_s: int = 86_400
    jitter_s: float = 60.0
    cost: int = -1
    cost_prior: int = 1

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ValueError(
                f"QuotaLimits.window_s must be a positive number of seconds, got {self.window_s}"
            )
        if self.jitter_s < 0:
            raise ValueError(f"QuotaLimits.jitter_s must not be negative, got {self.jitter_s}")
        if self.cost_prior < 1:
            raise ValueError(
                f"QuotaLimits.cost_prior must be 1 or more units (a guess of one call's cost), got {self.cost_prior}"
            )


@dataclass(frozen=True)
class QuotaDecision:
    """The answer to one :meth:`QuotaPolicy.admit`.

    Parameters:
      allowed(bool): Whether the job may make its request.
      window_start(float): Start of the window the decision was made in; pass it
        to :meth:`QuotaPolicy.record_bytes` so bytes land in that window.
      requests_used(int): Requests admitted in the window, this one included.
      bytes_used(int): Bytes recorded in the window so far.
      retry_at(float | None): When denied, the time to try again, by the backend's clock.
      cost_used(int): Units of cost recorded in the window so far.
    """

    allowed: bool
    window_start: float
    requests_used: int
    bytes_used: int
    retry_at: float | None
    cost_used: int = 0


@dataclass(frozen=True)
class QuotaUsage:
    """How much of a quota's current window is used (for status pages and metrics).

    Parameters:
      name(str): The quota's name.
      window_start(float): Epoch time the window started.
      window_end(float): Epoch time the next window starts.
      requests_used(int): Requests admitted so far.
      requests_limit(int): The request limit; below 0 means unlimited.
      bytes_used(int): Response bytes recorded so far.
      bytes_limit(int): The byte limit; below 0 means unlimited.
      cost_used(int): Units of cost recorded so far.
      cost_limit(int): The cost limit; below 0 means unlimited.
      cost_prior(int): The mean cost per call assumed before any call.
    """

    name: str
    window_start: float
    window_end: float
    requests_used: int
    requests_limit: int
    bytes_used: int
    bytes_limit: int
    cost_used: int = 0
    cost_limit: int = -1
    cost_prior: int = 1

    @property
    def requests_left(self) -> int | None:
        """Requests still allowed in this window; None when unlimited."""
        return None if self.requests_limit < 0 else max(0, self.requests_limit - self.requests_used)

    @property
    def bytes_left(self) -> int | None:
        """Bytes still allowed in this window; None when unlimited."""
        return None if self.bytes_limit < 0 else max(0, self.bytes_limit - self.bytes_used)

    @property
    def cost_left(self) -> int | None:
        """Units of cost still allowed in this window; None when unlimited."""
        return None if self.cost_limit < 0 else max(0, self.cost_limit - self.cost_used)

    @property
    def cost_per_request(self) -> float:
        """The mean cost of a call in this window (the prior before any call): what admission needs left."""
        return mean_cost(self.cost_used, self.requests_used, self.cost_prior)

    @property
    def calls_left(self) -> int | None:
        """Calls the budgets left still cover, each budget at its mean per call (the
        smallest); None when every budget is unlimited. Pacing spreads these over the window."""
        covered = [self.requests_left]
        for used, left, prior in (
            (self.bytes_used, self.bytes_left, 1),
            (self.cost_used, self.cost_left, self.cost_prior),
        ):
            if left is not None:
                covered.append(int(left // max(1.0, mean_cost(used, self.requests_used, prior))))
        known = [calls for calls in covered if calls is not None]
        return min(known) if known else None


def window_bounds(now: float, window_s: int) -> tuple[float, float]:
    """The (start, end) of the epoch-aligned window that contains ``now``; start <= now < end.

    Examples:
      >>> window_bounds(1_700_000_000.0, 86_400)  # 2023-11-14T22:13:20Z
      (1699920000.0, 1700006400.0)
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be a positive number of seconds, got {window_s}")
    # float % is exact and the difference is a whole number, so start is exact too.
    start = now - (now % window_s)
    return start, start + window_s


class QuotaPolicy(Policy[QuotaLimits]):
    """Admits requests while a shared per-window quota lasts.

    The window a request lands in is chosen by the backend's clock, the same
    for every host, and the decision names it: bytes and refunds go to that
    window, even after it ended.

    Examples:
      >>> from enrichment_middleware.backends.memory import MemoryBackend
      >>> quota = QuotaPolicy("api", QuotaLimits(requests=2), MemoryBackend())
      >>> decision = quota.admit()
      >>> decision.allowed
      True
      >>> quota.record_bytes(52_000, decision.window_start)  # after the response came
      >>> quota.admit().allowed, quota.admit().allowed
      (True, False)

    Parameters:
      name(str): Names the quota in the backend; policies of the same name
        share one quota, wherever they run.
      limits(QuotaLimits): What the quota allows.
      backend(Backend): Where the counters live, and whose clock picks the window.
      rng(random.Random): The source of jitter.  Defaults to a new Random.
    """

    kind = "quota"

    def _ttl_s(self) -> float:
        return self._limits.window_s + _COUNTER_GRACE_S

    def _window(self, increment: int) -> WindowCounts:
        # With nothing to add, limits of -1: reading the window never refuses.
        lim = self._limits
        limits = [lim.requests, lim.bytes, lim.cost] if increment else [-1, -1, -1]
        return self._backend.window_admit(
            self._key,
            _COUNTERS,
            limits,
            [increment, 0, 0],
            window_s=lim.window_s,
            ttl_s=self._ttl_s(),
            priors=[0, 0, lim.cost_prior],
        )

    def admit(self) -> QuotaDecision:
        """Count one request against the current window if the window has room for it."""
        counted = self._window(1)
        requests_used, bytes_used, cost_used = counted.values
        retry_at = None
        if not counted.allowed:
            end = counted.window_start + self._limits.window_s
            retry_at = jittered(end, jitter_s=self._limits.jitter_s, rng=self._rng)
        return QuotaDecision(
            counted.allowed, counted.window_start, requests_used, bytes_used, retry_at, cost_used
        )

    def record_bytes(self, amount: int, window_start: float) -> None:
        """Charge ``amount`` response bytes to the window the request was admitted in
        (``decision.window_start``), even if that window has ended since."""
        self.record({"bytes": amount}, window_start)

    def record_cost(self, amount: int, window_start: float) -> None:
        """Charge ``amount`` units of cost (what the call used, say server milliseconds) to the
        window the request was admitted in, even if that window has ended since."""
        self.record({"cost": amount}, window_start)

    def record(self, amounts: Mapping[str, int], window_start: float) -> None:
        """Charge what one call used, by counter (``bytes``, ``cost``), to the window it was admitted
        in, even if that window has ended since: all in one backend step when the backend can."""
        steps = self.charge_steps(amounts, window_start)
        if len(steps) > 1 and self._backend.all_or_nothing(steps) is not None:
            return
        for step in steps:
            self._backend.counter_add(*step.args, **step.kwargs)

    def charge_steps(self, amounts: Mapping[str, int], window_start: float) -> list[Step]:
        """The backend steps of :meth:`record` (one ``counter_add`` per amount), for a caller that
        takes them in one batch with others' (the end of a call)."""
        for counter, amount in amounts.items():
            if counter not in _COUNTERS[1:]:
                raise ValueError(f"record charges {_COUNTERS[1:]}, not {counter!r}")
            if amount < 0:
                raise ValueError(f"record_{counter} needs the amount the call used (0 or more), got {amount}")
        return [
            Step(
                "counter_add",
                (window_key(self._key, window_start, counter), amount),
                {"ttl_s": self._ttl_s()},
                "any",
            )
            for counter, amount in amounts.items()
            if amount
        ]

    def refund(self, window_start: float) -> None:
        """Give back one request admitted in ``window_start`` whose call was never made
        (a later check deferred the job). Only ever lowers the count, never below 0, and
        never recreates a counter that vanished (say, the store restarted): no overshoot."""
        step = self.refund_step(window_start)
        self._backend.counter_add(*step.args, **step.kwargs)

    def refund_step(self, window_start: float) -> Step:
        """The backend step of :meth:`refund`, for a caller that takes it in one batch with others'."""
        return Step(
            "counter_add",
            (window_key(self._key, window_start, "requests"), -1),
            {"ttl_s": self._ttl_s()},
            "any",
        )

    def usage(self) -> QuotaUsage:
        """What the current window (by the backend's clock) has used so far."""
        counted = self._window(0)
        requests_used, bytes_used, cost_used = counted.values
        start = counted.window_start
        lim = self._limits
        return QuotaUsage(
            self._name,
            start,
            start + lim.window_s,
            requests_used,
            lim.requests,
            bytes_used,
            lim.bytes,
            cost_used,
            lim.cost,
            lim.cost_prior,
        )

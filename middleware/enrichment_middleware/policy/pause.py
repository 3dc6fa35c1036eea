"""A fleet-wide pause and hold: stop every call to an upstream until a time, or until told.

A **pause** is "no calls until T", kept by the backend: when the upstream
asks to slow down, one worker pauses the policy and every process on every
host stops calling until T.  Pausing again only ever moves T later
(``paused_until = max(current, now + seconds)``, atomically, by the
backend's clock), and exactly one of any number of concurrent callers is
told it *opened* the pause: that caller may do the one thing worth doing
once per pause (say, ask the upstream how long to wait) and pause again
with the answer.

A **hold** is "no calls until a person or a new configuration lifts it":
for an upstream that refuses every call the same way (say, it rejects our
credentials), where waiting changes nothing.  It stores the fingerprint of
the settings that failed; :meth:`PausePolicy.release_hold` with the
fingerprint of the settings in force lifts it only when they differ, so a
worker that starts with new settings tries again and one that starts with
the same settings does not.

:func:`read_status` and :func:`decide` are pure functions of what the
backend read; :class:`PausePolicy` applies them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enrichment_middleware.failpoints import failpoint
from enrichment_middleware.policy.backoff import jittered
from enrichment_middleware.policy.base import Policy

#: Deferral reason while a pause is in force.
PAUSED = "paused"
#: Deferral reason while a hold is in force.
HELD = "held"


@dataclass(frozen=True)
class PauseLimits:
    """How long pauses last and when denied jobs come back.

    Examples:
      >>> PauseLimits(min_pause_s=30.0)
      PauseLimits(min_pause_s=30.0, jitter_s=2.0, hold_recheck_s=60.0, max_pause_s=3600.0)

    Parameters:
      min_pause_s(float): The shortest pause: a pause asked for fewer seconds
        lasts this long (an upstream that asks for 30 s gets 30 s, even from
        a caller that asked for less).
      jitter_s(float): Jobs denied come back at the pause end (or after
        ``hold_recheck_s``) plus uniform(0, jitter_s), so they do not all
        call in the same instant.
      hold_recheck_s(float): Jobs denied while held come back after this: a
        hold has no end, and the job must look again (it never runs while held).
      max_pause_s(float): The longest pause one call may ask for: a garbled
        "wait N seconds" must not stop the fleet for a day.
    """

    min_pause_s: float = 30.0
    jitter_s: float = 2.0
    hold_recheck_s: float = 60.0
    max_pause_s: float = 3600.0

    def __post_init__(self) -> None:
        values = (self.min_pause_s, self.jitter_s, self.hold_recheck_s, self.max_pause_s)
        if (
            not all(math.isfinite(value) for value in values)
            or self.min_pause_s <= 0
            or self.jitter_s < 0
            or self.hold_recheck_s <= 0
            or self.max_pause_s < self.min_pause_s
        ):
            raise ValueError(
                "PauseLimits needs min_pause_s > 0, jitter_s >= 0, hold_recheck_s > 0 and "
                f"max_pause_s >= min_pause_s, all finite; got min_pause_s={self.min_pause_s}, "
                f"jitter_s={self.jitter_s}, hold_recheck_s={self.hold_recheck_s}, max_pause_s={self.max_pause_s}"
            )


@dataclass(frozen=True)
class PauseStatus:
    """Whether calls are stopped, and why (for admission, status pages and metrics).

    Parameters:
      paused_until(float | None): The end of the pause in force (backend
        clock, epoch seconds); None when no pause is in force.
      remaining_s(float): Seconds left of that pause; 0 when none.
      held(bool): Whether a hold is in force.
      reason(str | None): Why calls are stopped: the hold's reason when held,
        else the pause's; None when they are not.
      fingerprint(str | None): The fingerprint stored with the hold.
      pause_reason(str | None): The reason of the pause in force.
      hold_reason(str | None): The reason of the hold in force.
    """

    paused_until: float | None
    remaining_s: float
    held: bool
    reason: str | None
    fingerprint: str | None
    pause_reason: str | None = None
    hold_reason: str | None = None

    @property
    def paused(self) -> bool:
        return self.paused_until is not None


@dataclass(frozen=True)
class PauseDecision:
    """The answer to :meth:`PausePolicy.admit`.

    Parameters:
      allowed(bool): Whether the call may be made now.
      reason(str | None): When denied, :data:`PAUSED` or :data:`HELD`.
      delay_s(float): When denied, seconds until the job should come back,
        jitter included (0 when allowed).
    """

    allowed: bool
    reason: str | None
    delay_s: float


def read_status(record: Mapping[str, Any] | None) -> PauseStatus:
    """The status that a backend's :meth:`~enrichment_middleware.backends.base.Backend.pause_get` answer says.

    A pause is in force while now < paused_until: at its end exactly, calls
    flow again and the next pause opens anew.

    Examples:
      >>> read_status(None)
      PauseStatus(paused_until=None, remaining_s=0.0, held=False, reason=None, fingerprint=None, pause_reason=None, hold_reason=None)
      >>> read_status({"now": 100.0, "paused_until": 130.0, "pause_reason": "slow_down", "held": False}).remaining_s
      30.0
    """
    if record is None:
        return PauseStatus(None, 0.0, False, None, None)
    now = float(record["now"])
    until = record.get("paused_until")
    in_force = until is not None and now < float(until)
    pause_reason = record.get("pause_reason") if in_force else None
    held = bool(record.get("held"))
    hold_reason = record.get("hold_reason") if held else None
    return PauseStatus(
        paused_until=float(until) if in_force and until is not None else None,
        remaining_s=float(until) - now if in_force and until is not None else 0.0,
        held=held,
        reason=hold_reason if held else pause_reason,
        fingerprint=record.get("fingerprint") if held else None,
        pause_reason=pause_reason,
        hold_reason=hold_reason,
    )


def decide(status: PauseStatus, *, limits: PauseLimits) -> PauseDecision:
    """Whether a call may be made, and if not, how long (before jitter) the job waits.

    Held: ``hold_recheck_s``, or the pause's remainder if that is longer.
    Paused: the pause's remainder.  Neither: allowed.

    Examples:
      >>> decide(PauseStatus(None, 0.0, False, None, None), limits=PauseLimits())
      PauseDecision(allowed=True, reason=None, delay_s=0.0)
      >>> decide(PauseStatus(130.0, 30.0, False, "slow_down", None), limits=PauseLimits())
      PauseDecision(allowed=False, reason='paused', delay_s=30.0)
    """
    if status.held:
        return PauseDecision(False, HELD, max(limits.hold_recheck_s, status.remaining_s))
    if status.paused:
        return PauseDecision(False, PAUSED, status.remaining_s)
    return PauseDecision(True, None, 0.0)


def pause_length(seconds: float, *, limits: PauseLimits) -> float:
    """The length of a pause asked for ``seconds``: within [min_pause_s, max_pause_s].

    Examples:
      >>> pause_length(5.0, limits=PauseLimits(min_pause_s=30.0))
      30.0
      >>> pause_length(10**6, limits=PauseLimits(max_pause_s=3600.0))
      3600.0
    """
    if math.isnan(seconds):
        raise ValueError("a pause needs a number of seconds, got NaN; pass 0 for the shortest pause")
    return min(max(float(seconds), limits.min_pause_s), limits.max_pause_s)


class PausePolicy(Policy[PauseLimits]):
    """A pause and a hold that the whole fleet shares.

    Examples:
      >>> from enrichment_middleware.backends.memory import MemoryBackend
      >>> from enrichment_middleware.policy.clock import ManualClock
      >>> clock = ManualClock(start=1_000.0)
      >>> pause = PausePolicy("api", PauseLimits(min_pause_s=30.0, jitter_s=0.0), MemoryBackend(clock=clock))
      >>> pause.pause(30.0, "slow_down")  # this call opened the pause
      True
      >>> pause.pause(10.0, "slow_down")  # in force already; the end stays
      False
      >>> pause.status().paused_until
      1030.0
      >>> pause.admit()
      PauseDecision(allowed=False, reason='paused', delay_s=30.0)
      >>> clock.advance(30.0)
      >>> pause.admit().allowed
      True

    Parameters:
      name(str): Names the pause in the backend; policies of the same name
        share it, wherever they run.
      limits(PauseLimits): Shortest and longest pause, jitter, hold re-check.
      backend(Backend): Where the pause and hold live, and whose clock counts.
      rng(random.Random): The source of jitter.  Defaults to a new Random.
    """

    kind = "pause"

    def pause(self, seconds: float, reason: str) -> bool:
        """Stop every call until at least ``seconds`` from the backend's now (within the
        limits' shortest and longest pause); never moves an end in force earlier.

        True when this call opened the pause (none was in force): of concurrent
        callers exactly one gets True; it may read how long to wait, once, and
        call again with the answer.
        """
        return self.extend(seconds, reason)[0]

    def extend(self, seconds: float, reason: str) -> tuple[bool, float]:
        """:meth:`pause`, answering (opened, paused_until by the backend's clock)."""
        length = pause_length(seconds, limits=self._limits)
        opened, until = self._backend.pause_extend(self._key, length, reason)
        if opened:
            failpoint("pause.opened")
        return opened, until

    def hold(self, reason: str, fingerprint: str) -> bool:
        """Stop every call until :meth:`release_hold`; True when it was not held before.

        ``fingerprint`` names the settings that failed (a hash of the URL and
        identity sent, say); a hold in force takes the latest.
        """
        held = self._backend.hold_set(self._key, reason, fingerprint)
        if held:
            failpoint("pause.held")
        return held

    def release_hold(self, fingerprint: str | None = None) -> bool:
        """Lift the hold: unconditionally when ``fingerprint`` is None, else only when the
        hold's fingerprint differs from it (the settings changed since it was set).
        True when a hold was lifted."""
        return self._backend.hold_clear(self._key, fingerprint)

    def status(self) -> PauseStatus:
        """Whether calls are stopped, until when and why, by the backend's clock (one read)."""
        return read_status(self._backend.pause_get(self._key))

    def admit(self) -> PauseDecision:
        """Whether a call may be made now (one read); a denial's delay carries jitter."""
        decision = decide(self.status(), limits=self._limits)
        if decision.allowed:
            return decision
        delay = jittered(decision.delay_s, jitter_s=self._limits.jitter_s, rng=self._rng)
        return PauseDecision(False, decision.reason, delay)

"""An in-process backend: the primitives over plain dicts behind one lock.

For tests and single-process use.  State is not shared between processes, so
a fleet of workers needs :class:`~enrichment_middleware.backends.redis.RedisBackend`.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from enrichment_middleware.backends.base import (
    CONDITIONS,
    PAUSE_KEPT_S,
    WAKE_TOKEN_TTL_S,
    WAKE_TOKENS_KEPT,
    Backend,
    ParkedClaim,
    Step,
    WindowCounts,
    check_counter_arguments,
    counter_refuses,
    mean_cost,
    window_key,
)
from enrichment_middleware.policy.clock import Clock, SystemClock


class MemoryBackend(Backend):
    """Every primitive of :class:`~enrichment_middleware.backends.base.Backend`, in this process's memory.

    One lock makes each primitive atomic; a condition on that lock wakes
    :meth:`lease_wait`.  The backend keeps time with ``clock``: leases,
    windows, parking, and the TTLs of counters and caps all follow it, so a
    test that moves a :class:`~enrichment_middleware.policy.clock.ManualClock` moves
    every one of them, exactly and instantly.  Waits and wake-ups are real
    (monotonic) time.  Values given to :meth:`state_cas` are stored as JSON,
    exactly as a shared store would keep them, so a value that would not
    survive Redis fails here too.

    Examples:
      >>> from enrichment_middleware.policy.clock import ManualClock
      >>> clock = ManualClock(start=1_700_000_000.0)
      >>> backend = MemoryBackend(clock=clock)
      >>> backend.window_admit("q", ["requests"], [1], [1], window_s=60, ttl_s=120).values
      [1]
      >>> backend.window_admit("q", ["requests"], [1], [1], window_s=60, ttl_s=120).allowed
      False
      >>> clock.advance(60)  # the next window
      >>> backend.window_admit("q", ["requests"], [1], [1], window_s=60, ttl_s=120).allowed
      True

    Parameters:
      clock(Clock): The backend's time.  Defaults to the system clock.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        # Reentrant: all_or_nothing runs the primitives, which take it too, under it.
        self._lock = threading.RLock()
        self._woken = threading.Condition(self._lock)
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (value, expires at)
        self._leases: dict[str, dict[str, float]] = {}  # key -> holder -> expires at
        self._caps: dict[str, tuple[int, float]] = {}  # key -> (cap, expires at)
        self._wakes: dict[str, tuple[int, float]] = {}  # key -> (tokens, expires monotonic)
        self._states: dict[str, tuple[int, str]] = {}  # key -> (version, JSON value)
        # key -> member -> (due, token, payload); a payload of None is an orphan (tests make them).
        self._parked: dict[str, dict[str, tuple[float, str, bytes | None]]] = {}
        self._orphans: dict[str, int] = {}
        self._pauses: dict[str, tuple[float, float, str]] = {}  # key -> (until, since, reason)
        self._holds: dict[str, tuple[float, str, str]] = {}  # key -> (since, reason, fingerprint)
        self._schedules: dict[str, tuple[float, float]] = {}  # key -> (next reservation, next start)

    def now(self) -> float:
        return self._clock.now()

    # -- counters -----------------------------------------------------------

    def _counter(self, key: str, now: float) -> int | None:
        entry = self._counters.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._counters[key]
            return None
        return entry[0]

    def _counter_set(self, key: str, value: int, ttl_s: float, now: float) -> None:
        current = self._counters.get(key)
        expires = current[1] if current is not None else now + ttl_s
        self._counters[key] = (value, expires)

    def window_admit(
        self,
        key: str,
        names: Sequence[str],
        limits: Sequence[int],
        increments: Sequence[int],
        *,
        window_s: int,
        ttl_s: float,
        priors: Sequence[int] | None = None,
    ) -> WindowCounts:
        priors = check_counter_arguments(names, limits, increments, priors)
        with self._lock:
            now = self._clock.now()
            start = float(int(now) - int(now) % window_s)
            keys = [window_key(key, start, name) for name in names]
            values = [self._counter(k, now) or 0 for k in keys]
            needs = [
                mean_cost(value, values[0], prior) if prior > 0 else 0.0
                for value, prior in zip(values, priors, strict=True)
            ]
            if any(counter_refuses(*checked) for checked in zip(values, limits, needs, strict=True)):
                return WindowCounts(False, start, now, values)
            after = []
            for k, value, increment in zip(keys, values, increments, strict=True):
                if increment:
                    self._counter_set(k, value + increment, ttl_s, now)
                after.append(value + increment)
            return WindowCounts(True, start, now, after)

    def counter_add(self, key: str, amount: int, ttl_s: float) -> int:
        with self._lock:
            now = self._clock.now()
            current = self._counter(key, now)
            if amount < 0:
                if current is None:
                    return 0  # a refund never creates a counter
                value = max(current + amount, 0)
            else:
                value = (current or 0) + amount
            self._counter_set(key, value, ttl_s, now)
            return value

    def counters_get(self, keys: Sequence[str]) -> list[int]:
        with self._lock:
            now = self._clock.now()
            return [self._counter(key, now) or 0 for key in keys]

    # -- leases -------------------------------------------------------------

    def _cap(self, key: str) -> int | None:
        entry = self._caps.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock.now():
            del self._caps[key]
            return None
        return entry[0]

    def lease_acquire(self, key: str, holder: str, limit: int, lease_s: float) -> float | None:
        with self._lock:
            now = self._clock.now()
            leases = self._leases.setdefault(key, {})
            for expired in [h for h, expires in leases.items() if expires <= now]:
                del leases[expired]
            cap = self._cap(key)
            effective = limit if cap is None else min(limit, cap)
            if holder in leases or len(leases) < effective:
                leases[holder] = now + lease_s
                return now
            return None

    def lease_release(self, key: str, holder: str) -> bool:
        with self._lock:
            leases = self._leases.get(key, {})
            if leases.pop(holder, None) is None:
                return False
            self._wake_one(key)
            return True

    def _wake_one(self, key: str) -> None:
        tokens = min(self._wake_tokens(key) + 1, WAKE_TOKENS_KEPT)
        self._wakes[key] = (tokens, time.monotonic() + WAKE_TOKEN_TTL_S)
        self._woken.notify_all()

    def lease_transfer(
        self, key: str, holder: str, to_holder: str, limit: int, lease_s: float
    ) -> float | None:
        with self._lock:
            now = self._clock.now()
            leases = self._leases.setdefault(key, {})
            for expired in [h for h, expires in leases.items() if expires <= now]:
                del leases[expired]
            held = leases.pop(holder, None) is not None
            cap = self._cap(key)
            effective = limit if cap is None else min(limit, cap)
            if to_holder in leases or len(leases) < effective:
                leases[to_holder] = now + lease_s
                return now
            if held:
                self._wake_one(key)
            return None

    def lease_count(self, key: str) -> int:
        with self._lock:
            now = self._clock.now()
            return sum(1 for expires in self._leases.get(key, {}).values() if expires > now)

    def _wake_tokens(self, key: str) -> int:
        entry = self._wakes.get(key)
        if entry is None:
            return 0
        if entry[1] <= time.monotonic():
            del self._wakes[key]
            return 0
        return entry[0]

    def lease_wait(self, key: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._woken:
            while True:
                tokens = self._wake_tokens(key)
                if tokens > 0:
                    self._wakes[key] = (tokens - 1, self._wakes[key][1])
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._woken.wait(remaining)

    def lease_set_cap(self, key: str, cap: int | None, ttl_s: float) -> None:
        with self._lock:
            if cap is None:
                self._caps.pop(key, None)
            else:
                self._caps[key] = (cap, self._clock.now() + ttl_s)

    def lease_get_cap(self, key: str) -> int | None:
        with self._lock:
            return self._cap(key)

    # -- versioned state ----------------------------------------------------

    def state_get(self, key: str) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            version, encoded = self._states.get(key, (0, "null"))
        value: dict[str, Any] | None = json.loads(encoded)
        return version, value

    def state_get_now(self, key: str) -> tuple[int, dict[str, Any] | None, float]:
        with self._lock:
            version, encoded = self._states.get(key, (0, "null"))
            now = self._clock.now()
        value: dict[str, Any] | None = json.loads(encoded)
        return version, value, now

    def state_cas(self, key: str, version: int, value: dict[str, Any]) -> bool:
        encoded = json.dumps(value)
        with self._lock:
            current = self._states.get(key, (0, "null"))[0]
            if current != version:
                return False
            self._states[key] = (version + 1, encoded)
            return True

    # -- parking lot --------------------------------------------------------

    def park(self, key: str, member: str, payload: bytes, delay_s: float, token: str) -> None:
        with self._lock:
            due = self._clock.now() + delay_s
            self._parked.setdefault(key, {})[member] = (due, token, bytes(payload))

    def claim_due(self, key: str, limit: int, claim_s: float) -> tuple[list[ParkedClaim], list[str]]:
        with self._lock:
            now = self._clock.now()
            parked = self._parked.get(key, {})
            due = sorted((entry[0], member) for member, entry in parked.items() if entry[0] <= now)
            claimed, orphans = [], []
            for _, member in due[: max(limit, 0)]:
                _, token, payload = parked[member]
                if payload is None:
                    del parked[member]
                    orphans.append(member)
                    continue
                parked[member] = (now + claim_s, token, payload)
                claimed.append(ParkedClaim(member, payload, token))
            if orphans:
                self._orphans[key] = self._orphans.get(key, 0) + len(orphans)
            return claimed, orphans

    def unpark(self, key: str, member: str, token: str) -> bool:
        with self._lock:
            parked = self._parked.get(key, {})
            entry = parked.get(member)
            if entry is None or entry[1] != token:
                return False
            del parked[member]
            return True

    def parked_count(self, key: str) -> int:
        with self._lock:
            return len(self._parked.get(key, {}))

    def parked_orphans(self, key: str) -> int:
        with self._lock:
            return self._orphans.get(key, 0)

    def lose_payload(self, key: str, member: str) -> None:
        """Drop a parked member's payload but keep it due (what a store that lost part of
        its data looks like); for tests of :meth:`claim_due`'s orphans."""
        with self._lock:
            due, token, _ = self._parked[key][member]
            self._parked[key][member] = (due, token, None)

    def ping(self) -> None:
        """Always reachable."""

    #: What all_or_nothing puts back when a step's condition fails: the state each primitive writes
    #: (a primitive not named here: every kind of state this backend keeps).
    _WRITES: ClassVar[dict[str, tuple[str, ...]]] = {
        "pause_get": (),
        "state_get_now": (),
        "lease_acquire": ("_leases",),
        "window_admit": ("_counters",),
        "counter_add": ("_counters",),
        "gcra_reserve": ("_schedules",),
    }
    _STATE = (
        "_counters", "_leases", "_caps", "_wakes", "_states", "_parked", "_orphans", "_pauses", "_holds",
        "_schedules",
    )  # fmt: skip

    def all_or_nothing(self, steps: Sequence[Step]) -> list[Any] | None:
        with self._lock:
            # Only the kinds of state the steps write: a copy of every parked payload per
            # admission would cost more than the admission.
            written = {name for step in steps for name in self._WRITES.get(step.primitive, self._STATE)}
            saved = {name: copy.deepcopy(getattr(self, name)) for name in written}
            replies = []
            try:
                for step in steps:
                    reply = getattr(self, step.primitive)(*step.args, **step.kwargs)
                    if not CONDITIONS[step.condition](reply, step):
                        break
                    replies.append(reply)
                else:
                    return replies
            except BaseException:
                self._put_back(saved)
                raise
            self._put_back(saved)
            return None

    def _put_back(self, saved: dict[str, Any]) -> None:
        for name, value in saved.items():
            setattr(self, name, value)

    # -- pause --------------------------------------------------------------

    def _pause(self, key: str, now: float) -> tuple[float, float, str] | None:
        entry = self._pauses.get(key)
        if entry is not None and entry[0] + PAUSE_KEPT_S <= now:
            del self._pauses[key]
            return None
        return entry

    def pause_extend(self, key: str, seconds: float, reason: str) -> tuple[bool, float]:
        with self._lock:
            now = self._clock.now()
            wanted = now + seconds
            entry = self._pause(key, now)
            if entry is None or entry[0] <= now:
                self._pauses[key] = (wanted, now, reason)
                return True, wanted
            if wanted > entry[0]:
                self._pauses[key] = (wanted, entry[1], reason)
                return False, wanted
            return False, entry[0]

    def pause_get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            now = self._clock.now()
            pause = self._pause(key, now)
            hold = self._holds.get(key)
        if pause is None and hold is None:
            return None
        return {
            "now": now,
            "paused_until": None if pause is None else pause[0],
            "paused_since": None if pause is None else pause[1],
            "pause_reason": None if pause is None else pause[2],
            "held": hold is not None,
            "held_since": None if hold is None else hold[0],
            "hold_reason": None if hold is None else hold[1],
            "fingerprint": None if hold is None else hold[2],
        }

    def hold_set(self, key: str, reason: str, fingerprint: str) -> bool:
        with self._lock:
            current = self._holds.get(key)
            since = self._clock.now() if current is None else current[0]
            self._holds[key] = (since, reason, fingerprint)
            return current is None

    def hold_clear(self, key: str, unless_fingerprint: str | None) -> bool:
        with self._lock:
            current = self._holds.get(key)
            if current is None or (unless_fingerprint is not None and current[2] == unless_fingerprint):
                return False
            del self._holds[key]
            return True

    # -- pacing -------------------------------------------------------------

    def _gcra_next(
        self, key: str, interval_s: float, burst: int, wait_s: float, now: float
    ) -> tuple[float, float]:
        """Reserve the next slot (lock held); returns it and whether it was taken as a start."""
        tat, start = self._schedules.get(key, (0.0, 0.0))
        base = max(tat, start, now)
        slot = max(now, base - (burst - 1) * interval_s)
        if slot - now <= wait_s:
            start = max(start, slot) + interval_s
        self._schedules[key] = (base + interval_s, start)
        return slot, now

    def gcra_reserve(
        self, key: str, interval_s: float, burst: int, *, wait_s: float = 0.0
    ) -> tuple[float, float]:
        with self._lock:
            return self._gcra_next(key, interval_s, burst, wait_s, self._clock.now())

    def gcra_claim(
        self, key: str, slot_at: float, interval_s: float, burst: int, *, wait_s: float = 0.0
    ) -> tuple[float, float]:
        with self._lock:
            now = self._clock.now()
            tat, start = self._schedules.get(key, (0.0, 0.0))
            begin = max(slot_at, start - (burst - 1) * interval_s)
            if begin - now <= wait_s:
                self._schedules[key] = (tat, max(start, begin, now) + interval_s)
                return begin, now
            if begin == slot_at:
                return slot_at, now
            return self._gcra_next(key, interval_s, burst, wait_s, now)

    def gcra_get(self, key: str) -> tuple[float, float]:
        with self._lock:
            tat, start = self._schedules.get(key, (0.0, 0.0))
            return max(tat, start), self._clock.now()

"""An in-process backend: the primitives over plain dicts behind one lock.

For tests and single-process use.  State is not shared between processes, so
a fleet of workers needs :class:`~middleware.backends.redis.RedisBackend`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from middleware.backends.base import (
    WAKE_TOKEN_TTL_S,
    WAKE_TOKENS_KEPT,
    Backend,
    check_counter_arguments,
)


class MemoryBackend(Backend):
    """Every primitive of :class:`~middleware.backends.base.Backend`, in this process's memory.

    One lock makes each primitive atomic; a condition on that lock wakes
    :meth:`lease_wait`.  TTLs are honoured in real (monotonic) time.  Values
    given to :meth:`state_cas` are stored as JSON, exactly as a shared store
    would keep them, so a value that would not survive Redis fails here too.

    Examples:
      >>> backend = MemoryBackend()
      >>> backend.counters_admit(["requests"], [1], [1], ttl_s=60)
      (True, [1])
      >>> backend.counters_admit(["requests"], [1], [1], ttl_s=60)
      (False, [1])
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._woken = threading.Condition(self._lock)
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (value, expires monotonic)
        self._leases: dict[str, dict[str, float]] = {}  # key -> holder -> expires_at
        self._caps: dict[str, tuple[int, float]] = {}  # key -> (cap, expires monotonic)
        self._wakes: dict[str, tuple[int, float]] = {}  # key -> (tokens, expires monotonic)
        self._states: dict[str, tuple[int, str]] = {}  # key -> (version, JSON value)
        self._parked: dict[str, dict[str, tuple[float, bytes]]] = {}  # key -> member -> (due, payload)

    # -- counters -----------------------------------------------------------

    def _counter(self, key: str) -> int:
        entry = self._counters.get(key)
        if entry is None:
            return 0
        if entry[1] <= time.monotonic():
            del self._counters[key]
            return 0
        return entry[0]

    def _counter_set(self, key: str, value: int, ttl_s: float) -> None:
        current = self._counters.get(key)
        expires = current[1] if current is not None else time.monotonic() + ttl_s
        self._counters[key] = (value, expires)

    def counters_admit(
        self, keys: Sequence[str], limits: Sequence[int], increments: Sequence[int], ttl_s: float
    ) -> tuple[bool, list[int]]:
        check_counter_arguments(keys, limits, increments)
        with self._lock:
            values = [self._counter(key) for key in keys]
            if any(0 <= limit <= value for value, limit in zip(values, limits, strict=True)):
                return False, values
            after = []
            for key, value, increment in zip(keys, values, increments, strict=True):
                if increment:
                    self._counter_set(key, value + increment, ttl_s)
                after.append(value + increment)
            return True, after

    def counter_add(self, key: str, amount: int, ttl_s: float) -> int:
        with self._lock:
            value = self._counter(key) + amount
            self._counter_set(key, value, ttl_s)
            return value

    def counters_get(self, keys: Sequence[str]) -> list[int]:
        with self._lock:
            return [self._counter(key) for key in keys]

    # -- leases -------------------------------------------------------------

    def _cap(self, key: str) -> int | None:
        entry = self._caps.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._caps[key]
            return None
        return entry[0]

    def lease_acquire(self, key: str, holder: str, limit: int, now: float, expires_at: float) -> bool:
        with self._lock:
            leases = self._leases.setdefault(key, {})
            for expired in [h for h, expires in leases.items() if expires <= now]:
                del leases[expired]
            cap = self._cap(key)
            effective = limit if cap is None else min(limit, cap)
            if holder in leases or len(leases) < effective:
                leases[holder] = expires_at
                return True
            return False

    def lease_release(self, key: str, holder: str) -> bool:
        with self._lock:
            leases = self._leases.get(key, {})
            if leases.pop(holder, None) is None:
                return False
            tokens = min(self._wake_tokens(key) + 1, WAKE_TOKENS_KEPT)
            self._wakes[key] = (tokens, time.monotonic() + WAKE_TOKEN_TTL_S)
            self._woken.notify_all()
            return True

    def lease_count(self, key: str, now: float) -> int:
        with self._lock:
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
                self._caps[key] = (cap, time.monotonic() + ttl_s)

    def lease_get_cap(self, key: str) -> int | None:
        with self._lock:
            return self._cap(key)

    # -- versioned state ----------------------------------------------------

    def state_get(self, key: str) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            version, encoded = self._states.get(key, (0, "null"))
        value: dict[str, Any] | None = json.loads(encoded)
        return version, value

    def state_cas(self, key: str, version: int, value: dict[str, Any]) -> bool:
        encoded = json.dumps(value)
        with self._lock:
            current = self._states.get(key, (0, "null"))[0]
            if current != version:
                return False
            self._states[key] = (version + 1, encoded)
            return True

    # -- parking lot --------------------------------------------------------

    def park(self, key: str, member: str, payload: bytes, due_at: float) -> None:
        with self._lock:
            self._parked.setdefault(key, {})[member] = (due_at, bytes(payload))

    def claim_due(self, key: str, now: float, limit: int, claim_until: float) -> list[tuple[str, bytes]]:
        with self._lock:
            parked = self._parked.get(key, {})
            due = sorted((entry[0], member) for member, entry in parked.items() if entry[0] <= now)
            claimed = []
            for _, member in due[: max(limit, 0)]:
                payload = parked[member][1]
                parked[member] = (claim_until, payload)
                claimed.append((member, payload))
            return claimed

    def unpark(self, key: str, member: str) -> None:
        with self._lock:
            self._parked.get(key, {}).pop(member, None)

    def parked_count(self, key: str) -> int:
        with self._lock:
            return len(self._parked.get(key, {}))

    def ping(self) -> None:
        """Always reachable."""

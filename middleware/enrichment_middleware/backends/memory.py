"""An in-process backend: the primitives over plain dicts behind one lock.

For tests and single-process use.  State is not shared between processes, so
a fleet of workers needs :class:`~enrichment_middleware.backends.redis.RedisBackend`.
"""

from __future__ import annotations

import bisect
import copy
import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from enrichment_middleware.backends.base import (
    CONDITIONS,
    PAUSE_KEPT_S,
    WAKE_TOKEN_TTL_S,
    WAKE_TOKENS_KEPT,
    Backend,
    HandedSeat,
    ParkedClaim,
    RoomCounts,
    Seating,
    Step,
    WindowCounts,
    check_counter_arguments,
    check_lane,
    counter_refuses,
    mean_cost,
    steps_to_save,
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
        self._stages: dict[str, tuple[dict[str, bytes], float]] = {}  # key -> (fields, expires at)
        self._pauses: dict[str, tuple[float, float, str]] = {}  # key -> (until, since, reason)
        self._holds: dict[str, tuple[float, str, str]] = {}  # key -> (since, reason, fingerprint)
        self._schedules: dict[str, tuple[float, float]] = {}  # key -> (next reservation, next start)
        self._rooms: dict[str, _Room] = {}

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
        "lease_release": ("_leases", "_wakes"),
        "gcra_reserve": ("_schedules",),
        "room_seat": ("_rooms",),
        "room_keep": ("_rooms",),
        "room_leave": ("_rooms",),
        "stage_look": (),
        "stage_get": (),
        "stage_put": ("_stages",),
    }
    _STATE = (
        "_counters", "_leases", "_caps", "_wakes", "_states", "_parked", "_orphans", "_pauses", "_holds",
        "_schedules", "_rooms", "_stages",
    )  # fmt: skip

    def all_or_nothing(self, steps: Sequence[Step]) -> list[Any] | None:
        with self._lock:
            # Only the kinds of state the steps write: a copy of every parked payload per
            # admission would cost more than the admission.
            saving = steps[: steps_to_save(steps)]
            written = {name for step in saving for name in self._WRITES.get(step.primitive, self._STATE)}
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

    # -- stages -------------------------------------------------------------

    def _stage(self, key: str) -> dict[str, bytes]:
        entry = self._stages.get(key)
        if entry is None:
            return {}
        if entry[1] <= self._clock.now():
            del self._stages[key]
            return {}
        return entry[0]

    def stage_put(
        self, key: str, fields: Mapping[str, bytes], ttl_s: float, remove: Sequence[str] = ()
    ) -> set[str]:
        with self._lock:
            values = {name: value for name, value in self._stage(key).items() if name not in remove}
            values.update(fields)
            self._stages[key] = (values, self._clock.now() + ttl_s)
            return set(values)

    def stage_get(self, key: str, field: str) -> bytes | None:
        with self._lock:
            return self._stage(key).get(field)

    def stage_look(self, key: str, wanted: Sequence[str] = ()) -> tuple[set[str], dict[str, bytes]]:
        with self._lock:
            values = self._stage(key)
            return set(values), {name: values[name] for name in wanted if name in values}

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

    # -- rooms (the same steps as lua/room*.lua) ----------------------------

    def _room(self, key: str) -> _Room:
        room = self._rooms.get(key)
        if room is None:
            room = self._rooms[key] = _Room()
        room.expire(self._clock.now())
        return room

    def room_enter(
        self,
        key: str,
        lane: str,
        member: str,
        payload: bytes,
        *,
        token: str,
        weight: float,
        seats: int,
        seat_s: float,
        handoff_s: float,
    ) -> Seating:
        check_lane(lane)
        with self._lock:
            room = self._room(key)
            now = self._clock.now()
            held = room.tokens.get(member)
            status, mine = "waiting", ""
            if held is not None:
                if token and token == held:
                    # Its seat: handed to this copy (it arrives), or kept for it while it was deferred.
                    room.seats[member] = now + seat_s
                    room.forget(member)
                    status, mine = "seated", held
                elif not token and member not in room.handed:
                    # The broker's own copy again (its worker lost the connection): it takes the seat over.
                    room.seats[member] = now + seat_s
                    status, mine = "seated", held
                else:
                    status = "present"  # a stale copy, or handed to another copy not arrived yet
            elif member in room.entries:
                status = "present"  # waiting in its lane
            elif token.isdigit() and member in room.left and room.stale(member, int(token)):
                status = (
                    "present"  # a stale copy of a job that ran and left (a later seat's token is greater)
                )
            else:
                room.weights[lane] = float(weight)
                if not room.waiting() and len(room.seats) < seats:
                    mine = room.next_token()
                    room.seats[member] = now + seat_s
                    room.tokens[member] = mine
                    status = "seated"
                else:
                    room.seq += 1
                    room.entries[member] = (lane, room.seq)
                    room.payloads[member] = bytes(payload)
                    room.wait_in(lane, room.seq, member)
            return Seating(status, mine, room.fill(seats, now + handoff_s))

    def room_seat(self, key: str, member: str, token: str, *, seats: int, seat_s: float) -> str | None:
        with self._lock:
            room = self._rooms.setdefault(key, _Room())
            now = self._clock.now()
            held = room.tokens.get(member)
            if token:
                # Only its own live seat; a stale token is for room_enter to judge.
                if held != token or room.seats.get(member, now) <= now:
                    return None
                room.seats[member] = now + seat_s
                room.handed.pop(member, None)  # arrived: its entry and payload go when it leaves
                return held
            if held is not None or room.waiting():
                return None
            if sum(1 for lapses in room.seats.values() if lapses > now) >= seats:
                return None
            mine = room.next_token()
            room.seats[member] = now + seat_s
            room.tokens[member] = mine
            return mine

    def room_keep(self, key: str, member: str, token: str, seat_s: float) -> bool:
        with self._lock:
            room = self._rooms.get(key)
            now = self._clock.now()
            if room is None or room.tokens.get(member) != token or room.seats.get(member, now) <= now:
                return False
            room.seats[member] = now + seat_s
            return True

    def room_withdraw(self, key: str, member: str) -> bool:
        with self._lock:
            room = self._rooms.get(key)
            if room is None or member not in room.entries or member in room.tokens:
                return False
            lane, seq = room.entries[member]
            room.queue[lane].remove((seq, member))
            room.forget(member)
            return True

    def room_leave(
        self,
        key: str,
        member: str | None,
        token: str,
        *,
        seats: int,
        handoff_s: float,
        called: str = "",
        window_s: int = 86_400,
        left_s: float = 600.0,
        early: bool = False,
    ) -> list[HandedSeat]:
        with self._lock:
            room = self._room(key)
            now = self._clock.now()
            if member is not None and room.tokens.get(member) == token:
                del room.seats[member]
                del room.tokens[member]
                room.forget(member)
                room.left[member] = (now + left_s, int(token) if token.isdigit() else -1, early)
                if called:
                    start = _window_start(now, window_s)
                    for old in [w for w in room.calls if w < start]:
                        del room.calls[old]
                    calls = room.calls.setdefault(start, {})
                    calls[called] = calls.get(called, 0) + 1
            return room.fill(seats, now + handoff_s)

    def room_counts(self, key: str, *, window_s: int = 86_400) -> RoomCounts:
        with self._lock:
            room = self._rooms.get(key)
            if room is None:
                return RoomCounts(0, {})
            now = self._clock.now()
            waiting = {lane: len(queued) for lane, queued in room.queue.items() if queued}
            calls = dict(room.calls.get(_window_start(now, window_s), {}))
            return RoomCounts(sum(1 for lapses in room.seats.values() if lapses > now), waiting, calls)


def _window_start(now: float, window_s: int) -> int:
    """The start of the epoch-aligned window of ``window_s`` that holds ``now`` (whole seconds, as Lua)."""
    seconds = int(now)
    return seconds - seconds % int(window_s)


class _Room:
    """One room's state (see :class:`~enrichment_middleware.backends.base.Rooms`); the backend's lock guards it."""

    def __init__(self) -> None:
        self.seats: dict[str, float] = {}  # member -> lapses at
        self.tokens: dict[str, str] = {}  # member -> seat token
        self.queue: dict[str, list[tuple[int, str]]] = {}  # lane -> (sequence, member), sorted
        self.entries: dict[
            str, tuple[str, int]
        ] = {}  # member -> (lane, sequence), from its wait to its leave
        self.payloads: dict[str, bytes] = {}
        self.handed: dict[str, str] = {}  # member -> token: handed a seat, not arrived yet
        # member -> (until, the token it left with, whether it left early: before its job finished)
        self.left: dict[str, tuple[float, int, bool]] = {}
        self.passes: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.vtime = 0.0
        self.seq = 0
        self.calls: dict[int, dict[str, int]] = {}  # window start -> lane -> calls (the current window's)

    def stride(self, lane: str) -> float:
        return 1 / self.weights.get(lane, 1.0)

    def next_token(self) -> str:
        self.seq += 1
        return str(self.seq)

    def waiting(self) -> int:
        return sum(len(queued) for queued in self.queue.values())

    def stale(self, member: str, token: int) -> bool:
        """Whether a copy of ``member`` holding ``token`` is stale, the member having left: an older
        token, or the one it left with unless it left early (then it is that delivery again)."""
        _, left_token, early = self.left[member]
        return token < left_token or (token == left_token and not early)

    def forget(self, member: str) -> None:
        self.entries.pop(member, None)
        self.payloads.pop(member, None)
        self.handed.pop(member, None)

    def wait_in(self, lane: str, seq: int, member: str) -> None:
        queued = self.queue.setdefault(lane, [])
        if not queued:
            # A lane nobody waited in is due one stride after the pass last served: no banked credit.
            self.passes[lane] = max(self.passes.get(lane, 0.0), self.vtime + self.stride(lane))
        bisect.insort(queued, (seq, member))

    def expire(self, now: float) -> None:
        for member in [m for m, (until, _, _) in self.left.items() if until <= now]:
            del self.left[member]
        for member in [m for m, lapses in self.seats.items() if lapses <= now]:
            del self.seats[member]
            self.tokens.pop(member, None)
            entry = self.entries.get(member)
            if entry is not None and member in self.handed:
                # Handed a seat, never arrived: it waits again at the head of its lane, its turn given back.
                del self.handed[member]
                lane, seq = entry
                self.passes[lane] = self.passes.get(lane, 0.0) - self.stride(lane)
                self.wait_in(lane, seq, member)
            else:
                self.forget(member)

    def fill(self, seats: int, lapses_at: float) -> list[HandedSeat]:
        handed = []
        while len(self.seats) < seats:
            # The smallest pass; a tie goes to the heavier lane (the smaller stride), then by name.
            lanes = [
                (self.passes.get(lane, 0.0), self.stride(lane), lane)
                for lane, queued in self.queue.items()
                if queued
            ]
            if not lanes:
                break
            pass_, _, lane = min(lanes)
            _, member = self.queue[lane].pop(0)
            if not self.queue[lane]:
                del self.queue[lane]
            self.vtime = pass_
            self.passes[lane] = pass_ + self.stride(lane)
            token = self.next_token()
            self.seats[member] = lapses_at
            self.tokens[member] = token
            self.handed[member] = token
            handed.append(HandedSeat(member, lane, token, self.payloads.get(member, b"")))
        # Lanes nobody waits in whose pass the room caught up with would start there anyway; the
        # lanes of members handed a seat stay (a lapse puts them back, with their weight).
        busy = {self.entries[m][0] for m in self.handed if m in self.entries}
        idle = [lane for lane, p in self.passes.items() if p <= self.vtime and not self.queue.get(lane)]
        for lane in [lane for lane in idle if lane not in busy]:
            del self.passes[lane]
            self.weights.pop(lane, None)
        return handed

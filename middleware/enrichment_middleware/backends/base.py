"""The contract of a storage backend: the few atomic primitives every policy is built on.

Policies (quota, semaphore, circuit breaker, parking lot) are plain Python on
top of these primitives; a new store means implementing this class, not the
policies.  Each method is atomic with respect to every other caller of the
same store, in this process or any other.

The port is a small core (:class:`Core`: the clock, a liveness check, the
all-or-nothing batch) and one capability group per kind of state, each the
primitives of one policy: :class:`Counters` (the quota), :class:`Leases`
(the semaphore), :class:`States` (the breaker), :class:`Parking` (deferred
work), :class:`Pauses` (the pause and hold), :class:`Schedules` (the
pacing), :class:`Rooms` (fair waiting) and :class:`Stages` (what one step
of a job hands the next). :class:`Backend` is all of them, as the memory and Redis backends
are; a store that serves one policy only may implement its group alone.

The backend also keeps the time.  Hosts' clocks disagree (a host 100 s ahead
would see every lease of the others as lapsed), so every primitive that needs
"now" reads the backend's own clock (the Redis server's ``TIME``), and callers
pass durations (``lease_s``, ``delay_s``, ``claim_s``, ``window_s``), never
absolute times.  Policies that compute with time in plain Python ask
:meth:`Backend.now`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: How many unconsumed wake-ups a lease key keeps.  A release with nobody
#: waiting leaves a token so that a waiter arriving a moment later is not
#: left asleep; more tokens than this would only cause useless retries.
WAKE_TOKENS_KEPT = 4

#: How long (real seconds) an unconsumed wake-up is kept.
WAKE_TOKEN_TTL_S = 10.0

#: How long (backend seconds) a pause is remembered after it ended, for
#: status pages ("last paused until ..."); it no longer stops anything.
PAUSE_KEPT_S = 3600.0


class BackendUnavailable(Exception):
    """The store behind a backend cannot be reached, or cannot take writes right now.

    The message names the store and what to check.  Middleware decides what a
    job does then (run anyway, or come back later); the backend never guesses.
    """


@dataclass(frozen=True)
class WindowCounts:
    """The answer of :meth:`Backend.window_admit`.

    Parameters:
      allowed(bool): Whether the increments were added.
      window_start(float): Start (backend clock, epoch seconds) of the window
        the call landed in; a whole number.
      now(float): The backend's time when it decided.
      values(list[int]): The counters after the call, one per name.
    """

    allowed: bool
    window_start: float
    now: float
    values: list[int]


@dataclass(frozen=True)
class ParkedClaim:
    """One parked member handed out by :meth:`Backend.claim_due`.

    Parameters:
      member(str): The member's name (say, a message id).
      payload(bytes): What was parked with it.
      token(str): The token of this parking; only :meth:`Backend.unpark` with
        the same token forgets it, so a member parked again meanwhile stays.
    """

    member: str
    payload: bytes
    token: str


def window_key(key: str, window_start: float, name: str) -> str:
    """The counter key of ``name`` in the window that starts at ``window_start``.

    Examples:
      >>> window_key("quota:api", 1_699_920_000.0, "bytes")
      'quota:api:1699920000:bytes'
    """
    return f"{key}:{int(window_start)}:{name}"


@dataclass(frozen=True)
class Step:
    """One primitive of an all-or-nothing batch (:meth:`Backend.all_or_nothing`) and the condition
    its reply must meet for the batch to go on.

    Parameters:
      primitive(str): The name of the :class:`Backend` method to run (one that runs one
        atomic step: ``pause_get``, ``lease_acquire``, ``state_get_now``, ``gcra_reserve``,
        ``window_admit``).
      args(tuple): Its positional arguments.
      kwargs(Mapping): Its keyword arguments.
      condition(str): A name in :data:`CONDITIONS`.
    """

    primitive: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    condition: str = "granted"


def _not_paused(reply: Any, step: Step) -> bool:
    return reply is None or (
        not reply["held"] and (reply["paused_until"] is None or reply["paused_until"] <= reply["now"])
    )


def _closed(reply: Any, step: Step) -> bool:
    return reply[1] is None or reply[1].get("status", "closed") == "closed"


def _unchanged_by_success(reply: Any, step: Step) -> bool:
    return reply[1] is None or (
        reply[1].get("status", "closed") == "closed" and int(reply[1].get("failures", 0)) == 0
    )


#: What a step's reply must be for an all-or-nothing batch to go on, by name. The Redis backend
#: checks the same in Lua (backends/lua/all_or_nothing.lua), on the same numbers.
CONDITIONS: dict[str, Callable[[Any, Step], bool]] = {
    # Any reply: the step is an effect that always goes (counter_add: a charge).
    "any": lambda reply, step: True,
    # lease_acquire: a lease was granted.
    "granted": lambda reply, step: reply is not None,
    # window_admit: every counter had room.
    "admitted": lambda reply, step: bool(reply.allowed),
    # pause_get: neither paused (now >= paused_until) nor held.
    "not_paused": _not_paused,
    # state_get_now: the state is absent or its "status" is "closed".
    "closed": _closed,
    # state_get_now: absent, or closed with no failure counted: a success would write nothing.
    "unchanged_by_success": _unchanged_by_success,
    # gcra_reserve: the slot is at most wait_s away.
    "within_wait": lambda reply, step: reply[0] - reply[1] <= float(step.kwargs.get("wait_s", 0.0)),
    # gcra_reserve: the slot is now (or past): no wait for it.
    "due_now": lambda reply, step: reply[0] - reply[1] <= 0,
}


def steps_to_save(steps: Sequence[Step]) -> int:
    """How many of ``steps``, from the first, an all-or-nothing batch saves before running: up to
    the last one a condition can abandon (:meth:`Core.all_or_nothing`)."""
    return max((index + 1 for index, step in enumerate(steps) if step.condition != "any"), default=0)


class Core(ABC):
    """What every backend has: the fleet's clock, a check that it answers, and the
    all-or-nothing batch of its other primitives (see :class:`Backend` for what holds of all)."""

    @abstractmethod
    def now(self) -> float:
        """The backend's clock, in epoch seconds: the time every host of the fleet agrees on."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`BackendUnavailable` if the store cannot be reached."""

    def all_or_nothing(self, steps: Sequence[Step]) -> list[Any] | None:
        """Run ``steps`` as one atomic step: every primitive, in order, if each reply meets its
        condition; else none of them (the store as if nothing ran) and None.

        What lets several gates admit a call in one round trip, and end it in
        another. The replies are each primitive's own. A backend that cannot do
        it answers None, always: callers then run the primitives one by one, as
        without it.

        The steps after the last one whose condition is not ``any`` are effects
        that always go (a permit given back, a seat left): nothing can abandon
        the batch after them, so what they write is not saved first (a room's
        lanes may hold thousands of payloads). An error in one of them leaves
        the steps before it done, as an error half way through one script does.
        """
        return None


class Counters(Core):
    """Counters in time windows, and plain ones: the quota."""

    @abstractmethod
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
        """Atomically, in the epoch-aligned window of ``window_s`` seconds that holds the
        backend's now: if EVERY counter ``window_key(key, start, name)`` (0 when absent)
        is < its limit (a limit < 0 = unlimited), add the increments (a counter that gets
        created expires after ``ttl_s``) and answer allowed; else change nothing.
        Increments of 0 create nothing, so all-zero increments and limits of -1 read the
        current window.

        ``priors`` (one per counter, 0 = none) makes a counter of a cost known only after
        the call need more: what is left of its limit must cover its mean per admission,
        its value over the first counter's (the admissions), or its prior while the
        first counter is 0. See :func:`mean_cost`.
        """

    @abstractmethod
    def counter_add(self, key: str, amount: int, ttl_s: float) -> int:
        """Add ``amount`` to a counter and return the new value.

        A positive amount creates an absent counter (expiring after ``ttl_s``).  A
        negative amount (a refund) never creates a counter and never takes one below 0:
        a counter that vanished (the store restarted) stays absent and reads 0.
        """

    @abstractmethod
    def counters_get(self, keys: Sequence[str]) -> list[int]:
        """Return the counters' values, 0 for absent ones."""


class Leases(Core):
    """Leases that expire, with a cap and wake-ups: the semaphore's permits."""

    @abstractmethod
    def lease_acquire(self, key: str, holder: str, limit: int, lease_s: float) -> float | None:
        """Atomically drop leases that lapsed; effective limit = min(limit, cap) when a cap
        is set (see :meth:`lease_set_cap`); grant holder a lease of ``lease_s`` seconds if
        fewer than the effective limit are held.  Re-acquiring by the same holder renews it.
        Returns the backend time it was granted at (it lapses ``lease_s`` later), or None.
        """

    @abstractmethod
    def lease_release(self, key: str, holder: str) -> bool:
        """Drop holder's lease.  True if it held one; only then is one waiter woken
        (see :meth:`lease_wait`)."""

    @abstractmethod
    def lease_transfer(
        self, key: str, holder: str, to_holder: str, limit: int, lease_s: float
    ) -> float | None:
        """Atomically hand ``holder``'s lease to ``to_holder``: drop leases that lapsed, drop
        ``holder``'s, then grant ``to_holder`` a fresh lease of ``lease_s`` seconds exactly as
        :meth:`lease_acquire` would (so the count never changes and a lowered cap still holds).
        Returns the backend time it was granted at, or None; in that case, if ``holder`` held
        a lease, it is released as :meth:`lease_release` releases it (one waiter is woken).
        """

    @abstractmethod
    def lease_count(self, key: str) -> int:
        """Number of leases that have not lapsed by the backend's now."""

    @abstractmethod
    def lease_wait(self, key: str, timeout_s: float) -> bool:
        """Block (real time) until a lease on key is released or timeout_s passes; True
        when woken by a release.

        Wakes are not lost if a release happens just before the wait starts: each
        release leaves a token (at most :data:`WAKE_TOKENS_KEPT`, for
        :data:`WAKE_TOKEN_TTL_S`) that one waiter consumes.  A backend may return
        False before timeout_s when it cannot block that long; callers loop.
        """

    @abstractmethod
    def lease_set_cap(self, key: str, cap: int | None, ttl_s: float) -> None:
        """Set a fleet-wide cap on the limit of key (None removes it); it expires after ttl_s."""

    @abstractmethod
    def lease_get_cap(self, key: str) -> int | None:
        """Return the cap in force, or None."""


class States(Core):
    """A versioned value written by compare-and-set: the circuit breaker."""

    @abstractmethod
    def state_get(self, key: str) -> tuple[int, dict[str, Any] | None]:
        """Return (version, value); (0, None) when absent.  Value is JSON-serialisable."""

    @abstractmethod
    def state_cas(self, key: str, version: int, value: dict[str, Any]) -> bool:
        """Write value iff the current version == version; the new version is version + 1."""

    def state_get_now(self, key: str) -> tuple[int, dict[str, Any] | None, float]:
        """Return (version, value, now): :meth:`state_get` and :meth:`now` in one round trip.

        A policy that decides by the clock (a breaker's cooldown) reads both on
        every admission; backends with a server override this so the pair costs
        one round trip, not two.  ``now`` is read with the state, never before
        it, so a decision cannot use a time older than the state it reads.
        """
        version, value = self.state_get(key)
        return version, value, self.now()


class Parking(Core):
    """Deferred work held outside worker memory until it is due: the parking lot."""

    @abstractmethod
    def park(self, key: str, member: str, payload: bytes, delay_s: float, token: str) -> None:
        """Store member with payload and token, due ``delay_s`` seconds from the backend's
        now.  The same member again replaces payload, due time and token."""

    @abstractmethod
    def claim_due(self, key: str, limit: int, claim_s: float) -> tuple[list[ParkedClaim], list[str]]:
        """Atomically take up to ``limit`` members due by the backend's now and push their
        due time ``claim_s`` ahead (so a claimer that dies does not lose them: they come
        due again), earliest due first.  Two concurrent claimers never get the same member.

        Returns (claims, orphans): orphans are members found due whose payload is
        missing; they are removed and counted (see :meth:`parked_orphans`), never
        handed out empty and never dropped without a word.
        """

    @abstractmethod
    def unpark(self, key: str, member: str, token: str) -> bool:
        """Forget member and its payload, only if it is still parked under ``token`` (the
        parking that was claimed, not a newer one).  True if it was forgotten."""

    @abstractmethod
    def parked_count(self, key: str) -> int:
        """Number of parked members, due or not."""

    @abstractmethod
    def parked_orphans(self, key: str) -> int:
        """How many members :meth:`claim_due` found without a payload, ever (a counter)."""


class Pauses(Core):
    """A fleet-wide "paused until T" and an open-ended hold, one of each per key."""

    @abstractmethod
    def pause_extend(self, key: str, seconds: float, reason: str) -> tuple[bool, float]:
        """Atomically set paused_until = max(paused_until, now + ``seconds``) by the backend's
        clock, ``seconds`` > 0.  ``reason`` is stored with the end it set (a call that does not
        move the end changes nothing).  Returns (opened, paused_until): opened is True only for
        the call that found no pause in force (none, or one whose end is <= now), so of any
        number of concurrent callers exactly one opens a pause.  A pause that ended is kept
        :data:`PAUSE_KEPT_S` longer, for status pages.
        """

    @abstractmethod
    def pause_get(self, key: str) -> dict[str, Any] | None:
        """Read the pause and the hold of ``key`` at once, with the backend's now.

        Returns None when neither is recorded, else a dict: ``now`` (float), ``paused_until``,
        ``paused_since`` (float or None; the end may be past: the caller compares it with
        ``now``), ``pause_reason``, and ``held`` (bool), ``hold_reason``, ``fingerprint``
        (str or None), ``held_since`` (float or None).
        """

    @abstractmethod
    def hold_set(self, key: str, reason: str, fingerprint: str) -> bool:
        """Hold ``key`` (until :meth:`hold_clear`; a hold never expires), storing ``reason``
        and ``fingerprint`` (a hold already in force takes the new ones: they describe the
        settings last seen to fail).  True when it was not held before."""

    @abstractmethod
    def hold_clear(self, key: str, unless_fingerprint: str | None) -> bool:
        """Atomically drop the hold of ``key``: always when ``unless_fingerprint`` is None,
        else only when the stored fingerprint differs from it.  True when a hold was dropped."""


class Schedules(Core):
    """A GCRA schedule per key: the pacing (see enrichment_middleware.policy.pacing)."""

    @abstractmethod
    def gcra_reserve(
        self, key: str, interval_s: float, burst: int, *, wait_s: float = 0.0
    ) -> tuple[float, float]:
        """Atomically reserve the next slot of ``key``'s schedule; returns (slot_at, now).

        With ``tau = (burst - 1) * interval_s`` and ``base`` the later of the
        schedule's next reservation and its next start (now if both passed):
        ``slot_at = max(now, base - tau)``, and the next reservation moves to
        ``max(base, now) + interval_s``.  When ``slot_at - now <= wait_s`` the slot
        is also taken as a start: the next start moves to ``slot_at + interval_s``
        (GCRA: to ``max(next start, slot_at) + interval_s``).  Both times are
        rounded to the microsecond before they are compared, so the caller's
        ``slot_at - now <= wait_s`` agrees with the backend's.
        """

    @abstractmethod
    def gcra_claim(
        self, key: str, slot_at: float, interval_s: float, burst: int, *, wait_s: float = 0.0
    ) -> tuple[float, float]:
        """Atomically admit a job on the slot it reserved; returns (start_at, now).

        ``start = max(slot_at, next start - tau)``.  If ``start - now <= wait_s`` the
        job starts at ``max(start, now)`` (the next start moves one interval past
        it) and ``start`` is returned.  Else, if ``start == slot_at`` (only early),
        nothing changes and ``slot_at`` is returned.  Else (pushed further than
        ``wait_s`` by later starts) a new slot is reserved exactly as
        :meth:`gcra_reserve` does, and returned: the caller compares it with
        ``now`` and ``wait_s`` as for a reservation.
        """

    @abstractmethod
    def gcra_get(self, key: str) -> tuple[float, float]:
        """Return (base, now): the later of the schedule's next reservation and next start
        (0.0 when no schedule is kept), and the backend's now.  Changes nothing."""


@dataclass(frozen=True)
class HandedSeat:
    """A waiting member a room just gave a seat to: its caller must enqueue ``payload`` again.

    Parameters:
      member(str): The member (a message id).
      lane(str): The lane it waited in.
      token(str): Its seat's token: the copy that comes back with it takes the seat.
      payload(bytes): What it waited with (an encoded message).
    """

    member: str
    lane: str
    token: str
    payload: bytes


@dataclass(frozen=True)
class Seating:
    """The answer of :meth:`Rooms.room_enter`.

    Parameters:
      status(str): ``seated`` (go on; hold the seat under ``token``), ``waiting`` (the
        room keeps the member and its payload, and hands it a seat later) or
        ``present`` (the room holds this member already, waiting or handed a seat
        that another copy has: this copy is not needed).
      token(str): The seat's token when seated, else "".
      handed(list[HandedSeat]): Members handed the seats that came free meanwhile.
    """

    status: str
    token: str
    handed: list[HandedSeat]


@dataclass(frozen=True)
class RoomCounts:
    """Who is in a room: seats held (not lapsed), members waiting and calls made, by lane.

    Parameters:
      seated(int): Seats held, handed ones included.
      waiting(dict[str, int]): Members waiting, by lane (lanes with none left out).
      calls(dict[str, int]): Calls made in the current window, by lane (see :meth:`Rooms.room_leave`).
    """

    seated: int
    waiting: dict[str, int]
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def held(self) -> int:
        """The jobs the room holds: seated (handed ones included) or waiting."""
        return self.seated + sum(self.waiting.values())


class Rooms(Core):
    """A fleet-wide waiting room with a lane per key, served by weight: fair admission.

    A room has ``seats``; a member holds one (a lease) from admission until it
    leaves. A newcomer takes a free seat only when nobody waits; else it waits
    in its lane with its payload. Each freed seat goes to the head of the lane
    with the smallest *pass* (a tie: the heavier lane, then by name, byte by
    byte), and that lane's pass grows by ``1 / weight``
    (stride scheduling); a lane that had nobody waiting is due one stride
    after the room's virtual time (the pass last served), so an idle lane
    banks no credit. A seat handed to a waiting member lapses after ``handoff_s``
    unless that member arrives (with the seat's token): then it waits again,
    at the head of its lane, its lane's turn given back. A member that
    arrived and whose seat lapses is forgotten (its worker died, and the
    broker holds its message; or its leave was lost). A copy that holds a
    token not its member's current one is stale: it ends (``present``)
    while the room holds the member, or for ``left_s`` after the member
    left if its token is at most the one the member left with (tokens only
    grow). :meth:`room_enter` and :meth:`room_leave` first drop the seats
    that lapsed, and end by handing out the seats free, in the same atomic
    step.
    """

    @abstractmethod
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
        """Atomically admit ``member`` to a seat or to its lane.

        - It holds a seat under ``token`` (handed to it, or kept for it while it was
          deferred), or ``token`` is "" and it arrived at its seat before (the broker's
          own copy again): ``seated``, the seat renewed for ``seat_s``.
        - The room holds it otherwise (waiting; handed a seat not arrived at; seated
          under another token), or it left less than ``left_s`` ago with ``token`` or a
          later one: ``present``, nothing changes.
        - Else, nobody waiting and fewer than ``seats`` held: ``seated`` under a new
          token, for ``seat_s``. Else it waits at the end of ``lane`` (weight
          ``weight``) with ``payload``: ``waiting``.
        """

    @abstractmethod
    def room_seat(self, key: str, member: str, token: str, *, seats: int, seat_s: float) -> str | None:
        """Seat ``member`` if that needs none of the queue; its token, else None (ask
        :meth:`room_enter`). Few and small keys: the room's step in :meth:`all_or_nothing`.

        - It holds a live seat under ``token`` (not ""): renewed for ``seat_s`` (a member
          handed it arrives).
        - ``token`` is "", it holds no seat, nobody waits, fewer than ``seats`` live
          seats: seated under a new token. (A seat lapsed but not yet dropped is not counted, and its member not
          yet queued again: a newcomer may go before it, once.)
        - Otherwise None, and nothing changes.
        """

    @abstractmethod
    def room_keep(self, key: str, member: str, token: str, seat_s: float) -> bool:
        """Renew ``member``'s seat for ``seat_s`` if it holds it, live, under ``token`` (a deferred
        job keeps its place); True if it did."""

    @abstractmethod
    def room_withdraw(self, key: str, member: str) -> bool:
        """Take ``member`` out of its lane if it still waits there; True if it did (False: it was
        handed a seat meanwhile, or is not waiting)."""

    @abstractmethod
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
        """Give up ``member``'s seat (if held under ``token``; None: give up nothing) and hand
        the free seats to waiting members, by lane weight; returns those handed. ``called``:
        the lane of a member whose call was made, counted in the epoch-aligned window of
        ``window_s`` seconds that holds the backend's now (see :meth:`room_counts`). A stale
        copy of the member that comes within ``left_s`` ends (see :meth:`room_enter`): one
        holding an older token, or ``token`` itself unless ``early`` (the member left before its
        job finished: a copy holding its token is that delivery again, and runs)."""

    @abstractmethod
    def room_counts(self, key: str, *, window_s: int = 86_400) -> RoomCounts:
        """Seats held, members waiting by lane, and calls by lane in the current window of
        ``window_s`` (reads only; lapsed seats not counted)."""


class Stages(Core):
    """Named byte strings under a key that expire together: what one step of a job keeps for the
    next (an answer staged between its fetch and its store), readable in a batch with the gates'."""

    @abstractmethod
    def stage_put(
        self, key: str, fields: Mapping[str, bytes], ttl_s: float, remove: Sequence[str] = ()
    ) -> set[str]:
        """Atomically drop the fields ``remove``, set ``fields``, and expire the whole key ``ttl_s``
        seconds from now; the field names after."""

    @abstractmethod
    def stage_get(self, key: str, field: str) -> bytes | None:
        """One field's value; None when it (or the key) is absent."""

    @abstractmethod
    def stage_look(self, key: str, wanted: Sequence[str] = ()) -> tuple[set[str], dict[str, bytes]]:
        """Every field name of ``key`` (none when absent), and the values of those of ``wanted``
        present, read at one instant."""


class Backend(Counters, Leases, States, Parking, Pauses, Schedules, Rooms, Stages):
    """The atomic primitives every policy is built on.

    Keys are plain strings; a backend may prefix them with its namespace, and
    keeps each kind of primitive (counters, leases, state, parking) apart, so
    the same key used by two kinds never collides.  Times are the backend's
    own clock (:meth:`now`), the one clock of the whole fleet; arguments are
    durations in seconds.  Blocking waits (:meth:`lease_wait`) and the
    expiry of wake-ups are real (monotonic) time.  Every method raises
    :class:`BackendUnavailable` when the store cannot be reached or refuses
    writes for a while (a replica after a failover, a full memory).
    """


def check_lane(lane: str) -> str:
    """Return ``lane`` if a room can keep it (not empty, no NUL: lanes are sorted by name), else raise."""
    if not lane or "\0" in lane:
        raise ValueError(f"a room's lane must be a non-empty string without NUL characters, got {lane!r}")
    return lane


def check_counter_arguments(
    names: Sequence[str],
    limits: Sequence[int],
    increments: Sequence[int],
    priors: Sequence[int] | None = None,
) -> list[int]:
    """Raise ValueError unless window_admit got one limit, one increment (and one prior, if
    any) per counter; return the priors, zeros when none were given."""
    priors = [0] * len(names) if priors is None else list(priors)
    if not (len(names) == len(limits) == len(increments) == len(priors)):
        raise ValueError(
            f"window_admit needs one limit and one increment per counter (and one prior, if any); got "
            f"{len(names)} names, {len(limits)} limits, {len(increments)} increments and {len(priors)} priors"
        )
    return priors


def mean_cost(used: int, admissions: int, prior: int) -> float:
    """What one admission costs on average in a counter: ``used / admissions``, or ``prior``
    before any admission. A counter with a prior admits only while its limit minus
    ``used`` is at least this (the Redis script computes the same, in doubles).

    Examples:
      >>> mean_cost(9_000, 3, prior=2_000), mean_cost(0, 0, prior=2_000)
      (3000.0, 2000.0)
    """
    return used / admissions if admissions > 0 else float(prior)


def counter_refuses(value: int, limit: int, need: float) -> bool:
    """Whether a counter at ``value`` refuses an admission: at or over its limit, or (with a
    ``need`` above 0, a mean cost) with less than ``need`` left. A limit below 0 never refuses."""
    return limit >= 0 and (value >= limit or (need > 0 and limit - value < need))

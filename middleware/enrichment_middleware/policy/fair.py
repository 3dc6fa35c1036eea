"""Fair shares: a fleet-wide waiting room with a lane per key, whose seats go to the lanes by weight.

A room has as many *seats* as jobs may be past it at once (the permits of
the semaphore behind it, say). A job takes a free seat when nobody waits;
otherwise it waits in its lane (one per key: a source of jobs, a tenant),
kept in the backend with its payload, not in a worker thread or the broker's
queue. When a seat comes free, the room gives it to the head of the lane
with the smallest *pass* and advances that lane's pass by ``1 / weight``:
stride scheduling, so lanes with waiting jobs get seats in proportion to
their weights, whatever the order the jobs came in. A lane that had nobody
waiting is due one stride after the room's virtual time (the pass last
served), so an idle key banks no credit and a key with no backlog is not delayed by
another's. Everything that decides is one atomic backend step
(:class:`~enrichment_middleware.backends.base.Rooms`), so any number of
workers on any number of hosts share one room.

A seat is a lease: a job that dies holding one gives it back when the lease
lapses, and a job handed a seat that never shows up (its message lost
between the backend and the broker) waits again, at the head of its lane,
after ``handoff_s``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from enrichment_middleware.backends.base import HandedSeat, RoomCounts, Seating
from enrichment_middleware.policy.base import Policy

#: The lane of a job that names none.
DEFAULT_LANE = "default"

#: How long, at least, the room remembers that a job left, so that a stale copy of it (one the
#: broker gives late: a prefetch, a redelivery after its heartbeat timeout) ends rather than runs.
_LEFT_MIN_S = 600.0


@dataclass(frozen=True)
class FairLimits:
    """A room's seats, its lanes' weights and its leases.

    Examples:
      >>> limits = FairLimits(seats=1, weights={"maps": 4.0})
      >>> limits.weight("maps"), limits.weight("bulk")
      (4.0, 1.0)

    Parameters:
      seats(int): Jobs past the room at once, fleet-wide.
      weights(Mapping[str, float]): Weight by lane; a lane not named weighs ``default_weight``.
      default_weight(float): The weight of a lane not in ``weights``.
      seat_s(float): How long a seat is held at most without being renewed; it must
        outlast the longest call made under it (a killed holder's seat comes back after this).
      handoff_s(float): How long a seat handed to a waiting job is kept for it before the job
        arrives (the time its message takes through the broker); then it waits again.
      sweep_s(float): How often each worker process hands on the seats that lapsed.
      caps(Mapping[str, int]): Most calls a lane may make per window, by lane (a lane not
        named has no cap of its own): counted atomically when a job of it is seated, so no
        number of workers makes more.
      window_s(int): The window of the caps and of the calls counted by lane, aligned to the
        epoch: 86,400 is a UTC day.
    """

    seats: int = 1
    weights: Mapping[str, float] = field(default_factory=dict)
    default_weight: float = 1.0
    seat_s: float = 120.0
    handoff_s: float = 30.0
    sweep_s: float = 1.0
    caps: Mapping[str, int] = field(default_factory=dict)
    window_s: int = 86_400

    def __post_init__(self) -> None:
        if self.seats < 1:
            raise ValueError(f"FairLimits.seats must be at least 1, got {self.seats}")
        for lane, weight in {**self.weights, "(default)": self.default_weight}.items():
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(
                    f"FairLimits: the weight of {lane!r} must be a positive number, got {weight!r}"
                )
        for name in ("seat_s", "handoff_s", "sweep_s", "window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FairLimits.{name} must be positive, got {getattr(self, name)}")
        for lane, cap in self.caps.items():
            if not (isinstance(cap, int) and cap >= 0):
                raise ValueError(f"FairLimits: the cap of {lane!r} must be a whole number >= 0, got {cap!r}")

    def weight(self, lane: str) -> float:
        """The weight of ``lane``."""
        return float(self.weights.get(lane, self.default_weight))


@dataclass(frozen=True)
class Seat:
    """A seat held by a job; give it to :meth:`FairPolicy.keep` or :meth:`FairPolicy.leave`.

    Parameters:
      name(str): The room it belongs to.
      member(str): Who holds it (a message id).
      token(str): The token the room gave it.
    """

    name: str
    member: str
    token: str


@dataclass(frozen=True)
class CapDecision:
    """The answer of :meth:`FairPolicy.count_capped`.

    Parameters:
      allowed(bool): The lane had calls left this window; one is counted.
      window_start(float): The window counted in (backend clock).
      retry_at(float): When the next window starts: when a refused lane has calls again.
      now(float): The backend's time of the decision.
    """

    allowed: bool
    window_start: float
    retry_at: float
    now: float


class FairPolicy(Policy[FairLimits]):
    """A fleet-wide waiting room whose seats go to its lanes by weight (see the module).

    Examples:
      >>> from enrichment_middleware.backends.memory import MemoryBackend
      >>> room = FairPolicy("api", FairLimits(seats=1, weights={"maps": 2.0}), MemoryBackend())
      >>> first = room.enter("bulk", "job-1", b"payload 1")
      >>> first.status
      'seated'
      >>> [room.enter(lane, member, b"...").status for lane, member in
      ...  [("bulk", "job-2"), ("bulk", "job-3"), ("maps", "job-4"), ("maps", "job-5")]]
      ['waiting', 'waiting', 'waiting', 'waiting']
      >>> [seat.member for seat in room.leave(room.seat_of(first, "job-1"))]  # the seat goes by weight
      ['job-4']

    Parameters:
      name(str): Names the room in the backend; policies of the same name share it.
      limits(FairLimits): Seats, weights and leases.
      backend(Backend): Where the room lives, and whose clock its leases follow.
      rng: Unused (the room decides by pass, not by chance); the common policy signature.
    """

    kind = "fair"

    def seat_of(self, seating: Seating, member: str) -> Seat:
        """The seat ``seating`` (a ``seated`` answer) gave ``member``."""
        if seating.status != "seated":
            raise ValueError(f"{member!r} holds no seat: the room answered {seating.status!r}")
        return Seat(self._name, member, seating.token)

    def enter(self, lane: str, member: str, payload: bytes, *, token: str = "") -> Seating:
        """Seat ``member`` (a seat handed to ``token`` is taken), or keep it and ``payload``
        waiting in ``lane``; see :meth:`~enrichment_middleware.backends.base.Rooms.room_enter`
        (which refuses a lane that is no name)."""
        limits = self._limits
        return self._backend.room_enter(
            self._key,
            lane,
            member,
            payload,
            token=token,
            weight=limits.weight(lane),
            seats=limits.seats,
            seat_s=limits.seat_s,
            handoff_s=limits.handoff_s,
        )

    def try_seat(self, member: str, *, token: str = "") -> Seat | None:
        """A seat for ``member`` if it needs none of the queue (it holds one under ``token``, or
        nobody waits and one is free), else None: then :meth:`enter` decides. One small step."""
        mine = self._backend.room_seat(
            self._key, member, token, seats=self._limits.seats, seat_s=self._limits.seat_s
        )
        return None if mine is None else Seat(self._name, member, mine)

    def keep(self, seat: Seat, for_s: float) -> bool:
        """Keep ``seat`` for ``for_s`` more seconds beyond its lease (a job deferred keeps its
        place); False when it lapsed meanwhile."""
        self._check(seat)
        return self._backend.room_keep(
            self._key, seat.member, seat.token, max(0.0, for_s) + self._limits.seat_s
        )

    def leave(self, seat: Seat | None, *, called: str = "", early: bool = False) -> list[HandedSeat]:
        """Give ``seat`` up (None: nothing) and hand the free seats on: enqueue what is returned.
        ``called``: the lane of the seat's job, if its call was made (counted by lane); ``early``:
        its job goes on after (its call is over, not its job), so a copy of it is not stale."""
        if seat is not None:
            self._check(seat)
        return self._backend.room_leave(
            self._key,
            None if seat is None else seat.member,
            "" if seat is None else seat.token,
            seats=self._limits.seats,
            handoff_s=self._limits.handoff_s,
            called=called,
            window_s=self._limits.window_s,
            left_s=max(_LEFT_MIN_S, 10 * self._limits.handoff_s),
            early=early,
        )

    def counts(self) -> RoomCounts:
        """Seats held, jobs waiting by lane, and calls by lane this window (reads only)."""
        return self._backend.room_counts(self._key, window_s=self._limits.window_s)

    def count_capped(self, lane: str) -> CapDecision | None:
        """Count a call of ``lane`` against its cap (None: it has none), atomically across the fleet."""
        cap = self._limits.caps.get(lane)
        if cap is None:
            return None
        window_s = self._limits.window_s
        counted = self._backend.window_admit(
            f"{self._key}:cap:{lane}", ["calls"], [cap], [1], window_s=window_s, ttl_s=window_s + 3600
        )
        return CapDecision(
            counted.allowed, counted.window_start, counted.window_start + window_s, counted.now
        )

    def _check(self, seat: Seat) -> None:
        if seat.name != self._name:
            raise ValueError(
                f"a seat of room {seat.name!r} given to room {self._name!r}: give it to the room it came from"
            )

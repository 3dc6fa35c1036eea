"""Fair admission: jobs wait in a fleet-wide room, one lane per key, and go on by the lanes' weights.

Dramatiq's queues are first in, first out, and workers prefetch: a thousand
jobs of one source queued before another's twenty are served first. This
gate owns the waiting instead (:mod:`enrichment_middleware.policy.fair`): a
job finds a free seat and goes on, or its message is kept in the room, in
the lane its message option ``fair_key`` names, and this delivery ends (the
room holds it, so nothing is put back). When a seat comes free (a job leaves
the room: its actor returned, or it gave its permit back early), the room
hands it to the next lane by weight, and that job's message is sent again,
holding the seat: it goes straight through the room.

A job a later gate defers (its pacing slot is later, a pause) keeps its seat
for the deferral: only the jobs seated reserve pacing slots or wait for
permits, so no job reserves a slot hours ahead of the others. A job that
fails and is retried gives its seat up and comes back as a newcomer.

Protocol, and why nothing is lost: every decision is one atomic backend step.
A waiting job's payload stays in the room until a copy holding its seat
arrives (failpoint ``fair.handed`` is between the step and the broker). If
that copy never comes (the process died before sending it), the seat lapses
after ``handoff_s`` and the job waits again at the head of its lane; a late
copy then finds the room holding the job (``present``) and ends, since the
room will send it again. Seats of jobs that died lapse after ``seat_s``;
each worker process sweeps the lapsed seats every ``sweep_s``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import DecodeError

from .admission import AdmissionMiddleware, CallEnd, Ending, Part
from .attempt import deferral_of, started_attempt
from .backends.base import Backend, BackendUnavailable, HandedSeat
from .background import BackgroundLoop
from .deferral import Defer, Waiting
from .failpoints import failpoint
from .policy.clock import Clock
from .policy.fair import DEFAULT_LANE, FairLimits, FairPolicy, Seat

#: Message option: the lane (a source, a tenant) the job waits in; absent: ``default``.
FAIR_KEY = "fair_key"
#: Message option: the seat a copy holds, ``{"name": ROOM, "token": TOKEN}``.
FAIR_SEAT = "fair_seat"
#: The reason of a delivery that ended with its job kept in the room (a :class:`~.deferral.Waiting`).
WAITING_TURN = "waiting_turn"
#: Deferral reason when the job's lane made its cap of calls this window.
SOURCE_CAPPED = "source_capped"
#: Message option: the job's call is counted against its lane's cap until then (host clock, epoch s).
FAIR_COUNTED = "fair_counted"
#: A count is taken again this long before its window ends by the host's clock, which may be off:
#: twice counted near the end of a window (too few calls), never not counted (too many).
_CLOCK_MARGIN_S = 300.0


class FairAdmission(AdmissionMiddleware[FairPolicy, Seat]):
    """Serve the jobs of several keys fairly, fleet-wide, by weight.

    Examples:
      >>> broker.add_middleware(FairAdmission(backend, {"api": FairLimits(seats=2, weights={"maps": 4})}))
      >>> @dramatiq.actor(fair="api")
      ... def fetch(): ...
      >>> fetch.send_with_options(options={"fair_key": "maps"})

    Parameters:
      backend: where the rooms live (Redis for a fleet).
      limits: room limits by policy name; actors opt in with ``fair=NAME``.
      clock: this host's clock, for the ``message_timestamp`` of the messages sent again.
      rng: injectable randomness.
      unavailable_retry_s: delay before a message comes back when the backend cannot be reached.
    """

    option = "fair"
    admission_rank = 1  # enrichment_middleware.order.RANKS says why
    policy_class = FairPolicy

    def __init__(
        self,
        backend: Backend,
        limits: Mapping[str, FairLimits],
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        unavailable_retry_s: float = 5.0,
    ) -> None:
        super().__init__(backend, limits, clock=clock, rng=rng, unavailable_retry_s=unavailable_retry_s)
        self._sweep_s = min((limit.sweep_s for limit in limits.values()), default=1.0)
        self._sweeper: BackgroundLoop | None = None
        self._rng = rng

    @staticmethod
    def lane_of(message: MessageProxy | dramatiq.Message[Any]) -> str:
        """The lane ``message`` waits in: its ``fair_key`` option, else ``default``."""
        lane = message.options.get(FAIR_KEY)
        return lane if isinstance(lane, str) and lane and "\0" not in lane else DEFAULT_LANE

    @staticmethod
    def _token(message: MessageProxy, policy: FairPolicy) -> str:
        """The token of the seat this copy holds in ``policy``'s room ("" for none)."""
        kept = message.options.get(FAIR_SEAT)
        token = kept.get("token", "") if isinstance(kept, dict) and kept.get("name") == policy.name else ""
        return str(token)

    def _elsewhere(self, message: MessageProxy, policy: FairPolicy) -> FairPolicy | None:
        """The other room this copy holds a seat of (a router sent it to another policy since)."""
        kept = message.options.get(FAIR_SEAT)
        name = kept.get("name") if isinstance(kept, dict) else None
        return self.policies.get(name) if isinstance(name, str) and name != policy.name else None

    def part(self, broker: Broker, message: MessageProxy, policy: FairPolicy) -> Part | None:
        if self.lane_of(message) in policy.limits.caps and not self._counted(message, policy):
            # Its cap is checked once it is seated and before the later gates take anything (a
            # pacing slot cannot be given back): it decides alone.
            return None
        if self._elsewhere(message, policy) is not None:
            return None  # it leaves the other room first: it decides alone
        member, token = message.message_id, self._token(message, policy)

        def try_seat(p: FairPolicy) -> Seat | None:
            return p.try_seat(member, token=token)

        return self.part_of(
            policy,
            try_seat,
            condition="granted",
            allowed=lambda seat: seat is not None,
            take=lambda seat: self._take(broker, message, seat),
            give_back=lambda seat: self._give_back(broker, message, policy, seat),
        )

    def _give_back(self, broker: Broker, message: MessageProxy, policy: FairPolicy, seat: Seat) -> None:
        """A one-step admission abandoned before this gate took its seat: the seat goes, and the
        copy put back comes as a newcomer (with the old token it would find itself stale)."""
        message.options.pop(FAIR_SEAT, None)
        self._send(broker, policy, policy.leave(seat))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        policy = self.policy_for(broker, message)
        if policy is None:
            return
        if self.admitted_together(broker, message):
            failpoint("fair.seated")
            self._within_cap(broker, message, policy)
            return
        other = self._elsewhere(message, policy)
        if other is not None:
            # Routed to another endpoint since it was seated or handed a seat: it leaves that room
            # (which would otherwise hand it on again, or hold the seat until it lapses).
            seat = Seat(other.name, message.message_id, str(message.options[FAIR_SEAT].get("token", "")))
            with self.failing_closed():
                handed = other.leave(seat)
            message.options.pop(FAIR_SEAT, None)  # once left: a copy put back before would leave again
            self._send(broker, other, handed)
        plain: dramatiq.Message[Any] = message._message
        # Kept without a seat: it gets one when its turn comes.
        payload = plain._replace(options={k: v for k, v in plain.options.items() if k != FAIR_SEAT}).encode()
        with self.failing_closed():
            seating = policy.enter(
                self.lane_of(message), message.message_id, payload, token=self._token(message, policy)
            )
        self._send(broker, policy, seating.handed)
        if seating.status != "seated":
            # "waiting": kept in its lane; "present": the room holds this job already, this copy ends.
            failpoint("fair.waiting")
            raise Waiting(WAITING_TURN)
        self._take(broker, message, policy.seat_of(seating, message.message_id))
        failpoint("fair.seated")
        self._within_cap(broker, message, policy)

    def _within_cap(self, broker: Broker, message: MessageProxy, policy: FairPolicy) -> None:
        """Count the seated job's call against its lane's cap, once per window; over it, the seat
        goes to the next job and this one waits for the next window."""
        lane = self.lane_of(message)
        if lane not in policy.limits.caps or self._counted(message, policy):
            return  # no cap, or a deferred job back for the call it was counted for
        try:
            with self.failing_closed():
                decision = policy.count_capped(lane)
        except Defer:
            self._leave(broker, message)
            raise
        if decision is None:
            return
        if not decision.allowed:
            self._leave(broker, message)
            raise self.denial(decision.retry_at, SOURCE_CAPPED)
        # By the host's clock (what the check above reads): the window's end, as far ahead as the backend says.
        until = self.clock.now() + (decision.retry_at - decision.now)
        message.options[FAIR_COUNTED] = {"name": policy.name, "until": until}

    def _take(self, broker: Broker, message: MessageProxy, seat: Seat) -> None:
        message.options[FAIR_SEAT] = {"name": seat.name, "token": seat.token}
        self.hold(broker, message, seat)

    def ending(self, broker: Broker, message: MessageProxy, end: CallEnd) -> Ending | None:
        if end.keeping:
            return None
        seat = self.release_held(message)
        if seat is None:
            return None
        policy = self.policies[seat.name]
        exception = end.exception
        if end.finished and isinstance(exception, Defer) and not exception.kept_elsewhere and not end.skipped:
            # Deferred, it keeps its place: the copy put back holds the seat (its options say which).
            # Alone, the gates after it have ended first: a pause recorded there says how long.
            deferred = exception

            def keep_alone() -> None:
                with self.logging_unavailable(f"keep a seat of room {seat.name!r} for a deferred job"):
                    policy.keep(seat, deferral_of(message, deferred))

            step = policy.effect_of(lambda p: p.keep(seat, deferral_of(message, deferred)))
            return Ending((step,), keep_alone)
        # Returned, failed or given back early: its call was made (a failure after the call too),
        # unless it said not (or was skipped).
        lane = self._left(message, called=not end.skipped)
        early = not end.finished

        def leave(p: FairPolicy) -> list[HandedSeat]:
            return p.leave(seat, called=lane, early=early)

        def leave_alone() -> None:
            with self.logging_unavailable(f"leave room {seat.name!r} (the seat lapses by itself)"):
                self._send(broker, policy, leave(policy))

        step = policy.effect_of(leave)
        return Ending(
            (step,),
            leave_alone,
            lambda replies: self._send(broker, policy, policy.decided(leave, step, replies[0])),
        )

    def _left(self, message: MessageProxy, *, called: bool) -> str:
        """``message``'s job leaves its seat: the lane its call is counted for ("" when it made
        none: not ``called``, or the actor reported so)."""
        # A retry comes back as a newcomer; a finished job's options no longer matter.
        message.options.pop(FAIR_SEAT, None)
        attempt = started_attempt(message)
        lane = self.lane_of(message) if called and not (attempt is not None and attempt.no_call) else ""
        if lane:
            message.options.pop(FAIR_COUNTED, None)  # its call was made: a retry's call counts again
        return lane

    def _counted(self, message: MessageProxy, policy: FairPolicy) -> bool:
        """Whether ``message``'s call is counted against its lane's cap already, this window."""
        counted = message.options.get(FAIR_COUNTED)
        return (
            isinstance(counted, dict)
            and counted.get("name") == policy.name
            and self.clock.now() < float(counted.get("until", 0)) - _CLOCK_MARGIN_S
        )

    def _leave(self, broker: Broker, message: MessageProxy) -> None:
        """Give the seat up (no call made) and send on the jobs handed the seats free."""
        seat = self.release_held(message)
        if seat is None:
            return
        policy = self.policies[seat.name]
        lane = self._left(message, called=False)
        with self.logging_unavailable(f"leave room {seat.name!r} (the seat lapses by itself)"):
            self._send(broker, policy, policy.leave(seat, called=lane))

    def _send(self, broker: Broker, policy: FairPolicy, handed: list[HandedSeat]) -> None:
        """Send again the messages of the jobs just handed a seat, each holding its seat.

        A message not sent (the broker failing) stays in the room: its seat lapses after
        ``handoff_s`` and it is handed a seat again.
        """
        for seat in handed:
            try:
                failpoint("fair.handed")
                plain = dramatiq.Message.decode(seat.payload)
                broker.enqueue(
                    plain.copy(
                        options={FAIR_SEAT: {"name": policy.name, "token": seat.token}},
                        message_timestamp=int(self.clock.now() * 1000),
                    )
                )
            except DecodeError as exc:
                # It can never run: it gives its seat up rather than come back for it every handoff_s.
                self.logger.error(
                    "Job %s waiting in room %r cannot be decoded (%s): removed from the room, %d bytes lost "
                    "(the store lost or garbled part of its data: check its persistence).",
                    seat.member,
                    policy.name,
                    exc,
                    len(seat.payload),
                )
                # Never raises: this runs in before_process_message too, where an error would let the actor run.
                with self.logging_unavailable(f"remove job {seat.member} from room {policy.name!r}"):
                    self._send(broker, policy, policy.leave(Seat(policy.name, seat.member, seat.token)))
            except Exception as exc:
                self.logger.warning(
                    "Could not send job %s of room %r on (%s: %s); it is handed a seat again within %gs.",
                    seat.member,
                    policy.name,
                    type(exc).__name__,
                    exc,
                    policy.limits.handoff_s,
                )

    def sweep(self, broker: Broker) -> int:
        """Hand the seats that lapsed to waiting jobs, in every room; returns how many were handed."""
        handed = 0
        for policy in self.policies.values():
            seats = policy.leave(None)
            self._send(broker, policy, seats)
            handed += len(seats)
        return handed

    def after_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        if self.policies and self._sweeper is None:
            self._sweeper = BackgroundLoop(
                "fair-sweeper", lambda: self._sweep_once(broker), every_s=self._sweep_s, rng=self._rng
            )
            self._sweeper.start()

    def before_worker_shutdown(self, broker: Broker, worker: dramatiq.Worker) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    def _sweep_once(self, broker: Broker) -> None:
        try:
            self.sweep(broker)
        except BackendUnavailable as exc:
            self.logger.debug("Sweeping the fair rooms waits for the backend: %s", exc)
        except Exception:
            self.logger.exception("Sweeping the fair rooms failed; trying again shortly.")

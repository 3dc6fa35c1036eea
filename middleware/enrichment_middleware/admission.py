"""What the gates share: an actor option naming a policy, per-delivery
bookkeeping of what was acquired, failing closed when the shared state cannot
be reached, and admitting a delivery through every gate in one step.

One step: when a delivery's gates share a backend and none of them has to
wait, the first of them (by rank) asks each for its :class:`Part` (the one
backend step its policy takes, with the condition that admits) and runs them
all as one all-or-nothing batch (``Backend.all_or_nothing``: one script on
Redis, one round trip). If every condition holds, every gate's decision is
made from its reply by its own pure policy code and taken at once, and the
later gates' hooks find their part done; if any fails, nothing happened, and
each gate decides alone, as it always did. After the batch, anything that
goes wrong (a decision that fails, an interrupt) defers the job and gives
back what no gate took. The batch is the same steps on
the same keys, back to back with nothing in between: one order the gates
could have run in anyway.

The end of a call: what the gates hold for it ends in one step too. What
each gate takes it keeps in the delivery's attempt
(:mod:`enrichment_middleware.attempt`); when the actor gives its holds back
early (:func:`release_early`) or returns (the first gate's after-hook),
each gate gives its :class:`Ending` (the usage charged, the request given
back, the outcome recorded, the permit given back, the seat left), last
gate first as Dramatiq runs after-hooks (an actor's pause before all), and
they run as one batch: one round trip. A gate that cannot take part (a
permit handed to a thread of this process, a pause to record) ends alone,
in that same order, between one batch of the gates before it and one of
the gates after it; a batch whose condition fails (an outcome that changes
the circuit) ends its gates alone. Either way the order is one they could
have run in, each alone.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import MiddlewareError

from .attempt import Attempt, attempt_of, current_attempt, end_attempt, started_attempt
from .backends.base import Backend, BackendUnavailable, Step
from .deferral import AdmissionDenied
from .failpoints import failpoint
from .order import check_order
from .policy.base import Policy
from .policy.clock import Clock, SystemClock

PolicyT = TypeVar("PolicyT", bound=Policy[Any])
HeldT = TypeVar("HeldT")

#: Reason given when the shared state is unreachable: calls stop rather than
#: run unaccounted, and the job comes back after ``unavailable_retry_s``.
STATE_UNAVAILABLE = "state_unavailable"


@dataclass(frozen=True)
class CallEnd:
    """How a call ended, as far as is known when the gates' holds end.

    Parameters:
      finished: the actor returned or raised (the after-hooks run); False: it gave its holds back
        early (:func:`release_early`) and still runs.
      exception: what the actor raised (or a before-hook: a deferral), None when it returned.
      succeeded: what the actor said of its call when it gave its holds back early; None: nothing.
      skipped: a middleware skipped the message (its actor never ran).
      keeping: only the usage reported so far is charged; every hold stays (:func:`charge_now`).
    """

    finished: bool
    exception: BaseException | None = None
    succeeded: bool | None = None
    skipped: bool = False
    keeping: bool = False


@dataclass(frozen=True)
class Ending:
    """One gate's share of the end of a call, taken in one step with the others'.

    Parameters:
      steps: the backend steps it takes (effects, or a check: see :meth:`Backend.all_or_nothing`);
        none: it cannot take part, and ends alone between the batches of the others.
      done: what follows from the steps' replies once the batch ran (say, sending on the jobs a
        seat was handed to).
      alone: the same, step by step, by this gate alone (the batch could not run).
      unsure: what it does alone when the batch may have run or not (its reply was lost): only
        what is safe twice, or errs on the side of counting more (None: ``alone``).
      first: it ends before the others, alone or not (a pause to record before any permit or
        seat lets another call start).
    """

    steps: tuple[Step, ...]
    alone: Callable[[], None]
    done: Callable[[list[Any]], None] = lambda replies: None
    unsure: Callable[[], None] | None = None
    first: bool = False


def release_early(*, succeeded: bool | None = None) -> None:
    """The limited call of the message this thread runs is over: give back now what it holds for it
    (its permit, its seat in a fair room), not when its actor returns.

    For an actor whose call is over but that has more to do (hand its result
    on, say): the next call can start meanwhile. The call's usage reported so
    far (:func:`enrichment_middleware.usage.charge`) is charged with it, so
    report it first. ``succeeded`` says how the call went, for the circuit
    breaker (recorded now, and the actor's later exception says nothing);
    None: the breaker waits for the actor's end. All of it in one round trip
    when the gates share a backend (see the module's docstring). Does nothing
    for what was given back already.
    """
    _end(current_attempt(), CallEnd(finished=False, succeeded=succeeded))


def charge_now() -> None:
    """Charge the usage the message this thread runs reported so far (one round trip), keeping
    every hold: for an actor whose call failed and that has more to do before it returns (a
    split, a status read), so that what it used is counted before that, not when it returns."""
    _end(current_attempt(), CallEnd(finished=False, keeping=True))


def _end(attempt: Attempt, end: CallEnd) -> None:
    """End what the gates hold for ``attempt``'s call, last gate first (a pause to record before all):
    in one batch, or in one batch on each side of a gate that must end alone. Never raises: in the
    actor (:func:`release_early`), an error would mean a retry, and a second call; what could not
    end is left to its lease."""
    if end.finished:
        end_attempt(attempt)
    broker, message = attempt.broker, attempt.message
    if broker is None or message is None:
        return  # reported outside a delivery: no gate holds anything
    gates = sorted((gate for gate, _ in attempt.held.values()), key=lambda gate: -gate.admission_rank)
    endings: list[tuple[AdmissionMiddleware[Any, Any], Ending]] = []
    for gate in gates:
        try:
            ending = gate.ending(broker, message, end)
        except Exception:
            gate.logger.exception(
                "Could not end what %s held for a call; it is left to its lease.", type(gate).__name__
            )
            continue
        if ending is not None:
            endings.append((gate, ending))
    endings.sort(key=lambda entry: not entry[1].first)  # stable: the rest stay last gate first
    # In that order: each run of endings that can go together (steps, one backend) in one batch, an
    # ending that cannot (a permit handed to a thread of this process) alone between them.
    run: list[tuple[AdmissionMiddleware[Any, Any], Ending]] = []
    for gate, ending in endings:
        if run and not (ending.steps and gate.backend is run[0][0].backend):
            _end_together(run)
            run = []
        if ending.steps:
            run.append((gate, ending))
        else:
            _each_alone([(gate, ending)], lambda ending: ending.alone)
    _end_together(run)


def _end_together(endings: list[tuple[AdmissionMiddleware[Any, Any], Ending]]) -> None:
    """Take ``endings`` (each with steps, on one backend) in one batch; else each alone."""
    if not endings:
        return
    leader = endings[0][0]
    try:
        replies = leader.backend.all_or_nothing([step for _, ending in endings for step in ending.steps])
    except Exception as exc:
        # Sent, maybe run, its reply lost (a timeout, a dropped connection): each gate does alone only
        # what is safe twice, or counts more rather than less.
        leader.logger.warning("Could not end a call in one step (%s); each gate ends alone.", exc)
        _each_alone(endings, lambda ending: ending.unsure or ending.alone)
        return
    if replies is None:
        _each_alone(endings, lambda ending: ending.alone)
        return
    failpoint("admission.ended")
    start = 0
    for gate, ending in endings:
        try:
            ending.done(replies[start : start + len(ending.steps)])
        except Exception:
            gate.logger.exception("What follows the end of a call failed; it is left to its lease.")
        start += len(ending.steps)


def _each_alone(
    endings: list[tuple[AdmissionMiddleware[Any, Any], Ending]], which: Callable[[Ending], Callable[[], None]]
) -> None:
    for gate, ending in endings:
        try:
            which(ending)()
        except Exception:
            gate.logger.exception(
                "Could not end what %s held for a call; it is left to its lease.", type(gate).__name__
            )


@dataclass(frozen=True)
class Part:
    """One gate's share of a delivery's admission in one step.

    Parameters:
      step: the backend step its policy takes, with the condition that admits; None when it
        decides without the backend (then it decides at its own hook, as alone).
      decide: the policy's decision from that step's reply (pure: it takes nothing).
      allowed: whether a decision admits.
      take: holds what an admitting decision granted, for this delivery.
      give_back: undoes the step's effect when the batch is abandoned after it ran.
    """

    step: Step | None
    decide: Callable[[Any], Any] = lambda reply: None
    allowed: Callable[[Any], bool] = lambda decision: True
    take: Callable[[Any], None] = lambda decision: None
    give_back: Callable[[Any], None] = lambda decision: None


class UnknownPolicy(MiddlewareError, ValueError):
    """An actor opted into a policy the middleware was not given."""


class AdmissionMiddleware(dramatiq.Middleware, Generic[PolicyT, HeldT]):
    """Base of the quota, semaphore and circuit-breaker middlewares.

    Parameters:
      backend: where the policies' state lives (Redis for a fleet); its clock
        is the one leases, windows and cooldowns are reckoned by, the same for
        every host (tests give a ``MemoryBackend`` a ``ManualClock``).
      limits: the limits of each policy, by name; actors opt in with
        ``OPTION=NAME`` (the subclass's :attr:`option`).
      clock: this host's clock, for what is not shared state (timestamps of
        this process); the policies never read it.
      rng: injectable randomness (tests).
      unavailable_retry_s: delay before a message comes back when the
        backend cannot be reached.
    """

    option: str = ""
    #: This gate's place in the one ordered admission (:data:`.order.RANKS`).
    admission_rank: int
    policy_class: type[PolicyT]

    def __init__(
        self,
        backend: Backend,
        limits: Mapping[str, Any],
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        unavailable_retry_s: float = 5.0,
    ) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.clock = clock or SystemClock()
        self.backend = backend
        self.policies = {
            name: self.policy_class(name, limit, backend, rng=rng) for name, limit in limits.items()
        }
        self.unavailable_retry_s = unavailable_retry_s
        self._host = f"{socket.gethostname()}:{os.getpid()}"

    def part(self, broker: Broker, message: MessageProxy, policy: PolicyT) -> Part | None:
        """This gate's share of an admission in one step, or None when it cannot take part now
        (then every gate of the delivery decides alone)."""
        return None

    def part_of(
        self,
        policy: PolicyT,
        decision: Callable[[PolicyT], Any],
        *,
        condition: str,
        allowed: Callable[[Any], bool],
        take: Callable[[Any], None] = lambda decision: None,
        give_back: Callable[[Any], None] = lambda decision: None,
    ) -> Part:
        """The :class:`Part` of ``decision(policy)``: the one step it takes, with ``condition``, and
        its decision from that step's reply made by the policy's own code."""
        step = policy.step_of(decision, condition=condition)
        if step is None:
            return Part(None)
        return Part(
            step,
            decide=lambda reply: policy.decided(decision, step, reply),
            allowed=allowed,
            take=take,
            give_back=give_back,
        )

    def admitted_together(self, broker: Broker, message: MessageProxy) -> bool:
        """Whether this gate's admission of ``message`` is done, in one step with the others'.

        The first gate of the delivery tries the step (see the module's
        docstring); the later ones find their part done. False: decide alone.
        """
        attempt = attempt_of(message, broker)
        together = attempt.together
        if together is not None:
            if id(self) in together:
                together.discard(id(self))
                return True
            return False
        gates = [
            (gate, policy)
            for gate in broker.middleware
            if isinstance(gate, AdmissionMiddleware)
            and (policy := gate.policy_for(broker, message)) is not None
        ]
        # Only the first gate that takes a step (below) runs the batch; one that decides
        # without the backend (pacing off, say) leaves it to the next.
        if len(gates) < 2 or any(g.backend is not self.backend for g, _ in gates):
            return False
        with self.failing_closed():
            parts = [(gate, gate.part(broker, message, policy)) for gate, policy in gates]
            if any(p is None for _, p in parts):
                attempt.together = set()  # one of them must wait: each decides alone
                return False
            stepping = [(gate, p) for gate, p in parts if p is not None and p.step is not None]
            if not stepping or stepping[0][0] is not self:
                return False
            ready = [p for _, p in stepping]
            replies = self.backend.all_or_nothing([p.step for p in ready if p.step is not None])
        if replies is None:
            attempt.together = set()
            return False
        attempt.together = {id(gate) for gate, _ in stepping[1:]}
        decisions: list[Any] = [None] * len(ready)
        taken = 0
        try:
            with self.failing_closed():
                for index, (p, reply) in enumerate(zip(ready, replies, strict=True)):
                    decisions[index] = p.decide(reply)
                if not all(p.allowed(d) for p, d in zip(ready, decisions, strict=True)):
                    raise RuntimeError("the backend's conditions admitted what a policy refuses")
                failpoint("admission.together")
                for p, decision in zip(ready, decisions, strict=True):
                    p.take(decision)
                    taken += 1
        except BaseException:
            # The job is deferred (or the worker interrupted): what was taken, each gate's
            # after-hook gives back (Dramatiq runs them all); what a policy decided but no gate
            # took, here. A step whose decision failed cannot be: its request stays counted and
            # its permit lapses with its lease, too much rather than too little.
            for p, decision in list(zip(ready, decisions, strict=True))[taken:]:
                if decision is not None and p.allowed(decision):
                    with self.logging_unavailable("give back an admission in one step"):
                        p.give_back(decision)
            raise
        return True

    def denial(self, retry_at: float | None, reason: str) -> AdmissionDenied:
        """The deferral of a message that may come back at ``retry_at`` (None: now).

        ``retry_at`` is a time by the backend's clock, so the wait is measured
        against the backend's now, not this host's clock, which may be off.
        """
        if retry_at is None:
            return AdmissionDenied(0.0, reason)
        try:
            now = self.backend.now()
        except BackendUnavailable as exc:
            self.logger.warning("%s; deferring the message by %.1fs.", exc, self.unavailable_retry_s)
            return AdmissionDenied(self.unavailable_retry_s, reason)
        return AdmissionDenied(retry_at - now, reason)

    def new_holder(self) -> str:
        """A name for one admission, unique across the fleet (host, process, thread, nonce)."""
        return f"{self._host}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"

    @property
    def actor_options(self) -> set[str]:
        return {self.option}

    def before_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        # Every gate checks, so a broker assembled by hand in another order does not start.
        check_order(broker.middleware)

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        name = actor.options.get(self.option)
        if name is not None and name not in self.policies:
            known = ", ".join(sorted(self.policies)) or "none"
            # A MiddlewareError, so that Dramatiq lets it stop the declaration.
            raise UnknownPolicy(
                f"Actor {actor.actor_name!r} asks for {self.option}={name!r}, but {type(self).__name__} "
                f"has no such policy (known: {known}). Add it to the middleware's policies."
            )

    def policy_for(self, broker: Broker, message: MessageProxy) -> PolicyT | None:
        """The policy of this message: its own option of the same name, else its actor's; None: neither.

        A message option lets a router pick the policy per attempt (one per
        upstream, say). One naming a policy this middleware does not have
        (a message sent under other settings) falls back to the actor's, with
        a warning: admission still applies, and Dramatiq would swallow a
        KeyError here and run the actor unchecked.
        """
        actor_name = broker.get_actor(message.actor_name).options.get(self.option)
        name = message.options.get(self.option, actor_name)
        if name is not None and name not in self.policies:
            self.logger.warning(
                "Message %s asks for %s=%r, which %s does not have (known: %s); using the actor's, %r.",
                message.message_id,
                self.option,
                name,
                type(self).__name__,
                ", ".join(sorted(self.policies)) or "none",
                actor_name,
            )
            name = actor_name
        return None if name is None else self.policies[name]

    def ending(self, broker: Broker, message: MessageProxy, end: CallEnd) -> Ending | None:
        """This gate's share of the end of ``message``'s call (None: nothing to do now)."""
        return None

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        # The first gate's hook (the last by rank) ends every gate's hold; the others find none.
        attempt = started_attempt(message)
        if attempt is not None:
            _end(attempt, CallEnd(finished=True, exception=exception))

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        attempt = started_attempt(message)
        if attempt is not None:
            _end(attempt, CallEnd(finished=True, exception=AdmissionDenied(0, "skipped"), skipped=True))

    def hold(self, broker: Broker, message: MessageProxy, held: HeldT) -> None:
        """This delivery of ``message`` holds ``held`` for its call, until :meth:`release_held`;
        its :meth:`ending` is asked when the call ends (:func:`release_early`, or the actor's end).

        Kept in the delivery's attempt, not by message id: two copies of one
        message (a redelivery while the first still runs) each hold their own.
        """
        attempt_of(message, broker).held[id(self)] = (self, held)

    def held_by(self, message: MessageProxy) -> HeldT | None:
        """What this delivery of ``message`` holds, kept (None: nothing)."""
        attempt = started_attempt(message)
        entry = None if attempt is None else attempt.held.get(id(self))
        return None if entry is None else entry[1]

    def release_held(self, message: MessageProxy) -> HeldT | None:
        """What this delivery of ``message`` holds (once), or None."""
        attempt = started_attempt(message)
        entry = None if attempt is None else attempt.held.pop(id(self), None)
        return None if entry is None else entry[1]

    @contextmanager
    def failing_closed(self) -> Iterator[None]:
        """Turn an unreachable backend, or any error while deciding, into a deferral.

        Dramatiq swallows an exception from ``before_process_message`` that is
        not a ``MiddlewareError`` and runs the actor anyway: an error reply of
        the store, or a decision that failed, must not let a call run
        unaccounted.
        """
        try:
            yield
        except BackendUnavailable as exc:
            self.logger.warning("%s; deferring the message by %.1fs.", exc, self.unavailable_retry_s)
            raise AdmissionDenied(self.unavailable_retry_s, STATE_UNAVAILABLE) from exc
        except MiddlewareError:
            raise
        except Exception as exc:
            self.logger.exception(
                "Admission failed (%s: %s); deferring the message by %.1fs.",
                type(exc).__name__,
                exc,
                self.unavailable_retry_s,
            )
            raise AdmissionDenied(self.unavailable_retry_s, STATE_UNAVAILABLE) from exc

    @contextmanager
    def logging_unavailable(self, what: str) -> Iterator[None]:
        """After the call, an unreachable backend is logged: the call already happened."""
        try:
            yield
        except BackendUnavailable as exc:
            self.logger.error("Could not %s: %s", what, exc)

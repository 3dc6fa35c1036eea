"""What the three limiting middlewares share: an actor option naming a policy,
per-delivery bookkeeping of what was acquired, and failing closed when the
shared state cannot be reached.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import MiddlewareError

from .backends.base import Backend, BackendUnavailable
from .deferral import AdmissionDenied
from .order import check_order
from .policy.base import Policy
from .policy.clock import Clock, SystemClock

PolicyT = TypeVar("PolicyT", bound=Policy[Any])
HeldT = TypeVar("HeldT")

#: Reason given when the shared state is unreachable: calls stop rather than
#: run unaccounted, and the job comes back after ``unavailable_retry_s``.
STATE_UNAVAILABLE = "state_unavailable"


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
        # Keyed by delivery, not by message id: two copies of one message (a
        # redelivery while the first still runs) each hold their own. The
        # proxy is kept in the value, so its id() cannot be reused meanwhile.
        self._held: dict[int, tuple[MessageProxy, HeldT]] = {}
        self._lock = threading.Lock()
        self._host = f"{socket.gethostname()}:{os.getpid()}"

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

    def hold(self, message: MessageProxy, held: HeldT) -> None:
        """Remember what this delivery of ``message`` acquired, until :meth:`release_held`."""
        with self._lock:
            self._held[id(message)] = (message, held)

    def release_held(self, message: MessageProxy) -> HeldT | None:
        """What this delivery of ``message`` acquired (once), or None."""
        with self._lock:
            entry = self._held.pop(id(message), None)
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

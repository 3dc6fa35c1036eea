"""What the three limiting middlewares share: an actor option naming a policy,
per-message bookkeeping of what was acquired, and failing closed when the
shared state cannot be reached.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import MiddlewareError

from .backends.base import BackendUnavailable
from .deferral import AdmissionDenied

PolicyT = TypeVar("PolicyT")
HeldT = TypeVar("HeldT")

#: Reason given when the shared state is unreachable: calls stop rather than
#: run unaccounted, and the job comes back after ``unavailable_retry_s``.
STATE_UNAVAILABLE = "state_unavailable"


class UnknownPolicy(MiddlewareError, ValueError):
    """An actor opted into a policy the middleware was not given."""


class AdmissionMiddleware(dramatiq.Middleware, Generic[PolicyT, HeldT]):
    """Base of the quota, semaphore and circuit-breaker middlewares.

    Parameters:
      option: the actor option that names the policy, e.g. ``"quota"``.
      policies: the policies by name.
      unavailable_retry_s: delay before a message comes back when the
        backend cannot be reached.
    """

    option: str = ""

    def __init__(self, policies: Mapping[str, PolicyT], *, unavailable_retry_s: float = 5.0) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.policies = dict(policies)
        self.unavailable_retry_s = unavailable_retry_s
        self._held: dict[str, HeldT] = {}
        self._lock = threading.Lock()

    @property
    def actor_options(self) -> set[str]:
        return {self.option}

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
        """The policy the message's actor opted into, if any."""
        name = broker.get_actor(message.actor_name).options.get(self.option)
        return None if name is None else self.policies[name]

    def hold(self, message: MessageProxy, held: HeldT) -> None:
        with self._lock:
            self._held[message.message_id] = held

    def release_held(self, message: MessageProxy) -> HeldT | None:
        with self._lock:
            return self._held.pop(message.message_id, None)

    @contextmanager
    def failing_closed(self) -> Iterator[None]:
        """Turn an unreachable backend into a deferral: no call runs unaccounted."""
        try:
            yield
        except BackendUnavailable as exc:
            self.logger.warning("%s; deferring the message by %.1fs.", exc, self.unavailable_retry_s)
            raise AdmissionDenied(self.unavailable_retry_s, STATE_UNAVAILABLE) from exc

    @contextmanager
    def logging_unavailable(self, what: str) -> Iterator[None]:
        """After the call, an unreachable backend is logged: the call already happened."""
        try:
            yield
        except BackendUnavailable as exc:
            self.logger.error("Could not %s: %s", what, exc)

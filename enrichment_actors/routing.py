"""The router: each attempt of an Overpass fetch goes to an endpoint that can take it now.

With several endpoints (private servers only), every endpoint has its own
quota, permits, breaker, pause and pacing, under its own policy name. Before
each attempt, first of the limiting middlewares, :class:`EndpointRouter`
picks an endpoint and writes its policy name into the message options the
admission middlewares read (``pause``, ``semaphore``, ``breaker``, ``rate``,
``quota``: a message option overrides the actor's, see
:meth:`enrichment_middleware.admission.AdmissionMiddleware.policy_for`) and its name into
the option ``endpoint``, which the actor reads to pick its client.

The pick: an endpoint that is *ready* (not held, not paused, circuit closed
or due for its probe, budget left in the window). The one of the previous
attempt if it still is (it keeps the pacing slot it reserved there), else one
of the ready ones at random (the load spreads without coordination). When
none is ready, the least bad: the one ready soonest. The admission
middlewares then defer the job to that time, as with a single endpoint.

An endpoint can turn unready between the pick and the check (its circuit
opens while the job waits for a permit there), or the call itself can meet a
429 or a 406: the job is then deferred for that endpoint's reason, for as long
as that endpoint needs. If another endpoint is ready, the router's after hook
(which runs before Retries reads the delay) shortens the deferral to a moment,
and the next attempt goes there.

With one endpoint there is nothing to choose: the options are set without a
read.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy

from enrichment_middleware.admission import UnknownPolicy
from enrichment_middleware.attempt import attempt_of, deferral_of
from enrichment_middleware.backends.base import BackendUnavailable
from enrichment_middleware.breaker import CIRCUIT_OPEN
from enrichment_middleware.deferral import Defer
from enrichment_middleware.policy.breaker import BreakerState, BreakerStatus
from enrichment_middleware.policy.pause import HELD, PAUSED, PauseStatus
from enrichment_middleware.policy.quota import QuotaUsage
from enrichment_middleware.quota import QUOTA_EXHAUSTED

from .overpass_endpoints import Endpoint
from .overpass_pause import RATE_LIMITED

#: Message option naming the endpoint (host[:port]) this attempt calls.
ENDPOINT = "endpoint"

#: The message options that carry the endpoint's policy name, one per limiting middleware.
POLICY_OPTIONS = ("fair", "pause", "semaphore", "breaker", "rate", "quota")

#: Actor option: the route (a group of endpoints) whose endpoint each attempt is routed to.
ROUTE = "route"

#: Deferrals that concern only the endpoint the attempt went to: when another
#: endpoint is ready, the job comes back at once (within REROUTE_MAX_S) and is
#: routed there, instead of waiting for this one (a cooldown, a pause, a day).
#: Not a pacing slot or a busy permit: short waits, and hopping between two
#: paced endpoints would spin.
ENDPOINT_WAITS = frozenset({PAUSED, HELD, CIRCUIT_OPEN, QUOTA_EXHAUSTED, RATE_LIMITED})
REROUTE_MAX_S = 0.5


@dataclass(frozen=True)
class Readiness:
    """When an endpoint can take a call, by the backend's clock.

    Parameters:
      endpoint: the endpoint.
      ready_at: the earliest time a call may start (``inf`` while held);
        at or before ``now``: ready.
      reason: what it waits for (``held``, ``paused``, ``breaker_open``,
        ``probing``, ``quota``), or None when ready.
    """

    endpoint: Endpoint
    ready_at: float
    reason: str | None


@dataclass(frozen=True)
class EndpointReading:
    """What the backend says of one endpoint (see :func:`readiness`)."""

    pause: PauseStatus | None
    breaker: BreakerState | None
    quota: QuotaUsage | None


def readiness(endpoint: Endpoint, reading: EndpointReading, now: float) -> Readiness:
    """When ``endpoint`` can take a call, from what the backend read (pure).

    The latest of what it waits for counts: held (never), paused (to the
    pause end), circuit open (to the cooldown end) or a probe in flight (to
    its claim's end), budget spent (to the window end).

    Examples:
      >>> from enrichment_middleware.policy.breaker import BreakerState, BreakerStatus
      >>> from enrichment_actors.overpass_endpoints import EndpointSettings, resolve_endpoints
      >>> (endpoint,) = resolve_endpoints(EndpointSettings(urls=("http://a.example/api/interpreter",)))
      >>> reading = EndpointReading(None, BreakerState(BreakerStatus.OPEN, open_until=160.0), None)
      >>> readiness(endpoint, reading, now=100.0).reason
      'breaker_open'
    """
    waits: list[tuple[float, str]] = []
    if reading.pause is not None:
        if reading.pause.held:
            waits.append((math.inf, "held"))
        elif reading.pause.paused_until is not None and reading.pause.paused_until > now:
            waits.append((reading.pause.paused_until, "paused"))
    state = reading.breaker
    if state is not None:
        if state.status is BreakerStatus.OPEN and state.open_until > now:
            waits.append((state.open_until, "breaker_open"))
        elif state.status is BreakerStatus.HALF_OPEN and state.probe_expires > now:
            waits.append((state.probe_expires, "probing"))
    usage = reading.quota
    if usage is not None and (usage.requests_left == 0 or usage.bytes_left == 0):
        waits.append((usage.window_end, "quota"))
    if not waits:
        return Readiness(endpoint, now, None)
    at, reason = max(waits)
    return Readiness(endpoint, at, reason)


def choose(
    candidates: Sequence[Readiness], *, now: float, previous: str | None, rng: random.Random
) -> Readiness:
    """The endpoint for this attempt: the previous one if ready, else a ready one at random, else the soonest."""
    ready = [r for r in candidates if r.ready_at <= now]
    for r in ready:
        if r.endpoint.name == previous:
            return r
    if ready:
        return rng.choice(ready)
    # min() keeps the first of equals: the configured order breaks ties (all held: the first).
    return min(candidates, key=lambda r: r.ready_at)


class EndpointRouter(dramatiq.Middleware):
    """Route each attempt of an actor with ``route=NAME`` to one of the route's endpoints.

    Put it first among the limiting middlewares: they read the options it sets.

    Examples::

      router = EndpointRouter({"overpass": endpoints}, read=read_state, now=backend.now)
      broker.add_middleware(router)  # before Pause, ConcurrencySemaphore, CircuitBreaker, Pacing, Quota

      @dramatiq.actor(route="overpass", semaphore="overpass", quota="overpass")
      def fetch(): ...  # the actor's options name the first endpoint's policies, the default

    Parameters:
      routes: the endpoints of each route, by route name (the first is the
        default: an actor's own options should name its policy).
      read: reads one endpoint's pause, breaker and quota state from the
        shared backend (may raise ``BackendUnavailable``).
      now: the backend's clock.
      rng: picks among ready endpoints.
    """

    #: First of the gates: the others read the policy names it sets (enrichment_middleware.order).
    admission_rank = 0

    def __init__(
        self,
        routes: Mapping[str, Sequence[Endpoint]],
        *,
        read: Callable[[Endpoint], EndpointReading],
        now: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        empty = sorted(name for name, endpoints in routes.items() if not endpoints)
        if empty:
            raise ValueError(
                f"EndpointRouter: route(s) {', '.join(empty)} have no endpoint; give each one at least one."
            )
        self.routes = {name: tuple(endpoints) for name, endpoints in routes.items()}
        self.read = read
        self.now = now
        self.rng = rng or random.Random()

    @property
    def actor_options(self) -> set[str]:
        return {ROUTE}

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        route = actor.options.get(ROUTE)
        if route is not None and route not in self.routes:
            raise UnknownPolicy(
                f"Actor {actor.actor_name!r} asks for {ROUTE}={route!r}, but the router has no such route "
                f"(known: {', '.join(sorted(self.routes))})."
            )

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        route = broker.get_actor(message.actor_name).options.get(ROUTE)
        if route is None:
            return
        endpoints = self.routes[route]
        chosen = endpoints[0] if len(endpoints) == 1 else self.pick(endpoints, message.options.get(ENDPOINT))
        previous = message.options.get(ENDPOINT)
        if previous is not None and previous != chosen.name:
            self.logger.debug("Message %s moves from %s to %s.", message.message_id, previous, chosen.name)
        message.options[ENDPOINT] = chosen.name
        for option in POLICY_OPTIONS:
            message.options[option] = chosen.policy

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        if not isinstance(exception, Defer) or exception.reason not in ENDPOINT_WAITS:
            return
        route = broker.get_actor(message.actor_name).options.get(ROUTE)
        endpoints = self.routes.get(route, ()) if route is not None else ()
        if len(endpoints) < 2 or deferral_of(message, exception) <= REROUTE_MAX_S:
            return
        current = message.options.get(ENDPOINT)
        try:
            now = self.now()
            elsewhere = [
                e for e in endpoints if e.name != current and readiness(e, self.read(e), now).ready_at <= now
            ]
        except BackendUnavailable:
            return  # the job waits for its endpoint, as with one
        if elsewhere:
            delay_s = self.rng.uniform(0.0, REROUTE_MAX_S)
            self.logger.debug(
                "Message %s waits for %s (%s, %.1fs); %s ready: back in %.2fs.",
                message.message_id,
                current,
                exception.reason,
                deferral_of(message, exception),
                ", ".join(e.name for e in elsewhere),
                delay_s,
            )
            # Retries reads it from the attempt after this hook (after hooks run in reverse order).
            attempt_of(message, broker).deferral_s = delay_s

    def pick(self, endpoints: Sequence[Endpoint], previous: str | None) -> Endpoint:
        """The endpoint for this attempt (three reads per endpoint); the previous or first one if unreadable."""
        try:
            now = self.now()
            candidates = [readiness(e, self.read(e), now) for e in endpoints]
        except BackendUnavailable as exc:
            # The admission middlewares fail closed on the same backend: any pick is safe.
            self.logger.warning("Could not read the endpoints' state (%s); keeping the previous one.", exc)
            return next((e for e in endpoints if e.name == previous), endpoints[0])
        return choose(candidates, now=now, previous=previous, rng=self.rng).endpoint

    def status(self, endpoints: Sequence[Endpoint]) -> list[Readiness]:
        """Each endpoint's readiness now (reads only; for status pages)."""
        now = self.now()
        return [readiness(e, self.read(e), now) for e in endpoints]

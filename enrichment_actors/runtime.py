"""The runtime: the broker, its middleware, the Overpass client and the POI store, built from settings.

Importing this module builds nothing. :func:`build_runtime` makes a
:class:`Runtime` from :class:`~.settings.Settings`: on a broker of its own
(:func:`make_broker`), or on an app's broker it is given. Who builds the one
the actors run on is :mod:`enrichment_actors.worker` (``build()`` for the
product's own workers, ``install(broker)`` for an app's), which then makes it
:func:`current`: the runtime the actors read at call time.
The Overpass clients (one per endpoint) and the POI store are created
lazily, once per worker process (after the CLI forks), and shared by its
threads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware.prometheus import Prometheus

from enrichment_middleware.backends.base import Backend
from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.breaker import CircuitBreaker, Verdict
from enrichment_middleware.deferral import Defer
from enrichment_middleware.fair import FairAdmission
from enrichment_middleware.installation import install
from enrichment_middleware.pacing import Pacing
from enrichment_middleware.pause import Pause
from enrichment_middleware.policy.breaker import BreakerLimits
from enrichment_middleware.policy.fair import FairLimits
from enrichment_middleware.policy.pacing import PacingLimits
from enrichment_middleware.policy.pause import PauseLimits
from enrichment_middleware.policy.quota import QuotaLimits
from enrichment_middleware.policy.semaphore import SemaphoreLimits
from enrichment_middleware.quota import Quota
from enrichment_middleware.retries import Retries
from enrichment_middleware.semaphore import ConcurrencySemaphore

from .broker import RecoveringRedisBroker
from .jobs import JobLimits
from .overpass_client import OverpassClient
from .overpass_endpoints import OVERPASS, SERVER_S_PRIOR, Endpoint, budget_spread
from .overpass_responses import OverpassError
from .prometheus import EnrichmentPrometheus
from .redis_checks import RedisChecks, redis_clients
from .redis_topology import TopologyCheck
from .routing import ENDPOINT, EndpointReading, EndpointRouter
from .server_time import MS_PER_S
from .settings import Settings, SettingsError
from .store import PoiStore

__all__ = [
    "ACTORS",
    "OVERPASS",
    "NotBuilt",
    "Runtime",
    "build_runtime",
    "current",
    "installed",
    "make_backend",
    "make_broker",
    "overpass_verdict",
    "set_current",
]

#: The product's actors, by name: what its middleware counts and bounds on an app's broker.
ACTORS = ("enrich", "fetch_pois", "store_pois")


def overpass_verdict(exception: BaseException | None) -> Verdict:
    """What an Overpass call says about the server's health, for the circuit breaker.

    Upstream failures (504, other 5xx, connection errors, client timeouts,
    cut-off bodies, a server short of memory or mid-update, a dispatcher
    protocol error) count; any answer the server gave on purpose (400, 406,
    query remarks, 429, a ``duplicate_query`` refusal) shows it is up, also
    when the actor turned it into a deferral; a request that never left the
    process and errors of ours say nothing.
    """
    if exception is None:
        return Verdict.SUCCESS
    if isinstance(exception, Defer) and isinstance(exception.__cause__, OverpassError):
        # A 429 or a duplicate_query the actor deferred: judged by what the server said.
        exception = exception.__cause__
    if isinstance(exception, OverpassError):
        if exception.trips_breaker:
            return Verdict.FAILURE
        return Verdict.SUCCESS if exception.request_sent else Verdict.IGNORE
    if isinstance(exception, Defer):
        return Verdict.SUCCESS
    return Verdict.IGNORE


@dataclass
class Runtime:
    """Everything the actors need, built once per process from :class:`Settings`.

    Each endpoint (:attr:`endpoints`) has a policy of its name
    (:attr:`~.overpass_endpoints.Endpoint.policy`) in each of :attr:`pause`,
    :attr:`semaphore`, :attr:`breaker`, :attr:`pacing` and :attr:`quota`, and
    its own client (:meth:`client`). The :attr:`router` picks the endpoint of
    each attempt of an actor with ``route=OVERPASS`` and names it in the
    message option ``endpoint`` (:meth:`current_endpoint`).
    """

    settings: Settings
    broker: dramatiq.Broker
    backend: Backend
    quota: Quota
    semaphore: ConcurrencySemaphore
    breaker: CircuitBreaker
    retries: Retries
    metrics: EnrichmentPrometheus
    pause: Pause
    pacing: Pacing
    router: EndpointRouter
    endpoints: tuple[Endpoint, ...]
    #: The fair room of each endpoint, lanes by source (docs/architecture.md, "Fair shares").
    fair: FairAdmission
    #: The first endpoint's client (tests replace it); the others' are in _clients.
    _client: OverpassClient | None = None
    _clients: dict[str, OverpassClient] = field(default_factory=dict)
    _store: PoiStore | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def job_limits(self) -> JobLimits:
        s = self.settings
        return JobLimits(max_area_deg2=s.max_area_deg2, max_tags=s.max_tags, default_tags=s.default_tags)

    def endpoint(self, name: str | None = None) -> Endpoint:
        """The endpoint named ``name`` (its host[:port] or its policy name); None: the first.

        Raises:
          KeyError: no endpoint of that name (the message says which there are).
        """
        if name is None:
            return self.endpoints[0]
        for endpoint in self.endpoints:
            if name in (endpoint.name, endpoint.policy):
                return endpoint
        known = ", ".join(e.name for e in self.endpoints)
        raise KeyError(f"No Overpass endpoint {name!r}; the endpoints are: {known}.")

    def current_endpoint(self) -> Endpoint:
        """The endpoint the router chose for the message this thread runs (the first without one)."""
        from dramatiq.middleware import CurrentMessage

        message = CurrentMessage.get_current_message()
        name = message.options.get(ENDPOINT) if message is not None else None
        return self.endpoint(name if isinstance(name, str) else None)

    def client(self, endpoint: str | Endpoint | None = None) -> OverpassClient:
        """The Overpass client of ``endpoint`` (a name, policy name or :class:`Endpoint`; None: the first).

        One per endpoint and process, shared by its threads.
        """
        target = endpoint if isinstance(endpoint, Endpoint) else self.endpoint(endpoint)
        s = self.settings
        with self._lock:
            if target == self.endpoints[0]:
                if self._client is None:
                    self._client = OverpassClient(
                        target.url,
                        user_agent=s.user_agent,
                        http_timeout_s=s.http_timeout_s,
                        max_answer_bytes=s.max_answer_bytes,
                    )
                return self._client
            if target.name not in self._clients:
                self._clients[target.name] = OverpassClient(
                    target.url,
                    user_agent=s.user_agent,
                    http_timeout_s=s.http_timeout_s,
                    max_answer_bytes=s.max_answer_bytes,
                )
            return self._clients[target.name]

    def store(self) -> PoiStore:
        with self._lock:
            if self._store is None:
                self._store = PoiStore(self.settings.database_url)
            return self._store


def make_backend(settings: Settings) -> Backend:
    """The shared-state backend: Redis for a fleet, memory for one process."""
    if settings.state_backend == "memory":
        return MemoryBackend()
    from enrichment_middleware.backends.redis import RedisBackend

    # Its topology is checked at worker boot (redis_topology.TopologyCheck):
    # importing the product connects to nothing.
    return RedisBackend.from_url(
        settings.state_redis_url,
        namespace="enrichment",
        cluster=settings.redis_cluster,
        sentinels=settings.redis_sentinels,
        sentinel_master=settings.redis_sentinel_master,
    )


def make_broker(settings: Settings) -> dramatiq.Broker:
    """The broker ``settings.broker`` names: Redis, RabbitMQ, or the in-process stub.

    On RabbitMQ every publish waits for the broker's confirmation: a message
    put back (a retry, a released parked job) is then known to be in the queue
    before the one it replaces is acknowledged; without it a publish buffered
    when the connection dropped would be lost (docs/architecture.md, "RabbitMQ").
    """
    if settings.broker == "stub":
        return StubBroker()
    if settings.broker == "rabbitmq":
        try:
            from dramatiq.brokers.rabbitmq import RabbitmqBroker
        except ImportError:
            raise SettingsError(
                "BROKER=rabbitmq needs pika, Dramatiq's RabbitMQ client: "
                "pip install 'overpass-enrichment[rabbitmq]' (or 'dramatiq[rabbitmq]')."
            ) from None

        return RabbitmqBroker(url=settings.rabbitmq_url, confirm_delivery=True)
    return RecoveringRedisBroker(
        url=settings.redis_url,
        heartbeat_timeout=int(settings.broker_heartbeat_timeout_s * 1000),
        maintenance_chance=settings.broker_maintenance_chance,
    )


def build_runtime(
    settings: Settings,
    *,
    backend: Backend | None = None,
    broker: dramatiq.Broker | None = None,
    exposition: Callable[[], int] | None = None,
    **policy_kwargs: Any,
) -> Runtime:
    """A broker with the metrics, quota, semaphore, breaker and retry middleware, configured by ``settings``.

    ``policy_kwargs`` (``clock``, ``rng``) go to every middleware. The policies
    take their time from the backend, never from ``clock``: tests that need a
    manual clock build a ``MemoryBackend(clock=...)`` and pass it as ``backend``
    (it replaces the one the settings name).

    ``broker``: an app's broker to build on (``enrichment_actors.install``)
    instead of one made from the settings. Then the Redis checks (no
    eviction, persistence) look at the product's state Redis only, the
    metrics count the product's actors only, and when the app's broker has
    a Prometheus middleware already, it serves the metrics and counts
    Dramatiq's stock ones: ours adds the enrichment metrics only, with no
    exposition process of its own. ``exposition``: the function the CLI forks to serve the metrics.
    """
    s = settings
    on_app_broker = broker is not None
    broker = broker if broker is not None else make_broker(s)
    backend = backend or make_backend(s)
    # Refuses an evicting Redis: ours, not the app's broker (its durability is the app's call).
    checked_broker = None if on_app_broker else broker
    broker.add_middleware(RedisChecks(lambda: redis_clients(checked_broker, backend)))
    broker.add_middleware(TopologyCheck(backend))  # refuses a wrong Redis topology
    retries = Retries(
        backend=backend,
        max_retries=s.retry_max,
        min_backoff=int(s.retry_min_backoff_s * 1000),
        max_backoff=int(s.retry_max_backoff_s * 1000),
        **policy_kwargs,
    )
    endpoints = s.endpoints
    breaker = CircuitBreaker(
        backend,
        {
            e.policy: BreakerLimits(
                failure_threshold=s.breaker_failure_threshold,
                cooldown_s=s.breaker_cooldown_s,
                probe_ttl_s=s.semaphore_lease_s,
            )
            for e in endpoints
        },
        verdict=overpass_verdict,
        **policy_kwargs,
    )
    quota = Quota(
        backend,
        {
            e.policy: QuotaLimits(
                requests=e.quota_requests,
                bytes=e.quota_bytes,
                window_s=e.quota_window_s,
                jitter_s=s.quota_jitter_s,
                cost=round(e.quota_server_s * MS_PER_S),
                cost_prior=round(SERVER_S_PRIOR * MS_PER_S),
            )
            for e in endpoints
        },
        **policy_kwargs,
    )
    semaphore = ConcurrencySemaphore(
        backend,
        {
            e.policy: SemaphoreLimits(
                permits=e.permits,
                lease_s=s.semaphore_lease_s,
                wait_s=s.semaphore_wait_s,
                retry_min_s=s.semaphore_retry_min_s,
                retry_max_s=s.semaphore_retry_max_s,
            )
            for e in endpoints
        },
        **policy_kwargs,
    )
    # One room per endpoint, one seat more than permits: only seated jobs wait for a permit or a
    # slot, and the one that waits at the permit starts as soon as a call ends (the room's hand-on,
    # a message through the broker, is hidden behind the call). A source's cap is its share of the
    # endpoint's requests per quota window (none when unlimited).
    fair = FairAdmission(
        backend,
        {
            e.policy: FairLimits(
                seats=e.permits + 1,
                weights=dict(s.source_weights),
                # Held through the permit's wait too: it must outlast the wait and the call.
                seat_s=s.semaphore_lease_s + s.semaphore_wait_s,
                caps={
                    source: math.floor(round(share * e.quota_requests, 6))
                    for source, share in s.source_shares.items()
                    if e.quota_requests >= 0
                },
                window_s=e.quota_window_s,
            )
            for e in endpoints
        },
        **policy_kwargs,
    )
    pause = Pause(
        backend,
        {
            e.policy: PauseLimits(min_pause_s=s.rate_limit_pause_s, hold_recheck_s=s.hold_recheck_s)
            for e in endpoints
        },
        **policy_kwargs,
    )
    pacing = Pacing(
        backend,
        {e.policy: PacingLimits(interval_s=e.pacing_interval_s, burst=e.pacing_burst) for e in endpoints},
        intervals={
            e.policy: budget_spread(quota.policies[e.policy], e) for e in endpoints if e.spread_budget
        },
        **policy_kwargs,
    )

    def read(endpoint: Endpoint) -> EndpointReading:
        p = endpoint.policy
        return EndpointReading(
            pause.policies[p].status(), breaker.policies[p].state(), quota.policies[p].usage()
        )

    router = EndpointRouter({OVERPASS: endpoints}, read=read, now=backend.now, rng=policy_kwargs.get("rng"))
    # One ordered admission (docs/architecture.md, "Admission"): install() puts the gates in
    # their order and our Retries and Callbacks where Dramatiq's stood. Dramatiq's Retries keeps
    # retrying the actors that opt into no gate (an app's, with the app's settings): they act as
    # without the product (tests/unit/test_retries_parity.py); a deferral fires no on_failure.
    install(broker, router, fair, pause, semaphore, breaker, pacing, quota, retries=retries)
    # Metrics only under the CLI (a Redis or RabbitMQ broker); the stub broker runs the
    # demo in-process, where the hooks would record nothing anyway.
    app_metrics = any(isinstance(m, Prometheus) for m in broker.middleware)
    metrics = EnrichmentPrometheus(
        exposition=None if app_metrics else exposition,
        actors=ACTORS if on_app_broker else None,
        stock=not app_metrics,
    )
    if not isinstance(broker, StubBroker):
        # Before Retries, so that its after-hook runs after Retries' and sees
        # whether the message was retried or dead-lettered.
        broker.add_middleware(metrics, before=Retries)
    return Runtime(
        s,
        broker,
        backend,
        quota,
        semaphore,
        breaker,
        retries,
        metrics,
        pause,
        pacing,
        router,
        endpoints,
        fair,
    )


class NotBuilt(RuntimeError):
    """The actors ran, or the runtime was asked for, before the product was built in this process."""


_current: Runtime | None = None


def current() -> Runtime:
    """The runtime the actors run on: the one ``build()`` or ``install(broker)`` made in this process.

    Raises:
      NotBuilt: neither was called.
    """
    if _current is None:
        raise NotBuilt(
            "The product is not built in this process: call enrichment_actors.worker.build() "
            "(or enrichment_actors.install(broker)) first."
        )
    return _current


def installed() -> Runtime | None:
    """The current runtime, or None when the product is not built in this process."""
    return _current


def set_current(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one the actors run on (:mod:`enrichment_actors.worker` does; None forgets it)."""
    global _current
    _current = runtime

"""The runtime: the broker, its middleware, the Overpass client and the POI store, built from settings.

Middleware must be on the broker before any actor is declared, so this module
builds everything and sets the global broker when it is first imported: by
:mod:`enrichment_actors.worker` (what ``dramatiq`` loads), by the actors, or
on the package's first ``enrich`` or ``runtime``; and by the demo program. No
other module imports it at import time, so they read no setting
(tests/unit/test_imports.py).
The Overpass client and the POI store are created lazily, once per worker
process (after the CLI forks), and shared by its threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries as StockRetries

from middleware.backends.base import Backend
from middleware.backends.memory import MemoryBackend
from middleware.breaker import CircuitBreaker, Verdict
from middleware.callbacks import replace_stock_callbacks
from middleware.deferral import Defer
from middleware.policy.breaker import BreakerLimits
from middleware.policy.quota import QuotaLimits
from middleware.policy.semaphore import SemaphoreLimits
from middleware.quota import Quota
from middleware.retries import Retries
from middleware.semaphore import ConcurrencySemaphore

from .broker import RecoveringRedisBroker
from .jobs import JobLimits
from .overpass_client import OverpassClient
from .overpass_responses import OverpassError
from .prometheus import EnrichmentPrometheus
from .redis_checks import RedisChecks, redis_clients
from .settings import Settings, load_settings
from .store import PoiStore

#: The policy name the Overpass actor opts into, for all three middlewares.
OVERPASS = "overpass"


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
    """Everything the actors need, built once per process from :class:`Settings`."""

    settings: Settings
    broker: dramatiq.Broker
    backend: Backend
    quota: Quota
    semaphore: ConcurrencySemaphore
    breaker: CircuitBreaker
    retries: Retries
    metrics: EnrichmentPrometheus
    _client: OverpassClient | None = None
    _store: PoiStore | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def job_limits(self) -> JobLimits:
        s = self.settings
        return JobLimits(max_area_deg2=s.max_area_deg2, max_tags=s.max_tags, default_tags=s.default_tags)

    def client(self) -> OverpassClient:
        with self._lock:
            if self._client is None:
                s = self.settings
                self._client = OverpassClient(
                    s.overpass_url, user_agent=s.user_agent, http_timeout_s=s.http_timeout_s
                )
            return self._client

    def store(self) -> PoiStore:
        with self._lock:
            if self._store is None:
                self._store = PoiStore(self.settings.database_url)
            return self._store


def make_backend(settings: Settings) -> Backend:
    """The shared-state backend: Redis for a fleet, memory for one process."""
    if settings.state_backend == "memory":
        return MemoryBackend()
    from middleware.backends.redis import RedisBackend

    return RedisBackend.from_url(settings.redis_url, namespace="enrichment")


def build_runtime(settings: Settings, **policy_kwargs: Any) -> Runtime:
    """A broker with the metrics, quota, semaphore, breaker and retry middleware, configured by ``settings``.

    ``policy_kwargs`` (``clock``, ``rng``) go to every middleware: tests inject a manual clock.
    """
    s = settings
    broker: dramatiq.Broker
    if s.broker == "stub":
        broker = StubBroker()
    else:
        broker = RecoveringRedisBroker(
            url=s.redis_url,
            heartbeat_timeout=int(s.broker_heartbeat_timeout_s * 1000),
            maintenance_chance=s.broker_maintenance_chance,
        )
    backend = make_backend(s)
    broker.add_middleware(RedisChecks(lambda: redis_clients(broker, backend)))  # refuses an evicting Redis
    retries = Retries(
        backend=backend,
        max_retries=s.retry_max,
        min_backoff=int(s.retry_min_backoff_s * 1000),
        max_backoff=int(s.retry_max_backoff_s * 1000),
        **policy_kwargs,
    )
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, StockRetries)]
    broker.add_middleware(retries)
    # A deferral is not a failure: no on_failure callback for it (middleware/callbacks.py).
    replace_stock_callbacks(broker)
    # Metrics only under the CLI (a Redis broker); the stub broker runs the
    # demo in-process, where the hooks would record nothing anyway.
    metrics = EnrichmentPrometheus()
    if s.broker == "redis":
        # Before Retries, so that its after-hook runs after Retries' and sees
        # whether the message was retried or dead-lettered.
        broker.add_middleware(metrics, before=Retries)
    breaker = CircuitBreaker(
        backend,
        {
            OVERPASS: BreakerLimits(
                failure_threshold=s.breaker_failure_threshold,
                cooldown_s=s.breaker_cooldown_s,
                probe_ttl_s=s.semaphore_lease_s,
            )
        },
        verdict=overpass_verdict,
        **policy_kwargs,
    )
    quota = Quota(
        backend,
        {
            OVERPASS: QuotaLimits(
                requests=s.quota_requests,
                bytes=s.quota_bytes,
                window_s=s.quota_window_s,
                jitter_s=s.quota_jitter_s,
            )
        },
        **policy_kwargs,
    )
    semaphore = ConcurrencySemaphore(
        backend,
        {
            OVERPASS: SemaphoreLimits(
                permits=s.semaphore_permits,
                lease_s=s.semaphore_lease_s,
                wait_s=s.semaphore_wait_s,
                retry_min_s=s.semaphore_retry_min_s,
                retry_max_s=s.semaphore_retry_max_s,
            )
        },
        **policy_kwargs,
    )
    # Order matters (docs/architecture.md, "Order of the checks"). The permit
    # first: the only step that waits, with nothing else held. Then the
    # breaker and the quota, back to back and right before the call, so that
    # no job admitted before the circuit opened, or before the bytes ran out,
    # calls after: nothing waits between their checks and the call. The
    # breaker before the quota: a job the breaker then denies has spent no
    # request (a request counted and given back could make the quota refuse
    # another job for a whole window), and a probe claim a quota denial
    # leaves is given back at once.
    for middleware in (semaphore, breaker, quota):
        broker.add_middleware(middleware)
    return Runtime(s, broker, backend, quota, semaphore, breaker, retries, metrics)


# Built once, at this module's first import; the actors are declared on this broker.
runtime = build_runtime(load_settings())
dramatiq.set_broker(runtime.broker)

"""The obvious alternative, for comparison: Dramatiq's ``ConcurrentRateLimiter`` inside the actor.

This is what Dramatiq's documentation suggests for "at most N at a time":
the fetch actor takes a permit from a ``ConcurrentRateLimiter`` around the
same Overpass call our product makes; when none is free the limiter raises
``RateLimitExceeded`` and Dramatiq's stock ``Retries`` tries the message
again after its backoff. The pipeline (validate, fetch, store) is the
product's, with the same client and store, so only the admission differs.

Configured from the environment (besides the product's REDIS_URL,
DATABASE_URL and OVERPASS_URL): ``ALT_PERMITS``, ``ALT_MIN_BACKOFF_MS``,
``ALT_MAX_BACKOFF_MS`` and ``ALT_MAX_RETRIES`` (unset: Dramatiq's defaults,
15 s, 7 days and 20).
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries
from dramatiq.rate_limits import ConcurrentRateLimiter
from dramatiq.rate_limits.backends import RedisBackend

from enrichment_actors.jobs import build_query, validate_job
from enrichment_actors.overpass_client import OverpassClient
from enrichment_actors.settings import load_settings
from enrichment_actors.store import PoiStore

QUEUE = "alternative"

settings = load_settings()
broker = RedisBroker(url=settings.redis_url)  # type: ignore[no-untyped-call]
retry_options: dict[str, int] = {
    name: int(os.environ[variable])
    for name, variable in (
        ("min_backoff", "ALT_MIN_BACKOFF_MS"),
        ("max_backoff", "ALT_MAX_BACKOFF_MS"),
        ("max_retries", "ALT_MAX_RETRIES"),
    )
    if os.environ.get(variable)
}
for middleware in broker.middleware:
    if isinstance(middleware, Retries):
        for name, value in retry_options.items():
            setattr(middleware, name, value)
dramatiq.set_broker(broker)

permits = ConcurrentRateLimiter(
    RedisBackend(url=settings.redis_url), "overpass", limit=int(os.environ.get("ALT_PERMITS", "2"))
)
_client: OverpassClient | None = None
_store: PoiStore | None = None


def client() -> OverpassClient:
    global _client
    if _client is None:
        _client = OverpassClient(
            settings.overpass_url, user_agent=settings.user_agent, http_timeout_s=settings.http_timeout_s
        )
    return _client


def store() -> PoiStore:
    global _store
    if _store is None:
        _store = PoiStore(settings.database_url)
    return _store


@dramatiq.actor(queue_name=QUEUE)
def enrich(bbox: Any = None, tags: Any = None) -> None:
    job = validate_job(bbox, tags)
    fetch_pois.send(**job.as_message())


@dramatiq.actor(queue_name=QUEUE)
def fetch_pois(bbox: dict[str, float], tags: list[str], depth: int = 0) -> None:
    job = validate_job(bbox, tags, depth=depth)
    query = build_query(job, timeout_s=settings.query_timeout_s, maxsize_bytes=settings.maxsize_bytes)
    with permits.acquire():
        result = client().fetch(query)
    store_pois.send(job=job.as_message(), pois=[list(poi) for poi in result.parsed.pois])


@dramatiq.actor(queue_name=QUEUE)
def store_pois(job: dict[str, Any], pois: list[list[Any]]) -> None:
    store().upsert(pois)

"""The actors: enrich (validate), fetch_pois (one Overpass call), store_pois (upsert).

A job is a chain of three messages so that each step holds only what it
needs: the fetch is the only step under the quota, the semaphore and the
breaker, and holds its permit only while the call is in flight; the store
step gets the fetched POIs in its message, so a database failure is retried
without a second Overpass call.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq

from middleware.deferral import Defer
from middleware.semaphore import release_permit_early
from middleware.usage import charge_bytes

from .jobs import InvalidJob, Job, build_query, validate_job
from .metrics import CALL_OK, Outcome, note_outcome
from .overpass_client import FetchResult, OverpassClient
from .overpass_responses import (
    ClientTimeout,
    OverpassError,
    QueryFailed,
    QueryRejected,
    QueryTooLarge,
    RateLimited,
    UserAgentRejected,
)
from .overpass_status import StatusUnavailable
from .runtime import OVERPASS, runtime

logger = logging.getLogger(__name__)
settings = runtime.settings


def retry_when(retries: int, exception: BaseException) -> bool:
    """Retry transient failures up to ``RETRY_MAX`` times; permanent ones never."""
    return retries < settings.retry_max and getattr(exception, "retryable", True)


@dramatiq.actor(queue_name=settings.queue, throws=(InvalidJob,), max_retries=settings.retry_max)
def enrich(bbox: Any = None, tags: Any = None, *args: Any, **unexpected: Any) -> None:
    """Fill the POIs of ``bbox`` (south, west, north, east) matching ``tags`` (default: the usual POI families)."""
    if args or unexpected:
        names = ", ".join([f"positional argument {a!r}" for a in args] + sorted(unexpected))
        raise InvalidJob(f"enrich takes bbox= and tags= only; unexpected: {names}.")
    job = validate_job(bbox, tags, limits=runtime.job_limits)
    fetch_pois.send(**job.as_message())


@dramatiq.actor(
    queue_name=settings.queue,
    quota=OVERPASS,
    semaphore=OVERPASS,
    breaker=OVERPASS,
    # Permanent answers: dead-lettered at once, logged without a traceback.
    throws=(InvalidJob, QueryRejected, UserAgentRejected, QueryFailed, QueryTooLarge),
    max_retries=settings.retry_max,
    retry_when=retry_when,
    min_backoff=int(settings.retry_min_backoff_s * 1000),
    max_backoff=int(settings.retry_max_backoff_s * 1000),
)
def fetch_pois(bbox: dict[str, float], tags: list[str], depth: int = 0) -> None:
    """One Overpass call for an already validated job; hands the POIs to store_pois."""
    job = validate_job(bbox, tags, depth=depth, limits=runtime.job_limits)
    query = build_query(job, timeout_s=settings.query_timeout_s, maxsize_bytes=settings.maxsize_bytes)
    client = runtime.client()
    try:
        result = _call_overpass(client, query)
    except ClientTimeout:
        # The query keeps running upstream and holds a slot until killed.
        client.kill_my_queries()
        raise
    except RateLimited as exc:
        raise Defer(_rate_limit_pause_s(), reason=Outcome.RATE_LIMITED.value) from exc
    except QueryTooLarge:
        if not _split(job):
            raise
        return
    # The call is over: the next one may start while this job hands its POIs on.
    release_permit_early()
    charge_bytes(result.response_bytes)
    store_pois.send(job=job.as_message(), pois=[list(poi) for poi in result.parsed.pois])


@dramatiq.actor(
    queue_name=settings.queue,
    max_retries=settings.store_max_retries,
    min_backoff=int(settings.retry_min_backoff_s * 1000),
    max_backoff=int(settings.retry_max_backoff_s * 1000),
)
def store_pois(job: dict[str, Any], pois: list[list[Any]]) -> None:
    """Upsert fetched POIs; retried on database errors without calling Overpass again."""
    runtime.metrics.count_pois_upserted(runtime.store().upsert(pois))


def _call_overpass(client: OverpassClient, query: str) -> FetchResult:
    """``client.fetch(query)``, recorded in the metrics by its classification."""
    started = time.monotonic()
    try:
        result = client.fetch(query)
    except OverpassError as exc:
        runtime.metrics.observe_overpass_call(exc.label, time.monotonic() - started)
        raise
    runtime.metrics.observe_overpass_call(CALL_OK, result.duration_s, response_bytes=result.response_bytes)
    return result


def _split(job: Job) -> bool:
    """Send the four quarters of a too-large job; False when it is already at the smallest tile."""
    children = job.split(settings.min_tile_deg)
    for child in children:
        fetch_pois.send(**child.as_message())
    if children:
        note_outcome(Outcome.SPLIT)
        logger.info("Query too large for %s: split into %d tiles.", job.bbox, len(children))
    return bool(children)


def _rate_limit_pause_s() -> float:
    """At least RATE_LIMIT_PAUSE_S after a 429, or until /api/status shows a free slot, whichever is later.

    The server's reported rate limit also caps the fleet's permits.
    """
    try:
        status = runtime.client().status()
    except StatusUnavailable as exc:
        logger.warning(
            "429 from Overpass and /api/status unreadable (%s); pausing %.0fs.",
            exc,
            settings.rate_limit_pause_s,
        )
        return settings.rate_limit_pause_s
    if status.rate_limit is not None:
        runtime.semaphore.cap(OVERPASS, min(status.rate_limit, settings.semaphore_permits))
    return max(settings.rate_limit_pause_s, status.seconds_until_free())


__all__ = ["OverpassError", "enrich", "fetch_pois", "store_pois"]

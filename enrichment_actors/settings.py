"""Settings: every knob of the product, read from environment variables.

This module is the one table of configuration (README.md documents it row
for row). Each setting has a default that works on a laptop; an invalid
value fails at start with a message naming the variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from middleware.redaction import redact_url

from . import __version__

T = TypeVar("T")

#: Tags asked for when a job names none: the usual POI families. An
#: unfiltered query (every element in the box) is never sent.
DEFAULT_TAGS: tuple[str, ...] = (
    "amenity",
    "shop",
    "tourism",
    "leisure",
    "office",
    "craft",
    "healthcare",
)


#: How long a rate-limited Overpass 0.7.62 server holds a query waiting for a
#: slot before its ``[timeout]`` starts (measured on a real server).
SERVER_HOLD_S = 15


class SettingsError(ValueError):
    """An environment variable holds a value the product cannot use."""


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: variable, default, meaning."""

    env: str
    default: str
    help: str


#: The settings table. Order is the order of README.md's table.
TABLE: tuple[Setting, ...] = (
    Setting(
        "DATABASE_URL",
        "sqlite:///enrichment.sqlite3",
        "Where POIs are stored: postgresql://... or sqlite:///path",
    ),
    Setting(
        "REDIS_URL",
        "redis://localhost:6379/0",
        "Dramatiq broker and the fleet-wide quota/semaphore/breaker state",
    ),
    Setting(
        "BROKER",
        "redis",
        "`redis` (workers started by the `dramatiq` CLI) or `stub` (in-process: the embedded demo)",
    ),
    Setting(
        "STATE_BACKEND", "redis", "`redis` (shared by the fleet) or `memory` (one process only: tests, demo)"
    ),
    Setting("BROKER_HEARTBEAT_TIMEOUT_S", "60", "Messages of a worker silent this long are handed to others"),
    Setting(
        "BROKER_MAINTENANCE_CHANCE",
        "10000",
        "Broker commands in a million that also hand a dead worker's messages on (Dramatiq's default is 1000)",
    ),
    Setting("OVERPASS_URL", "https://overpass-api.de/api/interpreter", "Overpass interpreter endpoint"),
    Setting(
        "OVERPASS_CONTACT",
        "unset",
        "Who to contact about this client (e-mail or URL); goes into the User-Agent",
    ),
    Setting(
        "OVERPASS_USER_AGENT",
        "",
        "Full User-Agent; default `overpass-enrichment/VERSION (+contact: OVERPASS_CONTACT)`",
    ),
    Setting(
        "OVERPASS_QUERY_TIMEOUT_S",
        "25",
        "`[timeout:N]` of each query; honest small values get admitted sooner",
    ),
    Setting("OVERPASS_MAXSIZE_BYTES", "67108864", "`[maxsize:N]` of each query (64 MiB)"),
    Setting(
        "OVERPASS_HTTP_TIMEOUT_S",
        "",
        "Deadline of a whole Overpass call (and of any one read); default query timeout + 25 s: the "
        "server may hold a query up to 15 s waiting for a slot before its [timeout] starts, plus 10 s",
    ),
    Setting("ENRICH_QUEUE", "enrichment", "Dramatiq queue of the enrichment actors"),
    Setting("ENRICH_DEFAULT_TAGS", ",".join(DEFAULT_TAGS), "Tag filters used when a job names none"),
    Setting("ENRICH_MAX_AREA_DEG2", "0.25", "Largest box a job may ask for, in square degrees"),
    Setting(
        "ENRICH_MIN_TILE_DEG", "0.01", "Smallest side a too-large query is split down to before it fails"
    ),
    Setting("ENRICH_MAX_TAGS", "20", "Most tag filters one job may carry"),
    Setting(
        "QUOTA_REQUESTS", "10000", "Overpass requests per quota window (public policy: about 10,000 a day)"
    ),
    Setting("QUOTA_BYTES", "1073741824", "Response bytes per quota window (public policy: about 1 GB a day)"),
    Setting("QUOTA_WINDOW_S", "86400", "Quota window, aligned to the epoch: 86400 is a UTC day"),
    Setting("QUOTA_JITTER_S", "300", "Jobs denied by the quota come back at the next window plus up to this"),
    Setting(
        "SEMAPHORE_PERMITS", "2", "Overpass calls in flight across the fleet (public policy: 2 slots per IP)"
    ),
    Setting(
        "SEMAPHORE_LEASE_S",
        "",
        "A permit held by a dead worker comes back after this; default HTTP timeout + 60 s",
    ),
    Setting(
        "SEMAPHORE_WAIT_S", "1.0", "How long a worker thread waits for a permit before deferring the job"
    ),
    Setting("SEMAPHORE_RETRY_MIN_S", "0.2", "A job that got no permit comes back after at least this"),
    Setting(
        "SEMAPHORE_RETRY_MAX_S",
        "1.0",
        "... and at most this (uniformly spread, so waiters do not return together)",
    ),
    Setting("BREAKER_FAILURE_THRESHOLD", "3", "Consecutive upstream failures that open the circuit"),
    Setting("BREAKER_COOLDOWN_S", "60", "How long the circuit stays open before one probe"),
    Setting(
        "RATE_LIMIT_PAUSE_S", "30", "Least pause after a 429 (the Overpass operators ask for 30 s or more)"
    ),
    Setting("RETRY_MAX", "5", "Retries of a transient failure before the job is dead-lettered"),
    Setting("RETRY_MIN_BACKOFF_S", "5", "Smallest retry backoff"),
    Setting("RETRY_MAX_BACKOFF_S", "600", "Largest retry backoff (never exceeded)"),
    Setting(
        "STORE_MAX_RETRIES", "20", "Retries of storing fetched POIs (never refetched) before dead-lettering"
    ),
    Setting(
        "MESSAGE_MAX_BYTES",
        "1048576",
        "Largest message the product enqueues (1 MiB); a bigger `enrich` is refused at send",
    ),
    Setting(
        "STAGE_CHUNK_BYTES",
        "1048576",
        "Fetched POIs are staged in chunks of at most this much JSON: what one store step holds",
    ),
    Setting(
        "STAGE_TTL_S",
        "86400",
        "How long staged POIs wait for the database; must exceed STORE_MAX_RETRIES x RETRY_MAX_BACKOFF_S",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The product's configuration, validated. Its repr leaves out the URLs: they may carry passwords."""

    database_url: str = dataclasses.field(repr=False)
    redis_url: str = dataclasses.field(repr=False)
    broker: str
    state_backend: str
    broker_heartbeat_timeout_s: float
    broker_maintenance_chance: int
    overpass_url: str = dataclasses.field(repr=False)
    user_agent: str
    query_timeout_s: int
    maxsize_bytes: int
    http_timeout_s: float
    queue: str
    default_tags: tuple[str, ...]
    max_area_deg2: float
    min_tile_deg: float
    max_tags: int
    quota_requests: int
    quota_bytes: int
    quota_window_s: int
    quota_jitter_s: float
    semaphore_permits: int
    semaphore_lease_s: float
    semaphore_wait_s: float
    semaphore_retry_min_s: float
    semaphore_retry_max_s: float
    breaker_failure_threshold: int
    breaker_cooldown_s: float
    rate_limit_pause_s: float
    retry_max: int
    retry_min_backoff_s: float
    retry_max_backoff_s: float
    store_max_retries: int
    message_max_bytes: int
    stage_chunk_bytes: int
    stage_ttl_s: float

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests, demo)."""
        return dataclasses.replace(self, **changes)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings table from ``environ`` (default ``os.environ``).

    Raises:
      SettingsError: naming the first variable whose value is unusable.
    """
    env = os.environ if environ is None else environ
    raw = {row.env: env.get(row.env, "").strip() or row.default for row in TABLE}

    def read(name: str, convert: Callable[[str], T], check: Callable[[T], bool], expect: str) -> T:
        try:
            value = convert(raw[name])
        except ValueError:
            value = None
        if value is None or not check(value):
            # URLs carry passwords: the message shows the value with its password masked.
            raise SettingsError(f"{name}={redact_url(raw[name])!r} is not valid: expected {expect}.")
        return value

    def positive(value: float) -> bool:
        return math.isfinite(value) and value > 0

    def non_negative(value: float) -> bool:
        return math.isfinite(value) and value >= 0

    query_timeout = read("OVERPASS_QUERY_TIMEOUT_S", int, positive, "a whole number of seconds > 0")
    # A rate-limited server holds a query up to 15 s waiting for a slot before
    # its [timeout] starts: a deadline of query timeout + 10 s would end calls
    # the server is still running within its rules (and kill them).
    http_default = str(query_timeout + SERVER_HOLD_S + 10)
    raw["OVERPASS_HTTP_TIMEOUT_S"] = raw["OVERPASS_HTTP_TIMEOUT_S"] or http_default
    http_timeout = read("OVERPASS_HTTP_TIMEOUT_S", float, positive, "seconds > 0")
    raw["SEMAPHORE_LEASE_S"] = raw["SEMAPHORE_LEASE_S"] or str(http_timeout + 60)
    lease = read("SEMAPHORE_LEASE_S", float, positive, "seconds > 0")
    if lease <= http_timeout:
        raise SettingsError(
            f"SEMAPHORE_LEASE_S={lease:g} must exceed OVERPASS_HTTP_TIMEOUT_S={http_timeout:g}: "
            "otherwise a permit can expire while its call is still in flight."
        )
    contact = raw["OVERPASS_CONTACT"]
    user_agent = raw["OVERPASS_USER_AGENT"] or f"overpass-enrichment/{__version__} (+contact: {contact})"
    retry_min = read("SEMAPHORE_RETRY_MIN_S", float, non_negative, "seconds >= 0")
    min_backoff = read("RETRY_MIN_BACKOFF_S", float, non_negative, "seconds >= 0")
    max_backoff = read(
        "RETRY_MAX_BACKOFF_S", float, lambda v: v >= min_backoff, "seconds >= RETRY_MIN_BACKOFF_S"
    )
    default_tags = tuple(tag.strip() for tag in raw["ENRICH_DEFAULT_TAGS"].split(",") if tag.strip())
    if not default_tags:
        raise SettingsError("ENRICH_DEFAULT_TAGS is empty: name at least one tag, e.g. amenity,shop.")
    # Staged POIs must outlive every retry of their store step, or a long
    # database outage would lose them (and only a refetch could bring them back).
    store_retries = read("STORE_MAX_RETRIES", int, non_negative, "a whole number >= 0")
    stage_ttl = read("STAGE_TTL_S", float, positive, "seconds > 0")
    if stage_ttl <= store_retries * max_backoff:
        raise SettingsError(
            f"STAGE_TTL_S={stage_ttl:g} must exceed STORE_MAX_RETRIES x RETRY_MAX_BACKOFF_S "
            f"= {store_retries * max_backoff:g}: staged POIs would expire while their store is still retried."
        )
    return Settings(
        database_url=read("DATABASE_URL", str, _is_database_url, "postgresql://... or sqlite:///path"),
        redis_url=read(
            "REDIS_URL", str, lambda v: urlsplit(v).scheme in {"redis", "rediss", "unix"}, "redis://..."
        ),
        broker=read("BROKER", str.lower, lambda v: v in {"redis", "stub"}, "redis or stub"),
        state_backend=read("STATE_BACKEND", str.lower, lambda v: v in {"redis", "memory"}, "redis or memory"),
        broker_heartbeat_timeout_s=read("BROKER_HEARTBEAT_TIMEOUT_S", float, positive, "seconds > 0"),
        broker_maintenance_chance=read(
            "BROKER_MAINTENANCE_CHANCE",
            int,
            lambda v: 0 <= v <= 1_000_000,
            "a whole number from 0 to 1000000",
        ),
        overpass_url=read("OVERPASS_URL", str, _is_http_url, "an http(s) URL ending in /interpreter"),
        user_agent=user_agent,
        query_timeout_s=query_timeout,
        maxsize_bytes=read("OVERPASS_MAXSIZE_BYTES", int, positive, "a number of bytes > 0"),
        http_timeout_s=http_timeout,
        queue=read(
            "ENRICH_QUEUE", str, lambda v: v.replace("_", "").replace("-", "").isalnum(), "a queue name"
        ),
        default_tags=default_tags,
        max_area_deg2=read("ENRICH_MAX_AREA_DEG2", float, positive, "square degrees > 0"),
        min_tile_deg=read("ENRICH_MIN_TILE_DEG", float, positive, "degrees > 0"),
        max_tags=read("ENRICH_MAX_TAGS", int, positive, "a whole number > 0"),
        quota_requests=read("QUOTA_REQUESTS", int, non_negative, "a whole number >= 0"),
        quota_bytes=read("QUOTA_BYTES", int, non_negative, "a number of bytes >= 0"),
        quota_window_s=read("QUOTA_WINDOW_S", int, positive, "whole seconds > 0"),
        quota_jitter_s=read("QUOTA_JITTER_S", float, non_negative, "seconds >= 0"),
        semaphore_permits=read("SEMAPHORE_PERMITS", int, positive, "a whole number > 0"),
        semaphore_lease_s=lease,
        semaphore_wait_s=read("SEMAPHORE_WAIT_S", float, non_negative, "seconds >= 0"),
        semaphore_retry_min_s=retry_min,
        semaphore_retry_max_s=read(
            "SEMAPHORE_RETRY_MAX_S", float, lambda v: v >= retry_min, "seconds >= SEMAPHORE_RETRY_MIN_S"
        ),
        breaker_failure_threshold=read("BREAKER_FAILURE_THRESHOLD", int, positive, "a whole number > 0"),
        breaker_cooldown_s=read("BREAKER_COOLDOWN_S", float, positive, "seconds > 0"),
        rate_limit_pause_s=read("RATE_LIMIT_PAUSE_S", float, non_negative, "seconds >= 0"),
        retry_max=read("RETRY_MAX", int, non_negative, "a whole number >= 0"),
        retry_min_backoff_s=min_backoff,
        retry_max_backoff_s=max_backoff,
        store_max_retries=store_retries,
        message_max_bytes=read("MESSAGE_MAX_BYTES", int, lambda v: v >= 4096, "a number of bytes >= 4096"),
        stage_chunk_bytes=read("STAGE_CHUNK_BYTES", int, lambda v: v >= 1024, "a number of bytes >= 1024"),
        stage_ttl_s=stage_ttl,
    )


def _is_database_url(value: str) -> bool:
    scheme = urlsplit(value).scheme
    return scheme in {"sqlite", "postgresql", "postgres"}


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in {"http", "https"} and bool(parts.netloc) and parts.path.endswith("/interpreter")

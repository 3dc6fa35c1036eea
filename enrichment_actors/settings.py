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

from enrichment_middleware.policy.pacing import PacingLimits
from enrichment_middleware.redaction import redact_url

from .overpass_client import is_sendable_header
from .overpass_endpoints import Endpoint, EndpointError, EndpointSettings, require_contact, resolve_endpoints
from .overpass_responses import cut
from .version import __version__

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


#: The longest a job admitted by the pacing sleeps for its slot, its permit held.
PACING_MAX_WAIT_S = PacingLimits.max_wait_s


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
        "Dramatiq broker (`BROKER=redis`) and the fleet-wide quota/semaphore/breaker state",
    ),
    Setting(
        "BROKER",
        "redis",
        "`redis` or `rabbitmq` (workers started by the `dramatiq` CLI), or `stub` (in-process: the "
        "embedded demo)",
    ),
    Setting(
        "RABBITMQ_URL",
        "amqp://guest:guest@localhost:5672/%2F",
        "The RabbitMQ broker when `BROKER=rabbitmq` (amqp:// or amqps://; `%2F` is the default vhost)",
    ),
    Setting(
        "STATE_REDIS_URL",
        "",
        "Redis of the fleet-wide state (quota, permits, breaker, pause, parked jobs); default `REDIS_URL`. "
        "Needed with any broker: RabbitMQ holds only the queues",
    ),
    Setting(
        "STATE_BACKEND", "redis", "`redis` (shared by the fleet) or `memory` (one process only: tests, demo)"
    ),
    Setting(
        "REDIS_CLUSTER",
        "false",
        "`true`: `STATE_REDIS_URL` names a node of a Redis Cluster (the broker must then be RabbitMQ or "
        "another Redis: Dramatiq's Redis broker cannot run on a cluster)",
    ),
    Setting(
        "REDIS_SENTINELS",
        "",
        "`host:port,...` of Redis Sentinels: the state lives on the primary they name; `STATE_REDIS_URL` "
        "then gives only password and database. Each park waits for one replica (`WAIT`)",
    ),
    Setting(
        "REDIS_SENTINEL_MASTER", "mymaster", "The primary's name in the Sentinels' `sentinel monitor` line"
    ),
    Setting(
        "BROKER_HEARTBEAT_TIMEOUT_S",
        "60",
        "Messages of a worker silent this long are handed to others (Redis broker only)",
    ),
    Setting(
        "BROKER_MAINTENANCE_CHANCE",
        "10000",
        "Broker commands in a million that also hand a dead worker's messages on (Dramatiq's default is 1000; Redis broker only)",
    ),
    Setting(
        "OVERPASS_URL",
        "https://overpass-api.de/api/interpreter",
        "Overpass interpreter endpoint; several, comma-separated, for your own servers only (a public "
        "instance must be the only one)",
    ),
    Setting(
        "OVERPASS_PROFILE",
        "auto",
        "`auto` (public for the known public instances, private otherwise) or `public` (the public rules "
        "for any URL); nothing makes a public instance private",
    ),
    Setting(
        "OVERPASS_CONTACT",
        "",
        "Who to contact about this client (e-mail or URL); goes into the User-Agent. Required by the public "
        "profile: workers refuse to start without it",
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
        "OVERPASS_MAX_ANSWER_BYTES",
        "134217728",
        "Largest answer read, decoded (128 MiB): a larger one ends the call and its box is split "
        "(`[maxsize]` bounds the server's memory, not the answer)",
    ),
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
        "ENRICH_COVERAGE",
        "true",
        "`true`: jobs are cut into tiles and the coverage ledger skips fresh tiles and coalesces tiles "
        'being fetched; `false`: every job fetches its own box (docs/architecture.md, "Coverage")',
    ),
    Setting(
        "ENRICH_TILE_DEG",
        "0.02",
        "Side of the global tile grid, in degrees (must divide 180 on the 1e-7 grid: 0.01, 0.02, 0.05...)",
    ),
    Setting("ENRICH_FRESH_S", "86400", "A tile fetched this many seconds ago or less is fresh: no call"),
    Setting(
        "ENRICH_CLAIM_TTL_S",
        "3600",
        "How long a tile claim outlives its leader's last attempt (a dead worker's claim expires then)",
    ),
    Setting(
        "ENRICH_REFRESH_DIFF",
        "true",
        "`true`: a forced fetch (refresh) of tiles in the ledger asks only for what changed since they were "
        "fetched (an augmented diff); `false`: it fetches them whole",
    ),
    Setting(
        "ENRICH_DIFF_MAX_AGE_S",
        "2592000",
        "Tiles last fetched longer ago than this (30 days) are fetched whole rather than as a diff",
    ),
    Setting(
        "REFRESH_BUDGET_SHARE",
        "0.2",
        "Most of QUOTA_REQUESTS a day that `enrichment refresh` may spend (per run: the share of one interval)",
    ),
    Setting(
        "QUOTA_REQUESTS",
        "10000",
        "Overpass requests per quota window, per endpoint (public profile: at most 10,000 a UTC day)",
    ),
    Setting(
        "QUOTA_BYTES",
        "1000000000",
        "Response bytes per quota window (public profile: at most 10^9 a UTC day, the operators' 1 GB)",
    ),
    Setting(
        "QUOTA_SERVER_S",
        "300",
        "Server seconds per quota window, per endpoint, from request sent to status line (public profile: at most 300 a UTC day, the operators' fair share: roughly 150 to 3,000 calls)",
    ),
    Setting("QUOTA_WINDOW_S", "86400", "Quota window, aligned to the epoch: 86400 is a UTC day"),
    Setting("QUOTA_JITTER_S", "300", "Jobs denied by the quota come back at the next window plus up to this"),
    Setting(
        "SEMAPHORE_PERMITS",
        "2",
        "Overpass calls in flight across the fleet, per private endpoint (a public one gets 1)",
    ),
    Setting(
        "OVERPASS_PUBLIC_PERMITS_OVERRIDE",
        "",
        "Calls in flight on a public endpoint instead of 1; breaks its rules (one user, one script) unless "
        "its operators agreed",
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
        "RATE_LIMIT_PAUSE_S",
        "30",
        "Least pause of every worker after a 429 (the operators of the public instances ask for 30 s or more)",
    ),
    Setting(
        "HOLD_RECHECK_S",
        "60",
        "A job deferred while its endpoint is held (a 406, 403 or redirect) looks again after this",
    ),
    Setting(
        "PACING_INTERVAL_S",
        "0",
        "Seconds between call starts, fleet-wide, per endpoint; 0: not paced (private) or the day's "
        "budget spread over the rest of the day (public)",
    ),
    Setting("PACING_BURST", "1", "Calls that may start back to back after a quiet spell (private endpoints)"),
    Setting(
        "PACING_MIN_INTERVAL_S",
        "1.0",
        "Least interval between call starts on a public endpoint, however much budget is left",
    ),
    Setting("RETRY_MAX", "5", "Retries of a transient failure before the job is dead-lettered"),
    Setting("RETRY_MIN_BACKOFF_S", "5", "Smallest retry backoff"),
    Setting("RETRY_MAX_BACKOFF_S", "600", "Largest retry backoff (never exceeded)"),
    Setting(
        "STORE_MAX_RETRIES", "20", "Retries of storing fetched POIs (never refetched) before dead-lettering"
    ),
    Setting(
        "OUTAGE_MAX_S",
        "86400",
        "How long a job waits out PostgreSQL or the state backend unreachable (not a retry) before it is "
        "dead-lettered",
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
    rabbitmq_url: str = dataclasses.field(repr=False)
    state_redis_url: str = dataclasses.field(repr=False)
    state_backend: str
    broker_heartbeat_timeout_s: float
    broker_maintenance_chance: int
    overpass_url: str = dataclasses.field(repr=False)
    overpass_urls: tuple[str, ...] = dataclasses.field(repr=False)
    overpass_profile: str
    overpass_contact: str
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
    quota_server_s: float
    quota_window_s: int
    quota_jitter_s: float
    semaphore_permits: int
    public_permits_override: int | None
    semaphore_lease_s: float
    semaphore_wait_s: float
    semaphore_retry_min_s: float
    semaphore_retry_max_s: float
    breaker_failure_threshold: int
    breaker_cooldown_s: float
    rate_limit_pause_s: float
    pacing_interval_s: float
    pacing_burst: int
    pacing_min_interval_s: float
    retry_max: int
    retry_min_backoff_s: float
    retry_max_backoff_s: float
    store_max_retries: int
    message_max_bytes: int
    stage_chunk_bytes: int
    stage_ttl_s: float
    coverage: bool = True
    tile_deg: float = 0.02
    fresh_s: float = 86400.0
    claim_ttl_s: float = 3600.0
    refresh_budget_share: float = 0.2
    refresh_diff: bool = True
    diff_max_age_s: float = 2592000.0
    redis_cluster: bool = False
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_master: str = "mymaster"
    max_answer_bytes: int = 134217728
    outage_max_s: float = 86400.0
    hold_recheck_s: float = 60.0

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests, demo)."""
        return dataclasses.replace(self, **changes)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The Overpass endpoints, each with its profile and limits (:mod:`.overpass_endpoints`)."""
        return resolve_endpoints(self.endpoint_settings())

    def endpoint_settings(self) -> EndpointSettings:
        """The settings the endpoints' profiles and limits come from."""
        return EndpointSettings(
            urls=self.overpass_urls,
            profile=self.overpass_profile,
            contact=self.overpass_contact,
            public_permits_override=self.public_permits_override,
            permits=self.semaphore_permits,
            quota_requests=self.quota_requests,
            quota_bytes=self.quota_bytes,
            quota_server_s=self.quota_server_s,
            quota_window_s=self.quota_window_s,
            pacing_interval_s=self.pacing_interval_s,
            pacing_burst=self.pacing_burst,
            pacing_min_interval_s=self.pacing_min_interval_s,
            rate_limit_pause_s=self.rate_limit_pause_s,
        )


def check_startable(settings: Settings) -> Settings:
    """``settings`` if a worker may call its endpoints with them; else SettingsError saying what to set.

    Apart from :func:`load_settings`, which tests and tools call with partial
    settings: the runtime the package builds when imported (by the workers,
    the demo and the ``enrichment`` commands) calls it, so with a public
    endpoint and no contact no worker starts.
    """
    try:
        require_contact(settings.endpoints, settings.overpass_contact)
    except EndpointError as exc:
        raise SettingsError(str(exc)) from None
    return settings


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings table from ``environ`` (default ``os.environ``).

    Raises:
      SettingsError: naming the first variable whose value is unusable.
    """
    env = os.environ if environ is None else environ
    raw = {row.env: env.get(row.env, "").strip() or row.default for row in TABLE}
    # The shared state lives beside the broker unless it is put elsewhere.
    raw["STATE_REDIS_URL"] = raw["STATE_REDIS_URL"] or raw["REDIS_URL"]

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
    # A permit is held from admission: through the pacing's longest wait, then the call's deadline.
    held = http_timeout + PACING_MAX_WAIT_S
    if lease <= held:
        raise SettingsError(
            f"SEMAPHORE_LEASE_S={lease:g} must exceed OVERPASS_HTTP_TIMEOUT_S={http_timeout:g} plus the "
            f"pacing's longest wait ({PACING_MAX_WAIT_S:g} s) = {held:g}: otherwise a permit can expire "
            "while its call is still in flight."
        )
    contact = raw["OVERPASS_CONTACT"]
    _check_contact(contact)
    # Without a contact (a private endpoint may do without) the User-Agent names
    # the product only: no placeholder every such deployment would share.
    user_agent = raw["OVERPASS_USER_AGENT"] or (
        f"overpass-enrichment/{__version__} (+contact: {contact})"
        if contact
        else f"overpass-enrichment/{__version__}"
    )
    _check_sendable(user_agent, raw)
    urls = tuple(url.strip() for url in raw["OVERPASS_URL"].split(",") if url.strip())
    for url in urls:
        if not _is_http_url(url):
            raise SettingsError(
                f"OVERPASS_URL={redact_url(raw['OVERPASS_URL'])!r} is not valid: expected an http(s) URL ending "
                "in /interpreter, or several separated by commas."
            )
    if not urls:
        raise SettingsError("OVERPASS_URL is empty: give an http(s) URL ending in /interpreter.")
    raw_override = raw["OVERPASS_PUBLIC_PERMITS_OVERRIDE"]
    permits_override = (
        read("OVERPASS_PUBLIC_PERMITS_OVERRIDE", int, positive, "a whole number > 0, or empty")
        if raw_override
        else None
    )
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
    settings = Settings(
        database_url=read("DATABASE_URL", str, _is_database_url, "postgresql://... or sqlite:///path"),
        redis_url=read("REDIS_URL", str, _is_redis_url, "redis://..."),
        broker=read(
            "BROKER", str.lower, lambda v: v in {"redis", "rabbitmq", "stub"}, "redis, rabbitmq or stub"
        ),
        rabbitmq_url=read("RABBITMQ_URL", str, _is_amqp_url, "amqp://user:pass@host:5672/vhost"),
        state_redis_url=read("STATE_REDIS_URL", str, _is_redis_url, "redis://..."),
        state_backend=read("STATE_BACKEND", str.lower, lambda v: v in {"redis", "memory"}, "redis or memory"),
        broker_heartbeat_timeout_s=read("BROKER_HEARTBEAT_TIMEOUT_S", float, positive, "seconds > 0"),
        broker_maintenance_chance=read(
            "BROKER_MAINTENANCE_CHANCE",
            int,
            lambda v: 0 <= v <= 1_000_000,
            "a whole number from 0 to 1000000",
        ),
        overpass_url=urls[0],
        overpass_urls=urls,
        overpass_profile=read(
            "OVERPASS_PROFILE",
            str.lower,
            lambda v: v in {"auto", "public"},
            "auto or public (nothing makes a public instance private)",
        ),
        overpass_contact=contact,
        user_agent=user_agent,
        query_timeout_s=query_timeout,
        maxsize_bytes=read("OVERPASS_MAXSIZE_BYTES", int, positive, "a number of bytes > 0"),
        max_answer_bytes=read("OVERPASS_MAX_ANSWER_BYTES", int, positive, "a number of bytes > 0"),
        http_timeout_s=http_timeout,
        queue=read(
            "ENRICH_QUEUE", str, lambda v: v.replace("_", "").replace("-", "").isalnum(), "a queue name"
        ),
        default_tags=default_tags,
        max_area_deg2=read("ENRICH_MAX_AREA_DEG2", float, positive, "square degrees > 0"),
        min_tile_deg=read("ENRICH_MIN_TILE_DEG", float, positive, "degrees > 0"),
        max_tags=read("ENRICH_MAX_TAGS", int, positive, "a whole number > 0"),
        coverage=read("ENRICH_COVERAGE", _flag, lambda v: v is not None, "true or false"),
        tile_deg=read("ENRICH_TILE_DEG", float, _whole_tiles, "degrees that divide 180 into whole tiles"),
        fresh_s=read("ENRICH_FRESH_S", float, non_negative, "seconds >= 0"),
        claim_ttl_s=read("ENRICH_CLAIM_TTL_S", float, positive, "seconds > 0"),
        refresh_diff=read("ENRICH_REFRESH_DIFF", _flag, lambda v: v is not None, "true or false"),
        diff_max_age_s=read("ENRICH_DIFF_MAX_AGE_S", float, non_negative, "seconds >= 0"),
        refresh_budget_share=read(
            "REFRESH_BUDGET_SHARE", float, lambda v: 0 <= v <= 1, "a share from 0 to 1"
        ),
        quota_requests=read("QUOTA_REQUESTS", int, non_negative, "a whole number >= 0"),
        quota_bytes=read("QUOTA_BYTES", int, non_negative, "a number of bytes >= 0"),
        quota_server_s=read("QUOTA_SERVER_S", float, non_negative, "seconds >= 0"),
        quota_window_s=read("QUOTA_WINDOW_S", int, positive, "whole seconds > 0"),
        quota_jitter_s=read("QUOTA_JITTER_S", float, non_negative, "seconds >= 0"),
        semaphore_permits=read("SEMAPHORE_PERMITS", int, positive, "a whole number > 0"),
        public_permits_override=permits_override,
        semaphore_lease_s=lease,
        semaphore_wait_s=read("SEMAPHORE_WAIT_S", float, non_negative, "seconds >= 0"),
        semaphore_retry_min_s=retry_min,
        semaphore_retry_max_s=read(
            "SEMAPHORE_RETRY_MAX_S", float, lambda v: v >= retry_min, "seconds >= SEMAPHORE_RETRY_MIN_S"
        ),
        breaker_failure_threshold=read("BREAKER_FAILURE_THRESHOLD", int, positive, "a whole number > 0"),
        breaker_cooldown_s=read("BREAKER_COOLDOWN_S", float, positive, "seconds > 0"),
        rate_limit_pause_s=read("RATE_LIMIT_PAUSE_S", float, positive, "seconds > 0"),
        hold_recheck_s=read("HOLD_RECHECK_S", float, positive, "seconds > 0"),
        pacing_interval_s=read("PACING_INTERVAL_S", float, non_negative, "seconds >= 0 (0: see the README)"),
        pacing_burst=read("PACING_BURST", int, positive, "a whole number of calls > 0"),
        pacing_min_interval_s=read("PACING_MIN_INTERVAL_S", float, positive, "seconds > 0"),
        retry_max=read("RETRY_MAX", int, non_negative, "a whole number >= 0"),
        retry_min_backoff_s=min_backoff,
        retry_max_backoff_s=max_backoff,
        store_max_retries=store_retries,
        outage_max_s=read("OUTAGE_MAX_S", float, positive, "seconds > 0"),
        message_max_bytes=read("MESSAGE_MAX_BYTES", int, lambda v: v >= 4096, "a number of bytes >= 4096"),
        stage_chunk_bytes=read("STAGE_CHUNK_BYTES", int, lambda v: v >= 1024, "a number of bytes >= 1024"),
        stage_ttl_s=stage_ttl,
        redis_cluster=read("REDIS_CLUSTER", _flag, lambda v: v is not None, "true or false"),
        redis_sentinels=read(
            "REDIS_SENTINELS", _addresses, lambda v: v is not None, "host:port,host:port,..."
        ),
        redis_sentinel_master=read("REDIS_SENTINEL_MASTER", str, bool, "a name"),
    )
    if settings.redis_cluster and settings.redis_sentinels:
        raise SettingsError(
            "REDIS_CLUSTER=true and REDIS_SENTINELS are both set: a Redis is one or the other."
        )
    try:
        settings.endpoints  # noqa: B018 - resolving them is the check
    except EndpointError as exc:
        raise SettingsError(str(exc)) from None
    return settings


def _check_sendable(user_agent: str, raw: Mapping[str, str]) -> None:
    """Refuse a User-Agent http.client cannot send: it would fail every call, after the quota counted it."""
    if not is_sendable_header(user_agent):
        source = "OVERPASS_USER_AGENT" if raw["OVERPASS_USER_AGENT"] else "OVERPASS_CONTACT"
        raise SettingsError(
            f"{source}={cut(ascii(raw[source]), 80)} cannot be sent in the User-Agent header: use printable "
            "ASCII only, no line breaks (an e-mail address or URL; a domain in its xn-- form)."
        )


def _check_contact(contact: str) -> None:
    """Refuse a contact that says nothing of how to reach whoever runs this (``me``); empty is judged later."""
    if contact and not _identifies(contact):
        raise SettingsError(
            f"OVERPASS_CONTACT={cut(ascii(contact), 80)} does not say how to reach you: give an e-mail "
            "address (ops@example.org) or a URL (https://example.org/contact); the Overpass operators "
            "block clients they cannot identify."
        )


def _identifies(contact: str) -> bool:
    """Whether ``contact`` is an e-mail address or an http(s) URL: something that says who to reach.

    Examples:
      >>> [_identifies(c) for c in ("ops@example.org", "https://example.org/contact", "me", "@", "http://")]
      [True, True, False, False, False]
    """
    if contact.lower().startswith(("http://", "https://")):
        return bool(urlsplit(contact).hostname)
    local, at, domain = contact.rpartition("@")
    return bool(at and local and domain) and not any(c.isspace() for c in contact)


def _whole_tiles(degrees: float) -> bool:
    units = round(degrees * 10_000_000)
    return units > 0 and (1_800_000_000 % units) == 0


def _flag(value: str) -> bool:
    if value.lower() in {"true", "1", "yes"}:
        return True
    if value.lower() in {"false", "0", "no"}:
        return False
    raise ValueError(value)


def _addresses(value: str) -> tuple[str, ...]:
    entries = tuple(entry.strip() for entry in value.split(",") if entry.strip())
    for entry in entries:
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(value)
    return entries


def _is_redis_url(value: str) -> bool:
    return urlsplit(value).scheme in {"redis", "rediss", "unix"}


def _is_amqp_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in {"amqp", "amqps"} and bool(parts.hostname)


def _is_database_url(value: str) -> bool:
    scheme = urlsplit(value).scheme
    return scheme in {"sqlite", "postgresql", "postgres"}


def _is_http_url(value: str) -> bool:
    # Printable ASCII with a valid port: what every call could send (requests fails at call time otherwise).
    if not is_sendable_header(value) or " " in value:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - reading it is the check
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and bool(parts.hostname) and parts.path.endswith("/interpreter")


#: The settings an app process reads to send jobs (:mod:`enrichment_actors.sender`): where the
#: product's queue is, its name, and the limits a job must keep. No worker-only setting.
SENDER_SETTINGS = (
    "BROKER",
    "REDIS_URL",
    "RABBITMQ_URL",
    "ENRICH_QUEUE",
    "ENRICH_DEFAULT_TAGS",
    "ENRICH_MAX_AREA_DEG2",
    "ENRICH_MAX_TAGS",
)


@dataclass(frozen=True)
class SenderSettings:
    """What a sender needs: the broker the product's workers consume, the queue, and the job limits."""

    broker: str
    redis_url: str
    rabbitmq_url: str
    queue: str
    default_tags: tuple[str, ...]
    max_area_deg2: float
    max_tags: int


def load_sender_settings(environ: Mapping[str, str] | None = None) -> SenderSettings:
    """Read only :data:`SENDER_SETTINGS` from ``environ`` (default ``os.environ``), checked as the workers do.

    Every other setting is left at its default, so a process that only sends
    needs no ``OVERPASS_CONTACT``, ``DATABASE_URL`` or any other worker setting.

    Raises:
      SettingsError: naming the first of those variables whose value is unusable.
    """
    env = os.environ if environ is None else environ
    s = load_settings({name: env[name] for name in SENDER_SETTINGS if name in env})
    return SenderSettings(
        broker=s.broker,
        redis_url=s.redis_url,
        rabbitmq_url=s.rabbitmq_url,
        queue=s.queue,
        default_tags=s.default_tags,
        max_area_deg2=s.max_area_deg2,
        max_tags=s.max_tags,
    )

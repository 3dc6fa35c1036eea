"""Settings: every knob of the product, declared once and read from environment variables.

Each field of :class:`Settings` declares its variable, its default, how its
text is read and checked, what it means and whether a process that only sends
jobs needs it (:func:`.settings_declaration.setting`). :func:`load_settings`
reads them in that order, :func:`load_sender_settings` only the sender's, and
README.md's table is rendered from them (``python -m
enrichment_actors.settings_table``). Each default works on a laptop; an
unusable value stops start-up with one line naming the variable and what to
give.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enrichment_middleware.policy.pacing import PacingLimits

from .overpass_endpoints import Endpoint, EndpointError, EndpointSettings, require_contact, resolve_endpoints
from .settings_declaration import Derived, Setting, SettingsError, declared, read_declared, setting
from .settings_values import (
    addresses,
    contact,
    default_user_agent,
    flag,
    is_amqp_url,
    is_database_url,
    is_redis_url,
    non_negative,
    optional_int,
    positive,
    source_shares,
    source_weights,
    tags,
    urls,
    user_agent,
    whole_tiles,
)

__all__ = [
    "DEFAULT_TAGS",
    "PACING_MAX_WAIT_S",
    "SERVER_HOLD_S",
    "TABLE",
    "SenderSettings",
    "Setting",
    "Settings",
    "SettingsError",
    "check_startable",
    "load_sender_settings",
    "load_settings",
]

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


def _default_http_timeout(earlier: Mapping[str, Any]) -> str:
    # A rate-limited server holds a query up to 15 s waiting for a slot before
    # its [timeout] starts: a deadline of query timeout + 10 s would end calls
    # the server is still running within its rules (and kill them).
    return str(earlier["query_timeout_s"] + SERVER_HOLD_S + 10)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The product's configuration, validated. Its repr leaves out the URLs: they may carry passwords.

    One field per variable, in README.md's order: a default derived from
    another setting comes after it. Workers need every one; ``sender=True``
    marks what a process that only sends jobs needs (:class:`SenderSettings`).
    """

    database_url: str = setting(
        "DATABASE_URL",
        "sqlite:///enrichment.sqlite3",
        str,
        is_database_url,
        "postgresql://... or sqlite:///path",
        secret=True,
        doc="Where POIs are stored: `postgresql://user:pass@host:5432/db` or `sqlite:///path`",
    )
    redis_url: str = setting(
        "REDIS_URL",
        "redis://localhost:6379/0",
        str,
        is_redis_url,
        "redis://...",
        sender=True,
        secret=True,
        doc="Dramatiq broker (`BROKER=redis`) and the fleet-wide quota/semaphore/breaker state",
    )
    broker: str = setting(
        "BROKER",
        "redis",
        str.lower,
        lambda v: v in {"redis", "rabbitmq", "stub"},
        "redis, rabbitmq or stub",
        sender=True,
        doc=(
            "`redis` or `rabbitmq` (workers started by the `dramatiq` CLI), or `stub` (in-process: the "
            "embedded demo)"
        ),
    )
    rabbitmq_url: str = setting(
        "RABBITMQ_URL",
        "amqp://guest:guest@localhost:5672/%2F",
        str,
        is_amqp_url,
        "amqp://user:pass@host:5672/vhost",
        sender=True,
        secret=True,
        doc="The RabbitMQ broker when `BROKER=rabbitmq` (`amqp://` or `amqps://`; `%2F` is the default vhost)",
    )
    state_redis_url: str = setting(
        "STATE_REDIS_URL",
        Derived("`REDIS_URL`", lambda v: v["redis_url"]),
        str,
        is_redis_url,
        "redis://...",
        secret=True,
        doc=(
            "Redis of the fleet-wide state (quota, permits, breaker, pause, parked jobs). Needed with "
            "any broker: RabbitMQ holds only the queues"
        ),
    )
    state_backend: str = setting(
        "STATE_BACKEND",
        "redis",
        str.lower,
        lambda v: v in {"redis", "memory"},
        "redis or memory",
        doc="`redis` (shared by the fleet) or `memory` (one process only: tests, demo)",
    )
    redis_cluster: bool = setting(
        "REDIS_CLUSTER",
        "false",
        flag,
        expect="true or false",
        doc=(
            "`true`: `STATE_REDIS_URL` names a node of a Redis Cluster (the broker must then be "
            "RabbitMQ or another Redis: Dramatiq's Redis broker cannot run on a cluster)"
        ),
    )
    redis_sentinels: tuple[str, ...] = setting(
        "REDIS_SENTINELS",
        "",
        addresses,
        expect="host:port,host:port,...",
        doc=(
            "`host:port,...` of Redis Sentinels: the state lives on the primary they name; "
            "`STATE_REDIS_URL` then gives only password and database. Each park waits for one replica "
            "(`WAIT`)"
        ),
    )
    redis_sentinel_master: str = setting(
        "REDIS_SENTINEL_MASTER",
        "mymaster",
        str,
        bool,
        "a name",
        doc="The primary's name in the Sentinels' `sentinel monitor` line",
    )
    broker_heartbeat_timeout_s: float = setting(
        "BROKER_HEARTBEAT_TIMEOUT_S",
        "60",
        float,
        positive,
        "seconds > 0",
        sender=True,
        doc="Messages of a worker silent this long are handed to others (Redis broker only)",
    )
    broker_maintenance_chance: int = setting(
        "BROKER_MAINTENANCE_CHANCE",
        "10000",
        int,
        lambda v: 0 <= v <= 1_000_000,
        "a whole number from 0 to 1000000",
        sender=True,
        doc=(
            "Broker commands in a million that also hand a dead worker's messages on (Dramatiq's "
            "default is 1000: a killed worker's messages could wait long on a quiet queue; Redis broker"
            " only)"
        ),
    )
    overpass_urls: tuple[str, ...] = setting(
        "OVERPASS_URL",
        "https://overpass-api.de/api/interpreter",
        urls,
        secret=True,
        doc=(
            "Overpass interpreter endpoint; several, comma-separated, for your own servers only (a "
            'public instance must be the only one: "one user, one script")'
        ),
    )
    overpass_profile: str = setting(
        "OVERPASS_PROFILE",
        "auto",
        str.lower,
        lambda v: v in {"auto", "public"},
        "auto or public (nothing makes a public instance private)",
        doc=(
            "`auto` (public for the known public instances, private otherwise) or `public` (the public "
            "rules for any URL); nothing makes a public instance private. See [Endpoint "
            "profiles](docs/architecture.md#endpoint-profiles)"
        ),
    )
    overpass_contact: str = setting(
        "OVERPASS_CONTACT",
        "",
        contact,
        doc=(
            "Who to contact about this client: an e-mail address or an http(s) URL (anything else is "
            "refused at start); goes into the User-Agent. **Required by the public profile**: workers "
            "refuse to start without it (the operators block scripts that do not identify themselves)"
        ),
    )
    user_agent: str = setting(
        "OVERPASS_USER_AGENT",
        Derived("`overpass-enrichment/VERSION (+contact: OVERPASS_CONTACT)`", default_user_agent),
        user_agent,
        doc="Full User-Agent, if you want your own (the public profile still needs `OVERPASS_CONTACT`)",
    )
    query_timeout_s: int = setting(
        "OVERPASS_QUERY_TIMEOUT_S",
        "25",
        int,
        positive,
        "a whole number of seconds > 0",
        doc="`[timeout:N]` of each query; honest small values get admitted sooner",
    )
    maxsize_bytes: int = setting(
        "OVERPASS_MAXSIZE_BYTES",
        "67108864",
        int,
        positive,
        "a number of bytes > 0",
        doc="`[maxsize:N]` of each query (64 MiB)",
    )
    max_answer_bytes: int = setting(
        "OVERPASS_MAX_ANSWER_BYTES",
        "134217728",
        int,
        positive,
        "a number of bytes > 0",
        doc=(
            "Largest answer read, decoded (128 MiB): a larger one ends the call and its box is split "
            "(`[maxsize]` bounds the server's memory, not the answer). Answers are asked for gzip and "
            "only gzip is decoded"
        ),
    )
    http_timeout_s: float = setting(
        "OVERPASS_HTTP_TIMEOUT_S",
        Derived("query timeout + 25", _default_http_timeout),
        float,
        positive,
        "seconds > 0",
        doc=(
            "Deadline of a whole Overpass call, however slowly the body arrives (and of any one read): "
            "above the query's own `[timeout]` plus the 15 s a rate-limited server may hold a query "
            "waiting for a slot before that starts, plus 10 s. A call past it is a `timeout`; its query"
            " is killed only when it is our only call in flight"
        ),
    )
    queue: str = setting(
        "ENRICH_QUEUE",
        "enrichment",
        str,
        lambda v: v.replace("_", "").replace("-", "").isalnum(),
        "a queue name",
        sender=True,
        doc="Dramatiq queue of the enrichment actors",
    )
    default_tags: tuple[str, ...] = setting(
        "ENRICH_DEFAULT_TAGS",
        ",".join(DEFAULT_TAGS),
        tags,
        sender=True,
        doc="Tag filters used when a job names none",
    )
    max_area_deg2: float = setting(
        "ENRICH_MAX_AREA_DEG2",
        "0.25",
        float,
        positive,
        "square degrees > 0",
        sender=True,
        doc="Largest box a job may ask for, in square degrees",
    )
    min_tile_deg: float = setting(
        "ENRICH_MIN_TILE_DEG",
        "0.01",
        float,
        positive,
        "degrees > 0",
        doc="Smallest side a too-large query is split down to before it fails",
    )
    max_tags: int = setting(
        "ENRICH_MAX_TAGS",
        "20",
        int,
        positive,
        "a whole number > 0",
        sender=True,
        doc="Most tag filters one job may carry",
    )
    coverage: bool = setting(
        "ENRICH_COVERAGE",
        "true",
        flag,
        expect="true or false",
        doc=(
            "`true`: jobs are cut into tiles and the coverage ledger skips fresh tiles and coalesces "
            "tiles being fetched; `false`: every job fetches its own box (docs/architecture.md, "
            '"Coverage")'
        ),
    )
    tile_deg: float = setting(
        "ENRICH_TILE_DEG",
        "0.02",
        float,
        whole_tiles,
        "degrees that divide 180 into whole tiles",
        doc="Side of the global tile grid, in degrees (must divide 180 on the 1e-7 grid: 0.01, 0.02, 0.05...)",
    )
    fresh_s: float = setting(
        "ENRICH_FRESH_S",
        "86400",
        float,
        non_negative,
        "seconds >= 0",
        doc="A tile fetched this many seconds ago or less is fresh: no call",
    )
    claim_ttl_s: float = setting(
        "ENRICH_CLAIM_TTL_S",
        "3600",
        float,
        positive,
        "seconds > 0",
        doc=("How long a tile claim outlives its leader's last attempt (a dead worker's claim expires then)"),
    )
    refresh_diff: bool = setting(
        "ENRICH_REFRESH_DIFF",
        "true",
        flag,
        expect="true or false",
        doc=(
            "`true`: a forced fetch (refresh) of tiles in the ledger asks only for what changed since "
            "they were fetched (an augmented diff); `false`: it fetches them whole"
        ),
    )
    diff_max_age_s: float = setting(
        "ENRICH_DIFF_MAX_AGE_S",
        "2592000",
        float,
        non_negative,
        "seconds >= 0",
        doc="Tiles last fetched longer ago than this (30 days) are fetched whole rather than as a diff",
    )
    source_weights: tuple[tuple[str, float], ...] = setting(
        "ENRICH_SOURCE_WEIGHTS",
        "maps=4,default=1,refresh=1",
        source_weights,
        expect="name=weight,... (names of letters, digits, _ . -; weights > 0)",
        doc=(
            "Shares of the calls between the sources of jobs (`enrich.send(..., source=)`) while several "
            'wait for one endpoint; a source not listed weighs 1 (docs/architecture.md, "Fair shares")'
        ),
    )
    refresh_budget_share: float = setting(
        "REFRESH_BUDGET_SHARE",
        "0.2",
        float,
        lambda v: 0 <= v <= 1,
        "a share from 0 to 1",
        doc=(
            "Most of QUOTA_REQUESTS a window that jobs of source `refresh` may make, enforced at "
            "admission; `enrichment refresh` sends at most that (per run: the share of one interval). "
            "An alias of `refresh=` in ENRICH_SOURCE_MAX_SHARE, which wins when it names refresh"
        ),
    )
    source_max_share: tuple[tuple[str, float], ...] = setting(
        "ENRICH_SOURCE_MAX_SHARE",
        "",
        source_shares,
        expect="name=share,... (names of letters, digits, _ . -; shares from 0 to 1)",
        doc=(
            "Most of QUOTA_REQUESTS a window that each source named may make, enforced at admission "
            "fleet-wide (its further jobs wait for the next window); a source not named has no cap of "
            "its own"
        ),
    )
    quota_requests: int = setting(
        "QUOTA_REQUESTS",
        "10000",
        int,
        non_negative,
        "a whole number >= 0",
        doc=("Overpass requests per quota window, per endpoint (public profile: at most 10,000 a UTC day)"),
    )
    quota_bytes: int = setting(
        "QUOTA_BYTES",
        "1000000000",
        int,
        non_negative,
        "a number of bytes >= 0",
        doc=(
            "Response bytes per quota window, per endpoint (public profile: at most 10^9 a UTC day, the"
            " operators' 1 GB)"
        ),
    )
    quota_server_s: float = setting(
        "QUOTA_SERVER_S",
        "300",
        float,
        non_negative,
        "seconds >= 0",
        doc=(
            "Server seconds per quota window, per endpoint, from request sent to status line (public "
            "profile: at most 300 a UTC day, the operators' fair share: roughly 150 to 3,000 calls)"
        ),
    )
    quota_window_s: int = setting(
        "QUOTA_WINDOW_S",
        "86400",
        int,
        positive,
        "whole seconds > 0",
        doc="Quota window, aligned to the epoch: 86400 is a UTC day",
    )
    quota_jitter_s: float = setting(
        "QUOTA_JITTER_S",
        "300",
        float,
        non_negative,
        "seconds >= 0",
        doc="Jobs denied by the quota come back at the next window plus up to this",
    )
    semaphore_permits: int = setting(
        "SEMAPHORE_PERMITS",
        "2",
        int,
        positive,
        "a whole number > 0",
        doc="Overpass calls in flight across the fleet, per private endpoint (a public one gets 1)",
    )
    public_permits_override: int | None = setting(
        "OVERPASS_PUBLIC_PERMITS_OVERRIDE",
        "",
        optional_int,
        lambda v: v is None or v > 0,
        "a whole number > 0, or empty",
        doc=(
            'Calls in flight on a public endpoint instead of 1: breaks its rules ("one user, one '
            'script") unless its operators agreed'
        ),
    )
    semaphore_lease_s: float = setting(
        "SEMAPHORE_LEASE_S",
        Derived("HTTP timeout + 60", lambda v: str(v["http_timeout_s"] + 60)),
        float,
        positive,
        "seconds > 0",
        doc=(
            "A permit held by a dead worker comes back after this; must exceed the HTTP timeout plus "
            "the pacing's longest wait (1 s)"
        ),
    )
    semaphore_wait_s: float = setting(
        "SEMAPHORE_WAIT_S",
        "1.0",
        float,
        non_negative,
        "seconds >= 0",
        doc="How long a worker thread waits for a permit before deferring the job",
    )
    semaphore_retry_min_s: float = setting(
        "SEMAPHORE_RETRY_MIN_S",
        "0.2",
        float,
        non_negative,
        "seconds >= 0",
        doc="A job that got no permit comes back after at least this",
    )
    semaphore_retry_max_s: float = setting(
        "SEMAPHORE_RETRY_MAX_S",
        "1.0",
        float,
        expect="seconds >= SEMAPHORE_RETRY_MIN_S",
        at_least="semaphore_retry_min_s",
        doc="... and at most this (uniformly spread, so waiters do not return together)",
    )
    breaker_failure_threshold: int = setting(
        "BREAKER_FAILURE_THRESHOLD",
        "3",
        int,
        positive,
        "a whole number > 0",
        doc="Consecutive upstream failures that open the circuit",
    )
    breaker_cooldown_s: float = setting(
        "BREAKER_COOLDOWN_S",
        "60",
        float,
        positive,
        "seconds > 0",
        doc="How long the circuit stays open before one probe",
    )
    rate_limit_pause_s: float = setting(
        "RATE_LIMIT_PAUSE_S",
        "30",
        float,
        positive,
        "seconds > 0",
        doc=(
            "Least pause of every worker after a 429 (the operators of the public instances ask for 30 "
            "s or more; below 30 is refused for them)"
        ),
    )
    hold_recheck_s: float = setting(
        "HOLD_RECHECK_S",
        "60",
        float,
        positive,
        "seconds > 0",
        doc="A job deferred while its endpoint is held (a 406, 403 or redirect) looks again after this",
    )
    pacing_interval_s: float = setting(
        "PACING_INTERVAL_S",
        "0",
        float,
        non_negative,
        "seconds >= 0 (0: see the README)",
        doc=(
            "Seconds between call starts, fleet-wide, per endpoint; 0: not paced (private) or the day's"
            " budget spread over the rest of the UTC day (public)"
        ),
    )
    pacing_burst: int = setting(
        "PACING_BURST",
        "1",
        int,
        positive,
        "a whole number of calls > 0",
        doc="Calls that may start back to back after a quiet spell (private endpoints; public: 1)",
    )
    pacing_min_interval_s: float = setting(
        "PACING_MIN_INTERVAL_S",
        "1.0",
        float,
        positive,
        "seconds > 0",
        doc="Least interval between call starts on a public endpoint, however much budget is left",
    )
    retry_max: int = setting(
        "RETRY_MAX",
        "5",
        int,
        non_negative,
        "a whole number >= 0",
        doc="Retries of a transient failure before the job is dead-lettered",
    )
    retry_min_backoff_s: float = setting(
        "RETRY_MIN_BACKOFF_S",
        "5",
        float,
        non_negative,
        "seconds >= 0",
        doc="Smallest retry backoff",
    )
    retry_max_backoff_s: float = setting(
        "RETRY_MAX_BACKOFF_S",
        "600",
        float,
        expect="seconds >= RETRY_MIN_BACKOFF_S",
        at_least="retry_min_backoff_s",
        doc="Largest retry backoff (never exceeded)",
    )
    store_max_retries: int = setting(
        "STORE_MAX_RETRIES",
        "20",
        int,
        non_negative,
        "a whole number >= 0",
        doc="Retries of storing fetched POIs (never refetched) before dead-lettering",
    )
    outage_max_s: float = setting(
        "OUTAGE_MAX_S",
        "86400",
        float,
        positive,
        "seconds > 0",
        doc=(
            "How long a job waits out PostgreSQL or the state backend unreachable (not a retry) before "
            "it is dead-lettered"
        ),
    )
    message_max_bytes: int = setting(
        "MESSAGE_MAX_BYTES",
        "1048576",
        int,
        lambda v: v >= 4096,
        "a number of bytes >= 4096",
        sender=True,
        doc="Largest message the product enqueues (1 MiB); a bigger `enrich` is refused at send",
    )
    stage_chunk_bytes: int = setting(
        "STAGE_CHUNK_BYTES",
        "1048576",
        int,
        lambda v: v >= 1024,
        "a number of bytes >= 1024",
        doc="Fetched POIs are staged in chunks of at most this much JSON: what one store step holds",
    )
    stage_ttl_s: float = setting(
        "STAGE_TTL_S",
        "86400",
        float,
        positive,
        "seconds > 0",
        doc="How long staged POIs wait for the database; must exceed STORE_MAX_RETRIES x RETRY_MAX_BACKOFF_S",
    )

    @property
    def overpass_url(self) -> str:
        """The first Overpass endpoint (a public instance is the only one)."""
        return self.overpass_urls[0]

    @property
    def source_shares(self) -> dict[str, float]:
        """The most of each window's requests each source may make: ENRICH_SOURCE_MAX_SHARE, with
        REFRESH_BUDGET_SHARE for ``refresh`` unless it names it."""
        return {"refresh": self.refresh_budget_share, **dict(self.source_max_share)}

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


@dataclass(frozen=True, kw_only=True)
class SenderSettings:
    """What a process that only sends jobs needs: where the queue is and what a job may ask for.

    The fields are those of :class:`Settings` declared with ``sender=True``,
    same names and types (a test keeps them in step).
    """

    redis_url: str = dataclasses.field(repr=False)
    broker: str
    rabbitmq_url: str = dataclasses.field(repr=False)
    broker_heartbeat_timeout_s: float
    broker_maintenance_chance: int
    queue: str
    default_tags: tuple[str, ...]
    max_area_deg2: float
    max_tags: int
    message_max_bytes: int


#: The settings in README.md's order.
TABLE: tuple[Setting, ...] = tuple(declaration for _, declaration in declared(Settings))


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
    """Read and validate every setting from ``environ`` (default ``os.environ``).

    Raises:
      SettingsError: naming the first variable whose value is unusable.
    """
    values = read_declared(declared(Settings), os.environ if environ is None else environ)
    return _check_together(Settings(**values))


def load_sender_settings(environ: Mapping[str, str] | None = None) -> SenderSettings:
    """Read and validate only what a process that sends jobs needs; no worker-only setting can stop it.

    Raises:
      SettingsError: naming the first variable whose value is unusable.
    """
    values = read_declared(declared(Settings, sender=True), os.environ if environ is None else environ)
    return SenderSettings(**values)


def _check_together(settings: Settings) -> Settings:
    """``settings`` if their values fit one another; else SettingsError naming the ones that clash."""
    s = settings
    # A permit is held from admission: through the pacing's longest wait, then the call's deadline.
    held = s.http_timeout_s + PACING_MAX_WAIT_S
    if s.semaphore_lease_s <= held:
        raise SettingsError(
            f"SEMAPHORE_LEASE_S={s.semaphore_lease_s:g} must exceed OVERPASS_HTTP_TIMEOUT_S={s.http_timeout_s:g} "
            f"plus the pacing's longest wait ({PACING_MAX_WAIT_S:g} s) = {held:g}: otherwise a permit can expire "
            "while its call is still in flight."
        )
    # Staged POIs must outlive every retry of their store step, or a long
    # database outage would lose them (and only a refetch could bring them back).
    if s.stage_ttl_s <= s.store_max_retries * s.retry_max_backoff_s:
        raise SettingsError(
            f"STAGE_TTL_S={s.stage_ttl_s:g} must exceed STORE_MAX_RETRIES x RETRY_MAX_BACKOFF_S "
            f"= {s.store_max_retries * s.retry_max_backoff_s:g}: staged POIs would expire while their store "
            "is still retried."
        )
    if s.redis_cluster and s.redis_sentinels:
        raise SettingsError(
            "REDIS_CLUSTER=true and REDIS_SENTINELS are both set: a Redis is one or the other."
        )
    try:
        s.endpoints  # noqa: B018 - resolving them is the check
    except EndpointError as exc:
        raise SettingsError(str(exc)) from None
    return s

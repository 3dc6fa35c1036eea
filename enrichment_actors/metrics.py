"""Metrics: every metric name, label and outcome value of the product, in one place.

Nothing else spells them: :mod:`enrichment_actors.prometheus` builds the
metrics from the specs below, the actors record through it, and the tests
read the names from here. An outcome says why one processed message of a
job ended: each job records exactly one final outcome (label
``final="true"``), plus one per deferral or retry (``final="false"``).

This module does not import ``prometheus_client``: it is imported by every
worker process before process boot, when importing that library would fix
its (non-multiprocess) storage for good.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

from enrichment_middleware.admission import STATE_UNAVAILABLE
from enrichment_middleware.breaker import CIRCUIT_OPEN
from enrichment_middleware.deferral import Defer
from enrichment_middleware.fair import SOURCE_CAPPED, WAITING_TURN
from enrichment_middleware.policy.breaker import BreakerStatus
from enrichment_middleware.policy.pause import HELD, PAUSED
from enrichment_middleware.quota import QUOTA_EXHAUSTED
from enrichment_middleware.semaphore import NO_PERMIT

from .jobs import InvalidJob
from .outages import DATABASE_UNAVAILABLE, OutageTooLong
from .overpass_responses import OverpassError, QueryTooLarge
from .store import PersistenceError

#: The actor whose success ends a job.
STORE_ACTOR = "store_pois"
#: The actors that store POIs: store_pois, and a fetch that stores its one-chunk answer itself.
STORING_ACTORS = ("fetch_pois", STORE_ACTOR)


class Outcome(enum.StrEnum):
    """The closed set of enrichment outcomes (label ``outcome``)."""

    #: POIs stored (final).
    SUCCESS = "success"
    #: The job was refused by validation and never reached Overpass (final).
    INVALID_REQUEST = "invalid_request"
    #: The quota window is spent; deferred to the next window.
    QUOTA_DENIED = "quota_denied"
    #: The circuit breaker is open; deferred until it probes.
    CIRCUIT_OPEN = "circuit_open"
    #: Overpass answered 429; the endpoint is paused fleet-wide and the job deferred to the pause end.
    RATE_LIMITED = "rate_limited"
    #: The endpoint is paused (an earlier 429): deferred to the pause end before any call.
    PAUSED = "paused"
    #: The endpoint is held (a 406 or 403): deferred, no call, until the hold is lifted.
    HELD = "held"
    #: Too early for the endpoint's pacing: deferred to the slot it reserved.
    PACED = "paced"
    #: Overpass refused the query text as a duplicate of one running or just run; deferred past its [timeout].
    DUPLICATE_QUERY = "duplicate_query"
    #: No semaphore permit came free within the wait; deferred briefly.
    DEFERRED_PERMIT = "deferred_permit"
    #: Jobs of other sources were waiting: the job waits in the fair room for its source's turn.
    WAITING_TURN = "waiting_turn"
    #: Its source made its cap of calls this quota window (ENRICH_SOURCE_MAX_SHARE): deferred to the next.
    SOURCE_CAPPED = "source_capped"
    #: The shared state (Redis) was unreachable; deferred, no call made.
    STATE_UNAVAILABLE = "state_unavailable"
    #: PostgreSQL was unreachable (the ledger, a store); deferred, not a retry.
    DATABASE_UNAVAILABLE = "database_unavailable"
    #: 504, other 5xx, connection error; retried.
    UPSTREAM_ERROR = "upstream_error"
    #: The HTTP call timed out; the query was killed and the job retried.
    TIMEOUT = "timeout"
    #: A cut-off or malformed body; retried.
    BAD_RESPONSE = "bad_response"
    #: A timeout/out-of-memory remark: the box was split into four child jobs (final for this job).
    SPLIT = "split"
    #: A timeout/out-of-memory remark at the smallest tile (final).
    QUERY_TOO_LARGE = "query_too_large"
    #: Overpass refused the query for good: 400, another runtime error (final). A 406 or 403 holds the endpoint instead.
    REJECTED = "rejected"
    #: A transient failure outlived its retries; dead-lettered (final).
    RETRIES_EXHAUSTED = "retries_exhausted"
    #: The fetched POIs could not be stored: retried, and final once retries are exhausted.
    PERSISTENCE_ERROR = "persistence_error"
    #: PostgreSQL or the state backend stayed unreachable for OUTAGE_MAX_S; dead-lettered (final).
    OUTAGE_TOO_LONG = "outage_too_long"
    #: An unexpected error of ours (a bug, the broker unreachable); retried.
    INTERNAL_ERROR = "internal_error"
    #: Every tile of the job was fetched within ENRICH_FRESH_S: no call (final).
    FRESH = "fresh"
    #: Every tile the job still needed is being fetched by another job: no call (final).
    COALESCED = "coalesced"
    #: A middleware dropped the message before the actor ran (Dramatiq's AgeLimit: older than ``max_age``) (final).
    SKIPPED = "skipped"


# --- Labels ---------------------------------------------------------------------------------------

#: Label names of our metrics.
ACTOR = "actor"
OUTCOME = "outcome"
FINAL = "final"
STATUS = "status"
POLICY = "policy"
STATE = "state"
RESOURCE = "resource"
QUEUE = "queue"
ENDPOINT = "endpoint"
SOURCE = "source"
#: The label of the sources ENRICH_SOURCE_WEIGHTS and the caps do not name, summed: the label set stays bounded.
OTHER_SOURCE = "other"
#: Label names of Dramatiq's stock metrics (kept, so existing dashboards still work).
QUEUE_NAME = "queue_name"
ACTOR_NAME = "actor_name"

#: Values of ``final``.
FINAL_TRUE = "true"
FINAL_FALSE = "false"

#: ``status`` of an Overpass call that returned POIs; a failed call carries the
#: ``label`` of its :class:`~.overpass_responses.OverpassError` class (see :func:`call_statuses`).
CALL_OK = "ok"

#: Values of ``resource`` on the quota gauges.
REQUESTS = "requests"
BYTES = "bytes"
#: Server time in seconds (the quota counts milliseconds): the operators' yardstick.
SERVER_SECONDS = "server_seconds"

#: Values of ``state`` on the breaker gauge: the breaker's own statuses.
BREAKER_STATES: tuple[str, ...] = tuple(status.value for status in BreakerStatus)


def final_label(final: bool) -> str:
    """The ``final`` label value for ``final``."""
    return FINAL_TRUE if final else FINAL_FALSE


def call_statuses() -> tuple[str, ...]:
    """Every value the ``status`` label can take: ``ok``, then each Overpass error's label."""
    labels: list[str] = []
    pending: list[type[OverpassError]] = [OverpassError]
    while pending:
        cls = pending.pop(0)
        if cls.label not in labels:
            labels.append(cls.label)
        pending.extend(cls.__subclasses__())
    return (CALL_OK, *sorted(labels))


# --- Metric specs ---------------------------------------------------------------------------------


class Kind(enum.StrEnum):
    """The Prometheus type of a metric."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: how it is declared, and the names its samples are exported under.

    Parameters:
      name: the metric name; a counter's samples get ``_total`` appended.
      kind: counter, gauge or histogram.
      help: what one unit of it means, for the exposition's ``# HELP`` line.
      labels: label names, in order.
      buckets: histogram bucket upper bounds.
      multiprocess_mode: for gauges written by worker processes: how the
        exposition combines the processes (``livesum``: the sum over live ones).
      fleet: a gauge the exposition process reads from the shared backend at
        scrape time, the same for every process.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    multiprocess_mode: str = ""
    fleet: bool = False

    @property
    def sample_name(self) -> str:
        """The name of its samples (``_total`` for counters; histograms add ``_bucket``/``_sum``/``_count``)."""
        return f"{self.name}_total" if self.kind is Kind.COUNTER else self.name


#: Seconds: an Overpass call takes from a few milliseconds (an error page) to its [timeout:N].
_CALL_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 180.0, 300.0)
#: Bytes: from an empty answer to the [maxsize:N] default of 512 MiB.
_RESPONSE_BYTES = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 5.12e8)
#: Milliseconds: Dramatiq's own buckets.
_MESSAGE_MS = (
    5,
    10,
    25,
    50,
    75,
    100,
    250,
    500,
    750,
    1000,
    2500,
    5000,
    7500,
    10000,
    30000,
    60000,
    600000,
    900000,
)

# Recorded by the worker processes (multiprocess files, summed by the exposition).
JOBS = MetricSpec(
    "enrichment_jobs",
    Kind.COUNTER,
    "Processed enrichment messages by why they ended; final=true once per job.",
    (ACTOR, OUTCOME, FINAL),
)
OVERPASS_CALLS = MetricSpec(
    "enrichment_overpass_calls",
    Kind.COUNTER,
    "Overpass interpreter calls by endpoint (host[:port]) and classification.",
    (ENDPOINT, STATUS),
)
OVERPASS_CALL_SECONDS = MetricSpec(
    "enrichment_overpass_call_duration_seconds",
    Kind.HISTOGRAM,
    "Time from sending an Overpass query to the last byte of the answer (or the failure).",
    (STATUS,),
    buckets=_CALL_SECONDS,
)
OVERPASS_RESPONSE_BYTES = MetricSpec(
    "enrichment_overpass_response_bytes",
    Kind.HISTOGRAM,
    "Body size of successful Overpass answers. The byte quota is charged these and the bytes of failed "
    "answers too (an error page, a body cut off or ending in a remark).",
    buckets=_RESPONSE_BYTES,
)
POIS_UPSERTED = MetricSpec("enrichment_pois_upserted", Kind.COUNTER, "POI rows inserted or updated.")
ELEMENTS_DROPPED = MetricSpec(
    "enrichment_elements_dropped",
    Kind.COUNTER,
    "Elements of successful Overpass answers left out as unusable (no usable type, id or position); "
    "the rest of each answer was stored.",
)
OSM_BASE_UNUSABLE = MetricSpec(
    "enrichment_osm_base_unusable",
    Kind.COUNTER,
    "Answers whose timestamp_osm_base could not be read (kept as none: ordered by their fetch time).",
)
POIS_DELETED = MetricSpec(
    "enrichment_pois_deleted",
    Kind.COUNTER,
    "POI rows deleted because a tile fetched again no longer returned them (coverage ledger).",
)

# Dramatiq's stock metrics, declared again so that they stay right for our actors.
MESSAGES = MetricSpec(
    "dramatiq_messages", Kind.COUNTER, "The total number of messages processed.", (QUEUE_NAME, ACTOR_NAME)
)
MESSAGE_ERRORS = MetricSpec(
    "dramatiq_message_errors",
    Kind.COUNTER,
    "Messages whose actor or middleware failed (deferrals are not errors).",
    (QUEUE_NAME, ACTOR_NAME),
)
MESSAGE_RETRIES = MetricSpec(
    "dramatiq_message_retries",
    Kind.COUNTER,
    "Failed messages scheduled again (once per retry; deferrals are not retries).",
    (QUEUE_NAME, ACTOR_NAME),
)
MESSAGE_REJECTS = MetricSpec(
    "dramatiq_message_rejects",
    Kind.COUNTER,
    "The total number of dead-lettered messages.",
    (QUEUE_NAME, ACTOR_NAME),
)
MESSAGES_IN_PROGRESS = MetricSpec(
    "dramatiq_messages_inprogress",
    Kind.GAUGE,
    "The number of messages in progress.",
    (QUEUE_NAME, ACTOR_NAME),
    multiprocess_mode="livesum",
)
DELAYED_MESSAGES_IN_PROGRESS = MetricSpec(
    "dramatiq_delayed_messages_inprogress",
    Kind.GAUGE,
    "Delayed messages held in worker memory until due (Retries parks its own waits instead).",
    (QUEUE_NAME, ACTOR_NAME),
    multiprocess_mode="livesum",
)
MESSAGE_DURATION = MetricSpec(
    "dramatiq_message_duration_milliseconds",
    Kind.HISTOGRAM,
    "The time spent processing messages.",
    (QUEUE_NAME, ACTOR_NAME),
    buckets=_MESSAGE_MS,
)

# Read from the shared backend at scrape time: the fleet-wide truth.
STATE_BACKEND_UP = MetricSpec(
    "enrichment_state_backend_up",
    Kind.GAUGE,
    "1 when the shared state (Redis) answered this scrape in time; 0 and no other fleet gauge otherwise.",
    fleet=True,
)
STATE_BACKEND_PERSISTENT = MetricSpec(
    "enrichment_state_backend_persistent",
    Kind.GAUGE,
    "1 when every Redis the workers use keeps its data on disk (AOF or RDB), 0 when one keeps nothing "
    "(a restart loses the queued and parked jobs), -1 when CONFIG could not tell.",
    fleet=True,
)
BREAKER_STATE = MetricSpec(
    "enrichment_breaker_state",
    Kind.GAUGE,
    "1 for the circuit breaker's current state, 0 for the others.",
    (POLICY, STATE),
    fleet=True,
)
BREAKER_FAILURES = MetricSpec(
    "enrichment_breaker_consecutive_failures",
    Kind.GAUGE,
    "Consecutive upstream failures counted by the closed breaker.",
    (POLICY,),
    fleet=True,
)
PERMITS_IN_USE = MetricSpec(
    "enrichment_semaphore_permits_in_use",
    Kind.GAUGE,
    "Calls in flight across the fleet.",
    (POLICY,),
    fleet=True,
)
PERMITS_LIMIT = MetricSpec(
    "enrichment_semaphore_permits_limit",
    Kind.GAUGE,
    "Permits in effect: the configured ones, capped by the upstream's reported rate limit.",
    (POLICY,),
    fleet=True,
)
SOURCE_WAITING = MetricSpec(
    "enrichment_source_waiting",
    Kind.GAUGE,
    "Jobs waiting in the endpoint's fair room, by source (sources not configured: other).",
    (POLICY, SOURCE),
    fleet=True,
)
SOURCE_CALLS = MetricSpec(
    "enrichment_source_calls",
    Kind.GAUGE,
    "Overpass calls made in the current quota window, by source (sources not configured: other).",
    (POLICY, SOURCE),
    fleet=True,
)
SOURCE_CAP = MetricSpec(
    "enrichment_source_cap",
    Kind.GAUGE,
    "Most calls a source may make per quota window (ENRICH_SOURCE_MAX_SHARE); absent: no cap of its own.",
    (POLICY, SOURCE),
    fleet=True,
)
QUOTA_USED = MetricSpec(
    "enrichment_quota_used",
    Kind.GAUGE,
    "Requests admitted, response bytes or server seconds charged in the current quota window.",
    (POLICY, RESOURCE),
    fleet=True,
)
QUOTA_LIMIT = MetricSpec(
    "enrichment_quota_limit",
    Kind.GAUGE,
    "The quota window's limit (absent when unlimited).",
    (POLICY, RESOURCE),
    fleet=True,
)
QUOTA_LEFT = MetricSpec(
    "enrichment_quota_left",
    Kind.GAUGE,
    "What is left of the quota window's limit (absent when unlimited).",
    (POLICY, RESOURCE),
    fleet=True,
)
QUOTA_SERVER_SECONDS_PER_CALL = MetricSpec(
    "enrichment_quota_server_seconds_per_call",
    Kind.GAUGE,
    "Mean server seconds per call in the current quota window (the prior before any call): "
    "a call is admitted only while the server time left covers it.",
    (POLICY,),
    fleet=True,
)
QUOTA_WINDOW_START = MetricSpec(
    "enrichment_quota_window_start_seconds",
    Kind.GAUGE,
    "Epoch time the current quota window started.",
    (POLICY,),
    fleet=True,
)
QUOTA_WINDOW_END = MetricSpec(
    "enrichment_quota_window_end_seconds",
    Kind.GAUGE,
    "Epoch time the next quota window starts.",
    (POLICY,),
    fleet=True,
)
PARKED_JOBS = MetricSpec(
    "enrichment_parked_jobs",
    Kind.GAUGE,
    "Messages parked in the shared backend until their deferral or retry backoff ends.",
    fleet=True,
)
PARKED_ORPHANS = MetricSpec(
    "enrichment_parked_orphans",
    Kind.GAUGE,
    "Parked messages ever found due without their payload (a counter kept in the shared backend): "
    "above 0 means lost jobs.",
    fleet=True,
)
ENDPOINT_PAUSED = MetricSpec(
    "enrichment_endpoint_paused",
    Kind.GAUGE,
    "1 while the endpoint is paused fleet-wide (after a 429), else 0.",
    (POLICY,),
    fleet=True,
)
ENDPOINT_PAUSE_REMAINING = MetricSpec(
    "enrichment_endpoint_pause_remaining_seconds",
    Kind.GAUGE,
    "Seconds left of the endpoint's pause (0 when none).",
    (POLICY,),
    fleet=True,
)
ENDPOINT_HELD = MetricSpec(
    "enrichment_endpoint_held",
    Kind.GAUGE,
    "1 while the endpoint is held (a 406 or 403: no calls until the settings change or release-hold), else 0.",
    (POLICY,),
    fleet=True,
)
PACING_INTERVAL = MetricSpec(
    "enrichment_pacing_interval_seconds",
    Kind.GAUGE,
    "Seconds between call starts the endpoint's pacing enforces now (0: pacing off).",
    (POLICY,),
    fleet=True,
)
QUEUE_MESSAGES = MetricSpec(
    "enrichment_queue_messages",
    Kind.GAUGE,
    "Messages in the broker queue (not parked ones): on Redis waiting, delayed or in flight; on RabbitMQ waiting or delayed.",
    (QUEUE,),
    fleet=True,
)

#: Every metric the worker processes record, in exposition order.
WORKER_METRICS: tuple[MetricSpec, ...] = (
    JOBS,
    OVERPASS_CALLS,
    OVERPASS_CALL_SECONDS,
    OVERPASS_RESPONSE_BYTES,
    POIS_UPSERTED,
    POIS_DELETED,
    ELEMENTS_DROPPED,
    OSM_BASE_UNUSABLE,
    MESSAGES,
    MESSAGE_ERRORS,
    MESSAGE_RETRIES,
    MESSAGE_REJECTS,
    MESSAGES_IN_PROGRESS,
    DELAYED_MESSAGES_IN_PROGRESS,
    MESSAGE_DURATION,
)
#: Every gauge the exposition reads from the shared backend.
FLEET_METRICS: tuple[MetricSpec, ...] = (
    STATE_BACKEND_UP,
    STATE_BACKEND_PERSISTENT,
    BREAKER_STATE,
    BREAKER_FAILURES,
    PERMITS_IN_USE,
    PERMITS_LIMIT,
    SOURCE_WAITING,
    SOURCE_CALLS,
    SOURCE_CAP,
    QUOTA_USED,
    QUOTA_LIMIT,
    QUOTA_LEFT,
    QUOTA_SERVER_SECONDS_PER_CALL,
    QUOTA_WINDOW_START,
    QUOTA_WINDOW_END,
    PARKED_JOBS,
    PARKED_ORPHANS,
    ENDPOINT_PAUSED,
    ENDPOINT_PAUSE_REMAINING,
    ENDPOINT_HELD,
    PACING_INTERVAL,
    QUEUE_MESSAGES,
)
ALL_METRICS: tuple[MetricSpec, ...] = WORKER_METRICS + FLEET_METRICS


# --- Outcomes -------------------------------------------------------------------------------------

_local = threading.local()


def note_outcome(outcome: Outcome) -> None:
    """Tell the metrics middleware how the current message ended when no exception says it (a split)."""
    _local.outcome = outcome


def take_noted_outcome() -> Outcome | None:
    """The outcome noted by the current message, if any, and forget it (one reader per message)."""
    outcome: Outcome | None = getattr(_local, "outcome", None)
    _local.outcome = None
    return outcome


def is_final(outcome: Outcome, *, failed: bool) -> bool:
    """Whether ``outcome`` ends its job (label ``final``): dead-lettered, dropped, stored, or split into new jobs."""
    return failed or outcome in (
        Outcome.SUCCESS,
        Outcome.SPLIT,
        Outcome.SKIPPED,
        Outcome.FRESH,
        Outcome.COALESCED,
    )


_DEFERRAL_OUTCOMES = {
    QUOTA_EXHAUSTED: Outcome.QUOTA_DENIED,
    CIRCUIT_OPEN: Outcome.CIRCUIT_OPEN,
    NO_PERMIT: Outcome.DEFERRED_PERMIT,
    WAITING_TURN: Outcome.WAITING_TURN,
    SOURCE_CAPPED: Outcome.SOURCE_CAPPED,
    STATE_UNAVAILABLE: Outcome.STATE_UNAVAILABLE,
    DATABASE_UNAVAILABLE: Outcome.DATABASE_UNAVAILABLE,
    Outcome.RATE_LIMITED.value: Outcome.RATE_LIMITED,
    Outcome.DUPLICATE_QUERY.value: Outcome.DUPLICATE_QUERY,
    PAUSED: Outcome.PAUSED,
    HELD: Outcome.HELD,
    # The Pacing middleware's reason (middleware/enrichment_middleware/pacing.py).
    Outcome.PACED.value: Outcome.PACED,
}

_RETRY_OUTCOMES = {
    "client_timeout": Outcome.TIMEOUT,
    "bad_response": Outcome.BAD_RESPONSE,
    # The actor turns a 429 into a deferral; should one escape, it is still a 429.
    "rate_limited": Outcome.RATE_LIMITED,
}


def outcome_of(
    actor_name: str, exception: BaseException | None, *, failed: bool, noted: Outcome | None = None
) -> Outcome | None:
    """How one processed message of a job ended; ``None`` when it only handed the job on.

    Parameters:
      actor_name: ``enrich``, ``fetch_pois`` or ``store_pois``.
      exception: what the actor (or a middleware before it) raised.
      failed: the message was dead-lettered (no retry follows).
      noted: an outcome the actor noted without raising (a split); an
        exception raised after the note wins.
    """
    if exception is None:
        if noted is not None:
            return noted
        if failed:
            # Failed by a middleware before the actor ran: nothing was stored.
            return Outcome.SKIPPED
        return Outcome.SUCCESS if actor_name == STORE_ACTOR else None
    if isinstance(exception, Defer):
        # A reason missing here is a bug of ours, never a wait for a permit.
        return _DEFERRAL_OUTCOMES.get(exception.reason, Outcome.INTERNAL_ERROR)
    if isinstance(exception, InvalidJob):
        return Outcome.INVALID_REQUEST
    if isinstance(exception, OutageTooLong):
        return Outcome.OUTAGE_TOO_LONG
    if isinstance(exception, PersistenceError):
        return Outcome.PERSISTENCE_ERROR
    if isinstance(exception, OverpassError):
        if not exception.retryable:
            return Outcome.QUERY_TOO_LARGE if isinstance(exception, QueryTooLarge) else Outcome.REJECTED
        if failed:
            return Outcome.RETRIES_EXHAUSTED
        return _RETRY_OUTCOMES.get(exception.label, Outcome.UPSTREAM_ERROR)
    if failed:
        return Outcome.PERSISTENCE_ERROR if actor_name == STORE_ACTOR else Outcome.RETRIES_EXHAUSTED
    return Outcome.INTERNAL_ERROR

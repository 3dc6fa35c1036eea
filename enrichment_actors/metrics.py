"""Metrics: every metric name, label and outcome value of the product, in one place.

Nothing else spells them. An outcome says why one message of a job ended:
each job records exactly one final outcome, plus one per deferral or retry.
"""

from __future__ import annotations

import enum
import threading

from middleware.admission import STATE_UNAVAILABLE
from middleware.breaker import CIRCUIT_OPEN
from middleware.deferral import Defer
from middleware.quota import QUOTA_EXHAUSTED
from middleware.semaphore import NO_PERMIT

from .jobs import InvalidJob
from .overpass_responses import OverpassError, QueryTooLarge
from .store import PersistenceError

#: The actor whose success ends a job.
STORE_ACTOR = "store_pois"


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
    #: Overpass answered 429; deferred by at least the rate-limit pause.
    RATE_LIMITED = "rate_limited"
    #: No semaphore permit came free within the wait; deferred briefly.
    DEFERRED_PERMIT = "deferred_permit"
    #: The shared state (Redis) was unreachable; deferred, no call made.
    STATE_UNAVAILABLE = "state_unavailable"
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
    #: Overpass refused the query for good: 400, 406, another runtime error (final).
    REJECTED = "rejected"
    #: A transient failure outlived its retries; dead-lettered (final).
    RETRIES_EXHAUSTED = "retries_exhausted"
    #: The fetched POIs could not be stored: retried, and final once retries are exhausted.
    PERSISTENCE_ERROR = "persistence_error"
    #: An unexpected error of ours (a bug, the broker unreachable); retried.
    INTERNAL_ERROR = "internal_error"


_local = threading.local()


def note_outcome(outcome: Outcome) -> None:
    """Tell the metrics middleware how the current message ended when no exception says it."""
    _local.outcome = outcome


def take_noted_outcome() -> Outcome | None:
    """The outcome noted by the current message, if any, and forget it."""
    outcome: Outcome | None = getattr(_local, "outcome", None)
    _local.outcome = None
    return outcome


def is_final(outcome: Outcome, *, failed: bool) -> bool:
    """Whether ``outcome`` ends its job (label ``final``): dead-lettered, stored, or split into new jobs."""
    return failed or outcome in (Outcome.SUCCESS, Outcome.SPLIT)


_DEFERRAL_OUTCOMES = {
    QUOTA_EXHAUSTED: Outcome.QUOTA_DENIED,
    CIRCUIT_OPEN: Outcome.CIRCUIT_OPEN,
    NO_PERMIT: Outcome.DEFERRED_PERMIT,
    STATE_UNAVAILABLE: Outcome.STATE_UNAVAILABLE,
    Outcome.RATE_LIMITED.value: Outcome.RATE_LIMITED,
}

_RETRY_OUTCOMES = {
    "client_timeout": Outcome.TIMEOUT,
    "bad_response": Outcome.BAD_RESPONSE,
}


def outcome_of(
    actor_name: str, exception: BaseException | None, *, failed: bool, noted: Outcome | None = None
) -> Outcome | None:
    """How one processed message of a job ended; ``None`` when it only handed the job on.

    Parameters:
      actor_name: ``enrich``, ``fetch_pois`` or ``store_pois``.
      exception: what the actor (or a middleware before it) raised.
      failed: the message was dead-lettered (no retry follows).
      noted: an outcome the actor noted without raising (a split).
    """
    if noted is not None:
        return noted
    if exception is None:
        return Outcome.SUCCESS if actor_name == STORE_ACTOR else None
    if isinstance(exception, Defer):
        return _DEFERRAL_OUTCOMES.get(exception.reason, Outcome.DEFERRED_PERMIT)
    if isinstance(exception, InvalidJob):
        return Outcome.INVALID_REQUEST
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

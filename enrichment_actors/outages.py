"""Outages cost time, not jobs: a job that meets PostgreSQL or the state backend unreachable waits.

``enrich`` (which reads the coverage ledger and claims tiles) and
``store_pois`` (which reads its staged chunk and upserts it) run their work
inside :func:`waiting_out_outages`. An outage met there defers the job
(:class:`~enrichment_middleware.deferral.Defer`: parked in the state backend, or in the
broker's delay queue when that is the one down) with a capped backoff,
without counting a retry. The outage's clock is kept in the message's
options, which every put-back copies: when the job has waited ``OUTAGE_MAX_S``
since it first met the outage, it is dead-lettered with
:class:`OutageTooLong`, naming the outage. Any other failure stops the
clock: the next outage starts it afresh.

A refusal of the data (:class:`~.store_errors.PersistenceError` that is not
:class:`~.store_errors.DatabaseUnreachable`) is no outage: it is retried and
then dead-lettered as before.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from dramatiq.middleware import CurrentMessage

from enrichment_middleware.admission import STATE_UNAVAILABLE
from enrichment_middleware.backends.base import BackendUnavailable
from enrichment_middleware.deferral import Defer
from enrichment_middleware.policy.backoff import exponential_backoff

from .store_errors import DatabaseUnreachable

logger = logging.getLogger(__name__)

#: Message option: when (epoch seconds) the job first met the outage it is waiting out.
OUTAGE_SINCE = "outage_since"
#: Message option: how many times it was deferred for that outage (the backoff's attempt).
OUTAGE_WAITS = "outage_waits"
#: Deferral reason (and metrics outcome) of a job waiting for PostgreSQL.
DATABASE_UNAVAILABLE = "database_unavailable"

#: No wait longer than this: an outage's end is noticed within a minute or so.
WAIT_CAP_S = 60.0


class OutageTooLong(Exception):
    """The job waited ``OUTAGE_MAX_S`` for an outage to end: dead-lettered, to be sent again once it is over."""

    retryable = False


@dataclass(frozen=True)
class OutagePolicy:
    """How a job waits out an outage.

    Examples:
      >>> policy = OutagePolicy(max_s=86400, min_wait_s=5, max_wait_s=600)
      >>> policy.cap_s
      60.0

    Parameters:
      max_s: how long, from the job's first meeting with the outage, before it is dead-lettered (``OUTAGE_MAX_S``).
      min_wait_s: the first wait (``RETRY_MIN_BACKOFF_S``).
      max_wait_s: the most any wait may be (``RETRY_MAX_BACKOFF_S``); never more than :data:`WAIT_CAP_S`.
    """

    max_s: float
    min_wait_s: float
    max_wait_s: float

    @property
    def cap_s(self) -> float:
        """The longest single wait."""
        return min(WAIT_CAP_S, self.max_wait_s)


@contextlib.contextmanager
def waiting_out_outages(
    policy: OutagePolicy,
    *,
    on_wait: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
) -> Iterator[None]:
    """Run the block; turn an outage met in it into a deferral of the running message, or, past
    ``policy.max_s``, into :class:`OutageTooLong`.

    ``on_wait`` runs before each deferral for PostgreSQL (say, to keep the
    job's staged POIs alive while it waits). The clock is the hosts' epoch
    time: the workers that pick the job up again share it.

    Raises:
      Defer: the job comes back later, no retry counted.
      OutageTooLong: the outage lasted longer than ``policy.max_s``.
    """
    try:
        yield
        # Past the outage: the next one is a new one.
        _options().pop(OUTAGE_SINCE, None)
        _options().pop(OUTAGE_WAITS, None)
    except Defer:
        raise
    except DatabaseUnreachable as exc:
        _quietly(on_wait)
        raise _wait("PostgreSQL", DATABASE_UNAVAILABLE, exc, policy, now=clock(), rng=rng or _rng) from exc
    except BackendUnavailable as exc:
        raise _wait(
            "the state backend (Redis)", STATE_UNAVAILABLE, exc, policy, now=clock(), rng=rng or _rng
        ) from exc
    except Exception:
        # Past the outage, or another failure: the next outage is a new one.
        _options().pop(OUTAGE_SINCE, None)
        _options().pop(OUTAGE_WAITS, None)
        raise


_rng = random.Random()


def _quietly(work: Callable[[], None]) -> None:
    """``work()``; the state backend unreachable too is only a warning: the job waits all the same."""
    try:
        work()
    except BackendUnavailable as exc:
        logger.warning("While waiting for PostgreSQL, the state backend is unreachable too (%s).", exc)


def _options() -> MutableMapping[str, Any]:
    """The running message's options (what its put-back copies); a throwaway dict outside a worker."""
    message = CurrentMessage.get_current_message()
    return message.options if message is not None else {}


def _wait(
    service: str, reason: str, error: Exception, policy: OutagePolicy, *, now: float, rng: random.Random
) -> Defer:
    options = _options()
    since = float(options.setdefault(OUTAGE_SINCE, now))
    waits = int(options.get(OUTAGE_WAITS, 0))
    waited_s = max(0.0, now - since)
    if waited_s >= policy.max_s:
        raise OutageTooLong(
            f"{_capitalized(service)} unreachable for {_duration(waited_s)} "
            f"(OUTAGE_MAX_S={policy.max_s:g}): dead-lettered; send the job (enrich) again once "
            f"{service} answers. Last error: {error}"
        ) from error
    options[OUTAGE_WAITS] = waits + 1
    backoff_s = exponential_backoff(waits, base_s=policy.min_wait_s, cap_s=policy.cap_s, rng=rng)
    delay_s = min(backoff_s, policy.max_s - waited_s)
    logger.warning(
        "%s unreachable: this job waits %.1fs (for %s so far; dead-lettered after OUTAGE_MAX_S=%gs). %s",
        _capitalized(service),
        delay_s,
        _duration(waited_s),
        policy.max_s,
        error,
    )
    return Defer(delay_s, reason=reason)


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _duration(seconds: float) -> str:
    """``seconds`` as people read it: ``42 s``, ``12 min``, ``24 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


__all__ = [
    "DATABASE_UNAVAILABLE",
    "OUTAGE_SINCE",
    "OUTAGE_WAITS",
    "OutagePolicy",
    "OutageTooLong",
    "waiting_out_outages",
]

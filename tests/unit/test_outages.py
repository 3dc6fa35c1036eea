"""Waiting out an outage (enrichment_actors/outages.py): deferred with a capped backoff, the clock kept in the
message, dead-lettered after OUTAGE_MAX_S naming the outage; any other failure is left alone."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.middleware import CurrentMessage

from enrichment_actors.outages import (
    DATABASE_UNAVAILABLE,
    OUTAGE_SINCE,
    OUTAGE_WAITS,
    OutagePolicy,
    OutageTooLong,
    waiting_out_outages,
)
from enrichment_actors.store import DatabaseUnreachable, PersistenceError
from enrichment_middleware.admission import STATE_UNAVAILABLE
from enrichment_middleware.backends.base import BackendUnavailable
from enrichment_middleware.deferral import Defer

POLICY = OutagePolicy(max_s=100.0, min_wait_s=1.0, max_wait_s=600.0)


@pytest.fixture
def message() -> Iterator[MessageProxy]:
    """The message 'running' in this thread, as a worker sets it."""
    proxy = MessageProxy(
        dramatiq.Message(queue_name="q", actor_name="store_pois", args=(), kwargs={}, options={})
    )
    token = CurrentMessage._MESSAGE.set(proxy)
    yield proxy
    CurrentMessage._MESSAGE.reset(token)


def attempt(
    error: Exception,
    *,
    now: float,
    policy: OutagePolicy = POLICY,
    rng: random.Random | None = None,
    **options: Any,
) -> BaseException:
    """One attempt that meets ``error``; what it raised."""
    outages = waiting_out_outages(policy, clock=lambda: now, rng=rng or random.Random(1), **options)
    with pytest.raises(Exception) as raised, outages:
        raise error
    return raised.value


def test_an_outage_defers_and_starts_the_clock(message: MessageProxy) -> None:
    deferral = attempt(DatabaseUnreachable("connection refused"), now=1000.0)
    assert isinstance(deferral, Defer) and deferral.reason == DATABASE_UNAVAILABLE
    assert deferral.delay_s == 1.0  # the first wait is the least
    assert message.options[OUTAGE_SINCE] == 1000.0 and message.options[OUTAGE_WAITS] == 1


def test_the_waits_grow_to_a_minute_and_the_clock_keeps_its_start(message: MessageProxy) -> None:
    policy = OutagePolicy(max_s=86400.0, min_wait_s=5.0, max_wait_s=600.0)
    rng = random.Random(7)
    delays = [attempt(DatabaseUnreachable("down"), now=1000.0 + n, policy=policy, rng=rng) for n in range(12)]
    assert all(isinstance(d, Defer) and 5.0 <= d.delay_s <= 60.0 for d in delays)
    assert max(d.delay_s for d in delays if isinstance(d, Defer)) > 30.0
    assert message.options[OUTAGE_SINCE] == 1000.0 and message.options[OUTAGE_WAITS] == 12


def test_after_outage_max_s_the_job_is_dead_lettered_naming_the_outage(message: MessageProxy) -> None:
    attempt(DatabaseUnreachable("down"), now=1000.0)
    last = attempt(DatabaseUnreachable("Could not store 3 POIs: refused"), now=1000.0 + 99.5)
    assert isinstance(last, Defer) and last.delay_s <= 0.5  # never past the deadline
    too_long = attempt(DatabaseUnreachable("Could not store 3 POIs: refused"), now=1100.0)
    assert isinstance(too_long, OutageTooLong) and not getattr(too_long, "retryable", True)
    assert str(too_long).startswith("PostgreSQL unreachable for 100 s (OUTAGE_MAX_S=100): dead-lettered")
    assert "send the job (enrich) again" in str(too_long) and "Could not store 3 POIs" in str(too_long)


def test_the_state_backend_unreachable_is_an_outage_too(message: MessageProxy) -> None:
    deferral = attempt(BackendUnavailable("Redis at redis://127.0.0.1:1 is unreachable"), now=5.0)
    assert isinstance(deferral, Defer) and deferral.reason == STATE_UNAVAILABLE
    too_long = attempt(BackendUnavailable("still"), now=5.0 + POLICY.max_s)
    assert isinstance(too_long, OutageTooLong) and str(too_long).startswith(
        "The state backend (Redis) unreachable"
    )


@pytest.mark.parametrize(
    "error",
    [PersistenceError("null value in column lat violates not-null constraint"), RuntimeError("a bug")],
    ids=["refused row", "bug"],
)
def test_another_failure_is_left_to_the_retries_and_stops_the_clock(
    message: MessageProxy, error: Exception
) -> None:
    attempt(DatabaseUnreachable("down"), now=1000.0)
    assert attempt(error, now=1001.0) is error
    assert OUTAGE_SINCE not in message.options and OUTAGE_WAITS not in message.options
    # The next outage starts a clock of its own: a day later, the job still waits.
    assert isinstance(attempt(DatabaseUnreachable("down again"), now=1000.0 + 86400), Defer)


def test_a_deferral_raised_inside_passes_untouched(message: MessageProxy) -> None:
    deferral = Defer(3, "paused")
    assert attempt(deferral, now=1.0) is deferral


def test_the_staged_chunk_is_kept_while_the_database_is_waited_for(message: MessageProxy) -> None:
    kept: list[int] = []
    attempt(DatabaseUnreachable("down"), now=1.0, on_wait=lambda: kept.append(1))
    attempt(BackendUnavailable("down"), now=2.0, on_wait=lambda: kept.append(1))
    assert kept == [1]  # with Redis down there is nothing to keep it in

    def redis_down_too() -> None:
        raise BackendUnavailable("Redis is unreachable")

    assert isinstance(attempt(DatabaseUnreachable("down"), now=3.0, on_wait=redis_down_too), Defer)


def test_the_policy_example_holds() -> None:
    import doctest

    import enrichment_actors.outages

    failed, attempted = doctest.testmod(enrichment_actors.outages, report=False)
    assert attempted > 0 and failed == 0


def test_a_block_that_succeeds_stops_the_clock(message: MessageProxy) -> None:
    # The block got through (the outage is over) and what follows it failed: the retry must not carry
    # the old outage's start, or a later short outage is dead-lettered at once for an hour-old one.
    attempt(DatabaseUnreachable("connection refused"), now=1000.0)
    with waiting_out_outages(POLICY, clock=lambda: 1010.0):
        pass
    assert OUTAGE_SINCE not in message.options
    deferral = attempt(DatabaseUnreachable("connection refused"), now=5000.0)
    assert isinstance(deferral, Defer)

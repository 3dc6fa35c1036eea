"""What a 429, a 406 and a 403 do to an endpoint, fleet-wide: a pause read once, a hold that keeps the backlog.

Against the stand-in server and the test session's Redis: the actor's own
functions in threads (as worker threads run them) and real worker processes.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from enrichment_actors import actors
from enrichment_actors.cli import main
from enrichment_actors.jobs import InvalidJob
from enrichment_actors.overpass_client import OverpassClient
from enrichment_actors.overpass_endpoints import endpoint_name, policy_name
from enrichment_actors.overpass_pause import (
    FORBIDDEN,
    USER_AGENT_REJECTED,
    HoldRelease,
    refuses_us,
    settings_fingerprint,
)
from enrichment_actors.overpass_responses import (
    OverpassError,
    QueryFailed,
    QueryRejected,
    QueryTooLarge,
    QueryUnsendable,
    RateLimited,
    ServerBusy,
    UserAgentRejected,
    read_response,
)
from enrichment_actors.settings import load_settings
from enrichment_actors.stub_overpass import StubOverpass
from enrichment_middleware.admission import STATE_UNAVAILABLE
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.deferral import Defer
from enrichment_middleware.failpoints import configure
from enrichment_middleware.policy.pause import HELD, PAUSED, PauseLimits, PausePolicy
from enrichment_middleware.usage import take_no_call
from tests.support.contention import cpu_hog
from tests.support.product import product
from tests.support.rooms import waiting_in_rooms
from tests.support.workers import WorkerProcesses, eventually

#: The product built in this process: the actors' functions read it.
runtime = product().runtime

USER_AGENT = "overpass-enrichment-tests/0.1 (tests@example.org)"
QUERY = '[out:json][timeout:25];nwr["amenity"](48.85,2.29,48.86,2.30);out center tags;'
BBOX = {"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}


@pytest.fixture
def stub() -> Iterator[StubOverpass]:
    with StubOverpass(slots=16) as server:
        yield server


@pytest.fixture
def client(stub: StubOverpass, monkeypatch: pytest.MonkeyPatch, redis_client: Any) -> OverpassClient:
    """The runtime's client, pointed at the stand-in; an empty shared state."""
    client = OverpassClient(stub.interpreter_url, user_agent=USER_AGENT, http_timeout_s=10.0)
    monkeypatch.setattr(runtime, "_client", client)
    return client


# --- 429: one pause, one status read, fleet-wide ---------------------------------------------------


def test_one_status_read_per_429_however_many_callers_meet_it(
    stub: StubOverpass, client: OverpassClient, caplog: pytest.LogCaptureFixture
) -> None:
    callers = 8
    stub.script(*["429"] * callers)
    start = threading.Barrier(callers)
    pauses: list[float] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            start.wait()
            try:
                client.fetch(QUERY)
            except RateLimited:
                pauses.append(actors._rate_limit_pause_s(client))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    with cpu_hog(), caplog.at_level(logging.INFO):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    assert not errors, errors
    assert len(pauses) == callers, "every caller met the 429"
    # Before: each caller read /api/status (8 reads for one slow-down).
    assert stub.stats().status_calls == 1
    status = actors._pause_policy().status()
    assert status.paused and status.pause_reason == "rate_limited"
    # Every caller waits until the one pause ends.
    minimum = min(runtime.settings.rate_limit_pause_s, actors._pause_policy().limits.max_pause_s)
    assert all(0 < pause <= status.remaining_s + 1 for pause in pauses), (pauses, status)
    assert max(pauses) >= minimum - 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "429" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_callers_meeting_a_429_while_the_opener_reads_the_status_read_nothing(
    stub: StubOverpass, client: OverpassClient
) -> None:
    # The opener stops between reading /api/status and extending the pause with it.
    stub.script(*["429"] * 5)
    configure("fetch.status_read=sleep:1.5")
    done: dict[str, float] = {}
    try:

        def meet_429(name: str) -> None:
            with contextlib.suppress(RateLimited):
                client.fetch(QUERY)
            actors._rate_limit_pause_s(client)
            done[name] = time.monotonic()

        opener = threading.Thread(target=meet_429, args=("opener",))
        opener.start()
        eventually(
            lambda: stub.stats().status_calls == 1, timeout_s=10, message="the opener reads the status"
        )
        others = [threading.Thread(target=meet_429, args=(f"other-{i}",)) for i in range(4)]
        with cpu_hog():
            for thread in others:
                thread.start()
            for thread in others:
                thread.join(timeout=30)
            opener.join(timeout=30)
    finally:
        configure("")

    assert stub.stats().status_calls == 1
    # Each of the others returned while the opener still stood at the failpoint.
    assert all(done[f"other-{i}"] < done["opener"] for i in range(4)), done
    assert actors._pause_policy().status().paused


def test_a_429_during_a_pause_reads_nothing_and_waits_for_its_end(
    stub: StubOverpass, client: OverpassClient
) -> None:
    stub.script("429", "429")
    with pytest.raises(RateLimited):
        client.fetch(QUERY)
    first = actors._rate_limit_pause_s(client)
    with pytest.raises(RateLimited):
        client.fetch(QUERY)
    second = actors._rate_limit_pause_s(client)

    assert stub.stats().status_calls == 1
    assert second <= first  # the pause in force, not a new one


@pytest.mark.parametrize("stop", ["pause", "hold", None])
def test_a_job_admitted_before_a_pause_began_makes_no_call(client: OverpassClient, stop: str | None) -> None:
    # Admission read the pause, then the job waited for a permit while another met a 429:
    # the actor looks once more right before the call.
    policy = actors._pause_policy()
    if stop == "pause":
        policy.pause(30.0, "rate_limited")
    elif stop == "hold":
        policy.hold(USER_AGENT_REJECTED, "fingerprint")
    take_no_call()

    if stop is None:
        actors._defer_if_paused()
        assert not take_no_call()
        return
    with pytest.raises(Defer) as deferred:
        actors._defer_if_paused()
    assert deferred.value.reason == {"pause": PAUSED, "hold": HELD}[stop]
    assert deferred.value.delay_s >= 29.0
    assert take_no_call(), "the quota gives the request back, the breaker hears nothing"


@pytest.fixture
def unreachable_pause(monkeypatch: pytest.MonkeyPatch) -> PausePolicy:
    """The endpoint's pause on a Redis that is not there (nothing listens on the port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = RedisBackend.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.5)
    policy = PausePolicy(runtime.endpoint().policy, PauseLimits(min_pause_s=30.0), backend)
    monkeypatch.setattr(actors, "_pause_policy", lambda name=None: policy)
    return policy


def test_an_unreachable_shared_state_defers_the_job_instead_of_retrying_or_calling(
    client: OverpassClient, stub: StubOverpass, unreachable_pause: PausePolicy
) -> None:
    # After a 429: this job still waits the pause (a retry would call again sooner).
    after_429 = actors._after_429(client)
    assert after_429.reason == "rate_limited" and after_429.delay_s >= runtime.settings.rate_limit_pause_s
    # After a 406: this job waits for the next look, never dead-lettered.
    refused = UserAgentRejected("406", status=406)
    after_406 = actors._after_refusal(client, refused)
    assert after_406.reason == HELD and after_406.delay_s >= unreachable_pause.limits.hold_recheck_s
    # Before the call: the pause cannot be read, so no call.
    take_no_call()
    with pytest.raises(Defer) as deferred:
        actors._defer_if_paused()
    assert deferred.value.reason == STATE_UNAVAILABLE and take_no_call()
    assert stub.stats().calls == 0 and stub.stats().status_calls == 0


# --- 406 / 403: the endpoint is held ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [(406, USER_AGENT_REJECTED), (403, FORBIDDEN), (400, None), (429, None), (404, None), (504, None)],
)
def test_what_holds_an_endpoint(status: int, reason: str | None) -> None:
    with pytest.raises(OverpassError) as raised:
        read_response(status, b"<html><body><p>refused</p></body></html>")
    assert refuses_us(raised.value) == reason


@pytest.mark.parametrize(
    ("error", "thrown"),
    [
        (InvalidJob, True),
        (QueryRejected, True),
        (QueryFailed, True),
        (QueryTooLarge, True),
        (QueryUnsendable, True),
        (UserAgentRejected, False),
        (RateLimited, False),
        (ServerBusy, False),
    ],
)
def test_permanent_answers_are_dead_lettered_without_a_traceback_and_a_406_is_not(
    error: type[Exception], thrown: bool
) -> None:
    # In ``throws``: dead-lettered at once (not retryable), logged without a traceback.
    # A 406 is turned into a hold by the actor: it must never be dead-lettered.
    assert issubclass(error, product().fetch_pois.options["throws"]) is thrown


def test_a_406_holds_the_endpoint_without_a_dead_letter_and_keeps_the_backlog(
    stub: StubOverpass, redis_url: str, redis_client: Any
) -> None:
    stub.set_default("406")
    jobs = 5
    env = {"REDIS_URL": redis_url, "OVERPASS_URL": stub.interpreter_url, "SEMAPHORE_PERMITS": "2"}
    with WorkerProcesses(env, processes=1, threads=2) as workers:
        for index in range(jobs):
            product().enrich.send(bbox={**BBOX, "south": BBOX["south"] + index * 0.001}, tags=["amenity"])
        parking = runtime.retries.parking
        assert parking is not None
        # Every fetch waits, none is dead-lettered: the seated ones deferred (parked, keeping their
        # seats), the others in the fair room behind them.
        eventually(
            lambda: (
                parking.count() + waiting_in_rooms(runtime.backend) == jobs
                and runtime.broker.do_qsize("enrichment") == 0
            ),
            timeout_s=40,
            message="every fetch parked",
        )
        held_logs = workers.count("is HELD for every worker")

    assert runtime.broker.client.hlen("dramatiq:enrichment.XQ.msgs") == 0
    status = _pause_of(stub).status()
    assert status.held and status.hold_reason == USER_AGENT_REJECTED
    user_agent = load_settings(workers.env).user_agent
    assert status.fingerprint == settings_fingerprint(stub.interpreter_url, user_agent)
    assert held_logs == 1, "logged once, by the worker that set the hold"
    assert stub.stats().calls <= jobs


def _pause_of(stub: StubOverpass) -> PausePolicy:
    """The pause of the endpoint the worker processes call (the stand-in): its state is keyed by the endpoint."""
    return PausePolicy(
        policy_name(endpoint_name(stub.interpreter_url)), PauseLimits(min_pause_s=0.5), runtime.backend
    )


# --- Lifting a hold ---------------------------------------------------------------------------------


def _boot_a_worker() -> None:
    """Boot a worker with the product's HoldRelease, as ``dramatiq`` does at start."""
    broker = StubBroker()
    broker.add_middleware(HoldRelease(actors._boot_fingerprints))
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    worker.stop()
    broker.close()


def test_a_worker_booting_with_other_settings_lifts_the_hold(client: OverpassClient) -> None:
    policy = actors._pause_policy()
    policy.hold(USER_AGENT_REJECTED, settings_fingerprint(client.interpreter_url, "stock-agent/1.0"))

    _boot_a_worker()

    assert not policy.status().held


def test_a_worker_booting_with_the_same_settings_keeps_the_hold(client: OverpassClient) -> None:
    policy = actors._pause_policy()
    policy.hold(USER_AGENT_REJECTED, settings_fingerprint(client.interpreter_url, client.user_agent))

    _boot_a_worker()

    assert policy.status().held


def test_worker_processes_started_with_another_contact_lift_the_hold_and_with_the_same_keep_it(
    stub: StubOverpass, redis_url: str, redis_client: Any
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "OVERPASS_URL": stub.interpreter_url,
        "OVERPASS_CONTACT": "ops@example.org",
    }
    user_agent = load_settings(env).user_agent
    policy = _pause_of(stub)
    policy.hold(USER_AGENT_REJECTED, settings_fingerprint(stub.interpreter_url, user_agent))

    with WorkerProcesses(env, processes=1, threads=1):
        pass  # booted: same settings, the hold stays
    assert policy.status().held

    with WorkerProcesses(
        {**env, "OVERPASS_CONTACT": "someone-reachable@example.org"}, processes=1, threads=1
    ):
        eventually(lambda: not policy.status().held, timeout_s=10, message="the hold lifted at boot")


def test_release_hold_lifts_it_by_hand(
    client: OverpassClient, stub: StubOverpass, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = actors._pause_policy()
    policy.hold(FORBIDDEN, settings_fingerprint(client.interpreter_url, client.user_agent))
    (endpoint,) = actors.hold_targets()  # the configured endpoint's host:port

    assert main(["release-hold", "no-such-host:1"]) == 2
    assert policy.status().held
    assert main(["release-hold", endpoint]) == 0

    assert not policy.status().held
    out = capsys.readouterr().out
    assert f"{endpoint}: hold lifted (it was held: {FORBIDDEN})" in out
    assert main(["release-hold"]) == 0
    assert "not held; nothing to do" in capsys.readouterr().out

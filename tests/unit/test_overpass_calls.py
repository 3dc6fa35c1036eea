"""How the fetch actor makes its Overpass call: what it charges, when it kills, what it logs, how the breaker judges.

Against the stand-in server and the test session's Redis, in this process:
the actor's own functions run as a worker thread runs them, without a broker.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from enrichment_actors import actors
from enrichment_actors.metrics import Outcome
from enrichment_actors.overpass_client import FetchResult, OverpassClient
from enrichment_actors.overpass_responses import (
    BadResponse,
    ClientTimeout,
    ConnectionFailed,
    DuplicateQuery,
    OverpassError,
    QueryTimedOut,
    QueryUnsendable,
    RateLimited,
    ServerProtocolError,
    ServerUnwell,
)
from enrichment_actors.runtime import overpass_verdict
from enrichment_actors.stub_overpass import StubOverpass
from enrichment_middleware.breaker import Verdict
from enrichment_middleware.deferral import Defer
from enrichment_middleware.usage import take_charged_bytes, take_no_call
from tests.support.product import product
from tests.support.rooms import in_rooms
from tests.support.workers import WorkerProcesses, eventually

#: The product built in this process: the actors' functions read it.
runtime = product().runtime

USER_AGENT = "overpass-enrichment-tests/0.1 (tests@example.org)"
BBOX = {"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}
QUERY = '[out:json][timeout:25];nwr["amenity"](48.85,2.29,48.86,2.30);out center tags;'


@pytest.fixture
def stub() -> Iterator[StubOverpass]:
    with StubOverpass(slots=2) as server:
        yield server


@pytest.fixture
def fleet(redis_client: Any) -> Iterator[None]:
    """An empty shared state, and nothing charged or reported by this thread yet."""
    take_charged_bytes()
    take_no_call()
    yield
    take_charged_bytes()
    take_no_call()


def use_client(monkeypatch: pytest.MonkeyPatch, url: str, http_timeout_s: float = 5.0) -> OverpassClient:
    client = OverpassClient(url, user_agent=USER_AGENT, http_timeout_s=http_timeout_s)
    monkeypatch.setattr(runtime, "_client", client)
    return client


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- Finding 3: every byte downloaded is charged; a request never sent is given back ------------------


@pytest.mark.parametrize(
    ("outcome", "error_class"),
    [
        ("timeout-remark", QueryTimedOut),
        ("partial-remark", QueryTimedOut),
        ("enomem-remark", ServerUnwell),
        ("protocol-error", ServerProtocolError),
        ("429", RateLimited),
        ("cutoff", BadResponse),
    ],
)
def test_a_failed_call_charges_the_bytes_it_downloaded(
    fleet: None, stub: StubOverpass, outcome: str, error_class: type[OverpassError]
) -> None:
    client = OverpassClient(stub.interpreter_url, user_agent=USER_AGENT, http_timeout_s=5)
    stub.script(outcome)

    with pytest.raises(error_class) as raised:
        actors._call_overpass(client, QUERY)

    charged = take_charged_bytes()
    assert charged == raised.value.response_bytes > 0
    assert take_no_call() is False


def test_a_successful_call_charges_its_body_once(fleet: None, stub: StubOverpass) -> None:
    client = OverpassClient(stub.interpreter_url, user_agent=USER_AGENT, http_timeout_s=5)

    result: FetchResult = actors._call_overpass(client, QUERY)

    assert take_charged_bytes() == result.response_bytes > 0


def test_fetch_pois_charges_a_successful_call_once(
    fleet: None, stub: StubOverpass, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_client(monkeypatch, stub.interpreter_url)

    actors.fetch_pois(bbox=BBOX, tags=["amenity"])

    (request,) = [r for r in stub.requests if r.path == "/api/interpreter"]
    body = OverpassClient(stub.interpreter_url, user_agent=USER_AGENT, http_timeout_s=5).fetch(request.query)
    assert take_charged_bytes() == body.response_bytes


@pytest.mark.parametrize(
    ("query", "url", "error_class"),
    [
        pytest.param(QUERY, "refused", ConnectionFailed, id="connection-refused"),
        pytest.param(QUERY.replace("amenity", "caf\ud800"), "stub", QueryUnsendable, id="lone-surrogate"),
    ],
)
def test_a_call_that_never_left_the_process_gives_its_request_back(
    fleet: None, stub: StubOverpass, query: str, url: str, error_class: type[OverpassError]
) -> None:
    address = (
        f"http://127.0.0.1:{unused_port()}/api/interpreter" if url == "refused" else stub.interpreter_url
    )
    client = OverpassClient(address, user_agent=USER_AGENT, http_timeout_s=2)

    with pytest.raises(error_class):
        actors._call_overpass(client, query)

    assert take_no_call() is True
    assert take_charged_bytes() == 0
    assert stub.stats().calls == 0


# --- Finding 8: a timed-out call kills our queries only when it is the only one in flight --------------


def run_sibling(client: OverpassClient, results: list[Any]) -> threading.Thread:
    def call() -> None:
        try:
            results.append(client.fetch(QUERY))
        except OverpassError as exc:
            results.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_a_timeout_beside_a_healthy_sibling_leaves_the_sibling_alone(
    fleet: None, stub: StubOverpass, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    semaphore = runtime.semaphore.policies[runtime.endpoint().policy]
    sibling_permit = semaphore.try_acquire("sibling")
    own_permit = semaphore.try_acquire("this-call")
    assert sibling_permit is not None and own_permit is not None
    # The sibling is well inside its rules: its answer comes after 1.5 s.
    stub.script("stall:1.5")
    sibling = OverpassClient(stub.interpreter_url, user_agent=USER_AGENT, http_timeout_s=10)
    results: list[Any] = []
    thread = run_sibling(sibling, results)
    eventually(lambda: stub.stats().in_flight == 1)
    stub.script("stall:10")  # this call: the server never answers in time
    use_client(monkeypatch, stub.interpreter_url, http_timeout_s=0.5)

    with caplog.at_level(logging.WARNING, logger="enrichment_actors.actors"), pytest.raises(ClientTimeout):
        actors.fetch_pois(bbox=BBOX, tags=["amenity"])
    thread.join(timeout=10)

    assert stub.stats().kill_calls == 0
    (answer,) = results
    assert isinstance(answer, FetchResult) and answer.parsed.pois
    assert "2 calls in flight" in caplog.text and "own [timeout:" in caplog.text
    semaphore.release(sibling_permit)
    semaphore.release(own_permit)


def test_a_timeout_of_the_only_call_in_flight_kills_its_query(
    fleet: None, stub: StubOverpass, monkeypatch: pytest.MonkeyPatch
) -> None:
    semaphore = runtime.semaphore.policies[runtime.endpoint().policy]
    own_permit = semaphore.try_acquire("this-call")
    assert own_permit is not None
    stub.script("stall:10")
    use_client(monkeypatch, stub.interpreter_url, http_timeout_s=0.5)

    with pytest.raises(ClientTimeout):
        actors.fetch_pois(bbox=BBOX, tags=["amenity"])

    assert stub.stats().kill_calls == 1
    eventually(lambda: stub.stats().served.get("killed") == 1)  # the stalled query is freed
    semaphore.release(own_permit)


# --- Finding 15: duplicate_query defers past the query's [timeout]; never a breaker failure -------------


def test_a_duplicate_query_defers_the_job_past_the_query_timeout(fleet: None) -> None:
    with StubOverpass(refuse_duplicates=True) as stub:
        client = OverpassClient(stub.interpreter_url, user_agent=USER_AGENT, http_timeout_s=5)
        for _ in range(2):
            actors._call_overpass(client, QUERY)
        take_charged_bytes()

        with pytest.raises(Defer) as raised:
            actors._call_overpass(client, QUERY)

    defer = raised.value
    assert defer.reason == Outcome.DUPLICATE_QUERY.value == "duplicate_query"
    assert runtime.settings.query_timeout_s < defer.delay_s <= 2 * runtime.settings.query_timeout_s + 1
    assert isinstance(defer.__cause__, DuplicateQuery)
    assert take_charged_bytes() == defer.__cause__.response_bytes > 0  # the page was downloaded
    assert overpass_verdict(defer) is Verdict.SUCCESS


def test_six_identical_calls_on_a_healthy_server_are_no_breaker_failure(fleet: None) -> None:
    # The case: six identical jobs opened the circuit on a healthy server.
    verdicts = []
    with StubOverpass(refuse_duplicates=True) as stub:
        client = OverpassClient(stub.interpreter_url, user_agent=USER_AGENT, http_timeout_s=5)
        for _ in range(6):
            try:
                actors._call_overpass(client, QUERY)
                verdicts.append(overpass_verdict(None))
            except Defer as exc:
                verdicts.append(overpass_verdict(exc))
        assert stub.stats().refused_duplicates == 4

    assert Verdict.FAILURE not in verdicts


@pytest.mark.parametrize(
    ("exception", "verdict"),
    [
        (None, Verdict.SUCCESS),
        (ServerUnwell("enomem", status=200), Verdict.FAILURE),
        (ServerProtocolError("protocol_error", status=200), Verdict.FAILURE),
        (ClientTimeout("deadline"), Verdict.FAILURE),
        (ConnectionFailed("refused", request_sent=False), Verdict.FAILURE),
        (QueryTimedOut("remark", status=200), Verdict.SUCCESS),
        (DuplicateQuery("duplicate", status=200), Verdict.SUCCESS),
        (QueryUnsendable("surrogate", request_sent=False), Verdict.IGNORE),
        (ValueError("a bug of ours"), Verdict.IGNORE),
    ],
)
def test_overpass_verdict(exception: BaseException | None, verdict: Verdict) -> None:
    assert overpass_verdict(exception) is verdict


@pytest.mark.parametrize(
    ("cause", "verdict"),
    [
        (DuplicateQuery("duplicate", status=200), Verdict.SUCCESS),
        (RateLimited("429", status=429), Verdict.SUCCESS),
    ],
)
def test_a_deferral_is_judged_by_what_the_server_said(cause: OverpassError, verdict: Verdict) -> None:
    try:
        raise Defer(30, reason="test") from cause
    except Defer as defer:
        assert overpass_verdict(defer) is verdict


# --- Finding 17: a 429 is logged once, with the pause it caused -------------------------------------


def test_a_429_is_logged_once_with_its_pause(
    fleet: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with StubOverpass(slots=1) as stub:
        use_client(monkeypatch, stub.interpreter_url)

        with caplog.at_level(logging.INFO, logger="enrichment_actors.actors"):
            pause_s = actors._rate_limit_pause_s()

    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "429" in record.getMessage() and f"pauses {pause_s:.0f} s" in record.getMessage()
    assert pause_s >= runtime.settings.rate_limit_pause_s


def test_a_429_with_an_unreadable_status_page_is_logged_once_too(
    fleet: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    use_client(monkeypatch, f"http://127.0.0.1:{unused_port()}/api/interpreter")

    with caplog.at_level(logging.INFO, logger="enrichment_actors.actors"):
        pause_s = actors._rate_limit_pause_s()

    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "429" in record.getMessage() and f"pauses {pause_s:.0f} s" in record.getMessage()


def test_http_timeout_default_allows_for_the_servers_wait_for_a_slot() -> None:
    from enrichment_actors.settings import SERVER_HOLD_S, load_settings

    settings = load_settings({})

    assert SERVER_HOLD_S == 15
    assert settings.http_timeout_s >= settings.query_timeout_s + SERVER_HOLD_S + 5
    assert settings.semaphore_lease_s > settings.http_timeout_s + 10  # the connect timeout fits too


# make chaos only (14 s): the six identical calls above keep the verdict in make test.
@pytest.mark.chaos
@pytest.mark.soak
def test_six_identical_jobs_on_a_healthy_server_all_land_and_the_circuit_stays_closed(
    redis_url: str, postgres_url: str, redis_client: Any
) -> None:
    # The run: 6 identical jobs on a healthy 0.7.62 server opened the circuit for 60 s
    # (each duplicate_query page was a bad_response, retried, and a breaker failure).
    from enrichment_actors.store import PoiStore

    store = PoiStore(postgres_url)
    store.ensure_schema()
    store.model.delete().execute()
    with StubOverpass(slots=2, refuse_duplicates=True, latency_s=0.3) as stub:
        env = {
            "REDIS_URL": redis_url,
            "DATABASE_URL": postgres_url,
            "OVERPASS_URL": stub.interpreter_url,
            # A short [timeout] window: a deferred duplicate comes back after 3 to 5 s.
            "OVERPASS_QUERY_TIMEOUT_S": "2",
            "OVERPASS_HTTP_TIMEOUT_S": "5",
            "SEMAPHORE_LEASE_S": "20",
            "BREAKER_FAILURE_THRESHOLD": "3",
            "BREAKER_COOLDOWN_S": "60",
        }
        with WorkerProcesses(env, processes=1, threads=6):
            for _ in range(6):
                product().enrich.send(bbox=BBOX, tags=["amenity"])
            parking = runtime.retries.parking
            eventually(
                lambda: (
                    stub.stats().calls >= 6
                    and parking.count() == 0
                    and in_rooms(runtime.backend) == 0
                    and runtime.broker.do_qsize("enrichment") == 0
                ),
                timeout_s=45,
                message="six identical jobs done",
            )
            eventually(lambda: store.count() > 0, timeout_s=20, message="POIs stored")

        refused = stub.stats().refused_duplicates
    state = runtime.breaker.policies[runtime.endpoint().policy].state()
    store.close()

    assert refused >= 1, "the run must have met the duplicate refusal"
    assert state.generation == 0 and state.failures == 0, state  # never opened, no failure counted
    assert runtime.broker.client.hlen("dramatiq:enrichment.XQ.msgs") == 0  # nothing dead-lettered


# make chaos only (14 s): the contention suite's trickle scenario and tests/unit/test_hostile_server.py's
# trickled headers keep the bound in make test.
@pytest.mark.chaos
@pytest.mark.soak
def test_trickled_answers_never_put_more_calls_in_flight_than_permits(
    redis_url: str, redis_client: Any
) -> None:
    # The run: a server trickling its bodies kept each call alive past its permit's lease
    # (the read timeout bounds only each wait for a byte), and 3 calls were in flight with 1 permit.
    # Each body here would take about 30 s; the lease is 3 s; the call's deadline is 1 s.
    with StubOverpass(slots=1) as stub:
        stub.set_default("trickle:0.05")
        env = {
            "REDIS_URL": redis_url,
            "OVERPASS_URL": stub.interpreter_url,
            "SEMAPHORE_PERMITS": "1",
            "OVERPASS_HTTP_TIMEOUT_S": "1",
            "SEMAPHORE_LEASE_S": "3",
            "SEMAPHORE_WAIT_S": "0.2",
            "RETRY_MAX": "2",
            "BREAKER_FAILURE_THRESHOLD": "100",
            "CPU_HOG_THREADS": "1",
        }
        with WorkerProcesses(env, processes=2, threads=3, modules=["tests.support.hog"]):
            for index in range(3):
                box = {**BBOX, "south": BBOX["south"] + index * 0.001}
                product().enrich.send(bbox=box, tags=["amenity"])
            # Calls over several leases, or a second call in flight, whichever comes first.
            eventually(
                lambda: stub.stats().calls >= 6 or stub.stats().peak_in_flight > 1,
                timeout_s=40,
                message="calls over several leases",
            )
            time.sleep(4)  # one more lease lapses
        stats = stub.stats()
        calls = [r for r in stub.requests if r.path == "/api/interpreter"]

    assert stats.peak_in_flight == 1, stats
    assert all(r.ended_at - r.started_at < 3 for r in calls), [
        round(r.ended_at - r.started_at, 1) for r in calls
    ]

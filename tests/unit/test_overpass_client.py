"""The HTTP client against a real HTTP server on 127.0.0.1 that answers what each test tells it to."""

from __future__ import annotations

import gzip
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
import requests

from enrichment_actors.overpass_client import FetchResult, OverpassClient
from enrichment_actors.overpass_responses import (
    BadResponse,
    ClientTimeout,
    ConnectionFailed,
    DuplicateQuery,
    OverpassError,
    QueryRejected,
    QueryTimedOut,
    QueryUnsendable,
    RateLimited,
    ServerBusy,
    ServerDown,
    ServerUnwell,
)
from enrichment_actors.overpass_status import SlotStatus, StatusUnavailable
from enrichment_actors.stub_overpass import TRICKLE_BYTES, StubOverpass
from tests.fixture_manifest import OWN_ROOT
from tests.support.contention import cpu_hog

USER_AGENT = "overpass-enrichment-tests/0.1 (tests@example.org)"
QUERY = '[out:json][timeout:25];nwr["amenity"](46.50,6.62,46.52,6.65);out center tags;'
POIS_BODY = (OWN_ROOT / "success/nodes-ways-relations.json").read_bytes()


@dataclass
class Reply:
    """What the server answers to one request."""

    status: int = 200
    body: bytes = POIS_BODY
    content_type: str = "application/json"
    delay_s: float = 0.0  # before the status line
    cut_after: int | None = None  # no Content-Length: send this many bytes, then close
    short_after: int | None = None  # full Content-Length, send this many bytes, then close
    stall_after: int | None = None  # full Content-Length, send this many bytes, then sleep
    stall_s: float = 0.0
    trickle_s: float | None = None  # no Content-Length: one byte every trickle_s, until the client goes
    content_encoding: str | None = None


@dataclass
class Received:
    method: str
    path: str
    user_agent: str | None
    headers: dict[str, str]
    form: dict[str, list[str]]
    client_port: int = 0


@dataclass
class StandIn:
    """A tiny HTTP server: canned replies per path, and a record of every request."""

    url: str
    replies: dict[str, Reply] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    @property
    def interpreter_url(self) -> str:
        return self.url + "/api/interpreter"


def _handler(stand_in: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._answer(b"")

        def do_POST(self) -> None:
            self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        def _answer(self, body: bytes) -> None:
            stand_in.received.append(
                Received(
                    method=self.command,
                    path=self.path,
                    user_agent=self.headers.get("User-Agent"),
                    headers=dict(self.headers.items()),
                    form=parse_qs(body.decode()),
                    client_port=self.client_address[1],
                )
            )
            reply = stand_in.replies.get(self.path, Reply(status=404, body=b"no reply set for this path"))
            time.sleep(reply.delay_s)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                if reply.content_encoding is not None:
                    self.send_header("Content-Encoding", reply.content_encoding)
                if reply.trickle_s is not None:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for index in range(len(reply.body)):
                        self.wfile.write(reply.body[index : index + 1])
                        self.wfile.flush()
                        time.sleep(reply.trickle_s)
                    self.close_connection = True
                    return
                if reply.cut_after is not None:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(reply.body[: reply.cut_after])
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.short_after is not None:
                    self.wfile.write(reply.body[: reply.short_after])
                    self.close_connection = True
                    return
                if reply.stall_after is not None:
                    self.wfile.write(reply.body[: reply.stall_after])
                    self.wfile.flush()
                    time.sleep(reply.stall_s)
                    self.close_connection = True
                    return
                self.wfile.write(reply.body)
            except OSError:
                pass  # the client gave up first (timeout tests)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    stand_in = StandIn(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stand_in))
    server.daemon_threads = True
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield stand_in
    server.shutdown()
    server.server_close()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def make_client(
    url: str, session: requests.Session | None = None, http_timeout_s: float = 5.0
) -> OverpassClient:
    return OverpassClient(url, user_agent=USER_AGENT, http_timeout_s=http_timeout_s, session=session)


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_fetch_posts_the_query_as_form_data_with_our_user_agent(
    stand_in: StandIn, session: requests.Session
) -> None:
    stand_in.replies["/api/interpreter"] = Reply()

    result = make_client(stand_in.interpreter_url, session).fetch(QUERY)

    (request,) = stand_in.received
    assert (request.method, request.path, request.user_agent) == ("POST", "/api/interpreter", USER_AGENT)
    assert request.form == {"data": [QUERY]}
    assert isinstance(result, FetchResult)
    assert (result.status, result.response_bytes) == (200, len(POIS_BODY))
    assert [(p.element_type, p.osm_id) for p in result.parsed.pois] == [
        ("node", 1001),
        ("node", 1002),
        ("way", 2001),
        ("relation", 3001),
    ]
    assert 0 <= result.duration_s < 5


@pytest.mark.parametrize(
    ("status", "fixture", "error_class"),
    [
        (400, "http/400-several-escaped-errors.html", QueryRejected),
        (429, "http/429-rate-limited.html", RateLimited),
        (504, "http/504-dispatcher-off.html", ServerDown),
        (200, "remark/partial-output-then-timeout.json", QueryTimedOut),
    ],
)
def test_fetch_raises_the_classified_error(
    stand_in: StandIn, session: requests.Session, status: int, fixture: str, error_class: type[Exception]
) -> None:
    stand_in.replies["/api/interpreter"] = Reply(status=status, body=(OWN_ROOT / fixture).read_bytes())

    with pytest.raises(error_class) as raised:
        make_client(stand_in.interpreter_url, session).fetch(QUERY)

    assert getattr(raised.value, "status", None) == status


def test_server_slower_than_the_read_timeout_is_a_client_timeout(
    stand_in: StandIn, session: requests.Session
) -> None:
    stand_in.replies["/api/interpreter"] = Reply(delay_s=0.6)
    client = make_client(stand_in.interpreter_url, session, http_timeout_s=0.2)
    started = time.monotonic()

    with pytest.raises(ClientTimeout, match="kill_my_queries") as raised:
        client.fetch(QUERY)

    assert time.monotonic() - started < 0.55
    assert (raised.value.retryable, raised.value.trips_breaker, raised.value.status) == (True, True, None)


def test_body_that_stalls_midway_is_a_client_timeout(stand_in: StandIn, session: requests.Session) -> None:
    stand_in.replies["/api/interpreter"] = Reply(stall_after=len(POIS_BODY) // 2, stall_s=0.6)

    with pytest.raises(ClientTimeout):
        make_client(stand_in.interpreter_url, session, http_timeout_s=0.2).fetch(QUERY)


def test_connection_closed_midway_without_length_is_a_bad_response(
    stand_in: StandIn, session: requests.Session
) -> None:
    stand_in.replies["/api/interpreter"] = Reply(cut_after=len(POIS_BODY) // 2)

    with pytest.raises(BadResponse) as raised:
        make_client(stand_in.interpreter_url, session).fetch(QUERY)

    assert raised.value.status == 200 and raised.value.retryable


def test_connection_closed_before_content_length_is_a_bad_response(
    stand_in: StandIn, session: requests.Session
) -> None:
    stand_in.replies["/api/interpreter"] = Reply(short_after=len(POIS_BODY) // 2)

    with pytest.raises(BadResponse, match="broke off mid-body"):
        make_client(stand_in.interpreter_url, session).fetch(QUERY)


def test_refused_connection_is_a_connection_error(session: requests.Session) -> None:
    client = make_client(f"http://127.0.0.1:{unused_port()}/api/interpreter", session)

    with pytest.raises(ConnectionFailed, match="Could not reach") as raised:
        client.fetch(QUERY)

    assert (raised.value.retryable, raised.value.trips_breaker) == (True, True)


def test_connect_timeout_is_a_connection_error_not_a_client_timeout(session: requests.Session) -> None:
    # A listener that never accepts: once its backlog is full, new SYNs are dropped.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = _fill_backlog(port)
        try:
            client = make_client(f"http://127.0.0.1:{port}/api/interpreter", session, http_timeout_s=0.2)
            with pytest.raises(ConnectionFailed, match="ConnectTimeout"):
                client.fetch(QUERY)
        finally:
            for filler in fillers:
                filler.close()


def _fill_backlog(port: int) -> list[socket.socket]:
    fillers: list[socket.socket] = []
    for _ in range(8):
        filler = socket.socket()
        filler.settimeout(0.1)
        try:
            filler.connect(("127.0.0.1", port))
        except TimeoutError:
            filler.close()
            return fillers
        fillers.append(filler)
    for filler in fillers:
        filler.close()
    pytest.skip("this kernel keeps accepting connections a listener never accepts")


def test_status_reads_the_status_page(stand_in: StandIn, session: requests.Session) -> None:
    page = (OWN_ROOT / "status/no-slot-cooldown-lines.txt").read_bytes()
    stand_in.replies["/api/status"] = Reply(body=page, content_type="text/plain; charset=utf-8")

    status = make_client(stand_in.interpreter_url, session).status()

    assert status == SlotStatus(rate_limit=2, free_now=0, waits_s=(12.0, 160.0))
    (request,) = stand_in.received
    assert (request.method, request.path, request.user_agent) == ("GET", "/api/status", USER_AGENT)


def test_status_of_a_server_that_is_down(stand_in: StandIn, session: requests.Session) -> None:
    page = (OWN_ROOT / "local-server/04_status_down.body.txt").read_bytes()
    stand_in.replies["/api/status"] = Reply(status=504, body=page, content_type="text/plain")

    with pytest.raises(StatusUnavailable, match=r"HTTP 504 .*server is down"):
        make_client(stand_in.interpreter_url, session).status()


def test_status_with_an_unexpected_http_status(stand_in: StandIn, session: requests.Session) -> None:
    page = (OWN_ROOT / "status/idle-two-slots.txt").read_bytes()
    stand_in.replies["/api/status"] = Reply(status=500, body=page, content_type="text/plain")

    with pytest.raises(StatusUnavailable, match="HTTP 500"):
        make_client(stand_in.interpreter_url, session).status()


def test_status_of_an_unreachable_server(session: requests.Session) -> None:
    client = make_client(f"http://127.0.0.1:{unused_port()}/api/interpreter", session)

    with pytest.raises(StatusUnavailable, match="Could not read"):
        client.status()


def test_kill_my_queries_calls_the_kill_url(stand_in: StandIn, session: requests.Session) -> None:
    stand_in.replies["/api/kill_my_queries"] = Reply(body=b"", content_type="text/plain")

    make_client(stand_in.interpreter_url, session).kill_my_queries()

    (request,) = stand_in.received
    assert (request.method, request.path, request.user_agent) == ("GET", "/api/kill_my_queries", USER_AGENT)


def test_kill_my_queries_never_raises(
    stand_in: StandIn, session: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    stand_in.replies["/api/kill_my_queries"] = Reply(status=500, body=b"oops", content_type="text/plain")
    refused = make_client(f"http://127.0.0.1:{unused_port()}/api/interpreter", session)

    with caplog.at_level(logging.WARNING, logger="enrichment_actors.overpass_client"):
        make_client(stand_in.interpreter_url, session).kill_my_queries()
        refused.kill_my_queries()

    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "HTTP 500" in caplog.records[0].getMessage()
    assert "Could not ask" in caplog.records[1].getMessage()


def test_kill_my_queries_gives_up_quietly_on_a_slow_server(
    stand_in: StandIn, session: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    stand_in.replies["/api/kill_my_queries"] = Reply(body=b"", delay_s=0.6)

    with caplog.at_level(logging.WARNING, logger="enrichment_actors.overpass_client"):
        make_client(stand_in.interpreter_url, session, http_timeout_s=0.2).kill_my_queries()

    assert "ReadTimeout" in caplog.text


def test_urls_are_derived_from_the_interpreter_url() -> None:
    client = OverpassClient(
        "https://overpass.example.org/api/interpreter/", user_agent=USER_AGENT, http_timeout_s=200
    )

    assert client.interpreter_url == "https://overpass.example.org/api/interpreter"
    assert client.status_url == "https://overpass.example.org/api/status"
    assert client.kill_url == "https://overpass.example.org/api/kill_my_queries"


@pytest.mark.parametrize(
    ("url", "user_agent", "http_timeout_s", "complaint"),
    [
        ("https://overpass.example.org/api/", USER_AGENT, 200, "ending in /interpreter"),
        ("ftp://overpass.example.org/api/interpreter", USER_AGENT, 200, "http"),
        ("https://overpass.example.org/api/interpreter", " ", 200, "406"),
        ("https://overpass.example.org/api/interpreter", USER_AGENT, 0, "above 0"),
    ],
)
def test_misconfiguration_is_refused_up_front(
    url: str, user_agent: str, http_timeout_s: float, complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        OverpassClient(url, user_agent=user_agent, http_timeout_s=http_timeout_s)


@pytest.mark.parametrize(("http_timeout_s", "timeouts"), [(200.0, (10.0, 200.0)), (0.5, (0.5, 0.5))])
def test_connect_timeout_is_capped_at_ten_seconds(
    http_timeout_s: float, timeouts: tuple[float, float]
) -> None:
    client = OverpassClient(
        "http://127.0.0.1:1/api/interpreter", user_agent=USER_AGENT, http_timeout_s=http_timeout_s
    )

    timeout = client._query_timeout
    assert (timeout.connect_timeout, timeout.total) == (timeouts[0], http_timeout_s)
    assert timeout.read_timeout == timeouts[1]


def test_the_wait_for_the_status_line_gets_what_connecting_left(stand_in: StandIn) -> None:
    # A server slow to answer at all (no byte before the deadline) ends the call by its deadline.
    stand_in.replies["/api/interpreter"] = Reply(delay_s=3)
    client = make_client(stand_in.interpreter_url, http_timeout_s=1.0)
    started = time.monotonic()

    with pytest.raises(ClientTimeout):
        client.fetch(QUERY)

    assert time.monotonic() - started < 1.8


def test_own_session_pools_32_connections() -> None:
    client = OverpassClient("http://127.0.0.1:1/api/interpreter", user_agent=USER_AGENT, http_timeout_s=5)

    assert client._session.get_adapter("https://overpass.example.org")._pool_maxsize == 32  # type: ignore[attr-defined]
    assert client._session.get_adapter("http://127.0.0.1:1")._pool_maxsize == 32  # type: ignore[attr-defined]


def test_given_session_is_used(stand_in: StandIn, session: requests.Session) -> None:
    session.headers["X-Trace"] = "given-session"
    stand_in.replies["/api/interpreter"] = Reply()

    make_client(stand_in.interpreter_url, session).fetch(QUERY)

    assert stand_in.received[0].headers.get("X-Trace") == "given-session"


def test_one_client_serves_many_threads(stand_in: StandIn) -> None:
    stand_in.replies["/api/interpreter"] = Reply()
    client = make_client(stand_in.interpreter_url)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: client.fetch(QUERY), range(24)))

    assert all(len(r.parsed.pois) == 4 for r in results)
    assert len(stand_in.received) == 24


# What a failed call cost (finding 3), and a deadline for the whole call (finding 4), against the
# project's stand-in server.

STUB_QUERY = '[out:json][timeout:25];nwr["amenity"](48.85,2.29,48.87,2.31);out center tags;'


@pytest.fixture
def stub() -> Iterator[StubOverpass]:
    with StubOverpass() as server:
        yield server


def sent_bytes(stub: StubOverpass, outcome: str) -> bytes:
    """The body the stand-in sends for ``outcome`` (its answers are deterministic)."""
    stub.script(outcome)
    with requests.post(stub.interpreter_url, data={"data": STUB_QUERY}, stream=True) as response:
        return response.raw.read()


@pytest.mark.parametrize(
    ("outcome", "error_class", "share"),
    [
        ("timeout-remark", QueryTimedOut, 1.0),
        ("partial-remark", QueryTimedOut, 1.0),
        ("enomem-remark", ServerUnwell, 1.0),
        ("429", RateLimited, 1.0),
        ("504", ServerBusy, 1.0),
        ("duplicate", DuplicateQuery, 1.0),
        ("cutoff", BadResponse, 0.5),
    ],
)
def test_every_byte_of_a_failed_answer_is_reported(
    stub: StubOverpass, outcome: str, error_class: type[OverpassError], share: float
) -> None:
    whole = len(sent_bytes(stub, "partial-remark" if outcome == "partial-remark" else "ok"))
    expected = len(sent_bytes(stub, outcome)) if share == 1.0 else whole // 2
    stub.script(outcome)

    with pytest.raises(error_class) as raised:
        make_client(stub.interpreter_url).fetch(STUB_QUERY)

    assert expected > 0
    assert (raised.value.response_bytes, raised.value.request_sent) == (expected, True)


def test_bytes_received_before_a_stall_are_reported(stand_in: StandIn, session: requests.Session) -> None:
    stand_in.replies["/api/interpreter"] = Reply(stall_after=len(POIS_BODY) // 2, stall_s=0.6)

    with pytest.raises(ClientTimeout) as raised:
        make_client(stand_in.interpreter_url, session, http_timeout_s=0.2).fetch(QUERY)

    assert (raised.value.response_bytes, raised.value.request_sent) == (len(POIS_BODY) // 2, True)


def test_a_stall_before_the_answer_costs_no_bytes_but_a_request(stub: StubOverpass) -> None:
    stub.script("stall:2")

    with pytest.raises(ClientTimeout) as raised:
        make_client(stub.interpreter_url, http_timeout_s=0.3).fetch(STUB_QUERY)

    assert (raised.value.response_bytes, raised.value.request_sent) == (0, True)


def test_a_refused_connection_never_sent_the_request(session: requests.Session) -> None:
    client = make_client(f"http://127.0.0.1:{unused_port()}/api/interpreter", session)

    with pytest.raises(ConnectionFailed) as raised:
        client.fetch(QUERY)

    assert (raised.value.response_bytes, raised.value.request_sent) == (0, False)


def test_a_query_that_cannot_be_encoded_is_never_sent(stub: StubOverpass) -> None:
    query = '[out:json];nwr["amenity"="caf\ud800"](48.85,2.29,48.86,2.30);out center tags;'

    with pytest.raises(QueryUnsendable, match="No request was made") as raised:
        make_client(stub.interpreter_url).fetch(query)

    assert (raised.value.request_sent, raised.value.retryable, raised.value.trips_breaker) == (
        False,
        False,
        False,
    )
    assert stub.stats().calls == 0


def test_a_trickled_body_ends_by_the_deadline(stub: StubOverpass) -> None:
    # Each read gets a few bytes long before the read timeout: only a deadline for the whole call
    # ends it. Without one it would hold its permit for the whole trickle (minutes, see below).
    pause_s, deadline_s = 0.05, 1.5
    whole = len(sent_bytes(stub, "ok"))
    assert whole / TRICKLE_BYTES * pause_s > 10 * deadline_s
    stub.script(f"trickle:{pause_s}")
    hog = cpu_hog()
    started = time.monotonic()

    with hog, pytest.raises(ClientTimeout, match="deadline") as raised:
        make_client(stub.interpreter_url, http_timeout_s=deadline_s).fetch(STUB_QUERY)

    took = time.monotonic() - started
    assert deadline_s <= took < deadline_s + 2.0
    assert 0 < raised.value.response_bytes < whole
    assert raised.value.request_sent


def test_a_body_without_length_trickled_past_the_deadline_is_a_timeout_not_a_short_answer(
    stand_in: StandIn, session: requests.Session
) -> None:
    stand_in.replies["/api/interpreter"] = Reply(trickle_s=0.05)
    started = time.monotonic()

    with pytest.raises(ClientTimeout):
        make_client(stand_in.interpreter_url, session, http_timeout_s=0.5).fetch(QUERY)

    assert time.monotonic() - started < 2.5


def test_the_connection_of_a_call_past_its_deadline_is_not_reused(stub: StubOverpass) -> None:
    client = make_client(stub.interpreter_url, http_timeout_s=0.5)
    stub.script("trickle:0.05")
    with pytest.raises(ClientTimeout):
        client.fetch(STUB_QUERY)

    result = client.fetch(STUB_QUERY)

    assert result.parsed.pois


def test_a_compressed_answer_is_read_decoded_and_charged_as_sent(
    stand_in: StandIn, session: requests.Session
) -> None:
    compressed = gzip.compress(POIS_BODY)
    stand_in.replies["/api/interpreter"] = Reply(body=compressed, content_encoding="gzip")

    result = make_client(stand_in.interpreter_url, session).fetch(QUERY)

    assert len(result.parsed.pois) == 4
    assert result.response_bytes == len(compressed)  # the quota counts bytes on the wire


def test_calls_one_after_another_reuse_one_connection(stand_in: StandIn) -> None:
    stand_in.replies["/api/interpreter"] = Reply()
    client = make_client(stand_in.interpreter_url)

    for _ in range(5):
        client.fetch(QUERY)

    assert len({request.client_port for request in stand_in.received}) == 1

"""Issue #17's seven findings, one test each, through names that existed before the issue was fixed.

tests/unit/test_hostile_server.py tests the fix through the names it added
(``AnswerTooLarge``, ``Redirected``, ``CallCost``...). These use only
``OverpassClient(url, user_agent=..., http_timeout_s=...).fetch``,
``actors._call_overpass``, ``load_settings`` and the error classes every
release had, so that they run unchanged against the code before the fix
(copy this file and tests/support/hostile.py into a checkout of it) and
show each finding failing there. A call that would hang on the old code is
run in a thread and given a few seconds.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from enrichment_actors import actors
from enrichment_actors.overpass_client import OverpassClient
from enrichment_actors.overpass_responses import ClientTimeout, OverpassError, QueryTooLarge
from enrichment_actors.settings import SettingsError, load_settings
from enrichment_middleware.usage import take_charged_bytes, take_no_call
from tests.support.hostile import HostileServer
from tests.support.product import product


@pytest.fixture(autouse=True)
def _built() -> None:
    """The product built in this process: the actors' functions read it."""
    product()


T = TypeVar("T")
USER_AGENT = "overpass-enrichment-tests/0.1 (tests@example.org)"
QUERY = '[out:json][timeout:25];nwr["amenity"](46.50,6.62,46.52,6.65);out center tags;'
#: Larger than the default OVERPASS_MAX_ANSWER_BYTES (128 MiB) once inflated.
BOMB_BYTES = 160 * 1024 * 1024


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result or exception; AssertionError if it is still running after ``seconds``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call was still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer(bomb_bytes=BOMB_BYTES) as server:
        yield server


def client_of(url: str, http_timeout_s: float = 5.0) -> OverpassClient:
    return OverpassClient(url, user_agent=USER_AGENT, http_timeout_s=http_timeout_s)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# 1. A gzip bomb is read only up to the cap on decoded bytes, and split as too large.
def test_finding_1_a_gzip_bomb_is_read_only_up_to_the_cap(server: HostileServer) -> None:
    server.script("gzip-bomb")

    with pytest.raises(QueryTooLarge) as raised:
        within(20, lambda: client_of(server.interpreter_url, http_timeout_s=15).fetch(QUERY))

    assert raised.value.response_bytes <= len(server.bomb) + 64


# 2. What crossed the wire is charged to the quota whatever ends the call (here a MemoryError).
def test_finding_2_bytes_are_charged_whatever_ends_the_call(server: HostileServer) -> None:
    server.script("ok")
    take_charged_bytes()
    take_no_call()

    def out_of_memory(status: int, body: bytes) -> Any:
        raise MemoryError

    try:
        with pytest.raises(MemoryError):
            actors._call_overpass(client_of(server.interpreter_url), QUERY, out_of_memory)
        charged = take_charged_bytes()
    finally:
        take_no_call()
    server.wait_idle()
    assert charged >= server.stats.bytes_sent > 0, (charged, server.stats)


# 3. Settings no call could send are refused at start, not at every call.
@pytest.mark.parametrize(
    "environ",
    [
        {"OVERPASS_CONTACT": "почта@пример.рф"},
        {"OVERPASS_CONTACT": "ops@example.org\r\nX-Evil: 1"},
        {"OVERPASS_URL": "http://host:99999/api/interpreter"},
    ],
    ids=["non-ascii-contact", "contact-with-a-line-break", "bad-port"],
)
def test_finding_3_unsendable_settings_are_refused_at_start(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(environ)


# 4. The password in OVERPASS_URL never shows in an error.
def test_finding_4_the_url_password_never_shows_in_errors() -> None:
    url = f"http://user:s3cretpw@127.0.0.1:{closed_port()}/api/interpreter"

    with pytest.raises(OverpassError) as raised:
        client_of(url, http_timeout_s=2).fetch(QUERY)

    assert "s3cretpw" not in f"{raised.value} {raised.value.detail}"


# 5. A redirect is not followed: the host it names gets no request.
def test_finding_5_a_redirect_is_not_followed(server: HostileServer) -> None:
    with HostileServer() as target:
        server.script("redirect")
        server.redirect_target = target.interpreter_url

        with pytest.raises(OverpassError):
            within(10, lambda: client_of(server.interpreter_url).fetch(QUERY))

        assert target.stats.requests == 0


# 6. An 8 MiB remark is repeated only in part.
def test_finding_6_a_huge_remark_is_cut_in_the_error(server: HostileServer) -> None:
    server.script("huge-remark")

    with pytest.raises(OverpassError) as raised:
        within(30, lambda: client_of(server.interpreter_url, http_timeout_s=20).fetch(QUERY))

    assert len(str(raised.value)) < 1000 and len(raised.value.detail) < 1000


# 7. Headers trickled a byte at a time end by the call's deadline.
def test_finding_7_trickled_headers_end_by_the_deadline(server: HostileServer) -> None:
    server.script("trickled-headers")
    started = time.monotonic()

    with pytest.raises(ClientTimeout):
        within(5, lambda: client_of(server.interpreter_url, http_timeout_s=0.5).fetch(QUERY))

    assert time.monotonic() - started < 1.0

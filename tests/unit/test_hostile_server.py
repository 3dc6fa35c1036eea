"""Issue #17: a hostile Overpass server costs a bounded amount and learns nothing it should not.

One test per finding, each against a real HTTP server on loopback that
behaves that way (tests/support/hostile.py).
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from enrichment_actors import actors
from enrichment_actors.overpass_client import OverpassClient
from enrichment_actors.overpass_pause import REDIRECTED, refuses_us
from enrichment_actors.overpass_responses import (
    AnswerTooLarge,
    ClientTimeout,
    OverpassError,
    QueryTooLarge,
    Redirected,
    read_response,
)
from enrichment_actors.settings import SettingsError, load_settings
from enrichment_middleware import failpoints
from enrichment_middleware.retries import error_text, traceback_text
from enrichment_middleware.usage import take_charged_bytes, take_no_call
from tests.support.hostile import HostileServer
from tests.support.product import product


@pytest.fixture(autouse=True)
def _built() -> None:
    """The product built in this process: the actors' functions read it."""
    product()


USER_AGENT = "overpass-enrichment-tests/0.1 (tests@example.org)"
QUERY = '[out:json][timeout:25];nwr["amenity"](46.50,6.62,46.52,6.65);out center tags;'
CAP = 4 * 1024 * 1024


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer(bomb_bytes=64 * 1024 * 1024, remark_bytes=8 * 1024 * 1024) as server:
        yield server


@pytest.fixture
def clean() -> Iterator[None]:
    take_charged_bytes()
    take_no_call()
    yield
    take_charged_bytes()
    take_no_call()


def client_of(url: str, http_timeout_s: float = 5.0) -> OverpassClient:
    return OverpassClient(url, user_agent=USER_AGENT, http_timeout_s=http_timeout_s, max_answer_bytes=CAP)


# 1. One bound on every answer read.
def test_a_gzip_bomb_ends_the_call_at_the_cap_as_too_large(server: HostileServer) -> None:
    server.script("gzip-bomb")

    with pytest.raises(AnswerTooLarge) as raised:
        client_of(server.interpreter_url).fetch(QUERY)

    assert isinstance(raised.value, QueryTooLarge)  # the fetch splits it, never retries it as it was
    # What crossed the wire, not what it inflates to (the head is estimated: never less than sent).
    assert raised.value.response_bytes <= len(server.bomb) + 64


# 2. Bytes on the wire are charged whatever ends the call.
@pytest.mark.parametrize("behaviour", ["gzip-bomb", "ok"])
def test_bytes_are_charged_whatever_ends_the_call(server: HostileServer, clean: None, behaviour: str) -> None:
    server.script(behaviour)

    def out_of_memory(status: int, body: bytes) -> Any:
        raise MemoryError

    with pytest.raises((MemoryError, AnswerTooLarge)):
        actors._call_overpass(client_of(server.interpreter_url), QUERY, out_of_memory)

    charged = take_charged_bytes()
    server.wait_idle()
    assert charged >= server.stats.bytes_sent > 0, (charged, server.stats)


def test_bytes_arriving_between_the_count_and_the_close_are_charged(
    server: HostileServer, clean: None
) -> None:
    """A call cut short (the cap) while the server still sends: what lands before the close is charged
    too (a clean-clone chaos run once charged 67 KB less than the server got onto the wire)."""
    # Stored, not deflated: three times the cap on the wire, so the server is still sending at the cap.
    server.bomb = gzip.compress(os.urandom(3 * CAP), 0)
    server.script("gzip-bomb")

    with failpoints.hooked("overpass.counted", lambda: time.sleep(0.3)), pytest.raises(AnswerTooLarge):
        actors._call_overpass(client_of(server.interpreter_url), QUERY, read_response)

    charged = take_charged_bytes()
    server.wait_idle()
    assert charged >= server.stats.bytes_sent > CAP, (charged, server.stats)


# 3. A contact that cannot go into a header is refused at start, not per call.
@pytest.mark.parametrize("contact", ["почта@пример.рф", "ops@example.org\r\nX-Evil: 1"])
def test_an_unsendable_contact_is_refused_at_start(contact: str) -> None:
    with pytest.raises(SettingsError, match="OVERPASS_CONTACT"):
        load_settings({"OVERPASS_CONTACT": contact})


def test_a_url_with_a_bad_port_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="OVERPASS_URL"):
        load_settings({"OVERPASS_URL": "http://host:99999/api/interpreter"})


# 4. The password in OVERPASS_URL never shows.
def test_the_url_password_never_shows_in_errors(server: HostileServer) -> None:
    server.script("trickled-headers")
    url = server.interpreter_url.replace("http://", "http://user:s3cretpw@")

    with pytest.raises(OverpassError) as raised:
        client_of(url, http_timeout_s=0.5).fetch(QUERY)

    shown = " ".join([str(raised.value), raised.value.detail, error_text(raised.value)])
    assert "s3cretpw" not in shown
    assert "user:***@" in str(raised.value)


# 5. Redirects are not followed: the endpoint is held, the Location named (masked, cut).
def test_a_redirect_is_not_followed_and_holds_the_endpoint(server: HostileServer) -> None:
    server.script("redirect")
    server.redirect_target = "https://other:pw123456@elsewhere.example/" + "x" * 5000

    with pytest.raises(Redirected) as raised:
        client_of(server.interpreter_url).fetch(QUERY)

    assert server.stats.redirect_target_requests == 0
    assert refuses_us(raised.value) == REDIRECTED
    assert "pw123456" not in str(raised.value) and len(str(raised.value)) < 600


# 6. A huge remark is repeated only in part.
def test_a_huge_remark_is_cut_in_every_text_kept(server: HostileServer) -> None:
    server.script("huge-remark")

    with pytest.raises(QueryTooLarge) as raised:
        client_of(server.interpreter_url, http_timeout_s=20).fetch(QUERY)

    assert len(str(raised.value)) < 1000 and len(raised.value.detail) < 1000
    try:
        raise raised.value
    except OverpassError as exc:
        assert len(error_text(exc)) < 1000
        assert len(traceback_text()) < 5000


# 7. Trickled headers end by the call's deadline.
def test_trickled_headers_end_by_the_deadline(server: HostileServer) -> None:
    server.script("trickled-headers")
    started = time.monotonic()

    with pytest.raises(ClientTimeout):
        client_of(server.interpreter_url, http_timeout_s=0.5).fetch(QUERY)

    assert time.monotonic() - started < 1.0
    time.sleep(0.2)  # the server sees the connection closed at its next byte
    assert server.stats.longest_call_s < 1.0, server.stats

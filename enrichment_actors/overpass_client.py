"""Talk HTTP to one Overpass API instance: run a query, read the slot status, free our slots.

Every failure leaves this module as an :class:`OverpassError` subclass (see
:mod:`enrichment_actors.overpass_responses`), so callers decide on retries and
the circuit breaker from ``exc.retryable`` and ``exc.trips_breaker`` alone.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import requests
import urllib3.exceptions

from enrichment_middleware.failpoints import failpoint
from enrichment_middleware.redaction import redact, redact_url

from .overpass_answer import ACCEPT_ENCODING, AnswerBody, read_body
from .overpass_deadline import CallDeadline, DeadlineAdapter
from .overpass_responses import (
    BadResponse,
    ClientTimeout,
    ConnectionFailed,
    OverpassError,
    ParsedResponse,
    QueryUnsendable,
    Redirected,
    cut,
    read_response,
)
from .overpass_status import SlotStatus, StatusUnavailable, parse_status

__all__ = ["DEFAULT_MAX_ANSWER_BYTES", "CallCost", "FetchResult", "OverpassClient"]

logger = logging.getLogger(__name__)

#: Connections kept open per host: enough for every worker thread of a process.
POOL_SIZE = 32
#: Upper bound on the connect timeout: a server that cannot accept a TCP
#: connection in this time is not going to answer the query either.
MAX_CONNECT_TIMEOUT_S = 10.0
#: The most of the status page that is read: it is a few lines.
_STATUS_PAGE_BYTES = 64 * 1024
#: Upper bound on the read timeout of the small status and kill pages.
MAX_STATUS_TIMEOUT_S = 30.0
#: The body is read this much at a time.
_CHUNK_BYTES = 64 * 1024
#: The largest answer read, decoded (OVERPASS_MAX_ANSWER_BYTES): [maxsize] bounds the server's memory, not this.
DEFAULT_MAX_ANSWER_BYTES = 128 * 1024 * 1024


@dataclass
class CallCost:
    """What one call cost, filled in by :meth:`OverpassClient.fetch` whatever ends it.

    Parameters:
      wire_bytes: Body bytes that crossed the wire, read or not (the kernel's
        count where it has one: bytes that arrived after the call was ended
        early count too), before any decoding: what the download quota charges.
      server_s, request_sent: what the server-time budget charges (:mod:`.server_time`).
    """

    wire_bytes: int = 0
    #: From the request sent to the status line received (``Response.elapsed``); None: no status line.
    server_s: float | None = None
    #: Whether the request left this process.
    request_sent: bool = False


@dataclass(frozen=True)
class FetchResult:
    """One successful query.

    Parameters:
      parsed: The POIs, skipped count and informational remark.
      response_bytes: Size of the body, for the download quota.
      duration_s: From sending the request to the last byte of the body.
      status: The HTTP status (always 200 for a success).
      server_s: From sending the request to the status line (``Response.elapsed``):
        the server's time, which sends its headers when the query is done.
    """

    parsed: ParsedResponse
    response_bytes: int
    duration_s: float
    status: int
    server_s: float | None = None


class OverpassClient:
    """An HTTP client for one Overpass API instance.

    One ``requests.Session`` per client keeps connections open between
    queries; share one client between the threads of a process.

    Examples:
      >>> client = OverpassClient(
      ...     "https://overpass-api.de/api/interpreter",
      ...     user_agent="overpass-enrichment/0.1 (ops@example.org)",
      ...     http_timeout_s=200,
      ... )
      >>> client.status_url
      'https://overpass-api.de/api/status'
      >>> query = "[out:json][timeout:180];nwr[amenity=cafe](48.85,2.29,48.86,2.30);out center tags;"
      >>> result = client.fetch(query)  # doctest: +SKIP
      >>> result.parsed.pois[0]  # doctest: +SKIP
      Poi(element_type='node', osm_id=..., lat=48.85..., lon=2.29..., tags={'amenity': 'cafe', ...})

    Parameters:
      interpreter_url: The ``.../api/interpreter`` URL; the status and
        kill URLs are derived from it (``.../api/status``,
        ``.../api/kill_my_queries``).
      user_agent: Sent with every request. Overpass rejects missing or
        generic ones (HTTP 406): name the product, its version and a contact.
      http_timeout_s: Deadline of a query's whole call, from sending it to
        the last byte of the body, and the longest any one read may wait.
        Set it above the query's own ``[timeout:N]`` plus the time a
        rate-limited server holds a query waiting for a slot (up to 15 s),
        so the server reports its own timeout first. The connect timeout is
        ``min(10, http_timeout_s)``; the wait for the status line gets what
        connecting left of the deadline, then a watchdog bounds the body.
      max_answer_bytes: The most an answer may be, decoded; a larger one ends
        the call with :class:`AnswerTooLarge`.
      session: A session to use instead of a new pooled one (its adapters
        are left as they are, so only their reads of the body are bounded by
        the deadline, not the wait for the headers).
    """

    def __init__(
        self,
        interpreter_url: str,
        *,
        user_agent: str,
        http_timeout_s: float,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        session: requests.Session | None = None,
    ) -> None:
        base, found, _ = interpreter_url.rstrip("/").rpartition("/interpreter")
        scheme = urlsplit(interpreter_url).scheme
        if not found or scheme not in ("http", "https"):
            raise ValueError(
                f"interpreter_url must be an http(s) URL ending in /interpreter, like "
                f"'https://overpass-api.de/api/interpreter'; got {redact_url(interpreter_url)!r}."
            )
        if not user_agent.strip():
            raise ValueError(
                "user_agent is empty: Overpass rejects requests without one (HTTP 406). "
                "Name the product, its version and a contact, e.g. 'overpass-enrichment/0.1 (ops@example.org)'."
            )
        if not is_sendable_header(user_agent):
            raise ValueError(
                f"user_agent {cut(ascii(user_agent), 80)} cannot be sent in an HTTP header: use printable "
                "ASCII only (an e-mail address, a URL; a domain in its xn-- form)."
            )
        if http_timeout_s <= 0:
            raise ValueError(f"http_timeout_s must be above 0 seconds; got {http_timeout_s!r}.")
        if max_answer_bytes <= 0:
            raise ValueError(f"max_answer_bytes must be above 0; got {max_answer_bytes!r}.")
        self.interpreter_url = base + "/interpreter"
        #: The interpreter URL as messages and logs show it: its password masked.
        self.shown_url = redact_url(self.interpreter_url)
        self.max_answer_bytes = max_answer_bytes
        self.status_url = base + "/status"
        self.kill_url = base + "/kill_my_queries"
        self.user_agent = user_agent
        self.http_timeout_s = http_timeout_s
        connect_s = min(MAX_CONNECT_TIMEOUT_S, http_timeout_s)
        # total: the wait for the status line gets what connecting left of
        # the deadline, so the call ends by it even before the watchdog starts.
        self._query_timeout = urllib3.Timeout(connect=connect_s, read=http_timeout_s, total=http_timeout_s)
        self._status_timeout = (connect_s, min(MAX_STATUS_TIMEOUT_S, http_timeout_s))
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": ACCEPT_ENCODING}
        self._form_headers = {**self._headers, "Content-Type": "application/x-www-form-urlencoded"}
        if session is None:
            session = requests.Session()
            adapter = DeadlineAdapter(pool_maxsize=POOL_SIZE)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session

    def fetch(
        self,
        query: str,
        *,
        read: Callable[[int, bytes], ParsedResponse] = read_response,
        cost: CallCost | None = None,
    ) -> FetchResult:
        """POST ``query`` as form field ``data`` and read the POIs of the answer (with ``read``: an
        augmented diff is read by :func:`~.overpass_adiff.read_adiff`).

        The whole call, connect, headers and body, ends by its deadline,
        ``http_timeout_s`` after it started, however slowly the server sends
        (with the client's own session; see :mod:`.overpass_deadline`). A
        redirect is not followed (:class:`Redirected`); an answer larger than
        ``max_answer_bytes`` decoded ends the call (:class:`AnswerTooLarge`).
        Raises the :class:`OverpassError` subclass that classifies the
        failure, carrying the bytes received (``response_bytes``) and whether
        the request left this process (``request_sent``). ``cost``, when
        given, is filled in whatever ends the call, a ``MemoryError`` too:
        the bytes the quota must charge. After a :class:`ClientTimeout` the
        query may still hold a slot on the server (see :meth:`kill_my_queries`).
        """
        cost = cost if cost is not None else CallCost()
        started = time.monotonic()
        try:
            form = urlencode({"data": query}).encode("ascii")
        except UnicodeError as exc:
            raise QueryUnsendable(
                f"The query cannot be sent: it is not valid Unicode text ({exc}). No request was made; "
                "fix the job's tags or box, sending it again fails the same way.",
                detail=str(exc),
                request_sent=False,
            ) from exc
        body = AnswerBody(bytearray())
        watch = CallDeadline(started + self.http_timeout_s)
        header_bytes = [0]
        try:
            with watch:
                status = self._exchange(form, body, watch, header_bytes, cost)
        except OverpassError as exc:
            exc.response_bytes = cost.wire_bytes = _wire_bytes(body, watch, header_bytes[0])
            exc.server_s, cost.request_sent = cost.server_s, exc.request_sent
            raise
        except (requests.RequestException, _DeadlinePassed) as exc:
            cost.wire_bytes = _wire_bytes(body, watch, header_bytes[0])
            # A connection never made is no timeout of a call, whenever the deadline passed.
            timed_out = isinstance(exc, _DeadlinePassed) or (watch.fired and not _never_sent(exc))
            error = self._transport_error(exc, started, cost.wire_bytes, timed_out=timed_out)
            error.server_s, cost.request_sent = cost.server_s, error.request_sent
            raise error from exc
        finally:
            cost.wire_bytes = _wire_bytes(body, watch, header_bytes[0])
        duration_s = time.monotonic() - started
        try:
            parsed = read(status, bytes(body.data))
        except OverpassError as exc:
            exc.response_bytes, exc.server_s = cost.wire_bytes, cost.server_s
            raise
        return FetchResult(
            parsed=parsed,
            response_bytes=cost.wire_bytes,
            duration_s=duration_s,
            status=status,
            server_s=cost.server_s,
        )

    def _exchange(
        self, form: bytes, body: AnswerBody, watch: CallDeadline, header_bytes: list[int], cost: CallCost
    ) -> int:
        """Send the request and read the answer's body into ``body``; the status. Runs under ``watch``."""
        # Sent until an error says it never left: whatever ends the call (an asynchronous TimeLimitExceeded
        # too), a query that may be running upstream is charged its server time.
        cost.request_sent = True
        try:
            response = self._session.post(
                self.interpreter_url,
                data=form,
                headers=self._form_headers,
                # requests takes urllib3's Timeout as it is; its type stubs only know floats.
                timeout=self._query_timeout,  # type: ignore[arg-type]
                stream=True,
                allow_redirects=False,
            )
        except UnicodeError as exc:
            # A header http.client cannot encode: refused before anything was sent.
            raise QueryUnsendable(
                f"The request to {self.shown_url} cannot be sent ({type(exc).__name__}: {cut(str(exc))}). "
                "Check OVERPASS_CONTACT and OVERPASS_USER_AGENT: printable ASCII only.",
                detail=cut(str(exc)),
                request_sent=False,
            ) from exc
        # The status line leaves the server when the query is done: this is its time, slot wait included.
        cost.server_s = response.elapsed.total_seconds()
        answered = False  # the body read to its end: the server has nothing more to send
        try:
            # Connection: close leaves the socket with the response only: watch it there too.
            watch.watch(_socket_of(response))
            header_bytes[0] = _header_bytes(response)
            if 300 <= response.status_code < 400:
                raise self._redirected(response)
            read_body(
                _chunks(response),
                encoding=response.headers.get("Content-Encoding"),
                max_bytes=self.max_answer_bytes,
                url=self.shown_url,
                body=body,
            )
            if watch.fired:
                # A body without a length ends quietly when its socket is shut down.
                raise _DeadlinePassed
            answered = True
        finally:
            # Count what arrived, read or not, while the socket is still open.
            if answered:
                watch.settle()
            else:
                watch.settle_cut_short()
            failpoint("overpass.counted")  # between the count and the close: bytes may still arrive
            if watch.fired:
                response.raw.close()  # never hand a shut-down connection back to the pool
            response.close()
        return response.status_code

    def _redirected(self, response: requests.Response) -> Redirected:
        location = cut(redact_url(response.headers.get("Location", "")), 120) or "(no Location)"
        return Redirected(
            f"{self.shown_url} answered HTTP {response.status_code} pointing to {location!r}: not followed "
            "(the query would go to a host nobody configured). Usually OVERPASS_URL says http:// where the "
            "server wants https://: set OVERPASS_URL to the address the server names, then restart the workers.",
            status=response.status_code,
            location=location,
        )

    def status(self) -> SlotStatus:
        """GET ``/api/status`` and parse it; raises :class:`StatusUnavailable` when that fails."""
        try:
            response = self._session.get(
                self.status_url, headers=self._headers, timeout=self._status_timeout, allow_redirects=False
            )
            text = response.content[:_STATUS_PAGE_BYTES].decode("utf-8", "replace")
        except requests.RequestException as exc:
            raise StatusUnavailable(
                f"Could not read {redact_url(self.status_url)} ({type(exc).__name__}: "
                f"{cut(redact(str(exc), self.status_url))}). Treat the server as unavailable and retry later."
            ) from exc
        if response.status_code != 200:
            try:
                parse_status(text)
            except StatusUnavailable as exc:
                raise StatusUnavailable(
                    f"HTTP {response.status_code} from {redact_url(self.status_url)}: {cut(str(exc))}"
                ) from None
            raise StatusUnavailable(
                f"HTTP {response.status_code} from {redact_url(self.status_url)}. Treat the server as "
                "unavailable and retry later."
            )
        return parse_status(text)

    def kill_my_queries(self) -> None:
        """Ask the server to end this IP's running queries, freeing their slots.

        Best effort, for after a client-side timeout (the server goes on
        running the query otherwise): failures are logged, never raised.
        """
        try:
            response = self._session.get(
                self.kill_url, headers=self._headers, timeout=self._status_timeout, allow_redirects=False
            )
            response.close()
        except Exception as exc:
            # Cleanup on an error path: raising here would hide the error being handled.
            logger.warning(
                "Could not ask %s to end our queries: %s: %s",
                redact_url(self.kill_url),
                type(exc).__name__,
                cut(redact(str(exc), self.kill_url)),
            )
            return
        if response.status_code != 200:
            logger.warning(
                "%s answered HTTP %s; our queries may still hold slots.",
                redact_url(self.kill_url),
                response.status_code,
            )

    def _transport_error(
        self, exc: Exception, started: float, received: int, *, timed_out: bool
    ) -> OverpassError:
        waited = f"after {time.monotonic() - started:.1f} s"
        url = self.shown_url
        said = cut(redact(str(exc), self.interpreter_url))
        got = f", {received} bytes of body received" if received else ""
        if timed_out:
            return ClientTimeout(
                f"No complete answer from {url} {waited}{got}: the call's deadline of "
                f"{self.http_timeout_s:g} s passed while the answer was still arriving. The query may still "
                "be running and holding a slot: call kill_my_queries(), then retry.",
                detail=said,
                response_bytes=received,
            )
        # A stalled body surfaces as a ConnectionError around urllib3's ReadTimeoutError.
        read_timed_out = isinstance(exc, requests.ReadTimeout) or (
            isinstance(exc, requests.ConnectionError)
            and bool(exc.args)
            and isinstance(exc.args[0], urllib3.exceptions.ReadTimeoutError)
        )
        if read_timed_out:
            return ClientTimeout(
                f"No complete answer from {url} {waited}{got} (read timeout "
                f"{self.http_timeout_s} s). The query may still be running and holding a slot: call "
                "kill_my_queries(), then retry; set the timeout a little above the query's [timeout:N] "
                "plus the server's wait for a slot.",
                detail=said,
                response_bytes=received,
            )
        if isinstance(
            exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError
        ):
            return BadResponse(
                f"The answer from {url} broke off mid-body {waited}{got} ({said}). "
                "The server may have died mid-response: retry the query later.",
                detail=said,
                response_bytes=received,
            )
        # Includes ConnectTimeout: nothing reached the server, so no slot is held.
        return ConnectionFailed(
            f"Could not reach {url} {waited} ({type(exc).__name__}: {said}). "
            "Check the URL and the network; the request is safe to retry.",
            detail=said,
            response_bytes=received,
            request_sent=not _never_sent(exc),
        )


class _DeadlinePassed(Exception):
    """The call's deadline passed between two chunks of the body."""


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, undecoded: each piece is what one read of the socket gave (at most 64 KiB).

    Unlike ``iter_content``, a piece never waits to be full, so the bytes
    received before a failure are all counted and the deadline is checked
    between reads. Errors are raised as ``iter_content`` raises them.
    """
    raw = response.raw
    try:
        # As received: decoded by read_body, which decodes only what we asked for, within the cap.
        while chunk := raw.read1(_CHUNK_BYTES, decode_content=False):
            yield chunk
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.ConnectionError(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc


def _wire_bytes(body: AnswerBody, watch: CallDeadline, header_bytes: int) -> int:
    """Body bytes that crossed the wire: the kernel's count less the headers, or at least those read.

    A call whose deadline passed is charged every byte received: its head may never have been finished
    (trickled), and http.client then returns what it had as headers.
    """
    received = watch.received
    if received is None:
        return body.wire_bytes
    return max(body.wire_bytes, received if watch.fired else received - header_bytes)


def _header_bytes(response: requests.Response) -> int:
    """About the size of the status line and headers as sent (never more: the rest is charged as body)."""
    original = getattr(response.raw, "_original_response", None)
    message = getattr(original, "msg", None)
    items = message.raw_items() if message is not None else response.headers.items()
    status_line = len(f"HTTP/1.1 {response.status_code} {response.reason or ''}\r\n")
    return status_line + sum(len(name) + len(value) + 4 for name, value in items) + 2


def is_sendable_header(value: str) -> bool:
    """Whether ``value`` can go into an HTTP header as it is: printable ASCII, no CR, LF or other control."""
    return value.isascii() and value.isprintable()


def _socket_of(response: requests.Response) -> socket.socket | None:
    """The socket a streamed response is read from, or None if it cannot be found.

    urllib3 keeps it on the connection, unless the server said
    ``Connection: close``: http.client then drops the connection's reference
    and only the response's file still holds the socket.
    """
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is None:
        # http.client.HTTPResponse.fp -> BufferedReader -> SocketIO._sock
        fp = getattr(getattr(response.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _never_sent(exc: Exception) -> bool:
    """Whether ``exc`` certainly happened before the request left this process."""
    if isinstance(
        exc,
        requests.ConnectTimeout
        | requests.exceptions.SSLError
        | requests.exceptions.InvalidURL
        | requests.exceptions.InvalidSchema
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidHeader,
    ):
        return True
    # Connection refused, name not resolved: urllib3 never got a connection.
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)

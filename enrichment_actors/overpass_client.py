"""Talk HTTP to one Overpass API instance: run a query, read the slot status, free our slots.

Every failure leaves this module as an :class:`OverpassError` subclass (see
:mod:`enrichment_actors.overpass_responses`), so callers decide on retries and
the circuit breaker from ``exc.retryable`` and ``exc.trips_breaker`` alone.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from .overpass_responses import (
    BadResponse,
    ClientTimeout,
    ConnectionFailed,
    OverpassError,
    ParsedResponse,
    QueryUnsendable,
    read_response,
)
from .overpass_status import SlotStatus, StatusUnavailable, parse_status

__all__ = ["FetchResult", "OverpassClient"]

logger = logging.getLogger(__name__)

#: Connections kept open per host: enough for every worker thread of a process.
POOL_SIZE = 32
#: Upper bound on the connect timeout: a server that cannot accept a TCP
#: connection in this time is not going to answer the query either.
MAX_CONNECT_TIMEOUT_S = 10.0
#: Upper bound on the read timeout of the small status and kill pages.
MAX_STATUS_TIMEOUT_S = 30.0
#: The body is read this much at a time.
_CHUNK_BYTES = 64 * 1024


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
      session: A session to use instead of a new pooled one (its adapters
        are left as they are).
    """

    def __init__(
        self,
        interpreter_url: str,
        *,
        user_agent: str,
        http_timeout_s: float,
        session: requests.Session | None = None,
    ) -> None:
        base, found, _ = interpreter_url.rstrip("/").rpartition("/interpreter")
        scheme = urlsplit(interpreter_url).scheme
        if not found or scheme not in ("http", "https"):
            raise ValueError(
                f"interpreter_url must be an http(s) URL ending in /interpreter, like "
                f"'https://overpass-api.de/api/interpreter'; got {interpreter_url!r}."
            )
        if not user_agent.strip():
            raise ValueError(
                "user_agent is empty: Overpass rejects requests without one (HTTP 406). "
                "Name the product, its version and a contact, e.g. 'overpass-enrichment/0.1 (ops@example.org)'."
            )
        if http_timeout_s <= 0:
            raise ValueError(f"http_timeout_s must be above 0 seconds; got {http_timeout_s!r}.")
        self.interpreter_url = base + "/interpreter"
        self.status_url = base + "/status"
        self.kill_url = base + "/kill_my_queries"
        self.user_agent = user_agent
        self.http_timeout_s = http_timeout_s
        connect_s = min(MAX_CONNECT_TIMEOUT_S, http_timeout_s)
        # total: the wait for the status line gets what connecting left of
        # the deadline, so the call ends by it even before the watchdog starts.
        self._query_timeout = urllib3.Timeout(connect=connect_s, read=http_timeout_s, total=http_timeout_s)
        self._status_timeout = (connect_s, min(MAX_STATUS_TIMEOUT_S, http_timeout_s))
        self._headers = {"User-Agent": user_agent}
        self._form_headers = {**self._headers, "Content-Type": "application/x-www-form-urlencoded"}
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_maxsize=POOL_SIZE)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session

    def fetch(
        self, query: str, *, read: Callable[[int, bytes], ParsedResponse] = read_response
    ) -> FetchResult:
        """POST ``query`` as form field ``data`` and read the POIs of the answer (with ``read``: an
        augmented diff is read by :func:`~.overpass_adiff.read_adiff`).

        The whole call ends by its deadline, ``http_timeout_s`` after it
        started, however slowly the server sends the body (only a server
        that trickles its headers could overrun it). Raises the
        :class:`OverpassError` subclass that classifies the failure, carrying
        the body bytes received before it (``response_bytes``) and whether
        the request left this process (``request_sent``); after a
        :class:`ClientTimeout` the query may still hold a slot on the server
        (see :meth:`kill_my_queries`).
        """
        started = time.monotonic()
        deadline = started + self.http_timeout_s
        try:
            form = urlencode({"data": query}).encode("ascii")
        except UnicodeError as exc:
            raise QueryUnsendable(
                f"The query cannot be sent: it is not valid Unicode text ({exc}). No request was made; "
                "fix the job's tags or box, sending it again fails the same way.",
                detail=str(exc),
                request_sent=False,
            ) from exc
        body = bytearray()
        watchdog: _Watchdog | None = None
        server_s: float | None = None
        try:
            response = self._session.post(
                self.interpreter_url,
                data=form,
                headers=self._form_headers,
                # requests takes urllib3's Timeout as it is; its type stubs only know floats.
                timeout=self._query_timeout,  # type: ignore[arg-type]
                stream=True,
            )
            server_s = response.elapsed.total_seconds()
            try:
                # The read timeout only bounds each wait for a byte: a server
                # sending a few bytes at a time would keep the call (and its
                # permit) alive for ever. The deadline is checked between
                # reads, and the watchdog ends a read still blocked at it.
                watchdog = _Watchdog(_socket_of(response), deadline)
                for chunk in _chunks(response):
                    body += chunk
                    if time.monotonic() > deadline:
                        raise _DeadlinePassed
                if watchdog.fired:
                    # A body without a length ends quietly when its socket is shut down.
                    raise _DeadlinePassed
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                    if watchdog.fired:
                        response.raw.close()  # never hand a shut-down connection back to the pool
                response.close()
        except (requests.RequestException, _DeadlinePassed) as exc:
            timed_out = isinstance(exc, _DeadlinePassed) or (watchdog is not None and watchdog.fired)
            error = self._transport_error(exc, started, len(body), timed_out=timed_out)
            error.server_s = server_s
            raise error from exc
        duration_s = time.monotonic() - started
        try:
            parsed = read(response.status_code, bytes(body))
        except OverpassError as exc:
            exc.server_s = server_s
            raise
        return FetchResult(parsed, len(body), duration_s, response.status_code, server_s)

    def status(self) -> SlotStatus:
        """GET ``/api/status`` and parse it; raises :class:`StatusUnavailable` when that fails."""
        try:
            response = self._session.get(self.status_url, headers=self._headers, timeout=self._status_timeout)
            text = response.content.decode("utf-8", "replace")
        except requests.RequestException as exc:
            raise StatusUnavailable(
                f"Could not read {self.status_url} ({type(exc).__name__}: {exc}). Treat the server as "
                "unavailable and retry later."
            ) from exc
        if response.status_code != 200:
            try:
                parse_status(text)
            except StatusUnavailable as exc:
                raise StatusUnavailable(
                    f"HTTP {response.status_code} from {self.status_url}: {exc}"
                ) from None
            raise StatusUnavailable(
                f"HTTP {response.status_code} from {self.status_url}. Treat the server as unavailable "
                "and retry later."
            )
        return parse_status(text)

    def kill_my_queries(self) -> None:
        """Ask the server to end this IP's running queries, freeing their slots.

        Best effort, for after a client-side timeout (the server goes on
        running the query otherwise): failures are logged, never raised.
        """
        try:
            response = self._session.get(self.kill_url, headers=self._headers, timeout=self._status_timeout)
        except Exception as exc:
            # Cleanup on an error path: raising here would hide the error being handled.
            logger.warning(
                "Could not ask %s to end our queries: %s: %s", self.kill_url, type(exc).__name__, exc
            )
            return
        if response.status_code != 200:
            logger.warning(
                "%s answered HTTP %s; our queries may still hold slots.", self.kill_url, response.status_code
            )

    def _transport_error(
        self, exc: Exception, started: float, received: int, *, timed_out: bool
    ) -> OverpassError:
        waited = f"after {time.monotonic() - started:.1f} s"
        got = f", {received} bytes of body received" if received else ""
        if timed_out:
            return ClientTimeout(
                f"No complete answer from {self.interpreter_url} {waited}{got}: the call's deadline of "
                f"{self.http_timeout_s:g} s passed while the body was still arriving. The query may still "
                "be running and holding a slot: call kill_my_queries(), then retry.",
                detail=str(exc),
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
                f"No complete answer from {self.interpreter_url} {waited}{got} (read timeout "
                f"{self.http_timeout_s} s). The query may still be running and holding a slot: call "
                "kill_my_queries(), then retry; set the timeout a little above the query's [timeout:N] "
                "plus the server's wait for a slot.",
                detail=str(exc),
                response_bytes=received,
            )
        if isinstance(
            exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError
        ):
            return BadResponse(
                f"The answer from {self.interpreter_url} broke off mid-body {waited}{got} ({exc}). "
                "The server may have died mid-response: retry the query later.",
                detail=str(exc),
                response_bytes=received,
            )
        # Includes ConnectTimeout: nothing reached the server, so no slot is held.
        return ConnectionFailed(
            f"Could not reach {self.interpreter_url} {waited} ({type(exc).__name__}: {exc}). "
            "Check the URL and the network; the request is safe to retry.",
            detail=str(exc),
            response_bytes=received,
            request_sent=not _never_sent(exc),
        )


class _DeadlinePassed(Exception):
    """The call's deadline passed between two chunks of the body."""


class _Watchdog:
    """Shut a response's socket down at a deadline, which ends a read blocked on it at once.

    Closing a socket does not wake a thread blocked reading it; shutting it
    down does. The connection is closed afterwards, never reused.
    """

    def __init__(self, sock: socket.socket | None, deadline: float) -> None:
        self.fired = False
        self._socket = sock
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: each piece is what one read of the socket gave (at most 64 KiB).

    Unlike ``iter_content``, a piece never waits to be full, so the bytes
    received before a failure are all counted and the deadline is checked
    between reads. Errors are raised as ``iter_content`` raises them.
    """
    raw = response.raw
    try:
        while chunk := raw.read1(_CHUNK_BYTES, decode_content=True):
            yield chunk
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.ConnectionError(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc


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

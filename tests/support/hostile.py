"""A scriptable hostile Overpass server on loopback: gzip bombs, redirects, trickled headers, huge remarks.

Test support only (the product's stand-in, ``enrichment_actors.stub_overpass``,
plays an honest server). Each request to ``/api/interpreter`` gets the
behaviour of the script (one name, or a random pick among several); the
server counts what a test asserts on: requests, bytes it got onto the wire
(acknowledged by the client's kernel, from ``TCP_INFO``), calls in flight
from request received to connection closed, and their peak.

Examples:
  >>> with HostileServer() as server:  # doctest: +SKIP
  ...     server.script("gzip-bomb")
  ...     client = OverpassClient(server.interpreter_url, user_agent="t/1 (t@example.org)", http_timeout_s=5)
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import random
import re
import select
import socket
import struct
import termios
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

BEHAVIOURS = ("ok", "gzip-bomb", "redirect", "trickled-headers", "huge-remark")

#: What the bomb inflates to, and the remark's size (the issue's figures are 400-600 MB and 8 MiB).
BOMB_BYTES = 64 * 1024 * 1024
REMARK_BYTES = 8 * 1024 * 1024

_OK = json.dumps(
    {
        "version": 0.6,
        "osm3s": {"timestamp_osm_base": "2026-01-15T08:00:00Z"},
        "elements": [{"type": "node", "id": 1, "lat": 46.51, "lon": 6.63, "tags": {"amenity": "cafe"}}],
    }
).encode()
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BOX = re.compile(r"\((-?[\d.]+),(-?[\d.]+),(-?[\d.]+),(-?[\d.]+)\)")


def ok_answer(form: bytes) -> bytes:
    """An honest answer to the query in ``form``: one cafe at the centre of its box (id from the box), so
    that a fleet stores a POI per box answered; the fixed answer above when the query names no box."""
    query = parse_qs(form.decode("ascii", "replace")).get("data", [""])[0]
    match = _BOX.search(query)
    if match is None:
        return _OK
    south, west, north, east = (float(g) for g in match.groups())
    node = {
        "type": "node",
        "id": zlib.crc32(match.group(0).encode()) + 1,
        "lat": round((south + north) / 2, 7),
        "lon": round((west + east) / 2, 7),
        "tags": {"amenity": "cafe"},
    }
    answer = {"version": 0.6, "osm3s": {"timestamp_osm_base": "2026-01-15T08:00:00Z"}, "elements": [node]}
    return json.dumps(answer).encode()


def _bomb(size: int) -> bytes:
    # The start of a valid answer, then spaces: JSON-looking, and inflating about 1000 times.
    head = b'{"version":0.6,"elements":['
    return gzip.compress(head + b" " * (size - len(head)), 9)


@dataclass
class Stats:
    """What the server saw, over every request to /api/interpreter."""

    requests: int = 0
    redirect_target_requests: int = 0
    bytes_sent: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    longest_call_s: float = 0.0
    #: Requests answered with each behaviour.
    behaviours: dict[str, int] = field(default_factory=dict)
    #: Each call's behaviour, and when its request was received and its connection closed (monotonic).
    calls: list[tuple[str, float, float]] = field(default_factory=list)


class HostileServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 that misbehaves as scripted; a context manager."""

    def __init__(
        self, *, seed: int = 0, bomb_bytes: int = BOMB_BYTES, remark_bytes: int = REMARK_BYTES
    ) -> None:
        self.stats = Stats()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._script: tuple[str, ...] = ("ok",)
        self.bomb = _bomb(bomb_bytes)
        self.bomb_bytes = bomb_bytes
        remark = "runtime error: " + "x" * remark_bytes
        self.huge_remark = json.dumps({"version": 0.6, "elements": [], "remark": remark}).encode()
        self.trickle_s = 0.05
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # Where a redirect points: another path of this server, so a followed redirect is counted.
        self.redirect_target = self.url + "/elsewhere/api/interpreter"

    @property
    def interpreter_url(self) -> str:
        return self.url + "/api/interpreter"

    def script(self, *behaviours: str) -> None:
        """Answer every request with one of ``behaviours`` (picked at random when several)."""
        unknown = set(behaviours) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown behaviours {sorted(unknown)}; known: {BEHAVIOURS}")
        self._script = behaviours

    def pick(self) -> str:
        with self._lock:
            return self._rng.choice(self._script)

    def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Wait until no call is in flight: the server counts what it sent when a handler ends, which may
        be after the client gave up."""
        deadline = time.monotonic() + timeout_s
        while self.stats.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> HostileServer:
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _begin(self) -> float:
        with self._lock:
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        return time.monotonic()

    def _end(self, started: float, sent: int, behaviour: str = "") -> None:
        with self._lock:
            self.stats.calls.append((behaviour, started, time.monotonic()))
            self.stats.in_flight -= 1
            self.stats.bytes_sent += sent
            self.stats.longest_call_s = max(self.stats.longest_call_s, time.monotonic() - started)


def _acked(sock: socket.socket) -> int | None:
    """Bytes the peer's kernel acknowledged on ``sock`` (tcpi_bytes_acked, offset 120), if Linux says."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 136)
    except OSError:
        return None
    return struct.unpack_from("=Q", info, 120)[0] if len(info) >= 128 else None


def _wait_drained(sock: socket.socket, timeout_s: float = 0.5) -> None:
    """Wait until what was written is acknowledged (SIOCOUTQ 0) or the peer reset the connection, so the
    count is final. A reset socket keeps its unacknowledged count: waiting on it would only delay the
    moment the call is counted as ended."""

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return
        if unsent == 0 or _tcp_state(sock) == _TCP_CLOSE:
            return
        time.sleep(0.001)


#: tcpi_state of a connection that is over (reset, or closed both ways).
_TCP_CLOSE = 7


def _tcp_state(sock: socket.socket) -> int | None:
    if _TCP_INFO is None:
        return None
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)[0]
    except OSError:
        return None


def _wait_unless_closed(sock: socket.socket, seconds: float) -> None:
    """Sleep ``seconds``, or raise ``ConnectionAbortedError`` as soon as the client closes or resets the
    connection (the request was read whole: anything readable now is its end)."""
    readable, _, _ = select.select([sock], [], [], seconds)
    if readable and not sock.recv(1, socket.MSG_PEEK):
        raise ConnectionAbortedError("the client closed the connection")


def _handler(server: HostileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._reply(b"", post=False)

        def do_POST(self) -> None:
            self._reply(self.rfile.read(int(self.headers.get("Content-Length", 0))), post=True)

        def _reply(self, form: bytes, *, post: bool) -> None:
            if self.path.startswith("/elsewhere"):
                with server._lock:
                    server.stats.redirect_target_requests += 1
                self._send(200, b'{"elements": [], "secret-of-the-other-host": true}')
                return
            if self.path != "/api/interpreter":
                self._send(200, b"Rate limit: 0\n2 slots available now.\n")
                return
            started = server._begin()
            behaviour = server.pick()
            with server._lock:
                server.stats.behaviours[behaviour] = server.stats.behaviours.get(behaviour, 0) + 1
            self.head_bytes = 0
            written = 0
            try:
                written = self._behave(behaviour, form)
            except OSError:
                pass  # the client ended the call
            finally:
                self.close_connection = True
                # The body that reached the client: its kernel's acknowledgements less the head, else what
                # was written.
                _wait_drained(self.connection)
                acked = _acked(self.connection)
                body_sent = written if acked is None else acked - self.head_bytes
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                server._end(started, max(0, body_sent), behaviour)

        def _behave(self, behaviour: str, form: bytes) -> int:
            if behaviour == "gzip-bomb":
                return self._send(200, server.bomb, encoding="gzip")
            if behaviour == "redirect":
                self.send_response(307)
                self.send_header("Location", server.redirect_target)
                self.send_header("Content-Length", "0")
                self._end_head()
                return 0
            if behaviour == "huge-remark":
                return self._send(200, server.huge_remark)
            if behaviour == "trickled-headers":
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Slow: " + b"a" * 10_000
                for index in range(len(head)):
                    self.wfile.write(head[index : index + 1])
                    self.wfile.flush()
                    _wait_unless_closed(self.connection, server.trickle_s)
                return 0  # no body ever
            return self._send(200, ok_answer(form))

        def _send(self, status: int, body: bytes, *, encoding: str | None = None) -> int:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if encoding is not None:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self._end_head()
            self.wfile.write(body)
            self.wfile.flush()
            return len(body)

        def _end_head(self) -> None:
            # It closes every connection after one answer, and says so: a client that reused one it
            # was closing would send a request that never arrives (the keep-alive race, no hostile
            # behaviour of the issue's), counted by the client and not here.
            self.send_header("Connection", "close")
            # A head sent whole is no body: the counts of both sides leave it out.
            self.head_bytes = sum(map(len, self._headers_buffer)) + 2  # the blank line too
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler

"""The stand-in server itself: HTTP handling, scripted outcomes, slots, holds, duplicates and records."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ipaddress
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .history import ADIFF, History
from .outcomes import DUPLICATES_ACCEPTED, NEEDS_QUERY, TRICKLE_BYTES, Outcome, parse_outcome
from .pages import (
    BLOCKS_REMARK,
    ENOMEM_REMARK,
    ERROR_RESPONSES,
    HTML,
    OOM_REMARK,
    STATUS_SERVER_DOWN,
    TIMEOUT_REMARK,
    error_page,
    iso,
    json_document,
    lighttpd_page,
    xml_document,
)
from .queries import QueryError, parse_query, query_settings


@dataclass(frozen=True)
class StubStats:
    """A snapshot of what the stub has seen since it started or was last reset."""

    calls: int  # /api/interpreter requests received (all outcomes)
    served: dict[str, int]  # outcome name -> count ("stall" for stalls; "killed"/"aborted" when cut short)
    in_flight: int
    peak_in_flight: int  # most /api/interpreter requests handled at once
    status_calls: int
    kill_calls: int
    rejected_over_slots: int  # 429s produced by enforce_slots or hold_s (at once or after the hold)
    held: int = 0  # calls that waited for a slot (hold_s)
    refused_duplicates: int = 0  # duplicate_query pages produced by refuse_duplicates
    server_s: float = 0.0  # the server time of every interpreter call answered (see RecordedRequest)


@dataclass(frozen=True)
class RecordedRequest:
    """One request to an ``/api/`` endpoint; ``outcome`` is ``status``/``kill`` for those endpoints."""

    path: str
    method: str
    query: str
    user_agent: str
    outcome: str
    started_at: float  # epoch seconds: when the request arrived
    ended_at: float
    admitted_at: float | None = None  # epoch seconds: when a held query got its slot (hold_s)
    # The server's own time: from the request's arrival to its status line, which, as on a real
    # server, leaves only when the query is done (slot wait included); None when none was sent.
    server_s: float | None = None


@dataclass
class _Call:
    """An /api/interpreter request being handled; ``cancel`` ends its waits early."""

    outcome: Outcome | None  # None while held: taken from the script once the call gets its slot
    latency_s: float
    holds_slot: bool
    pid: int
    started_at: float
    query: str
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    waiting: bool = False  # held, waiting for a slot
    admitted_at: float | None = None
    answered_at: float | None = None  # when its status line was sent (or about to be)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # bursts of 16+ clients must not overflow the listen backlog

    def __init__(self, address: tuple[str, int], stub: StubOverpass) -> None:
        self.stub = stub
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients that hang up are not errors
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def version_string(self) -> str:
        return "lighttpd/1.4.69"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the client may already be gone
            super().finish()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        stub = self.server.stub
        route = (method, parts.path)
        if parts.path == "/api/interpreter":
            stub._interpreter(self, method, _query_text(body, parts.query, self.headers.get_content_type()))
        elif route == ("GET", "/api/status"):
            stub._status(self)
        elif route == ("GET", "/api/kill_my_queries"):
            stub._kill(self)
        elif route == ("POST", "/_stub/script"):
            stub._control_script(self, body)
        elif route == ("POST", "/_stub/reset"):
            stub.reset()
            self.reply(200, "application/json", b'{"reset": true}\n')
        elif route == ("GET", "/_stub/stats"):
            self.reply(200, "application/json", _stats_json(stub.stats()))
        else:
            self.reply(404, "text/html", lighttpd_page("404 Not Found"))

    def reply(
        self,
        status: int,
        content_type: str,
        body: bytes,
        *,
        cut_off: bool = False,
        trickle: tuple[float, threading.Event] | None = None,
    ) -> bool:
        """Send a whole response, or with ``cut_off`` half of it and then close the connection.

        With ``trickle=(pause_s, cancel)`` the body goes out :data:`TRICKLE_BYTES` at a time,
        ``pause_s`` apart, until all is sent or ``cancel`` is set. Returns False when the body was
        not sent whole (cut off, cancelled, or the client gone).
        """
        try:
            self.send_response(status)
            self.send_header("Content-type", content_type)
            if content_type.startswith("text/plain"):
                self.send_header("Access-Control-Allow-Origin", "*")
            if trickle is not None:
                pause_s, cancel = trickle
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for start in range(0, len(body), TRICKLE_BYTES):
                    self.wfile.write(body[start : start + TRICKLE_BYTES])
                    self.wfile.flush()
                    if start + TRICKLE_BYTES < len(body) and cancel.wait(pause_s):
                        self.close_connection = True
                        return False
                return True
            if cut_off:
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return False
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True
        except OSError:
            self.close_connection = True
            return False


def _query_text(body: bytes, url_query: str, content_type: str) -> str:
    if body and (content_type == "application/x-www-form-urlencoded" or body.startswith(b"data=")):
        return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).get("data", [""])[0]
    if body:
        return body.decode("utf-8", "replace")
    return parse_qs(url_query, keep_blank_values=True).get("data", [""])[0]


def _stats_json(stats: StubStats) -> bytes:
    return (json.dumps(dataclasses.asdict(stats)) + "\n").encode("utf-8")


class StubOverpass:
    """A real HTTP server on loopback that behaves like the public Overpass API.

    Each ``/api/interpreter`` call takes the next scripted outcome (then the default, ``ok``),
    waits the configured latency, and answers with the byte layout of Overpass API 0.7.62. Calls
    are counted (in flight, peak, per outcome) and recorded for assertions.

    Examples:
      >>> import requests
      >>> with StubOverpass(latency_s=0.2, slots=2) as stub:
      ...     query = '[out:json];nwr["amenity"](48.85,2.29,48.86,2.30);out center tags;'
      ...     requests.post(stub.interpreter_url, data={"data": query}).json()["elements"][0]["type"]
      ...     stub.script("429", "504", "ok")
      ...     requests.post(stub.interpreter_url, data={"data": query}).status_code
      ...     stub.stats().served
      'node'
      429
      {'ok': 1, '429': 1}

      Out of process: ``POST /_stub/script`` with ``{"outcomes": ["429"], "default": "ok",
      "latency_s": 0.2}`` (every key optional), ``POST /_stub/reset``, ``GET /_stub/stats``.

    Parameters:
      host(str): The address to listen on.  Defaults to ``127.0.0.1``.
      port(int): The port; 0 picks a free one.  A stub restarted after :meth:`stop` keeps its port.
      latency_s(float): Seconds every interpreter call waits before its outcome.  Defaults to 0.
      slots(int): What ``/api/status`` reports as ``Rate limit: N``; 0 (the default) is unlimited.
      enforce_slots(bool): When True, a call that would put more than ``slots`` calls in flight
        gets a 429 at once; it does not consume the script.
      hold_s(float): When above 0 (and ``slots`` is set), a call over the limit is held, as a real
        0.7.62 server holds it (about 15 s there): it waits up to ``hold_s`` for a slot and then
        runs, or gets a 429 when none came free; a 429 comes at once only when more than twice
        ``slots`` calls are already waiting. A held call is not in ``/api/status``'s running list
        and ``kill_my_queries`` does not reach it. Defaults to 0 (no holding).
      refuse_duplicates(bool): When True, a query text already accepted
        :data:`DUPLICATES_ACCEPTED` times within its ``[timeout:N]`` (180 s when absent) gets the
        real 200 ``duplicate_query`` page; it does not consume the script.
      pois_per_box(int|None): When set, the most elements one response carries (the first ones in
        Overpass order), so that tests and benchmarks can fix the response size.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        slots: int = 0,
        enforce_slots: bool = False,
        hold_s: float = 0.0,
        refuse_duplicates: bool = False,
        pois_per_box: int | None = None,
    ) -> None:
        if not hold_s >= 0:
            raise ValueError(f"hold_s must be 0 seconds or more, not {hold_s!r}")
        self._host = host
        self._port = port
        self._slots = slots
        self._enforce_slots = enforce_slots
        self._hold_s = float(hold_s)
        self._refuse_duplicates = refuse_duplicates
        self._accepted_texts: dict[str, list[float]] = {}
        self._pois_per_box = pois_per_box
        self._history = History()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified whenever a call ends
        self._latency_s = float(latency_s)
        self._script: collections.deque[Outcome] = collections.deque()
        self._default = Outcome("ok")
        self._in_flight: list[_Call] = []
        self._next_pid = 30_000
        self._recorded: collections.deque[RecordedRequest] = collections.deque(maxlen=100_000)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._reset_counters()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> StubOverpass:
        """Listen and serve in a background thread; returns self."""
        if self._server is not None:
            raise RuntimeError("this StubOverpass is already running; call stop() before start()")
        self._stopping = threading.Event()
        server = _Server((self._host, self._port), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="stub-overpass", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: stalled and delayed calls end at once, open connections are closed."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        with self._lock:
            for call in self._in_flight:
                call.cancel.set()
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            for connection in list(server.connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        thread.join()
        with self._idle:  # cancelled calls end at once; wait so that stats() is final after stop()
            self._idle.wait_for(lambda: not self._in_flight, timeout=2.0)
        self._server = self._thread = None

    def __enter__(self) -> StubOverpass:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the stub has no port yet: call start() (or use it in a with block) first")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def interpreter_url(self) -> str:
        return self.url + "/api/interpreter"

    @property
    def status_url(self) -> str:
        return self.url + "/api/status"

    # -- control -----------------------------------------------------------------------------------

    def script(self, *outcomes: str) -> None:
        """Queue outcomes for the next interpreter calls, in order (see the module docstring)."""
        parsed = [parse_outcome(o) for o in outcomes]
        with self._lock:
            self._script.extend(parsed)

    def set_default(self, outcome: str) -> None:
        """The outcome of calls once the script is empty, e.g. ``"504"`` for a storm."""
        parsed = parse_outcome(outcome)
        with self._lock:
            self._default = parsed

    @property
    def latency_s(self) -> float:
        """Seconds every interpreter call waits before its outcome."""
        return self._latency_s

    def set_latency(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"latency must be 0 seconds or more, not {seconds!r}")
        with self._lock:
            self._latency_s = float(seconds)

    def edit_data(
        self,
        *,
        removed: Iterable[tuple[str, int]] = (),
        restored: Iterable[tuple[str, int]] = (),
        retagged: Mapping[tuple[str, int], Mapping[str, str]] | None = None,
        moved: Mapping[tuple[str, int], tuple[int, int]] | None = None,
        osm_base: str | None = None,
    ) -> None:
        """Change the OSM data the stub answers from, as of ``osm_base`` (a later one starts a new version,
        which ``[adiff:"T"]`` queries compare with the version current at T; ``""`` a server without
        replication): ``removed`` elements are gone, ``restored`` ones back, ``retagged`` ones have those tags
        instead of their own, ``moved`` ones lie at that (lat_e7, lon_e7) instead of their cell."""
        self._history.edit(
            removed=removed, restored=restored, retagged=retagged, moved=moved, osm_base=osm_base
        )

    def elements(self, query: str) -> list[tuple[str, int]]:
        """The elements a plain (non-diff) ``query`` would get now, without counting it as a call."""
        found = self._history.answer(parse_query(query))
        return [] if found is None else [(poi.kind, poi.osm_id) for poi in found]

    def reset(self) -> None:
        """Clear the script, the default outcome, the counters and the recorded requests."""
        with self._lock:
            self._script.clear()
            self._default = Outcome("ok")
            self._recorded.clear()
            self._accepted_texts.clear()
            self._history.reset()
            self._reset_counters()

    def _reset_counters(self) -> None:
        self._calls = 0
        self._served: collections.Counter[str] = collections.Counter()
        self._peak_in_flight = len(self._in_flight)
        self._status_calls = 0
        self._kill_calls = 0
        self._rejected_over_slots = 0
        self._held = 0
        self._refused_duplicates = 0
        self._server_s = 0.0

    def stats(self) -> StubStats:
        with self._lock:
            return StubStats(
                calls=self._calls,
                served=dict(self._served),
                in_flight=len(self._in_flight),
                peak_in_flight=self._peak_in_flight,
                status_calls=self._status_calls,
                kill_calls=self._kill_calls,
                rejected_over_slots=self._rejected_over_slots,
                held=self._held,
                refused_duplicates=self._refused_duplicates,
                server_s=self._server_s,
            )

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests to ``/api/`` endpoints, oldest first (the last 100,000)."""
        with self._lock:
            return list(self._recorded)

    # -- endpoints ---------------------------------------------------------------------------------

    def _interpreter(self, handler: _Handler, method: str, query: str) -> None:
        call = self._begin_call(query)
        user_agent = handler.headers.get("User-Agent", "")
        if call.waiting and not self._hold_for_slot(call):
            served = "aborted" if self._stopping.is_set() else "429"
            status, content_type, body = ERROR_RESPONSES["429"]
            call.answered_at = time.time()
            self._end_call(call, served, method, user_agent)
            handler.reply(status, content_type, body)
            return
        outcome = call.outcome
        assert outcome is not None  # given at arrival or when the hold ended
        stall_s = outcome.stall_s if outcome.name == "stall" else 0.0
        if self._wait(call, call.latency_s) or self._wait(call, stall_s):
            self._end_call(call, "aborted" if self._stopping.is_set() else "killed", method, user_agent)
            handler.close_connection = True
            return
        try:
            served, status, content_type, body = self._answer(outcome, query)
        except BaseException:
            self._end_call(call, "500", method, user_agent)
            raise
        if outcome.name == "trickle" and status == 200:
            # In flight (holding its slot) while the body trickles out.
            call.answered_at = time.time()
            whole = handler.reply(status, content_type, body, trickle=(outcome.stall_s, call.cancel))
            ended = "aborted" if self._stopping.is_set() else "killed"
            self._end_call(call, served if whole else ended, method, user_agent)
            return
        # Accounted before the answer goes out, so a client that has its answer sees it in stats().
        call.answered_at = time.time()
        self._end_call(call, served, method, user_agent)
        handler.reply(status, content_type, body, cut_off=served == "cutoff")

    def _begin_call(self, query: str) -> _Call:
        now = time.time()
        with self._lock:
            self._calls += 1
            holding = sum(c.holds_slot for c in self._in_flight)
            waiting = sum(c.waiting for c in self._in_flight)
            full = 0 < self._slots <= holding
            outcome: Outcome | None
            if self._is_duplicate(query, now):
                self._refused_duplicates += 1
                outcome, holds_slot, held = Outcome("duplicate"), False, False
            elif full and self._hold_s > 0 and waiting <= 2 * self._slots:
                self._held += 1
                outcome, holds_slot, held = None, False, True
            elif full and (self._enforce_slots or self._hold_s > 0):
                self._rejected_over_slots += 1
                outcome, holds_slot, held = Outcome("429"), False, False
            else:
                outcome, holds_slot, held = self._next_outcome(), True, False
            self._next_pid += 1
            call = _Call(outcome, self._latency_s, holds_slot, self._next_pid, now, query, waiting=held)
            if self._stopping.is_set():
                call.cancel.set()
            self._in_flight.append(call)
            self._peak_in_flight = max(self._peak_in_flight, len(self._in_flight))
            return call

    def _next_outcome(self) -> Outcome:
        return self._script.popleft() if self._script else self._default

    def _is_duplicate(self, query: str, now: float) -> bool:
        """Whether ``query`` is refused as a duplicate; an accepted text is remembered for its window."""
        if not self._refuse_duplicates:
            return False
        setting = query_settings(query)
        window_s = int(setting.get("timeout", "180"))
        recent = [t for t in self._accepted_texts.get(query, []) if t > now - window_s]
        if len(recent) >= DUPLICATES_ACCEPTED:
            self._accepted_texts[query] = recent
            return True
        self._accepted_texts[query] = [*recent, now]
        return False

    def _hold_for_slot(self, call: _Call) -> bool:
        """Hold a call until a slot is free (True: it holds one now) or ``hold_s`` passed."""
        deadline = time.monotonic() + self._hold_s
        with self._idle:
            while True:
                if call.cancel.is_set():
                    call.waiting = False
                    return False
                if sum(c.holds_slot for c in self._in_flight) < self._slots:
                    call.waiting, call.holds_slot = False, True
                    call.admitted_at = time.time()
                    call.outcome = self._next_outcome()
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    call.waiting = False
                    self._rejected_over_slots += 1
                    return False
                self._idle.wait(min(left, 0.05))

    def _end_call(self, call: _Call, served: str, method: str, user_agent: str) -> None:
        server_s = None if call.answered_at is None else call.answered_at - call.started_at
        with self._idle:
            self._server_s += server_s or 0.0
            self._in_flight.remove(call)
            self._idle.notify_all()
            self._served[served] += 1
            self._recorded.append(
                RecordedRequest(
                    "/api/interpreter",
                    method,
                    call.query,
                    user_agent,
                    served,
                    call.started_at,
                    time.time(),
                    call.admitted_at,
                    server_s,
                )
            )

    @staticmethod
    def _wait(call: _Call, seconds: float) -> bool:
        """Wait, unless the call is cancelled; True when it was."""
        return call.cancel.wait(seconds) if seconds > 0 else call.cancel.is_set()

    def _answer(self, outcome: Outcome, query: str) -> tuple[str, int, str, bytes]:
        """(outcome served, status, content type, body) for one interpreter call."""
        if outcome.name in ("enomem-remark", "blocks-remark"):
            remark = ENOMEM_REMARK if outcome.name == "enomem-remark" else BLOCKS_REMARK
            return (outcome.name, 200, "application/json", json_document([], remark))
        if outcome.name not in NEEDS_QUERY:
            key = f"{outcome.name}:{outcome.variant}" if outcome.variant else outcome.name
            return (outcome.name, *ERROR_RESPONSES[key])
        try:
            parsed = parse_query(query)
        except QueryError as error:
            return ("400", 400, HTML, error_page(str(error)))
        if outcome.name == "timeout-remark":
            return (outcome.name, 200, "application/json", json_document([], TIMEOUT_REMARK))
        diff = ADIFF.search(query)
        if diff is not None and outcome.name not in ("oom-remark", "partial-remark"):
            actions = self._history.adiff(parsed, diff.group(1))
            if actions is not None:
                body = xml_document(actions, osm_base=self._history.current.osm_base)
                return (outcome.name, 200, "application/osm3s+xml", body)
        pois = None if outcome.name == "oom-remark" else self._history.answer(parsed, self._pois_per_box)
        if pois is None:
            return ("oom-remark", 200, "application/json", json_document([], OOM_REMARK))
        osm_base = self._history.current.osm_base
        elements = [poi.to_json() for poi in pois]
        if outcome.name == "partial-remark":
            half = elements[: (len(elements) + 1) // 2]
            return (
                outcome.name,
                200,
                "application/json",
                json_document(half, TIMEOUT_REMARK, osm_base=osm_base),
            )
        return (outcome.name, 200, "application/json", json_document(elements, osm_base=osm_base))

    def _status(self, handler: _Handler) -> None:
        now = time.time()
        with self._lock:
            self._status_calls += 1
            down = self._default.name == "504-down" and not self._script
            running = [c for c in self._in_flight if c.holds_slot]
        if down:
            status, body = 504, STATUS_SERVER_DOWN
        else:
            host = handler.client_address[0]
            lines = [
                f"Connected as: {int(ipaddress.ip_address(host))}",
                f"Current time: {iso(now)}",
                "Announced endpoint: none",
                f"Rate limit: {self._slots}",
            ]
            if self._slots > 0:
                free = self._slots - len(running)
                lines.append(
                    f"{free} slots available now."
                    if free > 0
                    else f"Slot available after: {iso(now + 1)}, in 1 seconds."
                )
            lines.append("Currently running queries (pid, space limit, time limit, start time):")
            lines.extend(_running_line(c) for c in running)
            status, body = 200, "\n".join(lines) + "\n"
        # Recorded before the answer goes out, like interpreter calls: a client
        # holding the answer finds the request in ``requests`` already.
        self._record(handler, "status", now)
        handler.reply(status, "text/plain; charset=utf-8", body.encode())

    def _kill(self, handler: _Handler) -> None:
        now = time.time()
        with self._lock:
            self._kill_calls += 1
            killed = [c for c in self._in_flight if c.holds_slot and not c.cancel.is_set()]
            for call in killed:
                call.cancel.set()
        self._record(handler, "kill", now)
        handler.reply(200, "text/plain; charset=utf-8", f"Killed {len(killed)} queries.\n".encode())

    def _record(self, handler: _Handler, outcome: str, started_at: float) -> None:
        path = urlsplit(handler.path).path
        user_agent = handler.headers.get("User-Agent", "")
        with self._lock:
            self._recorded.append(
                RecordedRequest(path, handler.command, "", user_agent, outcome, started_at, time.time())
            )

    def _control_script(self, handler: _Handler, body: bytes) -> None:
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError('send a JSON object such as {"outcomes": ["429", "ok"]}')
            outcomes = request.get("outcomes", [])
            if not isinstance(outcomes, list) or not all(isinstance(o, str) for o in outcomes):
                raise ValueError('"outcomes" must be a list of strings such as ["429", "stall:2"]')
            parsed = [parse_outcome(o) for o in outcomes]
            default = request.get("default")
            latency = request.get("latency_s")
            removed = request.get("removed", [])
            if not isinstance(removed, list) or not all(
                isinstance(r, list) and len(r) == 2 and isinstance(r[1], int) for r in removed
            ):
                raise ValueError('"removed" must be a list of [type, id] pairs such as [["node", 12]]')
            osm_base = request.get("osm_base")
            if removed or osm_base is not None:
                self.edit_data(removed=[(str(kind), osm_id) for kind, osm_id in removed], osm_base=osm_base)
            if default is not None:
                self.set_default(str(default))
            if latency is not None:
                self.set_latency(float(latency))
        except (ValueError, TypeError) as error:
            message = {"error": str(error)}
            handler.reply(400, "application/json", (json.dumps(message) + "\n").encode())
            return
        with self._lock:
            self._script.extend(parsed)
            queued = len(self._script)
        handler.reply(200, "application/json", (json.dumps({"queued": queued}) + "\n").encode())


def _running_line(call: _Call) -> str:
    settings = query_settings(call.query)
    space, seconds = settings.get("maxsize", "536870912"), settings.get("timeout", "180")
    return f"{call.pid}\t{space}\t{seconds}\t{iso(call.started_at)}"


def serve_forever(port: int, host: str = "127.0.0.1", latency_s: float = 0.0, slots: int = 2) -> None:
    """Run a stub until SIGINT or SIGTERM and print one line with its URL (``enrichment stub-overpass``)."""
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with StubOverpass(host=host, port=port, latency_s=latency_s, slots=slots) as stub:
            print(f"Stub Overpass API listening on {stub.url} (Ctrl-C to stop)", flush=True)
            while not stop_requested.wait(0.2):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

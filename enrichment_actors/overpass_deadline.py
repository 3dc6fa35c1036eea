"""One deadline for a whole HTTP call, headers included, and the bytes its connection received.

A read timeout bounds each wait for a byte, not a call: a server that sends
its status line and headers a byte at a time keeps ``requests.post`` from
returning, and the call (and its permit) alive, for as long as it likes. A
:class:`CallDeadline` starts before the request is sent; the connections of
a :class:`DeadlineAdapter` register their socket with the deadline of the
call running in their thread, and when it passes the socket is shut down,
which ends any read blocked on it at once (closing it would not).

The same registration gives the call's cost on the wire: what the kernel
received on the connection while the call ran (``TCP_INFO``, Linux), which
also counts bytes that arrived but were never read because the call ended
early (a deadline, an answer over its cap).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Any

import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["CallDeadline", "DeadlineAdapter"]

_current = threading.local()

# struct tcp_info (linux/tcp.h): tcpi_bytes_received is the u64 at offset 128 (Linux >= 4.1).
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_RECEIVED = struct.Struct("=Q")
_BYTES_RECEIVED_AT = 128


def kernel_received(sock: socket.socket) -> int | None:
    """Bytes the kernel received on ``sock`` so far (None where it cannot say)."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _BYTES_RECEIVED_AT + 8)
    except OSError:
        return None
    if len(info) < _BYTES_RECEIVED_AT + 8:
        return None
    received: int = _BYTES_RECEIVED.unpack_from(info, _BYTES_RECEIVED_AT)[0]
    return received


class CallDeadline:
    """Shut the call's sockets down at ``deadline`` (``time.monotonic()``); count what they received.

    Use as a context manager around the whole call, in the thread that makes
    it. A socket registered after the deadline passed is shut down at once.

    Examples:
      >>> with CallDeadline(time.monotonic() + 30) as deadline:  # doctest: +SKIP
      ...     response = session.post(url, data=form, stream=True)  # a DeadlineAdapter's session
      ...     body = response.raw.read()
      >>> deadline.fired, deadline.received  # doctest: +SKIP
      (False, 1234)
    """

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._sockets: dict[socket.socket, int] = {}
        self._received = 0
        self._known = False  # whether the kernel counted for any watched socket
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> CallDeadline:
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _current.deadline = None
        with self._lock:
            for sock in list(self._sockets):
                self._settle(sock)

    def watch(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` down at the deadline; count what it receives from now on."""
        if sock is None:
            return
        with self._lock:
            if sock not in self._sockets:
                start = kernel_received(sock)
                self._known = self._known or start is not None
                self._sockets[sock] = start or 0
            if self.fired:
                _shut(sock)

    def settle(self) -> None:
        """Count what the watched sockets received until now (call it before they are closed)."""
        with self._lock:
            for sock in list(self._sockets):
                self._settle(sock)

    @property
    def received(self) -> int | None:
        """Bytes the watched sockets received during the call, by the kernel's count (None: unknown)."""
        self.settle()
        with self._lock:
            return self._received if self._known else None

    def _settle(self, sock: socket.socket) -> None:
        # Add what arrived since the last look; a closed socket (fileno -1) keeps its last count.
        baseline = self._sockets[sock]
        now = kernel_received(sock) if sock.fileno() >= 0 else None
        if now is not None and now >= baseline:
            self._received += now - baseline
            self._sockets[sock] = now

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                self._settle(sock)
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _watch(sock: socket.socket | None) -> None:
    deadline: CallDeadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


class _WatchedConnection(HTTPConnection):
    """Registers its socket with the current call's deadline when connected and when a request starts."""

    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    """The same over TLS (its ``connect`` wraps the socket; the watched one is the wrapped one)."""


class _WatchedPool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """A pooled ``requests`` adapter whose connections a :class:`CallDeadline` can end, headers included."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        manager: urllib3.PoolManager = self.poolmanager
        manager.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedHTTPSPool}

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
early (a deadline, an answer over its cap). A call that ends before its
answer did is counted by :meth:`CallDeadline.settle_cut_short`: the server
may still be sending, and what reaches the kernel between the count and the
close is on the wire all the same, so it shrinks the receive buffer (the
kernel then drops what does not fit, unacknowledged), waits a moment for the
flow to stop (the window full, or the server done) and charges, for a
connection still open to more, the window last advertised plus that buffer:
the most that can land before the close.
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

# struct tcp_info (linux/tcp.h): tcpi_state is its first byte; tcpi_bytes_received is the u64 at offset
# 128 (Linux >= 4.1); tcpi_rcv_wnd, the receive window last advertised, the u32 at 232 (Linux >= 6.2).
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_RECEIVED = struct.Struct("=Q")
_BYTES_RECEIVED_AT = 128
_RCV_WND = struct.Struct("=I")
_RCV_WND_AT = 232
# tcpi_state values in which the peer may still send: established, and our side closing (FIN_WAIT1/2).
_PEER_MAY_SEND = frozenset({1, 4, 5})

#: How long a call that ends before its answer did waits for the server's bytes to stop arriving.
CUT_SHORT_WAIT_S = 0.25


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


def _may_still_arrive(sock: socket.socket) -> int:
    """Bytes that can still reach ``sock``'s kernel if this process reads no more: 0 once the peer is
    done (closed or reset); else the window last advertised plus the receive buffer's size.

    The window alone is no bound: with the app reading no more, the kernel
    may compact its queue and open the window again (seen: 181 bytes after
    a window of 0). Past the buffer's size it drops what comes: hence
    :func:`_stop_receiving` first, which makes that size the smallest.
    """
    if _TCP_INFO is None or sock.fileno() < 0:
        return 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _RCV_WND_AT + 4)
        if not info or info[0] not in _PEER_MAY_SEND:
            return 0
        buffer: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if len(info) < _RCV_WND_AT + 4:
            return 2 * buffer  # no window reported: as large as the window could be
        window: int = _RCV_WND.unpack_from(info, _RCV_WND_AT)[0]
        return window + buffer
    except OSError:
        return 0


def _receiving(sock: socket.socket) -> bool:
    """Whether bytes are still flowing into ``sock``: the peer is not done and the window is open."""
    if _TCP_INFO is None or sock.fileno() < 0:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _RCV_WND_AT + 4)
    except OSError:
        return False
    if not info or info[0] not in _PEER_MAY_SEND or len(info) < _RCV_WND_AT + 4:
        return False
    window: int = _RCV_WND.unpack_from(info, _RCV_WND_AT)[0]
    return window > 0


def _stop_receiving(sock: socket.socket) -> None:
    """Shrink ``sock``'s receive buffer to the least the kernel allows: what it holds already fills it,
    so whatever comes next is dropped unacknowledged (not on the wire for the server's count either)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)


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
        # Per socket of a call cut short: what may still land on it before it is closed.
        self._tail: dict[socket.socket, int] = {}
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

    def settle_cut_short(self, wait_s: float = CUT_SHORT_WAIT_S) -> None:
        """Count, the call ending before its answer did (call it before the sockets are closed).

        The server may still be sending: shrink each socket's receive
        buffer, wait up to ``wait_s`` for its flow to stop (its window full,
        or the server done), then count what arrived plus what may still
        land before the close (see :func:`_may_still_arrive`): never less
        than the server gets onto the wire, and exact when the server is
        done.
        """
        with self._lock:
            sockets = [sock for sock in self._sockets if sock.fileno() >= 0]
        end = time.monotonic() + wait_s
        for sock in sockets:
            _stop_receiving(sock)
            while _receiving(sock) and time.monotonic() < end:
                time.sleep(0.002)
        with self._lock:
            for sock in sockets:
                self._settle(sock)
                self._tail[sock] = _may_still_arrive(sock)

    @property
    def received(self) -> int | None:
        """Bytes the watched sockets received during the call, by the kernel's count, plus what may still
        reach a socket of a call cut short (None: unknown)."""
        self.settle()
        with self._lock:
            return self._received + sum(self._tail.values()) if self._known else None

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

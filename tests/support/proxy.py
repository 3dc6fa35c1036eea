"""A TCP proxy on loopback that a test can take down and bring back: a server outage without touching the server."""

from __future__ import annotations

import contextlib
import socket
import threading


class FlakyProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; ``down()`` refuses and cuts connections, ``up()`` restores.

    Parameters:
      target_host, target_port: the real server.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut_marker = b""
        self._cut_unless = b""
        self._cuts_left = 0
        self.cuts = 0

    def up(self) -> FlakyProxy:
        if self._listener is not None:
            return self
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # close() alone leaves the thread blocked in accept() holding the socket:
            # new connections would still be accepted. shutdown() wakes it.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def cut_replies(self, marker: bytes, *, times: int = 1, unless: bytes = b"") -> None:
        """Cut the connection right after the server answers a request containing ``marker``, ``times`` times.

        The request reaches the server and runs; its reply is dropped and both
        sides of that connection are closed, as when a server restarts between
        executing a command and the client reading the answer. A reply that
        starts with ``unless`` (say an empty result) is passed on instead.
        :attr:`cuts` counts the replies cut so far.
        """
        with self._lock:
            self._cut_marker, self._cut_unless, self._cuts_left = marker, unless, times

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            armed = threading.Event()  # a request of this connection matched the cut marker
            for a, b, replies in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, armed, replies), daemon=True).start()

    def _pipe(
        self, source: socket.socket, sink: socket.socket, armed: threading.Event, replies: bool
    ) -> None:
        try:
            while data := source.recv(65536):
                if not replies and self._cuts_left and self._cut_marker in data:
                    armed.set()
                elif replies and armed.is_set():
                    armed.clear()
                    if not (self._cut_unless and data.startswith(self._cut_unless)) and self._take_cut():
                        return  # the finally below closes both sides; the reply is never passed on
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (source, sink):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def _take_cut(self) -> bool:
        with self._lock:
            if self._cuts_left <= 0:
                return False
            self._cuts_left -= 1
            self.cuts += 1
            return True

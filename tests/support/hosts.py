"""Two "hosts" on one machine: network namespaces the test makes itself, with skewed clocks.

Each host is a network namespace joined to the root namespace by one veth
pair on its own ``10.250.<n>.0/30``: the root side is ``10.250.<n>.1``, the
host side ``10.250.<n>.2``. A host has no default route, so its processes
reach only its own loopback and that /30. The servers (Redis, PostgreSQL, the
stand-in server) stay on the root namespace's loopback; a :class:`Forwarder`
bound on ``10.250.<n>.1`` carries each host's connections to them (and counts
them per host). A host's processes run under ``ip netns exec`` with their
wall clock moved by seconds (``skewed_clock/sitecustomize.py``): network
namespaces share the machine's clock. Not libfaketime: version 0.9.10 hangs
Python's timed waits (``threading.Event().wait(1)`` never returns with the
monotonic clock faked, ``time.sleep`` fails with EINVAL without), which
stalls a worker's parking releaser.

Making namespaces needs root and ``ip``; :func:`unavailable` says why they
cannot be made, so that a test can skip with that reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Every namespace and veth this module makes starts with this: leftovers of a killed run are found by it.
PREFIX = "oeh"
LOCK_PATH = Path("/tmp/overpass-enrichment-hosts.lock")
#: The name every host gives the root side of its veth (``/etc/netns/<host>/hosts``, which ``ip netns exec``
#: mounts over ``/etc/hosts``): the whole fleet names a server alike, as hosts do with a DNS name, so that
#: the product keys its state (``overpass@HOST:PORT``) alike on every host.
SERVERS_NAME = "servers.oeh.test"
NETNS_ETC = Path("/etc/netns")
#: On PYTHONPATH, its sitecustomize moves a Python process's ``time.time`` by ``SKEWED_CLOCK_S``.
SKEWED_CLOCK = Path(__file__).resolve().parent / "skewed_clock"


def unavailable() -> str | None:
    """Why network namespaces with skewed clocks cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "making network namespaces (ip netns add) needs root; run as root (CI does)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing: apt-get install iproute2"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def remove_leftovers() -> list[str]:
    """Delete every namespace and veth whose name starts with :data:`PREFIX`; returns their names."""
    removed = []
    for etc in NETNS_ETC.glob(f"{PREFIX}*"):
        shutil.rmtree(etc, ignore_errors=True)
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        # "7: oeh1r@if6: <...>"
        name = line.split(":")[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if name.startswith(PREFIX):
            _ip("link", "delete", name, check=False)
            removed.append(name)
    return removed


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its address, the root side's address and its clock skew."""

    name: str
    index: int
    skew_s: float

    @property
    def address(self) -> str:
        return f"10.250.{self.index}.2"

    @property
    def gateway(self) -> str:
        """The root namespace's end of the veth: where this host reaches the servers."""
        return f"10.250.{self.index}.1"

    def prefix(self) -> list[str]:
        """A command prefix that runs a Python program on this host with this host's wall clock."""
        return [
            "ip", "netns", "exec", self.name,
            "env", f"PYTHONPATH={SKEWED_CLOCK}", f"SKEWED_CLOCK_S={self.skew_s:g}",
        ]  # fmt: skip

    def clock_offset(self) -> float:
        """This host's ``time.time()`` minus the root namespace's, measured (about ``skew_s``)."""
        code = "import time; print(time.time())"
        before = time.time()
        out = subprocess.run(
            [*self.prefix(), sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        after = time.time()
        if out.returncode != 0:
            raise RuntimeError(f"cannot run a program on host {self.name}: {out.stderr.strip()}")
        return float(out.stdout) - (before + after) / 2


@contextlib.contextmanager
def hosts(skews: Sequence[float]) -> Iterator[list[Host]]:
    """Make one namespace per skew (``10.250.1.0/30``, ``10.250.2.0/30``, ...); remove them afterwards.

    Holds :data:`LOCK_PATH` throughout, so that two runs on one machine do not
    take each other's namespaces for leftovers.
    """
    LOCK_PATH.touch(exist_ok=True)
    with LOCK_PATH.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_leftovers()
        made = []
        try:
            for index, skew in enumerate(skews, start=1):
                host = Host(f"{PREFIX}{index}", index, skew)
                root_end, host_end = f"{PREFIX}{index}r", f"{PREFIX}{index}n"
                _ip("netns", "add", host.name)
                made.append(host)
                _ip("link", "add", root_end, "type", "veth", "peer", "name", host_end)
                _ip("link", "set", host_end, "netns", host.name)
                _ip("addr", "add", f"{host.gateway}/30", "dev", root_end)
                _ip("link", "set", root_end, "up")
                _ip("-n", host.name, "addr", "add", f"{host.address}/30", "dev", host_end)
                _ip("-n", host.name, "link", "set", host_end, "up")
                _ip("-n", host.name, "link", "set", "lo", "up")
                etc = NETNS_ETC / host.name
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text(f"127.0.0.1 localhost\n{host.gateway} {SERVERS_NAME}\n")
            yield made
        finally:
            remove_leftovers()


class Forwarder:
    """Forwards ``listen_host:<free port>`` to ``target``; counts connections per client address.

    ``marker`` (say ``b"POST /api/interpreter"``): occurrences in what clients send are counted per
    client address too, in :attr:`marks`.
    """

    def __init__(
        self,
        listen_host: str,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        marker: bytes = b"",
        listen_port: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self.marker = marker
        self.connections: Counter[str] = Counter()
        self.marks: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, listen_port))
        self._listener.listen(256)
        self.host = listen_host
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name=f"forward-{listen_host}:{self.port}").start()

    def url(self, scheme: str, rest: str = "") -> str:
        return f"{scheme}://{self.host}:{self.port}{rest}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                client, (peer, _) = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self.connections[peer] += 1
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, peer), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, peer: str | None) -> None:
        tail = b""
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
                if peer is not None and self.marker:
                    seen = tail + chunk
                    found = seen.count(self.marker)
                    if found:
                        with self._lock:
                            self.marks[peer] += found
                    # What could be the start of a marker split across two reads (too short to be a whole one).
                    tail = seen[-(len(self.marker) - 1) :]
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)


def forwarders_on_one_port(
    hosts: Sequence[Host], target_port: int, *, marker: bytes = b"", attempts: int = 20
) -> tuple[int, dict[str, Forwarder]]:
    """A forwarder on each host's gateway, all on one port: ``http://SERVERS_NAME:PORT`` on every host."""
    for _ in range(attempts):
        first = Forwarder(hosts[0].gateway, target_port, marker=marker)
        made = {hosts[0].name: first}
        try:
            for host in hosts[1:]:
                made[host.name] = Forwarder(host.gateway, target_port, marker=marker, listen_port=first.port)
        except OSError:  # that port is taken on another gateway: another one
            for forwarder in made.values():
                forwarder.close()
            continue
        return first.port, made
    raise RuntimeError(f"no port free on every gateway in {attempts} attempts")

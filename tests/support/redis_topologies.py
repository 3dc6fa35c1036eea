"""Redis Cluster and Sentinel topologies of the test session's own, on free loopback ports.

A 3-master cluster (``redis-server --cluster-enabled yes``, joined with
``redis-cli --cluster create ... --cluster-replicas 0``) and a Sentinel setup
(one primary, one replica, three ``redis-sentinel`` processes, quorum 2).
Nothing is written to disk but a temporary directory that is removed
afterwards; the machine's own Redis on 6379 is never touched.  Both run as
root too.  Where Debian's ``redis-sentinel`` is missing, ``redis-server
--sentinel`` is the same program.

The session fixtures ``redis_cluster`` and ``redis_sentinel`` start one of
each on first use and share it (starting costs about a second);
:class:`SentinelSetup` used directly gives a test a setup of its own to fail
over.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.proxy import FlakyProxy
from tests.support.workers import free_port

HOST = "127.0.0.1"
MASTER = "mymaster"


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def _wait(predicate: object, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if callable(predicate) and predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def _server_args(port: int, directory: Path, *extra: str) -> list[str]:
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        HOST,
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        # A replica's first sync starts at once, not after the default 5 s.
        "--repl-diskless-sync-delay",
        "0",
        *extra,
    ]


class _Processes:
    def __init__(self, name: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"test-{name}-"))
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        proc = _start(args, self.directory / f"{name}.log")
        self.processes.append(proc)
        return proc

    def remove(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
        for proc in self.processes:
            proc.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisClusterSetup(_Processes):
    """Three cluster-enabled masters with every slot assigned; :attr:`url` names the first."""

    def __init__(self, masters: int = 3) -> None:
        super().__init__("redis-cluster")
        self.ports = [free_port() for _ in range(masters)]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.ports[0]}/0"

    def start(self) -> RedisClusterSetup:
        try:
            for port in self.ports:
                node = self.directory / str(port)
                node.mkdir()
                extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                # The cluster bus gets a free port of its own (port + 10000 may be taken).
                extra += ["--cluster-port", str(free_port()), "--cluster-node-timeout", "2000"]
                self.spawn(_server_args(port, node, *extra), f"node-{port}")
            for port in self.ports:
                _wait(lambda port=port: redis.Redis(host=HOST, port=port).ping(), f"cluster node {port}")
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"{HOST}:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            for port in self.ports:
                _wait(
                    lambda port=port: (
                        redis.Redis(host=HOST, port=port).cluster("info")["cluster_state"] == "ok"
                    ),
                    f"cluster state ok on {port}",
                )
        except BaseException:
            self.remove()
            raise
        return self

    def flush(self) -> None:
        for port in self.ports:
            with redis.Redis(host=HOST, port=port) as client:
                client.flushall()


class SentinelSetup(_Processes):
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels watching it as ``mymaster``."""

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        *,
        through_proxy: bool = False,
        failover_timeout_ms: int = 10_000,
    ) -> None:
        super().__init__("redis-sentinel")
        #: With ``through_proxy``, each replica reaches the primary through a
        #: :class:`FlakyProxy` (in :attr:`proxies`): ``down()`` stalls replication.
        #: The Sentinels point such a replica at the primary itself once
        #: ``failover_timeout_ms`` has passed: a stall must come before.
        self.through_proxy = through_proxy
        self.failover_timeout_ms = failover_timeout_ms
        self.proxies: list[FlakyProxy] = []
        self.primary_port = free_port()
        self.replica_ports = [free_port() for _ in range(replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.down_after_ms = down_after_ms
        self.by_port: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def sentinels(self) -> str:
        """``host:port,...`` as REDIS_SENTINELS takes it."""
        return ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)

    def start(self) -> SentinelSetup:
        try:
            self.by_port[self.primary_port] = self.spawn(
                _server_args(self.primary_port, self.directory), f"primary-{self.primary_port}"
            )
            for port in self.replica_ports:
                upstream = self.primary_port
                if self.through_proxy:
                    self.proxies.append(FlakyProxy(HOST, self.primary_port).up())
                    upstream = self.proxies[-1].port
                args = _server_args(port, self.directory, "--replicaof", HOST, str(upstream))
                self.by_port[port] = self.spawn(args, f"replica-{port}")
            primary = redis.Redis(host=HOST, port=self.primary_port)
            _wait(lambda: self._online(primary) == len(self.replica_ports), "the replicas to sync")
            quorum = len(self.sentinel_ports) // 2 + 1
            program = shutil.which("redis-sentinel")
            for port in self.sentinel_ports:
                conf = self.directory / f"sentinel-{port}.conf"
                conf.write_text(
                    f"port {port}\nbind {HOST}\nprotected-mode no\ndir {self.directory}\n"
                    f"sentinel monitor {MASTER} {HOST} {self.primary_port} {quorum}\n"
                    f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {MASTER} 1\n"
                )
                args = [program, str(conf)] if program else ["redis-server", str(conf), "--sentinel"]
                self.spawn(args, f"sentinel-{port}")
            for port in self.sentinel_ports:
                sentinel = redis.Redis(host=HOST, port=port)
                _wait(
                    lambda sentinel=sentinel: (
                        int(
                            sentinel.sentinel_master(MASTER)["num-other-sentinels"]  # type: ignore[no-untyped-call]
                        )
                        == len(self.sentinel_ports) - 1
                    ),
                    f"sentinel {port} to see the others",
                )
        except BaseException:
            self.remove()
            raise
        return self

    @staticmethod
    def _online(primary: redis.Redis[bytes]) -> int:
        info = primary.info("replication")
        replicas = [value for name, value in info.items() if re.fullmatch(r"slave\d+", name)]
        return sum(1 for value in replicas if value["state"] == "online")

    def primary(self) -> tuple[str, int]:
        """The primary the Sentinels name now."""
        with redis.Redis(host=HOST, port=self.sentinel_ports[0]) as sentinel:
            address = sentinel.sentinel_get_master_addr_by_name(MASTER)  # type: ignore[no-untyped-call]
        host = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
        return host, int(address[1])

    def kill_primary(self) -> int:
        """SIGKILL the current primary (no shutdown save, no last replication); returns its port."""
        _, port = self.primary()
        self.by_port[port].kill()
        self.by_port[port].wait(timeout=10)
        return port

    def restart(self, port: int) -> None:
        """Start the server of ``port`` again, empty: the Sentinels make it a replica of the primary."""
        self.by_port[port] = self.spawn(_server_args(port, self.directory), f"restarted-{port}")

    def remove(self) -> None:
        for proxy in self.proxies:
            proxy.down()
        super().remove()

    def flush(self) -> None:
        host, port = self.primary()
        with redis.Redis(host=host, port=port) as client:
            client.flushall()
            client.execute_command("WAIT", len(self.replica_ports), 2000)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterSetup]:
    """A 3-master Redis Cluster of this session's own, started on first use."""
    setup = RedisClusterSetup().start()
    yield setup
    setup.remove()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelSetup]:
    """A primary, a replica and three Sentinels of this session's own, started on first use."""
    setup = SentinelSetup().start()
    yield setup
    setup.remove()

"""A RabbitMQ server of the test session's own: ``rabbitmq-server`` on free loopback ports, removed afterwards.

The machine may run its own broker on 5672 (with its own epmd on 4369, its
node name and its config pinning 5672 in /etc/rabbitmq): nothing here reads
or touches any of it. Every place the server would look by default is set
explicitly: its node name, its AMQP, distribution and epmd ports (an epmd of
its own, started here, so that the node registers nowhere else), its config
file, its env file (empty: the machine's would rename the node), its data
and log directories and its plugins (none). As root the server runs as the
``rabbitmq`` user, which then owns the directory. It starts in about 3 s on
a 2-core machine; ``rabbitmqctl`` answers in about 0.6 s.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.workers import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
EPMD = shutil.which("epmd") or "/usr/bin/epmd"


def rabbitmq_installed() -> bool:
    return os.path.exists(SERVER) and os.path.exists(EPMD)


class RabbitServer:
    """One ``rabbitmq-server`` node on free loopback ports, with its own directory.

    Examples:
      >>> server = RabbitServer().start()  # doctest: +SKIP
      >>> server.url
      'amqp://guest:guest@127.0.0.1:41234/%2F'
      >>> server.restart()  # the same node and data: durable queues and persistent messages survive
      >>> server.remove()

    Parameters:
      start_timeout_s: how long :meth:`start` waits for the AMQP port to answer.
      consumer_timeout_ms: RabbitMQ's ``consumer_timeout`` (default: the server's, 30 min):
        a delivery held unacknowledged longer closes its channel. Checked on each
        channel tick, here every second (the server's default: every minute).
    """

    def __init__(self, *, start_timeout_s: float = 90.0, consumer_timeout_ms: int | None = None) -> None:
        self.consumer_timeout_ms = consumer_timeout_ms
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.start_timeout_s = start_timeout_s
        self.base = Path(tempfile.mkdtemp(prefix="enrichment-rabbitmq-"))
        self.nodename = f"enrichment-test-{self.amqp_port}@localhost"
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._as_user = ["runuser", "-u", "rabbitmq", "--"] if os.geteuid() == 0 else []
        self._prepare()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    def _prepare(self) -> None:
        (self.base / "mnesia").mkdir()
        (self.base / "log").mkdir()
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            # The test server's disk is whatever /tmp has: never block publishers for it.
            "disk_free_limit.absolute = 1MB\n"
            + (f"consumer_timeout = {self.consumer_timeout_ms}\n" if self.consumer_timeout_ms else "")
        )
        if self.consumer_timeout_ms:
            (self.base / "advanced.config").write_text("[{rabbit, [{channel_tick_interval, 1000}]}].\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        if self._as_user:
            user = pwd.getpwnam("rabbitmq")
            for root, _dirs, files in os.walk(self.base):
                for path in [root, *(os.path.join(root, f) for f in files)]:
                    os.chown(path, user.pw_uid, user.pw_gid)

    def env(self) -> dict[str, str]:
        """The environment of the server and of ``rabbitmqctl`` (HOME holds the Erlang cookie)."""
        base = str(self.base)
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": base,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CONFIG_FILE": f"{base}/rabbitmq.conf",
            "RABBITMQ_CONF_ENV_FILE": f"{base}/rabbitmq-env.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{base}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{base}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{base}/mnesia",
            "RABBITMQ_LOG_BASE": f"{base}/log",
            "RABBITMQ_PID_FILE": f"{base}/rabbit.pid",
            "RABBITMQ_LOGS": f"{base}/log/rabbit.log",
            # Two schedulers at most: the machine has two cores and is shared.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 2:2",
        }

    def start(self) -> RabbitServer:
        """Start the node (and its epmd, the first time) and wait until it answers AMQP."""
        env = self.env()
        if self._epmd is None or self._epmd.poll() is not None:
            self._epmd = subprocess.Popen(
                [*self._as_user, EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        with open(self.base / "server.out", "ab") as out:
            self._server = subprocess.Popen(
                [*self._as_user, SERVER],
                env=env,
                cwd=self.base,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        import pika
        import pika.exceptions

        deadline = time.monotonic() + self.start_timeout_s
        params = pika.URLParameters(self.url + "?connection_attempts=1&socket_timeout=2")
        # pika logs every refused attempt as an error, with a traceback: not while waiting here.
        quiet = logging.getLogger("pika")
        level, quiet.level = quiet.level, logging.CRITICAL
        try:
            while True:
                try:
                    pika.BlockingConnection(params).close()
                    return
                except pika.exceptions.AMQPError as exc:
                    if self._server is None or self._server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"rabbitmq-server on 127.0.0.1:{self.amqp_port} did not start ({exc!r}):\n"
                            f"{self.log_tail()}"
                        ) from None
                    time.sleep(0.2)
        finally:
            quiet.setLevel(level)

    def stop(self, *, hard: bool = False) -> None:
        """Stop the node: gracefully (SIGTERM, as ``rabbitmqctl stop``) or ``hard`` (SIGKILL, a crash)."""
        proc, self._server = self._server, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if hard:
            # The VM's children (its port programs) went with the group; wait for the node's ports to free.
            _wait_port_free(self.amqp_port)

    def restart(self, *, hard: bool = False) -> None:
        """Stop and start the same node on the same ports and data."""
        self.stop(hard=hard)
        self.start()

    def ctl(self, *args: str, timeout_s: float = 60.0) -> str:
        """``rabbitmqctl -n NODE ARGS``; its standard output."""
        result = subprocess.run(
            [*self._as_user, CTL, "-q", "-n", self.nodename, *args],
            env=self.env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
        return result.stdout

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """Each queue's (ready, unacknowledged) messages: AMQP tells only the first, rabbitmqctl both."""
        counts = {}
        for line in self.ctl(
            "list_queues", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"
        ).splitlines():
            parts = line.split()
            if len(parts) == 3:
                counts[parts[0]] = (int(parts[1]), int(parts[2]))
        return counts

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("server.out", "log/rabbit.log"):
            path = self.base / name
            if path.exists():
                text += "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        return text

    def remove(self) -> None:
        """Stop the node and its epmd, and delete its directory."""
        self.stop()
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            os.killpg(epmd.pid, signal.SIGTERM)
            epmd.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)


def _wait_port_free(port: int, timeout_s: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)


def purge(url: str, queues: tuple[str, ...]) -> None:
    """Delete ``queues`` (and their delay and dead-letter queues) on the broker at ``url``: a clean start."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in queues:
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel.queue_delete(name)
    finally:
        connection.close()


def dead_letters(url: str, queue: str) -> list[bytes]:
    """The bodies in ``queue``'s dead-letter queue, left in place (read without acknowledging)."""
    import pika
    import pika.exceptions

    connection = pika.BlockingConnection(pika.URLParameters(url))
    bodies = []
    try:
        channel = connection.channel()
        while True:
            try:
                method, _properties, body = channel.basic_get(f"{queue}.XQ", auto_ack=False)
            except pika.exceptions.ChannelClosedByBroker:  # no such queue yet: nothing dead-lettered
                break
            if method is None:
                break
            bodies.append(body)
    finally:
        # Closing without acknowledging puts them back.
        connection.close()
    return bodies


def settled(server: RabbitServer, queues: tuple[str, ...]) -> bool:
    """Whether no message of ``queues`` (or their delay queues) is ready or held unacknowledged."""
    counts = server.queue_counts()
    return all(counts.get(name, (0, 0)) == (0, 0) for q in queues for name in (q, f"{q}.DQ"))

"""Real ``dramatiq`` worker processes for behaviour tests, chaos runs and benchmarks."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Settings that make behaviour tests fast: short backoffs, windows and waits.
FAST_SETTINGS = {
    "OVERPASS_CONTACT": "tests@localhost",
    "RETRY_MIN_BACKOFF_S": "0.2",
    "RETRY_MAX_BACKOFF_S": "1",
    "RETRY_MAX": "3",
    "STORE_MAX_RETRIES": "50",
    "SEMAPHORE_WAIT_S": "0.5",
    "OVERPASS_QUERY_TIMEOUT_S": "5",
    "OVERPASS_HTTP_TIMEOUT_S": "2.5",  # the lease (4) must exceed it plus the pacing wait (1)
    "SEMAPHORE_LEASE_S": "4",
    "BREAKER_COOLDOWN_S": "2",
    "QUOTA_JITTER_S": "0.2",
    # A test's stalls and timeouts (each charged its [timeout]) must not spend the server
    # time of the real default (300 s); the server-time scenarios set their own.
    "QUOTA_SERVER_S": "100000",
    "RATE_LIMIT_PAUSE_S": "0.5",
    "BROKER_HEARTBEAT_TIMEOUT_S": "3",
    # Hand a killed worker's messages on at once rather than eventually.
    "BROKER_MAINTENANCE_CHANCE": "1000000",
    # Dramatiq's own (read by its Worker): an idle consumer looks for messages every 100 ms,
    # not every second, so a worker picks a job up and stops (SIGTERM) a second sooner.
    "dramatiq_worker_timeout": "100",
}

_READY = "Worker process is ready for action"
_PID = re.compile(r"\[PID (\d+)\]")


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux; its default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port free now, outside the range the kernel gives outgoing connections.

    A port the kernel picked (``bind(0)``) is in that range, and between this
    check and the server's own bind any connection the session opens may take
    it as its local port: a server then fails to start (``eaddrinuse``, seen on
    RabbitMQ under a busy session). Below the range, nothing but another
    server can take it, and this test checks each candidate.
    """
    low, _ = _ephemeral_ports()
    ceiling = low - 1 if low > 20_000 else 65_535
    for port in random.sample(range(10_000, ceiling), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # every candidate taken: the kernel's choice, as before
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


class WorkerProcesses:
    """``dramatiq MODULE --processes P --threads T`` in a subprocess, configured by the environment.

    Each instance gets its own metrics exposition (a free loopback port, see
    :attr:`metrics_url`) and its own fresh multiprocess directory, unless
    ``env`` names ``dramatiq_prom_port`` / ``dramatiq_prom_db`` itself.

    Examples:
      >>> with WorkerProcesses({"REDIS_URL": url, "OVERPASS_URL": stub.interpreter_url}, processes=2):  # doctest: +SKIP
      ...     enrich.send(bbox=..., tags=["amenity"])

    Parameters:
      env: environment variables on top of this process's and of ``defaults``.
      module: what the CLI imports (benchmarks run other actor modules side by side).
      modules: more modules each worker process imports after ``module``, say
        ``["tests.support.hog"]`` (a CPU hog beside the worker threads).
      processes, threads: as the CLI's ``--processes`` and ``--threads``.
      defaults: settings beneath ``env`` (default :data:`FAST_SETTINGS`; benchmarks pass their own).
      verbose: the CLI's ``--verbose``.
      merge_stdout: capture the processes' stdout with their stderr in :attr:`lines` (else it is dropped).
      prefix: a command the CLI runs under, say ``["ip", "netns", "exec", "host1", "env", ...]``
        (tests/support/hosts.py); it must exec the CLI, not fork it, for signals and PIDs to reach it.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        module: str = "enrichment_actors.worker:build",
        modules: Sequence[str] = (),
        processes: int = 1,
        threads: int = 4,
        defaults: Mapping[str, str] = FAST_SETTINGS,
        verbose: bool = False,
        merge_stdout: bool = False,
        prefix: Sequence[str] = (),
    ) -> None:
        self._own_prom_db = None if "dramatiq_prom_db" in env else tempfile.mkdtemp(prefix="dramatiq-prom-")
        metrics_env = {
            "dramatiq_prom_host": "127.0.0.1",
            "dramatiq_prom_port": str(free_port()),
            **({"dramatiq_prom_db": self._own_prom_db} if self._own_prom_db else {}),
        }
        self.env = {**os.environ, **defaults, **metrics_env, **env, "PYTHONUNBUFFERED": "1"}
        self.module = module
        self.modules = list(modules)
        self.processes = processes
        self.threads = threads
        self.verbose = verbose
        self.prefix = list(prefix)
        self.merge_stdout = merge_stdout
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def metrics_url(self) -> str:
        """The workers' Prometheus exposition endpoint."""
        return f"http://{self.env['dramatiq_prom_host']}:{self.env['dramatiq_prom_port']}/metrics"

    def start(self, timeout_s: float = 60.0) -> WorkerProcesses:
        command = [
            *self.prefix, sys.executable, "-m", "dramatiq", self.module, *self.modules,
            "--processes", str(self.processes), "--threads", str(self.threads),
            "--worker-shutdown-timeout", "5000", *(["--verbose"] if self.verbose else []),
        ]  # fmt: skip
        stdout = subprocess.PIPE if self.merge_stdout else subprocess.DEVNULL
        stderr = subprocess.STDOUT if self.merge_stdout else subprocess.PIPE
        self.proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=stdout, stderr=stderr, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_ready(self.processes, timeout_s)
        return self

    def wait_ready(self, count: int, timeout_s: float = 60.0) -> None:
        """Wait until ``count`` worker processes (in all) have said they are ready."""
        deadline = time.monotonic() + timeout_s
        # Only worker processes: the metrics exposition (a fork) says "ready for action" too.
        while self.count(_READY) < count:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"dramatiq {self.module} exited during start:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dramatiq {self.module} workers not ready:\n{self.tail()}")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (not the CLI's other forks), oldest first."""
        assert self.proc is not None
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                children.add(int(stat.parent.name))
        ready = [int(m.group(1)) for line in list(self.lines) if _READY in line and (m := _PID.search(line))]
        return [pid for pid in dict.fromkeys(ready) if pid in children]

    def kill_worker(self, pid: int | None = None) -> int:
        """``kill -9`` one worker process (the oldest by default); returns its PID.

        The CLI then shuts its other processes down, as a dyno would stop: a
        supervisor (a test, here) starts a new one.
        """
        victim = pid if pid is not None else self.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        return victim

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_prom_db is not None:
            shutil.rmtree(self._own_prom_db, ignore_errors=True)

    def count(self, text: str) -> int:
        """Log lines (stderr of every process) containing ``text``."""
        return sum(text in line for line in list(self.lines))

    def tail(self, lines: int = 40) -> str:
        return "".join(self.lines[-lines:])

    def __enter__(self) -> WorkerProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read(self) -> None:
        proc = self.proc
        assert proc is not None
        stream = proc.stdout if self.merge_stdout else proc.stderr
        assert stream is not None
        for line in stream:
            self.lines.append(line)


def eventually(
    predicate: Callable[[], object], *, timeout_s: float = 20.0, interval_s: float = 0.05, message: str = ""
) -> float:
    """Wait until ``predicate()`` is true and return the seconds it took; fail with ``message`` after ``timeout_s``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting: {message or predicate}")
        time.sleep(interval_s)
    return time.monotonic() - started

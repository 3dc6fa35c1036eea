"""Real ``dramatiq`` worker processes for behaviour tests, configured through the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
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
    "OVERPASS_HTTP_TIMEOUT_S": "3",
    "SEMAPHORE_LEASE_S": "4",
    "BREAKER_COOLDOWN_S": "2",
    "QUOTA_JITTER_S": "0.2",
    "RATE_LIMIT_PAUSE_S": "0.5",
    "BROKER_HEARTBEAT_TIMEOUT_S": "3",
    # Hand a killed worker's messages on at once rather than eventually.
    "BROKER_MAINTENANCE_CHANCE": "1000000",
}


class WorkerProcesses:
    """``dramatiq enrichment_actors`` in a subprocess, with its own settings.

    Parameters:
      env: environment variables on top of this process's (REDIS_URL, DATABASE_URL, OVERPASS_URL, ...).
      processes, threads: as the CLI's ``--processes`` and ``--threads``.
    """

    def __init__(self, env: Mapping[str, str], *, processes: int = 1, threads: int = 4) -> None:
        self.env = {**os.environ, **FAST_SETTINGS, **env, "PYTHONUNBUFFERED": "1"}
        self.processes = processes
        self.threads = threads
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> WorkerProcesses:
        command = [
            sys.executable, "-m", "dramatiq", "enrichment_actors",
            "--processes", str(self.processes), "--threads", str(self.threads),
            "--worker-shutdown-timeout", "5000",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_ready(self.processes, timeout_s)
        return self

    def wait_ready(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while sum("ready for action" in line for line in self.lines) < count:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("dramatiq exited during start:\n" + "".join(self.lines[-40:]))
            if time.monotonic() > deadline:
                raise TimeoutError("dramatiq workers not ready:\n" + "".join(self.lines[-40:]))
            time.sleep(0.05)

    def children(self) -> list[int]:
        """PIDs of the worker processes (the CLI's forks)."""
        assert self.proc is not None
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.parent.name))
        return sorted(pids)

    def kill_one_worker(self) -> int:
        """``kill -9`` one worker process (the CLI starts a new one); returns its PID."""
        pid = self.children()[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> WorkerProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)


def eventually(predicate, *, timeout_s: float = 20.0, interval_s: float = 0.05, message: str = "") -> None:  # type: ignore[no-untyped-def]
    """Wait until ``predicate()`` is true; fail with ``message`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting: {message or predicate}")
        time.sleep(interval_s)

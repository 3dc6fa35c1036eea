"""A fleet of real ``dramatiq`` worker processes for any actor module, and the jobs sent to it.

Benchmarks run three fleets side by side (the product, the product without
its middleware, and Dramatiq's ``ConcurrentRateLimiter`` alternative), so
the launcher takes the module to load; jobs are sent as plain Dramatiq
messages, which every one of those modules understands.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from .servers import REPO, free_port

_PID = re.compile(r"\[PID (\d+)\]")


class Fleet:
    """``dramatiq MODULE --processes P --threads T`` in a subprocess, configured by ``env``.

    Examples:
      >>> with Fleet("enrichment_actors", {"REDIS_URL": url, ...}, processes=2, threads=8):  # doctest: +SKIP
      ...     send_enrich_jobs(url, "enrichment", boxes)

    Parameters:
      module: what the CLI imports (``module`` or ``module:broker``).
      env: variables on top of this process's environment.
      processes, threads: as the CLI's ``--processes`` and ``--threads``.
    """

    def __init__(
        self,
        module: str,
        env: Mapping[str, str],
        *,
        processes: int = 2,
        threads: int = 8,
        verbose: bool = False,
    ) -> None:
        self.module = module
        self.verbose = verbose
        self.metrics_dir = tempfile.mkdtemp(prefix="enrichment-prom-")
        self.env = {
            **os.environ,
            # Never collide with another fleet's (or a real) exposition port.
            "dramatiq_prom_port": str(free_port()),
            "dramatiq_prom_db": self.metrics_dir,
            **env,
            "PYTHONUNBUFFERED": "1",
        }
        self.processes = processes
        self.threads = threads
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self, timeout_s: float = 60.0) -> Fleet:
        command = [
            sys.executable, "-m", "dramatiq", self.module,
            "--processes", str(self.processes), "--threads", str(self.threads),
            "--worker-shutdown-timeout", "5000", *(["--verbose"] if self.verbose else []),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_ready(self.processes, timeout_s)
        return self

    def wait_ready(self, count: int, timeout_s: float = 60.0) -> None:
        """Wait until ``count`` worker processes (in all) have said they are ready."""
        deadline = time.monotonic() + timeout_s
        # Only worker processes: a metrics exposition fork says "ready for action" too.
        while self.count("Worker process is ready for action") < count:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"dramatiq {self.module} exited during start:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dramatiq {self.module} workers not ready:\n{self.tail()}")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (not other forks of the CLI), oldest first."""
        assert self.proc is not None
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                children.add(int(stat.parent.name))
        ready = [
            int(match.group(1))
            for line in list(self.lines)
            if "Worker process is ready for action" in line and (match := _PID.search(line))
        ]
        return [pid for pid in dict.fromkeys(ready) if pid in children]

    def kill_worker(self, pid: int) -> None:
        """``kill -9`` one worker process; the CLI notices and the fleet runs one process short."""
        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def count(self, text: str) -> int:
        """Log lines (stderr of every process) containing ``text``."""
        return sum(text in line for line in list(self.lines))

    def tail(self, lines: int = 40) -> str:
        return "".join(self.lines[-lines:])

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)


def sender(redis_url: str) -> RedisBroker:
    """A broker that only sends: no middleware, so it works for any fleet's actors."""
    broker = RedisBroker(url=redis_url, middleware=[])  # type: ignore[no-untyped-call]
    return broker


def send(broker: RedisBroker, queue: str, actor: str, jobs: Iterable[Mapping[str, Any]]) -> int:
    """Enqueue one ``actor`` message per job (its keyword arguments); returns how many."""
    sent = 0
    for kwargs in jobs:
        broker.enqueue(
            dramatiq.Message(queue_name=queue, actor_name=actor, args=(), kwargs=dict(kwargs), options={})
        )
        sent += 1
    return sent


def grid_boxes(
    count: int, *, size_deg: float = 0.03, origin: tuple[float, float] = (10.0, 10.0)
) -> list[dict[str, float]]:
    """``count`` disjoint boxes of ``size_deg`` on a side, so that no two jobs share a POI."""
    south0, west0 = origin
    per_row = 100
    boxes = []
    for i in range(count):
        row, col = divmod(i, per_row)
        south = round(south0 + row * size_deg * 1.5, 6)
        west = round(west0 + col * size_deg * 1.5, 6)
        boxes.append(
            {
                "south": south,
                "west": west,
                "north": round(south + size_deg, 6),
                "east": round(west + size_deg, 6),
            }
        )
    return boxes


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll ``predicate`` until true (True) or until ``timeout_s`` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True

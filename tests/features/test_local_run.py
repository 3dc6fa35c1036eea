"""`make run` on a fresh shell (local_run.feature): the README's local run, start to stop.

It runs ``make -s run`` in a session of its own, as a terminal would, with
none of the test session's ``REDIS_URL``/``OVERPASS_URL``/``OVERPASS_CONTACT``
in its environment, runs the commands it prints (the example job, the
status), waits for the job's POIs in its SQLite database, and sends Ctrl-C
(SIGINT to the session) like a terminal.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from tests.support.workers import REPO, eventually, free_port

scenarios("local_run.feature")

#: What the test session put in the environment for the product; a user's shell has none of it.
_SESSION_SETTINGS = (
    "REDIS_URL",
    "DATABASE_URL",
    "OVERPASS_URL",
    "OVERPASS_CONTACT",
    "BROKER",
    "STATE_BACKEND",
)


@dataclass
class LocalRun:
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    database: Path | None = None

    def text(self) -> str:
        return "".join(self.lines)

    def printed(self, pattern: str) -> str:
        match = re.search(pattern, self.text(), re.MULTILINE)
        assert match, f"make run did not print {pattern!r}:\n{self.text()}"
        return match.group(1)


@pytest.fixture
def local_run(tmp_path: Path) -> Iterator[LocalRun]:
    run = LocalRun(database=tmp_path / "pois.sqlite3")
    (tmp_path / "prometheus").mkdir()
    yield run
    if run.proc is not None:  # a failed scenario leaves nothing running
        for line in _session_processes(run.proc.pid):
            with contextlib.suppress(OSError):
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
        run.proc.wait()


def _session_processes(sid: int) -> list[str]:
    """Command lines of the live processes in session ``sid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{stat.parent.name}: {cmdline}")
    return found


@given(parsers.parse("make run is started with {processes:d} worker process"))
def make_run(local_run: LocalRun, processes: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _SESSION_SETTINGS}
    env.update(
        DATABASE_URL=f"sqlite:///{local_run.database}",
        WORKER_PROCESSES=str(processes),
        WORKER_THREADS="2",
        dramatiq_prom_port=str(free_port()),
        dramatiq_prom_db=str(local_run.database.parent / "prometheus"),
        # Not the repository's var/local-run: a developer's own `make run` may be using it.
        LOCAL_RUN_DIR=str(local_run.database.parent / "local-run"),
        PYTHONUNBUFFERED="1",
    )
    local_run.proc = subprocess.Popen(
        ["make", "-s", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def read() -> None:
        assert local_run.proc is not None and local_run.proc.stdout is not None
        for line in local_run.proc.stdout:
            local_run.lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    eventually(
        lambda: "Worker process is ready for action" in local_run.text() or local_run.proc.poll() is not None,  # type: ignore[union-attr]
        timeout_s=120,
        message="make run's worker ready",
    )
    assert local_run.proc.poll() is None, local_run.text()
    print(local_run.text(), flush=True)


@when("I run the commands it prints")
def run_printed(local_run: LocalRun) -> None:
    exports = local_run.printed(r"^  (export .*)$")
    for command in re.findall(r"^  (\.venv/bin/enrichment .*)$", local_run.text(), re.MULTILINE):
        env = {k: v for k, v in os.environ.items() if k not in _SESSION_SETTINGS}
        done = subprocess.run(
            ["bash", "-c", f"{exports} && {command}"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        print(done.stdout, flush=True)


@then("the job's POIs are stored")
def pois_stored(local_run: LocalRun) -> None:
    assert local_run.database is not None

    def stored() -> int:
        if not local_run.database.exists():  # type: ignore[union-attr]
            return 0
        try:
            with sqlite3.connect(local_run.database) as conn:
                return int(conn.execute("SELECT count(*) FROM pois").fetchone()[0])
        except sqlite3.OperationalError:  # no table yet
            return 0

    eventually(
        lambda: stored() > 0, timeout_s=30, message=f"POIs in {local_run.database}\n{local_run.text()}"
    )


@when("I press Ctrl-C")
def ctrl_c(local_run: LocalRun) -> None:
    assert local_run.proc is not None
    os.killpg(local_run.proc.pid, signal.SIGINT)
    local_run.proc.wait(timeout=40)


@then("everything make run started has stopped")
def all_stopped(local_run: LocalRun) -> None:
    assert local_run.proc is not None
    redis_port = int(local_run.printed(r"local run: Redis redis://127\.0\.0\.1:(\d+)/"))
    eventually(
        lambda: not _session_processes(local_run.proc.pid), timeout_s=20, message="the run's processes gone"
    )  # type: ignore[union-attr]

    def redis_gone() -> bool:
        try:
            socket.create_connection(("127.0.0.1", redis_port), timeout=0.5).close()
        except OSError:
            return True
        return False

    eventually(redis_gone, timeout_s=20, message=f"its redis-server on port {redis_port} stopped")
    print(local_run.text()[-600:], flush=True)


@then("the workers finished what they held rather than being killed")
def drained(local_run: LocalRun) -> None:
    text = local_run.text()
    # One SIGTERM each (Dramatiq takes a second as "kill now"), as Heroku and honcho users expect.
    assert "Killing worker process" not in text, text[-3000:]
    assert "Worker has been shut down." in text, text[-3000:]
    assert "worker.1 stopped (rc=0)" in text, text[-3000:]  # not ended by a signal
    assert "the workers finish what they hold" in text

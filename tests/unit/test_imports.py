"""Importing the product, or any of its modules, talks to no server (finding 12).

Building the broker, the shared-state backend and the middleware makes
clients, not connections: Redis, PostgreSQL and Overpass are first reached
when a worker starts or a command needs them. Each check runs in a fresh
interpreter whose REDIS_URL, DATABASE_URL and OVERPASS_URL point at loopback
listeners this test owns, with an audit hook that reports any
``socket.connect`` at all (the machine's own servers included).
"""

from __future__ import annotations

import os
import pkgutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Imports each module named on the command line, in order, and prints every
# socket.connect with the module being imported at the time.
_IMPORTER = """
import importlib, sys
current = ["(start)"]
def audit(event, args):
    if event == "socket.connect":
        print(f"CONNECT {args[1]!r} while importing {current[0]}", flush=True)
sys.addaudithook(audit)
for name in sys.argv[1:]:
    current[0] = name
    importlib.import_module(name)
current[0] = "(after the imports)"
import dramatiq
broker = dramatiq.get_broker()
print("ACTORS", ",".join(sorted(broker.actors)), type(broker).__name__, flush=True)
"""


def _modules(package: str) -> list[str]:
    return [package] + [
        info.name for info in pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}.")
    ]


@dataclass
class Listener:
    """A loopback port that counts the connections it accepts."""

    sock: socket.socket = field(default_factory=socket.socket)
    accepted: int = 0

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def _accept(self) -> None:
        while self.sock.fileno() != -1:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture
def servers() -> Iterator[dict[str, Listener]]:
    listeners = {name: Listener() for name in ("redis", "postgresql", "overpass")}
    yield listeners
    for listener in listeners.values():
        listener.sock.close()


def _environment(servers: dict[str, Listener]) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": f"redis://:s3cret@127.0.0.1:{servers['redis'].port}/0",
        "DATABASE_URL": f"postgresql://u:s3cret@127.0.0.1:{servers['postgresql'].port}/pois",
        "OVERPASS_URL": f"http://127.0.0.1:{servers['overpass'].port}/api/interpreter",
        "BROKER": "redis",
        "STATE_BACKEND": "redis",
    }


@pytest.mark.parametrize("package", ["enrichment_actors", "middleware"])
def test_importing_any_module_connects_to_nothing(package: str, servers: dict[str, Listener]) -> None:
    modules = _modules(package)
    assert len(modules) > 5
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTER, *modules],
        cwd=REPO, env=_environment(servers), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "CONNECT" not in done.stdout, done.stdout
    time.sleep(0.3)
    assert {name: s.accepted for name, s in servers.items()} == {"redis": 0, "postgresql": 0, "overpass": 0}


def test_the_package_declares_its_actors_on_import_as_the_dramatiq_cli_needs(
    servers: dict[str, Listener],
) -> None:
    """``dramatiq enrichment_actors`` imports the package, then takes Dramatiq's global broker."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTER, "enrichment_actors"],
        cwd=REPO, env=_environment(servers), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    actors = next(
        line.split()[1].split(",") for line in done.stdout.splitlines() if line.startswith("ACTORS")
    )
    assert {"enrich", "fetch_pois", "store_pois"} <= set(actors)
    assert "CONNECT" not in done.stdout


def test_the_stand_in_server_runs_without_touching_redis_or_overpass(servers: dict[str, Listener]) -> None:
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("enrichment")), "stub-overpass", "--port", "0"],
        cwd=REPO, env=_environment(servers), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "listening on http://127.0.0.1:" in proc.stdout.readline()
        time.sleep(1.0)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert {name: s.accepted for name, s in servers.items()} == {"redis": 0, "postgresql": 0, "overpass": 0}

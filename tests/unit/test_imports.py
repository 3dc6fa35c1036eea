"""Importing the product, or any of its modules, talks to no server and builds nothing (finding 12).

Building the broker, the shared-state backend and the middleware makes
clients, not connections: Redis, PostgreSQL and Overpass are first reached
when a worker starts or a command needs them. Each check runs in a fresh
interpreter whose REDIS_URL, DATABASE_URL and OVERPASS_URL point at loopback
listeners this test owns, with an audit hook that reports any
``socket.connect`` at all (the machine's own servers included).

Only :mod:`enrichment_actors.worker` (what ``dramatiq`` loads), the actors,
the runtime and the demo program build the runtime when imported; any other
module (the stand-in server, the ``enrichment`` tools) reads no setting and
leaves Dramatiq's global broker alone, so it imports even when a setting is
invalid. Real ``dramatiq`` processes show that each supported worker command
consumes a job.
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
import dramatiq.broker
broker = dramatiq.broker.global_broker
print("RUNTIME", "enrichment_actors.runtime" in sys.modules, "enrichment_actors.actors" in sys.modules)
print("GLOBAL_BROKER", type(broker).__name__, flush=True)
if broker is not None:
    print("ACTORS", ",".join(sorted(broker.actors)), flush=True)
"""

#: The modules whose import builds the runtime: what the CLI loads, and the demo program.
BUILDERS = {
    "enrichment_actors.worker",
    "enrichment_actors.actors",
    "enrichment_actors.runtime",
    "enrichment_actors.demo",
}


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


def _said(stdout: str, key: str) -> list[str]:
    return next(line.split()[1:] for line in stdout.splitlines() if line.startswith(key + " "))


def test_the_worker_module_declares_the_actors_on_the_global_broker_as_dramatiqs_cli_needs(
    servers: dict[str, Listener],
) -> None:
    """``dramatiq enrichment_actors.worker`` imports the module, then takes Dramatiq's global broker."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTER, "enrichment_actors.worker"],
        cwd=REPO, env=_environment(servers), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _said(done.stdout, "GLOBAL_BROKER") != ["NoneType"]
    assert {"enrich", "fetch_pois", "store_pois"} <= set(_said(done.stdout, "ACTORS")[0].split(","))
    assert "CONNECT" not in done.stdout


@pytest.mark.parametrize("module", sorted(set(_modules("enrichment_actors")) - BUILDERS))
def test_importing_a_module_builds_no_runtime_even_with_an_invalid_setting(
    module: str, servers: dict[str, Listener]
) -> None:
    env = {**_environment(servers), "QUOTA_REQUESTS": "abc"}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTER, module],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _said(done.stdout, "RUNTIME") == ["False", "False"], "the runtime or the actors were built"
    assert _said(done.stdout, "GLOBAL_BROKER") == ["NoneType"], "Dramatiq's global broker was replaced"


# Whatever names the submodules ``runtime`` and ``broker`` first, the package's
# ``runtime`` and ``broker`` are the built objects, as app code and the tests use them.
_NAMES = """
import importlib, sys
import dramatiq
importlib.import_module(sys.argv[1])
import enrichment_actors
from enrichment_actors import runtime
assert type(enrichment_actors.runtime).__name__ == "Runtime", enrichment_actors.runtime
assert runtime is enrichment_actors.runtime
assert enrichment_actors.broker is runtime.broker is dramatiq.get_broker()
assert "enrich" in enrichment_actors.broker.actors
from enrichment_actors import enrich, fetch_pois, store_pois
print("OK", enrich.actor_name, fetch_pois.actor_name, store_pois.actor_name)
"""


@pytest.mark.parametrize(
    "imported_first",
    [
        "enrichment_actors",
        "enrichment_actors.runtime",
        "enrichment_actors.broker",
        "enrichment_actors.worker",
    ],
)
def test_the_package_runtime_and_broker_are_the_built_objects_whatever_was_imported_first(
    imported_first: str, servers: dict[str, Listener]
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _NAMES, imported_first],
        cwd=REPO, env=_environment(servers), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OK", "enrich", "fetch_pois", "store_pois"]


_ENRICHMENT = str(Path(sys.executable).with_name("enrichment"))


@pytest.mark.parametrize(
    ("argv", "status", "says"),
    [
        (["--help"], 0, "stub-overpass"),
        (["--version"], 0, "enrichment 0."),
        (["stub-overpass", "--help"], 0, "--slots"),
        # Commands that need the runtime say which setting to fix, in one line.
        (["enqueue", "--bbox", "48.85,2.29,48.86,2.30"], 2, "QUOTA_REQUESTS='abc' is not valid"),
        (["status"], 2, "QUOTA_REQUESTS='abc' is not valid"),
    ],
    ids=["help", "version", "stub-overpass-help", "enqueue", "status"],
)
def test_the_tools_run_with_an_invalid_setting(
    argv: list[str], status: int, says: str, servers: dict[str, Listener]
) -> None:
    env = {**_environment(servers), "QUOTA_REQUESTS": "abc"}
    done = subprocess.run(
        [_ENRICHMENT, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == status, done.stdout + done.stderr
    assert says in done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert {name: s.accepted for name, s in servers.items()} == {"redis": 0, "postgresql": 0, "overpass": 0}


@pytest.mark.parametrize("settings", [{}, {"QUOTA_REQUESTS": "abc"}], ids=["valid", "invalid-setting"])
def test_the_stand_in_server_runs_without_touching_redis_or_overpass(
    settings: dict[str, str], servers: dict[str, Listener]
) -> None:
    proc = subprocess.Popen(
        [_ENRICHMENT, "stub-overpass", "--port", "0"],
        cwd=REPO, env={**_environment(servers), **settings},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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


# The documented command, the broker named explicitly, and the package alone
# (which must never become a worker on a default broker with no actors).
@pytest.mark.parametrize(
    "module", ["enrichment_actors.worker", "enrichment_actors:broker", "enrichment_actors"]
)
def test_each_supported_dramatiq_command_consumes_a_job(
    module: str, redis_url: str, redis_client: object, tmp_path: Path
) -> None:
    from enrichment_actors import enrich
    from enrichment_actors.store import PoiStore
    from enrichment_actors.stub_overpass import StubOverpass
    from tests.support.workers import WorkerProcesses, eventually

    database_url = f"sqlite:///{tmp_path}/pois.sqlite3"
    store = PoiStore(database_url)
    store.ensure_schema()
    with StubOverpass() as stub:
        env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "OVERPASS_URL": stub.interpreter_url}
        with WorkerProcesses(env, module=module, processes=1, threads=2) as fleet:
            enrich.send(bbox={"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}, tags=["amenity"])
            eventually(lambda: store.count() > 0, timeout_s=60, message=f"POIs stored by dramatiq {module}")
            assert fleet.count("Traceback") == 0, fleet.tail()
    store.close()

"""Importing the product, or any of its modules, builds nothing and talks to no server (finding 12, issue 19).

Building happens only when asked: ``enrichment_actors.worker.build()`` (what
``dramatiq enrichment_actors.worker:build`` calls), ``start(settings)`` or
``enrichment_actors.install(broker)``. Each check runs in a fresh interpreter
whose REDIS_URL, DATABASE_URL and OVERPASS_URL point at loopback listeners
this test owns, with an audit hook that reports any ``socket.connect`` at all
(the machine's own servers included), and an app's broker already set as
Dramatiq's global broker: after every module of both packages is imported,
that broker is still the global one, with the same middleware list and no
actor of ours, even with an unusable setting. Real ``dramatiq`` processes
show that the supported worker command consumes a job.
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

import dramatiq
import pytest

REPO = Path(__file__).resolve().parents[2]

# Sets an app's broker as Dramatiq's global one, imports each module named on
# the command line, in order, and prints every socket.connect with the module
# being imported at the time; then what became of the app's broker.
_IMPORTER = """
import importlib, sys
current = ["(start)"]
def audit(event, args):
    if event == "socket.connect":
        print(f"CONNECT {args[1]!r} while importing {current[0]}", flush=True)
sys.addaudithook(audit)
import dramatiq
from dramatiq.brokers.stub import StubBroker
app_broker = StubBroker()
dramatiq.set_broker(app_broker)
middleware = list(app_broker.middleware)
for name in sys.argv[1:]:
    current[0] = name
    importlib.import_module(name)
current[0] = "(after the imports)"
import dramatiq.broker
print("GLOBAL_BROKER", "same" if dramatiq.broker.global_broker is app_broker else "replaced", flush=True)
print("MIDDLEWARE", "same" if app_broker.middleware == middleware else "changed", flush=True)
print("ACTORS", ",".join(sorted(app_broker.actors)) or "none", flush=True)
runtime = sys.modules.get("enrichment_actors.runtime")
print("RUNTIME", runtime.installed() if runtime is not None else None, flush=True)
"""

#: Where each package's modules live in the repository.
PACKAGE_PATHS = {
    "enrichment_actors": "enrichment_actors",
    "enrichment_middleware": "middleware/enrichment_middleware",
}


def _modules(package: str) -> list[str]:
    return [package] + [
        info.name
        for info in pkgutil.walk_packages([str(REPO / PACKAGE_PATHS[package])], prefix=f"{package}.")
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


def _said(stdout: str, key: str) -> list[str]:
    return next(line.split()[1:] for line in stdout.splitlines() if line.startswith(key + " "))


@pytest.mark.parametrize("setting", [{}, {"QUOTA_REQUESTS": "abc"}], ids=["valid", "invalid-setting"])
@pytest.mark.parametrize("package", sorted(PACKAGE_PATHS))
def test_importing_every_module_leaves_the_apps_broker_alone_and_connects_to_nothing(
    package: str, setting: dict[str, str], servers: dict[str, Listener]
) -> None:
    modules = _modules(package)
    assert len(modules) > 10
    if package == "enrichment_actors":
        assert "enrichment_actors.worker" in modules  # the entry point too: the CLI calls build()
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTER, *modules],
        cwd=REPO, env={**_environment(servers), **setting}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "CONNECT" not in done.stdout, done.stdout
    assert _said(done.stdout, "GLOBAL_BROKER") == ["same"], "Dramatiq's global broker was replaced"
    assert _said(done.stdout, "MIDDLEWARE") == ["same"], "middleware was added to the app's broker"
    assert _said(done.stdout, "ACTORS") == ["none"], "actors were declared on the app's broker"
    assert _said(done.stdout, "RUNTIME") == ["None"], "a runtime was built"
    time.sleep(0.3)
    assert {name: s.accepted for name, s in servers.items()} == {"redis": 0, "postgresql": 0, "overpass": 0}


# What the CLI does with ``enrichment_actors.worker:build``: import, call, take the global broker.
_BUILD = """
import dramatiq
from dramatiq.cli import import_broker
module, broker = import_broker("enrichment_actors.worker:build")
print("GLOBAL_BROKER", type(broker).__name__, broker is dramatiq.get_broker(), flush=True)
print("ACTORS", ",".join(sorted(broker.actors)), flush=True)
"""


def test_the_worker_build_declares_the_actors_on_the_broker_dramatiqs_cli_takes(
    servers: dict[str, Listener],
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BUILD],
        cwd=REPO, env=_environment(servers), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _said(done.stdout, "GLOBAL_BROKER") == ["RecoveringRedisBroker", "True"]
    assert _said(done.stdout, "ACTORS") == ["enrich,fetch_pois,store_pois"]
    assert "CONNECT" not in done.stdout


def test_the_package_exports_the_sender_install_and_the_error() -> None:
    import enrichment_actors
    from enrichment_actors.sender import Sender

    assert sorted(enrichment_actors.__all__) == ["InvalidJob", "__version__", "enrich", "install"]
    assert isinstance(enrichment_actors.enrich, Sender)
    assert not isinstance(enrichment_actors.enrich, dramatiq.Actor)


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


# The Procfile's command.
@pytest.mark.parametrize("module", ["enrichment_actors.worker:build"])
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

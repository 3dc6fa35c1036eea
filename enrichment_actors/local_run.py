"""The local run (``make run``): the Procfile under honcho, against a stand-in Overpass server by default.

Run as ``python -m enrichment_actors.local_run`` from the virtualenv (``make
run`` does). It puts the virtualenv's ``bin`` first on ``PATH`` (so the
Procfile's ``dramatiq`` is found without activating anything) and then:

- unless ``REDIS_URL`` is set, starts a ``redis-server`` of its own on a free
  loopback port, with its data in ``var/local-run/redis`` (append-only file
  on, ``noeviction``: what the workers ask of a production Redis), so queued
  and parked jobs outlive a restart; ``LOCAL_RUN_DIR`` puts it elsewhere (two
  runs at once need two);
- unless ``OVERPASS_URL`` is set, starts the stand-in Overpass server (in
  this process, on a free loopback port) and points the workers at it, with
  ``OVERPASS_CONTACT=local-run@localhost`` unless set: nothing reaches a
  public server unless you name it;
- prints where everything is and the ``enrichment`` commands to try;
- runs ``honcho start`` on the Procfile until Ctrl-C (or SIGTERM): the
  workers then finish what they hold (one SIGTERM each, as a dyno's
  shutdown should be; :func:`run_procfile`), then it stops what it started.

Every other setting is the product's (``enrichment_actors.settings``), read
from the environment as usual: ``WORKER_PROCESSES=1 make run`` works too.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from enrichment_middleware.redaction import redact_url

from .stub_overpass import StubOverpass

#: Where the local run keeps its files (``var/`` is ignored by git); ``LOCAL_RUN_DIR`` moves it.
STATE_DIR = Path("var") / "local-run"
#: The contact the local run sends to the stand-in server.
LOCAL_CONTACT = "local-run@localhost"
#: A box with POIs in the stand-in server's data, for the printed example.
EXAMPLE_BOX = "48.85,2.29,48.86,2.30"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def local_redis(data_dir: Path, timeout_s: float = 20.0) -> Iterator[str]:
    """A ``redis-server`` on a free loopback port for as long as the block runs; yields its URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit(
            "local run: redis-server is not installed. Run `make install` (as root it installs it), "
            "or set REDIS_URL to a Redis you run."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir.resolve()),
        "--appendonly", "yes", "--maxmemory-policy", "noeviction", "--save", "",
    ]  # fmt: skip
    # Its own session: a Ctrl-C in the terminal stops the workers first, and
    # Redis only when they are gone (they need it to shut down cleanly).
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_for_port(port, proc, timeout_s, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float, name: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"local run: {name} exited at start (status {proc.returncode}).")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"local run: {name} did not listen on port {port} within {timeout_s:.0f} s."
                ) from None
            time.sleep(0.05)


def run_procfile(env: Mapping[str, str], procfile: str = "Procfile") -> int:
    """``honcho start -f PROCFILE`` until it ends; a Ctrl-C or SIGTERM here drains the workers.

    honcho runs in a process group of its own, so that a terminal's Ctrl-C
    does not reach every worker process directly. And it is not told either:
    honcho sends SIGTERM to each process's whole group, so each Dramatiq worker
    process would get it twice (once more from Dramatiq's main process) and
    take the second as "kill now". The first Ctrl-C sends one SIGTERM to each
    ``dramatiq`` command only (:func:`drain`): its main process passes it on
    once, the workers finish what they hold within the shutdown timeout, and
    when they are gone honcho stops the rest. A second Ctrl-C stops everything
    at once, through honcho.
    """
    honcho = Path(env["PATH"].split(os.pathsep)[0]) / "honcho"
    command = [str(honcho if honcho.exists() else "honcho"), "start", "-f", procfile]
    proc = subprocess.Popen(command, env=dict(env), process_group=0)
    draining = False

    def stop(signum: int, frame: object) -> None:
        nonlocal draining
        if proc.poll() is not None:
            return
        if not draining and drain(proc.pid):
            draining = True
            print(
                "local run: the workers finish what they hold, then stop (Ctrl-C again: at once).", flush=True
            )
            return
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def drain(honcho_pid: int) -> list[int]:
    """Send one SIGTERM to each ``dramatiq`` command honcho runs (not to its worker processes); their PIDs.

    honcho starts each Procfile line as ``sh -c LINE`` in a session of its
    own: the command is the session leader, or the shell's child.
    """
    tree = _process_tree()
    signalled = []
    for pid in _descendants(tree, honcho_pid):
        parent, argv = tree[pid]
        # The program (``dramatiq``, or ``python .../dramatiq``), not a shell running it: argv[0] or argv[1].
        runs_dramatiq = any(Path(arg).name == "dramatiq" for arg in argv[:2])
        # The command honcho started, not one of its worker processes (their parent leads no session).
        command = _session_of(pid) == pid or _session_of(parent) == parent
        if runs_dramatiq and command:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                signalled.append(pid)
    return signalled


def _process_tree() -> dict[int, tuple[int, list[str]]]:
    """PID -> (parent PID, argv) of every live process."""
    tree = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_text().split("\0")
        except OSError:
            continue
        tree[int(stat.parent.name)] = (int(fields[1]), argv)
    return tree


def _descendants(tree: Mapping[int, tuple[int, list[str]]], root: int) -> list[int]:
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in tree.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def main() -> int:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", os.defpath)])
    with ExitStack() as stack:
        if not env.get("REDIS_URL"):
            data_dir = Path(env.get("LOCAL_RUN_DIR") or STATE_DIR) / "redis"
            env["REDIS_URL"] = stack.enter_context(local_redis(data_dir))
            redis_note = f"started for this run, data in {data_dir}"
        else:
            redis_note = "from REDIS_URL"
        if not env.get("OVERPASS_URL"):
            stub = stack.enter_context(StubOverpass(latency_s=0.2, slots=2))
            env["OVERPASS_URL"] = stub.interpreter_url
            env.setdefault("OVERPASS_CONTACT", LOCAL_CONTACT)
            overpass_note = "the stand-in server, started for this run"
        else:
            overpass_note = "from OVERPASS_URL"
        shown = {
            name: env[name] for name in ("REDIS_URL", "OVERPASS_URL", "OVERPASS_CONTACT") if env.get(name)
        }
        exports = " ".join(f"{name}={shlex.quote(redact_url(value))}" for name, value in shown.items())
        print(
            f"local run: Redis {redact_url(env['REDIS_URL'])} ({redis_note})\n"
            f"local run: Overpass {env['OVERPASS_URL']} ({overpass_note})\n"
            "local run: try, in another shell in this directory:\n"
            f"  export {exports}\n"
            f"  .venv/bin/enrichment enqueue --bbox {EXAMPLE_BOX} --tag amenity\n"
            "  .venv/bin/enrichment status\n"
            "local run: Ctrl-C lets the workers finish what they hold, then stops what this run started.",
            flush=True,
        )
        return run_procfile(env)


if __name__ == "__main__":
    sys.exit(main())

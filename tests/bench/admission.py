"""Round trips of one admission to the state Redis: before the call, and from its answer to the end.

The product is built in a fresh interpreter on the in-process stub broker,
so every command that reaches Redis is the gates'. Each of ``calls``
``fetch_pois`` deliveries passes the broker's before-hooks (an admission
that waits for nothing: a free permit, no pause, the circuit closed, no
pacing, budget left), then does what the actor does once its answer is in
(report the bytes and the server time, give the permit back early as a success) and
passes the after-hooks. A round trip is one send to Redis (redis-py's
``send_packed_command``): a script or a pipeline counts once.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.workers import REPO

_CHILD = """
import json, sys
import redis.connection

sends = [0]
send = redis.connection.AbstractConnection.send_packed_command


def counted(self, command, check_health=True):
    sends[0] += 1
    return send(self, command, check_health)


redis.connection.AbstractConnection.send_packed_command = counted

from dramatiq.broker import MessageProxy

from enrichment_actors.settings import check_startable, load_settings
from enrichment_actors.worker import start
from enrichment_middleware import release_permit_early
from enrichment_middleware.usage import charge

runtime = start(check_startable(load_settings()))
broker = runtime.broker
fetch_pois = broker.get_actor("fetch_pois")
trips = []
for index in range(int(sys.argv[1]) + 1):
    box = {"south": 10.0 + index * 0.01, "west": 10.0, "north": 10.005 + index * 0.01, "east": 10.005}
    message = MessageProxy(fetch_pois.message(bbox=box, tags=["amenity"]))
    first = sends[0]
    broker.emit_before("process_message", message)
    admitted = sends[0]
    charge(bytes=20_000, cost=150)  # as fetch_pois charges its call
    release_permit_early(succeeded=True)
    broker.emit_after("process_message", message, result=None)
    trips.append((admitted - first, sends[0] - admitted))
print(json.dumps(trips[1:]))  # the first pays for loading the scripts
"""


@dataclass(frozen=True)
class AdmissionTrips:
    """Median round trips per call, before it (admission) and after it (charges, release, outcome)."""

    before: float
    after: float
    calls: int


def run_child(code: str, *args: str, env: dict[str, str], cwd: Path = REPO, timeout_s: float) -> Any:
    """Run ``code`` in a fresh interpreter; what it printed last, as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"a round-trip count failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stub_broker_env(redis_url: str, database_url: str) -> dict[str, str]:
    """The product on the in-process stub broker, its state on ``redis_url``: every command that
    reaches Redis is the gates'."""
    return {
        **os.environ,
        "BROKER": "stub",
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        # Never called: a loopback endpoint has no pacing, so no admission waits.
        "OVERPASS_URL": "http://127.0.0.1:9/api/interpreter",
        "ENRICH_COVERAGE": "false",
    }


def measure(redis_url: str, database_url: str, calls: int = 20) -> AdmissionTrips:
    trips = run_child(_CHILD, str(calls), env=stub_broker_env(redis_url, database_url), timeout_s=120)
    return AdmissionTrips(
        before=statistics.median(b for b, _ in trips),
        after=statistics.median(a for _, a in trips),
        calls=len(trips),
    )

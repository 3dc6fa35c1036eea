"""Redis round trips per job, broker commands included, with ``ENRICH_COVERAGE=false``.

A fresh interpreter builds the product on the Redis broker (one Redis for
the broker and the state), sends ``jobs`` enrich jobs to distinct boxes,
then runs a worker of 4 threads (4 permits: no job waits for one) in the
same process against the stand-in server until every job is stored. Every send to Redis counts once (redis-py's
``send_packed_command``: a script or a pipeline is one): the sender's, then
those of every thread but the main one while the jobs run (the main thread
only waits, reading PostgreSQL). ``source`` runs another checkout of the
code the same way (say an earlier commit, ``git worktree add``), so the two
are measured alike in one run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tests.support.workers import REPO

from .admission import run_child

_CHILD = """
import json, os, sys, threading, time
import redis.connection

counting = {"phase": "idle", "send": 0, "run": 0}
send = redis.connection.AbstractConnection.send_packed_command


def counted(self, command, check_health=True):
    phase = counting["phase"]
    main = threading.current_thread() is threading.main_thread()
    if phase == "send" and main or phase == "run" and not main:
        counting[phase] += 1
    return send(self, command, check_health)


redis.connection.AbstractConnection.send_packed_command = counted

import dramatiq
import psycopg2

from enrichment_actors.stub_overpass import StubOverpass

jobs = int(sys.argv[1])
with StubOverpass(pois_per_box=20) as stub:
    os.environ["OVERPASS_URL"] = stub.interpreter_url
    from enrichment_actors import enrich
    from enrichment_actors.settings import check_startable, load_settings
    from enrichment_actors.worker import start

    runtime = start(check_startable(load_settings()))
    database = psycopg2.connect(os.environ["DATABASE_URL"])
    database.autocommit = True

    def stored():
        with database.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pois")
            return cursor.fetchone()[0]

    def settled(calls):
        # Every call made, then no POI more for half a second: every job stored.
        deadline = time.monotonic() + 120
        while stub.stats().calls < calls and time.monotonic() < deadline:
            time.sleep(0.05)
        count, since = stored(), time.monotonic()
        while time.monotonic() - since < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
            if stored() != count:
                count, since = stored(), time.monotonic()
        return count

    boxes = [
        {"south": 10.0 + 0.02 * i, "west": 20.0, "north": 10.01 + 0.02 * i, "east": 20.01} for i in range(jobs + 1)
    ]
    enrich.send(bbox=boxes[-1], tags=["amenity"])  # a first job pays for loading the scripts
    worker = dramatiq.Worker(runtime.broker, worker_threads=4, worker_timeout=1000)
    worker.start()
    settled(1)
    worker.stop()
    counting["phase"] = "send"
    for box in boxes[:-1]:
        enrich.send(bbox=box, tags=["amenity"])
    counting["phase"] = "run"
    worker = dramatiq.Worker(runtime.broker, worker_threads=4, worker_timeout=1000)
    worker.start()
    done = settled(jobs + 1)
    counting["phase"] = "idle"
    calls = stub.stats().calls
    worker.stop()
print(json.dumps({"send": counting["send"], "run": counting["run"], "stored": done, "calls": calls}))
"""


@dataclass(frozen=True)
class JobTrips:
    """Redis round trips per job: sending it, and running its messages."""

    send: float
    run: float
    jobs: int

    @property
    def total(self) -> float:
        return self.send + self.run


def measure(redis_url: str, database_url: str, jobs: int = 40, source: Path | None = None) -> JobTrips:
    root = source or REPO
    env = {
        **os.environ,
        "BROKER": "redis",
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "ENRICH_COVERAGE": "false",
        "OVERPASS_CONTACT": "bench@localhost",
        # A permit for every thread: this counts the bookkeeping of a job, not waits for permits.
        "SEMAPHORE_PERMITS": "4",
        "PYTHONPATH": os.pathsep.join([str(root), str(root / "middleware")]),
    }
    found = run_child(_CHILD, str(jobs), env=env, cwd=root, timeout_s=300)
    if found["calls"] != jobs + 1 or not found["stored"]:
        raise RuntimeError(f"not one call per job, or nothing stored: {found}")
    return JobTrips(send=found["send"] / jobs, run=found["run"] / jobs, jobs=jobs)

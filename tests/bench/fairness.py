"""Fair shares (issue 22): how long a late source's jobs take behind another's backlog.

One fleet (2 processes x 8 threads, N permits, the stand-in server answering
after L). Source A sends ``backlog`` jobs; once its calls are under way,
source B sends ``k``. T_B runs from B's first send to the last of B's POIs
stored (B's boxes are apart from A's, so its POIs are told by where they
are). T_alone is B's ``k`` jobs on an idle fleet, in the same run. First
come, first served is the same two batches sent by one source: B waits
behind A's backlog, as every job did before the room.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from enrichment_actors.stub_overpass import StubOverpass
from tests.support.workers import WorkerProcesses, eventually

from .fleet import grid_boxes, send, sender
from .throughput import POIS_PER_JOB, TAGS, Environment, reset

#: Where A's and B's boxes start: far apart, so B's POIs are those north of B_SOUTH.
A_ORIGIN = (10.0, 10.0)
B_ORIGIN = (40.0, 10.0)
B_SOUTH = 39.0


@dataclass(frozen=True)
class FairRun:
    """One run: B's time, and what the stand-in server did meanwhile."""

    name: str
    t_b_s: float
    capped: bool
    #: Calls started while B's jobs were in the fleet, and how many of them were B's.
    calls: int
    b_calls: int
    #: Share of the permit-seconds between B's send and the last call's end that a call was in flight.
    busy: float


def _b_pois(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pois WHERE lat > %s", (B_SOUTH,)).fetchone()
    return int(row[0]) if row else 0


def _send(broker: Any, queue: str, boxes: list[dict[str, float]], source: str) -> None:
    send(broker, queue, "enrich", ({"bbox": box, "tags": TAGS, "source": source} for box in boxes))


def run(
    name: str,
    env: Environment,
    stub: StubOverpass,
    fleet_env: dict[str, str],
    *,
    backlog: int,
    k: int,
    source_a: str,
    source_b: str,
    permits: int,
    cap_s: float,
) -> FairRun:
    """Send ``backlog`` jobs as ``source_a``, then (once A's calls run) ``k`` as ``source_b``; time B."""
    reset(env)
    stub.reset()
    b_boxes = grid_boxes(k, origin=B_ORIGIN)
    with WorkerProcesses(
        fleet_env,
        module="enrichment_actors.worker:build",
        modules=["tests.bench.process_tag"],
        processes=2,
        threads=8,
        defaults={},
    ) as fleet:
        broker = sender(env.redis_url)
        queue = fleet_env.get("ENRICH_QUEUE", "enrichment")
        if backlog:
            _send(broker, queue, grid_boxes(backlog, origin=A_ORIGIN), source_a)
            eventually(
                lambda: stub.stats().calls >= 10,
                timeout_s=60,
                message=f"{name}: A's calls at the stand-in server\n{fleet.tail()}",
            )
        else:
            # An idle fleet: its consumers are up once a throwaway job has been answered.
            _send(broker, queue, grid_boxes(1, origin=(60.0, 10.0)), source_b)
            eventually(
                lambda: stub.stats().calls >= 1, timeout_s=60, message=f"{name}: warm-up\n{fleet.tail()}"
            )
            time.sleep(0.5)
        sent_at = time.time()
        _send(broker, queue, b_boxes, source_b)
        expected = k * POIS_PER_JOB
        with psycopg.connect(env.dsn, autocommit=True) as conn:
            deadline = sent_at + cap_s
            done = 0
            while time.time() < deadline:
                done = _b_pois(conn)
                if done >= expected:
                    break
                time.sleep(0.01)
        finished = min(time.time(), deadline)
        broker.close()
    calls = [r for r in stub.requests if r.path == "/api/interpreter"]
    window = [r for r in calls if sent_at <= r.started_at <= finished]
    b_calls = sum(1 for r in window if _is_b(r.query))
    # Up to the last call's end (the store after it is no slot left empty); the calls in flight at
    # B's send count for the part of them inside the window.
    until = max((min(r.ended_at, finished) for r in window), default=finished)
    overlap = sum(max(0.0, min(r.ended_at, until) - max(r.started_at, sent_at)) for r in calls)
    busy = overlap / (permits * (until - sent_at))
    return FairRun(name, finished - sent_at, done < expected, len(window), b_calls, busy)


def _is_b(query: str) -> bool:
    """Whether a query asks for one of B's boxes (south at or above B_SOUTH)."""
    match = re.search(r"\]\((-?\d+(?:\.\d+)?),", query)
    return match is not None and float(match.group(1)) > B_SOUTH

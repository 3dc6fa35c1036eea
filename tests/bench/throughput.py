"""Jobs per second through real worker fleets: slot utilisation and middleware overhead.

Each run starts a fleet (``dramatiq MODULE``, 2 processes x 8 threads by
default) on an emptied Redis and POI table, sends every job as an ``enrich``
message, and waits until all their POIs are stored. The stand-in server
answers each call after a fixed latency with a fixed number of POIs, so a
job is done when its POIs are in the table.

The clock starts at the first call the stand-in server receives (idle
Dramatiq consumers poll up to a second apart; that start-up lag is not
throughput) and stops when the last POI is stored. Every worker process
loads :mod:`tests.bench.process_tag`, so each call says which process made it.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from enrichment_actors.stub_overpass import StubOverpass
from tests.support.workers import WorkerProcesses, eventually

from .fleet import grid_boxes, rabbitmq_sender, send, sender
from .process_tag import process_of

#: POIs each answer carries (the stand-in server's ``pois_per_box``).
POIS_PER_JOB = 20
TAGS = ["amenity"]


@dataclass
class FleetRun:
    """What one fleet did with one batch of jobs."""

    name: str
    jobs: int
    done: int
    elapsed_s: float
    capped: bool
    calls: int
    peak_in_flight: int
    rejected_over_slots: int
    held: int = 0
    #: Calls made by each worker process (by pid), largest first.
    shares: list[int] = field(default_factory=list)
    log_counts: dict[str, int] = field(default_factory=dict)
    #: (started, ended) of every interpreter call, epoch seconds, in start order.
    timeline: list[tuple[float, float]] = field(default_factory=list, repr=False)
    finished_at: float = 0.0

    def busy_fraction(self, permits: int) -> float:
        """Share of the permit-seconds between the first call's start and the last call's end
        that a call was in flight at the stand-in server."""
        if not self.timeline:
            return 0.0
        span = max(end for _, end in self.timeline) - self.timeline[0][0]
        return sum(end - start for start, end in self.timeline) / (permits * span) if span > 0 else 0.0

    def gaps_ms(self) -> list[float]:
        """For each call that ended, how long its slot stayed empty until the next call started
        (each start matched once, to the earliest end before it), in ms. The last calls' slots,
        with no job left to start, are not counted."""
        starts = sorted(start for start, _ in self.timeline)
        ends = sorted(end for _, end in self.timeline)
        gaps: list[float] = []
        i = 0
        for end in ends:
            while i < len(starts) and starts[i] < end:
                i += 1
            if i == len(starts):
                break
            gaps.append((starts[i] - end) * 1000)
            i += 1
        return gaps

    def gap_summary(self) -> str:
        gaps = self.gaps_ms()
        if len(gaps) < 2:
            return "no hand-off measured"
        deciles = statistics.quantiles(gaps, n=10)
        return f"slot empty between calls: median {statistics.median(gaps):.1f} ms, p90 {deciles[-1]:.1f} ms"

    def share_summary(self) -> str:
        total = sum(self.shares)
        if not total:
            return "no call"
        return "calls per process " + "/".join(f"{n / total:.2f}" for n in self.shares)

    @property
    def tail_s(self) -> float:
        """From the last call's end to the last POI stored."""
        return self.finished_at - max((end for _, end in self.timeline), default=self.finished_at)

    @property
    def jobs_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class Environment:
    """The servers every run uses."""

    redis_url: str
    database_url: str
    dsn: str


def product_env(env: Environment, stub: StubOverpass, **settings: Any) -> dict[str, str]:
    """Settings of the product fleet: a budget that never runs out; the rest from ``settings``."""
    return {
        "REDIS_URL": env.redis_url,
        "DATABASE_URL": env.database_url,
        "OVERPASS_URL": stub.interpreter_url,
        "OVERPASS_CONTACT": "bench@localhost",
        "BROKER": "redis",
        "STATE_BACKEND": "redis",
        "QUOTA_REQUESTS": "100000000",
        "QUOTA_BYTES": "1000000000000",
        "OVERPASS_QUERY_TIMEOUT_S": "10",
        # Every job here is its own box and must make its call: the coverage
        # ledger is measured by the app-traffic replay (tests/bench/replay.py).
        "ENRICH_COVERAGE": "false",
        **{name.upper(): str(value) for name, value in settings.items()},
    }


def reset(env: Environment) -> None:
    """Empty Redis and the POI table (creating it on first use)."""
    from enrichment_actors.store import PoiStore

    client = redis.Redis.from_url(env.redis_url)
    client.flushall()
    client.close()
    store = PoiStore(env.database_url)
    store.ensure_schema()
    store.close()
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pois")


def stored(env: Environment) -> int:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pois").fetchone()
    return int(row[0]) if row else 0


def run_fleet(
    name: str,
    env: Environment,
    *,
    module: str,
    queue: str,
    fleet_env: dict[str, str],
    stub: StubOverpass,
    jobs: int,
    cap_s: float,
    processes: int = 2,
    threads: int = 8,
    box_origin: tuple[float, float] = (10.0, 10.0),
    log_markers: tuple[str, ...] = (),
    verbose: bool = False,
    modules: tuple[str, ...] = (),
    rabbitmq_url: str | None = None,
) -> FleetRun:
    """Send ``jobs`` enrich jobs to a fresh fleet of ``module`` and time them (at most ``cap_s``).

    With ``rabbitmq_url`` the jobs go through that RabbitMQ (the fleet must be given
    ``BROKER=rabbitmq`` and the same URL in ``fleet_env``); the state stays in Redis.
    """
    reset(env)
    stub.reset()
    expected = jobs * POIS_PER_JOB
    with WorkerProcesses(
        fleet_env,
        module=module,
        modules=["tests.bench.process_tag", *modules],
        processes=processes,
        threads=threads,
        defaults={},
        verbose=verbose,
    ) as fleet:
        broker = sender(env.redis_url) if rabbitmq_url is None else rabbitmq_sender(rabbitmq_url)
        send(
            broker,
            queue,
            "enrich",
            ({"bbox": box, "tags": TAGS} for box in grid_boxes(jobs, origin=box_origin)),
        )
        with psycopg.connect(env.dsn, autocommit=True) as conn:

            def count() -> int:
                row = conn.execute("SELECT count(*) FROM pois").fetchone()
                return int(row[0]) if row else 0

            eventually(
                lambda: _first_call(stub) is not None,
                timeout_s=30,
                message=f"{name}: a call at the stand-in server\n{fleet.tail()}",
            )
            deadline = (_first_call(stub) or 0.0) + cap_s
            done_rows = 0
            while time.time() < deadline:
                done_rows = count()
                if done_rows >= expected:
                    break
                time.sleep(0.01)
            finished = time.time()
            capped = done_rows < expected
        stats = stub.stats()
        first_call = _first_call(stub) or 0.0
        calls = [r for r in stub.requests if r.path == "/api/interpreter"]
        timeline = sorted((r.started_at, r.ended_at) for r in calls)
        shares = sorted(Counter(process_of(r.user_agent) for r in calls).values(), reverse=True)
        counts = {marker: fleet.count(marker) for marker in log_markers}
        broker.close()
    return FleetRun(
        name=name,
        jobs=jobs,
        done=done_rows // POIS_PER_JOB,
        elapsed_s=min(finished, deadline) - first_call,
        capped=capped,
        calls=stats.calls,
        peak_in_flight=stats.peak_in_flight,
        rejected_over_slots=stats.rejected_over_slots,
        held=stats.held,
        shares=shares,
        log_counts=counts,
        timeline=timeline,
        finished_at=min(finished, deadline),
    )


def _first_call(stub: StubOverpass) -> float | None:
    """When the earliest answered interpreter call started (epoch seconds)."""
    starts = [r.started_at for r in stub.requests if r.path == "/api/interpreter"]
    return min(starts) if starts else None


def check_boxes(jobs: int, origin: tuple[float, float] = (10.0, 10.0)) -> None:
    """Every benchmark box holds at least POIS_PER_JOB POIs, or a job would never count as done."""
    from enrichment_actors.jobs import build_query, validate_job
    from enrichment_actors.overpass_client import OverpassClient

    with StubOverpass() as fresh:
        client = OverpassClient(fresh.interpreter_url, user_agent="bench/check", http_timeout_s=10)
        for box in grid_boxes(jobs, origin=origin):
            query = build_query(validate_job(box, TAGS), timeout_s=10, maxsize_bytes=1 << 26)
            found = len(client.fetch(query).parsed.pois)
            if found < POIS_PER_JOB:
                raise RuntimeError(f"benchmark box {box} has only {found} POIs; pick a denser size")


# -- Redis round trips ----------------------------------------------------------------------------


def _script_names() -> dict[str, str]:
    """SHA1 of every Lua script the fleet runs -> a readable name."""
    import dramatiq.brokers.redis as dramatiq_redis

    from enrichment_middleware.backends.lua_scripts import SCRIPTS, source

    names = {hashlib.sha1(source(name).encode()).hexdigest(): f"middleware:{name}" for name in SCRIPTS}
    for path in (Path(dramatiq_redis.__file__).parent / "redis").glob("*.lua"):
        names[hashlib.sha1(path.read_bytes()).hexdigest()] = f"dramatiq:{path.stem}"
    return names


class RoundTripCounter:
    """Counts the commands clients send to Redis (not those scripts run) with ``MONITOR``.

    MONITOR slows Redis down, so it is used in a separate, untimed run.
    """

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.client = redis.Redis.from_url(redis_url)
        self.counts: Counter[str] = Counter()
        self._names = _script_names()
        self._monitor: Any = None
        self._thread: Any = None
        self._stop = False

    def __enter__(self) -> RoundTripCounter:
        import threading

        self._monitor = self.client.monitor().__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        # One more command so that the reader sees the flag.
        poke = redis.Redis.from_url(self.redis_url)
        poke.ping()
        poke.close()
        self._thread.join(timeout=5)
        self.client.close()

    def _read(self) -> None:
        for event in self._monitor.listen():
            if self._stop:
                return
            if event.get("client_type") == "lua":
                continue
            command = event.get("command", "")
            verb, _, rest = command.partition(" ")
            verb = verb.lower()
            if verb == "evalsha":
                verb = self._names.get(rest.split(" ", 1)[0], "evalsha:unknown")
            self.counts[verb] += 1

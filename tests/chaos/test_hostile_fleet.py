"""Issue #17 as a fleet: a hostile Overpass server costs a bounded amount and learns nothing it should not.

Real worker processes (2 x 4 threads) call, through an OVERPASS_URL with a
password in it, a server (tests/support/hostile.py) that answers each call
at random: honestly, with a gzip bomb, a 307 redirect to a second server,
headers trickled a byte at a time, or an 8 MiB remark. The test plays the
operator: it lifts each hold a redirect sets (``enrichment release-hold``).
Then it checks, as counts:

- decoded bytes read per call <= OVERPASS_MAX_ANSWER_BYTES + 64 KiB (each
  read reports its size: tests/support/answer_probe.py);
- requests the quota counted = requests the server received; bytes the quota
  counted >= bytes the server got onto the wire;
- the server never had more calls in flight (request received to connection
  closed) than there are permits;
- the redirect target received no request;
- the password shows nowhere: not in any process's output, any Redis key or
  value, or /metrics;
- every job is stored or dead-lettered with a reason; none is left.

Worker memory (peak RSS) is printed, not asserted. The quick size runs in
``make test``, the soak size in ``make chaos`` (``pytest -s`` shows the figures).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.chaos.conftest import QUEUE, Chaos
from tests.chaos.test_contention import LONG_WINDOW_S, _boxes_in, quick, soak
from tests.support.answer_probe import decoded_sizes
from tests.support.hostile import HostileServer
from tests.support.rooms import in_rooms
from tests.support.scrape import scrape
from tests.support.workers import WorkerProcesses

pytestmark = pytest.mark.chaos

SECRET = "secret"
#: Honest answers most of the time, each hostile behaviour one call in ten.
MIX = ("ok",) * 6 + ("gzip-bomb", "redirect", "trickled-headers", "huge-remark")
CAP = 256 * 1024
PERMITS = 3
FLEET = {"processes": 2, "threads": 4}


def with_password(url: str, password: str) -> str:
    return url.replace("http://", f"http://user:{password}@", 1)


def redis_texts(url: str) -> Iterator[bytes]:
    """Every key of the Redis at ``url`` and every value in it, whatever its type."""
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(count=500):
            yield key
            kind = client.type(key)  # type: ignore[no-untyped-call]
            if kind == b"string":
                yield client.get(key) or b""
            elif kind == b"hash":
                yield from (part for pair in client.hgetall(key).items() for part in pair)
            elif kind == b"list":
                yield from client.lrange(key, 0, -1)
            elif kind == b"set":
                yield from client.smembers(key)
            elif kind == b"zset":
                yield from (member for member, _ in client.zrange(key, 0, -1, withscores=True))
            elif kind == b"stream":
                yield from (repr(entry).encode() for entry in client.xrange(key))
    finally:
        client.close()


def peak_rss_kib(fleet: WorkerProcesses) -> list[int]:
    """The peak resident memory (VmHWM, KiB) of each live worker process."""
    peaks: list[int] = []
    for pid in fleet.worker_pids():
        status = Path(f"/proc/{pid}/status").read_text()
        peaks.extend(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return peaks


class HostileRun:
    """One run: the jobs sent, the fleet, and what the test (as operator) did."""

    def __init__(self, chaos: Chaos, server: HostileServer, jobs: int) -> None:
        self.chaos = chaos
        self.server = server
        self.jobs = chaos.send_jobs(jobs, origin=(30.0, 30.0))
        self.holds_lifted = 0
        self.redis = redis.Redis.from_url(chaos.redis_url)

    @property
    def policy(self) -> str:
        """The policy name the workers give the hostile server's endpoint: its quota, pause and hold."""
        from enrichment_actors.overpass_endpoints import endpoint_name, policy_name

        return policy_name(endpoint_name(self.server.interpreter_url))

    def close(self) -> None:
        self.redis.close()

    def start(self) -> WorkerProcesses:
        env = self.chaos.env(
            overpass_url=with_password(self.server.interpreter_url, SECRET),
            overpass_max_answer_bytes=CAP,
            overpass_http_timeout_s=1,  # trickled headers cost 1 s each
            semaphore_permits=PERMITS,
            quota_requests=10**9,
            quota_bytes=10**15,
            quota_window_s=LONG_WINDOW_S,
            hold_recheck_s=0.5,
        )
        fleet = WorkerProcesses(
            env,
            modules=["tests.support.answer_probe"],
            merge_stdout=True,
            processes=FLEET["processes"],
            threads=FLEET["threads"],
        )
        self.chaos.fleets.append(fleet)
        return fleet.start()

    def lift_hold(self) -> None:
        """What an operator does after a redirect: ``enrichment release-hold``."""
        from enrichment_middleware.backends.redis import RedisBackend
        from enrichment_middleware.policy.pause import PauseLimits, PausePolicy

        backend = RedisBackend.from_url(self.chaos.redis_url, namespace="enrichment")
        if PausePolicy(self.policy, PauseLimits(), backend).release_hold():
            self.holds_lifted += 1

    def pending(self) -> int:
        """Messages queued, delayed, or parked."""
        from enrichment_middleware.backends.redis import RedisBackend
        from enrichment_middleware.policy.parking import ParkingLot

        backend = RedisBackend.from_url(self.chaos.redis_url, namespace="enrichment")
        queued = sum(int(self.redis.hlen(f"dramatiq:{QUEUE}{q}.msgs")) for q in ("", ".DQ"))
        return queued + ParkingLot(backend).count() + in_rooms(backend)

    def settle(self, timeout_s: float) -> float:
        """Lift holds until nothing is pending or in flight (twice in a row); the seconds it took."""
        started = time.monotonic()
        quiet = 0
        while time.monotonic() - started < timeout_s:
            self.lift_hold()
            idle = self.pending() == 0 and self.server.stats.in_flight == 0
            quiet = quiet + 1 if idle else 0
            if quiet >= 2:
                break
            time.sleep(0.25)
        return time.monotonic() - started

    def outcomes(self) -> tuple[set[int], dict[int, str]]:
        """The jobs with a POI stored in their box, and the jobs with a dead letter (id) in their box."""
        with psycopg.connect(self.chaos.database_url, autocommit=True) as conn:
            rows = conn.execute("SELECT lat, lon FROM pois").fetchall()
        boxes = [job["bbox"] for job in self.jobs]

        def job_of(lat: float, lon: float) -> int | None:
            return next(
                (
                    i
                    for i, b in enumerate(boxes)
                    if b["south"] <= lat <= b["north"] and b["west"] <= lon <= b["east"]
                ),
                None,
            )

        stored = {i for lat, lon in rows if (i := job_of(lat, lon)) is not None}
        dead: dict[int, str] = {}
        for message in self.chaos.dead_letters():
            for box in _boxes_in(message.kwargs):
                south, west, north, east = box
                if (i := job_of((south + north) / 2, (west + east) / 2)) is not None:
                    dead[i] = message.message_id
        return stored, dead


@pytest.mark.parametrize("jobs, timeout_s", [quick(12, 30), soak(240, 240)])
def test_a_fleet_against_a_hostile_server_pays_a_bounded_cost_and_leaks_nothing(
    chaos: Chaos, jobs: int, timeout_s: float
) -> None:
    started = time.monotonic()
    with HostileServer(seed=jobs) as server, HostileServer() as target:
        server.script(*MIX)
        server.trickle_s = 0.005
        server.redirect_target = with_password(target.interpreter_url, SECRET + "-of-the-target")
        run = HostileRun(chaos, server, jobs)
        try:
            fleet = run.start()
            took = run.settle(timeout_s)
            time.sleep(0.3)  # the last byte charges land as their calls end
            memory = peak_rss_kib(fleet)
            metrics = scrape(fleet.metrics_url).text
            fleet.stop()
            if fleet._reader is not None:
                fleet._reader.join(timeout=5)  # its output is complete once read to the end
            stats, leftover = server.stats, run.pending()
            stored, dead = run.outcomes()
            counted_requests, counted_bytes = quota_usage(chaos.redis_url, run.policy)
            decoded = decoded_sizes(fleet.lines)
            dead_reasons = {
                mid: any(mid in line and "ead-letter" in line for line in fleet.lines)
                for mid in dead.values()
            }
            leaks = {
                "output": sum(SECRET in line for line in fleet.lines),
                "redis": sum(SECRET.encode() in text for text in redis_texts(chaos.redis_url)),
                "metrics": metrics.count(SECRET),
            }
        finally:
            run.close()
    target_requests = target.stats.requests + target.stats.redirect_target_requests
    lost = sorted(set(range(jobs)) - stored - set(dead))
    print(
        f"\nhostile fleet ({FLEET['processes']}x{FLEET['threads']} threads, {PERMITS} permits, cap {CAP} B): "
        f"{jobs} jobs, {len(stored)} stored, {len(dead)} with a dead letter, {len(lost)} lost, {leftover} left; "
        f"{stats.requests} requests {stats.behaviours}, {run.holds_lifted} holds lifted; "
        f"largest body decoded {max(decoded, default=0)} B of {len(decoded)} reads; "
        f"quota counted {counted_requests} requests and {counted_bytes} B, server sent {stats.bytes_sent} B; "
        f"peak in flight {stats.peak_in_flight}; redirect target {target_requests} requests; "
        f"'{SECRET}' seen {leaks}; worker peak RSS {[f'{kib // 1024} MiB' for kib in memory]}; "
        f"settled in {took:.1f}s, {time.monotonic() - started:.1f}s in all"
    )
    promises = {
        "decoded bytes per call <= cap + 64 KiB": max(decoded, default=0) <= CAP + 64 * 1024,
        "every call's body read was reported": len(decoded) > 0,
        "requests counted = calls made": counted_requests == stats.requests,
        "bytes counted >= bytes the server sent": counted_bytes >= stats.bytes_sent,
        "peak in flight <= permits": stats.peak_in_flight <= PERMITS,
        "the redirect target received 0 requests": target_requests == 0,
        "no secret in output, Redis or /metrics": not any(leaks.values()),
        "every job stored or dead-lettered": not lost and leftover == 0,
        "every dead letter has a reason": all(dead_reasons.values()),
        "every hostile behaviour was met": set(stats.behaviours) == set(MIX),
    }
    for promise, held in promises.items():
        print(f"  {'ok    ' if held else 'BROKEN'} {promise}")
    broken = [promise for promise, held in promises.items() if not held]
    if broken:
        print(f"  overlaps: {overlaps(stats.calls, PERMITS)}")
        print(f"  last lines of the workers:\n{fleet.tail(20)}")
    assert not broken, "; ".join(broken)


def quota_usage(redis_url: str, policy: str) -> tuple[int, int]:
    """(requests, bytes) the quota of ``policy`` (the endpoint's) counted in its one long window."""
    from enrichment_middleware.backends.redis import RedisBackend
    from enrichment_middleware.policy.quota import QuotaLimits, QuotaPolicy

    backend = RedisBackend.from_url(redis_url, namespace="enrichment")
    limits: Any = QuotaLimits(requests=-1, bytes=-1, window_s=LONG_WINDOW_S)
    usage = QuotaPolicy(policy, limits, backend).usage()
    return usage.requests_used, usage.bytes_used


def overlaps(calls: list[tuple[str, float, float]], permits: int) -> list[list[tuple[str, float, float]]]:
    """The sets of calls (behaviour, start, end) that were in flight together, more than ``permits`` of them."""
    found = []
    for _name, start, _end in calls:
        together = [(n, round(s - start, 4), round(e - start, 4)) for n, s, e in calls if s <= start < e]
        if len(together) > permits:
            found.append(together)
    return found

"""Contention scenarios: the parking, quota, semaphore and breaker protocols under load.

Each scenario runs real ``dramatiq`` worker processes (2 processes x 8
threads) on the session's Redis and PostgreSQL and the stand-in Overpass
server, with a CPU hog thread in every worker process
(:mod:`tests.support.hog`) and a random pause at every failpoint
(``FAILPOINTS``: ``*=sleep:0-0.02``, plus longer pauses where a scenario's
protocol has its race; some scenarios add faults: answers cut off or
trickled past the lease, errors raised after the answer, worker processes
killed between the releaser's steps), and then checks the promises that
contention breaks first:

- every job is stored exactly once (its POIs are there, and its box was
  called once), or dead-lettered with a reason in the log, or, when a
  quota window is spent, parked for the next one: none is lost;
- the requests the quota counted are the calls the server received, the
  bytes it counted are at least the bytes the server sent, and the server
  time it charged is at least the time the server spent (a byte or
  server-time budget is overshot by no more than the permitted calls in
  flight);
- the server never had more calls in flight than there are permits;
- an open breaker lets one probe through per cooldown.

Each prints its figures (``pytest -s``). Quick sizes run in ``make test``;
the ``soak`` sizes only in ``make chaos``. Every wait is bounded: a scenario
that loses a job fails with its figures, it does not hang.
"""

from __future__ import annotations

import http.client
import itertools
import math
import re
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import redis

from enrichment_actors.stub_overpass import StubOverpass
from tests.chaos.conftest import POIS_PER_JOB, QUEUE, Chaos
from tests.support.rooms import waiting_in_rooms
from tests.support.workers import REPO, WorkerProcesses

pytestmark = pytest.mark.chaos

HOG = ["tests.support.hog"]
#: A random pause at every step boundary of every protocol.
PAUSES = "*=sleep:0-0.02"
#: Quota windows of three years: the window cannot roll over during a scenario.
LONG_WINDOW_S = 100_000_000
FLEET = {"processes": 2, "threads": 8}

_BOX = re.compile(r"\((-?[\d.]+),(-?[\d.]+),(-?[\d.]+),(-?[\d.]+)\)")


def soak(*values: Any) -> Any:
    """A parameter set that only ``make chaos`` runs (``-m soak`` selects them, ``not soak`` skips)."""
    return pytest.param(*values, marks=pytest.mark.soak, id="soak")


def quick(*values: Any) -> Any:
    return pytest.param(*values, id="quick")


# --------------------------------------------------------------------------------------------------
# What a scenario measures
# --------------------------------------------------------------------------------------------------


def _box_key(box: dict[str, float] | tuple[float, ...]) -> tuple[float, ...]:
    values = [box[k] for k in ("south", "west", "north", "east")] if isinstance(box, dict) else box
    return tuple(round(float(v), 5) for v in values)


def _boxes_in(value: Any) -> list[tuple[float, ...]]:
    """Every bbox-shaped dict inside a message's arguments (enrich, fetch_pois and store_pois all carry one)."""
    if isinstance(value, dict):
        if {"south", "west", "north", "east"} <= set(value):
            try:
                return [_box_key(value)]
            except (TypeError, ValueError):
                return []
        return [box for item in value.values() for box in _boxes_in(item)]
    if isinstance(value, list | tuple):
        return [box for item in value for box in _boxes_in(item)]
    return []


@dataclass
class Accounts:
    """Where every job is at one moment."""

    jobs: int
    stored: set[int] = field(default_factory=set)  # all of the job's POIs are in the table
    partial: set[int] = field(default_factory=set)  # some of them only
    dead: dict[int, str] = field(default_factory=dict)  # job -> dead-lettered message id
    queued: int = 0  # messages in the queue, its delay queue, or being processed
    parked: int = 0
    in_flight: int = 0
    calls: int = 0

    @property
    def pending(self) -> int:
        return self.queued + self.parked + self.in_flight

    @property
    def missing(self) -> int:
        """Jobs neither stored nor dead-lettered, beyond what is still queued or parked: lost."""
        return max(0, self.jobs - len(self.stored | set(self.dead)) - self.queued - self.parked)

    def line(self) -> str:
        return (
            f"{len(self.stored)}/{self.jobs} stored, {len(self.partial)} partly, {len(self.dead)} dead-lettered, "
            f"{self.parked} parked, {self.queued} queued, {self.missing} lost"
        )


class Scenario:
    """One contention run: its jobs, its fleet, and the ledger of what happened to each job."""

    def __init__(self, chaos: Chaos, jobs: int, *, origin: tuple[float, float] = (20.0, 20.0)) -> None:
        self.chaos = chaos
        self.jobs = chaos.send_jobs(jobs, origin=origin) if jobs else []
        self.index = {_box_key(job["bbox"]): i for i, job in enumerate(self.jobs)}
        self.redis = redis.Redis.from_url(chaos.redis_url)
        self.fleet: WorkerProcesses | None = None
        self.most_parked = 0  # the most jobs seen parked at once

    def close(self) -> None:
        self.redis.close()

    def start(self, failpoints: str = PAUSES, hog_threads: int = 1, **settings: Any) -> WorkerProcesses:
        missing = [name for name in targeted(failpoints) if name not in placed_failpoints()]
        assert not missing, f"no failpoint named {missing} in the product code: a pause there would never run"
        # One quota window for the whole run, so that what the quota counted can be read back.
        settings.setdefault("quota_window_s", LONG_WINDOW_S)
        self.fleet = self.chaos.workers(
            **FLEET, modules=HOG, failpoints=failpoints, cpu_hog_threads=hog_threads, **settings
        )
        return self.fleet

    # -- the ledger ---------------------------------------------------------------------------------

    def stored_per_job(self) -> list[int]:
        with psycopg.connect(self.chaos.database_url, autocommit=True) as conn:
            rows = conn.execute("SELECT lat, lon FROM pois").fetchall()
        counts = [0] * len(self.jobs)
        # Boxes are disjoint squares on a grid: find each POI's box by its corner.
        for lat, lon in rows:
            for i, job in enumerate(self.jobs):
                box = job["bbox"]
                if box["south"] <= lat <= box["north"] and box["west"] <= lon <= box["east"]:
                    counts[i] += 1
                    break
        return counts

    def parked(self) -> int:
        from enrichment_middleware.backends.redis import RedisBackend
        from enrichment_middleware.policy.parking import ParkingLot

        backend = RedisBackend.from_url(self.chaos.redis_url, namespace="enrichment")
        # A job in a fair room is waiting too: acknowledged in the broker, not parked.
        return ParkingLot(backend).count() + waiting_in_rooms(backend)

    def queued(self) -> int:
        return int(self.redis.hlen(f"dramatiq:{QUEUE}.msgs")) + int(
            self.redis.hlen(f"dramatiq:{QUEUE}.DQ.msgs")
        )

    def dead_letters(self) -> dict[int, str]:
        dead: dict[int, str] = {}
        for message in self.chaos.dead_letters():
            for box in _boxes_in(message.kwargs):
                if box in self.index:
                    dead[self.index[box]] = message.message_id
        return dead

    def accounts(self) -> Accounts:
        counts = self.stored_per_job()
        stats = self.chaos.stub.stats()
        accounts = Accounts(
            jobs=len(self.jobs),
            stored={i for i, n in enumerate(counts) if n >= POIS_PER_JOB},
            partial={i for i, n in enumerate(counts) if 0 < n < POIS_PER_JOB},
            dead=self.dead_letters(),
            queued=self.queued(),
            parked=self.parked(),
            in_flight=stats.in_flight,
            calls=stats.calls,
        )
        self.most_parked = max(self.most_parked, accounts.parked)
        return accounts

    def settle(self, *, timeout_s: float, quiet_s: float = 6.0) -> tuple[Accounts, float]:
        """Wait until every job is stored or dead-lettered, or nothing has moved for ``quiet_s`` with
        nothing queued or in flight (what is parked then waits for a later quota window, and what is
        missing is lost); at most ``timeout_s``. Returns the last accounts and the seconds taken."""
        started = time.monotonic()
        last: tuple[Any, ...] | None = None
        still_since = started
        while True:
            accounts = self.accounts()
            now = time.monotonic()
            idle = accounts.queued == 0 and accounts.in_flight == 0
            if idle and accounts.parked == 0 and len(accounts.stored | set(accounts.dead)) >= accounts.jobs:
                return accounts, now - started
            state = (
                len(accounts.stored),
                len(accounts.dead),
                accounts.queued,
                accounts.parked,
                accounts.calls,
            )
            if state != last:
                last, still_since = state, now
            elif idle and now - still_since >= quiet_s:
                return accounts, now - started  # nothing left to move: what is missing is lost
            if now - started >= timeout_s:
                return accounts, now - started
            time.sleep(0.5)

    def outcomes(self) -> dict[str, int]:
        """Job outcomes the fleet counted (``enrichment_jobs_total`` by outcome), for the figures."""
        from tests.support.scrape import scrape

        assert self.fleet is not None
        totals: Counter[str] = Counter()
        for labels, value in scrape(self.fleet.metrics_url).series("enrichment_jobs_total").items():
            totals[dict(labels).get("outcome", "?")] += int(value)
        return dict(totals)

    def calls_per_job(self) -> Counter[int]:
        """Interpreter calls the server received for each job (by the box in the query)."""
        calls: Counter[int] = Counter()
        for request in self.chaos.stub.requests:
            if request.path == "/api/interpreter" and (m := _BOX.search(request.query)):
                job = self.index.get(_box_key(tuple(float(g) for g in m.groups())))
                if job is not None:
                    calls[job] += 1
        return calls

    def bytes_downloaded(self) -> tuple[int, int]:
        """(bytes the server sent in all interpreter answers, the largest answer), by replaying each call
        with the same outcome on a second stand-in server: its answers are deterministic."""
        total = largest = 0
        with StubOverpass(pois_per_box=POIS_PER_JOB) as reference:
            for request in self.chaos.stub.requests:
                if request.path != "/api/interpreter" or request.outcome in ("killed", "aborted"):
                    continue
                if request.outcome not in ("ok", "stall"):  # a stall ends in the ok answer
                    reference.script(request.outcome)
                conn = http.client.HTTPConnection("127.0.0.1", reference.port, timeout=10)
                try:
                    conn.request("POST", "/api/interpreter", body=_form(request.query), headers=_FORM)
                    # A cut-off answer ends when the server closes: read() returns what came.
                    size = len(conn.getresponse().read())
                finally:
                    conn.close()
                total += size
                largest = max(largest, size)
        return total, largest

    def quota_usage(self, *, window_s: int = LONG_WINDOW_S) -> tuple[int, int, float]:
        """(requests, bytes, server seconds) the quota counted in the current window (it counts the
        server's time in whole milliseconds, each call's rounded up)."""
        from enrichment_actors.server_time import MS_PER_S
        from enrichment_middleware.backends.redis import RedisBackend
        from enrichment_middleware.policy.quota import QuotaLimits, QuotaPolicy

        backend = RedisBackend.from_url(self.chaos.redis_url, namespace="enrichment")
        # Reading a window never refuses: the limits given here do not matter.
        usage = QuotaPolicy(self.chaos.policy, QuotaLimits(requests=-1, window_s=window_s), backend).usage()
        return usage.requests_used, usage.bytes_used, usage.cost_used / MS_PER_S

    def dead_letter_reasons(self, dead: dict[int, str]) -> dict[str, str]:
        """The log line that says why each dead-lettered message was dead-lettered ("" when none does)."""
        lines = [line for fleet in self.chaos.fleets for line in fleet.lines if "ead-letter" in line]
        return {mid: next((line.strip() for line in lines if mid in line), "") for mid in dead.values()}


def placed_failpoints() -> set[str]:
    """The names of the failpoints the product code calls."""
    names: set[str] = set()
    for package in ("enrichment_actors", "middleware"):
        for path in (REPO / package).rglob("*.py"):
            names.update(re.findall(r"failpoint\(\s*[\"']([\w.]+)[\"']", path.read_text()))
    return names


def targeted(spec: str) -> list[str]:
    """The exact failpoint names a ``FAILPOINTS`` spec names (patterns such as ``*`` left out)."""
    names = [rule.partition("=")[0].strip() for rule in spec.split(",") if rule.strip()]
    return [name for name in names if not any(c in name for c in "*?[")]


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _form(query: str) -> str:
    return urllib.parse.urlencode({"data": query})


def answer_size(query: str) -> int:
    """Bytes of the stand-in's ``ok`` answer to ``query`` (its answers are deterministic)."""
    with StubOverpass(pois_per_box=POIS_PER_JOB) as reference:
        conn = http.client.HTTPConnection("127.0.0.1", reference.port, timeout=10)
        try:
            conn.request("POST", "/api/interpreter", body=_form(query), headers=_FORM)
            return len(conn.getresponse().read())
        finally:
            conn.close()


class Invariants:
    """The promises a scenario checks: all of them are checked and printed, then any broken one fails it.

    A run that breaks two promises says so about both (with their figures), not only the first.
    """

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.results: list[tuple[str, bool, str]] = []

    def check(self, promise: str, held: bool, figures: str = "") -> None:
        self.results.append((promise, bool(held), figures))

    def every_job_accounted(self, run: Scenario, accounts: Accounts, *, parked_allowed: bool) -> None:
        """Stored exactly once, or dead-lettered with a reason, or (a spent window) parked; none lost."""
        reasons = run.dead_letter_reasons(accounts.dead)
        unexplained = [mid for mid, reason in reasons.items() if not reason]
        self.check("no job lost", accounts.missing == 0, accounts.line())
        self.check("no job stored in part", not accounts.partial, f"jobs {sorted(accounts.partial)[:10]}")
        self.check("every dead letter has a reason", not unexplained, f"without one: {unexplained[:5]}")
        if not parked_allowed:
            self.check("no job left waiting", accounts.parked == 0 and accounts.queued == 0, accounts.line())

    def quota_counts_every_call(self, run: Scenario) -> None:
        """Requests counted by the quota = calls made; bytes counted >= bytes downloaded; server time
        charged >= the server's own measure (one long window)."""
        time.sleep(0.5)  # a charge lands as its call ends; let the last ones land
        stats = run.chaos.stub.stats()
        counted_requests, counted_bytes, charged_s = run.quota_usage()
        downloaded, _ = run.bytes_downloaded()
        self.check(
            "requests counted = calls made",
            counted_requests == stats.calls,
            f"{counted_requests} counted, {stats.calls} calls",
        )
        self.check(
            "bytes counted >= bytes downloaded",
            counted_bytes >= downloaded,
            f"{counted_bytes} counted, {downloaded} sent",
        )
        self.server_time_charged(charged_s, stats.server_s)

    def server_time_charged(self, charged_s: float, spent_s: float) -> None:
        """The quota charged at least the server time the stand-in measured (request in to status line out)."""
        self.check(
            "server time charged >= server time spent",
            charged_s >= spent_s,
            f"{charged_s:.3f} s charged, {spent_s:.3f} s spent",
        )

    def called_once(self, run: Scenario, accounts: Accounts) -> None:
        calls = run.calls_per_job()
        twice = sorted(i for i in accounts.stored if calls[i] != 1)
        self.check(
            "each stored job called once",
            not twice,
            f"{len(twice)} jobs called {[calls[i] for i in twice[:10]]} times",
        )

    def verify(self, run: Scenario) -> None:
        """Print every promise; fail on the broken ones, with the end of the workers' logs.

        The contention itself is checked too: every worker process said its hog started."""
        hogs = [fleet.count("CPU hog:") for fleet in run.chaos.fleets]
        self.check(
            "a CPU hog ran in every worker process",
            hogs == [f.processes for f in run.chaos.fleets],
            f"{hogs}",
        )
        for promise, held, figures in self.results:
            print(f"  {'ok    ' if held else 'BROKEN'} {promise}: {figures}")
        broken = [f"{promise} ({figures})" for promise, held, figures in self.results if not held]
        if broken:
            for fleet in run.chaos.fleets:
                print(f"  last lines of the workers:\n{fleet.tail(15)}")
        assert not broken, f"{self.scenario}: " + "; ".join(broken)


# --------------------------------------------------------------------------------------------------
# Parking: most jobs are deferred and come back, many times each
# --------------------------------------------------------------------------------------------------

#: Longer pauses between claiming a parked message, enqueueing it and clearing the claim:
#: the window in which a released message is consumed and parked again.
PARKING_PAUSES = f"{PAUSES},parking.claimed=sleep:0-0.05,parking.enqueued=sleep:0.02-0.08"


# make chaos only (32 s): the tight-quota-window scenario below keeps a deferral-heavy run in make test.
@pytest.mark.soak
@pytest.mark.parametrize("jobs", [quick(60), soak(200)])
def test_deferral_heavy_few_permits_lose_no_parked_job(chaos: Chaos, jobs: int) -> None:
    """One permit for 16 threads and a short wait: nearly every job is parked, several times, and comes back.

    Three hog threads per process, as in the report of the lost parked messages: the releaser
    loses the CPU between enqueueing a message and clearing its parking."""
    chaos.stub.set_latency(0.1)
    run = Scenario(chaos, jobs)
    try:
        run.start(
            PARKING_PAUSES,
            hog_threads=3,
            semaphore_permits=1,
            semaphore_wait_s=0.05,
            semaphore_retry_min_s=0.05,
            semaphore_retry_max_s=0.3,
        )
        accounts, took = run.settle(timeout_s=60 + jobs)
        stats = chaos.stub.stats()
        print(
            f"\ndeferral-heavy (1 permit, 2x8 threads, 3 hogs, pauses): {jobs} jobs, {accounts.line()}; "
            f"{stats.calls} calls, outcomes {run.outcomes()}, at most {run.most_parked} parked at once; {took:.1f}s"
        )
        promises = Invariants("deferral-heavy, few permits")
        promises.quota_counts_every_call(run)
        promises.every_job_accounted(run, accounts, parked_allowed=False)
        promises.called_once(run, accounts)
        promises.check(
            "peak in flight <= permits", stats.peak_in_flight <= 1, f"peak {stats.peak_in_flight}, 1 permit"
        )
        promises.verify(run)
    finally:
        run.close()


@pytest.mark.parametrize("jobs", [quick(30), soak(100)])
def test_deferral_heavy_tight_quota_window_loses_no_parked_job(chaos: Chaos, jobs: int) -> None:
    """A quota of 4 calls per 1-second window: most jobs park until a later window, many windows in a row."""
    requests, window_s = 4, 1
    run = Scenario(chaos, jobs)
    try:
        run.start(
            PARKING_PAUSES,
            quota_requests=requests,
            quota_window_s=window_s,
            quota_jitter_s=0.3,
            semaphore_permits=4,
        )
        accounts, took = run.settle(timeout_s=60 + jobs)
        stats = chaos.stub.stats()
        starts = sorted(r.started_at for r in chaos.stub.requests if r.path == "/api/interpreter")
        per_window = Counter(int(t // window_s) for t in starts)
        busiest = max(per_window.values(), default=0)
        print(
            f"\ndeferral-heavy (quota {requests} per {window_s}s window, 2x8 threads, hog, pauses): {jobs} jobs, "
            f"{accounts.line()}; {stats.calls} calls in {len(per_window)} windows (busiest {busiest}), "
            f"outcomes {run.outcomes()}, at most {run.most_parked} parked at once; {took:.1f}s"
        )
        promises = Invariants("deferral-heavy, tight quota window")
        promises.every_job_accounted(run, accounts, parked_allowed=False)
        promises.called_once(run, accounts)
        # The quota counts admissions; a call admitted at the end of a window can start (pauses, a
        # permit to wait for) in the next one, so a window sees at most its own and the last one's.
        promises.check(
            "calls per window <= quota (admitted) + quota (admitted late in the last window)",
            busiest <= 2 * requests,
            f"busiest window {busiest}",
        )
        # For the same reason the first calls may start a window after the one that admitted them:
        # the windows that admitted calls are those the starts span and the one before.
        span = (max(per_window, default=0) - min(per_window, default=0)) + 2
        promises.check(
            "calls <= quota x windows that admitted them",
            stats.calls <= requests * span,
            f"{stats.calls} calls started over {span - 1} windows",
        )
        promises.verify(run)
    finally:
        run.close()


def supervise(
    chaos: Chaos, killing: str, wanted_kills: int, *, deadline_s: float = 90.0, **settings: Any
) -> int:
    """Two one-process fleets (8 threads, a CPU hog) whose failpoints kill them; a supervisor (this)
    starts a fresh one for each one killed, until ``wanted_kills`` died or ``deadline_s`` passed, then
    stops them. Returns how many were killed."""
    missing = [name for name in targeted(killing) if name not in placed_failpoints()]
    assert not missing, f"no failpoint named {missing} in the product code"
    fleets = [chaos.workers(1, 8, modules=HOG, failpoints=killing, **settings) for _ in range(2)]
    kills, deadline = 0, time.monotonic() + deadline_s
    while kills < wanted_kills and time.monotonic() < deadline:
        for i, fleet in enumerate(fleets):
            if fleet.proc is None or fleet.proc.poll() is not None:
                kills += 1
                fleets[i] = chaos.workers(1, 8, modules=HOG, failpoints=killing, **settings)
        time.sleep(0.2)
    for fleet in fleets:
        fleet.stop()
    return kills


@pytest.mark.soak
def test_releasers_killed_between_their_steps_lose_no_parked_job(chaos: Chaos) -> None:
    """Worker processes killed (SIGKILL) by the releaser between claiming a parked message and
    enqueueing it, or between enqueueing it and clearing its claim: at least once, the message
    comes due again when its claim lapses (60 s), and is never gone. A supervisor (this test)
    starts a fresh one-process fleet for each one killed, then calm fleets once enough died."""
    jobs, wanted_kills = 60, 4
    chaos.stub.set_latency(0.1)
    run = Scenario(chaos, jobs)
    settings: dict[str, Any] = {
        "cpu_hog_threads": 1,
        "semaphore_permits": 1,
        "semaphore_wait_s": 0.05,
        "semaphore_retry_min_s": 0.05,
        "semaphore_retry_max_s": 0.3,
    }
    killing = f"{PAUSES},parking.claimed=kill:0.02,parking.enqueued=kill:0.02"
    try:
        kills = supervise(chaos, killing, wanted_kills, **settings)
        run.fleet = chaos.workers(2, 8, modules=HOG, failpoints=PAUSES, **settings)
        # Claims of the killed releasers lapse after 60 s; then their messages come due again.
        accounts, took = run.settle(timeout_s=150, quiet_s=70)
        calls = run.calls_per_job()
        print(
            f"\nreleasers killed between steps (1 permit, 1-process fleets x 8 threads, hog, pauses): {jobs} jobs, "
            f"{kills} processes killed, then calm fleets: {accounts.line()}; {chaos.stub.stats().calls} calls, "
            f"{sum(n > 1 for n in calls.values())} jobs called more than once (a kill mid-call costs one); "
            f"{took:.1f}s after the kills"
        )
        promises = Invariants("releasers killed between steps")
        promises.check("processes were killed at the releaser's steps", kills >= 1, f"{kills} killed")
        promises.every_job_accounted(run, accounts, parked_allowed=False)
        promises.verify(run)
    finally:
        run.close()


@pytest.mark.soak
def test_workers_killed_at_the_end_of_a_call_lose_no_job_and_undercount_nothing(chaos: Chaos) -> None:
    """Worker processes killed (SIGKILL) right after the one batch that ends a call (the usage charged,
    the permit given back, the seat left), before what follows it (the seats handed on are sent, the
    answer is staged). The job comes back and calls again, which the quota counts; a seat handed to a
    job whose message was never sent lapses after ``handoff_s`` (30 s) and is handed again. A supervisor
    (this test) starts a fresh one-process fleet for each one killed, then a calm fleet."""
    jobs, wanted_kills = 40, 3
    chaos.stub.set_latency(0.05)
    run = Scenario(chaos, jobs)
    settings: dict[str, Any] = {
        "cpu_hog_threads": 1,
        "semaphore_permits": 2,
        "semaphore_wait_s": 0.5,
        "quota_window_s": LONG_WINDOW_S,  # one window: what the quota counted can be read back
    }
    killing = f"{PAUSES},admission.ended=kill:0.1"
    try:
        kills = supervise(chaos, killing, wanted_kills, **settings)
        run.fleet = chaos.workers(2, 8, modules=HOG, failpoints=PAUSES, **settings)
        # A seat handed to a job whose message was never sent lapses after 30 s, then it is handed again.
        accounts, took = run.settle(timeout_s=150, quiet_s=40)
        stats = chaos.stub.stats()
        print(
            f"\nworkers killed at the end of a call (2 permits, 1-process fleets x 8 threads, hog, pauses): "
            f"{jobs} jobs, {kills} processes killed, then a calm fleet: {accounts.line()}; {stats.calls} calls, "
            f"peak {stats.peak_in_flight}; {took:.1f}s after the kills"
        )
        promises = Invariants("workers killed at the end of a call")
        promises.check("processes were killed at the end of a call", kills >= 1, f"{kills} killed")
        time.sleep(0.5)  # the last calls' ends land
        counted, _, _ = run.quota_usage()
        # Never fewer: a call's request is counted at its admission, and its end committed before the kill.
        # More by at most what the other threads of each process killed had admitted and not called yet.
        promises.check(
            "requests counted >= calls made, over by at most the threads killed",
            stats.calls <= counted <= stats.calls + kills * 8,
            f"{counted} counted, {stats.calls} calls, {kills} processes of 8 threads killed",
        )
        promises.check("peak in flight <= permits", stats.peak_in_flight <= 2, f"peak {stats.peak_in_flight}")
        promises.every_job_accounted(run, accounts, parked_allowed=False)
        promises.verify(run)
    finally:
        run.close()


# --------------------------------------------------------------------------------------------------
# Quota: requests counted = calls made, bytes counted >= bytes downloaded, server time charged >= spent
# --------------------------------------------------------------------------------------------------

QUOTA_PAUSES = f"{PAUSES},quota.admitted=sleep:0-0.05,fetch.answered=sleep:0-0.05"
QUOTA_PERMITS = 4
#: Calls of mixed server time (0.1 to 0.4 s with the latency of 0.1 s), some cut off mid-body: in turn.
MIXED_COSTS = ("stall:0.3", "cutoff", "ok", "stall:0.1", "cutoff", "stall:0.3")


def longest_charge_s(longest_spent_s: float) -> float:
    """The most one call of ``longest_spent_s`` on the server may be charged: the client sees the
    status line up to 10% later, or 25 ms for a call of a few milliseconds (tests/unit/test_server_time.py)."""
    return max(longest_spent_s * 1.1, longest_spent_s + 0.025)


@pytest.mark.parametrize(
    "budget, limit, jobs",
    [
        quick("requests", 30, 60),
        pytest.param("server_s", 3, 30, id="quick-server-time"),
        soak("requests", 150, 300),
        pytest.param("server_s", 12, 150, marks=pytest.mark.soak, id="soak-server-time"),
    ],
)
def test_quota_counts_exactly_the_calls_made_and_every_byte(
    chaos: Chaos, budget: str, limit: int, jobs: int
) -> None:
    """A quota that runs out mid-run, with a few answers cut off mid-body (retried: more calls): a
    request quota, or a server-time budget (seconds) with calls of mixed server time. Every call is
    counted, every byte, and at least the server time the stand-in spent; a server-time budget is
    overshot by no more than the permitted calls in flight, each at the longest call."""
    if budget == "requests":
        chaos.stub.set_latency(0.02)
        chaos.stub.script("ok", "cutoff", "ok", "cutoff", "ok", "cutoff")
        quota: dict[str, Any] = {"quota_requests": limit}
    else:
        chaos.stub.set_latency(0.1)
        chaos.stub.script(*MIXED_COSTS * (jobs // len(MIXED_COSTS) + 1))
        quota = {"quota_server_s": limit}
    run = Scenario(chaos, jobs)
    try:
        run.start(QUOTA_PAUSES, quota_window_s=LONG_WINDOW_S, semaphore_permits=QUOTA_PERMITS, **quota)
        # Settled when nothing has moved for a while: the rest waits for the next window, parked (a
        # message waiting for a retry or a permit is still in the queue: nothing moves only at the end).
        accounts, took = run.settle(timeout_s=60 + jobs / 2, quiet_s=3.0)
        time.sleep(1.0)  # byte and time charges land after the answer
        stats = chaos.stub.stats()
        counted_requests, counted_bytes, charged_s = run.quota_usage()
        downloaded, _ = run.bytes_downloaded()
        longest = max((r.server_s or 0.0 for r in chaos.stub.requests), default=0.0)
        bound_s = limit + QUOTA_PERMITS * longest_charge_s(longest)
        print(
            f"\nquota exact ({limit} {budget.replace('_', ' ')}, {QUOTA_PERMITS} permits, 2x8 threads, hog, pauses): "
            f"{jobs} jobs, {accounts.line()}; {stats.calls} calls ({stats.served}), quota counted "
            f"{counted_requests} requests; {downloaded} bytes sent, quota counted {counted_bytes}; server time "
            f"{stats.server_s:.3f} s spent (longest call {longest:.3f} s), {charged_s:.3f} s charged "
            f"({charged_s / stats.server_s if stats.server_s else float('nan'):.3f}x); {took:.1f}s"
        )
        promises = Invariants("quota exact")
        promises.every_job_accounted(run, accounts, parked_allowed=True)
        promises.check(
            "requests counted = calls made",
            counted_requests == stats.calls,
            f"{counted_requests} counted, {stats.calls} calls",
        )
        if budget == "requests":
            promises.check("calls <= quota", stats.calls <= limit, f"{stats.calls} calls, quota {limit}")
            promises.check(
                "the quota was used up", stats.calls >= limit - 1, f"{stats.calls} calls, quota {limit}"
            )
        else:
            promises.check(
                "server time charged <= budget + permits x longest call",
                charged_s <= bound_s,
                f"{charged_s:.3f} s charged, bound {bound_s:.3f} s",
            )
            # A call is admitted while what is left covers the mean per call (at most the longest).
            promises.check(
                "the server-time budget was used up",
                charged_s > limit - longest_charge_s(longest),
                f"{charged_s:.3f} s charged of {limit} s, {stats.calls} calls",
            )
        promises.check(
            "bytes counted >= bytes downloaded",
            counted_bytes >= downloaded,
            f"{counted_bytes} counted, {downloaded} sent",
        )
        promises.server_time_charged(charged_s, stats.server_s)
        promises.verify(run)
    finally:
        run.close()


@pytest.mark.parametrize("bodies, jobs", [quick(3.5, 30), soak(10.5, 100)])
def test_the_byte_budget_is_checked_at_the_call(chaos: Chaos, bodies: float, jobs: int) -> None:
    """A byte budget of a few answers, and answers cut off mid-body: every byte counted, the overshoot
    bounded by what the permitted calls in flight can download at once."""
    permits = 2
    chaos.stub.set_latency(0.05)
    run = Scenario(chaos, jobs)
    try:
        box = run.jobs[0]["bbox"]
        body_size = answer_size(
            f'[out:json];nwr["amenity"]({box["south"]},{box["west"]},{box["north"]},{box["east"]});out center tags;'
        )
        limit = int(bodies * body_size)
        chaos.stub.script("cutoff", "ok", "cutoff")
        run.start(QUOTA_PAUSES, quota_bytes=limit, quota_window_s=LONG_WINDOW_S, semaphore_permits=permits)
        accounts, took = run.settle(timeout_s=60 + jobs / 2)
        time.sleep(1.0)
        stats = chaos.stub.stats()
        counted_requests, counted_bytes, charged_s = run.quota_usage()
        downloaded, largest = run.bytes_downloaded()
        # What "checked at the call" allows: the calls in flight when the budget ran out finish.
        bound = limit + permits * largest
        print(
            f"\nbyte budget ({limit} bytes = {bodies} answers of {body_size}, {permits} permits, hog, pauses): "
            f"{jobs} jobs, {accounts.line()}; {stats.calls} calls ({stats.served}), {downloaded} bytes sent "
            f"(bound {bound}), quota counted {counted_bytes} bytes and {counted_requests} requests; {took:.1f}s"
        )
        promises = Invariants("byte budget")
        promises.every_job_accounted(run, accounts, parked_allowed=True)
        promises.check(
            "requests counted = calls made",
            counted_requests == stats.calls,
            f"{counted_requests} counted, {stats.calls} calls",
        )
        promises.check(
            "bytes counted >= bytes downloaded",
            counted_bytes >= downloaded,
            f"{counted_bytes} counted, {downloaded} sent",
        )
        promises.check(
            "bytes downloaded <= budget + permits x largest answer",
            downloaded <= bound,
            f"{downloaded} sent, bound {bound} ({math.ceil(max(0, downloaded - limit) / body_size)} answers over the budget)",
        )
        promises.server_time_charged(charged_s, stats.server_s)
        promises.verify(run)
    finally:
        run.close()


# --------------------------------------------------------------------------------------------------
# Hand-off: a failure after the answer costs no second call
# --------------------------------------------------------------------------------------------------

#: Faults after the answer is staged: between hand-off sends, before the fetch returns, and after
#: an upsert before its chunk is marked stored. Each is retried; none may call Overpass again.
HANDOFF_FAULTS = f"{PAUSES},fetch.sent=raise:0.3,fetch.handed_off=raise:0.3,store.upserted=raise:0.2"


@pytest.mark.parametrize("jobs", [quick(40), soak(150)])
def test_failures_after_the_answer_cost_no_second_call(chaos: Chaos, jobs: int) -> None:
    chaos.stub.set_latency(0.02)
    run = Scenario(chaos, jobs)
    try:
        run.start(HANDOFF_FAULTS, semaphore_permits=4, retry_max=20, store_max_retries=50)
        accounts, took = run.settle(timeout_s=60 + jobs / 2)
        stats = chaos.stub.stats()
        faults = sum(fleet.count("fault injected at failpoint") for fleet in chaos.fleets)
        print(
            f"\nhand-off faults (2x8 threads, hog, pauses, raises after the answer): {jobs} jobs, {accounts.line()}; "
            f"{stats.calls} calls, {faults} log lines of injected faults, outcomes {run.outcomes()}; {took:.1f}s"
        )
        promises = Invariants("hand-off faults")
        promises.quota_counts_every_call(run)
        promises.check("faults were injected", faults > 0, f"{faults} log lines")
        promises.every_job_accounted(run, accounts, parked_allowed=False)
        promises.called_once(run, accounts)
        promises.check("calls = jobs", stats.calls == jobs, f"{stats.calls} calls for {jobs} jobs")
        promises.verify(run)
    finally:
        run.close()


# --------------------------------------------------------------------------------------------------
# Semaphore: peak in flight <= permits
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [quick(60), soak(250)])
def test_the_semaphore_peak_stays_within_its_permits(chaos: Chaos, jobs: int) -> None:
    permits = 2
    # The stand-in answers 429 to any call over its slots: an overshoot cannot hide.
    stub = chaos.replace_stub(latency_s=0.05, slots=permits, enforce_slots=True)
    run = Scenario(chaos, jobs)
    try:
        run.start(
            f"{PAUSES},semaphore.acquired=sleep:0-0.05,semaphore.released=sleep:0-0.05,semaphore.handed_off=sleep:0-0.05,fetch.answered=sleep:0-0.03",
            semaphore_permits=permits,
            semaphore_wait_s=0.5,
        )
        accounts, took = run.settle(timeout_s=60 + jobs / 2)
        stats = stub.stats()
        print(
            f"\nsemaphore peak ({permits} permits, 2x8 threads, hog, pauses): {jobs} jobs, {accounts.line()}; "
            f"peak {stats.peak_in_flight} in flight, {stats.calls} calls, {stats.rejected_over_slots} over the "
            f"server's slots, outcomes {run.outcomes()}; {took:.1f}s"
        )
        promises = Invariants("semaphore peak")
        promises.quota_counts_every_call(run)
        promises.check(
            "peak in flight <= permits",
            stats.peak_in_flight <= permits,
            f"peak {stats.peak_in_flight}, {permits} permits",
        )
        promises.check(
            "no call over the server's slots",
            stats.rejected_over_slots == 0,
            f"{stats.rejected_over_slots} refused",
        )
        promises.every_job_accounted(run, accounts, parked_allowed=False)
        promises.called_once(run, accounts)
        promises.verify(run)
    finally:
        run.close()


@pytest.mark.parametrize("per_source", [quick(20), soak(80)])
def test_fair_shares_keep_each_source_within_its_cap_and_lose_no_job(chaos: Chaos, per_source: int) -> None:
    """Three sources at once (issue 22), the fair room's steps paused at random: ``refresh`` makes
    exactly its cap of calls and the rest of its jobs wait for the next window; the other sources'
    jobs are all stored, each called once; the quota counts every call; the peak stays within the
    permits."""
    from tests.bench.fleet import grid_boxes, send, sender

    permits, quota_requests, share = 2, 1000, 0.008  # refresh: 8 calls a window
    cap = math.floor(share * quota_requests)
    stub = chaos.replace_stub(latency_s=0.05, slots=permits, enforce_slots=True)
    run = Scenario(chaos, 0)
    sources = ("maps", "refresh", "import")
    boxes = grid_boxes(per_source * len(sources), size_deg=0.02, origin=(20.0, 20.0))
    jobs = [
        {"bbox": box, "tags": ["amenity"], "source": sources[i % len(sources)]} for i, box in enumerate(boxes)
    ]
    run.jobs = jobs
    run.index = {_box_key(job["bbox"]): i for i, job in enumerate(jobs)}
    broker = sender(chaos.redis_url)
    send(broker, QUEUE, "enrich", jobs)
    broker.close()
    try:
        run.start(
            # The fair room's steps, and the end of each call between its one batch and the sends it hands on.
            f"{PAUSES},fair.*=sleep:0-0.03,admission.ended=sleep:0-0.03",
            semaphore_permits=permits,
            semaphore_wait_s=0.5,
            quota_requests=quota_requests,
            enrich_source_max_share=f"refresh={share}",
        )
        accounts, took = run.settle(timeout_s=60 + len(jobs) / 2)
        stats = stub.stats()
        calls = run.calls_per_job()
        by_source = Counter(jobs[i]["source"] for i, n in calls.items() for _ in range(n))
        print(
            f"\nfair shares ({permits} permits, refresh cap {cap}, 2x8 threads, hog, pauses): {len(jobs)} jobs, "
            f"{accounts.line()}; calls by source {dict(by_source)}, peak {stats.peak_in_flight}, "
            f"outcomes {run.outcomes()}; {took:.1f}s"
        )
        promises = Invariants("fair shares")
        promises.quota_counts_every_call(run)
        promises.check(
            "refresh made exactly its cap", by_source["refresh"] == cap, f"{by_source['refresh']} of {cap}"
        )
        others = [i for i, job in enumerate(jobs) if job["source"] != "refresh"]
        promises.check(
            "every job of the other sources stored",
            all(i in accounts.stored for i in others),
            f"{sum(i in accounts.stored for i in others)} of {len(others)}",
        )
        promises.check(
            "the rest of refresh waits for the next window",
            accounts.parked == per_source - cap,
            f"{accounts.parked} parked, {per_source - cap} expected",
        )
        promises.check(
            "peak in flight <= permits", stats.peak_in_flight <= permits, f"peak {stats.peak_in_flight}"
        )
        promises.every_job_accounted(run, accounts, parked_allowed=True)
        promises.called_once(run, accounts)
        promises.verify(run)
    finally:
        run.close()


def test_a_permit_holds_while_its_answer_trickles_past_the_lease(chaos: Chaos) -> None:
    """Two answers sent a few bytes at a time for about twice the lease (4 s): each read comes long
    before the read timeout, so only a bound on the whole call (or a renewed lease) keeps the
    other calls out while they run."""
    permits, jobs = 2, 30
    chaos.stub.set_latency(0.05)
    # About 1,240 bytes 8 at a time, 0.05 s apart: some 7.5 s against a 4 s lease.
    chaos.stub.script("trickle:0.05", "trickle:0.05")
    run = Scenario(chaos, jobs)
    try:
        run.start(
            f"{PAUSES},semaphore.acquired=sleep:0-0.05,semaphore.released=sleep:0-0.05,semaphore.handed_off=sleep:0-0.05",
            semaphore_permits=permits,
            semaphore_lease_s=4,
            overpass_http_timeout_s=2.5,
        )
        accounts, took = run.settle(timeout_s=90)
        stats = chaos.stub.stats()
        print(
            f"\nsemaphore, trickled answers (lease 4s, {permits} permits, 2x8 threads, hog, pauses): {jobs} jobs, "
            f"{accounts.line()}; peak {stats.peak_in_flight} in flight, {stats.calls} calls ({stats.served}), "
            f"{stats.kill_calls} kills, outcomes {run.outcomes()}; {took:.1f}s"
        )
        promises = Invariants("semaphore, trickled answers")
        promises.quota_counts_every_call(run)
        promises.check(
            "peak in flight <= permits",
            stats.peak_in_flight <= permits,
            f"peak {stats.peak_in_flight}, {permits} permits",
        )
        promises.every_job_accounted(run, accounts, parked_allowed=False)
        promises.verify(run)
    finally:
        run.close()


# --------------------------------------------------------------------------------------------------
# Breaker: one probe per cooldown
# --------------------------------------------------------------------------------------------------


# make chaos only (17 s): tests/unit/test_policy_breaker.py keeps exactly one probe among racing workers,
# test_breaker_waiters.py the waiters under a CPU hog, in make test.
@pytest.mark.soak
@pytest.mark.parametrize("storm_s, jobs", [quick(8.0, 20), soak(20.0, 60)])
def test_an_open_breaker_lets_one_probe_through_per_cooldown(chaos: Chaos, storm_s: float, jobs: int) -> None:
    cooldown, threshold, permits = 2.0, 3, 2
    chaos.stub.set_default("504")
    run = Scenario(chaos, jobs)
    try:
        run.start(
            f"{PAUSES},breaker.admitted=sleep:0-0.05,breaker.recorded=sleep:0-0.05",
            breaker_failure_threshold=threshold,
            breaker_cooldown_s=cooldown,
            semaphore_permits=permits,
            retry_max=100,
            retry_min_backoff_s=0.1,
            retry_max_backoff_s=0.5,
        )
        time.sleep(storm_s)
        storm = sorted(
            (r.started_at, r.ended_at) for r in chaos.stub.requests if r.path == "/api/interpreter"
        )
        chaos.stub.set_default("ok")
        accounts, took = run.settle(timeout_s=90)
        # The circuit opens when the threshold's failure is recorded, after its answer ended. Calls
        # admitted while it was closed may start a little later (pauses, the hog): a probe cannot
        # come before a cooldown, so those within a second are the admitted ones.
        opened_at = (
            sorted(end for _, end in storm)[threshold - 1] if len(storm) >= threshold else float("inf")
        )
        probes = [start for start, _ in storm if start > opened_at + 1.0]
        gaps = [b - a for a, b in itertools.pairwise(probes)]
        print(
            f"\nbreaker probes (cooldown {cooldown}s, 2x8 threads, hog, pauses): {len(storm)} calls in "
            f"{storm_s:.0f}s of 504s, {len(storm) - len(probes)} before opening, {len(probes)} probes, gaps "
            f"{[round(g, 2) for g in gaps]}; then {accounts.line()} {took:.1f}s after healing"
        )
        promises = Invariants("breaker probe")
        promises.quota_counts_every_call(run)
        promises.check(
            "no calls while open but probes",
            len(storm) - len(probes) <= threshold + permits,
            f"{len(storm) - len(probes)} calls before opening, threshold {threshold} + {permits} in flight",
        )
        promises.check("a probe per cooldown", len(probes) >= 1, f"{len(probes)} probes in {storm_s}s")
        promises.check(
            "probes spaced >= cooldown",
            all(gap >= cooldown * 0.95 for gap in gaps),
            f"gaps {[round(g, 2) for g in gaps]}, cooldown {cooldown}",
        )
        promises.every_job_accounted(run, accounts, parked_allowed=False)
        promises.check(
            "no job dead-lettered by the storm", not accounts.dead, f"{len(accounts.dead)} dead-lettered"
        )
        promises.verify(run)
    finally:
        run.close()

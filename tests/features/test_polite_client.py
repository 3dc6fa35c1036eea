"""One fleet, one polite client (polite_client.feature): issue 9's scenarios on real workers.

Every scenario runs ``dramatiq enrichment_actors.worker:build`` processes on the
session's Redis and PostgreSQL against the stand-in Overpass server, and
judges the fleet by what the server saw: each request's arrival time
(``started_at``), its peak of calls in flight, its status reads. What the
closing note quotes is printed with a ``[polite]`` prefix (``pytest -s``):
requests seen within the pause after a 429, the peak in flight under the
public profile, the smallest gap between calls.
"""

from __future__ import annotations

import http.client
import itertools
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from pytest_bdd import given, parsers, scenarios, then, when

from enrichment_actors import metrics as m
from enrichment_actors.overpass_endpoints import PUBLIC_DAILY_REQUESTS, PUBLIC_WINDOW_S
from enrichment_actors.stub_overpass import RecordedRequest, StubOverpass
from tests.bench.fleet import grid_boxes, send, sender
from tests.features.conftest import QUEUE, World, dead_letters, expected_pois, scrape_workers
from tests.support.rooms import waiting_in_rooms
from tests.support.scrape import Scrape
from tests.support.workers import FAST_SETTINGS, REPO, WorkerProcesses, eventually

scenarios("polite_client.feature")

TAGS = ["amenity"]
INTERPRETER = "/api/interpreter"
STATUS = "/api/status"
#: How long a scenario waits for its jobs (each must stay under about a minute on a loaded machine).
SETTLE_S = 50.0


@dataclass
class Polite:
    """What a scenario of this feature queued and started, beside the shared :class:`World`."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    second: StubOverpass | None = None  # the second endpoint, when there are two
    refusal: str = ""  # what the CLI said when it refused to start
    used_requests: int = 0  # requests the day's quota counted before the scenario's calls
    _expected: list[set[tuple[str, int]]] = field(default_factory=list)

    def expected(self) -> list[set[tuple[str, int]]]:
        """Each job's POIs at the stand-in (its data is deterministic: a fresh server tells)."""
        if len(self._expected) != len(self.jobs):
            self._expected = [expected_pois(job) for job in self.jobs]
        return self._expected


@pytest.fixture
def polite(world: World) -> Iterator[Polite]:
    state = Polite()
    yield state
    for workers in world.workers:  # before the servers they call go away
        workers.stop()
    if state.second is not None:
        state.second.stop()


def say(text: str) -> None:
    """A figure for the closing note (shown by ``pytest -s``)."""
    print(f"[polite] {text}", flush=True)


def interpreter_calls(stub: StubOverpass) -> list[RecordedRequest]:
    return sorted((r for r in stub.requests if r.path == INTERPRETER), key=lambda r: r.started_at)


def endpoint_of(stub: StubOverpass) -> str:
    """The endpoint's name as the product derives it from the URL: host:port."""
    return f"127.0.0.1:{stub.port}"


def parked(redis_url: str) -> int:
    from enrichment_middleware.backends.redis import RedisBackend
    from enrichment_middleware.policy.parking import ParkingLot

    backend = RedisBackend.from_url(redis_url, namespace="enrichment")
    return ParkingLot(backend).count() + waiting_in_rooms(backend)


def queued(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.hlen(f"dramatiq:{QUEUE}.msgs")) + int(client.hlen(f"dramatiq:{QUEUE}.DQ.msgs"))
    finally:
        client.close()


def policy_of(world: World, stub: StubOverpass) -> str:
    """The policy name the product gives ``stub``'s endpoint (its quota, breaker, pause... and metric label)."""
    from enrichment_actors.settings import load_settings

    settings = load_settings({**os.environ, **FAST_SETTINGS, **world.worker_env()})
    names = {endpoint.name: endpoint.policy for endpoint in settings.endpoints}
    assert endpoint_of(stub) in names, f"no endpoint named {endpoint_of(stub)} among {sorted(names)}"
    return names[endpoint_of(stub)]


def by_endpoint(world: World, found: Scrape, name: str, stub: StubOverpass, **labels: str) -> float | None:
    """The value of the metric ``name`` for the policy of ``stub``'s endpoint."""
    return found.value(name, **{m.POLICY: policy_of(world, stub)}, **labels)


def situation(world: World) -> str:
    """Where the jobs are, and the workers' last lines: what a timed-out wait reports."""
    served = None if world.stub is None else world.stub.stats().served
    tail = world.workers[0].tail(30) if world.workers else ""
    return (
        f"{queued(world.redis_url)} queued, {parked(world.redis_url)} parked, "
        f"{len(dead_letters(world.redis_url))} dead-lettered; the stand-in served {served}\n{tail}"
    )


# --- Given -------------------------------------------------------------------


@given(parsers.parse("{count:d} enrich jobs on distinct boxes are queued"))
def jobs_queued(world: World, polite: Polite, count: int) -> None:
    """Disjoint 0.02-degree boxes (about 20 amenities each at the stand-in), queued before any worker starts."""
    polite.jobs = [
        {"bbox": box, "tags": TAGS} for box in grid_boxes(count, size_deg=0.02, origin=(30.0, 30.0))
    ]
    broker = sender(world.redis_url)
    try:
        send(broker, QUEUE, "enrich", polite.jobs)
    finally:
        broker.close()


@given("the setting OVERPASS_CONTACT is empty")
def no_contact(world: World) -> None:
    world.settings["OVERPASS_CONTACT"] = ""


@given("a second stand-in Overpass server is running")
def second_stand_in(world: World, polite: Polite) -> None:
    assert world.stub is not None
    polite.second = StubOverpass(slots=2, latency_s=world.stub.latency_s).start()


@given(parsers.parse('the first stand-in server answers "{outcome}" from now on'))
def first_answers(world: World, outcome: str) -> None:
    assert world.stub is not None
    world.stub.set_default(outcome)


@given("the workers call both stand-in servers")
def both_endpoints(world: World, polite: Polite) -> None:
    assert world.stub is not None and polite.second is not None
    world.settings["OVERPASS_URL"] = f"{world.stub.interpreter_url},{polite.second.interpreter_url}"


# --- When --------------------------------------------------------------------


@when("every queued job is stored")
def every_job_stored(world: World, polite: Polite, store: Any) -> None:
    """Every job's POIs are in the table, and nothing is left queued or parked."""
    expected = set().union(*polite.expected())
    assert expected, "the stand-in server has no POIs for these boxes: pick others"
    started = time.monotonic()

    def done() -> bool:
        stored = {(row[0], row[1]) for row in store.fetch_all()}
        return expected <= stored and queued(world.redis_url) == 0 and parked(world.redis_url) == 0

    try:
        eventually(done, timeout_s=SETTLE_S, interval_s=0.25, message=f"{len(polite.jobs)} jobs stored")
    except AssertionError:
        stored = {(row[0], row[1]) for row in store.fetch_all()}
        raise AssertionError(
            f"after {SETTLE_S:.0f} s: {len(expected & stored)}/{len(expected)} POIs stored, {situation(world)}"
        ) from None
    say(f"{len(polite.jobs)} jobs stored in {time.monotonic() - started:.1f} s")


@when("every queued job waits parked")
def every_job_parked(world: World, polite: Polite) -> None:
    """Every fetch is parked (deferred) and nothing moves for a few seconds: the backlog is waiting."""
    try:
        eventually(
            lambda: parked(world.redis_url) == len(polite.jobs) and queued(world.redis_url) == 0,
            timeout_s=30,
            interval_s=0.25,
        )
    except AssertionError:
        raise AssertionError(f"not all {len(polite.jobs)} jobs parked: {situation(world)}") from None
    time.sleep(3)  # nothing may move while held


def jobs_stored(polite: Polite, store: Any) -> list[int]:
    """Indexes of the jobs whose POIs are all in the table."""
    stored = {(row[0], row[1]) for row in store.fetch_all()}
    return [i for i, pois in enumerate(polite.expected()) if pois <= stored]


@when("the fleet has nothing left to do before the next quota window")
def fleet_settled(world: World, polite: Polite, store: Any) -> None:
    """Every job stored or parked, nothing queued, and no new call for a few seconds."""
    stubs = [s for s in (world.stub, polite.second) if s is not None]
    try:
        eventually(
            lambda: (
                queued(world.redis_url) == 0
                and len(jobs_stored(polite, store)) + parked(world.redis_url) >= len(polite.jobs)
            ),
            timeout_s=SETTLE_S,
            interval_s=0.5,
        )
    except AssertionError:
        stored = len(jobs_stored(polite, store))
        raise AssertionError(f"{stored} of {len(polite.jobs)} jobs stored, {situation(world)}") from None
    calls = [s.stats().calls for s in stubs]
    time.sleep(3)
    assert [s.stats().calls for s in stubs] == calls, "calls went on after the budgets ran out"


# --- Then: the 429 pause -----------------------------------------------------


def pause_record(world: World, stub: StubOverpass) -> dict[str, Any]:
    """The fleet's pause of ``stub``'s endpoint as the backend keeps it (an hour after it ends):
    ``paused_since`` and ``paused_until`` on the Redis server's clock, this machine's clock too."""
    from enrichment_middleware.backends.redis import RedisBackend

    backend = RedisBackend.from_url(world.redis_url, namespace="enrichment")
    record = backend.pause_get(f"pause:{policy_of(world, stub)}")
    assert record is not None and record["paused_since"] is not None, f"no pause was recorded: {record}"
    return record


@then(
    parsers.parse(
        "the fleet paused at least {pause_s:g} s right after the 429, and no request reached the stand-in "
        "server in the pause but one status read"
    )
)
def quiet_after_429(world: World, pause_s: float) -> None:
    """Judged by the server's arrival times against the pause the backend recorded (same clock).

    A call whose last pause read came before a worker stored the pause may
    still arrive after the 429 went out: at most the other permits' calls,
    in the milliseconds until the pause began. They are counted and printed
    apart; from the moment the pause began, the only request is the status read.
    """
    assert world.stub is not None
    requests = sorted(world.stub.requests, key=lambda r: r.started_at)
    first = next(r for r in requests if r.path == INTERPRETER and r.outcome == "429")
    record = pause_record(world, world.stub)
    since, until = float(record["paused_since"]), float(record["paused_until"])
    after_429 = [r for r in requests if r.started_at > first.ended_at]
    before_pause = [r for r in after_429 if r.started_at < since and r.path != STATUS]
    in_pause = [r for r in after_429 if since <= r.started_at < until]
    reads = [r for r in after_429 if r.path == STATUS and r.started_at < until]
    within = [r for r in after_429 if r.started_at < first.ended_at + pause_s and r.path != STATUS]
    calls_after = [r for r in after_429 if r.path == INTERPRETER and r.started_at >= until]
    permits = int(world.worker_env().get("SEMAPHORE_PERMITS", "2"))
    next_call = f"{calls_after[0].started_at - until:+.2f} s from its end" if calls_after else "none"
    say(
        f"429 pause: began {1000 * (since - first.ended_at):.0f} ms after the 429 went out and lasted "
        f"{until - since:.2f} s (RATE_LIMIT_PAUSE_S {pause_s:g}); requests within {pause_s:g} s of the 429: "
        f"{len(within)} besides {len(reads)} status read ({len(before_pause)} sent before the pause began, "
        f"{len([r for r in in_pause if r.path != STATUS])} in it); first call after the pause: {next_call}"
    )
    assert 0 <= since - first.ended_at < 1.0, "the pause begins as soon as a worker has the 429"
    assert until - since >= pause_s - 0.001, f"paused {until - since:.3f} s"
    calls_in_pause = [r for r in in_pause if r.path != STATUS]
    assert calls_in_pause == [], [(r.path, r.outcome, round(r.started_at - since, 3)) for r in calls_in_pause]
    assert len(reads) == 1, "one status read, in the pause, right after the 429"
    assert len(before_pause) <= permits - 1, [
        (r.outcome, round(r.started_at - first.ended_at, 3)) for r in before_pause
    ]


@then(parsers.parse('the stand-in server answered {count:d} "{outcome}" and {reads:d} status read'))
@then(parsers.parse('the stand-in server answered {count:d} "{outcome}" and {reads:d} status reads'))
def answered_and_read(world: World, count: int, outcome: str, reads: int) -> None:
    assert world.stub is not None
    stats = world.stub.stats()
    assert stats.served.get(outcome, 0) == count, stats.served
    assert stats.status_calls == reads, f"{stats.status_calls} status reads for {count} {outcome}"


# --- Then: the public profile ------------------------------------------------


@then(parsers.parse("the stand-in server never had more than {peak:d} call in flight"))
def peak_in_flight(world: World, peak: int) -> None:
    assert world.stub is not None
    stats = world.stub.stats()
    say(
        f"public profile, 2 processes x 4 threads: peak {stats.peak_in_flight} call(s) in flight ({stats.calls} calls)"
    )
    assert stats.peak_in_flight <= peak


@then(
    parsers.parse(
        "the calls it received started at least {interval_s:g} s apart, less a tolerance of {tolerance_s:g} s"
    )
)
def spaced_calls(world: World, interval_s: float, tolerance_s: float) -> None:
    """Tolerance: the pacing policy's own (0.05 s) plus what a loaded machine adds between a worker's
    admission and the request's arrival at the server (the gap is measured at the server)."""
    assert world.stub is not None
    starts = [r.started_at for r in interpreter_calls(world.stub)]
    assert len(starts) >= 2, "too few calls to measure a gap"
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    say(
        f"public profile, pacing interval {interval_s:g} s: {len(starts)} calls, smallest gap {min(gaps):.3f} s, "
        f"median {sorted(gaps)[len(gaps) // 2]:.3f} s (tolerance {tolerance_s:g} s)"
    )
    assert min(gaps) >= interval_s - tolerance_s, [round(g, 3) for g in gaps]


@given(parsers.parse("the day so far counts {calls:d} calls and {seconds:g} s of server time"))
def day_so_far(world: World, polite: Polite, calls: int, seconds: float) -> None:
    """Charge the stand-in endpoint's quota as that many calls would have, through the product's own policy."""
    from enrichment_actors.runtime import build_runtime
    from enrichment_actors.server_time import MS_PER_S
    from enrichment_actors.settings import load_settings

    assert world.stub is not None
    runtime = build_runtime(load_settings({**os.environ, **FAST_SETTINGS, **world.worker_env()}))
    try:
        policy = runtime.quota.policies[policy_of(world, world.stub)]
        for _ in range(calls):
            decision = policy.admit()
        policy.record_cost(int(seconds * MS_PER_S), decision.window_start)
    finally:
        runtime.broker.close()
    polite.used_requests = calls


def _spread_s(at: float, requests_left: int) -> float:
    """What is left of the UTC day at ``at`` over ``requests_left``, never below PACING_MIN_INTERVAL_S
    (its default, 1 s: the floor in the day's last hours): the public profile's default interval."""
    return max(1.0, (PUBLIC_WINDOW_S - at % PUBLIC_WINDOW_S) / requests_left)


@then(
    parsers.parse(
        "the calls it received started at least the rest of the UTC day over the requests left apart, "
        "less {tolerance_s:g} s"
    )
)
def spread_budget(world: World, polite: Polite, tolerance_s: float) -> None:
    """Between call k and call k+1 the budget has PUBLIC_DAILY_REQUESTS - k requests left (the quota
    counts each call at admission); the interval is taken at call k+1, when the least day is left."""
    assert world.stub is not None
    starts = [r.started_at for r in interpreter_calls(world.stub)]
    assert len(starts) >= 2, "too few calls to measure a gap"
    pairs = [
        (b - a, _spread_s(b, PUBLIC_DAILY_REQUESTS - polite.used_requests - k))
        for k, (a, b) in enumerate(itertools.pairwise(starts))
    ]
    say(
        "public profile, budget spread over the day: gaps "
        + ", ".join(f"{gap:.2f} s (interval {interval:.2f} s)" for gap, interval in pairs)
    )
    assert all(gap >= interval - tolerance_s for gap, interval in pairs), pairs


@then("the metrics show that pacing interval")
def pacing_metric(world: World, polite: Polite) -> None:
    assert world.stub is not None
    found = scrape_workers(world)
    shown = by_endpoint(world, found, m.PACING_INTERVAL.name, world.stub)
    calls = len(interpreter_calls(world.stub))
    expected = _spread_s(time.time(), PUBLIC_DAILY_REQUESTS - polite.used_requests - calls)
    assert shown is not None and abs(shown - expected) < 0.5, (
        shown,
        expected,
        found.lines(m.PACING_INTERVAL.name),
    )


@then(parsers.parse('workers refuse to start, saying "{text}"'))
def refuse_to_start(world: World, polite: Polite, text: str) -> None:
    workers = WorkerProcesses(world.worker_env(), processes=1, threads=1)
    world.workers.append(workers)
    with pytest.raises(RuntimeError, match="exited during start") as refused:
        workers.start(timeout_s=60)
    polite.refusal = str(refused.value)
    said = [line.strip() for line in workers.lines if text in line]
    assert said, f"no line says {text!r}:\n{polite.refusal}"
    say(f"refused at start: {said[-1][-200:]}")


# --- Then: two private endpoints ---------------------------------------------


@then("the first stand-in server's circuit is open, and it got no call after it opened")
def first_circuit_open(world: World, polite: Polite) -> None:
    assert world.stub is not None and polite.second is not None
    found = scrape_workers(world)
    open_ = by_endpoint(world, found, m.BREAKER_STATE.name, world.stub, **{m.STATE: "open"})
    failing = interpreter_calls(world.stub)
    healthy = interpreter_calls(polite.second)
    threshold = int(world.worker_env().get("BREAKER_FAILURE_THRESHOLD", "3"))
    permits = int(world.worker_env().get("SEMAPHORE_PERMITS", "2"))
    say(
        f"two private endpoints: {len(failing)} calls to the failing one ({world.stub.stats().served}), "
        f"{len(healthy)} to the healthy one; breaker of the failing one open={open_}"
    )
    assert open_ == 1, "\n".join(found.lines(m.BREAKER_STATE.name))
    # Calls admitted while it was closed may still fail after it opened: at
    # most the threshold plus the other permits then in flight; none after.
    assert threshold <= len(failing) <= threshold + permits - 1


@then("each endpoint's quota counted exactly the calls it received")
def quota_requests_exact(world: World, polite: Polite) -> None:
    assert world.stub is not None and polite.second is not None
    found = scrape_workers(world)
    for stub in (world.stub, polite.second):
        counted = by_endpoint(world, found, m.QUOTA_USED.name, stub, **{m.RESOURCE: m.REQUESTS})
        calls = len(interpreter_calls(stub))
        say(f"endpoint {endpoint_of(stub)}: {calls} calls, quota counted {counted} requests")
        assert counted == calls, "\n".join(found.lines(m.QUOTA_USED.name))


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def bytes_sent(stub: StubOverpass) -> tuple[int, int]:
    """(bytes ``stub`` sent in its interpreter answers, the largest answer), by replaying each call with
    the same outcome on a fresh stand-in server: its answers are deterministic."""
    total = largest = 0
    with StubOverpass() as reference:
        for request in interpreter_calls(stub):
            if request.outcome in ("killed", "aborted"):
                continue
            if request.outcome != "ok":
                reference.script(request.outcome)
            conn = http.client.HTTPConnection("127.0.0.1", reference.port, timeout=10)
            try:
                conn.request(
                    "POST", INTERPRETER, body=urllib.parse.urlencode({"data": request.query}), headers=_FORM
                )
                size = len(conn.getresponse().read())
            finally:
                conn.close()
            total += size
            largest = max(largest, size)
    return total, largest


@then("each endpoint's quota counted the bytes it sent, within the documented bound")
def quota_bytes_bound(world: World, polite: Polite) -> None:
    """docs/architecture.md "Quota": bytes counted >= bytes downloaded, and at most QUOTA_BYTES - 1 plus
    the answers of the calls in flight when the budget ran out (SEMAPHORE_PERMITS x the largest answer)."""
    assert world.stub is not None and polite.second is not None
    env = world.worker_env()
    budget = int(env.get("QUOTA_BYTES", "1073741824"))
    permits = int(env.get("SEMAPHORE_PERMITS", "2"))
    found = scrape_workers(world)
    for stub in (world.stub, polite.second):
        counted = by_endpoint(world, found, m.QUOTA_USED.name, stub, **{m.RESOURCE: m.BYTES})
        sent, largest = bytes_sent(stub)
        bound = budget - 1 + permits * largest
        say(f"endpoint {endpoint_of(stub)}: {sent} bytes sent, quota counted {counted} (bound {bound})")
        assert counted is not None and sent <= counted <= max(sent, bound), "\n".join(
            found.lines(m.QUOTA_USED.name)
        )
        assert counted == sent, "every byte of a whole answer is charged once"


@then("every job is stored or parked for the next quota window")
def stored_or_parked(world: World, polite: Polite, store: Any) -> None:
    stored, waiting = len(jobs_stored(polite, store)), parked(world.redis_url)
    say(f"byte budgets: {stored} jobs stored, {waiting} parked for the next window, of {len(polite.jobs)}")
    assert stored + waiting == len(polite.jobs) and waiting > 0, "the budget should run out before the jobs"


# --- Then: the 406 hold ------------------------------------------------------


@then("no POI is stored")
def nothing_stored(store: Any) -> None:
    assert store.fetch_all() == []


@then(parsers.parse("the stand-in server received at most {count:d} call"))
@then(parsers.parse("the stand-in server received at most {count:d} calls"))
def at_most_calls(world: World, polite: Polite, count: int) -> None:
    assert world.stub is not None
    stats = world.stub.stats()
    say(
        f"406 hold: {stats.calls} call(s) for {len(polite.jobs)} jobs, {parked(world.redis_url)} parked, "
        f"{queued(world.redis_url)} queued, {len(dead_letters(world.redis_url))} dead-lettered"
    )
    assert stats.calls <= count, stats.served


def enrichment(world: World, *args: str) -> str:
    """Run the ``enrichment`` console script with the workers' settings; its output (it must succeed)."""
    env = {**os.environ, **FAST_SETTINGS, **world.worker_env()}
    done = subprocess.run(
        [sys.executable, "-m", "enrichment_actors.cli", *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"enrichment {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


@then("enrichment status shows the endpoint held")
def status_shows_hold(world: World) -> None:
    assert world.stub is not None
    held = [line.strip() for line in enrichment(world, "status").splitlines() if "HELD" in line]
    say(f"enrichment status: {' | '.join(held)}")
    assert any(endpoint_of(world.stub) in line and "release-hold" in line for line in held), held


@when("I run enrichment release-hold for the endpoint")
def release_hold(world: World) -> None:
    assert world.stub is not None
    said = enrichment(world, "release-hold", endpoint_of(world.stub))
    say(f"enrichment release-hold: {said.strip()}")
    assert "lifted" in said, said


@when(parsers.parse('the workers restart with the setting {name} "{value}"'))
def restart_with(world: World, name: str, value: str) -> None:
    """Stop the fleet and start one like it with one setting changed (a new contact: a new fingerprint)."""
    old = world.workers[-1]
    old.stop()
    world.settings[name] = value
    world.workers.append(
        WorkerProcesses(world.worker_env(), processes=old.processes, threads=old.threads).start()
    )


@then("enrichment status shows the endpoint not held")
def status_shows_no_hold(world: World) -> None:
    shown = enrichment(world, "status")
    assert "HELD" not in shown, shown


@then("the metrics show the endpoint held")
def metrics_show_hold(world: World) -> None:
    assert world.stub is not None
    found = scrape_workers(world)
    held = by_endpoint(world, found, m.ENDPOINT_HELD.name, world.stub)
    assert held == 1, "\n".join(found.lines(m.ENDPOINT_HELD.name))

"""Fault scenarios against real worker processes, real Redis and PostgreSQL and the stand-in server.

Each scenario asserts what issue 5 promises and prints what it measured
(``pytest -s`` shows it; ``make chaos`` runs them all).
"""

from __future__ import annotations

import itertools
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
import pytest
import redis

from enrichment_actors.jobs import build_query, validate_job
from tests.chaos.conftest import POIS_PER_JOB, QUEUE, TAGS, Chaos
from tests.support.workers import eventually

pytestmark = pytest.mark.chaos

PARKED = "enrichment:park-due:{parked}"
PARKED_PAYLOADS = "enrichment:park-payload:{parked}"


def query_of(job: dict[str, object]) -> str:
    return build_query(validate_job(job["bbox"], job["tags"]), timeout_s=5, maxsize_bytes=67108864)


# make chaos (13 s): test_contention.py's quota runs (quick sizes, a fleet of processes, the quota
# running out mid-run, every call counted exactly) stay in make test.
@pytest.mark.soak
def test_the_quota_admits_exactly_its_limit_across_four_processes(chaos: Chaos) -> None:
    started = time.monotonic()
    chaos.workers(
        processes=4,
        threads=4,
        quota_requests=500,
        # Epoch-aligned windows of three years: the window cannot roll over during the test.
        quota_window_s=100_000_000,
        semaphore_permits=8,
    )
    jobs = chaos.send_jobs(2000)
    client = redis.Redis.from_url(chaos.redis_url)
    took = eventually(
        lambda: client.zcard(PARKED) >= 1500 and chaos.stored() >= 500 * POIS_PER_JOB,
        timeout_s=240,
        message="500 jobs stored and 1500 parked",
    )
    time.sleep(1.0)  # anything still running would show now
    calls = [r.query for r in chaos.stub.requests if r.path == "/api/interpreter"]
    parked = [dramatiq.Message.decode(raw) for raw in client.hvals(PARKED_PAYLOADS)]
    parked_queries = [query_of(m.kwargs) for m in parked]
    all_queries = {query_of(job) for job in jobs}
    print(
        f"\nquota: {len(calls)} calls for a quota of 500, {len(parked)} jobs parked, "
        f"{chaos.stored()} POIs stored, {took:.1f}s (total {time.monotonic() - started:.1f}s)"
    )
    assert chaos.stub.stats().calls == 500
    assert len(set(calls)) == 500, "a job was called twice"
    assert len(parked) == client.zcard(PARKED) == 1500
    assert len(set(parked_queries)) == 1500, "a job was parked twice"
    assert set(calls).isdisjoint(parked_queries)
    assert set(calls) | set(parked_queries) == all_queries, "a job was lost"
    assert chaos.stored() == 500 * POIS_PER_JOB
    assert chaos.dead_letters() == []
    client.close()


def test_the_semaphore_never_lets_more_than_n_calls_in_flight(chaos: Chaos) -> None:
    permits = 3
    # The stand-in server answers 429 to any call over its slots: an overshoot cannot hide.
    stub = chaos.replace_stub(latency_s=0.1, slots=permits, enforce_slots=True)
    chaos.workers(processes=2, threads=8, semaphore_permits=permits, semaphore_wait_s=5)
    chaos.send_jobs(150)
    took = eventually(lambda: chaos.stored() >= 150 * POIS_PER_JOB, timeout_s=60, message="150 jobs stored")
    stats = stub.stats()
    print(
        f"\nsemaphore: N={permits}, peak {stats.peak_in_flight} in flight, {stats.calls} calls, "
        f"{stats.rejected_over_slots} over the limit, {took:.1f}s"
    )
    assert stats.peak_in_flight == permits
    assert stats.rejected_over_slots == 0
    assert stats.calls == 150


@pytest.mark.soak  # make chaos (20 s): "a worker killed mid-call gives its permit back" stays in make test
def test_workers_killed_mid_call_lose_no_job_and_give_their_permits_back(chaos: Chaos) -> None:
    from enrichment_middleware.backends.redis import RedisBackend

    chaos.stub.set_latency(0.15)
    lease_s = 4.0
    settings = {"semaphore_permits": 4, "semaphore_lease_s": lease_s}
    # The dramatiq CLI stops its other processes when one dies, and a supervisor starts it
    # again: three one-process fleets, and a fresh one for each killed.
    fleets = [chaos.workers(processes=1, threads=4, **settings) for _ in range(3)]
    jobs = 300
    chaos.send_jobs(jobs)
    kills = []
    for round_ in range(4):
        eventually(lambda: chaos.stub.stats().in_flight > 0, timeout_s=30, message="a call in flight")
        victim = fleets[round_ % len(fleets)]
        pid = victim.worker_pids()[0]
        victim.kill_worker(pid)
        kills.append((pid, chaos.stub.stats().in_flight))
        fleets[round_ % len(fleets)] = chaos.workers(processes=1, threads=4, **settings)
        time.sleep(1.0)
    took = eventually(
        lambda: chaos.stored() >= jobs * POIS_PER_JOB,
        timeout_s=120,
        message="every job stored",
    )
    backend = RedisBackend.from_url(chaos.redis_url, namespace="enrichment")
    permits_back = eventually(
        lambda: backend.lease_count(f"semaphore:{chaos.policy}") == 0,
        timeout_s=lease_s + 1,
        message="every permit back",
    )
    stats = chaos.stub.stats()
    print(
        f"\nkilled workers: {len(kills)} kills {kills}, {stats.calls} calls for {jobs} jobs, "
        f"{chaos.stored()} POIs stored, done {took:.1f}s after the last kill, permits back in {permits_back:.1f}s"
    )
    assert chaos.stored() == jobs * POIS_PER_JOB
    assert chaos.dead_letters() == []


@pytest.mark.soak  # make chaos: tests/unit/test_policy_breaker.py keeps exactly one probe in make test
def test_a_storm_of_504s_opens_the_breaker_with_one_probe_per_cooldown(chaos: Chaos) -> None:
    cooldown = 2.0
    chaos.stub.set_default("504")
    chaos.workers(
        processes=2,
        threads=4,
        breaker_failure_threshold=3,
        breaker_cooldown_s=cooldown,
        semaphore_permits=2,
        retry_max=100,
        retry_min_backoff_s=0.1,
        retry_max_backoff_s=0.5,
    )
    chaos.send_jobs(20)
    time.sleep(9.0)
    storm = sorted(r.started_at for r in chaos.stub.requests if r.path == "/api/interpreter")
    chaos.stub.set_default("ok")
    took = eventually(lambda: chaos.stored() >= 20 * POIS_PER_JOB, timeout_s=60, message="recovery")
    # The first threshold's worth of calls opens it (calls already in flight may add to them);
    # after that, calls are probes: one per cooldown, however many processes.
    opened_at = storm[2]
    probes = [t for t in storm if t > opened_at + 0.5]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    print(
        f"\nbreaker: {len(storm)} calls in 9 s of 504s; {len(probes)} probes after opening, "
        f"gaps {[round(g, 2) for g in gaps]}; recovered {took:.1f}s after healing"
    )
    assert len(storm) - len(probes) <= 3 + 2  # threshold + calls in flight when it opened
    assert probes, "no probe in 9 s with a 2 s cooldown"
    assert all(gap >= cooldown * 0.95 for gap in gaps), "two probes within one cooldown"
    assert len(probes) <= 9.0 / cooldown + 1
    assert chaos.dead_letters() == []


def _invalid_payloads(count: int) -> list[dict[str, object]]:
    """``count`` enrich keyword-argument sets that validation must refuse, generated by hypothesis."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from enrichment_actors.jobs import InvalidJob

    # Any unicode text, lone surrogates included (JSON carries them as "\ud800"), and any
    # JSON number: ints of hundreds of digits, floats, NaN and Infinity.
    text = st.text(st.characters(exclude_categories=()), max_size=20)
    huge = st.integers(10**300, 10**450) | st.integers(-(10**450), -(10**300))
    numbers = st.integers() | huge | st.floats(allow_nan=True, allow_infinity=True)
    json_values = st.recursive(
        st.none() | st.booleans() | numbers | text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=8,
    )
    coordinate = st.one_of(
        st.floats(min_value=-200, max_value=200, allow_nan=False), st.integers(-500, 500), huge, json_values
    )
    bbox = st.one_of(
        json_values,
        st.fixed_dictionaries(
            {k: coordinate for k in ("south", "west", "north", "east")},
            optional={"extra": json_values},
        ),
        st.dictionaries(st.sampled_from(["south", "west", "north", "east", "top"]), coordinate, max_size=5),
    )
    tag = st.text(st.characters(exclude_categories=()), max_size=300) | st.builds("{}={}".format, text, text)
    tags = st.one_of(json_values, st.lists(tag | json_values, max_size=25))
    payload = st.one_of(
        st.fixed_dictionaries({"bbox": bbox, "tags": tags}),
        st.fixed_dictionaries({"bbox": bbox}, optional={"box": json_values, "tags": tags}),
    )
    found: list[dict[str, object]] = []

    @settings(max_examples=count * 3, database=None, suppress_health_check=list(HealthCheck), deadline=None)
    @given(payload)
    def collect(candidate: dict[str, object]) -> None:
        if len(found) >= count:
            return
        try:
            validate_job(candidate.get("bbox"), candidate.get("tags"))
        except InvalidJob:
            found.append(candidate)
            return
        if set(candidate) - {"bbox", "tags"}:
            found.append(candidate)  # unexpected arguments are refused too

    collect()
    # The two payloads the review found retried instead of refused, always among them.
    box = {"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}
    return [{"bbox": box, "tags": ["na\ud800me"]}, {"bbox": {**box, "south": int("9" * 401)}}, *found]


@pytest.mark.soak  # make chaos: tests/unit/test_jobs.py refuses the same payloads in make test
def test_a_thousand_bad_jobs_are_refused_by_name_without_a_call_or_a_retry(chaos: Chaos) -> None:
    from tests.bench.fleet import send, sender

    payloads = _invalid_payloads(1000)
    assert len(payloads) >= 1000, f"hypothesis produced only {len(payloads)} invalid payloads"
    fleet = chaos.workers(processes=2, threads=4)
    broker = sender(chaos.redis_url)
    send(broker, "enrichment", "enrich", payloads)
    broker.close()
    took = eventually(
        lambda: len(chaos.dead_letters()) >= len(payloads), timeout_s=120, message="all refused"
    )
    time.sleep(0.5)
    refused = [line for line in fleet.lines if "Dead-lettering message" in line]
    print(
        f"\nbad input: {len(payloads)} payloads, {len(refused)} refused in {took:.1f}s, "
        f"{chaos.stub.stats().calls} calls, {fleet.count('Retrying message')} retries; e.g. {refused[0].strip()[-160:]}"
    )
    assert chaos.stub.stats().calls == 0
    assert len(chaos.dead_letters()) == len(payloads)
    assert len(refused) == len(payloads)
    assert all("not retried" in line and "InvalidJob" in line for line in refused)
    assert fleet.count("Retrying message") == 0
    assert fleet.count("exited unexpectedly") == 0 and fleet.proc is not None and fleet.proc.poll() is None


#: How long, after the last restart, every job may take to be stored with no operator at hand.
RECOVERY_S = 90.0

JobKey = tuple[float, float]
#: Dramatiq's dispatch script called for a fetch (its first argument, in RESP), and an empty reply.
FETCH_REQUEST = b"\r\n$5\r\nfetch\r\n"
EMPTY_REPLY = b"*0\r\n"


def _job_key(box: Mapping[str, Any]) -> JobKey:
    return round(float(box["south"]), 6), round(float(box["west"]), 6)


def _job_of(message: dramatiq.Message[Any]) -> JobKey:
    """The job a message belongs to: ``enrich`` and ``fetch_pois`` carry its box, ``store_pois`` the job."""
    kwargs = message.kwargs
    return _job_key(kwargs.get("bbox") or kwargs["job"]["bbox"])


def _stored_jobs(world: Chaos, jobs: list[dict[str, Any]]) -> dict[JobKey, int]:
    """POIs stored per job, found by where they lie (the grid's boxes are disjoint)."""
    import psycopg

    boxes = [job["bbox"] for job in jobs]
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        points = conn.execute("SELECT lat, lon FROM pois").fetchall()
    counts: dict[JobKey, int] = {}
    for lat, lon in points:
        box = next(b for b in boxes if b["south"] <= lat <= b["north"] and b["west"] <= lon <= b["east"])
        counts[_job_key(box)] = counts.get(_job_key(box), 0) + 1
    return counts


@dataclass
class _Frozen:
    """What a Redis held at one instant, by job: what a restart of it without persistence loses."""

    queued: set[JobKey]  # a message waiting in the queue
    parked: set[JobKey]  # a message parked until its deferral ends
    in_flight: set[JobKey]  # a message a worker holds (in its acknowledgement set)
    stages: int  # staged answers not stored yet


def _freeze_and_read(client: redis.Redis[bytes]) -> _Frozen:
    """Stop every write (CLIENT PAUSE WRITE) and read what Redis holds: nothing changes until it dies."""
    client.client_pause(120_000, all=False)
    held = set()
    for key in client.scan_iter("dramatiq:__acks__.*"):
        held |= client.smembers(key)
    queued, in_flight = set(), set()
    for queue in (QUEUE, f"{QUEUE}.DQ"):
        for redis_id, raw in client.hgetall(f"dramatiq:{queue}.msgs").items():
            (in_flight if redis_id in held else queued).add(_job_of(dramatiq.Message.decode(raw)))
    parked = {_job_of(dramatiq.Message.decode(raw)) for raw in client.hvals(PARKED_PAYLOADS)}
    stages = sum(1 for _ in client.scan_iter("enrichment:stage:*"))
    return _Frozen(queued, parked, in_flight, stages)


@pytest.mark.soak  # make chaos (13 s): the Redis restart below and the outage scenarios stay in make test
def test_redis_and_postgresql_restarts_lose_no_job_and_no_call_goes_uncounted(chaos: Chaos) -> None:
    """Dedicated servers (the session's are shared): Redis with an append-only file, as a
    deployment that must not lose queued jobs runs it, and PostgreSQL, each restarted mid-run.

    The workers reach Redis through a proxy that, when Redis restarts, also cuts the
    replies of three fetches that carried messages (the race a restart can hit: the
    fetch ran, its reply never arrived). No operator: nobody restarts a worker. Every
    job is stored within RECOVERY_S of the last restart, none is dead-lettered, and no
    Overpass call goes uncounted: messages a lost fetch reply stranded in a live
    worker's acknowledgement set come back by themselves (enrichment_actors/broker.py)."""
    from enrichment_actors.store import PoiStore
    from enrichment_middleware.backends.redis import RedisBackend
    from enrichment_middleware.policy.quota import QuotaLimits, QuotaPolicy
    from tests.bench.servers import PostgresServer, RedisServer
    from tests.support.proxy import FlakyProxy

    with RedisServer(durable=True) as redis_server, PostgresServer() as pg_server:
        PoiStore(pg_server.url).ensure_schema()
        proxy = FlakyProxy("127.0.0.1", redis_server.port).up()
        world = Chaos(f"redis://127.0.0.1:{proxy.port}/0", pg_server.url, chaos.stub)
        chaos.stub.set_latency(0.05)
        # The default heartbeat timeout, as deployed: with the tests' 3 s, a worker quiet during
        # the outage is taken for dead and its messages handed on, which would hide a stranding.
        fleet = world.workers(
            processes=2, threads=4, semaphore_permits=4, store_max_retries=1000, broker_heartbeat_timeout_s=60
        )
        chaos.fleets.append(fleet)
        jobs = 200
        world.send_jobs(jobs, origin=(30.0, 30.0))
        eventually(lambda: chaos.stub.stats().calls >= 40, timeout_s=60, message="the run under way")
        proxy.cut_replies(FETCH_REQUEST, times=3, unless=EMPTY_REPLY)
        redis_server.restart(down_s=2.0)
        calls_after_redis = chaos.stub.stats().calls
        eventually(
            lambda: chaos.stub.stats().calls >= calls_after_redis + 40, timeout_s=60, message="calls again"
        )
        pg_server.restart(down_s=2.0)
        took = eventually(
            lambda: world.stored() >= jobs * POIS_PER_JOB,
            timeout_s=RECOVERY_S,
            message=f"every job stored within {RECOVERY_S:g}s of the restarts, with no operator",
        )
        time.sleep(0.5)
        backend = RedisBackend.from_url(redis_server.url, namespace="enrichment")
        counted = QuotaPolicy(chaos.policy, QuotaLimits(requests=10_000), backend).usage().requests_used
        calls = chaos.stub.stats().calls
        client = redis.Redis.from_url(redis_server.url)
        held = sum(client.scard(key) for key in client.scan_iter("dramatiq:__acks__.*"))
        client.close()
        print(
            f"\nrestarts (AOF): Redis after {calls_after_redis} calls, PostgreSQL later; {calls} calls for {jobs} "
            f"jobs, quota counted {counted}, {world.stored()} POIs stored {took:.1f}s after the restarts, "
            f"{proxy.cuts} fetch replies cut, {fleet.count('Took back')} recoveries of stranded messages, "
            f"{held} messages still held"
        )
        assert proxy.cuts >= 1, "no fetch reply was cut: the scenario did not test the stranding"
        assert world.stored() == jobs * POIS_PER_JOB
        assert world.dead_letters() == []
        assert counted >= calls, "an Overpass call the quota did not count"
        assert fleet.proc is not None and fleet.proc.poll() is None, "the workers stopped"
        fleet.stop()
        proxy.down()


def test_a_redis_without_persistence_restarted_mid_run_loses_exactly_what_it_held(chaos: Chaos) -> None:
    """Redis with nothing on disk, killed mid-run and started empty: what docs/architecture.md says.

    The workers warned at start (log and enrichment_state_backend_persistent 0). The jobs
    lost are exactly those whose message waited in Redis (queued or parked) at that
    instant; a job a worker held is stored, or, if its staged answer went with Redis,
    dead-lettered with that reason, never silently gone; the workers carry on by
    themselves and jobs sent afterwards are all stored."""
    from enrichment_actors.runtime import build_runtime
    from enrichment_actors.settings import load_settings
    from tests.bench.fleet import grid_boxes
    from tests.bench.servers import RedisServer
    from tests.support.scrape import Scrape

    with RedisServer(durable=False) as redis_server:
        world = Chaos(redis_server.url, chaos.database_url, chaos.stub)
        # Twenty jobs deferred for an hour (as a spent quota or a 429 defers them): parked in Redis.
        parked_jobs = [
            {"bbox": box, "tags": TAGS} for box in grid_boxes(20, size_deg=0.02, origin=(50.0, 50.0))
        ]
        parker = build_runtime(load_settings({"REDIS_URL": redis_server.url}))
        for job in parked_jobs:
            message = dramatiq.Message(queue_name=QUEUE, actor_name="enrich", args=(), kwargs=job, options={})
            parker.retries.schedule(parker.broker, message, 3600.0)
        parker.broker.close()

        chaos.stub.set_latency(0.2)
        # Permits for every thread: no job is parked for a permit, so what is parked is known.
        fleet = world.workers(processes=2, threads=4, semaphore_permits=8, store_max_retries=1000)
        chaos.fleets.append(fleet)
        warned = fleet.count("keeps nothing on disk")
        scrapes: list[Scrape] = []

        def scraped() -> bool:
            try:
                scrapes.append(
                    Scrape.parse(urllib.request.urlopen(fleet.metrics_url, timeout=5).read().decode())
                )
            except OSError:
                return False  # the exposition process is still starting
            return True

        eventually(scraped, timeout_s=30, message="the workers' metrics")
        gauge = scrapes[-1].value("enrichment_state_backend_persistent")
        jobs = world.send_jobs(300, origin=(30.0, 30.0))
        eventually(lambda: chaos.stub.stats().calls >= 60, timeout_s=60, message="the run under way")

        client = redis.Redis.from_url(redis_server.url)
        frozen = _freeze_and_read(client)
        assert redis_server.proc is not None
        redis_server.proc.kill()  # a crash: nothing on disk to come back from
        redis_server.proc.wait()
        redis_server.proc = None
        client.close()
        time.sleep(2.0)
        redis_server.start()
        restarted = time.monotonic()

        later = world.send_jobs(50, origin=(40.0, 40.0))
        every = jobs + later + parked_jobs
        expected_lost = frozen.queued | frozen.parked

        def settled() -> bool:
            stored = _stored_jobs(world, every)
            dead = {_job_of(m) for m in world.dead_letters()}
            return all(_job_key(j["bbox"]) in stored for j in later) and len(set(stored) | dead) >= len(
                every
            ) - len(expected_lost)

        took = eventually(
            settled, timeout_s=RECOVERY_S, interval_s=0.5, message="every job not lost stored or reported"
        )
        time.sleep(1.0)
        stored = _stored_jobs(world, every)
        dead = {_job_of(m) for m in world.dead_letters()}
        lost = {_job_key(j["bbox"]) for j in every} - set(stored) - dead
        staged_missing = fleet.count("StagedAnswerMissing")
        print(
            f"\nrestart without persistence: warned {warned}x, gauge {gauge}; at the crash "
            f"{len(frozen.queued)} jobs queued, {len(frozen.parked)} parked, {len(frozen.in_flight)} held by "
            f"workers, {frozen.stages} answers staged; after it {len(lost)} jobs lost, {len(dead)} dead-lettered "
            f"({staged_missing} staged-answer-missing lines), {len(stored)} stored; settled {took:.1f}s after the "
            f"restart ({time.monotonic() - restarted:.1f}s)"
        )
        assert warned >= 1 and gauge == 0.0
        assert frozen.parked == {_job_key(j["bbox"]) for j in parked_jobs}
        assert frozen.queued, "nothing was queued at the crash: the scenario tests nothing"
        assert lost == expected_lost, "a job lost that Redis did not hold, or one it held that came back"
        assert all(count == POIS_PER_JOB for count in stored.values())
        assert dead <= frozen.in_flight, "a dead letter for a job no worker held"
        assert all(m.actor_name == "store_pois" for m in world.dead_letters())
        assert {_job_key(j["bbox"]) for j in later} <= set(stored), "new jobs did not flow"
        assert fleet.proc is not None and fleet.proc.poll() is None, "the workers stopped"
        fleet.stop()

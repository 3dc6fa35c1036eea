"""Fault scenarios against real worker processes, real Redis and PostgreSQL and the stand-in server.

Each scenario asserts what issue 5 promises and prints what it measured
(``pytest -s`` shows it; ``make chaos`` runs them all).
"""

from __future__ import annotations

import itertools
import time

import dramatiq
import pytest
import redis

from enrichment_actors.jobs import build_query, validate_job
from tests.chaos.conftest import POIS_PER_JOB, Chaos
from tests.support.workers import eventually

pytestmark = pytest.mark.chaos

PARKED = "enrichment:park-due:parked"
PARKED_PAYLOADS = "enrichment:park-payload:parked"


def query_of(job: dict[str, object]) -> str:
    return build_query(validate_job(job["bbox"], job["tags"]), timeout_s=5, maxsize_bytes=67108864)


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


def test_workers_killed_mid_call_lose_no_job_and_give_their_permits_back(chaos: Chaos) -> None:
    from middleware.backends.redis import RedisBackend

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
        lambda: backend.lease_count("semaphore:overpass") == 0,
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


def test_redis_and_postgresql_restarts_lose_no_job_and_no_call_goes_uncounted(chaos: Chaos) -> None:
    """Dedicated servers (the session's are shared): Redis with an append-only file, as a
    deployment that must not lose queued jobs runs it, and PostgreSQL, each restarted mid-run.

    A known limit of Dramatiq's Redis broker: when Redis goes away between moving
    messages into a worker's acknowledgement set and the worker receiving them,
    those messages wait there until that worker stops (its heartbeat then lapses
    and they are handed on). A deployment restarts workers; so does this scenario,
    once, if jobs are still missing a minute after the restarts, and it says so.
    No job may be lost either way."""
    from enrichment_actors.store import PoiStore
    from middleware.backends.redis import RedisBackend
    from middleware.policy.quota import QuotaLimits, QuotaPolicy
    from tests.bench.servers import PostgresServer, RedisServer

    with RedisServer(durable=True) as redis_server, PostgresServer() as pg_server:
        PoiStore(pg_server.url).ensure_schema()
        world = Chaos(redis_server.url, pg_server.url, chaos.stub)
        chaos.stub.set_latency(0.05)
        fleet = world.workers(processes=2, threads=4, semaphore_permits=4, store_max_retries=1000)
        chaos.fleets.append(fleet)
        jobs = 200
        world.send_jobs(jobs, origin=(30.0, 30.0))
        eventually(lambda: chaos.stub.stats().calls >= 40, timeout_s=60, message="the run under way")
        redis_server.restart(down_s=2.0)
        calls_after_redis = chaos.stub.stats().calls
        eventually(
            lambda: chaos.stub.stats().calls >= calls_after_redis + 40, timeout_s=60, message="calls again"
        )
        pg_server.restart(down_s=2.0)

        def all_stored() -> bool:
            return world.stored() >= jobs * POIS_PER_JOB

        stranded = ""
        try:
            took = eventually(all_stored, timeout_s=60, message="every job stored")
        except AssertionError:
            client = redis.Redis.from_url(redis_server.url)
            acked = sum(client.scard(key) for key in client.keys("dramatiq:__acks__.*"))
            client.close()
            stranded = f"; {jobs * POIS_PER_JOB - world.stored()} POIs missing after 60 s with {acked} messages held "
            stranded += "in live workers' acknowledgement sets: workers restarted once"
            fleet.stop()
            fleet = world.workers(processes=2, threads=4, semaphore_permits=4, store_max_retries=1000)
            chaos.fleets.append(fleet)
            took = 60 + eventually(
                all_stored, timeout_s=120, message="every job stored after a worker restart"
            )
        time.sleep(0.5)
        backend = RedisBackend.from_url(redis_server.url, namespace="enrichment")
        counted = QuotaPolicy("overpass", QuotaLimits(requests=10_000), backend).usage().requests_used
        calls = chaos.stub.stats().calls
        print(
            f"\nrestarts: Redis after {calls_after_redis} calls, PostgreSQL later; {calls} calls for {jobs} jobs, "
            f"quota counted {counted}, {world.stored()} POIs stored, done {took:.1f}s after the restarts{stranded}"
        )
        assert world.stored() == jobs * POIS_PER_JOB
        assert world.dead_letters() == []
        assert counted >= calls, "an Overpass call the quota did not count"
        fleet.stop()

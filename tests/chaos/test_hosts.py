"""A fleet on two hosts whose clocks disagree: the quota, the permits and the breaker still hold fleet-wide.

Each "host" is a network namespace made by the test (tests/support/hosts.py):
its own veth on ``10.250.<n>.0/30``, no default route, so its workers reach
only their loopback and the forwarders the test binds on the root side of
their veth, which carry them to the session's Redis and PostgreSQL and to the
stand-in server (all on the root namespace's loopback). Host 1 runs 5 s
ahead, host 2 5 s behind (their Python ``time.time``; see
tests/support/hosts.py for why not libfaketime): 10 s apart, below the broker's
heartbeat timeout (Dramatiq's heartbeats carry each host's own clock).

The leases, quota windows, pauses, pacing and parking read Redis ``TIME``
inside their scripts, so they must come out exactly as on one host: exact
quota, peak in flight = permits, one probe per cooldown, every job stored
once. Skipped, with the reason, where namespaces cannot be made (not root,
no ``ip``). ``pytest -s`` prints the figures.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import pytest
import redis

from tests.chaos.conftest import POIS_PER_JOB, Chaos
from tests.chaos.test_faults import PARKED, PARKED_PAYLOADS, query_of
from tests.support.hosts import SERVERS_NAME, Forwarder, Host, forwarders_on_one_port, hosts, unavailable
from tests.support.workers import WorkerProcesses, eventually

pytestmark = pytest.mark.chaos

SKEWS_S = (5.0, -5.0)
# Above the 10 s between the two hosts' clocks (plus a heartbeat's period): no live worker looks dead.
HEARTBEAT_TIMEOUT_S = 30
INTERPRETER = b"POST /api/interpreter"


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[list[Host]]:
    reason = unavailable()
    if reason:
        pytest.skip(f"a fleet on several hosts needs network namespaces: {reason}")
    try:
        with hosts(SKEWS_S) as made:
            offsets = [host.clock_offset() for host in made]
            print(
                f"\nhosts: {[(h.name, h.address, f'{o:+.2f}s') for h, o in zip(made, offsets, strict=True)]}"
            )
            for host, offset in zip(made, offsets, strict=True):
                assert abs(offset - host.skew_s) < 2.0, (
                    f"{host.name}'s clock is {offset:+.2f}s off, not {host.skew_s:+g}s"
                )
            yield made
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make network namespaces here: {' '.join(exc.cmd)}: {exc.stderr.strip()}")


class Fleet:
    """Workers on each host, reaching the servers only through forwarders bound on their veth."""

    def __init__(self, chaos: Chaos, hosts: list[Host]) -> None:
        self.chaos = chaos
        self.hosts = hosts
        self.forwarders: list[Forwarder] = []
        self.stub_forwarders: dict[str, Forwarder] = {}

    def start(self, processes: int = 1, threads: int = 4, **settings: Any) -> list[WorkerProcesses]:
        redis_port = urlsplit(self.chaos.redis_url).port
        database = urlsplit(self.chaos.database_url)
        assert redis_port and database.port
        fleets = []
        # One name for the stand-in on every host, as a fleet has: its state is keyed by host:port.
        stub_port, self.stub_forwarders = forwarders_on_one_port(
            self.hosts, self.chaos.stub.port, marker=INTERPRETER
        )
        self.forwarders.extend(self.stub_forwarders.values())
        for host in self.hosts:
            to_redis = self._forward(host, redis_port)
            to_db = self._forward(host, database.port)
            env = {
                **self.chaos.env(**{"broker_heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S, **settings}),
                "REDIS_URL": to_redis.url("redis", urlsplit(self.chaos.redis_url).path),
                "DATABASE_URL": database._replace(
                    netloc=f"{database.username}@{to_db.host}:{to_db.port}"
                ).geturl(),
                "OVERPASS_URL": f"http://{SERVERS_NAME}:{stub_port}/api/interpreter",
            }
            fleet = WorkerProcesses(env, processes=processes, threads=threads, prefix=host.prefix())
            self.chaos.fleets.append(fleet)
            fleets.append(fleet.start(timeout_s=90))
        return fleets

    def calls_per_host(self) -> dict[str, int]:
        return {name: sum(f.marks.values()) for name, f in self.stub_forwarders.items()}

    def _forward(self, host: Host, port: int, marker: bytes = b"") -> Forwarder:
        forwarder = Forwarder(host.gateway, port, marker=marker)
        self.forwarders.append(forwarder)
        return forwarder

    def close(self) -> None:
        for fleet in self.chaos.fleets:
            fleet.stop()
        for forwarder in self.forwarders:
            forwarder.close()


@pytest.fixture
def fleet(chaos: Chaos, two_hosts: list[Host]) -> Iterator[Fleet]:
    made = Fleet(chaos, two_hosts)
    try:
        yield made
    finally:
        made.close()


def requests_counted(redis_url: str) -> int:
    """The quota's request counters in Redis (every window), summed."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k for k in client.scan_iter(match="*counter*requests*", count=1000)]
        return sum(int(client.get(k) or 0) for k in keys)
    finally:
        client.close()


def waiting_payloads(client: redis.Redis[bytes]) -> list[bytes]:
    """The messages parked, and those waiting in a fair room (not the seated ones: they are parked)."""
    waiting = [
        raw
        for key in client.scan_iter(match="enrichment:room-payloads:*")
        for member, raw in client.hgetall(key).items()
        if not client.hexists(key.replace(b"room-payloads", b"room-tokens"), member)
    ]
    return [*client.hvals(PARKED_PAYLOADS), *waiting]


@pytest.mark.parametrize(
    ("limit", "jobs"),
    [pytest.param(40, 60, id="quick"), pytest.param(300, 450, marks=pytest.mark.soak, id="soak")],
)
def test_two_skewed_hosts_share_one_quota_and_one_set_of_permits(fleet: Fleet, limit: int, jobs: int) -> None:
    permits = 3
    # 429 to any call over the permits: an overshoot from either host cannot hide.
    stub = fleet.chaos.replace_stub(latency_s=0.2, slots=permits, enforce_slots=True)
    fleet.start(
        processes=1,
        threads=4,
        quota_requests=limit,
        # Windows aligned to Redis TIME's epoch, three years long: no rollover during the test.
        quota_window_s=100_000_000,
        semaphore_permits=permits,
        semaphore_wait_s=5,
    )
    started = time.monotonic()
    sent = fleet.chaos.send_jobs(jobs)
    client = redis.Redis.from_url(fleet.chaos.redis_url)
    # Past the quota, the seated jobs are parked for the next window (keeping their seats) and the
    # others wait in the fair room behind them: both are "parked" here.
    took = eventually(
        lambda: (
            len(waiting_payloads(client)) >= jobs - limit and fleet.chaos.stored() >= limit * POIS_PER_JOB
        ),
        timeout_s=120 + jobs,
        message=f"{limit} jobs stored and {jobs - limit} parked or waiting in the fair room",
    )
    time.sleep(1.0)  # anything still running would show now
    calls = [r.query for r in stub.requests if r.path == "/api/interpreter"]
    parked = [query_of(dramatiq.Message.decode(raw).kwargs) for raw in waiting_payloads(client)]
    counted = requests_counted(fleet.chaos.redis_url)
    stats = stub.stats()
    per_host = fleet.calls_per_host()
    print(
        f"\ntwo hosts {SKEWS_S} s: quota {limit}: {counted} requests counted, {stats.calls} calls "
        f"(per host {per_host}), peak {stats.peak_in_flight} in flight for {permits} permits, "
        f"{stats.rejected_over_slots} over; {len(parked)} parked, {fleet.chaos.stored()} POIs stored, "
        f"{took:.1f}s"
    )
    assert counted == stats.calls == limit
    assert len(set(calls)) == limit, "a job was called twice"
    assert stats.peak_in_flight == permits
    assert stats.rejected_over_slots == 0
    assert all(count > 0 for count in per_host.values()), f"a host made no call: {per_host}"
    assert len(parked) == len(set(parked)) == jobs - limit, "a job was parked twice"
    assert set(calls).isdisjoint(parked)
    assert set(calls) | set(parked) == {query_of(job) for job in sent}, "a job was lost"
    assert fleet.chaos.stored() == limit * POIS_PER_JOB
    assert fleet.chaos.dead_letters() == []
    assert time.monotonic() - started < 120 + jobs
    client.close()


@pytest.mark.soak  # make chaos: tests/unit/test_policy_breaker.py keeps exactly one probe in make test
def test_two_skewed_hosts_send_one_probe_per_cooldown(fleet: Fleet) -> None:
    cooldown, storm_s, jobs = 2.0, 9.0, 20
    fleet.chaos.stub.set_default("504")
    fleet.start(
        processes=1,
        threads=4,
        breaker_failure_threshold=3,
        breaker_cooldown_s=cooldown,
        semaphore_permits=2,
        retry_max=100,
        retry_min_backoff_s=0.1,
        retry_max_backoff_s=0.5,
    )
    fleet.chaos.send_jobs(jobs)
    time.sleep(storm_s)
    storm = sorted(r.started_at for r in fleet.chaos.stub.requests if r.path == "/api/interpreter")
    per_host = fleet.calls_per_host()
    fleet.chaos.stub.set_default("ok")
    # Retries wait in Dramatiq's delay queue, due by the clock of the host that consumes them: a
    # message a host 5 s ahead retried is due 10 s late on the host behind. Recovery allows for it.
    try:
        took = eventually(
            lambda: fleet.chaos.stored() >= jobs * POIS_PER_JOB, timeout_s=90, message="recovery"
        )
    except AssertionError:
        for running in fleet.chaos.fleets:
            print(running.tail(60))
        client = redis.Redis.from_url(fleet.chaos.redis_url)
        print({k: client.type(k) for k in client.scan_iter(count=1000)})
        print(fleet.chaos.stored(), fleet.chaos.stub.stats())
        raise
    opened_at = storm[2]
    probes = [t for t in storm if t > opened_at + 0.5]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    print(
        f"\ntwo hosts {SKEWS_S} s: breaker: {len(storm)} calls in {storm_s:.0f} s of 504s (per host {per_host}); "
        f"{len(probes)} probes after opening, gaps {[round(g, 2) for g in gaps]}; recovered in {took:.1f}s"
    )
    assert len(storm) - len(probes) <= 3 + 2  # threshold + calls in flight when it opened
    assert probes, f"no probe in {storm_s} s with a {cooldown} s cooldown"
    assert all(gap >= cooldown * 0.95 for gap in gaps), "two probes within one cooldown"
    assert len(probes) <= storm_s / cooldown + 1
    assert fleet.chaos.stored() == jobs * POIS_PER_JOB
    assert fleet.chaos.dead_letters() == []


@pytest.mark.soak  # make chaos: it shows why the skew must stay below the heartbeat timeout
def test_a_heartbeat_timeout_below_the_skew_hands_a_live_hosts_messages_on(fleet: Fleet) -> None:
    """Dramatiq's heartbeats carry each host's clock: why the skew must stay below ``BROKER_HEARTBEAT_TIMEOUT_S``.

    The host 5 s ahead reads the other's heartbeats as 10 s old, more than 3 s: it
    takes that live worker's unacknowledged messages for a dead one's, and jobs run on both.
    """
    limit, jobs = 40, 60
    fleet.chaos.replace_stub(latency_s=0.2)
    fleet.start(
        processes=1,
        threads=4,
        broker_heartbeat_timeout_s=3,
        quota_requests=limit,
        quota_window_s=100_000_000,
        semaphore_permits=3,
        semaphore_wait_s=5,
    )
    fleet.chaos.send_jobs(jobs)
    client = redis.Redis.from_url(fleet.chaos.redis_url)
    eventually(
        lambda: client.zcard(PARKED) >= jobs - limit and fleet.chaos.stored() >= limit * POIS_PER_JOB,
        timeout_s=120,
        message=f"{limit} jobs stored and {jobs - limit} parked",
    )
    time.sleep(1.0)
    calls = [r.query for r in fleet.chaos.stub.requests if r.path == "/api/interpreter"]
    parked = {query_of(dramatiq.Message.decode(raw).kwargs) for raw in client.hvals(PARKED_PAYLOADS)}
    twice = len(calls) - len(set(calls)) + len(set(calls) & parked)
    print(
        f"\ntwo hosts {SKEWS_S} s, heartbeat timeout 3 s: {len(calls)} calls, {len(parked)} parked "
        f"for {jobs - limit} due: {twice} jobs run on both hosts"
    )
    assert twice > 0, "the host behind kept its messages although its heartbeats looked 10 s old"
    client.close()

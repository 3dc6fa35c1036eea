"""A Sentinel failover while jobs are parked and the quota admits: what survives, what can go.

A primary, one replica (fed through a proxy, so the test can stall
replication as a slow network would) and three Sentinels.  Threads park
jobs and take quota admissions while replication stalls, the primary is
killed (SIGKILL: nothing more leaves it) and the Sentinels promote the
replica.  The old primary then comes back empty and the Sentinels make it a
replica.

- A park with ``WAIT 1`` (the default on Sentinel) is acknowledged only once
  the replica holds it: every acknowledged park survives.  The same parks
  without WAIT lose those made during the stall: the test shows they do.
- The quota's admissions are not waited for (a round trip more per call):
  those admitted during the stall are lost from the counter, so the fleet
  may admit that many again in the window.  The test measures the loss (run
  with ``-s`` to see the figures).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis

from enrichment_middleware.backends import BackendUnavailable
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.parking import ParkingLot
from tests.support.redis_topologies import MASTER, SentinelSetup
from tests.support.workers import eventually

pytestmark = pytest.mark.chaos


def _until_done(work: Callable[[], object], stop: threading.Event) -> bool:
    """Retry ``work`` on BackendUnavailable as the product's put-back does; False if stopped first."""
    while not stop.is_set():
        try:
            work()
            return True
        except BackendUnavailable:
            time.sleep(0.05)
    return False


# make chaos; make test keeps the fast park-waits-for-the-replica tests in tests/unit/test_backends.py.
@pytest.mark.soak
def test_no_acknowledged_park_is_lost_to_a_failover_and_the_quota_loss_is_bounded() -> None:
    setup = SentinelSetup(
        replicas=1, sentinels=3, down_after_ms=1000, through_proxy=True, failover_timeout_ms=120_000
    ).start()
    try:
        url = "redis://127.0.0.1/0"
        waited = RedisBackend.from_url(
            url, sentinels=setup.sentinels, sentinel_master=MASTER, socket_timeout_s=2
        )
        unwaited = RedisBackend.from_url(
            url, sentinels=setup.sentinels, sentinel_master=MASTER, socket_timeout_s=2, park_replicas=0
        )
        safe, unsafe = ParkingLot(waited, key="waited"), ParkingLot(unwaited, key="unwaited")

        # What WAIT costs, before the trouble: parks and admissions per second with and without it.
        def rate(work: Callable[[int], object], n: int = 300) -> float:
            started = time.perf_counter()
            for i in range(n):
                work(i)
            return n / (time.perf_counter() - started)

        parks_waited = rate(lambda i: safe.park(f"warm-{i}", b"x", delay_s=3600))
        parks_unwaited = rate(lambda i: unsafe.park(f"warm-{i}", b"x", delay_s=3600))
        admits = rate(
            lambda i: unwaited.window_admit("quota:api", ["requests"], [-1], [1], window_s=3600, ttl_s=7200)
        )

        stop = threading.Event()
        acknowledged: dict[str, list[str]] = {"waited": [], "unwaited": []}
        admitted = [0]

        def parker(name: str, lot: ParkingLot) -> None:
            for i in range(1_000_000):
                member = f"job-{i:06d}"
                if not _until_done(lambda: lot.park(member, b"payload", delay_s=3600), stop):  # noqa: B023
                    return
                acknowledged[name].append(member)

        def admitter() -> None:
            while not stop.is_set():
                try:
                    unwaited.window_admit("quota:api", ["requests"], [-1], [1], window_s=3600, ttl_s=7200)
                    admitted[0] += 1
                except BackendUnavailable:
                    time.sleep(0.05)

        threads = [
            threading.Thread(target=parker, args=("waited", safe)),
            threading.Thread(target=parker, args=("unwaited", unsafe)),
            threading.Thread(target=admitter),
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        old_port = setup.primary()[1]
        setup.proxies[0].down()  # replication stalls: the replica is behind from here on
        time.sleep(1.0)
        killed_at = time.monotonic()
        setup.kill_primary()
        eventually(lambda: setup.primary()[1] != old_port, timeout_s=60, message="the Sentinels to fail over")
        failover_s = time.monotonic() - killed_at
        setup.restart(old_port)
        new_host, new_port = setup.primary()
        primary = redis.Redis(host=new_host, port=new_port)
        eventually(
            lambda: setup._online(primary) >= 1,
            timeout_s=60,
            message="the old primary to come back as a replica",
        )
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

        parked = {
            lot: {m.decode() for m in primary.zrange(waited.key("park-due", lot), 0, -1)}
            for lot in ("waited", "unwaited")
        }
        lost_waited = [m for m in acknowledged["waited"] if m not in parked["waited"]]
        lost_unwaited = [m for m in acknowledged["unwaited"] if m not in parked["unwaited"]]
        counter = waited.counters_get([f"quota:api:{int(waited.now()) // 3600 * 3600}:requests"])[0]
        warm_admits = 300
        print(
            f"\nfailover took {failover_s:.1f}s; parks acknowledged {len(acknowledged['waited'])}, "
            f"lost with WAIT {len(lost_waited)}, lost without WAIT {len(lost_unwaited)}; "
            f"quota admissions {admitted[0] + warm_admits}, counter after failover {counter} "
            f"(lost {admitted[0] + warm_admits - counter}); parks/s with WAIT {parks_waited:.0f}, "
            f"without {parks_unwaited:.0f}; admissions/s {admits:.0f}"
        )
        assert lost_waited == []
        assert len(acknowledged["waited"]) > 0
        # Without WAIT the parks acknowledged while replication stalled are gone: why WAIT is there.
        assert lost_unwaited, "no park made without WAIT was lost: the stall did not hold replication back"
        # The quota loses at most what it admitted during the stall (never more than it admitted).
        assert 0 < admitted[0] + warm_admits - counter <= admitted[0]
    finally:
        setup.remove()

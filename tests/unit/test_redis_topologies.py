"""The product's state on a Redis Cluster or behind Sentinel: settings, start-up checks, the stage."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from enrichment_actors.overpass_endpoints import endpoint_name
from enrichment_actors.redis_checks import EXIT_UNSAFE_REDIS, UnsafeRedis
from enrichment_actors.redis_topology import TopologyCheck
from enrichment_actors.runtime import make_backend
from enrichment_actors.settings import SettingsError, load_settings
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.parking import ParkingLot
from tests.support.product import product
from tests.support.redis_topologies import MASTER
from tests.support.workers import free_port


@pytest.fixture(autouse=True)
def _built() -> None:
    """The product built in this process: the actors' functions read it."""
    product()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER='maybe' is not valid: expected true or false"),
        ({"REDIS_SENTINELS": "sentinel-1"}, "REDIS_SENTINELS='sentinel-1' is not valid"),
        ({"REDIS_CLUSTER": "true", "REDIS_SENTINELS": "s:26379"}, "a Redis is one or the other"),
    ],
)
def test_a_wrong_topology_setting_is_refused_naming_it(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(environ)


def test_the_state_lives_on_the_cluster_the_settings_name(redis_cluster: Any) -> None:
    redis_cluster.flush()
    settings = load_settings({"STATE_REDIS_URL": redis_cluster.url, "REDIS_CLUSTER": "true"})
    backend = make_backend(settings)
    assert isinstance(backend, RedisBackend) and backend.client.__class__.__name__ == "RedisCluster"
    lot = ParkingLot(backend)
    lot.park("m", b"payload", delay_s=0)
    assert [claim.payload for claim in lot.claim_due(10)] == [b"payload"]
    assert backend.stage_put("fetch:m", {"chunk-0": b"x"}, ttl_s=60) == {"chunk-0"}


def test_a_cluster_node_set_as_a_plain_redis_fails_at_start(redis_cluster: Any) -> None:
    settings = load_settings({"STATE_REDIS_URL": redis_cluster.url})
    with pytest.raises(UnsafeRedis, match=r"is a node of a Redis Cluster.*REDIS_CLUSTER=true") as refused:
        TopologyCheck(make_backend(settings)).check()
    assert refused.value.code == EXIT_UNSAFE_REDIS


def test_sentinels_without_the_named_primary_fail_at_start(redis_sentinel: Any) -> None:
    settings = load_settings({"REDIS_SENTINELS": redis_sentinel.sentinels, "REDIS_SENTINEL_MASTER": "nope"})
    with pytest.raises(UnsafeRedis, match="REDIS_SENTINEL_MASTER"):
        TopologyCheck(make_backend(settings)).check()


def test_an_unreachable_state_redis_is_waited_for_not_refused() -> None:
    TopologyCheck(RedisBackend.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=1)).check()


def test_a_worker_given_a_cluster_node_as_a_plain_redis_exits_at_boot(
    redis_cluster: Any, redis_url: str
) -> None:
    from tests.support.workers import WorkerProcesses

    fleet = WorkerProcesses(
        {"REDIS_URL": redis_url, "STATE_REDIS_URL": redis_cluster.url}, processes=1, threads=1
    )
    try:
        with pytest.raises(RuntimeError, match="exited during start"):
            fleet.start(timeout_s=60)
        assert fleet.proc is not None
        fleet.proc.wait(timeout=30)
        assert fleet.proc.returncode == EXIT_UNSAFE_REDIS
        time.sleep(0.2)
        assert fleet.count("is a node of a Redis Cluster") >= 1, fleet.tail()
    finally:
        fleet.stop()


def test_the_state_lives_on_the_primary_the_sentinels_name(redis_sentinel: Any) -> None:
    redis_sentinel.flush()
    settings = load_settings({"REDIS_SENTINELS": redis_sentinel.sentinels, "REDIS_SENTINEL_MASTER": MASTER})
    backend = make_backend(settings)
    assert isinstance(backend, RedisBackend) and backend.park_replicas == 1
    backend.counter_add("c", 3, ttl_s=60)
    assert backend.counters_get(["c"]) == [3]


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_workers_keep_the_state_on_the_topology_and_the_queues_on_the_broker(
    topology: str, redis_url: str, postgres_url: str, redis_client: Any, request: pytest.FixtureRequest
) -> None:
    # Dramatiq's Redis broker cannot run on a cluster: the queues stay on the session's Redis.
    from enrichment_actors.store import PoiStore
    from enrichment_actors.stub_overpass import StubOverpass
    from tests.support.workers import WorkerProcesses, eventually

    if topology == "cluster":
        setup = request.getfixturevalue("redis_cluster")
        where = {"STATE_REDIS_URL": setup.url, "REDIS_CLUSTER": "true"}
    else:
        setup = request.getfixturevalue("redis_sentinel")
        where = {"STATE_REDIS_URL": "redis://127.0.0.1/0", "REDIS_SENTINELS": setup.sentinels}
    setup.flush()
    state = make_backend(load_settings({**where, "REDIS_URL": redis_url}))
    assert isinstance(state, RedisBackend)
    store = PoiStore(postgres_url)
    store.ensure_schema()
    store.model.delete().execute()
    with StubOverpass(slots=2) as stub:
        env = {
            **where,
            "REDIS_URL": redis_url,
            "DATABASE_URL": postgres_url,
            "OVERPASS_URL": stub.interpreter_url,
        }
        with WorkerProcesses(env, processes=1, threads=2):
            for index in range(3):
                box = {
                    "south": 48.85 + index * 0.01,
                    "west": 2.29,
                    "north": 48.855 + index * 0.01,
                    "east": 2.30,
                }
                product().enrich.send(bbox=box, tags=["amenity"])
            eventually(
                lambda: stub.stats().calls >= 3 and store.count() > 0, timeout_s=60, message="jobs stored"
            )
            eventually(
                lambda: redis_client.llen("dramatiq:enrichment") == 0,
                timeout_s=30,
                message="the queue drained",
            )
    store.close()
    window = int(state.now()) // 86_400 * 86_400
    assert (
        state.counters_get([f"quota:overpass@{endpoint_name(stub.interpreter_url)}:{window}:requests"])[0]
        >= 3
    )  # the quota counted on the topology
    assert not list(redis_client.scan_iter("enrichment:*"))  # nothing of the state on the broker's Redis

"""The product's state on a Redis Cluster or behind Sentinel: settings, start-up checks, the stage."""

from __future__ import annotations

import re
from typing import Any

import pytest

from enrichment_actors.runtime import make_backend
from enrichment_actors.settings import SettingsError, load_settings
from enrichment_actors.staging import stash_for
from middleware.backends.redis import RedisBackend, RedisTopologyError
from middleware.policy.parking import ParkingLot
from tests.support.redis_topologies import MASTER


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
    stash = stash_for("redis", redis_cluster.url, cluster=True)
    assert stash.put("fetch:m", {"chunk-0": b"x"}, ttl_s=60) == {"chunk-0"}


def test_a_cluster_node_set_as_a_plain_redis_fails_at_start(redis_cluster: Any) -> None:
    settings = load_settings({"STATE_REDIS_URL": redis_cluster.url})
    with pytest.raises(RedisTopologyError, match=r"is a node of a Redis Cluster.*REDIS_CLUSTER=true"):
        make_backend(settings)


def test_sentinels_without_the_named_primary_fail_at_start(redis_sentinel: Any) -> None:
    settings = load_settings({"REDIS_SENTINELS": redis_sentinel.sentinels, "REDIS_SENTINEL_MASTER": "nope"})
    with pytest.raises(RedisTopologyError, match="REDIS_SENTINEL_MASTER"):
        make_backend(settings)


def test_the_state_lives_on_the_primary_the_sentinels_name(redis_sentinel: Any) -> None:
    redis_sentinel.flush()
    settings = load_settings({"REDIS_SENTINELS": redis_sentinel.sentinels, "REDIS_SENTINEL_MASTER": MASTER})
    backend = make_backend(settings)
    assert isinstance(backend, RedisBackend) and backend.park_replicas == 1
    backend.counter_add("c", 3, ttl_s=60)
    assert backend.counters_get(["c"]) == [3]

"""The state of an endpoint is keyed by the endpoint, and today's quota survives the upgrade to those keys."""

from __future__ import annotations

from typing import Any

from enrichment_actors.runtime import build_runtime
from enrichment_actors.settings import load_settings
from enrichment_actors.startup import carry_over_quota
from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.quota import QuotaLimits, QuotaPolicy

PRIVATE = "http://10.0.0.5:8080/api/interpreter"
PUBLIC = "https://overpass-api.de/api/interpreter"


def test_calls_to_a_private_server_are_not_counted_on_the_public_one() -> None:
    backend = MemoryBackend()
    env = {"BROKER": "stub", "STATE_BACKEND": "memory", "OVERPASS_CONTACT": "ops@example.org"}
    private = build_runtime(load_settings({**env, "OVERPASS_URL": PRIVATE}), backend=backend)
    for _ in range(24):
        private.quota.policies[private.endpoint().policy].admit()
    public = build_runtime(load_settings({**env, "OVERPASS_URL": PUBLIC}), backend=backend)
    assert private.endpoint().policy == "overpass@10.0.0.5:8080"
    assert public.endpoint().policy == "overpass@overpass-api.de"
    assert public.quota.policies[public.endpoint().policy].usage().requests_used == 0
    assert private.quota.policies[private.endpoint().policy].usage().requests_used == 24


def test_todays_quota_is_carried_over_from_the_old_policy_name_once(
    redis_url: str, redis_client: Any
) -> None:
    backend = RedisBackend.from_url(redis_url, namespace="enrichment")
    limits = QuotaLimits(requests=10_000, bytes=10**9)
    old = QuotaPolicy("overpass", limits, backend)
    for _ in range(24):
        decision = old.admit()
    old.record_bytes(5_000, decision.window_start)
    new = QuotaPolicy("overpass@overpass-api.de", limits, backend)

    assert carry_over_quota(backend, "overpass", new) == {"requests": 24, "bytes": 5_000}
    usage = new.usage()
    assert (usage.requests_used, usage.bytes_used) == (24, 5_000)
    (key,) = redis_client.keys("enrichment:counter:{quota:overpass@overpass-api.de}:*:requests")
    # The copy expires with the original (within the time between the two reads).
    assert abs(redis_client.pttl(key) - redis_client.pttl(key.replace(b"@overpass-api.de", b""))) < 1_000

    # Another worker starting later copies nothing: the new counters count on their own.
    new.admit()
    assert carry_over_quota(backend, "overpass", new) == {}
    assert new.usage().requests_used == 25
    # Nothing to carry to a policy whose old name has no counters today.
    assert carry_over_quota(backend, "nothing-here", QuotaPolicy("overpass@b.example", limits, backend)) == {}
    assert carry_over_quota(MemoryBackend(), "overpass", new) == {}

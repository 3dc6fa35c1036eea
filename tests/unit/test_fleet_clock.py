"""One clock for the fleet: a host whose clock is off by 100 s still agrees on leases, windows, cooldowns and due times.

Each case runs one side in this process and the other in a separate Python
process whose clock libfaketime moves (``faketime -f +100s``), both against
the test session's Redis: the backend reads the server's ``TIME`` inside its
scripts, so the skewed host's own clock does not count (issue 8, finding 4).
Dramatiq's broker heartbeats still use each host's clock, so a fleet's skew
must stay well within ``BROKER_HEARTBEAT_TIMEOUT_S``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.breaker import BreakerLimits, BreakerPolicy
from enrichment_middleware.policy.quota import QuotaLimits, QuotaPolicy
from enrichment_middleware.policy.semaphore import SemaphoreLimits, SemaphorePolicy
from enrichment_middleware.retries import Retries

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "fleet-clock"
SKEW_S = 100

pytestmark = pytest.mark.skipif(
    shutil.which("faketime") is None,
    reason="faketime is not installed (Debian package faketime; `make install` installs it as root): "
    "the fleet-clock tests need a whole process with a skewed clock",
)

# What the skewed host does: one policy call, answered as JSON with its own clock.
SKEWED_HOST = """
import json, sys, time
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.breaker import BreakerLimits, BreakerPolicy
from enrichment_middleware.policy.quota import QuotaLimits, QuotaPolicy
from enrichment_middleware.policy.semaphore import SemaphoreLimits, SemaphorePolicy
from enrichment_middleware.retries import Retries

url, namespace, action, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
backend = RedisBackend.from_url(url, namespace=namespace)
answer = {"local_time": time.time()}
if action == "acquire":
    policy = SemaphorePolicy("api", SemaphoreLimits(**args), backend)
    answer["granted"] = policy.try_acquire("skewed-host") is not None
elif action == "admit":
    decision = QuotaPolicy("api", QuotaLimits(**args), backend).admit()
    answer["granted"] = decision.allowed
    answer["window_start"] = decision.window_start
elif action == "probe":
    answer["granted"] = BreakerPolicy("api", BreakerLimits(**args), backend).admit("skewed-host").allowed
elif action == "release":
    parking = Retries(backend=backend).parking
    answer["granted"] = len(parking.claim_due()) > 0
print(json.dumps(answer))
"""


def on_skewed_host(redis_url: str, skew_s: int, action: str, **args: Any) -> dict[str, Any]:
    """Run ``action`` in a Python process whose clock is ``skew_s`` seconds off; its answer."""
    skewed_args = [redis_url, NAMESPACE, action, json.dumps(args)]
    done = subprocess.run(
        ["faketime", "-f", f"{skew_s:+d}s", sys.executable, "-c", SKEWED_HOST, *skewed_args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    off_by = answer["local_time"] - time.time()
    assert abs(off_by - skew_s) < 10, f"faketime did not skew the process's clock: off by {off_by:.1f}s"
    return answer


@pytest.fixture
def backend(redis_url: str, redis_client: redis.Redis[bytes]) -> RedisBackend:
    return RedisBackend.from_url(redis_url, namespace=NAMESPACE)


def test_a_host_ahead_gets_no_permit_while_another_holds_both_live_leases(
    redis_url: str, backend: RedisBackend
) -> None:
    limits = SemaphoreLimits(permits=2, lease_s=60)
    here = SemaphorePolicy("api", limits, backend)
    assert here.try_acquire("holder-1") is not None
    assert here.try_acquire("holder-2") is not None
    answer = on_skewed_host(redis_url, +SKEW_S, "acquire", permits=2, lease_s=60)
    assert answer["granted"] is False, "a host 100 s ahead took a permit while two live leases were held"
    assert here.in_use() == 2


def test_a_lease_taken_by_a_host_behind_does_not_lapse_early(redis_url: str, backend: RedisBackend) -> None:
    answer = on_skewed_host(redis_url, -SKEW_S, "acquire", permits=1, lease_s=60)
    assert answer["granted"] is True
    here = SemaphorePolicy("api", SemaphoreLimits(permits=1, lease_s=60), backend)
    assert here.try_acquire("here") is None, "the lease of a host 100 s behind lapsed at once"
    assert here.in_use() == 1


def _window_ending_soon(now: float) -> int:
    """A window length (whole seconds) whose current window ends 20 to 80 s from ``now``:
    a host 100 s ahead would be in the next window by its own clock."""
    for window_s in range(300, 100_000):
        if window_s - 80 <= now % window_s <= window_s - 20:
            return window_s
    raise AssertionError("no window length found")  # never: remainders spread over every value


def test_a_host_ahead_counts_in_the_fleets_window_not_the_next(redis_url: str, backend: RedisBackend) -> None:
    window_s = _window_ending_soon(backend.now())
    here = QuotaPolicy("api", QuotaLimits(requests=1, window_s=window_s), backend)
    first = here.admit()
    assert first.allowed
    answer = on_skewed_host(redis_url, +SKEW_S, "admit", requests=1, window_s=window_s)
    assert answer["granted"] is False, "a host 100 s ahead opened the next window early and spent it"
    assert answer["window_start"] == first.window_start
    assert here.usage().requests_used == 1


def test_a_host_ahead_does_not_end_the_breakers_cooldown_early(redis_url: str, backend: RedisBackend) -> None:
    limits = {"failure_threshold": 1, "cooldown_s": 60.0}
    here = BreakerPolicy("api", BreakerLimits(**limits), backend)  # type: ignore[arg-type]
    here.record(here.admit("failing-call"), success=False)
    assert here.state().status.value == "open"
    answer = on_skewed_host(redis_url, +SKEW_S, "probe", **limits)
    assert answer["granted"] is False, "a host 100 s ahead probed during the cooldown"
    assert here.state().status.value == "open"


def test_a_host_ahead_does_not_release_parked_work_early(redis_url: str, backend: RedisBackend) -> None:
    broker = StubBroker()
    broker.declare_queue("default")
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name="default", actor_name="work", args=(), kwargs={}, options={}
    )
    Retries(backend=backend).schedule(broker, message, 60)
    answer = on_skewed_host(redis_url, +SKEW_S, "release")
    assert answer["granted"] is False, "a host 100 s ahead released a job due in 60 s"

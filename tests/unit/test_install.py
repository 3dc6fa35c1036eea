"""``enrichment_actors.install(broker)``: the product's actors in an app's own worker process (deployment 2).

An app process (a fresh interpreter: this one has the product built already)
with its own Redis broker, its own Prometheus middleware and an actor of its
own calls ``install`` twice. The product's three actors are then declared
on the app's broker, which stays Dramatiq's global broker; the app's actor is
untouched; every middleware the app had is still there, in order, except
Dramatiq's ``Retries`` and ``Callbacks``, replaced in place by the product's;
the size limit, the job names in log lines and the product's metrics cover
only its actors, with no
second metrics server beside the app's; the Redis checks look at the
product's state Redis, not the app's broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_APP = """
import json, os
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.prometheus import Prometheus

broker = RedisBroker(url=os.environ["APP_BROKER_URL"])
broker.add_middleware(Prometheus())
dramatiq.set_broker(broker)

@dramatiq.actor(max_retries=3, queue_name="app")
def app_job(n):
    return n

before = list(broker.middleware)
options = dict(app_job.options)

import enrichment_actors
from enrichment_actors.job_logs import JobLogContext
from enrichment_actors.message_limit import MessageSizeLimit
from enrichment_actors.prometheus import EnrichmentPrometheus
from enrichment_actors.redis_checks import RedisChecks

enrichment_actors.install(broker)
enrichment_actors.install(broker)  # again: nothing more
after = list(broker.middleware)
ours = [m for m in after if m not in before]
checks = next(m for m in after if isinstance(m, RedisChecks))
print(json.dumps({
    "global": dramatiq.get_broker() is broker,
    "actors": sorted(broker.actors),
    "app_actor": [broker.get_actor("app_job") is app_job, app_job.broker is broker, app_job.options == options],
    "kept": [type(m).__module__ + "." + type(m).__name__ for m in before if m in after],
    "replaced": [type(m).__module__ + "." + type(m).__name__ for m in before if m not in after],
    "order": [after.index(m) for m in before if m in after] == sorted(after.index(m) for m in before if m in after),
    "added": sorted(type(m).__name__ for m in ours),
    "size_limit": sorted(next(m for m in ours if isinstance(m, MessageSizeLimit)).actors),
    "job_logs": sorted(next(m for m in ours if isinstance(m, JobLogContext)).actors),
    "metrics": [(sorted(m.actors), m.forks, m.stock) for m in ours if isinstance(m, EnrichmentPrometheus)],
    "redis_checked": sorted(checks.clients()),
    "queues": sorted(broker.get_declared_queues()),
}))
"""


def test_install_puts_the_product_on_the_apps_broker_and_leaves_the_apps_own_alone(redis_url: str) -> None:
    app_broker = redis_url.rsplit("/", 1)[0] + "/3"  # the app's own Redis database; the product's state in /0
    env = {**os.environ, "APP_BROKER_URL": app_broker, "REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-c", _APP],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout)
    assert said["global"] is True
    assert said["actors"] == ["app_job", "enrich", "fetch_pois", "store_pois"]
    assert said["app_actor"] == [True, True, True]
    assert said["replaced"] == [
        "dramatiq.middleware.callbacks.Callbacks",
        "dramatiq.middleware.retries.Retries",
    ]
    assert "dramatiq.middleware.prometheus.Prometheus" in said["kept"] and said["order"] is True
    assert {"Retries", "Callbacks", "MessageSizeLimit", "EnrichmentPrometheus", "RedisChecks"} <= set(
        said["added"]
    )
    assert len(said["added"]) == len(set(said["added"])), "the second install added middleware again"
    assert said["size_limit"] == said["job_logs"] == ["enrich", "fetch_pois", "store_pois"]
    # The app's Prometheus serves the metrics and counts Dramatiq's stock ones; ours adds the enrichment ones.
    assert said["metrics"] == [[["enrich", "fetch_pois", "store_pois"], [], False]]
    assert said["redis_checked"] == ["state backend"]
    assert said["queues"] == ["app", "enrichment"]


_ELSEWHERE = """
import dramatiq
from dramatiq.brokers.stub import StubBroker
import enrichment_actors
enrichment_actors.install(StubBroker())
try:
    enrichment_actors.install(StubBroker())
except RuntimeError as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def test_install_on_a_second_broker_says_the_product_is_on_another(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _ELSEWHERE], cwd=REPO, env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("AlreadyInstalled: The product is already on a StubBroker in this process")

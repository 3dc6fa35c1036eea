"""The sender app code imports (``from enrichment_actors import enrich``): it checks, then enqueues on the product's queue.

A job the workers would refuse raises :class:`~enrichment_actors.InvalidJob`
with the one-line reason the CLI and the actor give, before anything is
enqueued. Sending needs only where the queue is: a process without
``OVERPASS_CONTACT`` (and with a worker setting that the workers would
refuse) sends to the test Redis, and the message is there, on the product's
queue, while Dramatiq's global broker stays unset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dramatiq
import pytest

from enrichment_actors import InvalidJob, enrich
from enrichment_actors.jobs import validate_enrich, validate_job
from enrichment_actors.sender import Sender

REPO = Path(__file__).resolve().parents[2]
BBOX = {"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        ({"bbox": {**BBOX, "south": 48.87}}, "must be below north"),
        ({"bbox": [48.85, 2.29, 48.86, 2.30]}, "bbox must be"),
        ({"bbox": BBOX, "tags": "amenity"}, "must be a list"),
        ({"bbox": BBOX, "force": "yes"}, "force must be true or false, got str."),
    ],
    ids=["south-above-north", "list-as-bbox", "tags-as-text", "force-as-text"],
)
def test_an_invalid_job_raises_the_clis_one_line_reason_and_nothing_is_enqueued(
    job: dict[str, Any], reason: str, redis_client: Any
) -> None:
    with pytest.raises(InvalidJob) as raised:
        enrich.send(**job)
    message = str(raised.value)
    assert reason in message and "\n" not in message
    # The very check the workers make; for a box and tags, the one `enrichment enqueue` makes.
    with pytest.raises(InvalidJob, match="^" + _escaped(message) + "$"):
        validate_enrich((), job)
    if "force" not in job:
        with pytest.raises(InvalidJob, match="^" + _escaped(message) + "$"):
            validate_job(job["bbox"], job.get("tags"))
    for call in (
        lambda: enrich.check(**job),
        lambda: enrich.message(**job),
        lambda: enrich.send_with_options(kwargs=job, delay=1000),
    ):
        with pytest.raises(InvalidJob):
            call()
    assert redis_client.keys("*") == []  # nothing enqueued, no queue declared


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_message_is_what_the_actor_takes_on_the_products_queue() -> None:
    sender = Sender(broker=dramatiq.brokers.stub.StubBroker())

    @dramatiq.actor(broker=dramatiq.brokers.stub.StubBroker())
    def on_failure_of_app(message_data: Any, exception_data: Any) -> None: ...

    message = sender.message_with_options(
        kwargs={"bbox": BBOX, "tags": ["amenity"]}, on_failure=on_failure_of_app
    )
    assert (message.queue_name, message.actor_name) == ("enrichment", "enrich")
    assert message.kwargs == {"bbox": BBOX, "tags": ["amenity"]}
    assert message.options == {"on_failure": "on_failure_of_app"}
    assert sender.message(BBOX, ["shop"]).args == (BBOX, ["shop"])


# An app process: its own broker set as the global one, the product's sender used, no worker setting.
_APP = """
import json, sys
import dramatiq
from dramatiq.brokers.stub import StubBroker
app_broker = StubBroker()
dramatiq.set_broker(app_broker)
from enrichment_actors import enrich
message = enrich.send(bbox={"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}, tags=["amenity"])
delayed = enrich.send_with_options(kwargs={"bbox": {"south": 1, "west": 1, "north": 1.1, "east": 1.1}}, delay=60000)
import dramatiq.broker
print(json.dumps({
    "id": message.message_id, "delayed": delayed.message_id,
    "global": dramatiq.broker.global_broker is app_broker,
    "app": [sorted(app_broker.actors), sorted(app_broker.queues)],
    "actors": sorted(enrich.broker.actors),
}))
"""


def test_sending_needs_no_worker_setting_and_lands_on_the_products_queue(
    redis_url: str, redis_client: Any
) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"OVERPASS_CONTACT", "OVERPASS_URL", "DATABASE_URL", "STATE_BACKEND"}
    }
    # The public endpoint (the default) without a contact, and a quota the workers refuse: a worker would not start.
    env.update(REDIS_URL=redis_url, QUOTA_REQUESTS="abc")
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
    assert said["global"] is True, "the sender made its broker Dramatiq's global broker"
    assert said["app"] == [[], []], "the sender declared an actor or a queue on the app's broker"
    assert said["actors"] == [], "the sender declared an actor"
    queued = [dramatiq.Message.decode(raw) for raw in redis_client.hvals("dramatiq:enrichment.msgs")]
    assert [(m.message_id, m.actor_name, m.kwargs["tags"]) for m in queued] == [
        (said["id"], "enrich", ["amenity"])
    ]
    assert redis_client.llen("dramatiq:enrichment") == 1
    delayed = [dramatiq.Message.decode(raw) for raw in redis_client.hvals("dramatiq:enrichment.DQ.msgs")]
    assert [m.message_id for m in delayed] == [said["delayed"]]


def test_the_sender_reads_only_where_the_queue_is_and_the_job_limits() -> None:
    from enrichment_actors.settings import SettingsError, load_sender_settings

    settings = load_sender_settings(
        {"QUOTA_REQUESTS": "abc", "SEMAPHORE_LEASE_S": "1", "ENRICH_QUEUE": "poi", "ENRICH_MAX_TAGS": "3"}
    )
    assert (settings.queue, settings.max_tags, settings.broker) == ("poi", 3, "redis")
    with pytest.raises(
        SettingsError, match=r"^BROKER='kafka' is not valid: expected redis, rabbitmq or stub\.$"
    ):
        load_sender_settings({"BROKER": "kafka"})

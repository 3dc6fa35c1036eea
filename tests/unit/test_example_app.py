"""The example app (docs/examples/myapp) with the product beside it, on real brokers and real worker processes.

The app has its own broker (Redis or RabbitMQ), its own actor with retries
and an ``on_failure`` callback, a top-level ``middleware.py``, and sends
``enrich`` jobs from its own code (``send_jobs.py``) while its worker runs.
Each run starts the app's worker (``dramatiq myapp_tasks``), and in
deployment 1 the product's (``dramatiq enrichment_actors.worker:build``),
runs ``send_jobs.py`` in a process of its own with only the settings a
sender needs, and waits until the app's jobs are over and the enrichment
job's POIs are stored. The app's ledger (every attempt and callback of its
actors) and its dead letters must be those of the same app without the
product (``MYAPP_ENRICHMENT=off``), which are pinned first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis

from enrichment_actors.stub_overpass import StubOverpass
from tests.support import rabbitmq
from tests.support.workers import FAST_SETTINGS, REPO, WorkerProcesses, eventually

EXAMPLE = REPO / "docs" / "examples" / "myapp"
#: The box send_jobs.py enriches (south, west, north, east).
BOX = (48.85, 2.29, 48.86, 2.30)
#: The app's actors and its callback's ledger lines: what is compared (the product's actors leave lines too).
APP_LINES = ("charge ", "charge_failed ", "on_failure ")
#: What the app alone does: charge 1 declined twice then paid, charge 2 declined three times (its Retries'
#: max_retries=2, which the product's own settings, RETRY_MAX=3 in these tests, must not change).
APP_ALONE = Counter(
    {
        "charge retries=0 PaymentDeclined": 2,
        "charge retries=1 PaymentDeclined": 2,
        "charge retries=2 ok": 1,
        "charge retries=2 PaymentDeclined": 1,
        "charge_failed retries=0 ok": 5,
        "on_failure order=1 PaymentDeclined: order 1 declined": 2,
        "on_failure order=2 PaymentDeclined: order 2 declined": 3,
    }
)


@dataclass
class Outcome:
    """What the app can see of one run: its ledger, counted, and its dead letters."""

    ledger: Counter[str]
    #: (actor, retries) of each message dead-lettered on the app's queue.
    dead: list[tuple[str, int]]


@dataclass
class Servers:
    redis_url: str
    postgres_url: str
    stub: StubOverpass
    store: Any
    rabbitmq_url: str = ""

    def app_broker_url(self, kind: str) -> str:
        return self.rabbitmq_url if kind == "rabbitmq" else self.redis_url

    def product_env(self, kind: str) -> dict[str, str]:
        """Where the product's queue is: what a sender needs."""
        where = {"RABBITMQ_URL": self.rabbitmq_url} if kind == "rabbitmq" else {}
        return {"BROKER": kind, "REDIS_URL": self.redis_url, **where}

    def worker_env(self, kind: str) -> dict[str, str]:
        """What a worker running the product's actors needs besides (tests/support/workers.py adds the rest)."""
        return {
            **self.product_env(kind),
            "DATABASE_URL": self.postgres_url,
            "OVERPASS_URL": self.stub.interpreter_url,
        }

    def dead_letters(self, kind: str, queue: str) -> list[dramatiq.Message[Any]]:
        if kind == "rabbitmq":
            raw = rabbitmq.dead_letters(self.rabbitmq_url, queue)
        else:
            client = redis.Redis.from_url(self.redis_url)
            try:
                raw = client.hvals(f"dramatiq:{queue}.XQ.msgs")
            finally:
                client.close()
        return [dramatiq.Message.decode(body) for body in raw]

    def pois_in_box(self) -> int:
        south, west, north, east = BOX
        model = self.store.model
        return int(
            model.select().where(model.lat.between(south, north) & model.lon.between(west, east)).count()
        )

    def clean(self, kind: str) -> None:
        client = redis.Redis.from_url(self.redis_url)
        client.flushdb()
        client.close()
        if kind == "rabbitmq":
            rabbitmq.purge(self.rabbitmq_url, ("default", "enrichment"))
        self.store.ensure_schema()
        for table in (self.store.model, self.store.ledger.coverage, self.store.ledger.elements):
            table.delete().execute()


@pytest.fixture(scope="module")
def servers(redis_url: str, postgres_url: str) -> Iterator[Servers]:
    from enrichment_actors.store import PoiStore

    stub = StubOverpass(slots=2).start()
    store = PoiStore(postgres_url)
    yield Servers(redis_url, postgres_url, stub, store)
    store.close()
    stub.stop()


@pytest.fixture
def on(servers: Servers, request: pytest.FixtureRequest) -> Callable[[str], Servers]:
    """The servers, with RabbitMQ started first when the broker is ``rabbitmq``."""

    def pick(kind: str) -> Servers:
        if kind == "rabbitmq" and not servers.rabbitmq_url:
            servers.rabbitmq_url = request.getfixturevalue("rabbitmq_url")
        return servers

    return pick


def python_path() -> str:
    return os.pathsep.join([str(EXAMPLE), *filter(None, [os.environ.get("PYTHONPATH")])])


def run_app(servers: Servers, kind: str, enrichment: str, ledger: Path) -> tuple[Outcome, str]:
    """Run the app (and in deployment 1 the product's worker) on ``kind``; return what it saw and what it printed."""
    servers.clean(kind)
    app = {
        "MYAPP_BROKER_URL": servers.app_broker_url(kind),
        "MYAPP_ENRICHMENT": enrichment,
        "MYAPP_LEDGER": str(ledger),
        "PYTHONPATH": python_path(),
    }
    # Deployment 2: the app's worker runs the product's actors, so it needs the worker settings.
    installed = enrichment == "install"
    app_worker_env = {**app, **FAST_SETTINGS, **servers.worker_env(kind)} if installed else app
    workers = [WorkerProcesses(app_worker_env, module="myapp_tasks", threads=2, defaults={})]
    if enrichment == "send":
        workers.append(
            WorkerProcesses(servers.worker_env(kind), module="enrichment_actors.worker:build", threads=2)
        )
    try:
        for worker in workers:
            worker.start()
        # A sender's environment only: no OVERPASS_CONTACT, no DATABASE_URL (but for install, as its worker).
        sender = {"PATH": os.environ["PATH"], **app}
        sender.update(app_worker_env if installed else servers.product_env(kind))
        sent = subprocess.run(
            [sys.executable, "send_jobs.py"],
            check=False,
            cwd=EXAMPLE,
            env=sender,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        eventually(
            lambda: settled(servers, kind, ledger, enrichment),
            timeout_s=30,
            interval_s=0.2,
            message="the jobs to end",
        )
    finally:
        # Together: each takes a few seconds to shut down.
        stopping = [threading.Thread(target=worker.stop) for worker in workers]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
    return Outcome(app_ledger(ledger), app_dead(servers, kind)), sent.stdout


def app_ledger(ledger: Path) -> Counter[str]:
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    return Counter(line for line in lines if line.startswith(APP_LINES))


def app_dead(servers: Servers, kind: str) -> list[tuple[str, int]]:
    return sorted((m.actor_name, m.options.get("retries", 0)) for m in servers.dead_letters(kind, "default"))


def settled(servers: Servers, kind: str, ledger: Path, enrichment: str) -> bool:
    """The app's jobs are over (a charge paid, one dead, a callback per failure) and the POIs stored."""
    seen = app_ledger(ledger)
    failures = sum(n for line, n in seen.items() if line.startswith("charge ") and not line.endswith(" ok"))
    callbacks = sum(n for line, n in seen.items() if line.startswith("on_failure "))
    app_done = "charge retries=2 ok" in seen and app_dead(servers, kind) and failures == callbacks
    return bool(app_done) and (enrichment == "off" or servers.pois_in_box() > 0)


_alone: dict[str, Outcome] = {}


def alone(servers: Servers, kind: str, tmp_path: Path) -> Outcome:
    """The app without the product on ``kind`` (run once per broker)."""
    if kind not in _alone:
        _alone[kind], _ = run_app(servers, kind, "off", tmp_path / f"alone-{kind}.log")
    return _alone[kind]


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_the_app_alone_does_what_it_says(on: Callable[[str], Servers], kind: str, tmp_path: Path) -> None:
    outcome = alone(on(kind), kind, tmp_path)
    assert outcome.ledger == APP_ALONE
    # As last enqueued, before its third attempt: the broker keeps a dead letter as it was sent.
    assert outcome.dead == [("charge", 2)]


@pytest.mark.parametrize(
    ("kind", "enrichment"),
    [
        pytest.param("redis", "send", id="redis, deployment 1: the product's own worker beside the app's"),
        pytest.param("redis", "install", id="redis, deployment 2: one worker, install(broker)"),
        pytest.param(
            "rabbitmq", "send", id="rabbitmq, deployment 1: the app's worker running while it sends"
        ),
    ],
)
def test_with_the_product_the_app_acts_as_alone_and_enrichment_jobs_are_stored(
    on: Callable[[str], Servers], kind: str, enrichment: str, tmp_path: Path
) -> None:
    servers = on(kind)
    baseline = alone(servers, kind, tmp_path)
    outcome, printed = run_app(servers, kind, enrichment, tmp_path / "ledger.log")
    assert outcome == baseline
    assert servers.pois_in_box() > 0
    # Nothing of the product's was dead-lettered: no "undefined actor" on the app's worker, no bad job.
    assert servers.dead_letters(kind, "enrichment") == []
    # The job typed wrong was refused before it was sent, in one line.
    (refused,) = [line for line in printed.splitlines() if line.startswith("not sent: ")]
    assert "south" in refused

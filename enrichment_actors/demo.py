"""The demo: the main job end to end, on embedded defaults.

Run by ``enrichment demo`` (which fills in the defaults the user did not set):
starts the stand-in Overpass server unless ``OVERPASS_URL`` is set, runs a
worker in this process, enqueues jobs for a handful of real-world boxes
(one of them invalid, one crossing the antimeridian), waits for them and
prints what happened.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import time
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.stub import StubBroker

from enrichment_middleware.redaction import redact_url

from .job_logs import JobLogContext, install
from .metrics import Outcome, is_final, outcome_of, take_noted_outcome
from .runtime import current
from .settings import SettingsError, check_startable, load_settings
from .worker import start

BOXES: tuple[tuple[str, dict[str, float], list[str] | None], ...] = (
    (
        "Paris, Le Marais",
        {"south": 48.853, "west": 2.350, "north": 48.866, "east": 2.370},
        ["amenity", "shop=bakery"],
    ),
    ("Berlin, Mitte", {"south": 52.515, "west": 13.380, "north": 52.530, "east": 13.410}, None),
    (
        "Tokyo, Shibuya",
        {"south": 35.655, "west": 139.695, "north": 35.665, "east": 139.710},
        ["amenity", "shop"],
    ),
    ("New York, Midtown", {"south": 40.750, "west": -73.995, "north": 40.765, "east": -73.975}, None),
    ("Nairobi, CBD", {"south": -1.290, "west": 36.810, "north": -1.280, "east": 36.830}, ["amenity=bank"]),
    (
        "Taveuni, Fiji (across the antimeridian)",
        {"south": -16.90, "west": 179.90, "north": -16.70, "east": -179.95},
        None,
    ),
    ("An invalid box (south above north)", {"south": 10.0, "west": 0.0, "north": 9.0, "east": 1.0}, None),
)


class OutcomeTally(dramatiq.Middleware):
    """Counts outcomes as the metrics do, for the summary."""

    def __init__(self) -> None:
        self.final: collections.Counter[str] = collections.Counter()
        self.transient: collections.Counter[str] = collections.Counter()

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        outcome = outcome_of(message.actor_name, exception, failed=message.failed, noted=take_noted_outcome())
        if outcome is not None:
            tally = self.final if is_final(outcome, failed=message.failed) else self.transient
            tally[outcome.value] += 1


def main() -> int:
    # The summary is the point; Dramatiq's per-message tracebacks of the
    # failures the demo provokes on purpose are not.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dramatiq.worker").setLevel(logging.CRITICAL)
    try:
        runtime = start(check_startable(load_settings()))
    except SettingsError as exc:
        print(f"SettingsError: {exc}", file=sys.stderr)
        return 2
    for middleware in runtime.broker.middleware:
        if isinstance(middleware, JobLogContext):
            install(middleware)  # each warning names its job: [job ID box S,W,N,E]
    settings = runtime.settings
    stub = None
    stub_port = os.environ.get("ENRICHMENT_DEMO_STUB_PORT")
    if stub_port:
        from .stub_overpass import StubOverpass

        stub = StubOverpass(port=int(stub_port), latency_s=0.05, slots=settings.semaphore_permits).start()
        # Show the resilience paths too: one busy server (retried) and one
        # query too large for its timeout (split into four tiles).
        stub.script("504", "timeout-remark")
    quota = runtime.quota.policies[runtime.endpoint().policy]
    calls_before = quota.usage().requests_used

    enrich = runtime.broker.get_actor("enrich")
    tally = OutcomeTally()
    runtime.broker.middleware.insert(0, tally)
    worker = dramatiq.Worker(runtime.broker, worker_threads=8, worker_timeout=100)
    worker.start()
    started = time.monotonic()
    try:
        for name, bbox, tags in BOXES:
            print(f"enqueue  {name:<42} tags={tags or 'default'}")
            # The actor itself, not the app's sender (which would refuse the invalid box before
            # sending it): the demo shows the worker's own check and its dead letter.
            enrich.send(bbox=bbox, tags=tags)
        _wait_until_done(settings.queue, worker=worker)
        worker.join()
    finally:
        worker.stop()
        if stub is not None:
            stub.stop()
    elapsed = time.monotonic() - started

    calls = stub.stats().calls if stub is not None else quota.usage().requests_used - calls_before
    stored = runtime.store().count()
    print()
    print(f"Summary ({elapsed:.1f}s)")
    print(f"  jobs by final outcome : {_counts(tally.final)}")
    print(f"  retries and deferrals : {_counts(tally.transient) or 'none'}")
    print(
        f"  Overpass calls made   : {calls} ({'stand-in server' if stub else redact_url(settings.overpass_url)})"
    )
    print(f"  POIs stored           : {stored}")
    print(f"  data                  : {redact_url(settings.database_url)} (table pois)")
    print(f"  broker                : {settings.broker}")
    return _verdict(tally.final, stored=stored, calls=calls)


def _verdict(final: collections.Counter[str], *, stored: int, calls: int) -> int:
    """0 when POIs are held and the valid boxes were stored, or all fresh (a second run: no call, as promised)."""
    if final.get(Outcome.SUCCESS.value) and stored:
        return 0
    if final.get(Outcome.FRESH.value) and stored and not calls:
        print("  every tile was fresh: no call made (delete the demo database to start over)")
        return 0
    print("  no job stored POIs: see the warnings above")
    return 1


def _wait_until_done(queue: str, timeout_s: float = 120.0, *, worker: dramatiq.Worker | None = None) -> None:
    """Until nothing is queued, in ``worker``'s hands, parked or in a fair room: retried and deferred jobs
    wait in the parking lot, jobs behind others in the room.

    RabbitMQ's counts (AMQP tells ready messages only) leave out what the
    worker holds unacknowledged: ``worker.join()`` waits for that.
    """
    runtime = current()
    parking = runtime.retries.parking
    deadline = time.monotonic() + timeout_s

    def join() -> None:
        remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
        if isinstance(runtime.broker, StubBroker):
            runtime.broker.join(queue, fail_fast=False, timeout=remaining_ms)
        else:
            runtime.broker.join(queue, timeout=remaining_ms)
            if worker is not None:
                worker.join()

    def parked() -> int:
        # Deferred jobs wait in the parking lot; jobs behind others, in the endpoints' fair rooms
        # (a seat is held from the room's hand-on to the end of the job).
        in_rooms = sum(room.counts().held for room in runtime.fair.policies.values())
        return in_rooms + (0 if parking is None else parking.count())

    while time.monotonic() < deadline:
        join()
        if parked() == 0:
            # A released message is enqueued before it leaves the parking lot: the second join runs
            # it; if it was deferred again there (a permit still busy), it is parked again: go on.
            join()
            if parked() == 0:
                return
        time.sleep(0.1)


def _counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))


if __name__ == "__main__":
    sys.exit(main())

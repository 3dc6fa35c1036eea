"""Prometheus for the workers: Dramatiq's stock metrics made right, ours, and the fleet's shared state.

:class:`EnrichmentPrometheus` subclasses Dramatiq's ``Prometheus`` middleware.
Each worker process of ``dramatiq --processes N`` writes its counters to
multiprocess files in ``dramatiq_prom_db`` (those of dead processes cleared once per CLI start); one
exposition process, forked by the CLI, serves their sum on
``dramatiq_prom_host:dramatiq_prom_port`` (default ``0.0.0.0:9191``),
together with gauges that :class:`FleetCollector` reads from the shared
backend at scrape time, so every host reports the same fleet-wide truth.

``prometheus_client`` is imported only after process boot, once
``PROMETHEUS_MULTIPROC_DIR`` is set: imported earlier, it keeps its values in
memory and nothing reaches the exposition. Metric names live in
:mod:`enrichment_actors.metrics`.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import dramatiq
import redis
from dramatiq.common import current_millis, q_name
from dramatiq.middleware.prometheus import DB_PATH, HTTP_HOST, HTTP_PORT, Prometheus

from enrichment_middleware.backends.base import BackendUnavailable
from enrichment_middleware.deferral import Defer
from enrichment_middleware.policy.fair import FairPolicy
from enrichment_middleware.policy.pacing import PacingPolicy
from enrichment_middleware.policy.pause import PausePolicy
from enrichment_middleware.policy.quota import QuotaUsage

from . import metrics as m
from .metrics import Kind, MetricSpec, Outcome, final_label, is_final, outcome_of, take_noted_outcome
from .queues import QueuesUnreachable, queue_sizes
from .redis_checks import persistence_gauge, redis_clients
from .server_time import MS_PER_S

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric

    from enrichment_middleware.backends.base import Backend
    from enrichment_middleware.breaker import CircuitBreaker
    from enrichment_middleware.fair import FairAdmission
    from enrichment_middleware.pacing import Pacing
    from enrichment_middleware.pause import Pause
    from enrichment_middleware.quota import Quota
    from enrichment_middleware.retries import Retries
    from enrichment_middleware.semaphore import ConcurrencySemaphore

logger = logging.getLogger(__name__)

_MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


class EnrichmentPrometheus(Prometheus):
    """Dramatiq's Prometheus middleware, right for our actors, plus the enrichment metrics.

    Differences from the stock middleware: a retry is counted once, when the
    product's ``Retries`` schedules it (the stock one counts every enqueue of
    a message that was ever retried, so twice per retry); deferrals are
    neither errors nor retries; the delayed-messages gauge is decremented by
    the process that incremented it, so it never drifts below zero; every
    processed message adds one sample to ``enrichment_jobs_total``. Its
    after-hook must run after ``Retries``' (to see ``message.failed``):
    put it before ``Retries`` in the middleware list.

    Until process boot (or :meth:`start_recording`) every hook does nothing,
    so importing the product in app code or a test records nothing.

    Examples:
      >>> metrics = EnrichmentPrometheus()
      >>> broker.add_middleware(metrics, before=Retries)  # doctest: +SKIP
      >>> metrics.observe_overpass_call("ok", 0.8, endpoint="overpass-api.de", response_bytes=52_000)

    Parameters:
      db_path: directory of the multiprocess files; default ``dramatiq_prom_db``.
      host, port: where the exposition listens; default ``dramatiq_prom_host``
        and ``dramatiq_prom_port``.
      exposition: the function the CLI forks to serve the metrics (see
        :func:`serve`); None: no exposition process (an app's own Prometheus
        middleware serves the same multiprocess files).
      actors: the names of the actors whose messages are counted; None: every
        actor (the product's own broker). On an app's broker, only ours.
      stock: whether to record Dramatiq's stock message metrics (``dramatiq_*``)
        too; False when an app's own Prometheus middleware records them for
        every actor, ours included (they would be counted twice).
    """

    def __init__(
        self,
        *,
        db_path: str = DB_PATH,
        host: str = HTTP_HOST,
        port: int = HTTP_PORT,
        exposition: Callable[[], int] | None = None,
        actors: Collection[str] | None = None,
        stock: bool = True,
    ) -> None:
        super().__init__()
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.db_path = db_path
        self.host = host
        self.port = port
        self.exposition = exposition
        self.actors = None if actors is None else frozenset(actors)
        self.stock = stock
        self._recorders: _Recorders | None = None
        self._files_written = False

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [] if self.exposition is None else [self.exposition]

    @property
    def recording(self) -> bool:
        """Whether hooks record (after process boot or :meth:`start_recording`)."""
        return self._recorders is not None

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        claim_directory(self.db_path, launcher_identity())
        _enter_multiprocess_mode(self.db_path)
        import prometheus_client

        self.start_recording(prometheus_client.CollectorRegistry())
        self._files_written = True

    def start_recording(self, registry: CollectorRegistry) -> None:
        """Declare every worker metric on ``registry`` and start recording (tests call it directly)."""
        self._recorders = _Recorders(registry, stock=self.stock)
        # A success series that exists from the start lets increase() see the first success.
        for actor in m.STORING_ACTORS:
            self._recorders.jobs.labels(actor, Outcome.SUCCESS.value, m.FINAL_TRUE)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not self._files_written:
            return
        # The in-progress gauges of a process that is gone must not count.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), self.db_path)  # type: ignore[no-untyped-call]

    # --- What the actors report -----------------------------------------------------------------

    def observe_overpass_call(
        self, status: str, duration_s: float, *, endpoint: str, response_bytes: int | None = None
    ) -> None:
        """One Overpass call to ``endpoint`` (host[:port]): its classification (``ok`` or an error
        label), duration and, for an answer, its body size. No-op before boot."""
        r = self._recorders
        if r is None:
            return
        r.calls.labels(endpoint, status).inc()
        r.call_seconds.labels(status).observe(duration_s)
        if response_bytes is not None:
            r.response_bytes.observe(response_bytes)

    def count_pois_upserted(self, count: int) -> None:
        """``count`` POI rows were inserted or updated."""
        if self._recorders is not None:
            self._recorders.pois.inc(count)

    def count_pois_deleted(self, count: int) -> None:
        """``count`` POI rows left ``pois``: a tile fetched again no longer returned them."""
        if self._recorders is not None and count:
            self._recorders.pois_deleted.inc(count)

    def count_elements_dropped(self, count: int) -> None:
        """``count`` elements of an answer were unusable and left out (``ParsedResponse.dropped``)."""
        if self._recorders is not None and count:
            self._recorders.elements_dropped.inc(count)

    def count_osm_base_unusable(self) -> None:
        """An answer's ``timestamp_osm_base`` could not be read (:func:`~.coverage.ledger.read_osm_base`)."""
        if self._recorders is not None:
            self._recorders.osm_base_unusable.inc()

    # --- Message hooks --------------------------------------------------------------------------

    def _records(self, message: dramatiq.Message[Any] | dramatiq.MessageProxy) -> _Recorders | None:
        """The recorders when ``message`` is counted: after boot, and one of :attr:`actors`."""
        if self.actors is not None and message.actor_name not in self.actors:
            return None
        return self._recorders

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        r = self._records(message)
        if r is None:
            return
        take_noted_outcome()  # a note left by an earlier message must not be read as this one's
        r.in_progress.labels(*_labels(message)).inc()
        self.message_start_times[message.message_id] = current_millis()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        r = self._records(message)
        if r is None:
            return
        labels, started = self._finish(r, message)
        noted = None
        if started is not None:
            r.duration.labels(*labels).observe(current_millis() - started)
            noted = take_noted_outcome()
        if exception is not None and not isinstance(exception, Defer):
            r.errors.labels(*labels).inc()
            if not message.failed:
                r.retries.labels(*labels).inc()
        self._count_outcome(
            message, outcome_of(message.actor_name, exception, failed=message.failed, noted=noted)
        )

    def after_skip_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        # The stock middleware's hook is its after_process_message, keyword arguments and all.
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        r = self._records(message)
        if r is None:
            return
        self._finish(r, message)
        self._count_outcome(message, Outcome.SKIPPED)

    def _finish(self, r: _Recorders, message: dramatiq.MessageProxy) -> tuple[tuple[str, str], int | None]:
        """Count the message processed; end its in-progress gauge if this middleware started it
        (a message stopped by an earlier middleware never was). Returns its labels and start time."""
        labels = _labels(message)
        started = self.message_start_times.pop(message.message_id, None)
        if started is not None:
            r.in_progress.labels(*labels).dec()
        r.messages.labels(*labels).inc()
        return labels, started

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        r = self._records(message)
        if r is not None:
            r.rejects.labels(*_labels(message)).inc()

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        # Retries are counted in after_process_message. A delayed message
        # leaves worker memory by being enqueued again, undelayed, by the
        # consumer that held it: the same process, so the gauge pairs up.
        r = self._records(message)
        if r is None or delay:
            return
        try:
            self.delayed_messages.remove(message.message_id)
        except KeyError:
            return
        r.delayed.labels(*_labels(message)).dec()

    def before_delay_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        r = self._records(message)
        if r is None:
            return
        self.delayed_messages.add(message.message_id)
        r.delayed.labels(*_labels(message)).inc()

    def _count_outcome(self, message: dramatiq.MessageProxy, outcome: Outcome | None) -> None:
        if outcome is not None and self._recorders is not None:
            final = final_label(is_final(outcome, failed=message.failed))
            self._recorders.jobs.labels(message.actor_name, outcome.value, final).inc()


def _labels(message: dramatiq.Message[Any] | dramatiq.MessageProxy) -> tuple[str, str]:
    # Canonical queue name: a message delayed on "q.DQ" comes back on "q".
    return q_name(message.queue_name), message.actor_name


class _Unrecorded:
    """A metric not recorded: Dramatiq's stock ones when the app's Prometheus middleware records them."""

    def labels(self, *values: str) -> _Unrecorded:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


class _Recorders:
    """The worker metrics, declared on one registry from their specs (``stock``: Dramatiq's too)."""

    def __init__(self, registry: CollectorRegistry, *, stock: bool = True) -> None:
        self.jobs: Counter = _declare(m.JOBS, registry)
        self.calls: Counter = _declare(m.OVERPASS_CALLS, registry)
        self.call_seconds: Histogram = _declare(m.OVERPASS_CALL_SECONDS, registry)
        self.response_bytes: Histogram = _declare(m.OVERPASS_RESPONSE_BYTES, registry)
        self.pois: Counter = _declare(m.POIS_UPSERTED, registry)
        self.pois_deleted: Counter = _declare(m.POIS_DELETED, registry)
        self.elements_dropped: Counter = _declare(m.ELEMENTS_DROPPED, registry)
        self.osm_base_unusable: Counter = _declare(m.OSM_BASE_UNUSABLE, registry)
        self.messages: Counter = _declare(m.MESSAGES, registry)
        self.errors: Counter = _declare(m.MESSAGE_ERRORS, registry)
        self.retries: Counter = _declare(m.MESSAGE_RETRIES, registry)
        self.rejects: Counter = _declare(m.MESSAGE_REJECTS, registry)
        self.in_progress: Gauge = _declare(m.MESSAGES_IN_PROGRESS, registry)
        self.delayed: Gauge = _declare(m.DELAYED_MESSAGES_IN_PROGRESS, registry)
        self.duration: Histogram = _declare(m.MESSAGE_DURATION, registry)
        if not stock:
            self.messages = self.errors = self.retries = self.rejects = _Unrecorded()  # type: ignore[assignment]
            self.in_progress = self.delayed = self.duration = _Unrecorded()  # type: ignore[assignment]


def _declare(spec: MetricSpec, registry: CollectorRegistry) -> Any:
    import prometheus_client as prom

    if spec.kind is Kind.COUNTER:
        return prom.Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind is Kind.HISTOGRAM:
        return prom.Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)
    mode: Any = spec.multiprocess_mode or "all"
    return prom.Gauge(spec.name, spec.help, spec.labels, registry=registry, multiprocess_mode=mode)


# --- The multiprocess directory -------------------------------------------------------------------


def launcher_identity() -> str:
    """Who started this process: its parent's PID and start time (the ``dramatiq`` CLI for a worker).

    The start time tells a new CLI from an old one that had the same PID.
    """
    parent = os.getppid()
    try:
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "unknown"
    return f"{parent}:{started}"


def claim_directory(directory: str, owner: str) -> bool:
    """Delete the multiprocess files of dead processes from ``directory``, once per ``owner``.

    Every worker process of one CLI start calls this at boot with the same
    owner; the first (under a file lock) clears and records the owner, the
    others find it recorded and leave the files that the first may already
    be writing. Only files whose process is gone are deleted: another fleet
    running on this host keeps its live counters. Returns whether this call cleared.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        marker = path / ".owner"
        try:
            if marker.read_text() == owner:
                return False
        except FileNotFoundError:
            pass
        stale = [file for file in path.glob("*.db") if not _writer_alive(file)]
        for file in stale:
            file.unlink(missing_ok=True)
        marker.write_text(owner)
        if stale:
            logger.info("Deleted %d metrics files of an earlier run from %s.", len(stale), directory)
        return True


def _writer_alive(file: Path) -> bool:
    """Whether the process that writes ``file`` (``prometheus_client`` names it ``<kind>_<pid>.db``) runs."""
    pid = file.stem.rsplit("_", 1)[-1]
    if not pid.isdigit():
        return True  # not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _enter_multiprocess_mode(directory: str) -> None:
    """Point ``prometheus_client`` at ``directory``; repair it if something imported it too early."""
    for name in _MULTIPROC_ENV:
        os.environ[name] = directory
    values: Any = sys.modules.get("prometheus_client.values")
    if values is not None and values.ValueClass is values.MutexValue:
        logger.error(
            "prometheus_client was imported before process boot without PROMETHEUS_MULTIPROC_DIR, so its "
            "metrics would stay in this process's memory. Switching it to multiprocess mode now; metrics "
            "created before this point are not exported. Do not import prometheus_client at module level."
        )
        values.ValueClass = values.get_value_class()


# --- The fleet's shared state ---------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerReading:
    """One circuit breaker as the shared backend holds it."""

    policy: str
    status: str
    failures: int


@dataclass(frozen=True)
class PermitReading:
    """One semaphore: leases held and permits in effect."""

    policy: str
    in_use: int
    limit: int


@dataclass(frozen=True)
class SourceReading:
    """One source of jobs at one endpoint's fair room: jobs waiting, calls this window, its cap.

    Parameters:
      policy: the endpoint's policy name.
      source: the source's label (``other`` for the sources not configured, summed).
      waiting, calls: jobs waiting, calls made in the current quota window.
      cap: its cap of calls per window, or None.
    """

    policy: str
    source: str
    waiting: int
    calls: int
    cap: int | None = None


def read_sources(rooms: Mapping[str, FairPolicy]) -> tuple[SourceReading, ...]:
    """Each room's sources: the configured ones by name (with zeros), the others summed as ``other``."""
    readings = []
    for name, room in sorted(rooms.items()):
        counts = room.counts()
        known = {*room.limits.weights, *room.limits.caps}
        waiting: dict[str, int] = dict.fromkeys(known, 0)
        calls: dict[str, int] = dict.fromkeys(known, 0)
        for seen, into in ((counts.waiting, waiting), (counts.calls, calls)):
            for source, n in seen.items():
                label = source if source in known else m.OTHER_SOURCE
                into[label] = into.get(label, 0) + n
        for source in sorted(waiting.keys() | calls.keys()):
            readings.append(
                SourceReading(
                    name, source, waiting.get(source, 0), calls.get(source, 0), room.limits.caps.get(source)
                )
            )
    return tuple(readings)


@dataclass(frozen=True)
class EndpointReading:
    """One endpoint's pause, hold and pacing, by its policy name.

    Parameters:
      policy: the policy name the endpoint's pause and pacing share.
      paused: a pause is in force (after a 429).
      pause_remaining_s: seconds left of it (0 when none).
      held: a hold is in force (after a 406 or 403).
      pacing_interval_s: seconds between call starts now (0: off); None without a pacing policy.
    """

    policy: str
    paused: bool = False
    pause_remaining_s: float = 0.0
    held: bool = False
    pacing_interval_s: float | None = None


@dataclass(frozen=True)
class FleetReading:
    """Everything the fleet gauges show, read at one moment.

    Parameters:
      quotas: each quota's current window.
      breakers, permits: each breaker and semaphore.
      parked: messages parked in the backend.
      queued: messages in each broker queue (waiting, delayed, in flight).
      persistent: ``enrichment_state_backend_persistent`` (None: no Redis in use).
      endpoints: each endpoint's pause, hold and pacing.
      orphans: parked messages ever found due without a payload.
      sources: each endpoint's sources (fair room).
    """

    quotas: tuple[QuotaUsage, ...]
    breakers: tuple[BreakerReading, ...]
    permits: tuple[PermitReading, ...]
    parked: int
    queued: tuple[tuple[str, int], ...]
    persistent: float | None = None
    endpoints: tuple[EndpointReading, ...] = ()
    orphans: int = 0
    sources: tuple[SourceReading, ...] = ()


def read_endpoints(
    pauses: Mapping[str, PausePolicy], pacings: Mapping[str, PacingPolicy]
) -> tuple[EndpointReading, ...]:
    """Each endpoint's pause and hold (one read each) and pacing interval, from the shared backend.

    ``pauses`` and ``pacings`` are the policies by name (an endpoint's pause
    and pacing share its name).
    """
    readings = []
    for name in sorted(set(pauses) | set(pacings)):
        paused, remaining, held = False, 0.0, False
        if name in pauses:
            status = pauses[name].status()
            paused, remaining, held = status.paused, status.remaining_s, status.held
        interval = float(pacings[name].status().interval_s) if name in pacings else None
        readings.append(EndpointReading(name, paused, remaining, held, interval))
    return tuple(readings)


class FleetState(Protocol):
    """What :func:`read_fleet` reads: the broker, the backend and the policies (a :class:`~.runtime.Runtime`)."""

    @property
    def broker(self) -> dramatiq.Broker: ...
    @property
    def backend(self) -> Backend: ...
    @property
    def quota(self) -> Quota: ...
    @property
    def breaker(self) -> CircuitBreaker: ...
    @property
    def semaphore(self) -> ConcurrencySemaphore: ...
    @property
    def retries(self) -> Retries: ...
    @property
    def pause(self) -> Pause: ...
    @property
    def pacing(self) -> Pacing: ...
    @property
    def fair(self) -> FairAdmission: ...


def read_fleet(runtime: FleetState) -> FleetReading:
    """Read the fleet gauges from the shared backend and the broker; raises when they cannot be reached."""
    broker = runtime.broker
    try:
        queued = queue_sizes(broker)  # Redis: waiting, delayed, in flight; RabbitMQ: waiting, delayed
    except QueuesUnreachable as exc:
        # The broker is down, not the shared state: the fleet gauges still
        # tell the truth, only the queue sizes are missing.
        logger.warning("Queue sizes left out of the fleet gauges: %s", exc)
        queued = ()
    redis_servers = redis_clients(broker, runtime.backend)
    return FleetReading(
        quotas=tuple(policy.usage() for policy in runtime.quota.policies.values()),
        breakers=tuple(
            BreakerReading(name, state.status.value, state.failures)
            for name, state in ((name, policy.state()) for name, policy in runtime.breaker.policies.items())
        ),
        permits=tuple(
            PermitReading(name, policy.in_use(), policy.effective_permits())
            for name, policy in runtime.semaphore.policies.items()
        ),
        parked=runtime.retries.parking.count() if runtime.retries.parking is not None else 0,
        queued=queued,
        persistent=persistence_gauge(redis_servers.values()) if redis_servers else None,
        endpoints=read_endpoints(runtime.pause.policies, runtime.pacing.policies),
        orphans=runtime.retries.parking.orphans() if runtime.retries.parking is not None else 0,
        sources=read_sources(runtime.fair.policies),
    )


#: Errors that mean "the shared state is unreachable", logged without a traceback.
_UNREACHABLE = (BackendUnavailable, redis.exceptions.RedisError, OSError)


class FleetCollector:
    """A ``prometheus_client`` collector of the fleet gauges, read at scrape time with a bounded wait.

    A reading younger than ``max_age_s`` is reused, so several scrapers cost
    one read. A scrape waits at most ``timeout_s`` for a fresh one (reads run
    in one helper thread, never more than one at a time); when the backend is
    slow or down it exports ``enrichment_state_backend_up 0`` and no other
    fleet gauge, rather than failing or hanging, and logs why.

    Examples:
      >>> registry.register(FleetCollector(lambda: read_fleet(runtime)))  # doctest: +SKIP

    Parameters:
      read: returns a :class:`FleetReading`; raises when the state is unreachable.
      max_age_s: how long a reading is reused (default 2 s).
      timeout_s: how long a scrape waits for a reading (default 2 s).
      clock: monotonic seconds (tests inject one).
    """

    def __init__(
        self,
        read: Callable[[], FleetReading],
        *,
        max_age_s: float = 2.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="fleet-reading"
        )
        self._pending: concurrent.futures.Future[None] | None = None
        self._last: FleetReading | None = None
        self._last_at = 0.0
        self._up = True

    def reading(self) -> FleetReading | None:
        """A fresh enough reading, or ``None`` when the state could not be read in time."""
        with self._lock:
            if self._last is not None and self._clock() - self._last_at < self.max_age_s:
                return self._last
            if self._pending is None or self._pending.done():
                self._pending = self._executor.submit(self._refresh)
            pending = self._pending
        try:
            pending.result(timeout=self.timeout_s)
        except TimeoutError:
            self._went_down(f"no answer within {self.timeout_s:g}s", None)
            return None
        except Exception as exc:
            self._went_down(f"{type(exc).__name__}: {exc}", exc)
            return None
        with self._lock:
            if not self._up:
                logger.info("The shared state answers again; fleet gauges are back.")
            self._up = True
            return self._last

    def _refresh(self) -> None:
        reading = self._read()
        with self._lock:
            self._last, self._last_at = reading, self._clock()

    def _went_down(self, problem: str, exc: BaseException | None) -> None:
        with self._lock:
            was_up, self._up = self._up, False
        if exc is not None and not isinstance(exc, _UNREACHABLE):
            # Not unreachability: a bug of ours. Say so at every scrape.
            logger.error(
                "Reading the fleet gauges failed (%s); exporting state_backend_up 0.", problem, exc_info=exc
            )
        elif was_up:
            logger.warning(
                "The shared state (Redis) is unreachable (%s): exporting %s 0 without the fleet gauges "
                "until it answers. Check REDIS_URL and the server.",
                problem,
                m.STATE_BACKEND_UP.name,
            )
        else:
            logger.debug("The shared state is still unreachable (%s).", problem)

    def describe(self) -> Iterator[Metric]:
        return _families(None, with_samples=False)

    def collect(self) -> Iterator[Metric]:
        return _families(self.reading(), with_samples=True)


def _families(reading: FleetReading | None, *, with_samples: bool) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    def family(spec: MetricSpec, samples: Iterable[tuple[tuple[str, ...], float]]) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        for labels, value in samples if with_samples else ():
            gauge.add_metric(list(labels), value)
        return gauge

    yield family(m.STATE_BACKEND_UP, [((), 0.0 if reading is None else 1.0)])
    if reading is None:
        if not with_samples:
            yield from (family(spec, ()) for spec in m.FLEET_METRICS if spec is not m.STATE_BACKEND_UP)
        return
    persistent = () if reading.persistent is None else [((), reading.persistent)]
    yield family(m.STATE_BACKEND_PERSISTENT, persistent)
    yield family(
        m.BREAKER_STATE,
        [
            ((b.policy, state), float(b.status == state))
            for b in reading.breakers
            for state in m.BREAKER_STATES
        ],
    )
    yield family(m.BREAKER_FAILURES, [((b.policy,), b.failures) for b in reading.breakers])
    yield family(m.PERMITS_IN_USE, [((p.policy,), p.in_use) for p in reading.permits])
    yield family(m.PERMITS_LIMIT, [((p.policy,), p.limit) for p in reading.permits])
    yield family(m.SOURCE_WAITING, [((r.policy, r.source), r.waiting) for r in reading.sources])
    yield family(m.SOURCE_CALLS, [((r.policy, r.source), r.calls) for r in reading.sources])
    yield family(m.SOURCE_CAP, [((r.policy, r.source), r.cap) for r in reading.sources if r.cap is not None])
    used, limit, left = [], [], []
    for q in reading.quotas:
        for resource, spent, cap, remaining in (
            (m.REQUESTS, q.requests_used, q.requests_limit, q.requests_left),
            (m.BYTES, q.bytes_used, q.bytes_limit, q.bytes_left),
            # Server time: the quota counts ms, the gauges say seconds.
            (m.SERVER_SECONDS, q.cost_used / MS_PER_S, q.cost_limit / MS_PER_S, _per_s(q.cost_left)),
        ):
            used.append(((q.name, resource), float(spent)))
            if remaining is not None:
                limit.append(((q.name, resource), float(cap)))
                left.append(((q.name, resource), float(remaining)))
    yield family(m.QUOTA_USED, used)
    yield family(m.QUOTA_LIMIT, limit)
    yield family(m.QUOTA_LEFT, left)
    yield family(
        m.QUOTA_SERVER_SECONDS_PER_CALL, [((q.name,), q.cost_per_request / MS_PER_S) for q in reading.quotas]
    )
    yield family(m.QUOTA_WINDOW_START, [((q.name,), q.window_start) for q in reading.quotas])
    yield family(m.QUOTA_WINDOW_END, [((q.name,), q.window_end) for q in reading.quotas])
    yield family(m.PARKED_JOBS, [((), reading.parked)])
    yield family(m.PARKED_ORPHANS, [((), reading.orphans)])
    yield family(m.ENDPOINT_PAUSED, [((e.policy,), float(e.paused)) for e in reading.endpoints])
    yield family(m.ENDPOINT_PAUSE_REMAINING, [((e.policy,), e.pause_remaining_s) for e in reading.endpoints])
    yield family(m.ENDPOINT_HELD, [((e.policy,), float(e.held)) for e in reading.endpoints])
    yield family(
        m.PACING_INTERVAL,
        [((e.policy,), e.pacing_interval_s) for e in reading.endpoints if e.pacing_interval_s is not None],
    )
    yield family(m.QUEUE_MESSAGES, [((queue,), count) for queue, count in reading.queued])


# --- The exposition -------------------------------------------------------------------------------


class _MetricsHandler(BaseHTTPRequestHandler):
    registry: CollectorRegistry

    def do_GET(self) -> None:
        import prometheus_client

        try:
            output = prometheus_client.generate_latest(self.registry)
        except Exception:
            logger.exception("Could not export the metrics; answering 500.")
            self.send_error(500, "Metrics export failed: see the exposition process's log.")
            return
        self.send_response(200)
        self.send_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(output)))
        self.end_headers()
        self.wfile.write(output)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(format, *args)


def _per_s(ms: int | None) -> float | None:
    return None if ms is None else ms / MS_PER_S


def make_exposition_server(registry: CollectorRegistry, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) that answers every GET with ``registry`` in the text format."""
    handler = type("MetricsHandler", (_MetricsHandler,), {"registry": registry})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(runtime: FleetState, middleware: EnrichmentPrometheus, queue: str) -> int:
    """Serve the workers' files plus the fleet gauges of ``runtime`` until SIGTERM (the exposition process).

    :func:`enrichment_actors.worker.serve_metrics`, which the CLI forks,
    builds the runtime and calls this.
    """
    _enter_multiprocess_mode(middleware.db_path)
    import prometheus_client
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=middleware.db_path)  # type: ignore[no-untyped-call]
    # This process imports no actor module (the CLI forks it before, and it
    # loads only this function), so its broker knows no queue until told.
    runtime.broker.declare_queue(queue)
    registry.register(FleetCollector(lambda: read_fleet(runtime)))
    try:
        server = make_exposition_server(registry, middleware.host, middleware.port)
    except OSError as exc:
        logger.error(
            "Cannot serve metrics on %s:%d (%s). Set dramatiq_prom_port to a free port.",
            middleware.host,
            middleware.port,
            exc,
        )
        return 1
    logger.info("Serving metrics on http://%s:%d/metrics.", middleware.host, middleware.port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0

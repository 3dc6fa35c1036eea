"""Server time: what the quota charged against what the stand-in server measured, over calls of mixed cost.

A product fleet (2 processes x 8 threads, 4 permits) runs ``enrich`` jobs
against the stand-in, scripted with calls of mixed server time in turn: a
fast answer, answers held 0.2 s and 0.8 s before their status line, a 429
and a runtime-error remark (the job is split in quarters), each after the
stand-in's latency; retries and a split job's parts take the next outcomes,
then plain answers. The product charges each call's server
time (request sent to status line, :mod:`enrichment_actors.server_time`)
to the quota's ``cost`` counter in Redis, in whole milliseconds rounded up;
the stand-in records its own time per call, from the request received to
the status line sent. The figure is their ratio over the whole run, once
every job is stored and nothing is in flight.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import redis

from enrichment_actors.overpass_endpoints import endpoint_name, policy_name
from enrichment_actors.stub_overpass import StubOverpass
from tests.support.workers import FAST_SETTINGS, WorkerProcesses

from .fleet import grid_boxes, send, sender
from .throughput import POIS_PER_JOB, TAGS, Environment, product_env, reset

#: Each call's latency at the stand-in, before its outcome.
LATENCY_S = 0.1
#: The outcomes the calls take in turn, one turn per job (then plain answers).
MIXED = ("ok", "stall:0.2", "stall:0.8", "429", "timeout-remark")
PERMITS = 4
#: One quota window for the whole run (three years), so the counter read back holds every call.
WINDOW_S = 100_000_000
ORIGIN = (-40.0, 100.0)


@dataclass
class ServerTimeRun:
    jobs: int
    calls: int
    served: dict[str, int]
    #: The stand-in's own measure, summed and by outcome (seconds).
    spent_s: float
    spent_by_outcome: dict[str, float]
    #: What the quota's cost counter holds (seconds).
    charged_s: float
    #: Jobs still queued or parked at the end (0 unless the run hit its cap), and dead-lettered.
    pending: int
    dead: int
    dead_reasons: list[str]
    elapsed_s: float

    @property
    def ratio(self) -> float:
        return self.charged_s / self.spent_s if self.spent_s else float("nan")

    @property
    def over_per_call_ms(self) -> float:
        return (self.charged_s - self.spent_s) / self.calls * 1000 if self.calls else 0.0


def _pending(client: redis.Redis[bytes], env: Environment) -> int:
    """Messages in any queue (waiting, delayed or being processed) and jobs parked."""
    from enrichment_middleware.backends.redis import RedisBackend
    from enrichment_middleware.policy.parking import ParkingLot

    queued = sum(
        int(client.hlen(key))
        for key in client.scan_iter(match="dramatiq:*.msgs")
        if b".XQ." not in key  # dead letters are done
    )
    parked = ParkingLot(RedisBackend.from_url(env.redis_url, namespace="enrichment")).count()
    return queued + parked


def _reason(line: str) -> str:
    """A dead-letter log line without its process, thread and message id (a part of a split job
    at the smallest tile, ENRICH_MIN_TILE_DEG, that times out again is dead-lettered)."""
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "ID", line.rsplit("] ", 1)[-1].strip())
    return text if len(text) <= 160 else text[: text.rfind(" (", 0, 160)] + " ..."


def _charged_s(env: Environment, policy: str) -> float:
    from enrichment_actors.server_time import MS_PER_S
    from enrichment_middleware.backends.redis import RedisBackend
    from enrichment_middleware.policy.quota import QuotaLimits, QuotaPolicy

    backend = RedisBackend.from_url(env.redis_url, namespace="enrichment")
    usage = QuotaPolicy(policy, QuotaLimits(requests=-1, window_s=WINDOW_S), backend).usage()
    return usage.cost_used / MS_PER_S


def measure(env: Environment, *, jobs: int, cap_s: float = 120.0) -> ServerTimeRun:
    """Run ``jobs`` jobs, the calls scripted with :data:`MIXED` in turn, and compare the two measures."""
    reset(env)
    with StubOverpass(latency_s=LATENCY_S, pois_per_box=POIS_PER_JOB) as stub:
        stub.script(*(MIXED * (jobs // len(MIXED) + 1))[:jobs])
        # The stand-in's endpoint, as the workers key its quota.
        policy = policy_name(endpoint_name(stub.interpreter_url))
        fleet_env = {
            **FAST_SETTINGS,
            **product_env(
                env,
                stub,
                semaphore_permits=PERMITS,
                quota_window_s=WINDOW_S,
                quota_server_s=1_000_000,
            ),
            "dramatiq_worker_timeout": "100",
        }
        client = redis.Redis.from_url(env.redis_url)
        started = time.monotonic()
        with WorkerProcesses(fleet_env, processes=2, threads=8, defaults={}) as fleet:
            broker = sender(env.redis_url)
            send(
                broker,
                "enrichment",
                "enrich",
                ({"bbox": box, "tags": TAGS} for box in grid_boxes(jobs, origin=ORIGIN)),
            )
            broker.close()
            quiet_since = None
            while time.monotonic() - started < cap_s:
                idle = stub.stats().in_flight == 0 and _pending(client, env) == 0
                if not idle:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= 1.0:
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            time.sleep(0.5)  # the last charges land as their calls end
            pending = _pending(client, env)
            if pending:
                print(f"  server time: {pending} jobs still pending after {cap_s:.0f} s\n{fleet.tail(10)}")
            dead = sum(int(client.hlen(key)) for key in client.scan_iter(match="dramatiq:*.XQ.msgs"))
            reasons = sorted({_reason(line) for line in fleet.lines if "ead-letter" in line})
        client.close()
        stats = stub.stats()
        by_outcome: dict[str, float] = {}
        for request in stub.requests:
            if request.path == "/api/interpreter" and request.server_s is not None:
                by_outcome[request.outcome] = by_outcome.get(request.outcome, 0.0) + request.server_s
    return ServerTimeRun(
        jobs=jobs,
        calls=stats.calls,
        served=dict(stats.served),
        spent_s=stats.server_s,
        spent_by_outcome=dict(by_outcome),
        charged_s=_charged_s(env, policy),
        pending=pending,
        dead=dead,
        dead_reasons=reasons,
        elapsed_s=elapsed,
    )

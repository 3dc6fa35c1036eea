"""Where the admission's time goes, per call: each middleware's hooks, and the Redis round trips among them.

The product is built in a fresh interpreter on the in-process stub broker,
as :mod:`tests.bench.admission` builds it, so every command that reaches
Redis is the gates'. Each of ``calls`` ``fetch_pois`` deliveries passes the
broker's before-hooks, reports its answer and gives its holds back early as
the actor does, then passes the after-hooks; each middleware's hooks are
timed (wall clock, one thread on an otherwise idle machine), and so is each
send to Redis and its reply. The CPU they take is counted too: this
process's (``time.process_time``) in the hooks and in those sends and
replies, and the Redis server's (``INFO cpu``) over the calls. The
middleware overhead bench compares whole fleets, whose CPUs are all busy;
this says what of a call's cost is the gates' own, against which the target
(full / bare >= 0.95) allows ``0.05 / 0.95`` of a bare job's CPU.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .admission import run_child, stub_broker_env

_CHILD = """
import collections, json, os, sys, time
import redis
import redis.connection

spent = collections.Counter()
cpu = collections.Counter()
trips = [0]
send = redis.connection.AbstractConnection.send_packed_command
read = redis.connection.AbstractConnection.read_response


def timed_send(self, command, check_health=True):
    trips[0] += 1
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        return send(self, command, check_health)
    finally:
        spent["redis"] += time.perf_counter() - started
        cpu["redis"] += time.process_time() - started_cpu


def timed_read(self, *args, **kwargs):
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        return read(self, *args, **kwargs)
    finally:
        spent["redis"] += time.perf_counter() - started
        cpu["redis"] += time.process_time() - started_cpu


def server_cpu_s():
    info = redis.Redis.from_url(os.environ["REDIS_URL"]).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


redis.connection.AbstractConnection.send_packed_command = timed_send
redis.connection.AbstractConnection.read_response = timed_read

from dramatiq.broker import MessageProxy

from enrichment_actors.settings import check_startable, load_settings
from enrichment_actors.worker import start
from enrichment_middleware import release_permit_early
from enrichment_middleware.usage import charge

runtime = start(check_startable(load_settings()))
broker = runtime.broker
for middleware in broker.middleware:
    for hook in ("before_process_message", "after_process_message"):
        original = getattr(middleware, hook)

        def wrapped(*args, _original=original, _name=type(middleware).__name__, **kwargs):
            started, started_cpu = time.perf_counter(), time.process_time()
            try:
                return _original(*args, **kwargs)
            finally:
                spent["hook " + _name] += time.perf_counter() - started
                cpu["hooks"] += time.process_time() - started_cpu

        setattr(middleware, hook, wrapped)

fetch_pois = broker.get_actor("fetch_pois")
calls = int(sys.argv[1])
for index in range(calls + 20):
    if index == 20:  # the first ones load the scripts and warm the connections
        spent.clear()
        cpu.clear()
        trips[0] = 0
        server_began = server_cpu_s()
        began = time.perf_counter()
    box = {"south": 10.0 + index * 0.01, "west": 10.0, "north": 10.005 + index * 0.01, "east": 10.005}
    message = MessageProxy(fetch_pois.message(bbox=box, tags=["amenity"]))
    broker.emit_before("process_message", message)
    charge(bytes=20_000, cost=150)
    started, started_cpu = time.perf_counter(), time.process_time()
    release_permit_early(succeeded=True)  # the end of the call, from the actor: in no hook
    spent["hook release_early"] += time.perf_counter() - started
    cpu["hooks"] += time.process_time() - started_cpu
    broker.emit_after("process_message", message, result=None)
total = time.perf_counter() - began
cpu["server"] = server_cpu_s() - server_began
print(json.dumps({"calls": calls, "total_s": total, "trips": trips[0], "spent": dict(spent), "cpu": dict(cpu)}))
"""


@dataclass(frozen=True)
class AdmissionProfile:
    """Per call: the hooks' wall time in all, by middleware, and the part of it spent on Redis; the CPU
    of the hooks (this process's), of their sends to Redis and replies (part of it), and of the
    Redis server running their scripts."""

    calls: int
    per_call_ms: float
    redis_ms: float
    trips: float
    by_middleware_ms: dict[str, float]
    cpu_ms: float
    redis_cpu_ms: float
    server_cpu_ms: float


def measure(redis_url: str, database_url: str, calls: int = 300, repeats: int = 3) -> AdmissionProfile:
    env = stub_broker_env(redis_url, database_url)
    runs = [run_child(_CHILD, str(calls), env=env, timeout_s=300) for _ in range(repeats)]
    run = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]  # the median run
    per_call = {name: seconds * 1000 / calls for name, seconds in run["spent"].items()}
    hooks = {name[5:]: ms for name, ms in per_call.items() if name.startswith("hook ")}
    return AdmissionProfile(
        calls=calls,
        per_call_ms=statistics.fsum(hooks.values()),
        redis_ms=per_call.get("redis", 0.0),
        trips=run["trips"] / calls,
        by_middleware_ms=dict(sorted(hooks.items(), key=lambda kv: -kv[1])),
        cpu_ms=run["cpu"].get("hooks", 0.0) * 1000 / calls,
        redis_cpu_ms=run["cpu"].get("redis", 0.0) * 1000 / calls,
        server_cpu_ms=run["cpu"].get("server", 0.0) * 1000 / calls,
    )

"""Staged answers: what storing a 50 MB-class answer holds in a worker, and what it costs in Redis.

The answer is the stand-in server's body for a large query (the same as the
parse benchmark's). In a fresh process, with the product on the bench's
Redis and PostgreSQL: the POIs are staged as ``fetch_pois`` stages them,
then stored chunk by chunk by ``store_pois`` (tracemalloc peak of the
whole store), against the same POIs as one message carrying them all (the
former shape: decode the message, upsert the list). Also measured: the
largest message either way, and the Redis memory of the staged answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.workers import REPO

from .parsing import overpass_body


@dataclass
class StagingResult:
    body_bytes: int
    pois: int
    chunks: int
    chunk_bytes: int
    staged_redis_bytes: int
    staged_peak_bytes: int
    whole_peak_bytes: int
    message_bytes: int
    whole_message_bytes: int


_PROBE = """
import gc, json, sys, time, tracemalloc
import dramatiq, psycopg, redis
from enrichment_actors.actors import _stage
from tests.support.product import product
runtime, store_pois = product().runtime, product().store_pois
from enrichment_actors.overpass_responses import read_response

body = open(sys.argv[1], "rb").read()
pois = [list(p) for p in read_response(200, body).pois]
del body
job = {"bbox": {"south": -40.0, "west": 20.0, "north": 0.0, "east": 20.5}, "tags": ["amenity"], "depth": 0}
store = runtime.store()
store.ensure_schema()

def truncate():
    with psycopg.connect(sys.argv[2], autocommit=True) as conn:
        conn.execute("TRUNCATE pois")

stage = _stage("fetch:bench")
staged = stage.put_pois(pois, chunk_bytes=runtime.settings.stage_chunk_bytes)
client = redis.Redis.from_url(runtime.settings.redis_url)
redis_bytes = client.memory_usage("enrichment:stage:{fetch:bench}", samples=0)
messages = [store_pois.message(job=job, stage=stage.key, chunk=i) for i in range(staged.chunks)]
message_bytes = max(len(m.encode()) for m in messages)
whole = store_pois.message(job=job, pois=pois).encode()
del pois
gc.collect()

truncate()
tracemalloc.start()
for message in messages:
    store_pois.fn(*message.args, **message.kwargs)
staged_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()

truncate()
gc.collect()
tracemalloc.start()
decoded = dramatiq.Message.decode(whole)
store_pois.fn(*decoded.args, **decoded.kwargs)
whole_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({
    "chunks": staged.chunks, "redis_bytes": redis_bytes, "staged_peak": staged_peak,
    "whole_peak": whole_peak, "message_bytes": message_bytes, "whole_message_bytes": len(whole),
    "pois": len(decoded.kwargs["pois"]), "chunk_bytes": runtime.settings.stage_chunk_bytes,
}))
"""


def measure(redis_url: str, database_url: str, dsn: str, min_bytes: int = 50_000_000) -> StagingResult:
    """Stage and store one answer of at least ``min_bytes``, in a fresh process on the bench's servers."""
    body = overpass_body(min_bytes)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "BROKER": "redis",
        "STATE_BACKEND": "redis",
        "OVERPASS_CONTACT": "bench@localhost",
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "body.json"
        path.write_bytes(body)
        output = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path), dsn],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        ).stdout
    found = json.loads(output.strip().splitlines()[-1])
    return StagingResult(
        body_bytes=len(body),
        pois=found["pois"],
        chunks=found["chunks"],
        chunk_bytes=found["chunk_bytes"],
        staged_redis_bytes=found["redis_bytes"],
        staged_peak_bytes=found["staged_peak"],
        whole_peak_bytes=found["whole_peak"],
        message_bytes=found["message_bytes"],
        whole_message_bytes=found["whole_message_bytes"],
    )

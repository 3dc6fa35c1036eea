"""Parse rate and memory: an Overpass JSON body to POI records, against a bare ``json.loads``.

The body is what the stand-in server sends for a large query (its layout is
Overpass 0.7.62's, byte for byte). Memory is measured in a fresh process per
parser, so that one measurement cannot inherit another's heap: ``tracemalloc``
gives the peak of what the parse allocated on top of the body itself, and
``ru_maxrss`` the process's high-water mark.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from enrichment_actors.overpass_responses import read_response
from enrichment_actors.stub_overpass import StubOverpass

from .servers import REPO


@dataclass
class ParseResult:
    body_bytes: int
    pois: int
    parse_s: float
    json_s: float
    parse_peak_bytes: int
    json_peak_bytes: int
    parse_rss_growth_bytes: int

    @property
    def parse_mb_per_s(self) -> float:
        return self.body_bytes / 1e6 / self.parse_s

    @property
    def json_mb_per_s(self) -> float:
        return self.body_bytes / 1e6 / self.json_s


def overpass_body(min_bytes: int) -> bytes:
    """A real-layout ``out center tags`` body of at least ``min_bytes`` from the stand-in server."""

    def query(boxes: int) -> bytes:
        statements = "".join(
            f'nwr["amenity"]({box});nwr["shop"]({box});nwr["tourism"]({box});'
            for box in (f"{-40.0 + i:.1f},20.0,{-39.4 + i:.1f},20.5" for i in range(boxes))
        )
        text = f"[out:json][timeout:180];({statements});out center tags;"
        return requests.post(stub.interpreter_url, data={"data": text}, timeout=300).content

    with StubOverpass() as stub:
        per_box = len(query(1))
        boxes = -(-min_bytes // per_box)
        body = query(boxes)
        while len(body) < min_bytes:
            boxes += 1
            body = query(boxes)
        return body


def _best_of(runs: int, work: object) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best


_MEMORY_PROBE = """
import json, resource, sys, tracemalloc
from enrichment_actors.overpass_responses import read_response
body = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tracemalloc.start()
result = read_response(200, body) if sys.argv[2] == "parse" else json.loads(body)
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": peak, "rss_growth": after - before}))
"""


def _memory(path: Path, what: str) -> dict[str, int]:
    output = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path), what],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    result: dict[str, int] = json.loads(output.strip().splitlines()[-1])
    return result


def measure(min_bytes: int = 50_000_000, runs: int = 3) -> ParseResult:
    body = overpass_body(min_bytes)
    pois = len(read_response(200, body).pois)
    parse_s = _best_of(runs, lambda: read_response(200, body))
    json_s = _best_of(runs, lambda: json.loads(body))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "body.json"
        path.write_bytes(body)
        parse_memory = _memory(path, "parse")
        json_memory = _memory(path, "json")
    return ParseResult(
        body_bytes=len(body),
        pois=pois,
        parse_s=parse_s,
        json_s=json_s,
        parse_peak_bytes=parse_memory["peak"],
        json_peak_bytes=json_memory["peak"],
        parse_rss_growth_bytes=parse_memory["rss_growth"],
    )

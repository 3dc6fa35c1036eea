"""The middleware README's example app, run unchanged: two ``dramatiq geocoder_app`` processes on a
stock ``RedisBroker``, a geocoder over HTTP on loopback, the gates shared through Redis.

The block after ``<!-- example: geocoder_app.py -->`` in middleware/README.md
is written to a file as it stands; only its two environment variables point
it at this test's Redis and geocoder. Every job stores its answer, the
geocoder never sees more calls at once than the semaphore's 2 permits (the
workers run 8 threads), and the quota counted each call once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from enrichment_middleware import QuotaLimits, RedisBackend
from enrichment_middleware.policy.quota import QuotaPolicy

README = Path(__file__).resolve().parents[2] / "middleware" / "README.md"
JOBS = 12


def readme_example() -> str:
    """The Python block that follows the example marker in the README."""
    text = README.read_text()
    found = re.search(r"<!-- example: geocoder_app\.py -->\n```python\n(.*?)\n```", text, re.S)
    assert found, f"{README} has no block after '<!-- example: geocoder_app.py -->'"
    return found.group(1) + "\n"


class Geocoder(ThreadingHTTPServer):
    """Answers GET /search?q=... after 50 ms, counting calls and the most at once."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.calls = 0
        self.in_flight = 0
        self.peak = 0


class _Handler(BaseHTTPRequestHandler):
    server: Geocoder

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.calls += 1
            self.server.in_flight += 1
            self.server.peak = max(self.server.peak, self.server.in_flight)
        try:
            time.sleep(0.05)
            query = parse_qs(urlparse(self.path).query)["q"][0]
            body = json.dumps({"q": query, "lat": 48.85, "lon": 2.35}).encode()
        finally:
            with self.server.lock:
                self.server.in_flight -= 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def geocoder() -> Iterator[Geocoder]:
    server = Geocoder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_readme_example_runs_unchanged_on_a_stock_redis_broker(
    tmp_path: Path, redis_url: str, redis_client: object, geocoder: Geocoder
) -> None:
    (tmp_path / "geocoder_app.py").write_text(readme_example())
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "GEOCODER_URL": f"http://127.0.0.1:{geocoder.server_address[1]}/search",
        "PYTHONPATH": str(tmp_path),
    }
    workers = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "geocoder_app", "--processes", "2", "--threads", "4"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import geocoder_app\nfor i in range({JOBS}): geocoder_app.geocode.send(f'{{i}} rue de Rivoli')",
            ],
            cwd=tmp_path,
            env=env,
            check=True,
            timeout=60,
        )
        deadline = time.monotonic() + 60
        while redis_client.hlen("myapp:geocoded") < JOBS and time.monotonic() < deadline:  # type: ignore[attr-defined]
            assert workers.poll() is None, f"the workers exited: {workers.communicate()[0]}"
            time.sleep(0.1)
        stored = redis_client.hgetall("myapp:geocoded")  # type: ignore[attr-defined]
    finally:
        workers.terminate()
        output = workers.communicate(timeout=60)[0]
    assert len(stored) == JOBS, output
    assert json.loads(stored[b"3 rue de Rivoli"])["q"] == "3 rue de Rivoli"
    assert geocoder.calls == JOBS
    assert geocoder.peak <= 2, f"{geocoder.peak} calls at once with 2 permits"
    quota = QuotaPolicy(
        "geocoder",
        QuotaLimits(requests=50_000, window_s=86_400),
        RedisBackend.from_url(redis_url, namespace="myapp"),
    )
    assert quota.usage().requests_used == JOBS
    assert "Traceback" not in output, output

"""``enrichment demo`` on embedded defaults, as ``make demo`` runs it on a fresh machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_end_to_end_with_nothing_configured(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {"REDIS_URL", "DATABASE_URL", "OVERPASS_URL", "BROKER", "STATE_BACKEND", "ENRICH_COVERAGE"}
    }
    done = subprocess.run(
        [sys.executable, "-m", "enrichment_actors.cli", "demo"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout[done.stdout.index("Summary") :]
    # Six valid boxes (one split into four tiles), one invalid; one 504 retried. On a busy machine a
    # fetch may also wait longer than its permit wait and be deferred (deferred_permit), or wait in
    # the fair room behind the others (waiting_turn): no failure.
    assert "jobs by final outcome : invalid_request 1, split 1, success 9" in summary
    assert re.search(
        r"retries and deferrals : (deferred_permit \d+, )?upstream_error 1(, waiting_turn \d+)?\n", summary
    ), summary
    assert "Overpass calls made   : 11 (stand-in server)" in summary
    stored = re.search(r"POIs stored\s+: (\d+)", summary)
    assert stored and int(stored.group(1)) > 0
    assert (tmp_path / "var" / "demo.sqlite3").is_file()

    # Run again, as the README says: no call, every tile fresh, and that is a success.
    again = subprocess.run(
        [sys.executable, "-m", "enrichment_actors.cli", "demo"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "jobs by final outcome : fresh 6, invalid_request 1" in again.stdout
    assert "Overpass calls made   : 0 (stand-in server)" in again.stdout
    assert "every tile was fresh: no call made" in again.stdout


def test_the_demo_shows_no_password(tmp_path: Path, postgres_url: str) -> None:
    """A DATABASE_URL with a password (the test server trusts loopback, so any password connects)."""
    url = postgres_url.replace("postgresql://postgres@", "postgresql://postgres:s3cret@")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"REDIS_URL", "OVERPASS_URL", "BROKER", "STATE_BACKEND"}
    }
    done = subprocess.run(
        [sys.executable, "-m", "enrichment_actors.cli", "demo"],
        cwd=tmp_path, env={**env, "DATABASE_URL": url}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data                  : postgresql://postgres:***@127.0.0.1:" in done.stdout
    assert "s3cret" not in done.stdout + done.stderr


def test_the_demo_runs_on_the_users_rabbitmq(tmp_path: Path, rabbitmq_url: str, redis_url: str) -> None:
    """BROKER=rabbitmq with the user's RABBITMQ_URL; the fleet's state in the user's Redis.

    It waits for every job, also those its worker holds unacknowledged (which
    AMQP's queue counts leave out): the summary is the same as on the stub broker.
    """
    import redis

    from tests.support.rabbitmq import purge

    purge(rabbitmq_url, ("demo",))
    redis.Redis.from_url(redis_url).flushdb()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "OVERPASS_URL", "STATE_BACKEND"}}
    env.update(BROKER="rabbitmq", RABBITMQ_URL=rabbitmq_url, REDIS_URL=redis_url, ENRICH_QUEUE="demo")
    done = subprocess.run(
        [sys.executable, "-m", "enrichment_actors.cli", "demo"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout[done.stdout.index("Summary") :]
    assert "jobs by final outcome : invalid_request 1, split 1, success 9" in summary, done.stdout
    assert re.search(
        r"retries and deferrals : (deferred_permit \d+, )?upstream_error 1(, waiting_turn \d+)?\n", summary
    ), summary
    assert "Overpass calls made   : 11 (stand-in server)" in summary
    assert "broker                : rabbitmq" in summary

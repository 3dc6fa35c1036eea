"""The ``enrichment`` console script (against the session's Redis)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enrichment_actors.cli import main
from tests.support.workers import free_port


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["enqueue", "--bbox", "1,2,3"], "expected four numbers"),
        (["enqueue", "--bbox", "a,b,c,d"], "expected four numbers"),
        (["enqueue", "--bbox", "10,0,9,1"], "must be below north"),
        (["enqueue", "--bbox", "0,0,1,1", "--tag", "amenity"], "split it into smaller boxes"),
        (["enqueue", "--bbox", "0,0,0.1,0.1", "--tag", "=x"], "tag key"),
    ],
)
def test_enqueue_refuses_an_invalid_job_before_sending(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], redis_client: Any
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert redis_client.keys("dramatiq:*") == []


def test_enqueue_sends_one_enrich_message(capsys: pytest.CaptureFixture[str], redis_client: Any) -> None:
    assert (
        main(["enqueue", "--bbox", "48.85,2.29,48.86,2.30", "--tag", "amenity", "--tag", "shop=bakery"]) == 0
    )
    assert "Enqueued enrich job" in capsys.readouterr().out
    assert redis_client.llen("dramatiq:enrichment") == 1


def test_status_reads_the_shared_state(capsys: pytest.CaptureFixture[str], redis_client: Any) -> None:
    from enrichment_actors import runtime
    from enrichment_actors.runtime import OVERPASS

    runtime.quota.policies[OVERPASS].admit()
    runtime.semaphore.policies[OVERPASS].try_acquire("someone")
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "requests  1 used, 9999 left of 10000" in out
    assert "breaker 'overpass'  closed (0 consecutive failures)" in out
    assert "1 of 2 permits in use" in out
    assert "parked jobs  0" in out


BUENOS_AIRES = "-34.61,-58.39,-34.60,-58.38"


@pytest.mark.parametrize(
    "argv",
    [
        ["enqueue", "--bbox", BUENOS_AIRES],
        ["enqueue", "--bbox", BUENOS_AIRES, "--tag", "amenity"],
        ["enqueue", "--tag", "amenity", "--bbox", BUENOS_AIRES],
        ["enqueue", f"--bbox={BUENOS_AIRES}"],
        ["enqueue", "--bbox", "-.5,-.5,-.49,-.49"],
    ],
)
def test_enqueue_takes_boxes_south_and_west_as_typed(
    argv: list[str], capsys: pytest.CaptureFixture[str], redis_client: Any
) -> None:
    assert main(argv) == 0, capsys.readouterr().err
    assert "Enqueued enrich job" in capsys.readouterr().out
    assert redis_client.llen("dramatiq:enrichment") == 1


def test_the_console_script_takes_buenos_aires_as_typed(redis_url: str, redis_client: Any) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("enrichment")), "enqueue", "--bbox", BUENOS_AIRES],
        env={**os.environ, "REDIS_URL": redis_url}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Enqueued enrich job" in done.stdout
    assert redis_client.llen("dramatiq:enrichment") == 1


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["status"], {}),
        (["enqueue", "--bbox", BUENOS_AIRES], {}),
        # The broker on a reachable server, the shared state not: still one line.
        (["status"], {"BROKER": "stub"}),
    ],
)
def test_an_unreachable_redis_is_one_clear_line_without_the_password(
    argv: list[str], env: dict[str, str]
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("enrichment")), *argv],
        env={**os.environ, "REDIS_URL": url, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Redis at redis://:***@127.0.0.1:" in lines[0] and "cannot be reached" in lines[0]
    assert "Check that the server is running" in lines[0]
    assert "s3cret" not in done.stdout + done.stderr

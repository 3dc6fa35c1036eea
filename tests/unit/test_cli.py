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
    from tests.support.product import product

    runtime = product().runtime

    policy = runtime.endpoint().policy
    runtime.quota.policies[policy].admit()
    runtime.semaphore.policies[policy].try_acquire("someone")
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "requests  1 used, 9999 left of 10000" in out
    assert "breaker 'overpass@127.0.0.1:9'  closed (0 consecutive failures)" in out
    assert "1 of 2 permits in use" in out
    assert "parked jobs  0" in out
    # Each endpoint, its profile, and its pause and pacing (the tests' stand-in is private: not paced).
    assert "endpoint 127.0.0.1:9  private, policy 'overpass@127.0.0.1:9'" in out
    assert "pause 'overpass@127.0.0.1:9'  not paused" in out
    assert "pacing 'overpass@127.0.0.1:9'  off" in out


def _held(runtime: Any) -> None:
    runtime.pause.policies["overpass@overpass-api.de"].hold("user_agent_rejected", "fp")


def _paused(runtime: Any) -> None:
    runtime.pause.policies["overpass@overpass-api.de"].pause(45.0, "rate_limited")


def _paced(runtime: Any) -> None:
    runtime.pacing.policies["overpass@overpass-api.de"].reserve()


def _sources_waiting(runtime: Any) -> None:
    room = runtime.fair.policies["overpass@overpass-api.de"]
    first = room.enter("maps", "m0", b"")
    room.enter("maps", "m1", b"")  # the public profile has 1 permit, so 2 seats
    for i in range(3):
        room.enter("import-2026", f"i{i}", b"")
    room.leave(room.seat_of(first, "m0"), called="maps")


def _second_open(runtime: Any) -> None:
    breaker = runtime.breaker.policies["overpass@b.example"]
    for _ in range(3):
        breaker.record(breaker.admit("someone"), success=False)


PUBLIC = {"OVERPASS_URL": "https://overpass-api.de/api/interpreter", "OVERPASS_CONTACT": "ops@example.org"}
TWO = {"OVERPASS_URL": "http://a.example/api/interpreter,http://b.example/api/interpreter"}


@pytest.mark.parametrize(
    ("environ", "act", "endpoint", "expected"),
    [
        (
            PUBLIC,
            None,
            0,
            [
                "endpoint overpass-api.de  public (a known public instance), policy 'overpass@overpass-api.de'",
                "limits    1 in flight, paced to last the day (at least 1 s apart), 10,000 requests, "
                "1,000,000,000 bytes and 300 server seconds per 86400 s",
                "server    0 s used, 300 s left of 300 s, 2 s a call (about 150 calls left)",
                "1 permits in use",
                # The server time binds: 300 s at the 2 s prior is 150 calls over the 57,600 s left of the day.
                "pacing 'overpass@overpass-api.de'  one call every 384.00 s",
            ],
        ),
        (
            PUBLIC,
            _held,
            0,
            ["overpass-api.de HELD (user_agent_rejected)", "enrichment release-hold overpass-api.de"],
        ),
        (PUBLIC, _paused, 0, ["pause 'overpass@overpass-api.de'  paused until", "(45 s left, rate_limited)"]),
        (
            PUBLIC,
            _sources_waiting,
            0,
            [
                "sources 'overpass@overpass-api.de'  2 of 2 seats taken",
                "source import-2026  weight 1, 2 waiting, 0 calls this window",
                "source maps  weight 4, 0 waiting, 1 calls this window",
                "source refresh  weight 1, 0 waiting, 0 calls this window (cap 2000)",
            ],
        ),
        (
            {**PUBLIC, "PACING_INTERVAL_S": "20"},
            _paced,
            0,
            ["one call every 20.00 s (burst 1), next free slot in 20.0 s"],
        ),
        (
            TWO,
            None,
            1,
            ["endpoint b.example  private, policy 'overpass@b.example'", "route  b.example ready"],
        ),
        (
            TWO,
            _second_open,
            1,
            [
                "breaker 'overpass@b.example'  open (3 consecutive failures",
                "route  b.example waits (breaker_open)",
            ],
        ),
    ],
)
def test_status_shows_each_endpoint_its_profile_and_live_state(
    environ: dict[str, str], act: Any, endpoint: int, expected: list[str]
) -> None:
    from enrichment_actors.cli import _endpoint_status
    from enrichment_actors.runtime import build_runtime
    from enrichment_actors.settings import load_settings
    from enrichment_middleware.backends.memory import MemoryBackend
    from enrichment_middleware.policy.clock import ManualClock

    clock = ManualClock(start=1_800_000_000.0)  # 2027-01-15 08:00 UTC
    settings = load_settings({"BROKER": "stub", "STATE_BACKEND": "memory", **environ})
    runtime = build_runtime(settings, backend=MemoryBackend(clock=clock))
    if act is not None:
        act(runtime)
    out = "\n".join(_endpoint_status(runtime, runtime.endpoints[endpoint]))
    for text in expected:
        assert text in out, out


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


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_status_into_a_reader_that_stops_early_is_no_error(
    unbuffered: str, redis_url: str, redis_client: Any
) -> None:
    """``enrichment status | head -5``: the reader closes the pipe; Redis is up, nothing to report."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    try:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("enrichment")), "status"],
            env={**env, "REDIS_URL": redis_url}, stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""

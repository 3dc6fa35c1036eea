"""What a worker says when it starts (``dramatiq enrichment_actors.worker:build``), as a newcomer first runs it."""

from __future__ import annotations

import time

import pytest

from tests.support.workers import WorkerProcesses, eventually, free_port


def _refused(env: dict[str, str], processes: int = 2) -> list[str]:
    """Start workers that must refuse; every line they wrote on stderr."""
    workers = WorkerProcesses(env, processes=processes, threads=1)
    with pytest.raises(RuntimeError, match="exited during start"):
        workers.start(timeout_s=60)
    assert workers.proc is not None
    workers.proc.wait(timeout=30)
    workers.stop()
    return list(workers.lines)


def test_a_bad_setting_is_one_line_per_process_without_a_traceback(redis_url: str) -> None:
    lines = _refused({"REDIS_URL": redis_url, "QUOTA_REQUESTS": "abc"})
    said = [line for line in lines if line.startswith("SettingsError: QUOTA_REQUESTS='abc' is not valid")]
    # One line per process that got that far: the CLI stops the other when the first exits.
    assert 1 <= len(said) <= 2, "".join(lines)
    assert not any("Traceback" in line for line in lines), "".join(lines)


def test_a_first_start_with_nothing_reachable_says_so_once_and_names_what_the_profile_overrides() -> None:
    """Redis and PostgreSQL down at start: one warning each, then the worker waits; the public
    profile's overrides of the user's settings are named in the endpoint's start line."""
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DATABASE_URL": f"postgresql://me:s3cret@127.0.0.1:{free_port()}/pois",
        "OVERPASS_PROFILE": "public",
        "SEMAPHORE_PERMITS": "4",
        "QUOTA_REQUESTS": "50000",
    }
    workers = WorkerProcesses(env, processes=1, threads=1).start(timeout_s=60)
    try:
        eventually(lambda: workers.count("Parked messages wait"), message="the first warning")
        time.sleep(2.0)  # the releaser polls four times a second
        assert workers.count("Parked messages wait") == 1, workers.tail()
    finally:
        workers.stop()
    log = "".join(workers.lines)
    assert workers.count("The database at postgresql://me:***@127.0.0.1:") == 1, log
    assert workers.count("cannot be reached at start") == 1, log
    assert "s3cret" not in log
    (endpoint,) = [line for line in workers.lines if "Overpass endpoint 127.0.0.1:9 (public)" in line]
    assert "1 in flight" in endpoint and "10,000 requests" in endpoint
    assert "SEMAPHORE_PERMITS=4 (public: 1; only OVERPASS_PUBLIC_PERMITS_OVERRIDE raises it)" in endpoint
    assert "QUOTA_REQUESTS=50000 (public: at most 10,000)" in endpoint


def test_a_database_that_refuses_us_stops_each_worker_with_one_line(
    redis_url: str, postgres_url: str
) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/no_such_database"
    lines = _refused({"REDIS_URL": redis_url, "DATABASE_URL": url})
    said = [line for line in lines if line.startswith("DatabaseRefused: the database at postgresql://")]
    assert 1 <= len(said) <= 2, "".join(lines)  # one per process that got that far
    assert 'database "no_such_database" does not exist' in said[0]
    assert "Check the user, password and database name in DATABASE_URL" in said[0]
    assert not any("Traceback" in line for line in lines), "".join(lines)

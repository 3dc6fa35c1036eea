"""What a worker says when it starts (``dramatiq enrichment_actors.worker``), as a newcomer first runs it."""

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
    assert len(said) == 2, "".join(lines)
    assert not any("Traceback" in line for line in lines), "".join(lines)


def test_an_unreachable_redis_at_start_is_one_warning_then_rate_limited() -> None:
    """The parking releaser polls four times a second: it says so once, not at every poll."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    workers = WorkerProcesses({"REDIS_URL": url}, processes=1, threads=1).start(timeout_s=60)
    try:
        eventually(lambda: workers.count("Parked messages wait"), message="the first warning")
        time.sleep(2.0)
        assert workers.count("Parked messages wait") == 1, workers.tail()
    finally:
        workers.stop()

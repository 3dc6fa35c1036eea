"""What a worker says when it starts (``dramatiq enrichment_actors.worker``), as a newcomer first runs it."""

from __future__ import annotations

import pytest

from tests.support.workers import WorkerProcesses


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

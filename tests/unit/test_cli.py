"""The ``enrichment`` console script (against the session's Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from enrichment_actors.cli import main


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

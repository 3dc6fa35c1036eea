"""A job can be followed through the worker logs: every line about it names the id enqueue printed, and its box."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enrichment_actors.job_logs import job_label
from enrichment_actors.stub_overpass import StubOverpass
from tests.support.product import product
from tests.support.workers import WorkerProcesses, eventually


@pytest.fixture(autouse=True)
def _built() -> None:
    """The product built in this process: the actors' functions read it."""
    product()


BBOX = {"south": 48.85, "west": 2.29, "north": 48.855, "east": 2.295}


@pytest.fixture
def stub() -> Iterator[StubOverpass]:
    server = StubOverpass().start()
    yield server
    server.stop()


def test_worker_lines_about_a_job_carry_the_enqueued_id_and_the_box(
    stub: StubOverpass, redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    stub.script("504")  # the fetch's first call: retried, and the retry is logged
    env = {
        "REDIS_URL": redis_url,
        "OVERPASS_URL": stub.interpreter_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'pois.sqlite3'}",
    }
    with WorkerProcesses(env, processes=1, threads=2) as workers:
        good = product().enrich.send(bbox=BBOX, tags=["amenity"])
        bad = product().enrich.send(bbox={"south": 10, "west": 0, "north": 9, "east": 1})
        eventually(lambda: stub.stats().calls >= 2, timeout_s=30, message="the fetch retried and answered")
        eventually(lambda: workers.count(f"[job {bad.message_id} box 10,0,9,1]"), message="the dead letter")
        eventually(lambda: workers.count("Stored "), message="the store step")
    about_good = [line for line in workers.lines if good.message_id in line]
    # The fetch (retried after the 504) and the store step carry the enrich job's id, not their own.
    assert any("Retrying message" in line for line in about_good), workers.tail(60)
    assert any("Stored 1 POIs" in line for line in about_good), workers.tail(60)
    assert all(f"[job {good.message_id} box 48.85,2.29,48.855,2.295]" in line for line in about_good)
    (dead,) = [line for line in workers.lines if "Dead-lettering" in line]
    assert f"[job {bad.message_id} box 10,0,9,1] Dead-lettering message {bad.message_id}" in dead


def test_a_job_label_names_the_origin_and_the_box() -> None:
    assert (
        job_label("fetch-1", {"origin": "enrich-1"}, {"bbox": BBOX})
        == "[job enrich-1 box 48.85,2.29,48.855,2.295] "
    )
    assert job_label("store-1", {"origin": "enrich-1"}, {"job": {"bbox": BBOX}}).startswith(
        "[job enrich-1 box 48.85,"
    )
    assert job_label("enrich-2", {}, {}) == "[job enrich-2] "

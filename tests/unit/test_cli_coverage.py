"""``enrichment coverage`` and ``enrichment refresh``: the coverage ledger from the console script.

The session's runtime is built on the test PostgreSQL and Redis with the
ledger off (tests/conftest.py); these commands run in a fresh interpreter
on a SQLite database of their own, the stub broker and in-memory state, and
report the messages they left on the stub broker (``SENT_FILE``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enrichment_actors.cli import _duration, _refresh_budget, main
from enrichment_actors.coverage.ledger import Answer
from enrichment_actors.coverage.tiles import Tile, normalise_tags, tagset_key, tile_units, tiles_of
from enrichment_actors.jobs import BBox, validate_job
from enrichment_actors.store import PoiStore
from tests.support.workers import free_port

#: Four tiles of the default 0.02 degree grid, in Paris.
BOX = "48.84,2.28,48.88,2.32"
TILES = [tile.id for tile in tiles_of(BBox(48.84, 2.28, 48.88, 2.32), tile_units(0.02))]

_OSM_IDS = itertools.count(1)

#: Runs the CLI, then writes the kwargs of every message on the stub broker's queue to SENT_FILE.
_RUN_AND_REPORT = """
import json, os, sys
from enrichment_actors.cli import main
code = main(sys.argv[1:])
from dramatiq import Message
from enrichment_actors.runtime import current
runtime = current()
broker = runtime.broker
queue = broker.queues.get(runtime.settings.queue)
sent = [Message.decode(data).kwargs for data in list(queue.queue)] if queue is not None else []
with open(os.environ["SENT_FILE"], "w") as out:
    json.dump(sent, out)
sys.exit(code)
"""


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pois.sqlite3'}"


@pytest.fixture
def store(database: str) -> Any:
    store = PoiStore(database)
    store.ensure_schema()
    yield store
    store.close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _seed(
    store: PoiStore, tile: str, tags: list[str], *, age: dt.timedelta, pois: int = 0, calls: float = 1.0
) -> None:
    """One finished answer for ``tile`` and ``tags``, fetched ``age`` ago, holding ``pois`` POIs."""
    normalised = normalise_tags(validate_job({"south": 0, "west": 0, "north": 0.01, "east": 0.01}, tags).tags)
    box = Tile.parse(tile).bbox
    answer = Answer(
        key=f"answer-{tile}-{tagset_key(normalised)}",
        tagset=tagset_key(normalised),
        tags=tuple(str(tag) for tag in normalised),
        tiles=(tile,),
        osm_base="2026-01-01T00:00:00Z",
        calls=calls,
    )
    rows = [
        ("node", next(_OSM_IDS), box.south + 0.001, box.west + 0.001, {"amenity": "cafe"})
        for _ in range(pois)
    ]
    store.upsert(rows, answer=answer, members={tile: [(kind, osm_id) for kind, osm_id, *_ in rows]})
    store.ledger.finish(answer, now=_now() - age)


def _cli(
    database: str, tmp_path: Path, *argv: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``enrichment *argv`` in a fresh interpreter; its result and the kwargs of the messages it sent."""
    sent_file = tmp_path / "sent.json"
    done = subprocess.run(
        [sys.executable, "-c", _RUN_AND_REPORT, *argv],
        env=_env(database, SENT_FILE=str(sent_file), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    sent = json.loads(sent_file.read_text()) if sent_file.exists() else None
    return done, sent


def _env(database: str, **env: str) -> dict[str, str]:
    return {
        **os.environ,
        "BROKER": "stub",
        "STATE_BACKEND": "memory",
        "DATABASE_URL": database,
        "ENRICH_COVERAGE": "true",
        **env,
    }


def test_coverage_shows_each_covered_tile_and_counts_the_others(
    store: PoiStore, database: str, tmp_path: Path
) -> None:
    _seed(store, TILES[0], ["amenity"], age=dt.timedelta(hours=3, minutes=5), pois=3, calls=1.0)
    _seed(store, TILES[3], ["amenity"], age=dt.timedelta(days=3, hours=1), pois=2, calls=0.5)
    done, _ = _cli(database, tmp_path, "coverage", "--bbox", BOX)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3, done.stdout
    assert lines[0].startswith(f"{TILES[0]}  48.84,2.28,48.86,2.3  amenity  fetched 3 h ago (fresh)")
    assert "osm_base 2026-01-01T00:00:00Z  3 POIs  1.00 calls" in lines[0]
    assert lines[1].startswith(f"{TILES[3]}  48.86,2.3,48.88,2.32  amenity  fetched 3 d ago (stale)")
    assert "2 POIs  0.50 calls" in lines[1]
    assert lines[2] == f"2 of 4 tiles covered, 1 fresh, 5 POIs, 1.50 calls spent, in {database}"


def test_coverage_tags_shows_only_that_normalised_tag_set(
    store: PoiStore, database: str, tmp_path: Path
) -> None:
    _seed(store, TILES[0], ["amenity"], age=dt.timedelta(hours=1), pois=1)
    _seed(store, TILES[1], ["shop"], age=dt.timedelta(hours=1), pois=4)
    _seed(store, TILES[2], ["shop", "amenity"], age=dt.timedelta(hours=1), pois=2)
    # shop=bakery is within shop: the same tag set.
    done, _ = _cli(database, tmp_path, "coverage", "--bbox", BOX, "--tags", "shop,shop=bakery")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout
    assert lines[0].startswith(f"{TILES[1]}  ") and "  shop  " in lines[0]
    assert lines[1] == f"1 of 4 tiles covered, 1 fresh, 4 POIs, 1.00 calls spent, in {database}"


def test_coverage_of_an_empty_ledger_south_and_west(store: PoiStore, database: str, tmp_path: Path) -> None:
    done, _ = _cli(database, tmp_path, "coverage", "--bbox", "-34.61,-58.39,-34.60,-58.38")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        f"0 of 1 tiles covered, 0 fresh, 0 POIs, 0.00 calls spent, in {database}"
    ]


def test_coverage_from_another_directory_names_the_database_and_creates_none(tmp_path: Path) -> None:
    """The default ``sqlite:///enrichment.sqlite3`` is relative: run elsewhere, there is no such file."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "enrichment_actors.cli", "coverage", "--bbox", BOX],
        cwd=elsewhere, env=_env("sqlite:///enrichment.sqlite3"), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"there is no database at {elsewhere / 'enrichment.sqlite3'}" in lines[0]
    assert "DATABASE_URL=sqlite:///enrichment.sqlite3" in lines[0]
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    ("bbox", "extra", "message"),
    [
        ("1,2,3", [], "expected four numbers"),
        ("a,b,c,d", [], "expected four numbers"),
        ("10,0,9,1", [], "must be below north"),
        ("0,0,1,1", [], "split it into smaller boxes"),
        ("0,0,0.1,0.1", ["--tags", "=x"], "tag key"),
    ],
)
def test_coverage_of_an_invalid_box_is_one_line_and_status_2(
    bbox: str, extra: list[str], message: str, database: str, tmp_path: Path
) -> None:
    done, _ = _cli(database, tmp_path, "coverage", "--bbox", bbox, *extra)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert done.stdout == ""


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://me:s3cret@127.0.0.1:{free_port()}/nowhere"
    done, _ = _cli(url, tmp_path, "coverage", "--bbox", BOX)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be used" in lines[0] and "DATABASE_URL" in lines[0], done.stderr
    assert "s3cret" not in done.stdout + done.stderr


def _tile_box(tile: str) -> dict[str, float]:
    return Tile.parse(tile).bbox.as_dict()


def test_refresh_sends_the_stalest_tiles_with_force(store: PoiStore, database: str, tmp_path: Path) -> None:
    _seed(store, TILES[2], ["amenity"], age=dt.timedelta(days=10))
    _seed(store, TILES[0], ["shop", "amenity"], age=dt.timedelta(days=9))
    _seed(store, TILES[1], ["amenity"], age=dt.timedelta(days=8))
    _seed(store, TILES[3], ["amenity"], age=dt.timedelta(hours=1))
    done, sent = _cli(database, tmp_path, "refresh", "--older-than", "7d", "--limit", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refresh: sent 2 of 3 stale tiles (limit 2)"
    assert done.stderr == ""
    assert sent == [
        {"bbox": _tile_box(TILES[2]), "tags": ["amenity"], "force": True, "source": "refresh"},
        {"bbox": _tile_box(TILES[0]), "tags": ["amenity", "shop"], "force": True, "source": "refresh"},
    ]
    # The box sent is exactly the tile: the job asks for that one tile again.
    assert [tile.id for tile in tiles_of(BBox(**sent[0]["bbox"]), tile_units(0.02))] == [TILES[2]]


def test_refresh_passes_over_tiles_of_another_grid(store: PoiStore, database: str, tmp_path: Path) -> None:
    old_grid = tiles_of(BBox(48.84, 2.28, 48.85, 2.29), tile_units(0.01))[0].id
    _seed(store, old_grid, ["amenity"], age=dt.timedelta(days=30))
    _seed(store, TILES[0], ["amenity"], age=dt.timedelta(days=9))
    done, sent = _cli(database, tmp_path, "refresh", "--older-than", "7d", "--limit", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refresh: sent 1 of 1 stale tiles (limit 1)"
    assert [message["bbox"] for message in sent] == [_tile_box(TILES[0])]


@pytest.mark.parametrize(
    ("argv", "sent_count", "warning"),
    [
        ([], 10, False),
        (["--limit", "50"], 10, True),
        (["--limit", "10"], 10, False),
        (["--limit", "3"], 3, False),
    ],
)
def test_refresh_spends_at_most_its_share_of_the_daily_quota(
    argv: list[str], sent_count: int, warning: bool, store: PoiStore, tmp_path: Path
) -> None:
    tiles = [tile.id for tile in tiles_of(BBox(48.80, 2.20, 48.84, 2.30), tile_units(0.02))]  # 2 x 5
    for i, tile in enumerate([*tiles, *TILES]):
        _seed(store, tile, ["amenity"], age=dt.timedelta(days=20 - i))
    budget = {"QUOTA_REQUESTS": "100", "REFRESH_BUDGET_SHARE": "0.1"}
    done, sent = _cli(store.url, tmp_path, "refresh", "--older-than", "1d", *argv, **budget)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"refresh: sent {sent_count} of 14 stale tiles (limit {sent_count})"
    assert len(sent) == sent_count
    if warning:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "above the refresh budget of 10" in lines[0], done.stderr
    else:
        assert done.stderr == ""


def test_refresh_refuses_to_run_without_the_ledger(database: str, tmp_path: Path) -> None:
    done, _ = _cli(database, tmp_path, "refresh", "--older-than", "7d", ENRICH_COVERAGE="false")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ENRICH_COVERAGE" in lines[0], done.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("90", 90.0),
        ("1.5h", 5400.0),
        ("0", 0.0),
        ("2D", 172800.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert _duration(text) == seconds


@pytest.mark.parametrize(
    "argv",
    [
        ["--older-than", "7x"],
        ["--older-than", "-1d"],
        ["--older-than", "d"],
        ["--older-than", ""],
        ["--older-than", "7d", "--every", "0s"],
        ["--older-than", "7d", "--limit", "-1"],
        ["--older-than", "7d", "--limit", "many"],
        [],
    ],
)
def test_refresh_refuses_what_is_not_a_duration_or_a_count(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["refresh", *argv])
    assert exited.value.code == 2
    assert "refresh" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("share", "quota", "interval_s", "budget"),
    [
        (0.1, 100, 86400, 10),
        (0.2, 10_000, 86400, 2000),
        (0.2, 10_000, 3600, 84),
        (0.07, 100, 86400, 7),
        (0.1, 100, 3600, 1),
        (0.0, 10_000, 86400, 0),
        (0.5, 0, 86400, 0),
    ],
)
def test_the_refresh_budget_of_one_run(share: float, quota: int, interval_s: float, budget: int) -> None:
    assert _refresh_budget(share, quota, interval_s) == budget


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_refresh_every_runs_until_stopped_and_ends_cleanly(
    stop: signal.Signals, store: PoiStore, database: str, tmp_path: Path
) -> None:
    _seed(store, TILES[0], ["amenity"], age=dt.timedelta(days=9))
    budget = {"QUOTA_REQUESTS": "100", "REFRESH_BUDGET_SHARE": "0.1"}
    # As from a terminal: a test run started in the background has SIGINT ignored, and a child inherits
    # that; a handler of ours is reset to the default in the child instead.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _refresh_until(stop, database, budget)
    finally:
        signal.signal(signal.SIGINT, previous)


def _refresh_until(stop: signal.Signals, database: str, budget: dict[str, str]) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "enrichment_actors.cli", "refresh", "--older-than", "7d", "--every", "1h"],
        env=_env(database, **budget),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as clock:
        try:
            assert clock.stdout is not None and clock.stderr is not None
            # 0.1 of 100 requests a day, over one hour: 1 tile per run.
            assert clock.stdout.readline().strip() == "refresh: sent 1 of 1 stale tiles (limit 1)"
            clock.send_signal(stop)
            assert clock.wait(timeout=30) == 0, clock.stderr.read()
            assert "Traceback" not in clock.stderr.read()
        finally:
            clock.kill()  # a failed assertion must not leave the with-block waiting for ever

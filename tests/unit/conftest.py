"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enrichment_actors.store import PoiStore


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PoiStore]:
    """An empty POI store (its ledger too), on PostgreSQL and on SQLite: the same tests run on both."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'pois.sqlite3'}"
    poi_store = PoiStore(url)
    poi_store.ensure_schema()
    poi_store.ledger.elements.delete().execute()
    poi_store.ledger.coverage.delete().execute()
    poi_store.model.delete().execute()
    yield poi_store
    poi_store.close()

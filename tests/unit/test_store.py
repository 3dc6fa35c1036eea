"""The POI store on PostgreSQL and on SQLite: the same tests on both."""

from __future__ import annotations

import datetime as dt

import peewee
import pytest

from enrichment_actors.overpass_responses import read_response
from enrichment_actors.store import PersistenceError, PoiStore

POIS = [
    ("node", 1, 48.85, 2.29, {"amenity": "cafe", "name": 'Café "Le Zinc"'}),
    ("way", 1, 48.851, 2.291, {"shop": "bakery"}),
    ("relation", 7, 48.852, 2.292, {}),
]


def test_upsert_stores_every_poi_keyed_by_type_and_id(store: PoiStore) -> None:
    assert store.upsert(POIS) == 3
    assert sorted(store.fetch_all()) == sorted(POIS)


#: An answer whose tags hold a NUL (JSONB refuses it) and a lone surrogate (not UTF-8): issue 16, finding 7.
_BAD_TEXT_ANSWER = (
    b'{"elements": ['
    b'{"type": "node", "id": 1, "lat": 1.5, "lon": 2.5, "tags": {"name": "Caf\\u0000e", "n\\u0000": "x"}},'
    b'{"type": "node", "id": 2, "lat": 1.6, "lon": 2.6, "tags": {"name": "caf\\ud800", "\\udfff": "y"}},'
    b'{"type": "node", "id": 3, "lat": 1.7, "lon": 2.7, "tags": {"level": 2}}'
    b"]}"
)


@pytest.mark.parametrize("tags", [{"name": "Caf\x00e"}, {"name": "caf\ud800"}], ids=["nul", "lone-surrogate"])
def test_tags_postgresql_refuses_are_repaired_by_the_parser_and_upsert(
    store: PoiStore, tags: dict[str, str]
) -> None:
    if isinstance(store.database, peewee.PostgresqlDatabase):
        # What the parser repairs: unrepaired, PostgreSQL refuses the whole batch.
        with pytest.raises(PersistenceError):
            store.upsert([("node", 9, 1.0, 2.0, tags)])

    assert store.upsert(read_response(200, _BAD_TEXT_ANSWER).pois) == 3

    assert store.fetch_all() == [
        ("node", 1, 1.5, 2.5, {"name": "Caf\ufffde", "n\ufffd": "x"}),
        ("node", 2, 1.6, 2.6, {"name": "caf\ufffd", "\ufffd": "y"}),
        ("node", 3, 1.7, 2.7, {"level": "2"}),
    ]


def test_the_same_pois_twice_leave_the_same_rows(store: PoiStore) -> None:
    store.upsert(POIS)
    store.upsert(POIS)
    assert store.count() == 3
    assert sorted(store.fetch_all()) == sorted(POIS)


def test_a_second_fetch_updates_position_tags_and_refresh_time(store: PoiStore) -> None:
    early = dt.datetime(2026, 1, 1)
    store.upsert(POIS, refreshed_at=early)
    store.upsert([("node", 1, 48.9, 2.3, {"amenity": "bar"})], refreshed_at=early + dt.timedelta(days=1))
    rows = {(r[0], r[1]): r for r in store.fetch_all()}
    assert rows[("node", 1)] == ("node", 1, 48.9, 2.3, {"amenity": "bar"})
    refreshed = {(r.element_type, r.osm_id): r.refreshed_at for r in store.model.select()}
    assert refreshed[("node", 1)] > refreshed[("way", 1)]


def test_many_pois_go_in_batches_in_one_transaction(store: PoiStore) -> None:
    many = [("node", i, 1.0 + i / 1e6, 2.0, {"amenity": "bench"}) for i in range(1234)]
    assert store.upsert(many) == 1234
    assert store.count() == 1234


def test_a_bad_batch_stores_nothing(store: PoiStore) -> None:
    rows = [("node", 1, 1.0, 2.0, {}), ("node", 2, None, 2.0, {})]
    with pytest.raises(PersistenceError):
        store.upsert(rows)
    assert store.count() == 0


def test_an_unreachable_database_raises_a_persistence_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = PoiStore(f"postgresql://postgres@127.0.0.1:{port}/nothing")
    with pytest.raises(PersistenceError, match="DATABASE_URL"):
        unreachable.upsert(POIS)


def test_a_refusing_database_says_nothing_was_fetched_before_a_fetch(postgres_url: str) -> None:
    """A wrong DATABASE_URL met by the coverage read, before any call: no "fetched POIs kept staged"."""
    refusing = PoiStore(postgres_url.rsplit("/", 1)[0] + "/no_such_database")
    with pytest.raises(PersistenceError) as raised:
        refusing.fresh_tiles("amenity", ["1:2"], max_age_s=60)
    message = str(raised.value)
    assert "Nothing was fetched: the job is retried; check DATABASE_URL" in message
    assert "kept staged" not in message
    with pytest.raises(PersistenceError, match="The fetched POIs are kept staged"):
        refusing.upsert(POIS)

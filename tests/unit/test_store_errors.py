"""An outage (PostgreSQL unreachable) is told from a refusal (the data, the statement, our login), on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import peewee
import pytest

from enrichment_actors.store import DatabaseUnreachable, PersistenceError, PoiStore
from tests.support.proxy import FlakyProxy
from tests.support.workers import free_port

POIS = [("node", 1, 48.85, 2.29, {"amenity": "cafe"})]


@pytest.fixture
def proxied(postgres_url: str) -> Iterator[tuple[PoiStore, FlakyProxy]]:
    """A store that reaches the session's PostgreSQL through a proxy the test can take down."""
    parts = urlsplit(postgres_url)
    proxy = FlakyProxy(parts.hostname or "127.0.0.1", parts.port or 5432).up()
    store = PoiStore(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl())
    yield store, proxy
    store.close()
    proxy.down()


def test_a_refused_connection_is_an_outage() -> None:
    store = PoiStore(f"postgresql://postgres@127.0.0.1:{free_port()}/pois")
    with pytest.raises(DatabaseUnreachable, match="PostgreSQL is unreachable"):
        store.upsert(POIS)


def test_a_connection_cut_under_a_store_is_an_outage_and_the_next_attempt_reconnects(
    proxied: tuple[PoiStore, FlakyProxy],
) -> None:
    store, proxy = proxied
    assert store.upsert(POIS) == 1  # connected, through the proxy
    proxy.down()  # the open connection is cut, new ones refused
    with pytest.raises(DatabaseUnreachable):
        store.upsert(POIS)
    with pytest.raises(DatabaseUnreachable):
        store.upsert(POIS)
    proxy.up()
    assert store.upsert(POIS) == 1


def test_a_backend_terminated_by_the_server_is_an_outage(postgres_url: str) -> None:
    store, admin = PoiStore(postgres_url), PoiStore(postgres_url)
    try:
        store.ensure_schema()
        database: peewee.Database = store.database
        pid = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        admin.database.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DatabaseUnreachable):
            store.fresh_tiles("amenity", ["t1"], max_age_s=60)
        assert store.fresh_tiles("amenity", ["t1"], max_age_s=60) == set()
    finally:
        store.close()
        admin.close()


@pytest.mark.parametrize(
    ("netloc", "path"),
    [
        pytest.param("nobody@{host}", "{path}", id="no such role"),
        pytest.param("{user}@{host}", "/nothere", id="no such database"),
    ],
)
def test_a_wrong_database_url_is_a_refusal_not_an_outage(postgres_url: str, netloc: str, path: str) -> None:
    """A wrong DATABASE_URL must fail loudly (retries, then a dead letter), not make every job wait a day."""
    parts = urlsplit(postgres_url)
    url = parts._replace(
        netloc=netloc.format(user=parts.username, host=parts.netloc.split("@")[-1]),
        path=path.format(path=parts.path),
    ).geturl()
    store = PoiStore(url)
    with pytest.raises(PersistenceError, match="check DATABASE_URL") as raised:
        store.upsert(POIS)
    assert not isinstance(raised.value, DatabaseUnreachable)


def test_a_refused_row_is_not_an_outage(postgres_url: str) -> None:
    store = PoiStore(postgres_url)
    try:
        with pytest.raises(PersistenceError) as raised:
            store.upsert([("node", 2, None, 2.0, {})])  # lat NOT NULL
        assert not isinstance(raised.value, DatabaseUnreachable)
    finally:
        store.close()


def test_sqlite_has_no_outages(tmp_path: Path) -> None:
    """A file that cannot be opened is the configuration's fault: retried, then dead-lettered."""
    store = PoiStore(f"sqlite:///{tmp_path / 'missing-dir' / 'pois.sqlite3'}")
    with pytest.raises(PersistenceError) as raised:
        store.upsert(POIS)
    assert not isinstance(raised.value, DatabaseUnreachable)


def test_the_docstring_examples_hold() -> None:
    import doctest

    import enrichment_actors.store_errors

    failed, attempted = doctest.testmod(enrichment_actors.store_errors, report=False)
    assert attempted > 0 and failed == 0

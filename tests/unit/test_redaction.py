"""No password from DATABASE_URL or REDIS_URL in any message, log line or summary (finding 11)."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import peewee
import pytest
import redis

from enrichment_actors.settings import SettingsError, load_settings
from enrichment_actors.store import PersistenceError, PoiStore
from enrichment_middleware.backends.base import BackendUnavailable
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.redaction import redact, redact_url
from tests.support.workers import free_port

SECRET = "s3cret"


def _everything_shown(error: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """What a user or a log could see of ``error``: its text, its logged traceback with the causes."""
    logging.getLogger("tests.redaction").error("failed", exc_info=error)
    return "".join(traceback.format_exception(error)) + caplog.text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
        ("rediss://default:s3cret@cache:6380/2", "rediss://default:***@cache:6380/2"),
        ("postgresql://u:s3cret@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db"),
        ("postgresql://u:s3c%40ret@db/pois", "postgresql://u:***@db/pois"),
        ("redis://:p@ss@host:1/0", "redis://:***@host:1/0"),
        ("unix:///run/redis.sock?db=0&password=s3cret", "unix:///run/redis.sock?db=0&password=***"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("sqlite:///var/pois.sqlite3", "sqlite:///var/pois.sqlite3"),
    ],
)
def test_urls_keep_everything_but_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact(f"error near {url}", url) == f"error near {shown}"


def test_a_password_is_masked_in_any_text_decoded_or_not() -> None:
    url = "postgresql://u:s3c%40ret@db/pois"
    assert redact("FATAL: password s3c@ret and s3c%40ret rejected", url) == (
        "FATAL: password *** and *** rejected"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://u:s3cret@db/pois"),
        ("REDIS_URL", "http://:s3cret@cache:6379/0"),
        ("OVERPASS_URL", "https://u:s3cret@overpass.example/api/"),
    ],
)
def test_settings_errors_name_the_variable_not_the_password(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({name: value})
    assert name in str(raised.value) and "***" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_the_settings_repr_shows_no_url() -> None:
    settings = load_settings(
        {"DATABASE_URL": "postgresql://u:s3cret@db/pois", "REDIS_URL": "redis://:s3cret@cache:6379/0"}
    )
    assert SECRET not in repr(settings)


def test_an_unreachable_database_is_reported_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    store = PoiStore(f"postgresql://u:{SECRET}@127.0.0.1:{free_port()}/pois")
    with pytest.raises(PersistenceError) as raised:
        store.upsert([("node", 1, 1.0, 2.0, {})])
    assert "postgresql://u:***@127.0.0.1:" in str(raised.value)
    assert SECRET not in _everything_shown(raised.value, caplog)


def test_a_driver_error_that_names_the_url_is_redacted_and_not_chained(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    url = f"postgresql://u:{SECRET}@127.0.0.1:{free_port()}/pois"
    store = PoiStore(url)

    def fail() -> None:
        raise peewee.OperationalError(f'could not connect with "{url}" (password {SECRET})')

    monkeypatch.setattr(store, "ensure_schema", fail)
    with pytest.raises(PersistenceError) as raised:
        store.upsert([("node", 1, 1.0, 2.0, {})])
    assert "could not connect with" in str(raised.value)
    assert SECRET not in _everything_shown(raised.value, caplog)


def test_an_unreachable_redis_is_reported_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    backend = RedisBackend.from_url(f"redis://:{SECRET}@127.0.0.1:{free_port()}/0", socket_timeout_s=2)
    with pytest.raises(BackendUnavailable) as raised:
        backend.ping()
    assert "redis://:***@127.0.0.1:" in str(raised.value)
    assert SECRET not in _everything_shown(raised.value, caplog)


def test_a_redis_error_that_names_the_url_is_redacted_and_not_chained(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"redis://user:{SECRET}@127.0.0.1:{free_port()}/0"
    backend = RedisBackend.from_url(url, socket_timeout_s=2)

    def fail(*args: object, **kwargs: object) -> None:
        raise redis.ConnectionError(f"Error connecting to {url}: AUTH user {SECRET} refused")

    monkeypatch.setattr(backend.client, "ping", fail)
    with pytest.raises(BackendUnavailable) as raised:
        backend.ping()
    assert "AUTH user *** refused" in str(raised.value)
    assert SECRET not in _everything_shown(raised.value, caplog)


def test_a_failed_store_leaves_no_password_in_logs_or_the_message(caplog: pytest.LogCaptureFixture) -> None:
    """What a worker logs and keeps in the message (``last_error``, ``traceback``) on each attempt."""
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from enrichment_middleware.retries import Retries

    broker = StubBroker()
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, dramatiq.middleware.Retries)]
    broker.add_middleware(Retries(max_retries=1, min_backoff=1, max_backoff=1))
    store = PoiStore(f"postgresql://u:{SECRET}@127.0.0.1:{free_port()}/pois")

    # park_retries: the product's own retries (store_pois's), which keep last_error.
    @dramatiq.actor(broker=broker, queue_name="redaction", park_retries=True)
    def store_one() -> None:
        store.upsert([("node", 1, 1.0, 2.0, {})])

    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    try:
        with caplog.at_level(logging.DEBUG):
            store_one.send()
            broker.join("redaction", fail_fast=False)
            worker.join()
    finally:
        worker.stop()
    (dead,) = broker.dead_letters
    assert "DatabaseUnreachable" in dead.options["last_error"] and "***" in dead.options["last_error"]
    assert SECRET not in dead.options["last_error"] + dead.options["traceback"] + caplog.text

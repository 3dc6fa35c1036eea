"""The start-up checks of the Redis a worker is given, against real redis-server processes so configured."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import pytest
import redis

from enrichment_actors.broker import RecoveringRedisBroker
from enrichment_actors.redis_checks import (
    EXIT_UNSAFE_REDIS,
    Persistence,
    RedisChecks,
    UnsafeRedis,
    check_servers,
    persistence_gauge,
    read_settings,
)
from tests.support.workers import WorkerProcesses, free_port

NOTHING_ON_DISK = ("--appendonly", "no", "--save", "")
AOF = ("--appendonly", "yes", "--save", "")
RDB = ("--appendonly", "no", "--save", "900 1")
#: What a managed service does: CONFIG renamed away (INFO still answers).
NO_CONFIG = ("--rename-command", "CONFIG", "")
NO_INFO = ("--rename-command", "INFO", "")


@contextmanager
def redis_server(*args: str, tmp_path: Any, password: str | None = None) -> Iterator[redis.Redis[bytes]]:
    """A redis-server on a free loopback port with ``args``; yields a client to it."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client: redis.Redis[bytes] = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        yield client
    finally:
        client.close()
        proc.kill()  # nothing to keep
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "persistence", "gauge"),
    [
        pytest.param(AOF, Persistence.AOF, 1.0, id="aof"),
        pytest.param(RDB, Persistence.RDB, 1.0, id="rdb-only"),
        pytest.param(NOTHING_ON_DISK, Persistence.NONE, 0.0, id="nothing-on-disk"),
        pytest.param((*AOF, *NO_CONFIG), Persistence.AOF, 1.0, id="aof-config-disabled"),
        pytest.param((*NOTHING_ON_DISK, *NO_CONFIG), Persistence.UNKNOWN, -1.0, id="config-disabled"),
        pytest.param((*AOF, *NO_CONFIG, *NO_INFO), Persistence.UNKNOWN, -1.0, id="config-and-info-disabled"),
    ],
)
def test_persistence_is_read_from_the_server(
    args: tuple[str, ...], persistence: Persistence, gauge: float, tmp_path: Any
) -> None:
    with redis_server(*args, tmp_path=tmp_path) as client:
        settings = read_settings(client)
        assert settings.persistence is persistence
        assert persistence_gauge([client]) == gauge
        assert not settings.evicts
        assert bool(settings.unreadable) == ("CONFIG" in args)


@pytest.mark.parametrize(
    ("args", "warning"),
    [
        pytest.param(AOF, None, id="aof"),
        pytest.param(RDB, None, id="rdb-only"),
        pytest.param(NOTHING_ON_DISK, "keeps nothing on disk (appendonly no", id="nothing-on-disk"),
        pytest.param((*NOTHING_ON_DISK, *NO_CONFIG), "Could not tell whether", id="config-disabled"),
        pytest.param((*AOF, *NO_CONFIG, *NO_INFO), "Could not check the eviction policy", id="info-disabled"),
    ],
)
def test_a_worker_starts_and_says_once_what_a_restart_would_cost(
    args: tuple[str, ...], warning: str | None, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="enrichment_actors.redis_checks")
    with redis_server(*args, tmp_path=tmp_path) as client:
        checks = RedisChecks(lambda: {"broker": client, "state backend": client})
        broker = dramatiq.get_broker()
        for _ in range(2):  # a second worker in the same process: no second report
            checks.before_worker_boot(broker, None)  # type: ignore[arg-type]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if warning is None:
        assert warnings == []
    else:
        assert any(warning in w for w in warnings), warnings
        assert all("(broker and state backend)" in w for w in warnings), "one server, checked once"
        assert len({w for w in warnings}) == len(warnings), "said twice"


@pytest.mark.parametrize(
    "policy",
    [
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    ],
)
@pytest.mark.parametrize("config", [True, False], ids=["config", "config-disabled"])
def test_an_eviction_policy_that_can_drop_our_keys_is_refused(
    policy: str, config: bool, tmp_path: Any
) -> None:
    args = ("--maxmemory-policy", policy, *AOF, *(() if config else NO_CONFIG))
    with redis_server(*args, tmp_path=tmp_path) as client, pytest.raises(UnsafeRedis) as refused:
        check_servers({"broker": client})
    message = str(refused.value)
    assert f"maxmemory-policy {policy}" in message
    assert "`maxmemory-policy noeviction`" in message and "will not start" in message
    assert refused.value.code == EXIT_UNSAFE_REDIS


def test_noeviction_is_accepted(tmp_path: Any) -> None:
    with redis_server("--maxmemory-policy", "noeviction", *AOF, tmp_path=tmp_path) as client:
        found = check_servers({"broker": client})
    assert [s.eviction_policy for s in found.values()] == ["noeviction"]


def test_the_broker_and_the_state_backend_are_both_checked_when_they_differ(tmp_path: Any) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        redis_server(*AOF, tmp_path=tmp_path / "a") as broker,
        redis_server("--maxmemory-policy", "volatile-ttl", *AOF, tmp_path=tmp_path / "b") as state,
        pytest.raises(UnsafeRedis, match=r"\(state backend\) has maxmemory-policy volatile-ttl"),
    ):
        check_servers({"broker": broker, "state backend": state})


def test_an_unreachable_redis_is_reported_not_checked_and_does_not_stop_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client: redis.Redis[bytes] = redis.Redis(host="127.0.0.1", port=free_port())
    assert check_servers({"broker": client}) == {}
    assert "Could not check the Redis at 127.0.0.1:" in caplog.text


def test_a_password_never_appears_in_what_is_said(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    with redis_server(
        "--requirepass", "s3cret", *NOTHING_ON_DISK, tmp_path=tmp_path, password="s3cret"
    ) as plain:
        port = plain.connection_pool.connection_kwargs["port"]
        client: redis.Redis[bytes] = redis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/0")
        check_servers({"broker": client})
        client.close()
    assert "keeps nothing on disk" in caplog.text and "s3cret" not in caplog.text


def test_the_cli_worker_refuses_to_start_on_an_evicting_redis(tmp_path: Any) -> None:
    with redis_server("--maxmemory-policy", "allkeys-lru", *AOF, tmp_path=tmp_path) as client:
        port = client.connection_pool.connection_kwargs["port"]
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "DATABASE_URL": f"sqlite:///{tmp_path}/pois.sqlite3",
            "BROKER": "redis",
            "STATE_BACKEND": "redis",
        }
        fleet = WorkerProcesses(env, processes=1, threads=1)
        try:
            with pytest.raises(RuntimeError, match="exited during start"):
                fleet.start(timeout_s=60)
            assert fleet.proc is not None
            fleet.proc.wait(timeout=30)
            assert fleet.proc.returncode == EXIT_UNSAFE_REDIS
            time.sleep(0.2)
            assert fleet.count("has maxmemory-policy allkeys-lru") >= 1, fleet.tail()
        finally:
            fleet.stop()  # a worker that started (the check missing) must not outlive the test


def test_the_product_broker_is_the_recovering_one() -> None:
    from tests.support.product import product

    runtime = product().runtime

    assert isinstance(runtime.broker, RecoveringRedisBroker)
    assert any(isinstance(m, RedisChecks) for m in runtime.broker.middleware)


def test_the_exposition_exports_what_the_redis_keeps_on_disk_at_each_scrape(tmp_path: Any) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from enrichment_actors.prometheus import FleetCollector, read_fleet
    from enrichment_actors.runtime import build_runtime
    from enrichment_actors.settings import load_settings

    def scrape(collector: FleetCollector) -> str:
        registry = CollectorRegistry()
        registry.register(collector)
        lines = generate_latest(registry).decode().splitlines()
        return next(line for line in lines if line.startswith("enrichment_state_backend_persistent "))

    with redis_server(*NOTHING_ON_DISK, tmp_path=tmp_path) as client:
        port = client.connection_pool.connection_kwargs["port"]
        runtime = build_runtime(load_settings({"REDIS_URL": f"redis://127.0.0.1:{port}/0"}))
        assert scrape(FleetCollector(lambda: read_fleet(runtime), max_age_s=0)) == (
            "enrichment_state_backend_persistent 0.0"
        )
        client.config_set("appendonly", "yes")  # the operator's fix, at run time
        assert scrape(FleetCollector(lambda: read_fleet(runtime), max_age_s=0)) == (
            "enrichment_state_backend_persistent 1.0"
        )
        runtime.broker.close()

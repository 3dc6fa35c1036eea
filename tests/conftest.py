"""Real servers for the test session.

PostgreSQL and Redis are started by the session itself on free loopback ports
(pytest-postgresql's ``postgresql_proc``, pytest-redis's ``redis_proc``) and
removed afterwards; the machine's own servers on 5432 and 6379 are never
touched. ``TEST_DATABASE_URL`` and ``TEST_REDIS_URL`` point the suite at
servers you run yourself instead (their data is wiped between tests).

The ports are chosen when this file is imported, and ``REDIS_URL`` and
``DATABASE_URL`` are set to them at once: the product reads its settings
when ``enrichment_actors`` is first imported, and must only ever see the
test servers.

Property tests (hypothesis) run under the profile ``HYPOTHESIS_PROFILE``
names. ``ci``, the default and ``make test``'s, is derandomized: every run
draws the same examples, so whether a change lands never depends on the
draw. ``chaos`` (``make chaos``) draws fresh examples, ten times as many; a
failure prints the blob that replays it (``@reproduce_failure``), and the
example that failed belongs in the test as an ``@example``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from pytest_postgresql import factories as pg_factories
from pytest_redis import factories as redis_factories

from tests.support.workers import free_port

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures" / "overpass"
OWN_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "overpass"
PG_DATABASE = "enrichment_test"


REDIS_PORT = free_port()
PG_PORT = free_port()
REDIS_URL = os.environ.get("TEST_REDIS_URL") or f"redis://127.0.0.1:{REDIS_PORT}/0"
DATABASE_URL = (
    os.environ.get("TEST_DATABASE_URL") or f"postgresql://postgres@127.0.0.1:{PG_PORT}/{PG_DATABASE}"
)
os.environ.update(
    REDIS_URL=REDIS_URL,
    DATABASE_URL=DATABASE_URL,
    BROKER="redis",
    STATE_BACKEND="redis",
    OVERPASS_CONTACT="tests@localhost",
    # The suites of the fetch pipeline count the calls each job makes: they run
    # beneath the coverage ledger, which tests/features/coverage.feature and the
    # coverage unit tests switch on.
    ENRICH_COVERAGE="false",
    # Nothing in the suite may reach the public server.
    OVERPASS_URL="http://127.0.0.1:9/api/interpreter",
)

# No example database in either profile: nothing is written into the tree, and
# a run replays nothing an earlier run happened to find.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "chaos",
    max_examples=1000,
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Redis Cluster and Sentinel topologies (session fixtures redis_cluster, redis_sentinel).
pytest_plugins = ["tests.support.redis_topologies"]

redis_proc = redis_factories.redis_proc(host="127.0.0.1", port=REDIS_PORT)
postgresql_proc = pg_factories.postgresql_proc(host="127.0.0.1", port=PG_PORT)


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """URL of a Redis server that belongs to this test session."""
    if not os.environ.get("TEST_REDIS_URL"):
        request.getfixturevalue("redis_proc")
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """URL of a PostgreSQL database that belongs to this test session."""
    if os.environ.get("TEST_DATABASE_URL"):
        return DATABASE_URL
    import psycopg

    proc = request.getfixturevalue("postgresql_proc")
    admin = f"host={proc.host} port={proc.port} user={proc.user} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE}")
        conn.execute(f"CREATE DATABASE {PG_DATABASE}")
    return DATABASE_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    """A Redis client on an emptied database."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[object]:
    """A ``rabbitmq-server`` of this session's own (tests/support/rabbitmq.py), started on first use.

    Never the machine's broker on 5672: its own node, ports, epmd, config and
    data directory, all removed afterwards. Skipped, saying why, where the
    Debian package is missing (``make servers`` installs it).
    """
    from tests.support.rabbitmq import RabbitServer, rabbitmq_installed

    if not rabbitmq_installed():
        pytest.skip("rabbitmq-server is not installed: run `make servers` (as root) or apt-get install it")
    server = RabbitServer().start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq_server: object) -> str:
    """AMQP URL of the session's RabbitMQ server."""
    from tests.support.rabbitmq import RabbitServer

    assert isinstance(rabbitmq_server, RabbitServer)
    return rabbitmq_server.url

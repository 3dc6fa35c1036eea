"""Throwaway Redis and PostgreSQL servers on free loopback ports, for benchmarks and chaos runs.

They never touch the machine's own servers on 6379 and 5432. Both can be
stopped and started again on the same port with their data kept, which is
what the restart scenarios need.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from tests.support.workers import REPO, free_port

PG_CTL = REPO / "tests" / "servers" / "pg_ctl"


class RedisServer:
    """``redis-server`` on a free port, in its own temporary directory.

    Examples:
      >>> with RedisServer() as server:  # doctest: +SKIP
      ...     redis.Redis.from_url(server.url).ping()
      True

    Parameters:
      durable: keep the data across :meth:`restart` (append-only file,
        fsync on every write); otherwise nothing is ever written to disk.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.port = free_port()
        self.durable = durable
        self.directory = Path(tempfile.mkdtemp(prefix="enrichment-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            if self.durable
            else ["--appendonly", "no", "--save", ""]
        )
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--daemonize", "no", *persistence,
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                # Loading the append-only file answers LOADING until it is done.
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}; is it installed?")
            time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM): a durable server has flushed every write."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class PostgresServer:
    """A PostgreSQL cluster initialised in a temporary directory and started on a free port.

    Runs through ``tests/servers/pg_ctl``, which works as root too.

    Examples:
      >>> with PostgresServer() as server:  # doctest: +SKIP
      ...     server.url
      'postgresql://postgres@127.0.0.1:41234/enrichment'
    """

    def __init__(self, dbname: str = "enrichment") -> None:
        from pytest_postgresql.executors.proc import PostgreSQLExecutor

        self.port = free_port()
        self.dbname = dbname
        self.directory = Path(tempfile.mkdtemp(prefix="enrichment-pg-"))
        self.executor = PostgreSQLExecutor(
            executable=str(PG_CTL),
            host="127.0.0.1",
            port=self.port,
            datadir=str(self.directory / "data"),
            unixsocketdir=str(self.directory / "socket"),
            logfile=str(self.directory / "log" / "postgresql.log"),
            startparams="-w",
            dbname=dbname,
            user="postgres",
            # Benchmarks measure our code, not the disk: no fsync, as a CI database would run.
            postgres_options="-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def dsn(self) -> str:
        """The same database as a libpq connection string (psycopg 3)."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={self.dbname}"

    def start(self) -> PostgresServer:
        import psycopg

        # The server runs as an unprivileged user when we are root: let it in.
        self.directory.chmod(0o755)
        (self.directory / "socket").mkdir(exist_ok=True)
        (self.directory / "socket").chmod(0o1777)
        try:
            self.executor.start()
            self.wait_accepting()
            admin = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
            with psycopg.connect(admin, autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", [self.dbname]
                ).fetchone()
                if exists is None:
                    conn.execute(f'CREATE DATABASE "{self.dbname}"')
        except BaseException:
            self.close()
            raise
        return self

    def wait_accepting(self, timeout_s: float = 30.0) -> None:
        """Wait until the server takes connections (it may still be starting up or recovering)."""
        import psycopg

        admin = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=2"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(admin).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.executor.stop()

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.executor.start()
        self.wait_accepting()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

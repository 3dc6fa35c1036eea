"""Checks of the Redis servers a worker is given: can they keep its queue and its state?

Two settings of a Redis server decide what the product can promise:

- ``maxmemory-policy``: any ``allkeys-*`` policy deletes queued messages
  when memory runs short, and every ``volatile-*`` policy deletes keys that
  carry a TTL, which ours do (quota counters, leases, the breaker's probe
  claim, staged POIs). A worker refuses to start on either: only
  ``noeviction`` keeps what the fleet wrote.
- persistence: a Redis with no append-only file and no RDB save points
  keeps nothing on disk, so a restart of it forgets every queued and parked
  job, leases, the breaker and the quota counters. That is a deployment
  choice, so a worker starts, but warns once and the exposition exports
  ``enrichment_state_backend_persistent 0``.

Managed services often disable ``CONFIG``; then the policy and the
append-only flag are read from ``INFO``, and what cannot be read is reported
as unknown, never as a crash.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis

logger = logging.getLogger(__name__)

#: Eviction policies that can delete our keys: every key, or every key with a TTL.
EVICTING_PREFIXES = ("allkeys-", "volatile-")
#: Dramatiq's CLI exit code for "the broker cannot be used" (``dramatiq.cli.RET_CONNECT``).
EXIT_UNSAFE_REDIS = 3
#: How long a check waits for an answer: a worker must not hang at start on a silent server.
CHECK_TIMEOUT_S = 5.0


class Persistence(enum.Enum):
    """What a Redis server keeps on disk, as far as it says."""

    AOF = "aof"  # append-only file: a restart replays every write (up to appendfsync's window)
    RDB = "rdb"  # snapshots only: a restart goes back to the last one
    NONE = "none"  # nothing: a restart starts empty
    UNKNOWN = "unknown"  # CONFIG (and INFO) could not be read

    @property
    def gauge(self) -> float:
        """The value of ``enrichment_state_backend_persistent``: 1 on disk, 0 nothing, -1 unknown."""
        return {Persistence.AOF: 1.0, Persistence.RDB: 1.0, Persistence.NONE: 0.0}.get(self, -1.0)


@dataclass(frozen=True)
class RedisSettings:
    """The settings of one Redis server that decide what survives, as read from it.

    Parameters:
      address: ``host:port/db`` (never a password).
      eviction_policy: ``maxmemory-policy``, or ``None`` when unreadable.
      appendonly: whether the append-only file is on, or ``None``.
      appendfsync: ``always``, ``everysec`` or ``no``, or ``None``.
      save: the RDB save points (``""``: none), or ``None`` when unreadable
        (``INFO`` does not show them).
      unreadable: why ``CONFIG`` could not be read ("" when it could).
    """

    address: str
    eviction_policy: str | None
    appendonly: bool | None
    appendfsync: str | None
    save: str | None
    unreadable: str = ""

    @property
    def evicts(self) -> bool:
        """Whether the eviction policy can delete our keys."""
        return self.eviction_policy is not None and self.eviction_policy.startswith(EVICTING_PREFIXES)

    @property
    def persistence(self) -> Persistence:
        if self.appendonly:
            return Persistence.AOF
        if self.appendonly is None or self.save is None:
            return Persistence.UNKNOWN
        return Persistence.RDB if self.save.strip() else Persistence.NONE


class UnsafeRedis(SystemExit):
    """A Redis server whose eviction policy can delete the fleet's keys: the worker must not start.

    A ``SystemExit`` because Dramatiq logs and swallows any ``Exception`` a
    middleware raises at worker boot, and its CLI turns a ``SystemExit`` into
    the worker's exit code (:data:`EXIT_UNSAFE_REDIS`) without a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_UNSAFE_REDIS)
        self.message = message

    def __str__(self) -> str:
        return self.message


def address_of(client: redis.Redis[Any]) -> str:
    """``host:port/db`` (or the socket path) of ``client``'s server, without credentials."""
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return f"{where}/{kwargs.get('db', 0)}"


def checking_client(client: redis.Redis[Any], timeout_s: float = CHECK_TIMEOUT_S) -> redis.Redis[Any]:
    """A new client to ``client``'s server with bounded connect and read times."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def read_settings(client: redis.Redis[Any]) -> RedisSettings:
    """Read the settings that decide what survives from ``client``'s server.

    ``CONFIG GET`` first; where it is refused (a managed service renames or
    forbids it) ``INFO`` gives the eviction policy and the append-only flag.
    Raises ``redis.ConnectionError``/``TimeoutError`` when the server cannot be reached.
    """
    address = address_of(client)
    try:
        config = {}
        for name in ("maxmemory-policy", "appendonly", "appendfsync", "save"):
            config.update(_text(client.config_get(name)))
        return RedisSettings(
            address,
            eviction_policy=config.get("maxmemory-policy"),
            appendonly=_yes(config.get("appendonly")),
            appendfsync=config.get("appendfsync"),
            save=config.get("save"),
        )
    except redis.ResponseError as exc:
        unreadable = f"CONFIG GET was refused ({exc})"
    try:
        memory = client.info("memory")
        persistence = client.info("persistence")
    except redis.ResponseError as exc:
        return RedisSettings(address, None, None, None, None, f"{unreadable}; INFO was refused too ({exc})")
    aof = persistence.get("aof_enabled")
    return RedisSettings(
        address,
        eviction_policy=_str(memory.get("maxmemory_policy")),
        appendonly=None if aof is None else bool(int(aof)),
        appendfsync=None,
        save=None,
        unreadable=unreadable,
    )


def server_identity(client: redis.Redis[Any]) -> str:
    """Something that tells two servers apart: the ``run_id`` if INFO answers, else the address."""
    try:
        run_id = client.info("server").get("run_id")
    except redis.ResponseError:
        run_id = None
    return f"{_str(run_id) or address_of(client)}/{client.connection_pool.connection_kwargs.get('db', 0)}"


def _text(config: Mapping[Any, Any]) -> dict[str, str]:
    return {_str(key) or "": _str(value) or "" for key, value in config.items()}


def _str(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _yes(value: str | None) -> bool | None:
    return None if value is None else value == "yes"


# --- What a worker does with them -----------------------------------------------------------------


def refusal(settings: RedisSettings, roles: str) -> str:
    """Why a worker refuses ``settings`` (an evicting policy), and what to do."""
    return (
        f"Redis at {settings.address} ({roles}) has maxmemory-policy {settings.eviction_policy}: when its "
        "memory fills up it deletes keys, and it would delete "
        + (
            "queued and parked jobs along with any other key"
            if settings.eviction_policy and settings.eviction_policy.startswith("allkeys-")
            else "every key with a TTL: quota counters, permit leases, the breaker's probe claim, staged POIs"
        )
        + ". Set `maxmemory-policy noeviction` (redis.conf, `CONFIG SET maxmemory-policy noeviction`, or the "
        "managed service's parameter group) and give Redis the memory it needs; the worker will not start "
        "until then."
    )


def persistence_warning(settings: RedisSettings, roles: str) -> str:
    """What a restart of ``settings``' server costs, when it keeps nothing on disk."""
    return (
        f'Redis at {settings.address} ({roles}) keeps nothing on disk (appendonly no, save ""): if it '
        "restarts, every queued and parked job is lost, with the permits' leases, the breaker state and "
        "the quota counters. Turn on the append-only file (`appendonly yes`) if jobs must survive a Redis "
        "restart; docs/architecture.md (State, restarts and an unreachable Redis) lists what each failure "
        "costs. Exported as enrichment_state_backend_persistent 0."
    )


def check_servers(clients: Mapping[str, redis.Redis[Any]]) -> dict[str, RedisSettings]:
    """Check every server among ``clients`` (role -> client) once; refuse an evicting one, warn on the rest.

    Returns the settings read, by server address. Raises :class:`UnsafeRedis`
    for an eviction policy that can delete our keys. A server that cannot be
    reached or read is logged as not checked (the broker reconnects by itself).
    """
    servers: dict[str, tuple[redis.Redis[Any], list[str]]] = {}
    for role, client in clients.items():
        probe = checking_client(client)
        try:
            identity = server_identity(probe)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning(
                "Could not check the Redis at %s (%s) at start: %s. Its eviction policy and persistence are "
                "not verified; the worker carries on and reconnects.",
                address_of(client),
                role,
                exc,
            )
            probe.close()
            continue
        if identity in servers:
            probe.close()
            servers[identity][1].append(role)
        else:
            servers[identity] = (probe, [role])
    found: dict[str, RedisSettings] = {}
    try:
        for probe, roles in servers.values():
            who = " and ".join(roles)
            try:
                settings = read_settings(probe)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning(
                    "Could not read the settings of the Redis at %s (%s): %s.", address_of(probe), who, exc
                )
                continue
            found[settings.address] = settings
            _report(settings, who)
    finally:
        for probe, _ in servers.values():
            probe.close()
    return found


def _report(settings: RedisSettings, roles: str) -> None:
    if settings.evicts:
        message = refusal(settings, roles)
        logger.critical(message)
        raise UnsafeRedis(message)
    if settings.eviction_policy is None:
        logger.warning(
            "Could not check the eviction policy of the Redis at %s (%s): %s. Make sure it is "
            "`maxmemory-policy noeviction`: any other policy can delete queued jobs or keys with a TTL.",
            settings.address,
            roles,
            settings.unreadable,
        )
    persistence = settings.persistence
    if persistence is Persistence.NONE:
        logger.warning(persistence_warning(settings, roles))
    elif persistence is Persistence.UNKNOWN:
        logger.warning(
            "Could not tell whether the Redis at %s (%s) keeps anything on disk: %s. If it has neither the "
            "append-only file nor RDB snapshots, a restart of it loses every queued and parked job.",
            settings.address,
            roles,
            settings.unreadable,
        )
    elif persistence is Persistence.RDB:
        logger.info(
            "Redis at %s (%s) keeps RDB snapshots only (save %s): a restart goes back to the last snapshot, "
            "losing the jobs queued and parked since. `appendonly yes` loses at most a second.",
            settings.address,
            roles,
            settings.save,
        )


def persistence_gauge(clients: Iterable[redis.Redis[Any]]) -> float:
    """``enrichment_state_backend_persistent`` for ``clients``' servers: the worst of them.

    0 when any keeps nothing on disk, else -1 when any could not be read, else 1.
    Raises when a server cannot be reached (the scrape then reports the state as down).
    """
    servers = {address_of(client): client for client in clients}
    values = [read_settings(client).persistence.gauge for client in servers.values()]
    if 0.0 in values:
        return 0.0
    return min(values, default=-1.0)


class RedisChecks(dramatiq.Middleware):
    """Checks, when a worker starts, that the Redis servers it is given can keep its queue and state.

    Once per worker process, before its threads start: a server whose
    eviction policy can delete our keys stops the worker (:class:`UnsafeRedis`,
    exit code 3, with a message naming the setting and the fix); a server that
    keeps nothing on disk is logged once as a warning. The broker's and the
    state backend's clients are checked; one server serving both is checked once.

    Examples:
      >>> broker.add_middleware(RedisChecks(lambda: {"broker": broker.client}))  # doctest: +SKIP

    Parameters:
      clients: returns role -> Redis client for the servers to check (none: nothing to do).
    """

    def __init__(self, clients: Callable[[], Mapping[str, redis.Redis[Any]]]) -> None:
        self.clients = clients
        self._checked_in: int | None = None

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._checked_in == os.getpid():
            return
        self._checked_in = os.getpid()
        check_servers(self.clients())


def redis_clients(broker: object, backend: object) -> dict[str, redis.Redis[Any]]:
    """The Redis clients among ``broker`` and ``backend`` (role -> client), by their ``client`` attribute."""
    found = {}
    for role, holder in (("broker", broker), ("state backend", backend)):
        client = getattr(holder, "client", None)
        if isinstance(client, redis.Redis):
            found[role] = client
    return found

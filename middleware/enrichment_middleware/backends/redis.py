"""A backend on Redis: the primitives shared by every worker of a fleet.

Each multi-step primitive is one Lua script (a file of ``lua/``, loaded by
:mod:`.lua_scripts`), so it is atomic and costs one round trip.  Every script that needs "now" reads the server's ``TIME``, so
the whole fleet shares one clock whatever its hosts' clocks say (scripts are
replicated by their effects, the default since Redis 5, so ``TIME`` is
allowed before writes).  Keys are ``<namespace>:<kind>:{<key>}``; the kinds are
``counter``, ``lease`` (a sorted set of holder -> expiry), ``lease-cap``,
``lease-wake`` (the wake-up list :meth:`RedisBackend.lease_wait` blocks on),
``state`` (a hash of version and JSON value), ``park-due`` (a sorted set of
member -> due time), ``park-payload`` and ``park-token`` (hashes of member ->
payload and member -> token of its parking) and ``park-orphans`` (a counter).
The quota's window counters are named inside the script from the server's
time (``counter:{<key>}:<window start>:<name>``).

The ``{<key>}`` is a Redis Cluster hash tag: every key of one policy (its
leases, cap and wake list; its parked members, payloads and tokens; its
window counters) hashes to one slot, so each script touches one slot, as a
cluster demands, and the same names work on a standalone Redis, a primary
with replicas behind Sentinel, or a Redis Cluster (see
:meth:`RedisBackend.from_url`).  Releases before the hash tags named keys
``<namespace>:<kind>:<key>``: state kept under the old names is not read.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.cluster
import redis.sentinel
from redis.crc import key_slot

from enrichment_middleware.backends.base import (
    PAUSE_KEPT_S,
    WAKE_TOKEN_TTL_S,
    WAKE_TOKENS_KEPT,
    Backend,
    BackendUnavailable,
    HandedSeat,
    ParkedClaim,
    RoomCounts,
    Seating,
    Step,
    WindowCounts,
    check_counter_arguments,
    check_lane,
    steps_to_save,
)
from enrichment_middleware.backends.lua_scripts import all_or_nothing_source, source
from enrichment_middleware.redaction import redact, redact_url

#: A window counter's key as :func:`~enrichment_middleware.backends.base.window_key` makes it
#: (``<key>:<window start>:<name>``): its hash tag is ``<key>``, the tag of the
#: counters lua/window_admit.lua names, so a refund reaches the counter it admitted on.
_WINDOW_COUNTER = re.compile(r"^(?P<key>.*):(?P<start>\d+):(?P<name>[^:]+)$", re.DOTALL)

#: How long a park waits for replicas to confirm it (``WAIT``) before it is
#: reported as failed (and retried: parking the same member again is harmless).
PARK_WAIT_S = 2.0


#: Error replies that mean "not now" rather than "never": a replica after a
#: failover (READONLY), a full memory (OOM), a server loading its data
#: (LOADING, a ConnectionError in redis-py already), a replica cut off from
#: its primary (MASTERDOWN), a cluster in flux (TRYAGAIN, CLUSTERDOWN).
#: redis-py turns those codes into these classes...
class _Captured(Exception):
    """Stops a primitive once its script call is captured (RedisBackend._captured)."""


_TRANSIENT_ERRORS = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,  # type: ignore[attr-defined]  # not in types-redis yet
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,  # MasterDownError too
)
#: ... and leaves these in the message: a long script (BUSY), too few replicas (NOREPLICAS).
_TRANSIENT_REPLY = re.compile(r"^(BUSY|NOREPLICAS|MASTERDOWN|READONLY|OOM)\b")


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (Redis refuses 0 and deletes on negatives)."""
    return max(1, math.ceil(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _redacted(url: str) -> str:
    """The URL with its password replaced, fit for an error message."""
    return redact_url(url)


class RedisTopologyError(ValueError):
    """The Redis the backend was given is not the topology it was told: fix the settings."""


def _sentinel_addresses(sentinels: Sequence[str] | str) -> list[tuple[str, int]]:
    """``host:port`` entries (a list, or one comma-separated string) as (host, port) pairs."""
    entries = sentinels.split(",") if isinstance(sentinels, str) else list(sentinels)
    addresses = []
    for entry in (item.strip() for item in entries):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise RedisTopologyError(f"A Sentinel address must be host:port, got {entry!r}.")
        addresses.append((host.strip("[]"), int(port)))
    if not addresses:
        raise RedisTopologyError("Sentinel needs at least one host:port.")
    return addresses


class RedisBackend(Backend):
    """Every primitive of :class:`~enrichment_middleware.backends.base.Backend` on a Redis server (5 or later).

    The server's clock is the fleet's clock: hosts whose clocks disagree still
    agree on leases, windows, cooldowns and due times.  A standalone Redis, a
    primary found through Sentinel, or a Redis Cluster: every key of one
    policy carries the hash tag ``{<key>}``, so each script stays in one slot.

    Examples:
      >>> backend = RedisBackend.from_url("redis://127.0.0.1:6380/0")  # doctest: +SKIP
      >>> backend.ping()  # doctest: +SKIP

      A Redis Cluster (the URL names any node) or the primary Sentinel names::

        backend = RedisBackend.from_url("redis://node-1:7000", cluster=True)
        backend = RedisBackend.from_url(
            "redis://:secret@/0", sentinels=["s1:26379", "s2:26379"], sentinel_master="mymaster"
        )

      Or with a client you already have (it must not decode responses:
      parked payloads are bytes)::

        backend = RedisBackend(redis.Redis(host="cache", socket_timeout=5), namespace="enrich")

    Parameters:
      client(redis.Redis | redis.cluster.RedisCluster): The client to use.
        Give it a ``socket_timeout`` so that a stalled server raises instead
        of hanging a worker.
      namespace(str): Prefix of every key, so several deployments can share
        one database.  Defaults to ``"middleware"``.
      park_replicas(int): Replicas that must hold a park before it counts as
        done (``WAIT``), so a failover cannot lose a parked job.  Defaults to
        0 (a standalone Redis); :meth:`from_url` makes it 1 with Sentinel.
    """

    def __init__(
        self,
        client: redis.Redis[bytes] | redis.cluster.RedisCluster[bytes],
        *,
        namespace: str = "middleware",
        park_replicas: int = 0,
    ) -> None:
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        if isinstance(client, redis.cluster.RedisCluster):
            settings: dict[str, Any] = dict(client.nodes_manager.connection_kwargs)
        else:
            settings = client.connection_pool.connection_kwargs
        if settings.get("decode_responses"):
            raise ValueError(
                "RedisBackend needs a client made with decode_responses=False: parked payloads are bytes. "
                "Create a separate client for it, e.g. RedisBackend.from_url(url)."
            )
        if park_replicas < 0:
            raise ValueError(f"park_replicas must be >= 0, got {park_replicas}")
        self.client: Any = client
        self.namespace = namespace
        self.park_replicas = park_replicas
        self._settings = settings
        self._sentinel: redis.sentinel.Sentinel | None = None
        self._sentinel_master = ""
        self._where = self._describe(settings)
        if self._cluster:
            self._where = f"Redis Cluster via {self._where}"
        socket_timeout = settings.get("socket_timeout", settings.get("orig_socket_timeout"))
        # BLPOP must return before the socket read times out, or a quiet wait
        # would look like a dead server.
        if isinstance(socket_timeout, int | float) and socket_timeout > 0:
            self._longest_block_s = max(socket_timeout - 0.5, socket_timeout / 2)
        else:
            self._longest_block_s = 4.5
        # Registered on first use: a registered script is only its text and its SHA.
        self._scripts: dict[str, Callable[..., Any]] = {}
        self._batches: dict[tuple[str, ...], Callable[..., Any]] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "middleware",
        socket_timeout_s: float = 5.0,
        cluster: bool = False,
        sentinels: Sequence[str] | str = (),
        sentinel_master: str = "mymaster",
        park_replicas: int | None = None,
    ) -> RedisBackend:
        """A backend on a new client for ``url`` (``redis://[:password@]host:port/db``,
        ``rediss://`` for TLS, ``unix:///path.sock``).  Connecting and every reply time
        out after ``socket_timeout_s``.

        With ``cluster=True`` the URL names one node of a Redis Cluster (the
        client learns the others from it; it must answer now, or this raises
        :class:`RedisTopologyError`).  With ``sentinels`` (``host:port``
        entries, or one comma-separated string) the URL's host is ignored: the
        primary is the one the Sentinels name ``sentinel_master``, found again
        after a failover; the URL still gives password, database and TLS.
        ``park_replicas`` (default: 1 with Sentinel, else 0) replicas must
        confirm each park.  Call :meth:`check_topology` at start to fail early
        on a wrong topology.
        """
        timeouts = {"socket_timeout": socket_timeout_s, "socket_connect_timeout": socket_timeout_s}
        if cluster and sentinels:
            raise RedisTopologyError("Give either a Redis Cluster or Sentinels, not both.")
        if cluster:
            try:
                client: Any = redis.cluster.RedisCluster.from_url(url, **timeouts)
            except (redis.exceptions.RedisClusterException, redis.RedisError) as error:
                reason = redact(str(error), secrets=[urlsplit(url).password])
                raise RedisTopologyError(
                    f"No Redis Cluster answers at {_redacted(url)} ({reason}). Check that the URL names a "
                    "node of the cluster (cluster-enabled yes) that is up, or leave the cluster setting off "
                    "for a standalone Redis."
                ) from None
            backend = cls(client, namespace=namespace, park_replicas=park_replicas or 0)
            backend._where = f"Redis Cluster via {_redacted(url)}"
            return backend
        if sentinels:
            addresses = _sentinel_addresses(sentinels)
            options = redis.connection.parse_url(url) if "://" in url else {}
            kwargs = {
                name: options[name]
                for name in ("username", "password", "db")
                if options.get(name) is not None
            }
            if urlsplit(url).scheme == "rediss":
                kwargs["ssl"] = True
            sentinel = redis.sentinel.Sentinel(
                addresses, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
            )
            client = sentinel.master_for(sentinel_master, **timeouts, **kwargs)
            replicas = 1 if park_replicas is None else park_replicas
            backend = cls(client, namespace=namespace, park_replicas=replicas)
            backend._sentinel, backend._sentinel_master = sentinel, sentinel_master
            where = ",".join(f"{host}:{port}" for host, port in addresses)
            backend._where = f"the primary {sentinel_master!r} of the Sentinels {where}"
            return backend
        client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
        backend = cls(client, namespace=namespace, park_replicas=park_replicas or 0)
        backend._where = _redacted(url)
        return backend

    def check_topology(self) -> None:
        """Check that the server is the topology this backend was made for; raise
        :class:`RedisTopologyError` naming the fix if not, :class:`BackendUnavailable`
        when it cannot be reached.  Run it once at start: a cluster node used as a
        standalone Redis would otherwise answer some keys and refuse others (MOVED)."""
        if self._sentinel is not None:
            self._check_sentinels()
            return
        with self._reachable():
            try:
                info = self.client.info("server") if not self._cluster else {}
                if not self._cluster:
                    info.update(self.client.info("cluster"))
            except redis.ResponseError:
                return  # INFO renamed away (a managed service): nothing to check
        mode = _text(info.get("redis_mode", "standalone")) if info else "cluster"
        if not self._cluster and (mode == "cluster" or info.get("cluster_enabled")):
            raise RedisTopologyError(
                f"Redis at {self._where} is a node of a Redis Cluster: as a standalone Redis it would refuse "
                "the keys of other nodes (MOVED). Tell the product it is a cluster (REDIS_CLUSTER=true)."
            )
        if mode == "sentinel":
            raise RedisTopologyError(
                f"{self._where} is a Redis Sentinel, not a Redis server. Give the Sentinels as REDIS_SENTINELS "
                "(host:port,...) and the name of the primary they watch as REDIS_SENTINEL_MASTER."
            )

    def _check_sentinels(self) -> None:
        assert self._sentinel is not None
        known: set[str] = set()
        errors = []
        for sentinel in self._sentinel.sentinels:
            try:
                known.update(_text(name) for name in sentinel.sentinel_masters())  # type: ignore[no-untyped-call]
            except redis.RedisError as error:
                errors.append(f"{type(error).__name__}: {error}")
        if not known and errors:
            raise BackendUnavailable(
                f"No Sentinel of {self._where} can be reached ({'; '.join(errors)}). "
                "Check REDIS_SENTINELS (host:port,...) and that the Sentinels are running."
            )
        if self._sentinel_master not in known:
            raise RedisTopologyError(
                f"The Sentinels of {self._where} know no primary named {self._sentinel_master!r} "
                f"(they know: {', '.join(sorted(known)) or 'none'}). Set REDIS_SENTINEL_MASTER to the name "
                "in their 'sentinel monitor' line."
            )
        with self._reachable():
            self.client.ping()

    @staticmethod
    def _describe(settings: dict[str, Any]) -> str:
        if settings.get("path"):
            return f"unix://{settings['path']}"
        host = settings.get("host", "localhost")
        port = settings.get("port", 6379)
        return f"redis://{host}:{port}/{settings.get('db', 0)}"

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        # redis-py's error text can name the URL: the message (logged, and kept
        # in a message's last_error and traceback) shows it with the password
        # masked, and a cause that shows it is not chained.
        password = self._settings.get("password")
        try:
            yield
        except (redis.exceptions.MovedError, redis.exceptions.AskError) as error:
            raise RedisTopologyError(
                f"Redis at {self._where} redirects to another node ({error}): it is a Redis Cluster. "
                "Tell the product it is a cluster (REDIS_CLUSTER=true)."
            ) from None
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError) as error:
            reason = redact(str(error), secrets=[password])
            raise BackendUnavailable(
                f"Redis at {self._where} cannot be reached ({reason}). "
                f"Check that the server is running and that the URL (host, port, password, TLS) points at it."
            ) from (error if reason == str(error) else None)
        except redis.ResponseError as error:
            if not isinstance(error, _TRANSIENT_ERRORS) and _TRANSIENT_REPLY.match(str(error)) is None:
                raise
            reason = redact(str(error), secrets=[password])
            raise BackendUnavailable(
                f"Redis at {self._where} refuses the command for now "
                f"({type(error).__name__}: {reason}). "
                "Check that the URL points at the primary (after a failover), that maxmemory leaves room, "
                "and that no script blocks the server."
            ) from (error if reason == str(error) else None)

    def reachable(self) -> contextlib.AbstractContextManager[None]:
        """Run commands of your own on :attr:`client` with this backend's error handling: an
        unreachable or refusing server raises :class:`BackendUnavailable` (password masked)."""
        return self._reachable()

    def key(self, kind: str, key: str) -> str:
        """The full name of ``key`` of ``kind`` in this backend's namespace:
        ``<namespace>:<kind>:{<key>}``, the hash tag keeping one policy's keys in one slot."""
        return self._counter_key(key) if kind == "counter" else self._key(kind, key)

    def _key(self, kind: str, key: str) -> str:
        return f"{self.namespace}:{kind}:{{{key}}}"

    def _counter_key(self, key: str) -> str:
        # A window counter keeps the tag of the window's key, as lua/window_admit.lua names it.
        window = _WINDOW_COUNTER.match(key)
        if window is None:
            return self._key("counter", key)
        return f"{self._key('counter', window['key'])}:{window['start']}:{window['name']}"

    def _script(self, name: str) -> Callable[..., Any]:
        """Script ``name`` of :mod:`.lua_scripts`, registered on this client on first use."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(source(name))
        return script

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with self._reachable():
            return self._script(script)(keys=list(keys), args=list(args))

    # -- all or nothing -----------------------------------------------------

    def all_or_nothing(self, steps: Sequence[Step]) -> list[Any] | None:
        """One script runs every step (lua/all_or_nothing.lua): one round trip, atomic.

        Each primitive is captured as it would run (its script, keys and
        arguments), and its reply decoded as it would be, by the primitive's
        own method; so a batched step is the same script on the same keys.
        None (nothing ran), for the caller to go step by step, when the keys
        are in more than one slot of a Redis Cluster, or a ``window_admit``
        (whose counters are not all its keys) is not the last step.
        """
        if any(step.primitive == "window_admit" for step in steps[:-1]):
            return None
        calls = [self._captured(step) for step in steps]
        keys = [key for _, step_keys, _ in calls for key in step_keys]
        if self._cluster and len({key_slot(key.encode()) for key in keys}) > 1:
            return None
        args: list[Any] = [len(steps), steps_to_save(steps)]
        for step, (script, step_keys, step_args) in zip(steps, calls, strict=True):
            args += [script, step.condition, len(step_keys), len(step_args), *step_args]
        primitives = tuple(sorted({script for script, _, _ in calls}))
        batch = self._batches.get(primitives)
        if batch is None:
            batch = self._batches[primitives] = self.client.register_script(all_or_nothing_source(primitives))
        with self._reachable():
            reply = batch(keys=keys, args=args)
        if reply[0] != 0:
            return None
        return [self._decoded(step, raw) for step, raw in zip(steps, reply[1:], strict=True)]

    def _captured(self, step: Step) -> tuple[str, list[str], list[Any]]:
        """The script, keys and arguments ``step``'s primitive would run (it runs nothing)."""
        captured: list[tuple[str, list[str], list[Any]]] = []

        def capture(script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
            captured.append((script, list(keys), list(args)))
            raise _Captured

        recorder = copy.copy(self)
        recorder._run = capture  # type: ignore[method-assign]
        with contextlib.suppress(_Captured):
            getattr(recorder, step.primitive)(*step.args, **step.kwargs)
        if len(captured) != 1:
            raise ValueError(
                f"{step.primitive} does not run one script: it cannot be a step of all_or_nothing"
            )
        return captured[0]

    def _decoded(self, step: Step, raw: Any) -> Any:
        """What ``step``'s primitive answers when its script replies ``raw``."""
        replayer = copy.copy(self)
        replayer._run = lambda script, keys, args: raw  # type: ignore[method-assign]
        return getattr(replayer, step.primitive)(*step.args, **step.kwargs)

    def now(self) -> float:
        with self._reachable():
            seconds, microseconds = self.client.time()
        return int(seconds) + int(microseconds) / 1_000_000

    # -- stages -------------------------------------------------------------

    def stage_put(
        self, key: str, fields: Mapping[str, bytes], ttl_s: float, remove: Sequence[str] = ()
    ) -> set[str]:
        args: list[Any] = [max(1, int(ttl_s * 1000)), len(remove), *remove]
        for name, value in fields.items():
            args += [name, value]
        return {_text(name) for name in self._run("stage_put", [self._key("stage", key)], args)}

    def stage_get(self, key: str, field: str) -> bytes | None:
        value = self._run("stage_get", [self._key("stage", key)], [field])
        return None if value is None else bytes(value)

    def stage_look(self, key: str, wanted: Sequence[str] = ()) -> tuple[set[str], dict[str, bytes]]:
        names, values = self._run("stage_look", [self._key("stage", key)], list(wanted))
        present = {
            field: bytes(value) for field, value in zip(wanted, values, strict=False) if value is not None
        }
        return {_text(name) for name in names}, present

    # -- counters -----------------------------------------------------------

    def window_admit(
        self,
        key: str,
        names: Sequence[str],
        limits: Sequence[int],
        increments: Sequence[int],
        *,
        window_s: int,
        ttl_s: float,
        priors: Sequence[int] | None = None,
    ) -> WindowCounts:
        priors = check_counter_arguments(names, limits, increments, priors)
        if int(window_s) != window_s or window_s <= 0:
            raise ValueError(f"window_s must be a positive whole number of seconds, got {window_s}")
        if any(":" in name for name in names):
            raise ValueError(f"window_admit names must not contain ':' (a window counter's key), got {names}")
        args = [
            int(window_s),
            _ms(ttl_s),
            len(names),
            *names,
            *limits,
            *increments,
            *priors,
        ]
        reply = self._run("window_admit", [self._key("counter", key)], args)
        return WindowCounts(
            bool(reply[0]), float(_text(reply[1])), float(_text(reply[2])), [int(v) for v in reply[3:]]
        )

    def counter_add(self, key: str, amount: int, ttl_s: float) -> int:
        return int(self._run("counter_add", [self._counter_key(key)], [amount, _ms(ttl_s)]))

    def counters_get(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        names = [self._counter_key(key) for key in keys]
        with self._reachable():
            # A cluster answers MGET only for keys of one slot: one GET per slot's node.
            values = self.client.mget_nonatomic(names) if self._cluster else self.client.mget(names)
        return [int(value or 0) for value in values]

    # -- leases -------------------------------------------------------------

    def lease_acquire(self, key: str, holder: str, limit: int, lease_s: float) -> float | None:
        keys = [self._key("lease", key), self._key("lease-cap", key)]
        granted = self._run("lease_acquire", keys, [holder, limit, repr(float(lease_s))])
        return None if granted is None else float(_text(granted))

    def lease_release(self, key: str, holder: str) -> bool:
        keys = [self._key("lease", key), self._key("lease-wake", key)]
        return bool(self._run("lease_release", keys, [holder, WAKE_TOKENS_KEPT, _ms(WAKE_TOKEN_TTL_S)]))

    def lease_transfer(
        self, key: str, holder: str, to_holder: str, limit: int, lease_s: float
    ) -> float | None:
        keys = [self._key("lease", key), self._key("lease-cap", key), self._key("lease-wake", key)]
        args = [holder, to_holder, limit, repr(float(lease_s)), WAKE_TOKENS_KEPT, _ms(WAKE_TOKEN_TTL_S)]
        granted = self._run("lease_transfer", keys, args)
        return None if granted is None else float(_text(granted))

    def lease_count(self, key: str) -> int:
        return int(self._run("lease_count", [self._key("lease", key)], []))

    def lease_wait(self, key: str, timeout_s: float) -> bool:
        wake_key = self._key("lease-wake", key)
        with self._reachable():
            if timeout_s <= 0:
                # BLPOP with 0 would block forever; only take a wake-up already there.
                return self.client.lpop(wake_key) is not None
            # Redis checks blocking timeouts about every 100 ms (hz 10), so an
            # unwoken wait may overrun by that much; a release still wakes at once.
            timeout = min(max(timeout_s, 0.01), self._longest_block_s)
            return self.client.blpop([wake_key], timeout=timeout) is not None

    def lease_set_cap(self, key: str, cap: int | None, ttl_s: float) -> None:
        with self._reachable():
            if cap is None:
                self.client.delete(self._key("lease-cap", key))
            else:
                self.client.set(self._key("lease-cap", key), cap, px=_ms(ttl_s))

    def lease_get_cap(self, key: str) -> int | None:
        with self._reachable():
            cap = self.client.get(self._key("lease-cap", key))
        return None if cap is None else int(cap)

    # -- versioned state ----------------------------------------------------

    def state_get(self, key: str) -> tuple[int, dict[str, Any] | None]:
        with self._reachable():
            version, encoded = self.client.hmget(self._key("state", key), ["version", "value"])
        if version is None or encoded is None:
            return 0, None
        value: dict[str, Any] = json.loads(encoded)
        return int(version), value

    def state_get_now(self, key: str) -> tuple[int, dict[str, Any] | None, float]:
        version, encoded, seconds, microseconds = self._run("state_get_now", [self._key("state", key)], [])
        now = int(seconds) + int(microseconds) / 1_000_000
        if version is None or encoded is None:
            return 0, None, now
        value: dict[str, Any] = json.loads(encoded)
        return int(version), value, now

    def state_cas(self, key: str, version: int, value: dict[str, Any]) -> bool:
        return bool(self._run("state_cas", [self._key("state", key)], [version, json.dumps(value)]))

    # -- parking lot --------------------------------------------------------

    def _park_keys(self, key: str) -> list[str]:
        return [self._key("park-due", key), self._key("park-payload", key), self._key("park-token", key)]

    def _run_replicated(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, int]:
        """Run ``script``, then wait for ``park_replicas`` replicas to hold what it wrote; its reply
        and how many did (all of them, by definition, when none is asked for).

        WAIT counts the writes of its own connection: the script and the WAIT go
        down one pipeline. Until replicas hold a job kept here, a failover could
        lose it after the worker acknowledged its message.
        """
        if not self.park_replicas:
            return self._run(script, keys, args), 0
        with self._reachable():
            pipe = self.client.pipeline(transaction=False)
            self._script(script)(keys=list(keys), args=list(args), client=pipe)
            pipe.execute_command("WAIT", self.park_replicas, _ms(PARK_WAIT_S))
            reply, confirmed = pipe.execute()
        return reply, int(confirmed)

    def park(self, key: str, member: str, payload: bytes, delay_s: float, token: str) -> None:
        args = [member, payload, repr(float(delay_s)), token]
        # Too few replicas is an error, and the caller parks again (the same member, harmlessly).
        _, confirmed = self._run_replicated("park", self._park_keys(key), args)
        if confirmed < self.park_replicas:
            raise BackendUnavailable(
                f"Redis at {self._where} holds the parked {member!r} but {confirmed} of "
                f"{self.park_replicas} replicas confirmed it within {PARK_WAIT_S:g}s: a failover could lose "
                "it. Check that the replicas are up and in sync; the park is tried again."
            )

    def claim_due(self, key: str, limit: int, claim_s: float) -> tuple[list[ParkedClaim], list[str]]:
        if limit <= 0:
            return [], []
        keys = [*self._park_keys(key), self._key("park-orphans", key)]
        claimed, orphans = self._run("claim_due", keys, [limit, repr(float(claim_s))])
        claims = [
            ParkedClaim(_text(claimed[i]), bytes(claimed[i + 1]), _text(claimed[i + 2]))
            for i in range(0, len(claimed), 3)
        ]
        return claims, [_text(member) for member in orphans]

    def unpark(self, key: str, member: str, token: str) -> bool:
        return bool(self._run("unpark", self._park_keys(key), [member, token]))

    def parked_count(self, key: str) -> int:
        with self._reachable():
            return int(self.client.zcard(self._key("park-due", key)))

    def parked_orphans(self, key: str) -> int:
        with self._reachable():
            return int(self.client.get(self._key("park-orphans", key)) or 0)

    def ping(self) -> None:
        with self._reachable():
            self.client.ping()

    # -- pause --------------------------------------------------------------
    # Keys ``pause:<key>`` (a hash of until, since, reason; it expires
    # PAUSE_KEPT_S after the pause ends) and ``hold:<key>`` (a hash of since,
    # reason, fingerprint; it never expires).

    def pause_extend(self, key: str, seconds: float, reason: str) -> tuple[bool, float]:
        if not seconds > 0:
            raise ValueError(f"pause_extend needs seconds > 0, got {seconds}")
        args = [repr(float(seconds)), reason, _ms(PAUSE_KEPT_S)]
        opened, ends = self._run("pause_extend", [self._key("pause", key)], args)
        return bool(opened), float(_text(ends))

    def pause_get(self, key: str) -> dict[str, Any] | None:
        keys = [self._key("pause", key), self._key("hold", key)]
        now, until, since, reason, held, held_since, hold_reason, fingerprint = self._run(
            "pause_get", keys, []
        )
        if until is None and not held:
            return None

        def number(value: bytes | None) -> float | None:
            return None if value is None else float(_text(value))

        def text(value: bytes | None) -> str | None:
            return None if value is None else _text(value)

        return {
            "now": float(_text(now)),
            "paused_until": number(until),
            "paused_since": number(since),
            "pause_reason": text(reason),
            "held": bool(held),
            "held_since": number(held_since),
            "hold_reason": text(hold_reason),
            "fingerprint": text(fingerprint),
        }

    def hold_set(self, key: str, reason: str, fingerprint: str) -> bool:
        args = [reason, fingerprint]
        return bool(self._run("hold_set", [self._key("hold", key)], args))

    def hold_clear(self, key: str, unless_fingerprint: str | None) -> bool:
        args = ["0", ""] if unless_fingerprint is None else ["1", unless_fingerprint]
        return bool(self._run("hold_clear", [self._key("hold", key)], args))

    # -- pacing -------------------------------------------------------------
    # Key ``pacing:<key>``: a hash of ``tat`` (the next reservation) and
    # ``start`` (the earliest next start); it expires a minute after the last
    # slot it reserved.  Times are rounded to the microsecond (``at``) before
    # they are compared, so the caller, comparing the returned strings, agrees.

    def _run_pacing(self, name: str, key: str, args: Sequence[Any]) -> tuple[float, float]:
        first, now = self._run(name, [self._key("pacing", key)], args)
        return float(_text(first)), float(_text(now))

    def gcra_reserve(
        self, key: str, interval_s: float, burst: int, *, wait_s: float = 0.0
    ) -> tuple[float, float]:
        args = [repr(float(interval_s)), int(burst), repr(float(wait_s))]
        return self._run_pacing("gcra_reserve", key, args)

    def gcra_claim(
        self, key: str, slot_at: float, interval_s: float, burst: int, *, wait_s: float = 0.0
    ) -> tuple[float, float]:
        args = [repr(float(interval_s)), int(burst), repr(float(wait_s)), repr(float(slot_at))]
        return self._run_pacing("gcra_claim", key, args)

    def gcra_get(self, key: str) -> tuple[float, float]:
        return self._run_pacing("gcra_get", key, [])

    # -- rooms --------------------------------------------------------------
    # Keys ``room-<part>:{<key>}``, one hash tag per room (lua/room.lua names each part).

    _ROOM_PARTS = (
        "seats", "tokens", "queue", "entries", "payloads", "passes", "weights", "counts", "meta", "handed", "left",
        "left-tokens",
    )  # fmt: skip

    def _room_keys(self, key: str) -> list[str]:
        return [self._key(f"room-{part}", key) for part in self._ROOM_PARTS]

    @staticmethod
    def _handed(raw: Sequence[Any]) -> list[HandedSeat]:
        return [
            HandedSeat(_text(member), _text(lane), _text(token), bytes(payload))
            for member, lane, token, payload in raw
        ]

    def room_enter(
        self,
        key: str,
        lane: str,
        member: str,
        payload: bytes,
        *,
        token: str,
        weight: float,
        seats: int,
        seat_s: float,
        handoff_s: float,
    ) -> Seating:
        check_lane(lane)
        args = [lane, member, payload, token, repr(float(weight)), int(seats), repr(float(seat_s))]
        args.append(repr(float(handoff_s)))
        # As park: a member left waiting must be on the replicas before its message is acknowledged.
        (status, mine, handed), confirmed = self._run_replicated("room_enter", self._room_keys(key), args)
        seating = Seating(_text(status), _text(mine), self._handed(handed))
        # Not on the replicas: its message is put back instead, so the room must not send it too.
        # Handed a seat meanwhile, the room has it in hand: it waits as it would have.
        unconfirmed = confirmed < self.park_replicas and seating.status == "waiting"
        if unconfirmed and self.room_withdraw(key, member):
            raise BackendUnavailable(
                f"Redis at {self._where} took {member!r} into room {key!r} but {confirmed} of "
                f"{self.park_replicas} replicas confirmed it within {PARK_WAIT_S:g}s: a failover could lose "
                "it, so it was taken out again and its message is put back. Check that the replicas are up "
                "and in sync. (The seats this enter handed on lapse and are handed again.)"
            )
        return seating

    def room_withdraw(self, key: str, member: str) -> bool:
        return bool(self._run("room_withdraw", self._room_keys(key), [member]))

    def room_seat(self, key: str, member: str, token: str, *, seats: int, seat_s: float) -> str | None:
        # Its four small keys only: the room's step in an all-or-nothing batch, which saves each key.
        keys = [self._key(f"room-{part}", key) for part in ("seats", "tokens", "meta", "handed")]
        mine = self._run("room_seat", keys, [member, token, int(seats), repr(float(seat_s))])
        return None if mine is None else _text(mine)

    def room_keep(self, key: str, member: str, token: str, seat_s: float) -> bool:
        return bool(self._run("room_keep", self._room_keys(key), [member, token, repr(float(seat_s))]))

    def room_leave(
        self,
        key: str,
        member: str | None,
        token: str,
        *,
        seats: int,
        handoff_s: float,
        called: str = "",
        window_s: int = 86_400,
        left_s: float = 600.0,
        early: bool = False,
    ) -> list[HandedSeat]:
        args = [member or "", token, int(seats), repr(float(handoff_s)), called, int(window_s)]
        args += [repr(float(left_s)), "1" if early else "0"]
        return self._handed(self._run("room_leave", self._room_keys(key), args))

    def room_counts(self, key: str, *, window_s: int = 86_400) -> RoomCounts:
        seated, counts, calls = self._run("room_counts", self._room_keys(key), [int(window_s)])

        def by_lane(flat: Sequence[Any]) -> dict[str, int]:
            pairs = {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
            return {lane: n for lane, n in pairs.items() if n > 0}

        return RoomCounts(int(seated), by_lane(counts), by_lane(calls))

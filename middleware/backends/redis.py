"""A backend on Redis: the primitives shared by every worker of a fleet.

Each multi-step primitive is one Lua script, so it is atomic and costs one
round trip.  Keys are ``<namespace>:<kind>:<key>``; the kinds are
``counter``, ``lease`` (a sorted set of holder -> expiry), ``lease-cap``,
``lease-wake`` (the wake-up list :meth:`RedisBackend.lease_wait` blocks on),
``state`` (a hash of version and JSON value), ``park-due`` (a sorted set of
member -> due time) and ``park-payload`` (a hash of member -> payload).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from middleware.backends.base import (
    WAKE_TOKEN_TTL_S,
    WAKE_TOKENS_KEPT,
    Backend,
    BackendUnavailable,
    check_counter_arguments,
)
from middleware.redaction import redact, redact_url

# KEYS: the counters.  ARGV: one limit per key, one increment per key, TTL in ms.
COUNTERS_ADMIT = """
local n = #KEYS
local values = {}
for i = 1, n do
  values[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
local admitted = 1
for i = 1, n do
  local limit = tonumber(ARGV[i])
  if limit >= 0 and values[i] >= limit then admitted = 0 end
end
if admitted == 1 then
  for i = 1, n do
    if tonumber(ARGV[n + i]) ~= 0 then
      values[i] = redis.call('INCRBY', KEYS[i], ARGV[n + i])
      if redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], ARGV[2 * n + 1]) end
    end
  end
end
local reply = {admitted}
for i = 1, n do reply[i + 1] = values[i] end
return reply
"""

# KEYS: the counter.  ARGV: amount, TTL in ms.
COUNTER_ADD = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
"""

# KEYS: leases, cap.  ARGV: holder, limit, now, expires_at.
# The set itself expires a minute after its last lease would, so an
# abandoned semaphore leaves nothing behind.
LEASE_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local limit = tonumber(ARGV[2])
local cap = redis.call('GET', KEYS[2])
if cap then limit = math.min(limit, tonumber(cap)) end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
local ttl_ms = math.max(math.ceil((tonumber(ARGV[4]) - tonumber(ARGV[3])) * 1000), 0) + 60000
if redis.call('PTTL', KEYS[1]) < ttl_ms then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
return 1
"""

# KEYS: leases, wake list.  ARGV: holder, tokens kept, token TTL in ms.
LEASE_RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], 'x')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: state hash.  ARGV: expected version, JSON value.
STATE_CAS = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', current + 1, 'value', ARGV[2])
return 1
"""

# KEYS: due set, payload hash.  ARGV: member, payload, due_at.
PARK = """
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
"""

# KEYS: due set, payload hash.  ARGV: now, limit, claim_until.
# A member whose payload is missing is dropped instead of handed out empty.
CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local claimed = {}
for _, member in ipairs(due) do
  local payload = redis.call('HGET', KEYS[2], member)
  if payload then
    redis.call('ZADD', KEYS[1], ARGV[3], member)
    table.insert(claimed, member)
    table.insert(claimed, payload)
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return claimed
"""

# KEYS: due set, payload hash.  ARGV: member.
UNPARK = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (Redis refuses 0 and deletes on negatives)."""
    return max(1, math.ceil(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _redacted(url: str) -> str:
    """The URL with its password replaced, fit for an error message."""
    return redact_url(url)


class RedisBackend(Backend):
    """Every primitive of :class:`~middleware.backends.base.Backend` on a Redis server.

    Examples:
      >>> backend = RedisBackend.from_url("redis://127.0.0.1:6380/0")  # doctest: +SKIP
      >>> backend.ping()  # doctest: +SKIP

      Or with a client you already have (it must not decode responses:
      parked payloads are bytes)::

        backend = RedisBackend(redis.Redis(host="cache", socket_timeout=5), namespace="enrich")

    Parameters:
      client(redis.Redis): The client to use.  Give it a ``socket_timeout``
        so that a stalled server raises instead of hanging a worker.
      namespace(str): Prefix of every key, so several deployments can share
        one database.  Defaults to ``"middleware"``.
    """

    def __init__(self, client: redis.Redis[bytes], *, namespace: str = "middleware") -> None:
        settings = client.connection_pool.connection_kwargs
        if settings.get("decode_responses"):
            raise ValueError(
                "RedisBackend needs a client made with decode_responses=False: parked payloads are bytes. "
                "Create a separate client for it, e.g. RedisBackend.from_url(url)."
            )
        self.client = client
        self.namespace = namespace
        self._where = self._describe(settings)
        socket_timeout = settings.get("socket_timeout", settings.get("orig_socket_timeout"))
        # BLPOP must return before the socket read times out, or a quiet wait
        # would look like a dead server.
        if isinstance(socket_timeout, int | float) and socket_timeout > 0:
            self._longest_block_s = max(socket_timeout - 0.5, socket_timeout / 2)
        else:
            self._longest_block_s = 4.5
        self._scripts: dict[str, Callable[..., Any]] = {
            name: client.register_script(source)
            for name, source in [
                ("counters_admit", COUNTERS_ADMIT),
                ("counter_add", COUNTER_ADD),
                ("lease_acquire", LEASE_ACQUIRE),
                ("lease_release", LEASE_RELEASE),
                ("state_cas", STATE_CAS),
                ("park", PARK),
                ("claim_due", CLAIM_DUE),
                ("unpark", UNPARK),
            ]
        }

    @classmethod
    def from_url(
        cls, url: str, *, namespace: str = "middleware", socket_timeout_s: float = 5.0
    ) -> RedisBackend:
        """A backend on a new client for ``url`` (``redis://[:password@]host:port/db``,
        ``rediss://`` for TLS, ``unix:///path.sock``).  Connecting and every reply time
        out after ``socket_timeout_s``."""
        client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
        backend = cls(client, namespace=namespace)
        backend._where = _redacted(url)
        return backend

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
        password = self.client.connection_pool.connection_kwargs.get("password")
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as error:
            reason = redact(str(error), secrets=[password])
            raise BackendUnavailable(
                f"Redis at {self._where} cannot be reached ({reason}). "
                f"Check that the server is running and that the URL (host, port, password, TLS) points at it."
            ) from (error if reason == str(error) else None)

    def _key(self, kind: str, key: str) -> str:
        return f"{self.namespace}:{kind}:{key}"

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with self._reachable():
            return self._scripts[script](keys=list(keys), args=list(args))

    # -- counters -----------------------------------------------------------

    def counters_admit(
        self, keys: Sequence[str], limits: Sequence[int], increments: Sequence[int], ttl_s: float
    ) -> tuple[bool, list[int]]:
        check_counter_arguments(keys, limits, increments)
        reply = self._run(
            "counters_admit",
            [self._key("counter", key) for key in keys],
            [*limits, *increments, _ms(ttl_s)],
        )
        return bool(reply[0]), [int(value) for value in reply[1:]]

    def counter_add(self, key: str, amount: int, ttl_s: float) -> int:
        return int(self._run("counter_add", [self._key("counter", key)], [amount, _ms(ttl_s)]))

    def counters_get(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        with self._reachable():
            values = self.client.mget([self._key("counter", key) for key in keys])
        return [int(value or 0) for value in values]

    # -- leases -------------------------------------------------------------

    def lease_acquire(self, key: str, holder: str, limit: int, now: float, expires_at: float) -> bool:
        keys = [self._key("lease", key), self._key("lease-cap", key)]
        return bool(self._run("lease_acquire", keys, [holder, limit, repr(now), repr(expires_at)]))

    def lease_release(self, key: str, holder: str) -> bool:
        keys = [self._key("lease", key), self._key("lease-wake", key)]
        return bool(self._run("lease_release", keys, [holder, WAKE_TOKENS_KEPT, _ms(WAKE_TOKEN_TTL_S)]))

    def lease_count(self, key: str, now: float) -> int:
        with self._reachable():
            return int(self.client.zcount(self._key("lease", key), f"({now!r}", "+inf"))

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

    def state_cas(self, key: str, version: int, value: dict[str, Any]) -> bool:
        return bool(self._run("state_cas", [self._key("state", key)], [version, json.dumps(value)]))

    # -- parking lot --------------------------------------------------------

    def _park_keys(self, key: str) -> list[str]:
        return [self._key("park-due", key), self._key("park-payload", key)]

    def park(self, key: str, member: str, payload: bytes, due_at: float) -> None:
        self._run("park", self._park_keys(key), [member, payload, repr(due_at)])

    def claim_due(self, key: str, now: float, limit: int, claim_until: float) -> list[tuple[str, bytes]]:
        if limit <= 0:
            return []
        reply = self._run("claim_due", self._park_keys(key), [repr(now), limit, repr(claim_until)])
        return [(_text(reply[i]), bytes(reply[i + 1])) for i in range(0, len(reply), 2)]

    def unpark(self, key: str, member: str) -> None:
        self._run("unpark", self._park_keys(key), [member])

    def parked_count(self, key: str) -> int:
        with self._reachable():
            return int(self.client.zcard(self._key("park-due", key)))

    def ping(self) -> None:
        with self._reachable():
            self.client.ping()

"""A backend on Redis: the primitives shared by every worker of a fleet.

Each multi-step primitive is one Lua script, so it is atomic and costs one
round trip.  Every script that needs "now" reads the server's ``TIME``, so
the whole fleet shares one clock whatever its hosts' clocks say (scripts are
replicated by their effects, the default since Redis 5, so ``TIME`` is
allowed before writes).  Keys are ``<namespace>:<kind>:<key>``; the kinds are
``counter``, ``lease`` (a sorted set of holder -> expiry), ``lease-cap``,
``lease-wake`` (the wake-up list :meth:`RedisBackend.lease_wait` blocks on),
``state`` (a hash of version and JSON value), ``park-due`` (a sorted set of
member -> due time), ``park-payload`` and ``park-token`` (hashes of member ->
payload and member -> token of its parking) and ``park-orphans`` (a counter).
The quota's window counters are named inside the script from the server's
time (``counter:<key>:<window start>:<name>``): a standalone Redis or a
primary with replicas, as for Dramatiq's Redis broker, not Redis Cluster.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from middleware.backends.base import (
    PAUSE_KEPT_S,
    WAKE_TOKEN_TTL_S,
    WAKE_TOKENS_KEPT,
    Backend,
    BackendUnavailable,
    ParkedClaim,
    WindowCounts,
    check_counter_arguments,
)
from middleware.redaction import redact, redact_url

# Every script that needs the time starts with this: the server's clock, in
# epoch seconds with microseconds.  Times go back to Redis as '%.6f' strings:
# Lua would print a number with 14 significant digits, a tenth of a millisecond.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function at(seconds) return string.format('%.6f', seconds) end
"""

# ARGV: key prefix, window_s, TTL in ms, n, then n names, n limits, n increments.
# Reply: admitted (0/1), window start, now, then the n values.
WINDOW_ADMIT = (
    _NOW
    + """
local sec = tonumber(t[1])
local window = tonumber(ARGV[2])
local start = sec - (sec % window)
local n = tonumber(ARGV[4])
local keys, values = {}, {}
for i = 1, n do
  keys[i] = ARGV[1] .. ':' .. string.format('%d', start) .. ':' .. ARGV[4 + i]
  values[i] = tonumber(redis.call('GET', keys[i]) or '0')
end
local admitted = 1
for i = 1, n do
  local limit = tonumber(ARGV[4 + n + i])
  if limit >= 0 and values[i] >= limit then admitted = 0 end
end
if admitted == 1 then
  for i = 1, n do
    local increment = tonumber(ARGV[4 + 2 * n + i])
    if increment ~= 0 then
      values[i] = redis.call('INCRBY', keys[i], increment)
      if redis.call('PTTL', keys[i]) == -1 then redis.call('PEXPIRE', keys[i], ARGV[3]) end
    end
  end
end
local reply = {admitted, string.format('%d', start), at(now)}
for i = 1, n do reply[3 + i] = values[i] end
return reply
"""
)

# KEYS: the counter.  ARGV: amount, TTL in ms.
# A refund (amount < 0) never creates the counter nor takes it below 0: after
# a restart that lost it, giving a request back must not admit an extra one.
COUNTER_ADD = """
local amount = tonumber(ARGV[1])
if amount < 0 then
  local current = redis.call('GET', KEYS[1])
  if not current then return 0 end
  current = tonumber(current)
  if current + amount < 0 then amount = -current end
  if amount == 0 then return current end
end
local value = redis.call('INCRBY', KEYS[1], amount)
if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
"""

# KEYS: leases, cap.  ARGV: holder, limit, lease_s.  Reply: the grant time, or nil.
# The set itself expires a minute after its last lease would, so an
# abandoned semaphore leaves nothing behind.
LEASE_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', at(now))
local limit = tonumber(ARGV[2])
local cap = redis.call('GET', KEYS[2])
if cap then limit = math.min(limit, tonumber(cap)) end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= limit then
  return false
end
redis.call('ZADD', KEYS[1], at(now + tonumber(ARGV[3])), ARGV[1])
local ttl_ms = math.ceil(tonumber(ARGV[3]) * 1000) + 60000
if redis.call('PTTL', KEYS[1]) < ttl_ms then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
return at(now)
"""
)

# KEYS: leases.
LEASE_COUNT = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. at(now), '+inf')
"""
)

# KEYS: leases, wake list.  ARGV: holder, tokens kept, token TTL in ms.
LEASE_RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], 'x')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: leases, cap, wake list.  ARGV: from holder, to holder, limit, lease_s,
# tokens kept, token TTL in ms.  Reply: the grant time, or nil.
# Release and acquire in one step: the count never moves, so no other
# process can take the permit in between, nor can the fleet go over.  When
# the new holder gets nothing (a lowered cap), the release wakes a waiter.
LEASE_TRANSFER = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', at(now))
local held = redis.call('ZREM', KEYS[1], ARGV[1]) == 1
local limit = tonumber(ARGV[3])
local cap = redis.call('GET', KEYS[2])
if cap then limit = math.min(limit, tonumber(cap)) end
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], at(now + tonumber(ARGV[4])), ARGV[2])
  local ttl_ms = math.ceil(tonumber(ARGV[4]) * 1000) + 60000
  if redis.call('PTTL', KEYS[1]) < ttl_ms then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
  return at(now)
end
if held then
  redis.call('LPUSH', KEYS[3], 'x')
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return false
"""
)

# KEYS: state hash.  ARGV: expected version, JSON value.
STATE_CAS = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', current + 1, 'value', ARGV[2])
return 1
"""

# KEYS: due set, payload hash, token hash.  ARGV: member, payload, delay_s, token.
PARK = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], at(now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
"""
)

# KEYS: due set, payload hash, token hash, orphan counter.  ARGV: limit, claim_s.
# Reply: {member, payload, token, ...} claimed, then {member, ...} orphans: a
# member due without a payload is removed and counted, never handed out empty.
CLAIM_DUE = (
    _NOW
    + """
local claim_until = at(now + tonumber(ARGV[2]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', at(now), 'LIMIT', 0, ARGV[1])
local claimed, orphans = {}, {}
for _, member in ipairs(due) do
  local payload = redis.call('HGET', KEYS[2], member)
  if payload then
    redis.call('ZADD', KEYS[1], claim_until, member)
    table.insert(claimed, member)
    table.insert(claimed, payload)
    table.insert(claimed, redis.call('HGET', KEYS[3], member) or '')
  else
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[3], member)
    redis.call('INCR', KEYS[4])
    table.insert(orphans, member)
  end
end
return {claimed, orphans}
"""
)

# KEYS: due set, payload hash, token hash.  ARGV: member, token.
# Only the parking that was claimed is forgotten: a member parked again since
# (a new token) stays.
UNPARK = """
if (redis.call('HGET', KEYS[3], ARGV[1]) or '') ~= ARGV[2] then return 0 end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

#: Error replies that mean "not now" rather than "never": a replica after a
#: failover (READONLY), a full memory (OOM), a server loading its data
#: (LOADING, a ConnectionError in redis-py already), a replica cut off from
#: its primary (MASTERDOWN), a cluster in flux (TRYAGAIN, CLUSTERDOWN).
#: redis-py turns those codes into these classes...
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


class RedisBackend(Backend):
    """Every primitive of :class:`~middleware.backends.base.Backend` on a Redis server (5 or later).

    The server's clock is the fleet's clock: hosts whose clocks disagree still
    agree on leases, windows, cooldowns and due times.

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
                ("window_admit", WINDOW_ADMIT),
                ("counter_add", COUNTER_ADD),
                ("lease_acquire", LEASE_ACQUIRE),
                ("lease_count", LEASE_COUNT),
                ("lease_release", LEASE_RELEASE),
                ("lease_transfer", LEASE_TRANSFER),
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
        """The full name of ``key`` of ``kind`` in this backend's namespace."""
        return self._key(kind, key)

    def _key(self, kind: str, key: str) -> str:
        return f"{self.namespace}:{kind}:{key}"

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with self._reachable():
            return self._scripts[script](keys=list(keys), args=list(args))

    def now(self) -> float:
        with self._reachable():
            seconds, microseconds = self.client.time()
        return int(seconds) + int(microseconds) / 1_000_000

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
    ) -> WindowCounts:
        check_counter_arguments(names, limits, increments)
        if int(window_s) != window_s or window_s <= 0:
            raise ValueError(f"window_s must be a positive whole number of seconds, got {window_s}")
        args = [
            self._key("counter", key),
            int(window_s),
            _ms(ttl_s),
            len(names),
            *names,
            *limits,
            *increments,
        ]
        reply = self._run("window_admit", [], args)
        return WindowCounts(
            bool(reply[0]), float(_text(reply[1])), float(_text(reply[2])), [int(v) for v in reply[3:]]
        )

    def counter_add(self, key: str, amount: int, ttl_s: float) -> int:
        return int(self._run("counter_add", [self._key("counter", key)], [amount, _ms(ttl_s)]))

    def counters_get(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        with self._reachable():
            values = self.client.mget([self._key("counter", key) for key in keys])
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

    def state_cas(self, key: str, version: int, value: dict[str, Any]) -> bool:
        return bool(self._run("state_cas", [self._key("state", key)], [version, json.dumps(value)]))

    # -- parking lot --------------------------------------------------------

    def _park_keys(self, key: str) -> list[str]:
        return [self._key("park-due", key), self._key("park-payload", key), self._key("park-token", key)]

    def park(self, key: str, member: str, payload: bytes, delay_s: float, token: str) -> None:
        self._run("park", self._park_keys(key), [member, payload, repr(float(delay_s)), token])

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
    # reason, fingerprint; it never expires).  The scripts are registered on
    # first use: a registered script is only its text and its SHA.

    # KEYS: pause hash.  ARGV: seconds, reason, kept in ms.  Reply: {opened, until}.
    _PAUSE_EXTEND = (
        _NOW
        + """
local wanted = now + tonumber(ARGV[1])
local current = redis.call('HGET', KEYS[1], 'until')
local opened, ends = 0, current
if (not current) or tonumber(current) <= now then
  opened, ends = 1, at(wanted)
  redis.call('HSET', KEYS[1], 'until', ends, 'since', at(now), 'reason', ARGV[2])
elseif wanted > tonumber(current) then
  ends = at(wanted)
  redis.call('HSET', KEYS[1], 'until', ends, 'reason', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ends) - now) * 1000) + tonumber(ARGV[3]))
return {opened, ends}
"""
    )

    # KEYS: pause hash, hold hash.  Reply: {now, until, since, reason, held, since, reason, fingerprint}.
    _PAUSE_GET = (
        _NOW
        + """
local p = redis.call('HMGET', KEYS[1], 'until', 'since', 'reason')
local h = redis.call('HMGET', KEYS[2], 'since', 'reason', 'fingerprint')
return {at(now), p[1], p[2], p[3], redis.call('EXISTS', KEYS[2]), h[1], h[2], h[3]}
"""
    )

    # KEYS: hold hash.  ARGV: reason, fingerprint.  Reply: 1 when newly held.
    _HOLD_SET = (
        _NOW
        + """
local new = redis.call('EXISTS', KEYS[1]) == 0
if new then redis.call('HSET', KEYS[1], 'since', at(now)) end
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'fingerprint', ARGV[2])
if new then return 1 end
return 0
"""
    )

    # KEYS: hold hash.  ARGV: '1' to keep a hold of the same fingerprint, the fingerprint.
    _HOLD_CLEAR = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' and redis.call('HGET', KEYS[1], 'fingerprint') == ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

    def _run_pause(self, name: str, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if name not in self._scripts:
            self._scripts[name] = self.client.register_script(source)
        return self._run(name, keys, args)

    def pause_extend(self, key: str, seconds: float, reason: str) -> tuple[bool, float]:
        if not seconds > 0:
            raise ValueError(f"pause_extend needs seconds > 0, got {seconds}")
        args = [repr(float(seconds)), reason, _ms(PAUSE_KEPT_S)]
        opened, ends = self._run_pause("pause_extend", self._PAUSE_EXTEND, [self._key("pause", key)], args)
        return bool(opened), float(_text(ends))

    def pause_get(self, key: str) -> dict[str, Any] | None:
        keys = [self._key("pause", key), self._key("hold", key)]
        now, until, since, reason, held, held_since, hold_reason, fingerprint = self._run_pause(
            "pause_get", self._PAUSE_GET, keys, []
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
        return bool(self._run_pause("hold_set", self._HOLD_SET, [self._key("hold", key)], args))

    def hold_clear(self, key: str, unless_fingerprint: str | None) -> bool:
        args = ["0", ""] if unless_fingerprint is None else ["1", unless_fingerprint]
        return bool(self._run_pause("hold_clear", self._HOLD_CLEAR, [self._key("hold", key)], args))

    # -- pacing -------------------------------------------------------------
    # Key ``pacing:<key>``: a hash of ``tat`` (the next reservation) and
    # ``start`` (the earliest next start); it expires a minute after the last
    # slot it reserved.  Times are rounded to the microsecond (``at``) before
    # they are compared, so the caller, comparing the returned strings, agrees.

    # ARGV: interval_s, burst, wait_s (then the claim's slot).  Defines the
    # state, ``keep`` (write it back) and ``reserve`` (GCRA's next slot).
    _GCRA = (
        _NOW
        + """
now = tonumber(at(now))
local interval, wait = tonumber(ARGV[1]), tonumber(ARGV[3])
local tau = (tonumber(ARGV[2]) - 1) * interval
local state = redis.call('HMGET', KEYS[1], 'tat', 'start')
local tat, start = tonumber(state[1] or '0'), tonumber(state[2] or '0')
local function keep(new_tat, new_start)
  redis.call('HSET', KEYS[1], 'tat', at(new_tat), 'start', at(new_start))
  redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(new_tat, new_start) - now) * 1000) + 60000)
end
local function reserve()
  local base = math.max(tat, start, now)
  local slot = tonumber(at(math.max(now, base - tau)))
  local new_start = start
  if slot - now <= wait then new_start = math.max(start, slot) + interval end
  keep(base + interval, new_start)
  return {at(slot), at(now)}
end
"""
    )

    # KEYS: schedule.  ARGV: interval_s, burst, wait_s.  Reply: {slot_at, now}.
    _GCRA_RESERVE = _GCRA + "return reserve()\n"

    # KEYS: schedule.  ARGV: interval_s, burst, wait_s, slot_at.  Reply: {start_at, now}.
    _GCRA_CLAIM = (
        _GCRA
        + """
local slot = tonumber(ARGV[4])
local begin = tonumber(at(math.max(slot, start - tau)))
if begin - now <= wait then
  keep(tat, math.max(start, begin, now) + interval)
  return {at(begin), at(now)}
end
if begin == slot then return {at(slot), at(now)} end
return reserve()
"""
    )

    # KEYS: schedule.  Reply: {base, now}.
    _GCRA_GET = (
        _NOW
        + """
local state = redis.call('HMGET', KEYS[1], 'tat', 'start')
return {at(math.max(tonumber(state[1] or '0'), tonumber(state[2] or '0'))), at(now)}
"""
    )

    def _run_pacing(self, name: str, source: str, key: str, args: Sequence[Any]) -> tuple[float, float]:
        if name not in self._scripts:
            self._scripts[name] = self.client.register_script(source)
        first, now = self._run(name, [self._key("pacing", key)], args)
        return float(_text(first)), float(_text(now))

    def gcra_reserve(
        self, key: str, interval_s: float, burst: int, *, wait_s: float = 0.0
    ) -> tuple[float, float]:
        args = [repr(float(interval_s)), int(burst), repr(float(wait_s))]
        return self._run_pacing("gcra_reserve", self._GCRA_RESERVE, key, args)

    def gcra_claim(
        self, key: str, slot_at: float, interval_s: float, burst: int, *, wait_s: float = 0.0
    ) -> tuple[float, float]:
        args = [repr(float(interval_s)), int(burst), repr(float(wait_s)), repr(float(slot_at))]
        return self._run_pacing("gcra_claim", self._GCRA_CLAIM, key, args)

    def gcra_get(self, key: str) -> tuple[float, float]:
        return self._run_pacing("gcra_get", self._GCRA_GET, key, [])

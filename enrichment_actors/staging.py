"""Staged answers: fetched POIs kept in the state backend, in bounded chunks, until they are stored.

A fetch that got its answer stages it *before* handing it on, under a key
derived from its own message id; the store messages it sends carry only a
reference (stage key, chunk index). So:

- a fetch retried or redelivered after its call (the hand-off failed, the
  worker died before acknowledging) finds its answer staged and hands on
  what was not handed on yet, without a second Overpass call;
- every message stays small whatever the answer's size, and a store step
  holds one chunk (``STAGE_CHUNK_BYTES`` of JSON) at a time;
- with the database down, the chunks wait (``STAGE_TTL_S``) and land once it
  is back. A chunk is deleted as soon as it is upserted.

One stage is one hash (Redis) or dict (memory) of fields: ``chunk:I`` (a
zlib-compressed JSON list of POIs), ``chunks`` (how many, written last: the
answer is complete), ``children`` (the fetch split its box instead),
``sent:I`` (message I was handed on) and ``stored:I`` (chunk I is in the
database). Every write sets the whole stage's TTL again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dramatiq.middleware import CurrentMessage

from enrichment_middleware.backends.base import BackendUnavailable
from enrichment_middleware.backends.redis import RedisBackend

logger = logging.getLogger(__name__)

#: Prefix of stage keys in the Redis namespace (``enrichment:stage:{fetch:<message id>}``).
KIND = "stage"

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class StagedAnswerMissing(Exception):
    """A store message refers to a chunk that is neither staged nor stored: it expired (``STAGE_TTL_S``).

    Permanent: only fetching the job again can bring the POIs back.
    """

    retryable = False


class Stash(ABC):
    """Named byte strings under a key that expire together: the storage primitives of staging.

    Each method is atomic with respect to every other caller of the same
    store and costs one round trip; a method raises
    :class:`~enrichment_middleware.backends.base.BackendUnavailable` when the store
    cannot be reached.
    """

    @abstractmethod
    def put(
        self, key: str, fields: Mapping[str, bytes], ttl_s: float, *, remove: Sequence[str] = ()
    ) -> set[str]:
        """Drop ``remove``, set ``fields``, expire the whole key ``ttl_s`` from now; return the field names after."""

    @abstractmethod
    def get(self, key: str, field: str) -> bytes | None:
        """One field's value, ``None`` when it (or the key) is absent."""

    @abstractmethod
    def look(self, key: str, wanted: Sequence[str]) -> tuple[set[str], dict[str, bytes]]:
        """Every field name of ``key`` (empty when absent), and the values of those of ``wanted`` present."""


class MemoryStash(Stash):
    """A stash in this process's memory (``STATE_BACKEND=memory``: the embedded demo, tests).

    Examples:
      >>> stash = MemoryStash()
      >>> sorted(stash.put("k", {"a": b"1"}, ttl_s=60))
      ['a']
      >>> stash.get("k", "a")
      b'1'
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[str, tuple[dict[str, bytes], float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> dict[str, bytes]:
        entry = self._data.get(key)
        if entry is None:
            return {}
        if entry[1] <= self._clock():
            del self._data[key]
            return {}
        return entry[0]

    def put(
        self, key: str, fields: Mapping[str, bytes], ttl_s: float, *, remove: Sequence[str] = ()
    ) -> set[str]:
        with self._lock:
            values = dict(self._live(key))
            for name in remove:
                values.pop(name, None)
            values.update(fields)
            self._data[key] = (values, self._clock() + ttl_s)
            return set(values)

    def get(self, key: str, field: str) -> bytes | None:
        with self._lock:
            return self._live(key).get(field)

    def look(self, key: str, wanted: Sequence[str]) -> tuple[set[str], dict[str, bytes]]:
        with self._lock:
            values = self._live(key)
            return set(values), {name: values[name] for name in wanted if name in values}


class RedisStash(Stash):
    """A stash on Redis, shared by the fleet: one hash per key, written in MULTI/EXEC pipelines.

    It uses the client and the error handling of the fleet's
    :class:`~enrichment_middleware.backends.redis.RedisBackend`, so an unreachable Redis
    is a ``BackendUnavailable`` here as everywhere, with its password masked.

    Examples:
      >>> stash = RedisStash(RedisBackend.from_url("redis://127.0.0.1:6379/0", namespace="enrichment"))  # doctest: +SKIP

    Parameters:
      backend: the fleet's Redis backend; stages are its keys of kind ``stage``.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.client = backend.client

    def _key(self, key: str) -> str:
        return self.backend.key(KIND, key)

    def _call(self, work: Callable[[], Any]) -> Any:
        with self.backend.reachable():
            return work()

    def put(
        self, key: str, fields: Mapping[str, bytes], ttl_s: float, *, remove: Sequence[str] = ()
    ) -> set[str]:
        name = self._key(key)

        def work() -> Any:
            pipe = self.client.pipeline(transaction=True)
            if remove:
                pipe.hdel(name, *remove)
            if fields:
                mapping: dict[str | bytes, bytes] = dict(fields.items())
                pipe.hset(name, mapping=mapping)
            pipe.pexpire(name, max(1, int(ttl_s * 1000)))
            pipe.hkeys(name)
            return pipe.execute()[-1]

        return {_text(field) for field in self._call(work)}

    def get(self, key: str, field: str) -> bytes | None:
        value = self._call(lambda: self.client.hget(self._key(key), field))
        return None if value is None else bytes(value)

    def look(self, key: str, wanted: Sequence[str]) -> tuple[set[str], dict[str, bytes]]:
        name = self._key(key)

        def work() -> Any:
            pipe = self.client.pipeline(transaction=False)
            pipe.hkeys(name)
            if wanted:
                pipe.hmget(name, list(wanted))
            return pipe.execute()

        reply = self._call(work)
        values = reply[1] if wanted else []
        present = {
            field: bytes(value) for field, value in zip(wanted, values, strict=False) if value is not None
        }
        return {_text(field) for field in reply[0]}, present


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- Chunks ---------------------------------------------------------------------------------------


def encode_chunks(pois: Iterable[Sequence[Any]], max_bytes: int) -> Iterator[bytes]:
    """The POIs as JSON lists of at most ``max_bytes`` each (a POI bigger than that alone), compressed.

    A generator: the caller stages one chunk before the next is built. No
    POIs make one empty chunk: the job still ends with a store step.
    """
    parts: list[str] = []
    size = 2
    empty = True
    for poi in pois:
        text = _ENCODER.encode(list(poi))
        # Characters, not bytes: a close enough bound for mostly-ASCII tags, exact for ASCII.
        if parts and size + len(text) + 1 > max_bytes:
            yield _pack(parts)
            parts, size = [], 2
        parts.append(text)
        size += len(text) + 1
        empty = False
    if parts or empty:
        yield _pack(parts)


def _pack(parts: list[str]) -> bytes:
    return zlib.compress(("[" + ",".join(parts) + "]").encode(), 1)


def decode_chunk(data: bytes) -> list[list[Any]]:
    """The POIs of one staged chunk."""
    pois: list[list[Any]] = json.loads(zlib.decompress(data))
    return pois


# --- One stage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Staged:
    """What a stage holds: an answer in ``chunks`` chunks, or a split into ``children`` boxes; what was sent."""

    chunks: int
    children: int
    sent: frozenset[int]
    fallback: bool = False

    @property
    def pending(self) -> list[int]:
        """Indexes of the messages not handed on yet."""
        return [i for i in range(self.chunks or self.children) if i not in self.sent]


class Stage:
    """The staged answer of one fetch message, under ``fetch:<message id>``.

    Examples:
      >>> stage = Stage(MemoryStash(), "fetch:1", ttl_s=60)
      >>> staged = stage.put_pois([["node", 1, 48.8, 2.3, {"amenity": "cafe"}]], chunk_bytes=1024)
      >>> staged.pending
      [0]
      >>> stage.load_chunk(0)
      [['node', 1, 48.8, 2.3, {'amenity': 'cafe'}]]

    Parameters:
      stash: where it lives.
      key: the stage key (see :func:`stage_key`).
      ttl_s: how long it is kept after its last write (``STAGE_TTL_S``).
    """

    def __init__(self, stash: Stash, key: str, *, ttl_s: float) -> None:
        self.stash = stash
        self.key = key
        self.ttl_s = ttl_s

    def load(self) -> Staged | None:
        """The staged answer (or split), ``None`` when this fetch has none yet."""
        names, counts = self.stash.look(self.key, ["chunks", "children"])
        if not counts:
            return None
        sent = frozenset(int(n[5:]) for n in names if n.startswith("sent:"))
        chunks, children = int(counts.get("chunks", b"0")), int(counts.get("children", b"0"))
        return Staged(chunks, children, sent, "fallback" in names)

    def put_pois(
        self,
        pois: Iterable[Sequence[Any]],
        *,
        chunk_bytes: int,
        answer: Mapping[str, Any] | None = None,
        gone: Sequence[Sequence[Any]] = (),
    ) -> Staged:
        """Stage an answer, one round trip per chunk; the count is written last, in one transaction
        with the last chunk (the answer is complete: one round trip for an answer of one chunk).

        ``answer`` (what the coverage ledger needs of it: tiles, tag set,
        timestamp) is written with the count.
        """
        count = 0
        pending: dict[str, bytes] = {}
        for index, chunk in enumerate(encode_chunks(pois, chunk_bytes)):
            if pending:
                self.stash.put(self.key, pending, self.ttl_s)
            pending = {f"chunk:{index}": chunk}
            count = index + 1
        last = {**pending, "chunks": str(count).encode()}
        if answer is not None:
            last["answer"] = _ENCODER.encode(dict(answer)).encode()
        if gone:
            # An augmented diff's elements gone upstream: read once, by the step that finishes the answer.
            last["gone"] = _pack([_ENCODER.encode(list(key)) for key in gone])
        self.stash.put(self.key, last, self.ttl_s)
        return Staged(count, 0, frozenset())

    def load_gone(self) -> list[tuple[str, int]]:
        """The elements :meth:`put_pois` was given as ``gone``."""
        data = self.stash.get(self.key, "gone")
        return [] if data is None else [(str(kind), int(osm_id)) for kind, osm_id in decode_chunk(data)]

    def load_answer(self) -> dict[str, Any] | None:
        """What :meth:`put_pois` was given as ``answer``; ``None`` for an answer staged without one."""
        data = self.stash.get(self.key, "answer")
        return None if data is None else dict(json.loads(data))

    def unfinished(self) -> bool:
        """Every chunk is stored and the answer was not marked finished (:meth:`mark_finished`) yet."""
        names, _ = self.stash.look(self.key, [])
        return (
            "chunks" in names and "finished" not in names and not any(n.startswith("chunk:") for n in names)
        )

    def mark_finished(self) -> None:
        """The whole answer is in the database and the ledger: nothing is left to do for it."""
        self.stash.put(self.key, {"finished": b"1"}, self.ttl_s)

    def put_split(self, children: int, *, fallback: bool = False) -> Staged:
        """Record that this fetch split its box into ``children`` jobs (sent next); ``fallback``: it hands
        on one full fetch instead of the augmented diff the server refused."""
        fields = {"children": str(children).encode(), **({"fallback": b"1"} if fallback else {})}
        self.stash.put(self.key, fields, self.ttl_s)
        return Staged(0, children, frozenset(), fallback)

    def keep(self) -> None:
        """Keep the stage another ``ttl_s``: its store step is waiting out an outage of the database."""
        self.stash.put(self.key, {}, self.ttl_s)

    def mark_sent(self, index: int) -> None:
        """Message ``index`` was handed on: a retry does not send it again."""
        self.stash.put(self.key, {f"sent:{index}": b"1"}, self.ttl_s)

    def load_chunk(self, index: int) -> list[list[Any]] | None:
        """Chunk ``index``'s POIs; ``None`` when it was stored already.

        Raises:
          StagedAnswerMissing: neither staged nor stored (expired).
        """
        data = self.stash.get(self.key, f"chunk:{index}")
        if data is not None:
            return decode_chunk(data)
        if self.stash.get(self.key, f"stored:{index}") is not None:
            return None
        raise StagedAnswerMissing(
            f"The staged POIs of chunk {index} of {self.key} are gone: they were kept STAGE_TTL_S="
            f"{self.ttl_s:g}s and the database did not take them in time. Send the job again "
            "(enrich) to fetch them anew, and raise STAGE_TTL_S if outages last longer."
        )

    def mark_stored(self, index: int) -> bool:
        """Chunk ``index`` is in the database: delete it, keep a marker; True when every chunk is stored."""
        names = self.stash.put(self.key, {f"stored:{index}": b"1"}, self.ttl_s, remove=[f"chunk:{index}"])
        return not any(name.startswith("chunk:") for name in names)


def current_message_id() -> str:
    """The id of the message running in this thread (a fresh one outside a worker)."""
    message = CurrentMessage.get_current_message()
    return message.message_id if message is not None else f"unbound-{uuid.uuid4()}"


def stage_key(message_id: str | None = None) -> str:
    """The stage key of the fetch message running in this thread, or of ``message_id``."""
    return f"fetch:{message_id or current_message_id()}"


def derived_message_id(key: str, role: str, index: int) -> str:
    """The id of message ``index`` a stage hands on: the same on every attempt, so a copy sent twice is one job."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/{role}/{index}"))


def retry_until_reachable(what: str, work: Callable[[], Any], *, max_pause_s: float = 5.0) -> Any:
    """``work()``, tried again while the state backend is unreachable.

    For a step after the Overpass call: giving up would let the fetch be
    retried, and retrying it means a second call.
    """
    pause_s = 0.1
    while True:
        try:
            return work()
        except BackendUnavailable as exc:
            logger.warning("Could not %s (%s); trying again in %.1fs.", what, exc, pause_s)
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, max_pause_s)


_stashes: dict[tuple[str, str, bool, tuple[str, ...], str], Stash] = {}
_stashes_lock = threading.Lock()


def stash_for(
    state_backend: str,
    redis_url: str,
    *,
    cluster: bool = False,
    sentinels: Sequence[str] = (),
    sentinel_master: str = "mymaster",
) -> Stash:
    """The process's stash for these settings: memory, or one Redis client shared by the threads
    (on a Redis Cluster or the primary of Sentinels as :meth:`RedisBackend.from_url` takes them)."""
    with _stashes_lock:
        where = (state_backend, redis_url, cluster, tuple(sentinels), sentinel_master)
        stash = _stashes.get(where)
        if stash is None:
            stash = (
                MemoryStash()
                if state_backend == "memory"
                else RedisStash(
                    RedisBackend.from_url(
                        redis_url,
                        namespace="enrichment",
                        cluster=cluster,
                        sentinels=sentinels,
                        sentinel_master=sentinel_master,
                    )
                )
            )
            _stashes[where] = stash
        return stash


__all__ = [
    "MemoryStash",
    "RedisStash",
    "Stage",
    "Staged",
    "StagedAnswerMissing",
    "Stash",
    "current_message_id",
    "decode_chunk",
    "derived_message_id",
    "encode_chunks",
    "retry_until_reachable",
    "stage_key",
    "stash_for",
]

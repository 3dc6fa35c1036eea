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

A stage lives in the state backend (its ``Stages`` primitives: one hash on
Redis, a dict in memory), so the fetch can read it in one round trip with
the pause it reads before its call. Its fields: ``chunk:I`` (a
zlib-compressed JSON list of POIs), ``chunks`` (how many, written last: the
answer is complete), ``children`` (the fetch split its box instead),
``sent:I`` (message I was handed on) and ``stored:I`` (chunk I is in the
database). Every write sets the whole stage's TTL again.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dramatiq.middleware import CurrentMessage

from enrichment_middleware.backends.base import BackendUnavailable, Stages, Step

logger = logging.getLogger(__name__)

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class StagedAnswerMissing(Exception):
    """A store message refers to a chunk that is neither staged nor stored: it expired (``STAGE_TTL_S``).

    Permanent: only fetching the job again can bring the POIs back.
    """

    retryable = False


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
    """What a stage holds: an answer in ``chunks`` chunks, or a split into ``children`` boxes; what was
    sent, what was stored, whether the answer was finished and is one the ledger files (``ledger``)."""

    chunks: int
    children: int
    sent: frozenset[int]
    fallback: bool = False
    stored: frozenset[int] = frozenset()
    finished: bool = False
    ledger: bool = False

    @property
    def pending(self) -> list[int]:
        """Indexes of the messages not handed on yet."""
        return [i for i in range(self.chunks or self.children) if i not in self.sent]

    @property
    def landed(self) -> bool:
        """Whether it lands without its fetch: every message handed on, or every chunk stored and the
        answer finished (or one the ledger does not file)."""
        if not self.pending:
            return True
        every_chunk = set(range(self.chunks))
        return self.chunks > 0 and every_chunk <= self.stored and (self.finished or not self.ledger)


#: The fields :meth:`Stage.load` reads the values of.
_COUNTS = ("chunks", "children")


class Stage:
    """The staged answer of one fetch message, under ``fetch:<message id>``.

    Examples:
      >>> from enrichment_middleware.backends.memory import MemoryBackend
      >>> stage = Stage(MemoryBackend(), "fetch:1", ttl_s=60)
      >>> staged = stage.put_pois([["node", 1, 48.8, 2.3, {"amenity": "cafe"}]], chunk_bytes=1024)
      >>> staged.pending
      [0]
      >>> stage.load_chunk(0)
      [['node', 1, 48.8, 2.3, {'amenity': 'cafe'}]]

    Parameters:
      backend: where it lives (the state backend).
      key: the stage key (see :func:`stage_key`).
      ttl_s: how long it is kept after its last write (``STAGE_TTL_S``).
    """

    def __init__(self, backend: Stages, key: str, *, ttl_s: float) -> None:
        self.backend = backend
        self.key = key
        self.ttl_s = ttl_s

    def load(self) -> Staged | None:
        """The staged answer (or split), ``None`` when this fetch has none yet."""
        return self.staged_from(self.backend.stage_look(self.key, _COUNTS))

    def look_step(self) -> Step:
        """:meth:`load`'s read, as a step of a batch (``Backend.all_or_nothing``); its reply goes to
        :meth:`staged_from`."""
        return Step("stage_look", (self.key, _COUNTS), condition="any")

    @staticmethod
    def staged_from(look: tuple[set[str], dict[str, bytes]]) -> Staged | None:
        """What :meth:`load` answers when its read (``stage_look``) replied ``look``."""
        names, counts = look
        if not counts:
            return None
        sent = frozenset(int(n[5:]) for n in names if n.startswith("sent:"))
        stored = frozenset(int(n[7:]) for n in names if n.startswith("stored:"))
        chunks, children = int(counts.get("chunks", b"0")), int(counts.get("children", b"0"))
        return Staged(
            chunks, children, sent, "fallback" in names, stored, "finished" in names, "answer" in names
        )

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
                self.backend.stage_put(self.key, pending, self.ttl_s)
            pending = {f"chunk:{index}": chunk}
            count = index + 1
        last = {**pending, "chunks": str(count).encode()}
        if answer is not None:
            last["answer"] = _ENCODER.encode(dict(answer)).encode()
        if gone:
            # An augmented diff's elements gone upstream: read once, by the step that finishes the answer.
            last["gone"] = _pack([_ENCODER.encode(list(key)) for key in gone])
        self.backend.stage_put(self.key, last, self.ttl_s)
        return Staged(count, 0, frozenset())

    def load_gone(self) -> list[tuple[str, int]]:
        """The elements :meth:`put_pois` was given as ``gone``."""
        data = self.backend.stage_get(self.key, "gone")
        return [] if data is None else [(str(kind), int(osm_id)) for kind, osm_id in decode_chunk(data)]

    def load_answer(self) -> dict[str, Any] | None:
        """What :meth:`put_pois` was given as ``answer``; ``None`` for an answer staged without one."""
        data = self.backend.stage_get(self.key, "answer")
        return None if data is None else dict(json.loads(data))

    def unfinished(self) -> bool:
        """Every chunk is stored and the answer was not marked finished (:meth:`mark_finished`) yet."""
        names, _ = self.backend.stage_look(self.key, [])
        return (
            "chunks" in names and "finished" not in names and not any(n.startswith("chunk:") for n in names)
        )

    def mark_finished(self) -> None:
        """The whole answer is in the database and the ledger: nothing is left to do for it."""
        self.backend.stage_put(self.key, {"finished": b"1"}, self.ttl_s)

    def put_split(self, children: int, *, fallback: bool = False) -> Staged:
        """Record that this fetch split its box into ``children`` jobs (sent next); ``fallback``: it hands
        on one full fetch instead of the augmented diff the server refused."""
        fields = {"children": str(children).encode(), **({"fallback": b"1"} if fallback else {})}
        self.backend.stage_put(self.key, fields, self.ttl_s)
        return Staged(0, children, frozenset(), fallback)

    def keep(self, ttl_s: float | None = None) -> None:
        """Keep the stage another ``ttl_s`` (default the stage's): its store step is waiting out an
        outage of the database, or its fetch a deferral."""
        self.backend.stage_put(self.key, {}, self.ttl_s if ttl_s is None else ttl_s)

    def mark_sent(self, index: int) -> None:
        """Message ``index`` was handed on: a retry does not send it again."""
        self.backend.stage_put(self.key, {f"sent:{index}": b"1"}, self.ttl_s)

    def load_chunk(self, index: int) -> list[list[Any]] | None:
        """Chunk ``index``'s POIs; ``None`` when it was stored already.

        Raises:
          StagedAnswerMissing: neither staged nor stored (expired).
        """
        data = self.backend.stage_get(self.key, f"chunk:{index}")
        if data is not None:
            return decode_chunk(data)
        if self.backend.stage_get(self.key, f"stored:{index}") is not None:
            return None
        raise StagedAnswerMissing(
            f"The staged POIs of chunk {index} of {self.key} are gone: they were kept STAGE_TTL_S="
            f"{self.ttl_s:g}s and the database did not take them in time. Send the job again "
            "(enrich) to fetch them anew, and raise STAGE_TTL_S if outages last longer."
        )

    def mark_stored(self, index: int) -> bool:
        """Chunk ``index`` is in the database: delete it, keep a marker; True when every chunk is stored."""
        names = self.backend.stage_put(
            self.key, {f"stored:{index}": b"1"}, self.ttl_s, remove=[f"chunk:{index}"]
        )
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


__all__ = [
    "Stage",
    "Staged",
    "StagedAnswerMissing",
    "current_message_id",
    "decode_chunk",
    "derived_message_id",
    "encode_chunks",
    "retry_until_reachable",
    "stage_key",
]

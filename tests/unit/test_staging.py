"""Staged answers: bounded chunks in the state backend, resumable hand-offs, bounded messages and log lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import BrokerConnectionError

from enrichment_actors.message_limit import MessageSizeLimit, MessageTooLarge
from enrichment_actors.metrics import Outcome, take_noted_outcome
from enrichment_actors.overpass_responses import read_response
from enrichment_actors.staging import (
    Stage,
    StagedAnswerMissing,
    decode_chunk,
    encode_chunks,
)
from enrichment_actors.stub_overpass import StubOverpass
from enrichment_middleware.backends.base import Stages
from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.clock import ManualClock
from tests.support.product import product as built
from tests.support.workers import eventually, free_port

POI = ["node", 1, 48.85, 2.29, {"amenity": "cafe", "name": "Café du Parc"}]
#: A box of about 19,000 POIs: some 3 MB of JSON, several 1 MiB chunks.
BIG_BOX = {"south": 48.0, "west": 2.0, "north": 48.5, "east": 2.5}


def pois(count: int) -> list[list[Any]]:
    return [
        ["node", i, 48.0 + i * 1e-6, 2.0, {"amenity": "cafe", "name": f"Café n° {i}"}] for i in range(count)
    ]


@pytest.mark.parametrize(
    ("count", "max_bytes"), [(0, 1024), (1, 1024), (50, 1024), (1000, 4096), (1000, 1 << 20)]
)
def test_chunks_are_bounded_and_give_back_every_poi(count: int, max_bytes: int) -> None:
    chunks = list(encode_chunks(pois(count), max_bytes))
    decoded = [decode_chunk(chunk) for chunk in chunks]
    assert [p for chunk in decoded for p in chunk] == pois(count)
    assert all(
        len(json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))) <= max_bytes for chunk in decoded
    )
    # No POIs still make one (empty) chunk: the job ends with a store step.
    assert len(chunks) >= 1


def test_a_poi_bigger_than_a_chunk_goes_alone() -> None:
    big = ["way", 7, 1.0, 2.0, {"description": "x" * 5000}]
    decoded = [decode_chunk(c) for c in encode_chunks([POI, big, POI], 1024)]
    assert decoded == [[POI], [big], [POI]]


@pytest.fixture(params=["memory", "redis"])
def stash(request: pytest.FixtureRequest) -> Iterator[Stages]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    request.getfixturevalue("redis_client")
    backend = RedisBackend.from_url(request.getfixturevalue("redis_url"), namespace="test")
    yield backend
    backend.client.close()


def test_a_stage_holds_an_answer_until_every_chunk_is_stored(stash: Stages) -> None:
    stage = Stage(stash, "fetch:m1", ttl_s=60)
    assert stage.load() is None
    staged = stage.put_pois(pois(100), chunk_bytes=2048)
    assert staged.chunks > 2 and staged.pending == list(range(staged.chunks))
    stage.mark_sent(0)
    reloaded = stage.load()
    assert reloaded is not None and reloaded.pending == list(range(1, staged.chunks))
    rows = [row for i in range(staged.chunks) for row in stage.load_chunk(i) or []]
    assert rows == pois(100)
    done = [stage.mark_stored(i) for i in range(staged.chunks)]
    assert done == [False] * (staged.chunks - 1) + [True]
    # Stored chunks are deleted; a copy of a store message finds them stored, not lost.
    assert stage.load_chunk(0) is None
    assert not any(name.startswith("chunk:") for name in stash.stage_look("fetch:m1")[0])


#: An answer whose tags hold a lone surrogate and a NUL (issue 16, finding 7).
_BAD_TEXT_ANSWER = (
    b'{"elements": [{"type": "node", "id": 1, "lat": 1.5, "lon": 2.5, '
    b'"tags": {"name": "caf\\ud800", "n\\u0000te": "a\\u0000b"}}]}'
)


def test_a_lone_surrogate_repaired_by_the_parser_survives_staging(stash: Stages) -> None:
    stage = Stage(stash, "fetch:m-surrogate", ttl_s=60)
    # Unrepaired, it cannot be staged at all: the same answer was fetched again and again.
    with pytest.raises(UnicodeEncodeError):
        stage.put_pois([("node", 1, 1.5, 2.5, {"name": "caf\ud800"})], chunk_bytes=1024)

    staged = stage.put_pois(read_response(200, _BAD_TEXT_ANSWER).pois, chunk_bytes=1024)

    rows = [row for i in range(staged.chunks) for row in stage.load_chunk(i) or []]
    assert rows == [["node", 1, 1.5, 2.5, {"name": "caf\ufffd", "n\ufffdte": "a\ufffdb"}]]


def test_a_chunk_that_expired_is_reported_not_taken_for_stored() -> None:
    clock = ManualClock()
    stage = Stage(MemoryBackend(clock=clock), "fetch:m2", ttl_s=60)
    stage.put_pois([POI], chunk_bytes=1024)
    clock.advance(61.0)
    with pytest.raises(StagedAnswerMissing, match="STAGE_TTL_S"):
        stage.load_chunk(0)


def test_redis_stages_expire_with_the_ttl(redis_client: Any, redis_url: str) -> None:
    stage = Stage(RedisBackend.from_url(redis_url, namespace="test"), "fetch:m3", ttl_s=120)
    stage.put_pois([POI], chunk_bytes=1024)
    assert 115_000 < redis_client.pttl("test:stage:{fetch:m3}") <= 120_000


def test_a_message_over_the_bound_is_refused_at_send() -> None:
    broker = StubBroker()
    broker.add_middleware(MessageSizeLimit(4096))

    @dramatiq.actor(broker=broker)
    def job(tags: list[str]) -> None:
        pass

    job.send(tags=["amenity"])
    with pytest.raises(MessageTooLarge, match="MESSAGE_MAX_BYTES=4096"):
        job.send(tags=["x" * 5000])
    # A message that was processed before exists nowhere else: never refused.
    job.send_with_options(kwargs={"tags": ["x" * 5000]}, retries=1)


# --- The actors, in this process ------------------------------------------------------------------


class SizeRecorder(dramatiq.Middleware):
    """Records the encoded size of every message enqueued."""

    def __init__(self) -> None:
        self.sizes: list[tuple[str, int]] = []

    def before_enqueue(self, broker: Any, message: dramatiq.Message[Any], delay: int) -> None:
        self.sizes.append((message.actor_name, len(message.encode())))


@pytest.fixture
def product(redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, StubOverpass]]:
    """The product in this process: its broker on the test Redis, Overpass the stand-in, the database down."""
    from enrichment_actors.overpass_client import OverpassClient
    from enrichment_actors.store import PoiStore

    runtime = built().runtime
    stub = StubOverpass().start()
    monkeypatch.setattr(
        runtime,
        "_client",
        OverpassClient(stub.interpreter_url, user_agent="tests/staging", http_timeout_s=60),
    )
    monkeypatch.setattr(runtime, "_store", PoiStore(f"postgresql://postgres@127.0.0.1:{free_port()}/down"))
    try:
        yield runtime, stub
    finally:
        stub.stop()


def test_a_failed_hand_off_is_resumed_without_a_second_call(
    product: tuple[Any, StubOverpass], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 5: the broker drops at the second store message; the retried fetch sends only the rest."""
    from enrichment_actors import actors

    fetch_pois = built().fetch_pois

    runtime, stub = product
    monkeypatch.setattr(actors, "stage_key", lambda: "fetch:resumed")
    sent: list[dramatiq.Message[Any]] = []

    def enqueue_failing_once(message: dramatiq.Message[Any], delay: int | None = None) -> None:
        if len(sent) == 1 and not getattr(enqueue_failing_once, "failed", False):
            enqueue_failing_once.failed = True  # type: ignore[attr-defined]
            raise BrokerConnectionError("connection to the broker dropped")  # type: ignore[no-untyped-call]
        sent.append(message)

    monkeypatch.setattr(runtime.broker, "enqueue", enqueue_failing_once)
    monkeypatch.setattr(runtime, "settings", runtime.settings.replace(stage_chunk_bytes=20_000))
    box = {"south": 48.0, "west": 2.0, "north": 48.05, "east": 2.05}
    with pytest.raises(BrokerConnectionError):
        fetch_pois.fn(box, ["amenity", "shop"])
    fetch_pois.fn(box, ["amenity", "shop"])

    assert stub.stats().calls == 1
    chunks = [message.kwargs["chunk"] for message in sent]
    assert len(chunks) > 1 and sorted(chunks) == list(range(len(chunks)))
    assert len({message.message_id for message in sent}) == len(sent)


@pytest.mark.parametrize("database", ["up", "refusing"])
def test_a_fetch_stores_an_answer_of_one_chunk_itself_and_hands_it_on_only_when_that_fails(
    product: tuple[Any, StubOverpass], monkeypatch: pytest.MonkeyPatch, postgres_url: str, database: str
) -> None:
    """One chunk: no store_pois message, its POIs in the database, the chunk marked stored; a database
    that fails it gets a store_pois message instead (which waits and retries). A redelivery of either
    fetch calls nothing and sends nothing more."""
    from enrichment_actors import actors
    from enrichment_actors.store import PoiStore

    fetch_pois = built().fetch_pois
    runtime, stub = product
    store = PoiStore(postgres_url)
    store.ensure_schema()
    store.model.delete().execute()
    monkeypatch.setattr(runtime, "_store", store)
    if database == "refusing":

        def refuse(*args: Any, **kwargs: Any) -> int:
            raise RuntimeError("the database refused the rows")

        monkeypatch.setattr(store, "upsert", refuse)
    monkeypatch.setattr(actors, "stage_key", lambda: f"fetch:one-chunk-{database}")
    sent: list[dramatiq.Message[Any]] = []
    monkeypatch.setattr(runtime.broker, "enqueue", lambda message, delay=None: sent.append(message))
    box = {"south": 48.0, "west": 2.0, "north": 48.01, "east": 2.01}
    try:
        noted = []
        for _delivery in range(2):
            fetch_pois.fn(box, ["amenity"])
            noted.append(take_noted_outcome())
        # The job's success is counted once: the redelivered copy finds it all done.
        assert noted == ([Outcome.SUCCESS, None] if database == "up" else [None, None])
        stage = actors._stage()
        names = stage.backend.stage_look(stage.key)[0]
        assert stub.stats().calls == 1
        if database == "up":
            assert sent == []
            assert store.model.select().count() > 0
            assert "stored:0" in names and "chunk:0" not in names
        else:
            assert [(m.actor_name, m.kwargs["chunk"]) for m in sent] == [("store_pois", 0)]
            assert store.model.select().count() == 0
            assert "sent:0" in names and "chunk:0" in names
    finally:
        store.close()


def test_a_failing_store_logs_short_lines_and_no_message_is_over_the_bound(
    product: tuple[Any, StubOverpass], caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 7: a 3 MB answer with the database down: every message and log line stays small."""
    fetch_pois, store_pois = built().fetch_pois, built().store_pois

    runtime, stub = product
    recorder = SizeRecorder()
    runtime.broker.middleware.append(recorder)
    caplog.set_level(logging.INFO)
    worker = dramatiq.Worker(runtime.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        fetch_pois.send(bbox=BIG_BOX, tags=["amenity", "shop"])

        def failed_stores() -> int:
            return sum("Could not store" in r.getMessage() for r in caplog.records)

        eventually(lambda: failed_stores() >= 2, timeout_s=60, message="two failed store attempts")
    finally:
        worker.stop()
        runtime.broker.middleware.remove(recorder)

    longest = max(len(line) for line in caplog.text.splitlines())
    assert longest < 2000, f"a log line of {longest} characters"
    assert max(size for _, size in recorder.sizes) <= runtime.settings.message_max_bytes
    assert stub.stats().calls == 1
    stores = [size for actor, size in recorder.sizes if actor == store_pois.actor_name]
    assert len(stores) >= 2, "the answer should span several chunks"


def test_a_redelivered_enrich_sends_the_same_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetch sent twice (enrich redelivered) is one job: the second copy finds the first's staged answer."""
    from dramatiq.middleware import CurrentMessage

    enrich, runtime = built().enrich, built().runtime

    sent: list[dramatiq.Message[Any]] = []
    monkeypatch.setattr(runtime.broker, "enqueue", lambda message, delay=None: sent.append(message))
    box = {"south": 48.0, "west": 2.0, "north": 48.01, "east": 2.01}
    for message in (enrich.message(bbox=box), enrich.message(bbox=box)):
        for _attempt in range(2):
            token = CurrentMessage._MESSAGE.set(message)
            try:
                enrich.fn(bbox=box)
            finally:
                CurrentMessage._MESSAGE.reset(token)
    ids = [message.message_id for message in sent]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]


@pytest.mark.parametrize(
    ("environ", "error"),
    [
        ({"STAGE_TTL_S": "11999"}, "STAGE_TTL_S=11999 must exceed"),
        ({"STORE_MAX_RETRIES": "200"}, "staged POIs would expire"),
        ({"MESSAGE_MAX_BYTES": "100"}, "MESSAGE_MAX_BYTES"),
        ({"STAGE_CHUNK_BYTES": "10"}, "STAGE_CHUNK_BYTES"),
    ],
)
def test_staging_settings_are_checked(environ: dict[str, str], error: str) -> None:
    from enrichment_actors.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=error):
        load_settings(environ)


def test_staging_waits_for_an_unreachable_redis_rather_than_call_again(
    product: tuple[Any, StubOverpass], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Failing after the call would mean a retry, and a retry a second call: staging waits instead."""
    from enrichment_actors import actors

    fetch_pois = built().fetch_pois
    from enrichment_middleware.backends.base import BackendUnavailable

    runtime, stub = product
    monkeypatch.setattr(actors, "stage_key", lambda: "fetch:blip")
    sent: list[dramatiq.Message[Any]] = []
    monkeypatch.setattr(runtime.broker, "enqueue", lambda message, delay=None: sent.append(message))
    backend = actors._stage().backend
    put = backend.stage_put
    failures = iter([True, True, False])

    def put_during_a_blip(*args: Any, **kwargs: Any) -> set[str]:
        if next(failures, False):
            raise BackendUnavailable("Redis at redis://127.0.0.1 cannot be reached (a blip).")
        return put(*args, **kwargs)

    monkeypatch.setattr(backend, "stage_put", put_during_a_blip)
    caplog.set_level(logging.WARNING)
    fetch_pois.fn({"south": 48.0, "west": 2.0, "north": 48.02, "east": 2.02}, ["amenity"])
    assert stub.stats().calls == 1
    assert [m.actor_name for m in sent] == ["store_pois"]
    assert sum("Could not stage the fetched POIs" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("landed", ["stored by its fetch", "handed to store_pois", "only staged"])
def test_a_deferred_redelivery_of_a_fetch_whose_answer_landed_takes_no_claim(
    product: tuple[Any, StubOverpass], monkeypatch: pytest.MonkeyPatch, landed: str
) -> None:
    """Issue 16, finding 6: the second delivery of a finished fetch, deferred at admission, re-took its tiles'
    claims for an hour, and a forced job for those tiles then ended "coalesced" with no call. One whose
    fetch died storing it itself is the only one that can land it: it keeps its claims and its stage."""
    from enrichment_actors import actors

    fetch_pois = built().fetch_pois
    from enrichment_actors.coverage.claims import TileClaims
    from enrichment_middleware.deferral import Defer

    runtime, _ = product
    monkeypatch.setattr(runtime.broker, "enqueue", lambda message, delay=None: None)
    tiles, owner = ["50:4800:200", "50:4800:201"], "fetch-leader"
    bbox = {"south": 48.0, "west": 2.0, "north": 48.02, "east": 2.04}
    message = fetch_pois.message(bbox=bbox, tags=["amenity"], tiles=tiles, owner=owner)
    # The first delivery fetched and staged its answer; the answer landed and the claims went back.
    stage = actors._stage(f"fetch:{message.message_id}")
    stage.put_pois([], chunk_bytes=1000, answer=None, gone=[])
    if landed == "stored by its fetch":
        stage.mark_stored(0)
    elif landed == "handed to store_pois":
        stage.mark_sent(0)
    claims = TileClaims(runtime.backend, ttl_s=60)
    tagset = actors.TileCover.from_message(tiles, actors.validate_job(bbox, ["amenity"]).tags, owner).tagset
    # The second delivery is deferred before it runs (no permit, a pause...).
    actors.ClaimRelease().after_process_message(
        runtime.broker, dramatiq.broker.MessageProxy(message), exception=Defer(3600, reason="no_permit")
    )
    if landed == "only staged":
        assert claims.claim(tagset, tiles, owner="fetch-forced") == []
        ttl_s = runtime.backend.client.pttl(runtime.backend.key("stage", stage.key)) / 1000
        assert ttl_s > 3600 + runtime.settings.stage_ttl_s - 60
    else:
        assert claims.claim(tagset, tiles, owner="fetch-forced") == tiles


def test_a_diff_answer_stored_by_its_fetch_deletes_what_is_gone_even_if_its_stage_was_lost(
    redis_client: Any, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of the store in the fetch: a Redis restarted without persistence (or failed over) between
    the staging and the store lost the stage; the fetch stores from what it has in hand, the elements
    gone upstream too, instead of finishing the answer as if nothing were gone."""
    from enrichment_actors import actors
    from enrichment_actors.coverage.cover import TileCover
    from enrichment_actors.coverage.ledger import fetch_time
    from enrichment_actors.jobs import validate_job
    from enrichment_actors.store import PoiStore

    runtime = built().runtime
    store = PoiStore(postgres_url)
    store.ensure_schema()
    monkeypatch.setattr(runtime, "_store", store)
    finished: list[list[tuple[str, int]]] = []

    def finish_answer(answer: Any, *, gone: Any = ()) -> int:
        finished.append(list(gone))
        return 0

    monkeypatch.setattr(store, "finish_answer", finish_answer)
    box = {"south": 48.0, "west": 2.0, "north": 48.01, "east": 2.01}
    cover = TileCover.of_job(
        validate_job(box, ["amenity"], limits=runtime.job_limits),
        tile_deg=runtime.settings.tile_deg,
        owner="o",
    )
    stage = actors._stage("fetch:diff-lost")
    answer = cover.answer(stage.key, "2026-01-01T00:00:00Z", fetched_at=fetch_time(), diff=True)
    rows = [("node", 1, 48.005, 2.005, {"amenity": "cafe"})]
    stage.put_pois(rows, chunk_bytes=1 << 20, answer=answer.as_json(), gone=[("node", 99)])
    redis_client.flushdb()  # the stage is lost
    try:
        assert actors._stored_here(stage, cover, actors.Fetched(rows, answer, [("node", 99)])) is True
        assert finished == [[("node", 99)]]
    finally:
        store.close()

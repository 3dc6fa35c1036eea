"""The actors: enrich (validate), fetch_pois (one Overpass call), store_pois (upsert).

A job is a chain of messages so that each step holds only what it needs:
the fetch is the only step under the quota, the semaphore and the breaker,
and holds its permit only while the call is in flight. The fetch stages its
answer (:mod:`.staging`) before it stores it or hands it on: an answer of
one chunk it stores itself, a larger one (or one it could not store) goes
to store messages that carry only a reference to a bounded chunk of it. A
database failure is retried without a second Overpass call, and so is a
fetch whose hand-off failed.

Importing this module declares nothing. :func:`declare` adds the actors'
middleware to a runtime's broker and declares the three actors there; the
actor functions read the runtime at call time (:func:`~.runtime.current`).
:mod:`enrichment_actors.worker` calls it, for the product's own workers and
for an app's broker alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import dramatiq
from dramatiq.middleware import CurrentMessage

from enrichment_middleware.admission import STATE_UNAVAILABLE, charge_now
from enrichment_middleware.attempt import deferral_of
from enrichment_middleware.backends.base import BackendUnavailable
from enrichment_middleware.deferral import Defer
from enrichment_middleware.failpoints import failpoint
from enrichment_middleware.fair import FAIR_KEY
from enrichment_middleware.policy.backoff import jittered
from enrichment_middleware.policy.pause import HELD, PAUSED, PauseDecision, PausePolicy
from enrichment_middleware.semaphore import release_permit_early
from enrichment_middleware.usage import charge, report_no_call

from .coverage.claims import TileClaims
from .coverage.cover import TileCover
from .coverage.cover import members as file_by_tile
from .coverage.ledger import Answer, fetch_time, read_osm_base
from .job_logs import JobLogContext, origin_options
from .jobs import DEFAULT_SOURCE, InvalidJob, Job, build_query, validate_enrich, validate_job
from .message_limit import MessageSizeLimit
from .metrics import CALL_OK, Outcome, note_outcome
from .outages import OutagePolicy, OutageTooLong, waiting_out_outages
from .overpass_adiff import adiff_query, read_adiff
from .overpass_client import CallCost, FetchResult, OverpassClient
from .overpass_endpoints import endpoint_name
from .overpass_pause import (
    HoldRelease,
    hold_after_rejection,
    pause_after_429,
    refuses_us,
    settings_fingerprint,
)
from .overpass_responses import (
    ClientTimeout,
    DuplicateQuery,
    OverpassError,
    ParsedResponse,
    QueryFailed,
    QueryRejected,
    QueryTooLarge,
    QueryUnsendable,
    RateLimited,
    read_response,
)
from .runtime import ACTORS, OVERPASS, Runtime, current
from .server_time import server_milliseconds
from .staging import (
    Stage,
    Staged,
    StagedAnswerMissing,
    current_message_id,
    derived_message_id,
    retry_until_reachable,
    stage_key,
)
from .startup import StartupReport
from .store import PersistenceError

logger = logging.getLogger(__name__)


def retry_when(retries: int, exception: BaseException) -> bool:
    """Retry transient failures up to ``RETRY_MAX`` times; permanent ones never."""
    return retries < current().settings.retry_max and getattr(exception, "retryable", True)


def enrich(
    bbox: Any = None,
    tags: Any = None,
    *args: Any,
    force: Any = False,
    source: Any = DEFAULT_SOURCE,
    **unexpected: Any,
) -> None:
    """Fill the POIs of ``bbox`` (south, west, north, east) matching ``tags`` (default: the usual POI families).

    With the coverage ledger (``ENRICH_COVERAGE``), only the tiles of the box
    that are neither fresh nor being fetched by another job are fetched;
    ``force=True`` fetches fresh tiles too. ``source`` names who sent the job
    (``maps``, ``refresh``, ``import``): while jobs of several sources wait for
    one endpoint, each gets calls by its weight (``ENRICH_SOURCE_WEIGHTS``).
    """
    job = validate_enrich(
        (bbox, tags, *args), {"force": force, "source": source, **unexpected}, limits=current().job_limits
    )
    # An id derived from this message's: a redelivered enrich sends the same
    # fetch, which finds its staged answer instead of calling again.
    fetch_id = derived_message_id(f"enrich:{current_message_id()}", "fetch", 0)
    arguments = job.as_message()
    if current().settings.coverage:
        # The ledger (PostgreSQL) and the claims (the state backend): an outage of either is waited out.
        with _outages():
            cover = _tiles_to_fetch(job, owner=fetch_id, force=force)
        if cover is None:
            return
        arguments.update(tiles=cover.ids, owner=fetch_id, force=force)
    fetch = _actor("fetch_pois").message(**arguments)
    # The source travels in the fetch's options (its lane of the fair room), and on to its children.
    options = {**origin_options(fetch.options), FAIR_KEY: source}
    current().broker.enqueue(fetch.copy(message_id=fetch_id, options=options))


def _tiles_to_fetch(job: Job, *, owner: str, force: bool) -> TileCover | None:
    """The tiles of ``job`` that are not fresh (unless ``force``) and that ``owner`` could claim; None: no fetch.

    The job's outcome is noted when it ends here: ``fresh`` or ``coalesced``.
    """
    cover = TileCover.of_job(job, tile_deg=current().settings.tile_deg, owner=owner)
    fresh = (
        set()
        if force
        else current().store().fresh_tiles(cover.tagset, cover.ids, max_age_s=current().settings.fresh_s)
    )
    needed = [tile for tile in cover.ids if tile not in fresh]
    if not needed:
        logger.info("Every tile of %s is fresh: no call (fresh).", job.bbox)
        note_outcome(Outcome.FRESH)
        return None
    claimed = _claims().claim(cover.tagset, needed, owner=owner)
    if not claimed:
        logger.info(
            "The %d tiles %s still needs are being fetched by other jobs: no call (coalesced).",
            len(needed),
            job.bbox,
        )
        note_outcome(Outcome.COALESCED)
        return None
    return cover.only(claimed)


def _claims() -> TileClaims:
    return TileClaims(current().backend, ttl_s=current().settings.claim_ttl_s)


def _outages(staged: Stage | None = None) -> contextlib.AbstractContextManager[None]:
    """Wait out PostgreSQL or the state backend unreachable (:mod:`.outages`); ``staged`` is kept meanwhile."""
    s = current().settings
    policy = OutagePolicy(
        max_s=s.outage_max_s, min_wait_s=s.retry_min_backoff_s, max_wait_s=s.retry_max_backoff_s
    )
    return waiting_out_outages(policy, on_wait=staged.keep if staged is not None else lambda: None)


def fetch_pois(
    bbox: dict[str, float],
    tags: list[str],
    depth: int = 0,
    *,
    tiles: list[str] | None = None,
    owner: str | None = None,
    force: bool = False,
    diff: bool = True,
) -> None:
    """One Overpass call for an already validated job; stages the POIs, then stores them or hands them on.

    With ``tiles`` (set by enrich), the call asks for those tiles, which
    ``owner`` claimed, and the answer is filed by tile in the coverage ledger.
    A forced fetch of tiles the ledger holds asks only for what changed since
    (an augmented diff), unless ``diff`` is false (the server refused one).
    """
    job = validate_job(bbox, tags, depth=depth, limits=current().job_limits)
    cover = None if tiles is None else TileCover.from_message(tiles, job.tags, owner)
    stage = _stage()
    # Without the ledger nothing but building the query lies between this look and the call: the
    # pause read with the stage is the one checked before the call. With it, the ledger's reads
    # (PostgreSQL, the claims) lie between, and the pause is read again after them.
    staged, pause = _look(stage) if cover is None else (stage.load(), None)
    if staged is not None:
        # A retry or redelivery of a fetch that had its answer: no second
        # call, only the hand-off of what was not handed on yet.
        report_no_call()
        release_permit_early()
        _hand_on(job, stage, staged, cover, force)
        return
    if cover is not None and _fresh_since_claimed(cover, force):
        return
    since = _diff_since(cover, force) if cover is not None and diff else None
    query, read = _query(job, cover, since)
    client = current().client(current().current_endpoint())
    _defer_if_paused(pause)
    try:
        result = _call_overpass(client, query, read)
    except ClientTimeout:
        # The query may keep running upstream, holding a slot, until killed. But
        # kill_my_queries ends every query of our address, the healthy calls of
        # the other workers too (each then a breaker failure of its own): kill
        # only when this call is the only one in flight fleet-wide (its own
        # permit, still held, counted), else let it end by its own [timeout].
        failpoint("fetch.timed_out")
        try:
            in_flight = current().semaphore.policies[_policy_name("semaphore")].in_use()
        except BackendUnavailable as exc:
            in_flight = None
            logger.warning("Overpass call timed out; calls in flight unknown (%s): query not killed.", exc)
        if in_flight is not None and in_flight <= 1:
            client.kill_my_queries()
        elif in_flight is not None:
            logger.warning(
                "Overpass call timed out with %d calls in flight: not killing our queries (that would end the "
                "others' too); this one ends by its own [timeout:%d].",
                in_flight,
                current().settings.query_timeout_s,
            )
        raise
    except RateLimited as exc:
        raise _after_429(client) from exc
    except QueryTooLarge:
        if not _split(job, stage, cover, force):
            raise
        return
    except (QueryRejected, QueryFailed) as exc:
        if since is None or cover is None:
            raise
        _fall_back_to_whole(job, stage, cover, force, f"since {since}: {exc}")
        return
    except OverpassError as exc:
        if refuses_us(exc) is None:
            raise
        raise _after_refusal(client, exc) from exc
    # The call is over and succeeded: its bytes and server time (reported in
    # _call_overpass), its permit, its seat and its success end together, in
    # one round trip, and the next call may start while this job hands its POIs on.
    release_permit_early(succeeded=True)
    current().metrics.count_elements_dropped(result.parsed.dropped)
    failpoint("fetch.answered")
    staged, answer = _stage_answer(stage, result, cover, since)
    _hand_on(
        job, stage, staged, cover, force, fetched=Fetched(result.parsed.pois, answer, result.parsed.gone)
    )


def _query(
    job: Job, cover: TileCover | None, since: str | None
) -> tuple[str, Callable[[int, bytes], ParsedResponse]]:
    """The query text of this fetch and the reader of its answer: the job's box, its tiles, or their diff."""
    limits = {
        "timeout_s": current().settings.query_timeout_s,
        "maxsize_bytes": current().settings.maxsize_bytes,
    }
    if cover is None:
        return build_query(job, **limits), read_response
    if since is None:
        return cover.query(**limits), read_response
    return adiff_query(cover.query(**limits), since), functools.partial(read_adiff, tags=cover.tags)


def _stage_answer(
    stage: Stage, result: FetchResult, cover: TileCover | None, since: str | None
) -> tuple[Staged, Answer | None]:
    """Stage a successful answer: its POIs in chunks, and for the ledger its tiles and what is gone.

    Returns what was staged, and the ledger's answer (``None`` without a ledger).
    """
    parsed = result.parsed
    answer = None
    if cover is not None:
        osm_base, unusable = read_osm_base(parsed.osm_base)
        if unusable:
            current().metrics.count_osm_base_unusable()
            logger.warning(
                "Overpass sent an unusable timestamp_osm_base %.60r: this answer is ordered by its fetch time.",
                parsed.osm_base,
            )
        answer = cover.answer(
            stage.key, osm_base, fetched_at=fetch_time(), diff=since is not None, kept=parsed.kept
        )
    if cover is not None and since is not None:
        logger.info(
            "Refreshed %d tiles from an augmented diff since %s: %d POIs to write, %d gone.",
            len(cover.tiles),
            since,
            len(parsed.pois),
            len(parsed.gone),
        )
    chunk_bytes = current().settings.stage_chunk_bytes
    staged = retry_until_reachable(
        "stage the fetched POIs",
        lambda: stage.put_pois(
            parsed.pois,
            chunk_bytes=chunk_bytes,
            answer=None if answer is None else answer.as_json(),
            gone=parsed.gone,
        ),
    )
    return staged, answer


def _fall_back_to_whole(job: Job, stage: Stage, cover: TileCover, force: bool, why: str) -> None:
    """Hand on one whole fetch of ``cover``: the server refused the augmented diff (no history that far back)."""
    logger.warning("Overpass refused the augmented diff %s. Fetching the tiles whole.", why)
    staged = retry_until_reachable("note the fallback", lambda: stage.put_split(1, fallback=True))
    _hand_on(job, stage, staged, cover, force)


def _diff_since(cover: TileCover, force: bool) -> str | None:
    """When a forced fetch of ``cover`` may ask only for changes: the one ``timestamp_osm_base`` of its tiles.

    None (a whole fetch) unless ``ENRICH_REFRESH_DIFF`` is on, every tile is in
    the ledger with the *same* timestamp, at most ``ENRICH_DIFF_MAX_AGE_S`` old
    (a diff over a long time is no smaller). One diff since the oldest of
    several timestamps would miss an element created after it, fetched into
    a newer tile and deleted since: it is at neither end of that diff.
    """
    if not force or not current().settings.refresh_diff:
        return None
    try:
        bases = current().store().tile_bases(cover.tagset, cover.ids)
    except PersistenceError as exc:
        logger.warning("Could not read the coverage ledger (%s); fetching the tiles whole.", exc)
        return None
    known = {bases.get(tile) for tile in cover.ids}
    if len(known) != 1 or None in known:
        return None
    since, unusable = read_osm_base(known.pop())
    if since is None or unusable:
        return None
    age_s = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(since)).total_seconds()
    return since if age_s <= current().settings.diff_max_age_s else None


def _fresh_since_claimed(cover: TileCover, force: bool) -> bool:
    """Renew the claims of ``cover``; True (and no call) when its tiles were all fetched since enrich claimed them.

    A claim that expired while its job waited (a long deferral) may have let
    another job fetch the tiles: the ledger says so, and this job ends ``fresh``.
    """
    try:
        _claims().renew(cover.tagset, cover.ids, owner=cover.owner)
    except BackendUnavailable as exc:
        logger.warning("Could not renew the tile claims (%s); fetching anyway.", exc)
    if force:
        return False
    try:
        fresh = current().store().fresh_tiles(cover.tagset, cover.ids, max_age_s=current().settings.fresh_s)
    except PersistenceError as exc:
        logger.warning("Could not read the coverage ledger (%s); fetching anyway.", exc)
        return False
    if len(fresh) < len(cover.tiles):
        return False
    report_no_call()
    release_permit_early()
    _claims().release(cover.tagset, cover.ids, owner=cover.owner)
    logger.info(
        "The %d tiles of this fetch were fetched since it was sent: no call (fresh).", len(cover.tiles)
    )
    note_outcome(Outcome.FRESH)
    return True


def store_pois(
    job: dict[str, Any],
    stage: str | None = None,
    chunk: int = 0,
    pois: list[list[Any]] | None = None,
    ledger: bool = False,
) -> None:
    """Upsert one staged chunk of fetched POIs; retried on database errors without calling Overpass again.

    ``pois`` is the form of messages sent before answers were staged: the POIs themselves.
    With ``ledger``, the chunk's elements are filed by tile in the coverage
    ledger, and the store step that lands the last chunk finishes the answer.
    PostgreSQL or the state backend unreachable is waited out (up to
    ``OUTAGE_MAX_S``), its staged chunk kept meanwhile: no retry is counted.
    """
    staged = None if stage is None else _stage(stage)
    with _outages(staged):
        if staged is None:
            current().metrics.count_pois_upserted(current().store().upsert(pois or []))
            return
        _store_chunk(staged, chunk, ledger=ledger)


@dataclass(frozen=True)
class Fetched:
    """What a fetch has in hand of the answer it just staged (its one chunk's POIs, the ledger's answer,
    the elements gone): stored from memory, and safe from a stage lost meanwhile."""

    rows: Sequence[Sequence[Any]]
    answer: Answer | None
    gone: Sequence[tuple[str, int]]


def _store_chunk(staged: Stage, chunk: int, *, ledger: bool, fetched: Fetched | None = None) -> bool:
    """Upsert chunk ``chunk`` of ``staged``, mark it stored, and with ``ledger`` finish the answer once
    every chunk is stored: the store step, of store_pois or of a fetch that stores its answer itself
    (``fetched``: what it has in hand, else read from the stage). False: it found it all done.
    """
    rows = staged.load_chunk(chunk) if fetched is None else fetched.rows
    answer = fetched.answer if fetched is not None else _staged_answer(staged) if ledger else None
    gone = None if fetched is None else fetched.gone
    if rows is None:
        # A copy of a message handed on twice (its sender died before noting it
        # sent), or a retry of the step that stored the last chunk and died
        # before finishing the answer.
        if answer is not None and staged.unfinished():
            _finish(staged, answer, gone)
            return True
        logger.info("Chunk %d of %s was stored already; nothing to do.", chunk, staged.key)
        return False
    members = None if answer is None else file_by_tile(answer.tiles, rows)
    stored = current().store().upsert(rows, answer=answer, members=members)
    failpoint("store.upserted")
    complete = staged.mark_stored(chunk)
    current().metrics.count_pois_upserted(stored)
    logger.info("Stored %d POIs: chunk %d of %s.", stored, chunk, staged.key)
    if answer is not None and complete:
        failpoint("store.before_finish")
        _finish(staged, answer, gone)
    return True


def _staged_answer(staged: Stage) -> Answer:
    data = staged.load_answer()
    if data is None:
        raise StagedAnswerMissing(f"The answer of {staged.key} is gone (STAGE_TTL_S); send the job again.")
    return Answer.from_json(data)


def _finish(staged: Stage, answer: Answer, gone: Sequence[tuple[str, int]] | None = None) -> None:
    """The whole answer has landed: the ledger drops what it no longer holds (``gone``, else read from
    the stage); the claims go back."""
    if gone is None:
        gone = retry_until_reachable("read the elements gone", staged.load_gone) if answer.diff else []
    deleted = current().store().finish_answer(answer, gone=gone)
    current().metrics.count_pois_deleted(deleted)
    retry_until_reachable("note an answer finished", staged.mark_finished)
    if answer.owner is not None:
        _claims().release(answer.tagset, answer.tiles, owner=answer.owner)
    if deleted:
        logger.info("%d POIs gone upstream were deleted: %s.", deleted, staged.key)


def _call_overpass(
    client: OverpassClient, query: str, read: Callable[[int, bytes], ParsedResponse] = read_response
) -> FetchResult:
    """``client.fetch(query)``, charged to the quota and recorded in the metrics, whatever its outcome.

    Every body byte received is charged, a failed call's too (a remark after
    600 KB, a cut-off body); a request that never left the process is
    reported, so the quota gives it back. A ``duplicate_query`` refusal
    (the same text running or just run) defers the job past the query's own
    ``[timeout]``: not a retry, not a breaker failure.
    """
    started = time.monotonic()
    endpoint = _endpoint_name(client)
    cost = CallCost()
    answered = False
    try:
        result = client.fetch(query, read=read, cost=cost)
        answered = True
    except OverpassError as exc:
        if not exc.request_sent:
            report_no_call()
        current().metrics.observe_overpass_call(exc.label, time.monotonic() - started, endpoint=endpoint)
        if isinstance(exc, DuplicateQuery):
            # Spread over a second window, so identical jobs do not come back together.
            pause_s = current().settings.query_timeout_s * (1 + random.random()) + 1
            logger.info("Overpass refused a duplicate query; this job comes back in %.0f s.", pause_s)
            raise Defer(pause_s, reason=Outcome.DUPLICATE_QUERY.value) from exc
        raise
    finally:
        # Whatever ended the call (a MemoryError while reading too): what crossed the wire is charged,
        # and the server's time. Answered, with the permit given back next (release_permit_early);
        # failed, now: the job has more to do before it returns (a split, a status read, a kill).
        charge(bytes=cost.wire_bytes, cost=server_milliseconds(cost, current().settings.query_timeout_s))
        if not answered:
            charge_now()
    current().metrics.observe_overpass_call(
        CALL_OK, result.duration_s, endpoint=endpoint, response_bytes=result.response_bytes
    )
    return result


def _stage(key: str | None = None) -> Stage:
    """The stage of the fetch message running now (or the one named ``key``), in the state backend."""
    return Stage(current().backend, key or stage_key(), ttl_s=current().settings.stage_ttl_s)


def _look(stage: Stage) -> tuple[Staged | None, PauseDecision | None]:
    """The fetch's stage and, in the same round trip, the pause of its endpoint (``None``: not
    read, the backend cannot batch the two; it is read alone right before the call)."""
    policy = _pause_policy()
    pause_step = policy.step_of(PausePolicy.admit, condition="any")
    replies = None
    if pause_step is not None and policy.backend is stage.backend:
        replies = stage.backend.all_or_nothing([stage.look_step(), pause_step])
    if pause_step is None or replies is None:
        return stage.load(), None
    return Stage.staged_from(replies[0]), policy.decided(PausePolicy.admit, pause_step, replies[1])


def _hand_on(
    job: Job,
    stage: Stage,
    staged: Staged,
    cover: TileCover | None,
    force: bool,
    *,
    fetched: Fetched | None = None,
) -> None:
    """Send what the stage holds and was not sent yet, noting each send: a retry sends only the rest.

    Each message has an id derived from the stage, so a copy sent twice (the
    sender died between sending and noting) is the same job, not a new one.
    An answer of one chunk not sent yet is stored here instead (``fetched``:
    what the fetch has in hand, else read from the stage); only if that
    fails is it handed to store_pois, which waits out an outage and retries.
    """
    if not (staged.chunks == 1 and staged.pending == [0] and _stored_here(stage, cover, fetched)):
        _send_pending(job, stage, staged, cover, force)
    failpoint("fetch.handed_off")


def _send_pending(job: Job, stage: Stage, staged: Staged, cover: TileCover | None, force: bool) -> None:
    """Send the messages of ``staged`` not sent yet: its store_pois steps, or its children."""
    if staged.children:
        messages = _children(job, cover, force, fallback=staged.fallback)
        role = "child"
    else:
        message = job.as_message()
        messages = [
            _actor("store_pois").message(job=message, stage=stage.key, chunk=i, ledger=True)
            if cover is not None
            else _actor("store_pois").message(job=message, stage=stage.key, chunk=i)
            for i in range(staged.chunks)
        ]
        role = "chunk"
    for index in staged.pending:
        derived = messages[index].copy(
            message_id=derived_message_id(stage.key, role, index),
            options=origin_options(messages[index].options),
        )
        current().broker.enqueue(derived)
        retry_until_reachable("note a hand-off", functools.partial(stage.mark_sent, index))
        failpoint("fetch.sent")
    if staged.children and not staged.fallback:
        note_outcome(Outcome.SPLIT)


def _stored_here(stage: Stage, cover: TileCover | None, fetched: Fetched | None) -> bool:
    """Store a one-chunk answer in the fetch that staged it; False (logged) when that failed.

    A message fewer per job than a store_pois, and the store's reads of the
    stage (``docs/architecture.md``, "Why most jobs store in the fetch"). The
    answer is staged first, so a worker killed in between finds it again (no
    second call); any failure falls back to the store_pois message, whose
    outage waits, retries and dead letters are the store's rules. A copy
    that finds it all done counts no second success.
    """
    try:
        stored = _store_chunk(stage, 0, ledger=cover is not None, fetched=fetched)
    except Exception as exc:
        logger.warning(
            "Could not store the answer of %s in its fetch (%s: %s); handing it to store_pois.",
            stage.key,
            type(exc).__name__,
            exc,
        )
        return False
    if stored:
        note_outcome(Outcome.SUCCESS)
    return True


def _children(
    job: Job, cover: TileCover | None, force: bool, *, fallback: bool = False
) -> list[dramatiq.Message[Any]]:
    """The fetches a too-large job splits into: its tiles in up to four groups, else its box in quarters.

    One tile too large is split into quarter boxes, as without the ledger:
    those are fetched and stored, but the tile is not marked fetched. With
    ``fallback``: one whole fetch of the tiles, for a refused augmented diff.
    """
    if fallback and cover is not None:
        return [
            _actor("fetch_pois").message(
                **job.as_message(), tiles=cover.ids, owner=cover.owner, force=force, diff=False
            )
        ]
    if cover is not None and len(cover.tiles) > 1:
        child = {**job.as_message(), "depth": job.depth + 1, "owner": cover.owner, "force": force}
        return [_actor("fetch_pois").message(**child, tiles=group.ids) for group in cover.split()]
    if cover is not None:
        job = Job(cover.tiles[0].bbox, job.tags, job.depth)
    return [
        _actor("fetch_pois").message(**child.as_message())
        for child in job.split(current().settings.min_tile_deg)
    ]


def _split(job: Job, stage: Stage, cover: TileCover | None, force: bool) -> bool:
    """Send the parts of a too-large job; False when it is already at the smallest tile."""
    children = _children(job, cover, force)
    if children:
        logger.info("Query too large for %s: split into %d parts.", job.bbox, len(children))
        staged = retry_until_reachable("note the split", lambda: stage.put_split(len(children)))
        _hand_on(job, stage, staged, cover, force)
        if cover is not None and len(cover.tiles) == 1:
            # Its quarters are fetched without the ledger: the tile stays not fetched, and free.
            _claims().release(cover.tagset, cover.ids, owner=cover.owner)
    return bool(children)


# --- The endpoint's pause and hold (enrichment_actors/overpass_pause.py) ---------------------------

_rng = random.Random()


def _policy_name(option: str) -> str:
    """The policy name of this attempt for ``option`` (the router's message option), else the actor's."""
    message = CurrentMessage.get_current_message()
    name = message.options.get(option) if message is not None else None
    return str(name or _actor("fetch_pois").options.get(option) or current().endpoint().policy)


def _pause_policy(name: str | None = None) -> PausePolicy:
    """The fleet-wide pause of the endpoint this attempt calls (or of policy ``name``): the Pause
    middleware's own, so that admission sees what the actor sets."""
    return current().pause.policies[name or _policy_name("pause")]


def _after_429(client: OverpassClient) -> Defer:
    """Pause the endpoint for the fleet; the deferral of this job to the pause end plus jitter (not a retry)."""
    pause = _pause_policy()
    try:
        pause_s = _rate_limit_pause_s(client)
    except BackendUnavailable as exc:
        # The fleet cannot be told; this job at least waits, and is never retried for it.
        pause_s = current().settings.rate_limit_pause_s
        logger.warning(
            "Overpass %s answered 429 (rate limited) and the pause could not be shared (%s): only this job "
            "pauses %.0f s.",
            _endpoint_name(client),
            exc,
            pause_s,
        )
    return Defer(
        jittered(pause_s, jitter_s=pause.limits.jitter_s, rng=_rng), reason=Outcome.RATE_LIMITED.value
    )


def _after_refusal(client: OverpassClient, error: OverpassError) -> Defer:
    """Hold the endpoint for the fleet after a 406 or 403; the deferral of this job to the next look.

    Every call would be refused the same way: no job is dead-lettered for it.
    """
    pause = _pause_policy()
    try:
        hold_after_rejection(pause, error, fingerprint=_fingerprint(client), endpoint=_endpoint_name(client))
    except BackendUnavailable as exc:
        logger.error(
            "Overpass %s refused us (HTTP %s) and the hold could not be shared (%s): this job waits; the "
            "others will meet the same answer. %s",
            _endpoint_name(client),
            error.status,
            exc,
            error,
        )
    delay_s = jittered(pause.limits.hold_recheck_s, jitter_s=pause.limits.jitter_s, rng=_rng)
    return Defer(delay_s, reason=HELD)


def _defer_if_paused(decision: PauseDecision | None = None) -> None:
    """Defer, without a call, a job the Pause middleware admitted before a pause or hold began.

    Admission checks the pause first, then may wait for a permit: a job that
    waited while another met a 429 (or a 406) would call right after it. One
    read, right before the call, closes that gap. Also after an admission in
    one step: the actor's own work before its call (its stage, its claims,
    the ledger) can linger on a busy worker while another call meets a 429
    (``polite_client.feature``). ``decision``: the pause as read with the
    stage (:func:`_look`), when nothing but building the query lay between;
    else it is read now.
    """
    if decision is None:
        try:
            decision = _pause_policy().admit()
        except BackendUnavailable as exc:
            # As the middlewares do: no call unchecked.
            report_no_call()
            raise Defer(current().settings.semaphore_retry_max_s, reason=STATE_UNAVAILABLE) from exc
    if not decision.allowed:
        report_no_call()  # the quota gives the request back; the breaker hears nothing
        raise Defer(decision.delay_s, reason=decision.reason or PAUSED)


def _endpoint_name(client: OverpassClient) -> str:
    """The endpoint ``client`` calls, as metrics and logs name it: its host[:port], without credentials."""
    return endpoint_name(client.interpreter_url)


def _fingerprint(client: OverpassClient) -> str:
    """What the upstream judges us by: the URL and the User-Agent (with the contact)."""
    return settings_fingerprint(client.interpreter_url, client.user_agent)


def _rate_limit_pause_s(client: OverpassClient | None = None) -> float:
    """Pause the endpoint fleet-wide after a 429; the seconds left of the pause.

    At least RATE_LIMIT_PAUSE_S; the caller that opened the pause reads
    /api/status once, extends the pause to the server's next free slot if
    later, and caps the fleet's permits at the server's rate limit. One
    warning per pause, with its length.
    """
    client = client or current().client(current().current_endpoint())
    semaphore = _policy_name("semaphore")
    return pause_after_429(
        _pause_policy(),
        pause_s=current().settings.rate_limit_pause_s,
        read_status=client.status,
        cap_permits=lambda limit: current().semaphore.cap(semaphore, limit),
        endpoint=_endpoint_name(client),
    )


def _endpoints() -> list[tuple[str, str, OverpassClient]]:
    """Each endpoint's name (host[:port]), policy name and client."""
    return [(e.name, e.policy, current().client(e)) for e in current().endpoints]


def _boot_fingerprints() -> dict[str, tuple[PausePolicy, str]]:
    """Each endpoint's pause policy and this worker's fingerprint for it (for :class:`HoldRelease`)."""
    return {policy: (_pause_policy(policy), _fingerprint(client)) for _, policy, client in _endpoints()}


def hold_targets() -> dict[str, PausePolicy]:
    """Each endpoint's pause policy, by the endpoint's name (host[:port]): what ``enrichment release-hold`` lifts."""
    return {name: _pause_policy(policy) for name, policy, _ in _endpoints()}


class ClaimRelease(dramatiq.Middleware):
    """Gives back the tile claims of a fetch that failed for good (dead-lettered or skipped), and keeps
    those of a deferred fetch until it comes back.

    The tiles of a failed fetch stay not fetched, so the next ``enrich`` for
    them fetches them at once instead of being coalesced into a job that will
    never land. A fetch deferred (the quota spent, a pause, no permit) keeps
    its claims for its delay plus ``ENRICH_CLAIM_TTL_S``: it still holds them
    when it comes back, however long it waited.
    """

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if message.failed:
            self._release(message)
        elif isinstance(exception, Defer):
            self._renew(message, deferral_of(message, exception))

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._release(message)

    @staticmethod
    def _cover(message: dramatiq.MessageProxy) -> TileCover | None:
        kwargs = message.kwargs or {}
        if message.actor_name != "fetch_pois" or not kwargs.get("tiles"):
            return None
        try:
            job = validate_job(kwargs.get("bbox"), kwargs.get("tags"), depth=kwargs.get("depth", 0))
            return TileCover.from_message(kwargs.get("tiles"), job.tags, kwargs.get("owner"))
        except InvalidJob:
            return None

    def _release(self, message: dramatiq.MessageProxy) -> None:
        cover = self._cover(message)
        if cover is not None:
            _claims().release(cover.tagset, cover.ids, owner=cover.owner)

    def _renew(self, message: dramatiq.MessageProxy, delay_s: float) -> None:
        cover = self._cover(message)
        if cover is None:
            return
        try:
            stage = _stage(stage_key(message.message_id))
            staged = stage.load()
            if staged is not None and staged.landed:
                # Its answer landed, or lands without this fetch (its store messages are sent). A
                # redelivery deferred now has nothing to fetch, and a claim taken for it would only
                # turn the next job for these tiles (a forced one too) into a silent "coalesced".
                return
            _claims().renew(
                cover.tagset, cover.ids, owner=cover.owner, ttl_s=delay_s + current().settings.claim_ttl_s
            )
            if staged is not None:
                # Only this fetch will store it (it died storing it itself): kept until it comes back.
                stage.keep(delay_s + current().settings.stage_ttl_s)
        except BackendUnavailable as exc:
            logger.warning("Could not keep the tile claims of a deferred fetch (%s).", exc)


def _actor(name: str) -> dramatiq.Actor[Any, Any]:
    """The actor ``name`` as :func:`declare` declared it on the current runtime's broker."""
    return current().broker.get_actor(name)


class Actors(NamedTuple):
    """The three actors :func:`declare` declared, in the order a job runs them."""

    enrich: dramatiq.Actor[Any, None]
    fetch_pois: dramatiq.Actor[Any, None]
    store_pois: dramatiq.Actor[Any, None]


def declare(runtime: Runtime) -> Actors:
    """Add the actors' middleware to ``runtime.broker``, then declare enrich, fetch_pois and store_pois on it.

    Middleware goes on before the actors: Dramatiq checks an actor's options
    against the middleware there when it is declared. The actor functions read
    :func:`~.runtime.current` at call time, so ``runtime`` must be made current
    before a message runs (:mod:`enrichment_actors.worker` does both).
    """
    broker = runtime.broker
    settings = runtime.settings
    # The fetch finds its stage by its message id; every message of ours is bounded.
    if not any(isinstance(m, CurrentMessage) for m in broker.middleware):
        broker.add_middleware(CurrentMessage())
    broker.add_middleware(MessageSizeLimit(settings.message_max_bytes, actors=ACTORS))
    first = runtime.endpoint().policy
    declared = Actors(
        # OutageTooLong: an outage waited out for OUTAGE_MAX_S (not a retry); dead-lettered at once, naming it.
        dramatiq.actor(
            broker=broker,
            queue_name=settings.queue,
            throws=(InvalidJob, OutageTooLong),
            max_retries=settings.retry_max,
            # Its retries wait parked in the state backend, as a gated actor's (it opts into no gate).
            park_retries=True,
        )(enrich),
        dramatiq.actor(
            broker=broker,
            queue_name=settings.queue,
            # The router picks the endpoint of each attempt and names its policies in
            # the message options, which override these (the first endpoint's).
            route=OVERPASS,
            pause=first,
            fair=first,
            semaphore=first,
            breaker=first,
            rate=first,
            quota=first,
            # Permanent answers: dead-lettered at once, logged without a traceback. A 406
            # or 403 is not among them: it holds the endpoint, and the job waits.
            throws=(InvalidJob, QueryRejected, QueryFailed, QueryTooLarge, QueryUnsendable),
            max_retries=settings.retry_max,
            retry_when=retry_when,
            min_backoff=int(settings.retry_min_backoff_s * 1000),
            max_backoff=int(settings.retry_max_backoff_s * 1000),
        )(fetch_pois),
        dramatiq.actor(
            broker=broker,
            queue_name=settings.queue,
            throws=(StagedAnswerMissing, OutageTooLong),
            park_retries=True,
            max_retries=settings.store_max_retries,
            min_backoff=int(settings.retry_min_backoff_s * 1000),
            max_backoff=int(settings.retry_max_backoff_s * 1000),
        )(store_pois),
    )
    # After Retries in the hooks that run after a message (they run in reverse order): it has decided by then.
    broker.add_middleware(ClaimRelease(), before=type(runtime.retries))
    # A worker that boots with other settings (URL, User-Agent, contact) lifts a hold set under the old ones.
    broker.add_middleware(HoldRelease(_boot_fingerprints))
    # Every log line about a job names it: first on the broker, to see the message before and after the others.
    broker.middleware.insert(0, JobLogContext(actors=ACTORS))
    # Each worker process says what limits it keeps, and checks the database, before it takes a message.
    broker.add_middleware(StartupReport(lambda: runtime))
    return declared


__all__ = ["Actors", "OverpassError", "declare", "enrich", "fetch_pois", "hold_targets", "store_pois"]

"""Read one Overpass ``/api/interpreter`` response: the POIs it carries, or the error it means.

Overpass sends HTTP 200 before a query runs, so a 200 is not a success: a
runtime-error remark after ``elements`` (possibly after partial output) or a
body cut off when the server process died are failures too. This module
classifies a ``(status, body)`` pair into exactly one outcome, the label the
shared fixture manifest uses, and parses the POIs of a success. Bodies
above a few MiB are parsed a piece of the ``elements`` array at a time, which
keeps peak memory under three times the body for real Overpass output (one
``json.loads`` of the whole body peaks above five). It is pure: no HTTP, no
I/O, so the worker, the stand-in server and the tests share it.

Each element is checked as it is read (:mod:`.overpass_elements`): one whose
key or position is unusable is dropped and counted, its tags are repaired
into text PostgreSQL accepts, and the rest of the answer is a success.
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .overpass_elements import (
    KINDS,
    MAX_ID,
    NOT_POIS,
    Tally,
    clean_tags,
    id_problem,
    json_may_hold_bad_text,
    position,
    shown,
    tags_are_text,
)

__all__ = [
    "TEXT_MAX_CHARS",
    "AnswerTooLarge",
    "BadResponse",
    "ClientTimeout",
    "ConnectionFailed",
    "DuplicateQuery",
    "OverpassError",
    "ParsedResponse",
    "Poi",
    "QueryFailed",
    "QueryOutOfMemory",
    "QueryRejected",
    "QueryTimedOut",
    "QueryTooLarge",
    "QueryUnsendable",
    "RateLimited",
    "Redirected",
    "ServerBusy",
    "ServerDown",
    "ServerProtocolError",
    "ServerUnwell",
    "UnexpectedStatus",
    "UserAgentRejected",
    "classify",
    "cut",
    "read_response",
]

#: The most of a server's own words (a remark, an error page's line) that a message, log line or
#: dead letter repeats: an 8 MiB remark must not become 8 MiB of every log line that shows it.
TEXT_MAX_CHARS = 300


def cut(text: str, limit: int = TEXT_MAX_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out.

    Examples:
      >>> cut("runtime error: " + "x" * 1000, 30)
      'runtime error: xxxxxxxxxxxxxxx... (985 more characters)'
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class Poi(NamedTuple):
    """One point of interest: a node's position or a way's/relation's ``center``.

    The key is ``(element_type, osm_id)``: a node and a way may share an id.
    """

    element_type: str
    osm_id: int
    lat: float
    lon: float
    tags: dict[str, str]


@dataclass(frozen=True)
class ParsedResponse:
    """A successful response.

    Parameters:
      pois: The usable elements, in server order, their tags repaired.
      skipped: Elements that are not POIs (``area``).
      remark: An informational remark the server added, if any.
      osm_base: ``osm3s.timestamp_osm_base``: the state of the OSM data the
        answer reflects (ISO 8601), if the server said.
      gone: Of an augmented diff (:mod:`.overpass_adiff`): elements
        deleted, or that no longer match the query.
      dropped: Unusable elements left out (no usable type, id or position,
        tags that are not an object; see :mod:`.overpass_elements`). One
        warning line names the first few.
      kept: The ``(type, id)`` of the dropped elements whose key could be
        read. The server still returned them: their old rows stay, and the
        coverage ledger must not delete them as no longer returned.
    """

    pois: list[Poi]
    skipped: int
    remark: str | None
    osm_base: str | None = None
    gone: tuple[tuple[str, int], ...] = ()
    dropped: int = 0
    kept: tuple[tuple[str, int], ...] = ()


class OverpassError(Exception):
    """Base of every way an Overpass request can fail.

    ``str(exc)`` says what happened and what to do next. Each subclass sets
    the class attributes ``label`` (the classification, as in the fixture
    manifest and metrics), ``retryable`` (transient: sending the same request
    again may succeed) and ``trips_breaker`` (counts as a circuit-breaker
    failure, i.e. says something about the server's health). Each instance
    also says what the failed call cost: ``response_bytes`` downloaded before
    it failed (the download quota charges them) and ``request_sent`` (False
    when the request never left this process, so no request was spent).

    Examples:
      >>> try:
      ...     read_response(429, b"<p>rate_limited</p>")
      ... except OverpassError as exc:
      ...     (exc.label, exc.retryable, exc.trips_breaker, exc.status)
      ('rate_limited', True, False, 429)

    Parameters:
      message: The human message: what happened, what to do next.
      status: The HTTP status, or None when no response arrived.
      detail: The server's own words: error lines, a remark, or a reason.
      response_bytes: Body bytes received before the failure; 0 when none.
      request_sent: False only when the request certainly never left this
        process (the connection could not be made, the query could not be
        encoded). Defaults to True: when in doubt, the request counts.

    ``server_s`` is the server's time as the client saw it, from the request
    sent to the status line received (the client sets it; None when no status
    line came).
    """

    label: ClassVar[str] = "overpass_error"
    retryable: ClassVar[bool] = False
    trips_breaker: ClassVar[bool] = False
    server_s: float | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str = "",
        response_bytes: int = 0,
        request_sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.response_bytes = response_bytes
        self.request_sent = request_sent


class QueryTooLarge(OverpassError):
    """The query hit its own time or memory limit: the remedy is a smaller box."""


class AnswerTooLarge(QueryTooLarge):
    """The answer, decoded, is larger than ``OVERPASS_MAX_ANSWER_BYTES``: reading stopped there.

    Split like a query over its own ``[maxsize]``: the same query would send
    the same answer again.
    """

    label = "answer_too_large"


class QueryTimedOut(QueryTooLarge):
    """HTTP 200 with ``runtime error: Query timed out ...``."""

    label = "query_timeout"


class QueryOutOfMemory(QueryTooLarge):
    """HTTP 200 with ``runtime error: Query ran out of memory ...``."""

    label = "query_out_of_memory"


class QueryFailed(OverpassError):
    """HTTP 200 with any other ``runtime error:`` remark."""

    label = "query_error"


class ServerUnwell(OverpassError):
    """HTTP 200 with a remark that is the server's fault, not the query's.

    ``open64: 12 Cannot allocate memory`` (the server itself is short of
    memory) or ``File_Blocks_Index: Data file size does not match block
    size`` (its database is mid-update). The same query succeeds once the
    server has recovered; unlike a query that ran out of its own
    ``[maxsize]``, a smaller box does not help.
    """

    label = "server_unwell"
    retryable = True
    trips_breaker = True


class ServerProtocolError(OverpassError):
    """HTTP 200 with an error page naming ``Dispatcher_Client::...::protocol_error``.

    The interpreter could not talk to the server's own dispatcher (a fault
    inside the server, e.g. mid-restart or mismatched versions): nothing is
    wrong with the query, and the same query may succeed later.
    """

    label = "protocol_error"
    retryable = True
    trips_breaker = True


class DuplicateQuery(OverpassError):
    """HTTP 200 with an error page naming ``Dispatcher_Client::request_read_and_idx::duplicate_query``.

    The server refuses a query text it is already running, or ran moments
    ago, too often from this address (a third copy within the query's
    ``[timeout]``). Not a server fault and not a bad answer: run the job
    again once that window is over, without counting a retry or a breaker
    failure.
    """

    label = "duplicate_query"
    retryable = True


class QueryUnsendable(OverpassError):
    """The query text cannot be sent at all (it cannot be encoded as UTF-8); no request left this process."""

    label = "query_unsendable"


class BadResponse(OverpassError):
    """HTTP 200 whose body is not a complete JSON document with an ``elements`` list."""

    label = "bad_response"
    retryable = True
    trips_breaker = True


class QueryRejected(OverpassError):
    """HTTP 400: the query text is invalid. ``messages`` holds each error line, unescaped."""

    label = "bad_query"

    def __init__(
        self, message: str, *, messages: list[str], status: int = 400, response_bytes: int = 0
    ) -> None:
        super().__init__(message, status=status, detail="\n".join(messages), response_bytes=response_bytes)
        self.messages = messages


class UserAgentRejected(OverpassError):
    """HTTP 406: the server refuses a missing or generic User-Agent."""

    label = "user_agent_rejected"


class Redirected(OverpassError):
    """HTTP 3xx: the server sent us elsewhere. Not followed: the query would go to a host nobody configured.

    The usual cause is a settings mistake (``http://`` redirected to
    ``https://``); like a 406 or 403 it holds the endpoint until fixed.
    ``location`` is where it pointed, its password masked, cut short.
    """

    label = "redirected"

    def __init__(self, message: str, *, status: int, location: str, response_bytes: int = 0) -> None:
        super().__init__(message, status=status, detail=location, response_bytes=response_bytes)
        self.location = location


class RateLimited(OverpassError):
    """HTTP 429: no free query slot for this IP right now."""

    label = "rate_limited"
    retryable = True


class ServerBusy(OverpassError):
    """HTTP 504: the server is shedding load."""

    label = "server_busy"
    retryable = True
    trips_breaker = True


class ServerDown(OverpassError):
    """HTTP 504 whose page says the dispatcher (the database) is down."""

    label = "server_down"
    retryable = True
    trips_breaker = True


class UnexpectedStatus(OverpassError):
    """Any other status: a 5xx is transient and trips the breaker, a 4xx is neither."""

    label = "unexpected_status"

    def __init__(self, message: str, *, status: int, detail: str = "", response_bytes: int = 0) -> None:
        super().__init__(message, status=status, detail=detail, response_bytes=response_bytes)

    # Decided by the status, so per instance: the base declares class attributes.
    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status is not None and self.status >= 500

    @property
    def trips_breaker(self) -> bool:  # type: ignore[override]
        return self.status is not None and self.status >= 500


class ConnectionFailed(OverpassError):
    """No response: the connection could not be made or broke before a response arrived."""

    label = "connection_error"
    retryable = True
    trips_breaker = True


class ClientTimeout(OverpassError):
    """Our HTTP read timeout ran out; the query may still be running and holding a slot."""

    label = "client_timeout"
    retryable = True
    trips_breaker = True


# The paragraphs Overpass prints on its HTML error pages:
# <p><strong style="color:#FF0000">Error</strong>: line 2: parse error: ... </p>
_ERROR_PARAGRAPH = re.compile(rb"<strong[^>]*>\s*Error\s*</strong>\s*:?(.*?)</p>", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
# The most error lines an error page is read for: a page of a million errors says no more than these.
_MAX_ERROR_LINES = 20
_MARKUP_START = re.compile(rb"\s*<")
_XML_REMARK = re.compile(rb"<remark>(.*?)</remark>", re.DOTALL)
# How a 504 page says the dispatcher (the database) is down rather than busy.
_DISPATCHER_DOWN = (b"Dispatcher_Client::1", b"open64: 2 No such file", b"is turned off", b"server is down")

# Large bodies are parsed a piece of about this size at a time (see _read_in_pieces).
_PIECE_BYTES = 1 << 20
_ELEMENTS_START = re.compile(rb'"elements"\s*:\s*\[')
# Where one element ends and the next begins: "}" "," then an object whose first
# keys are "type" and "id", as Overpass prints every element, in any layout.
# Relation members ("type", "ref") and geometry points ("lat") never match.
_ELEMENT_END = re.compile(rb'(\})\s*,\s*(?=\{\s*"type"\s*:\s*"\w+"\s*,\s*"id")')
# Boundaries guessed wrongly in a row before parsing the body whole instead.
_MAX_MISSES = 8
_DECODER = json.JSONDecoder()

logger = logging.getLogger(__name__)


def read_response(status: int, body: bytes) -> ParsedResponse:
    """Classify one ``/api/interpreter`` response and parse it.

    Returns the POIs of a success (label ``ok`` or ``ok_with_remark``);
    raises the matching :class:`OverpassError` subclass otherwise, with
    ``response_bytes`` set to the size of ``body`` (downloaded, so charged,
    whatever it says). A 200 is a success only when its JSON is complete and
    carries no runtime-error remark: elements printed before an error remark
    are not a success.
    """
    try:
        return _read(status, body)
    except OverpassError as exc:
        exc.response_bytes = len(body)
        raise


def _read(status: int, body: bytes) -> ParsedResponse:
    if status != 200:
        raise _error_for_status(status, body)
    pois: list[Poi] = []
    read = _read_in_pieces(body, pois) if len(body) > 4 * _PIECE_BYTES else None
    if read is None:
        pois.clear()
        read = _read_whole(body, pois)
    document, tally = read
    remark = document.get("remark")
    if remark is not None:
        remark = str(remark).strip()
        if _is_runtime_error(remark):
            raise _runtime_error(remark)
    osm3s = document.get("osm3s")
    osm_base = osm3s.get("timestamp_osm_base") if isinstance(osm3s, dict) else None
    tally.log(f"an answer of {len(body)} bytes")
    return ParsedResponse(
        pois=pois,
        skipped=tally.skipped,
        remark=cut(remark) if remark else None,
        osm_base=osm_base if isinstance(osm_base, str) else None,
        dropped=tally.dropped,
        kept=tally.kept_keys(),
    )


def classify(status: int, body: bytes) -> str:
    """The label alone: ``ok``, ``ok_with_remark``, or the raised error's label."""
    try:
        parsed = read_response(status, body)
    except OverpassError as exc:
        return exc.label
    return "ok" if parsed.remark is None else "ok_with_remark"


def _read_whole(body: bytes, pois: list[Poi]) -> tuple[dict[str, Any], Tally]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        # UnicodeDecodeError is a ValueError too.
        raise _error_for_non_json(body) from None
    if not isinstance(document, dict):
        raise _bad_response(f"the JSON is a {type(document).__name__}, not an object", body)
    elements = document.get("elements")
    if not isinstance(elements, list):
        raise _bad_response('the JSON has no "elements" list', body)
    remark = document.get("remark")
    if remark is not None and _is_runtime_error(str(remark).strip()):
        # No POIs to build: the caller raises for the remark.
        return document, Tally()
    tally = Tally()
    _add_pois(elements, pois, tally, json_may_hold_bad_text(body))
    return document, tally


def _read_in_pieces(body: bytes, pois: list[Poi]) -> tuple[dict[str, Any], Tally] | None:
    """Parse a large body a piece of the ``elements`` array at a time.

    ``json.loads`` of a whole body holds its decoded text (up to 4 bytes a
    character) and every element dict at once: more than five times the body
    for real output. Piece by piece, only the POIs outlive a piece. Returns
    None when its elements cannot be told apart this way or the body is not
    valid JSON; the caller then parses it whole, which classifies it exactly.
    """
    start = _ELEMENTS_START.search(body)
    if start is None:
        return None
    view = memoryview(body)
    position = start.end()
    target = position + _PIECE_BYTES
    misses = 0
    tally = Tally()
    dirty = json_may_hold_bad_text(body)
    try:
        while (boundary := _ELEMENT_END.search(body, target)) is not None:
            # A piece must parse as an array on its own, so a boundary found
            # inside an element fails here instead of producing wrong elements.
            try:
                piece = json.loads(b"".join((b"[", view[position : boundary.end(1)], b"]")))
            except ValueError:
                misses += 1
                if misses > _MAX_MISSES:
                    return None
                target = boundary.end()
                continue
            misses = 0
            _add_pois(piece, pois, tally, dirty)
            position = boundary.end()
            target = position + _PIECE_BYTES
        rest = "[" + str(view[position:], "utf-8")
        piece, stop = _DECODER.raw_decode(rest)
        _add_pois(piece, pois, tally, dirty)
        # What surrounds the array must complete it to one JSON object.
        document = json.loads(str(view[: start.end() - 1], "utf-8") + "[]" + rest[stop:])
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("elements") != []:
        return None
    return document, tally


def _add_pois(elements: list[Any], pois: list[Poi], tally: Tally, dirty: bool) -> None:
    """Append the usable elements among ``elements`` to ``pois``; tally the others.

    ``dirty``: the body may hold a NUL or a lone surrogate, so every tag is
    checked; otherwise only tags with values that are not strings are repaired.
    """
    # The hot loop of a 50 MB response: locals only, tags dicts kept as parsed.
    append = pois.append
    # tuple.__new__ skips the Python-level Poi.__new__: a third of the loop's time.
    new = tuple.__new__
    for element in elements:
        if type(element) is not dict:
            tally.drop(f"element {shown(element)}", "it is not a JSON object")
            continue
        kind = element.get("type")
        if kind == "node":
            lat = element.get("lat")
            lon = element.get("lon")
        # A tuple, not a set: a "type" that is a list or an object cannot be hashed.
        elif kind in ("way", "relation"):
            center = element.get("center")
            lat = lon = None
            if type(center) is dict:
                lat = center.get("lat")
                lon = center.get("lon")
        else:
            _not_a_poi(element, kind, tally)
            continue
        osm_id = element.get("id")
        if type(osm_id) is not int or not 0 < osm_id <= MAX_ID:
            tally.drop(f"{kind} {shown(osm_id)}", id_problem(osm_id) or "")
            continue
        if (
            type(lat) is not float
            or type(lon) is not float
            or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0)
        ):
            where = position(lat, lon)
            if where is None:
                tally.drop(f"{kind} {osm_id}", _position_problem(element, kind), (kind, osm_id))
                continue
            lat, lon = where
        tags = element.get("tags")
        if not tags:
            tags = {}
        elif type(tags) is not dict:
            tally.drop(f"{kind} {osm_id}", f"its tags {shown(tags)} are not an object", (kind, osm_id))
            continue
        elif dirty or not tags_are_text(tags):
            tags = clean_tags(tags)
        append(new(Poi, (kind, osm_id, lat, lon, tags)))


def _not_a_poi(element: dict[str, Any], kind: Any, tally: Tally) -> None:
    if isinstance(kind, str) and kind in NOT_POIS:
        tally.skip()
    else:
        tally.drop(
            f"element {shown(element.get('id'))}", f"its type {shown(kind)} is not one of {sorted(KINDS)}"
        )


def _position_problem(element: dict[str, Any], kind: str) -> str:
    if kind == "node":
        return f"lat {shown(element.get('lat'))}, lon {shown(element.get('lon'))} is no position"
    if "center" not in element:
        return "it has no center"
    return f"its center {shown(element['center'])} is no position"


# Remarks that are the server's fault: short of memory itself (ENOMEM, unlike a
# query over its own [maxsize]), or its database files mid-update.
_SERVER_UNWELL = ("open64: 12 cannot allocate memory", "file_blocks_index", "data file size does not match")
# Error pages sent with HTTP 200 by the dispatcher client, named by their last word.
_DUPLICATE_QUERY = "::duplicate_query"
_PROTOCOL_ERROR = "::protocol_error"
_RATE_LIMITED = "::rate_limited"


def _is_runtime_error(remark: str) -> bool:
    lowered = remark.lower()
    return lowered[:13] == "runtime error" or any(marker in lowered for marker in _SERVER_UNWELL)


def _runtime_error(full_remark: str) -> OverpassError:
    # Classified by the whole text, repeated only in part.
    lowered = full_remark.lower()
    remark = cut(full_remark)
    # The dispatcher's refusals and the server's own faults first: their text
    # can mention memory too, and none of them is the query's fault.
    if _DUPLICATE_QUERY in lowered:
        return DuplicateQuery(
            f"Overpass refused the query as a duplicate ({remark!r}): the same query text is already "
            "running, or ran moments ago, from this address. Not a fault: run it again after the "
            "query's [timeout:N] has passed.",
            status=200,
            detail=remark,
        )
    if _PROTOCOL_ERROR in lowered:
        return ServerProtocolError(
            f"The Overpass server failed inside: its interpreter could not talk to its dispatcher "
            f"({remark!r}). Nothing is wrong with the query: retry later, or use another instance.",
            status=200,
            detail=remark,
        )
    if _RATE_LIMITED in lowered:
        return RateLimited(
            f"Overpass has no free query slot for this IP ({remark!r}). Wait at least 30 s, or until "
            "/api/status shows a free slot, before sending the next query.",
            status=200,
            detail=remark,
        )
    if any(marker in lowered for marker in _SERVER_UNWELL):
        return ServerUnwell(
            f"The Overpass server is unwell, not the query ({remark!r}): it is short of memory itself "
            "or its database is being updated. Retry the same query later; a smaller box does not help.",
            status=200,
            detail=remark,
        )
    if "timed out" in lowered:
        return QueryTimedOut(
            f"Overpass stopped the query when its time limit ran out ({remark!r}). Retrying the same "
            "query fails the same way: split the bounding box into smaller boxes, or raise [timeout:N].",
            status=200,
            detail=remark,
        )
    # Current servers say "ran out of memory", older ones "run out of memory".
    if "out of memory" in lowered:
        return QueryOutOfMemory(
            f"Overpass stopped the query when its memory limit ran out ({remark!r}). Retrying the same "
            "query fails the same way: split the bounding box into smaller boxes, or raise [maxsize:N].",
            status=200,
            detail=remark,
        )
    return QueryFailed(
        f"Overpass could not finish the query ({remark!r}). Retrying the same query fails the same "
        "way: check the query text and what it asks for.",
        status=200,
        detail=remark,
    )


def _error_for_non_json(body: bytes) -> OverpassError:
    if _MARKUP_START.match(body) is None:
        return _bad_response("the JSON is cut off or malformed", body)
    # [out:xml] output prints its remark as <remark> runtime error: ... </remark>.
    match = _XML_REMARK.search(body)
    if match is not None:
        remark = html.unescape(match.group(1).decode("utf-8", "replace")).strip()
        if _is_runtime_error(remark):
            return _runtime_error(remark)
    # An OSM3S error page sent with 200: the dispatcher refused or failed
    # before the query ran (duplicate_query, protocol_error, ...). Say what
    # the page says, never that the query asked for the wrong format.
    lines = _error_lines(body)
    for line in lines:
        if _is_runtime_error(line):
            return _runtime_error(line)
    if lines:
        return _bad_response(f"with an error page instead of JSON ({lines[0]!r})", body)
    return _bad_response("the body is XML or HTML, not JSON: the query must ask for [out:json]", body)


def _bad_response(reason: str, body: bytes) -> BadResponse:
    return BadResponse(
        f"Overpass answered HTTP 200 but {reason} ({len(body)} bytes, starting {body[:60]!r}). "
        "The server may have died mid-response: retry the query later.",
        status=200,
        detail=reason,
    )


def _error_lines(body: bytes) -> list[str]:
    lines = []
    for match in _ERROR_PARAGRAPH.finditer(body):
        text = _TAG.sub("", match.group(1).decode("utf-8", "replace"))
        lines.append(cut(" ".join(html.unescape(text).split())))
        if len(lines) >= _MAX_ERROR_LINES:
            break
    return lines


def _error_for_status(status: int, body: bytes) -> OverpassError:
    lines = _error_lines(body)
    detail = "\n".join(lines)
    said = f": {lines[0].rstrip('.')}" if lines else ""
    if status == 400:
        more = f" (and {len(lines) - 1} more errors)" if len(lines) > 1 else ""
        return QueryRejected(
            f"Overpass rejected the query as invalid (HTTP 400){said}{more}. "
            "Retrying cannot help: fix the query text.",
            messages=lines,
        )
    if status == 406:
        return UserAgentRejected(
            "Overpass refused the request because of its User-Agent (HTTP 406). Send a User-Agent that "
            "names the product, its version and a contact, e.g. 'overpass-enrichment/0.1 (ops@example.org)'.",
            status=status,
            detail=detail,
        )
    if status == 429:
        return RateLimited(
            f"Overpass has no free query slot for this IP (HTTP 429){said}. Wait at least 30 s, "
            "or until /api/status shows a free slot, before sending the next query.",
            status=status,
            detail=detail,
        )
    if status == 504:
        if any(marker in body for marker in _DISPATCHER_DOWN):
            return ServerDown(
                f"The Overpass server is down: its dispatcher is not running (HTTP 504){said}. "
                "No query can run until its operators restart it: retry much later or use another instance.",
                status=status,
                detail=detail,
            )
        return ServerBusy(
            f"The Overpass server is too busy to admit the query (HTTP 504){said}. Retry later with "
            "backoff; honest, smaller [timeout:N] and [maxsize:N] values are admitted sooner.",
            status=status,
            detail=detail,
        )
    summary = lines[0] if lines else " ".join(_TAG.sub(" ", body[:200].decode("utf-8", "replace")).split())
    remedy = (
        "The server has a problem: retry later."
        if status >= 500
        else "Sending the same request again fails the same way: check the interpreter URL and the request."
    )
    return UnexpectedStatus(
        f"Overpass answered with unexpected HTTP {status} ({summary!r}). {remedy}",
        status=status,
        detail=detail or summary,
    )

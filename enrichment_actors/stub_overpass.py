"""A stand-in Overpass API server on loopback, for tests, the demo, benchmarks and chaos runs.

It answers ``/api/interpreter``, ``/api/status`` and ``/api/kill_my_queries`` with the byte layouts
of Overpass API 0.7.62 (recorded in ``shared/fixtures/overpass/local-server``), serves deterministic
POIs from a global lattice, and can be told, call by call, to fail the ways the real server fails:
429 and 504 pages, runtime-error remarks in a 200, bodies cut off mid-document, stalls.

Standard library only, so it starts in milliseconds; one thread per connection, keep-alive on.

Outcomes a script can name (``name`` or ``name:arg``):

=================== ============================================================================
``ok``              200 JSON with the POIs of the query's boxes and filters
``429``             the real ``rate_limited`` page
``504``             the real "server is probably too busy" page
``504-down``        the real "Dispatcher_Client::1" page (dispatcher down); while it is the
                    default outcome, ``/api/status`` answers the real "server is down" 504 too.
                    ``504-down:turned-off`` gives the 0.7.62 "dispatcher ... is turned off" page
``400``             a 400 page with one parse error paragraph
``406``             a 406 page (the public server's answer to a missing or generic User-Agent)
``500``             lighttpd's generic 500 page
``timeout-remark``  200, no elements, a "Query timed out" remark
``oom-remark``      200, no elements, a "Query ran out of memory" remark
``partial-remark``  200, the first half of the elements, then a "Query timed out" remark
``enomem-remark``   200, no elements, ``runtime error: open64: 12 Cannot allocate memory ...``
                    (the server itself short of memory)
``blocks-remark``   200, no elements, ``... File_Blocks_Index: Data file size does not match block
                    size`` (the database mid-update)
``protocol-error``  200 with the error page ``Dispatcher_Client::request_read_and_idx::protocol_error``
``duplicate``       200 with the real ``duplicate_query`` page (see ``refuse_duplicates``)
``cutoff``          200 without Content-Length, about half of the document, then the socket closes
``stall:S``         wait S seconds, then ``ok``; ends early (no answer) on stop or kill_my_queries
``trickle:S``       ``ok`` with its Content-Length, sent a few bytes at a time, S seconds apart (each
                    read of the client gets bytes long before its read timeout); ends early on stop
                    or kill_my_queries
=================== ============================================================================

Like a real 0.7.62 server, it can also hold queries and refuse duplicates (constructor options):
with ``hold_s`` and a rate limit (``slots``), a query over the limit waits up to ``hold_s`` seconds
for a slot and then runs (its ``[timeout]`` starts only then), or gets a 429 when none came free; a
429 comes at once only when more than twice the limit are already waiting. With
``refuse_duplicates``, the same query text a third time within its ``[timeout]`` gets the 200
``duplicate_query`` page. ``requests`` records each request's arrival and, for a held query, when it
got its slot.

Besides the scripted outcomes the stub answers like the real server: a blank query is a 400
"encoding error", a box with north < south or out-of-range coordinates a 400 "static error", a box
of more than 200,000 lattice cells an out-of-memory remark. Output is always JSON.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

# --------------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------------

OUTCOMES = (
    "ok",
    "429",
    "504",
    "504-down",
    "400",
    "406",
    "500",
    "timeout-remark",
    "oom-remark",
    "partial-remark",
    "cutoff",
    "stall",
    "trickle",
    "enomem-remark",
    "blocks-remark",
    "protocol-error",
    "duplicate",
)
_NEEDS_QUERY = frozenset(
    {"ok", "stall", "trickle", "cutoff", "partial-remark", "timeout-remark", "oom-remark"}
)
_TAKES_SECONDS = frozenset({"stall", "trickle"})
#: Bytes one ``trickle`` write sends.
TRICKLE_BYTES = 8
#: Identical query texts the server accepts within their ``[timeout]`` before refusing the next.
DUPLICATES_ACCEPTED = 2


@dataclass(frozen=True)
class _Outcome:
    name: str
    stall_s: float = 0.0
    variant: str = ""


def _parse_outcome(text: str) -> _Outcome:
    """Turn ``"stall:1.5"`` into an outcome, or say exactly what is accepted."""
    name, _, arg = str(text).strip().partition(":")
    accepted = ", ".join(o if o not in _TAKES_SECONDS else f"{o}:SECONDS" for o in OUTCOMES)
    if name not in OUTCOMES:
        raise ValueError(f"unknown stub Overpass outcome {text!r}: use one of {accepted}")
    if name in _TAKES_SECONDS:
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(f"outcome {text!r} needs a number of seconds, e.g. '{name}:2.5'") from None
        if not seconds >= 0:
            raise ValueError(f"outcome {text!r}: the {name} pause must be 0 seconds or more")
        return _Outcome(name, stall_s=seconds)
    if name == "504-down" and arg in ("", "turned-off"):
        return _Outcome(name, variant=arg)
    if arg:
        raise ValueError(f"outcome {text!r} takes no argument: use one of {accepted}")
    return _Outcome(name)


# --------------------------------------------------------------------------------------------------
# Response bodies, laid out byte for byte like Overpass API 0.7.62 behind lighttpd
# --------------------------------------------------------------------------------------------------

_COPYRIGHT = (
    "The data included in this document is from www.openstreetmap.org. The data is made available under ODbL."
)
_JSON_HEAD = (
    "{\n"
    '  "version": 0.6,\n'
    '  "generator": "Overpass API 0.7.62 7c32a7d5",\n'
    '  "osm3s": {\n'
    '    "timestamp_osm_base": "2025-01-01T21:21:00Z",\n'
    f'    "copyright": "{_COPYRIGHT}"\n'
    "  },\n"
    '  "elements": [\n\n'
)
TIMEOUT_REMARK = 'runtime error: Query timed out in "query" at line 3 after 25 seconds.'
OOM_REMARK = (
    'runtime error: Query ran out of memory in "query" at line 3. '
    "It would need at least 0 MB of RAM to continue."
)
#: The server itself short of memory (not the query over its [maxsize]).
ENOMEM_REMARK = (
    "runtime error: open64: 12 Cannot allocate memory /osm3s_osm_base "
    "Dispatcher_Client::request_read_and_idx::shm_open"
)
#: The server's database files mid-update.
BLOCKS_REMARK = (
    "runtime error: open64: 0 Success /srv/osm3s/db/nodes.map "
    "File_Blocks_Index: Data file size does not match block size"
)


def _json_document(elements: list[str], remark: str | None = None) -> bytes:
    tail = "\n\n  ]\n}\n" if remark is None else f'\n\n  ],\n"remark": {_json_string(remark)}\n}}\n'
    return (_JSON_HEAD + ",\n".join(elements) + tail).encode("utf-8")


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def _json_string(text: str) -> str:
    # Most tag values need no escaping; skipping json.dumps for them halves formatting time.
    return json.dumps(text, ensure_ascii=False) if _NEEDS_ESCAPE.search(text) else f'"{text}"'


def _xhtml_escape(text: str) -> str:
    # Overpass escapes & < > and double quotes, and leaves single quotes alone.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _error_page(*errors: str) -> bytes:
    """The OSM3S error page: one ``Error:`` paragraph per message."""
    paragraphs = "".join(
        f'<p><strong style="color:#FF0000">Error</strong>: {_xhtml_escape(e)} </p>\n' for e in errors
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"\n'
        '    "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        "<head>\n"
        '  <meta http-equiv="content-type" content="text/html; charset=utf-8" lang="en"/>\n'
        "  <title>OSM3S Response</title>\n"
        "</head>\n"
        "<body>\n\n"
        f"<p>{_COPYRIGHT}</p>\n"
        f"{paragraphs}\n"
        "</body>\n"
        "</html>\n"
    ).encode()


def _lighttpd_page(status: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
        '         "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        " <head>\n"
        f"  <title>{status}</title>\n"
        " </head>\n"
        " <body>\n"
        f"  <h1>{status}</h1>\n"
        " </body>\n"
        "</html>\n"
    ).encode("ascii")


_HTML = "text/html; charset=utf-8"
_DISPATCHER = "/osm3s_osm_base Dispatcher_Client"
_ERROR_RESPONSES: dict[str, tuple[int, str, bytes]] = {
    "429": (
        429,
        _HTML,
        _error_page(
            f"runtime error: open64: 0 Success {_DISPATCHER}::request_read_and_idx::rate_limited. "
            "Please check /api/status for the quota of your IP address."
        ),
    ),
    "504": (
        504,
        _HTML,
        _error_page(
            f"runtime error: open64: 0 Success {_DISPATCHER}::request_read_and_idx::timeout. "
            "The server is probably too busy to handle your request."
        ),
    ),
    "504-down": (
        504,
        _HTML,
        _error_page(f"runtime error: open64: 2 No such file or directory {_DISPATCHER}::1"),
    ),
    "504-down:turned-off": (
        504,
        _HTML,
        _error_page("runtime error: The dispatcher (i.e. the database management system) is turned off."),
    ),
    "400": (
        400,
        _HTML,
        _error_page("line 1: parse error: ']' expected - '(' found."),
    ),
    "406": (
        406,
        "text/html; charset=iso-8859-1",
        b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n'
        b"<title>406 Not Acceptable</title>\n</head><body>\n<h1>Not Acceptable</h1>\n"
        b"<p>An appropriate representation of the requested resource could not be found on this server.</p>\n"
        b"</body></html>\n",
    ),
    "500": (500, "text/html", _lighttpd_page("500 Internal Server Error")),
    "protocol-error": (
        200,
        _HTML,
        _error_page(f"runtime error: open64: 0 Success {_DISPATCHER}::request_read_and_idx::protocol_error"),
    ),
    # Byte for byte the page of shared/recordings/overpass-0.7.62/32_duplicate_query.body.html.
    "duplicate": (
        200,
        _HTML,
        _error_page(f"runtime error: open64: 0 Success {_DISPATCHER}::request_read_and_idx::duplicate_query"),
    ),
}
_STATUS_SERVER_DOWN = f"open64: 2 No such file or directory {_DISPATCHER}::1. Probably the server is down.\n"


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


# --------------------------------------------------------------------------------------------------
# Query text: bbox statements with tag filters
# --------------------------------------------------------------------------------------------------

_KINDS = {
    "node": ("node",),
    "way": ("way",),
    "relation": ("relation",),
    "nw": ("node", "way"),
    "nr": ("node", "relation"),
    "wr": ("way", "relation"),
    "nwr": ("node", "way", "relation"),
}
_STRING = r'"(?:[^"\\]|\\.)*"'
_WORD = r"[A-Za-z0-9_:.\-]+"
_TOKEN = rf"(?:{_STRING}|{_WORD})"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_BRACKETS = rf'(?:\[(?:[^\]"]|{_STRING})*\]\s*)*'
_FILTER = re.compile(rf"\[\s*({_TOKEN})\s*(?:=\s*({_TOKEN})\s*)?\]")
_STATEMENT_START = re.compile(r"\b(nwr|node|way|relation|nw|nr|wr)\s*(?=[\[(])")
_STATEMENT = re.compile(
    rf"(?:nwr|node|way|relation|nw|nr|wr)\s*({_BRACKETS})"
    rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*({_BRACKETS})"
)
_BRACKET = re.compile(rf'\[(?:[^\]"]|{_STRING})*\]')
_SETTING = re.compile(r"\[(timeout|maxsize):\s*(\d+)\s*\]")


class _QueryError(Exception):
    """The query text is one the real server would refuse; ``args[0]`` is its error paragraph."""


@dataclass(frozen=True)
class _Box:
    """A bbox in 1e-7 degrees, the precision Overpass stores coordinates in."""

    south: int
    west: int
    north: int
    east: int

    def lon_ranges(self) -> tuple[tuple[int, int], ...]:
        if self.west <= self.east:
            return ((self.west, self.east),)
        return ((self.west, 1_800_000_000), (-1_800_000_000, self.east))  # crosses the antimeridian


@dataclass(frozen=True)
class _Statement:
    kinds: tuple[str, ...]
    filters: tuple[tuple[str, str | None], ...]
    box: _Box

    def matches(self, poi: _Poi) -> bool:
        if poi.kind not in self.kinds:
            return False
        tags = poi.tags
        return all(key in tags and (value is None or tags[key] == value) for key, value in self.filters)


@dataclass(frozen=True)
class _Query:
    statements: tuple[_Statement, ...]
    timeout_s: int
    maxsize: int


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _unquote(token: str, line: int) -> str:
    if not token.startswith('"'):
        return token
    try:
        return cast(str, json.loads(token))
    except json.JSONDecodeError:
        raise _QueryError(f"line {line}: parse error: Invalid escape sequence in {token}.") from None


def _to_e7(number: str, attribute: str, limit: int, line: int) -> int:
    value = round(float(number) * 10_000_000)
    if not -limit * 10_000_000 <= value <= limit * 10_000_000:
        raise _QueryError(
            f'line {line}: static error: For the attribute "{attribute}" of the element "bbox-query" '
            f"the only allowed values are floats between -{limit}.0 and {limit}.0."
        )
    return value


def _parse_query(text: str) -> _Query:
    """Find every bbox statement (``nwr["k"="v"](s,w,n,e)``) in an Overpass QL text.

    Raises :class:`_QueryError` with the real server's wording for a blank text or a bad box, and
    with a plain explanation for a statement this stub does not understand.
    """
    if not text.strip():
        raise _QueryError("encoding error: Your input contains only whitespace.")
    statements = []
    for start in _STATEMENT_START.finditer(text):
        line = _line_of(text, start.start())
        found = _STATEMENT.match(text, start.start())
        if found is None:
            raise _QueryError(
                f"line {line}: parse error: the stub Overpass server only understands bbox statements "
                'like nwr["key"](s,w,n,e) or nwr["key"="value"](s,w,n,e); script an outcome instead.'
            )
        filters = []
        for bracket in _BRACKET.finditer(found.group(1) + found.group(6)):
            parsed = _FILTER.fullmatch(bracket.group(0))
            if parsed is None:
                raise _QueryError(
                    f"line {line}: parse error: the stub Overpass server only understands the filters "
                    f'["key"] and ["key"="value"], not {bracket.group(0)}.'
                )
            value = None if parsed.group(2) is None else _unquote(parsed.group(2), line)
            filters.append((_unquote(parsed.group(1), line), value))
        south = _to_e7(found.group(2), "s", 90, line)
        west = _to_e7(found.group(3), "w", 180, line)
        north = _to_e7(found.group(4), "n", 90, line)
        east = _to_e7(found.group(5), "e", 180, line)
        if north < south:
            raise _QueryError(
                f'line {line}: static error: The value of attribute "n" of the element "bbox-query" '
                'must always be greater or equal than the value of attribute "s".'
            )
        statements.append(_Statement(_KINDS[start.group(1)], tuple(filters), _Box(south, west, north, east)))
    settings = {m.group(1): int(m.group(2)) for m in _SETTING.finditer(text)}
    return _Query(tuple(statements), settings.get("timeout", 180), settings.get("maxsize", 536_870_912))


# --------------------------------------------------------------------------------------------------
# Deterministic POIs on a global lattice
# --------------------------------------------------------------------------------------------------

_CELL_E7 = 20_000  # one lattice cell is 0.002 x 0.002 degrees
_ROWS = 180 * 10_000_000 // _CELL_E7
_COLS = 360 * 10_000_000 // _CELL_E7
MAX_CELLS_PER_BOX = 200_000
_POI_THRESHOLD = 23_000  # of 65,536: about 35 % of cells hold a POI
_KIND_ORDER = {"node": 0, "way": 1, "relation": 2}

# (key, value, weight, name stems); no stems means the POI has no name.
_CATEGORIES: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("amenity", "cafe", 12, ("Café", "Coffee House", "Espresso Bar", 'Café "Chez Léon"', "Le Petit Café")),
    ("amenity", "restaurant", 14, ("Trattoria", "Bistro", "Brasserie", "Taverna", "Le Gourmet", "Sakura")),
    ("amenity", "fast_food", 6, ("Burger Corner", "Kebab Haus", "Pizza Express", "Falafel & Co")),
    ("amenity", "bar", 5, ("The Anchor", "Bar Central", "Zum Löwen", "Le Zinc")),
    ("amenity", "pharmacy", 5, ("Pharmacie", "Apotheke", "City Pharmacy", "Farmacia")),
    ("amenity", "bank", 4, ("Crédit Mutuel", "Sparkasse", "BNP Paribas", "Barclays")),
    ("amenity", "school", 4, ("École élémentaire", "Grundschule", "Primary School", "Lycée")),
    ("amenity", "post_office", 2, ("La Poste", "Post Office", "Postfiliale")),
    ("amenity", "fuel", 3, ("TotalEnergies", "Shell", "Aral", "Esso")),
    ("amenity", "library", 1, ("Bibliothèque", "Stadtbibliothek", "Public Library")),
    ("amenity", "place_of_worship", 2, ("Église Saint-Pierre", "St. Mary's Church", "Chapelle")),
    ("amenity", "parking", 6, ()),
    ("amenity", "bench", 5, ()),
    ("amenity", "toilets", 2, ()),
    ("shop", "bakery", 6, ("Boulangerie", "Bäckerei", "Le Fournil", "Bread & Butter")),
    ("shop", "supermarket", 5, ("Carrefour", "Lidl", "Aldi", "Monoprix", "Edeka")),
    ("shop", "convenience", 5, ("Proxi", "Spar", "Épicerie", "Corner Shop")),
    ("shop", "clothes", 5, ("Zara", "H&M", "Boutique Élise", "Mode & Stil")),
    ("shop", "hairdresser", 4, ("Salon Coiffure", "Hair Studio", "Friseur Schnitt")),
    ("shop", "butcher", 2, ("Boucherie", "Metzgerei", "Butcher's")),
    ("shop", "books", 2, ("Librairie", "Buchhandlung", "Book Nook")),
    ("shop", "florist", 2, ("Fleuriste", "Blumen Haus", "Flower Corner")),
    ("tourism", "hotel", 4, ("Hôtel du Parc", "Grand Hotel", "Hotel Europa", "Ibis")),
    ("tourism", "museum", 2, ("Musée", "Stadtmuseum", "Museum of Art")),
    ("tourism", "attraction", 2, ("Fontaine", "Old Tower", "Aussichtspunkt")),
    ("leisure", "park", 3, ("Parc", "Stadtpark", "Jardin", "Green")),
    ("leisure", "fitness_centre", 2, ("Basic-Fit", "Fitness Park", "McFit")),
)
_WEIGHTED = tuple(i for i, category in enumerate(_CATEGORIES) for _ in range(category[2]))
_PLACES = ("du Parc", "de la Gare", "Central", "Saint-Michel", "am Markt", "Riverside", "Plaza", "Nord")
_STREETS = ("Rue de la Paix", "Hauptstraße", "High Street", "Via Roma", "Calle Mayor", "Avenue Foch")
_HOURS = ("Mo-Fr 08:00-18:00", "Mo-Sa 09:00-19:00; Su off", "24/7", "Tu-Su 10:00-22:00")
_CUISINES = ("italian", "french", "pizza", "japanese", "regional", "indian", "burger")
_UNNAMED_EXTRAS = {
    "parking": (("parking", ("surface", "underground", "multi-storey")), ("fee", ("yes", "no"))),
    "bench": (("backrest", ("yes", "no")),),
    "toilets": (("fee", ("no", "yes")), ("unisex", ("yes",))),
}


@dataclass(frozen=True)
class _Poi:
    kind: str
    osm_id: int
    lat_e7: int
    lon_e7: int
    has_center: bool
    tags: dict[str, str]  # sorted by key, as Overpass prints them

    def sort_key(self) -> tuple[int, int]:
        return (_KIND_ORDER[self.kind], self.osm_id)

    def to_json(self) -> str:
        """This element as Overpass prints it for ``out center tags``."""
        head = f'{{\n  "type": "{self.kind}",\n  "id": {self.osm_id},\n'
        if self.kind == "node":
            where = f'  "lat": {_degrees(self.lat_e7)},\n  "lon": {_degrees(self.lon_e7)},\n'
        elif self.has_center:
            where = (
                f'  "center": {{\n    "lat": {_degrees(self.lat_e7)},\n'
                f'    "lon": {_degrees(self.lon_e7)}\n  }},\n'
            )
        else:
            where = ""
        tags = ",\n".join(f"    {_json_string(k)}: {_json_string(v)}" for k, v in self.tags.items())
        return f'{head}{where}  "tags": {{\n{tags}\n  }}\n}}'


def _degrees(e7: int) -> str:
    whole, fraction = divmod(abs(e7), 10_000_000)
    return f"{'-' if e7 < 0 else ''}{whole}.{fraction:07d}"


def _poi_at(row: int, col: int) -> _Poi | None:
    """The POI of one lattice cell, or None: the same cell always gives the same answer."""
    cell = row * _COLS + col
    d = hashlib.blake2b(cell.to_bytes(8, "little"), digest_size=24, person=b"stub-osm").digest()
    if int.from_bytes(d[0:2], "little") >= _POI_THRESHOLD:
        return None
    kind = "node" if d[2] < 179 else "way" if d[2] < 243 else "relation"
    # Ids follow the cell, so they are unique per type, while a node and a way in neighbouring cells
    # can share a number, as in OSM: the key is (type, id).
    osm_id = cell + 1 + _KIND_ORDER[kind]
    lat_e7 = -900_000_000 + row * _CELL_E7 + 2_000 + int.from_bytes(d[4:6], "little") % 16_001
    lon_e7 = -1_800_000_000 + col * _CELL_E7 + 2_000 + int.from_bytes(d[6:8], "little") % 16_001
    has_center = kind != "way" or d[3] >= 8  # about 3 % of ways come without a center
    return _Poi(kind, osm_id, lat_e7, lon_e7, has_center, _tags(d, kind, osm_id))


def _tags(d: bytes, kind: str, osm_id: int) -> dict[str, str]:
    key, value, _, stems = _CATEGORIES[_WEIGHTED[int.from_bytes(d[8:10], "little") % len(_WEIGHTED)]]
    tags = {key: value}
    if stems and d[10] < 230:
        stem = stems[d[11] % len(stems)]
        tags["name"] = stem if d[12] & 1 else f"{stem} {_PLACES[d[12] % len(_PLACES)]}"
        if d[13] < 128:
            tags["addr:street"] = _STREETS[d[14] % len(_STREETS)]
            tags["addr:housenumber"] = str(d[15] % 120 + 1)
        if d[16] < 100:
            tags["opening_hours"] = _HOURS[d[16] % len(_HOURS)]
        if d[17] < 40:
            tags["website"] = f"https://www.example.org/poi/{osm_id}"
    for extra_key, choices in _UNNAMED_EXTRAS.get(value, ()):
        tags[extra_key] = choices[d[18] % len(choices)]
    if value == "restaurant":
        tags["cuisine"] = _CUISINES[d[19] % len(_CUISINES)]
    elif value == "pharmacy":
        tags["healthcare"] = "pharmacy"
    elif value in ("supermarket", "fuel") and "name" in tags:
        tags["brand"] = tags["name"].split(" ")[0]
    elif value == "hotel":
        tags["stars"] = str(d[19] % 5 + 1)
    if kind == "way" and key in ("amenity", "shop") and d[20] < 160:
        tags["building"] = "yes"
    if d[21] < 50:
        tags["wheelchair"] = ("yes", "limited", "no")[d[22] % 3]
    return dict(sorted(tags.items()))


def _pois_in_box(box: _Box) -> Iterator[_Poi]:
    row_lo = max(0, (box.south + 900_000_000) // _CELL_E7)
    row_hi = min(_ROWS - 1, (box.north + 900_000_000) // _CELL_E7)
    for west, east in box.lon_ranges():
        col_lo = max(0, (west + 1_800_000_000) // _CELL_E7)
        col_hi = min(_COLS - 1, (east + 1_800_000_000) // _CELL_E7)
        for row in range(row_lo, row_hi + 1):
            for col in range(col_lo, col_hi + 1):
                poi = _poi_at(row, col)
                if poi is not None and box.south <= poi.lat_e7 <= box.north and west <= poi.lon_e7 <= east:
                    yield poi


def _cell_count(box: _Box) -> int:
    rows = (box.north - box.south) // _CELL_E7 + 1
    return sum(rows * ((east - west) // _CELL_E7 + 1) for west, east in box.lon_ranges())


def _find_pois(query: _Query, limit: int | None = None) -> list[_Poi] | None:
    """The union of every statement's matches, in Overpass order (nodes, ways, relations by id).

    Returns None when a box is too big to answer (the real server would run out of memory).
    """
    if any(_cell_count(s.box) > MAX_CELLS_PER_BOX for s in query.statements):
        return None
    in_box: dict[_Box, list[_Poi]] = {}
    found: dict[tuple[int, int], _Poi] = {}
    for statement in query.statements:
        if statement.box not in in_box:
            in_box[statement.box] = list(_pois_in_box(statement.box))
        for poi in in_box[statement.box]:
            if statement.matches(poi):
                found[poi.sort_key()] = poi
    ordered = [found[key] for key in sorted(found)]
    return ordered if limit is None else ordered[:limit]


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StubStats:
    """A snapshot of what the stub has seen since it started or was last reset."""

    calls: int  # /api/interpreter requests received (all outcomes)
    served: dict[str, int]  # outcome name -> count ("stall" for stalls; "killed"/"aborted" when cut short)
    in_flight: int
    peak_in_flight: int  # most /api/interpreter requests handled at once
    status_calls: int
    kill_calls: int
    rejected_over_slots: int  # 429s produced by enforce_slots or hold_s (at once or after the hold)
    held: int = 0  # calls that waited for a slot (hold_s)
    refused_duplicates: int = 0  # duplicate_query pages produced by refuse_duplicates


@dataclass(frozen=True)
class RecordedRequest:
    """One request to an ``/api/`` endpoint; ``outcome`` is ``status``/``kill`` for those endpoints."""

    path: str
    method: str
    query: str
    user_agent: str
    outcome: str
    started_at: float  # epoch seconds: when the request arrived
    ended_at: float
    admitted_at: float | None = None  # epoch seconds: when a held query got its slot (hold_s)


@dataclass
class _Call:
    """An /api/interpreter request being handled; ``cancel`` ends its waits early."""

    outcome: _Outcome | None  # None while held: taken from the script once the call gets its slot
    latency_s: float
    holds_slot: bool
    pid: int
    started_at: float
    query: str
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    waiting: bool = False  # held, waiting for a slot
    admitted_at: float | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # bursts of 16+ clients must not overflow the listen backlog

    def __init__(self, address: tuple[str, int], stub: StubOverpass) -> None:
        self.stub = stub
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients that hang up are not errors
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def version_string(self) -> str:
        return "lighttpd/1.4.69"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the client may already be gone
            super().finish()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        stub = self.server.stub
        route = (method, parts.path)
        if parts.path == "/api/interpreter":
            stub._interpreter(self, method, _query_text(body, parts.query, self.headers.get_content_type()))
        elif route == ("GET", "/api/status"):
            stub._status(self)
        elif route == ("GET", "/api/kill_my_queries"):
            stub._kill(self)
        elif route == ("POST", "/_stub/script"):
            stub._control_script(self, body)
        elif route == ("POST", "/_stub/reset"):
            stub.reset()
            self.reply(200, "application/json", b'{"reset": true}\n')
        elif route == ("GET", "/_stub/stats"):
            self.reply(200, "application/json", _stats_json(stub.stats()))
        else:
            self.reply(404, "text/html", _lighttpd_page("404 Not Found"))

    def reply(
        self,
        status: int,
        content_type: str,
        body: bytes,
        *,
        cut_off: bool = False,
        trickle: tuple[float, threading.Event] | None = None,
    ) -> bool:
        """Send a whole response, or with ``cut_off`` half of it and then close the connection.

        With ``trickle=(pause_s, cancel)`` the body goes out :data:`TRICKLE_BYTES` at a time,
        ``pause_s`` apart, until all is sent or ``cancel`` is set. Returns False when the body was
        not sent whole (cut off, cancelled, or the client gone).
        """
        try:
            self.send_response(status)
            self.send_header("Content-type", content_type)
            if content_type.startswith("text/plain"):
                self.send_header("Access-Control-Allow-Origin", "*")
            if trickle is not None:
                pause_s, cancel = trickle
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for start in range(0, len(body), TRICKLE_BYTES):
                    self.wfile.write(body[start : start + TRICKLE_BYTES])
                    self.wfile.flush()
                    if start + TRICKLE_BYTES < len(body) and cancel.wait(pause_s):
                        self.close_connection = True
                        return False
                return True
            if cut_off:
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return False
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True
        except OSError:
            self.close_connection = True
            return False


def _query_text(body: bytes, url_query: str, content_type: str) -> str:
    if body and (content_type == "application/x-www-form-urlencoded" or body.startswith(b"data=")):
        return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).get("data", [""])[0]
    if body:
        return body.decode("utf-8", "replace")
    return parse_qs(url_query, keep_blank_values=True).get("data", [""])[0]


def _stats_json(stats: StubStats) -> bytes:
    return (json.dumps(dataclasses.asdict(stats)) + "\n").encode("utf-8")


class StubOverpass:
    """A real HTTP server on loopback that behaves like the public Overpass API.

    Each ``/api/interpreter`` call takes the next scripted outcome (then the default, ``ok``),
    waits the configured latency, and answers with the byte layout of Overpass API 0.7.62. Calls
    are counted (in flight, peak, per outcome) and recorded for assertions.

    Examples:
      >>> import requests
      >>> with StubOverpass(latency_s=0.2, slots=2) as stub:
      ...     query = '[out:json];nwr["amenity"](48.85,2.29,48.86,2.30);out center tags;'
      ...     requests.post(stub.interpreter_url, data={"data": query}).json()["elements"][0]["type"]
      ...     stub.script("429", "504", "ok")
      ...     requests.post(stub.interpreter_url, data={"data": query}).status_code
      ...     stub.stats().served
      'node'
      429
      {'ok': 1, '429': 1}

      Out of process: ``POST /_stub/script`` with ``{"outcomes": ["429"], "default": "ok",
      "latency_s": 0.2}`` (every key optional), ``POST /_stub/reset``, ``GET /_stub/stats``.

    Parameters:
      host(str): The address to listen on.  Defaults to ``127.0.0.1``.
      port(int): The port; 0 picks a free one.  A stub restarted after :meth:`stop` keeps its port.
      latency_s(float): Seconds every interpreter call waits before its outcome.  Defaults to 0.
      slots(int): What ``/api/status`` reports as ``Rate limit: N``; 0 (the default) is unlimited.
      enforce_slots(bool): When True, a call that would put more than ``slots`` calls in flight
        gets a 429 at once; it does not consume the script.
      hold_s(float): When above 0 (and ``slots`` is set), a call over the limit is held, as a real
        0.7.62 server holds it (about 15 s there): it waits up to ``hold_s`` for a slot and then
        runs, or gets a 429 when none came free; a 429 comes at once only when more than twice
        ``slots`` calls are already waiting. A held call is not in ``/api/status``'s running list
        and ``kill_my_queries`` does not reach it. Defaults to 0 (no holding).
      refuse_duplicates(bool): When True, a query text already accepted
        :data:`DUPLICATES_ACCEPTED` times within its ``[timeout:N]`` (180 s when absent) gets the
        real 200 ``duplicate_query`` page; it does not consume the script.
      pois_per_box(int|None): When set, the most elements one response carries (the first ones in
        Overpass order), so that tests and benchmarks can fix the response size.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        slots: int = 0,
        enforce_slots: bool = False,
        hold_s: float = 0.0,
        refuse_duplicates: bool = False,
        pois_per_box: int | None = None,
    ) -> None:
        if not hold_s >= 0:
            raise ValueError(f"hold_s must be 0 seconds or more, not {hold_s!r}")
        self._host = host
        self._port = port
        self._slots = slots
        self._enforce_slots = enforce_slots
        self._hold_s = float(hold_s)
        self._refuse_duplicates = refuse_duplicates
        self._accepted_texts: dict[str, list[float]] = {}
        self._pois_per_box = pois_per_box
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified whenever a call ends
        self._latency_s = float(latency_s)
        self._script: collections.deque[_Outcome] = collections.deque()
        self._default = _Outcome("ok")
        self._in_flight: list[_Call] = []
        self._next_pid = 30_000
        self._recorded: collections.deque[RecordedRequest] = collections.deque(maxlen=100_000)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._reset_counters()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> StubOverpass:
        """Listen and serve in a background thread; returns self."""
        if self._server is not None:
            raise RuntimeError("this StubOverpass is already running; call stop() before start()")
        self._stopping = threading.Event()
        server = _Server((self._host, self._port), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="stub-overpass", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: stalled and delayed calls end at once, open connections are closed."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        with self._lock:
            for call in self._in_flight:
                call.cancel.set()
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            for connection in list(server.connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        thread.join()
        with self._idle:  # cancelled calls end at once; wait so that stats() is final after stop()
            self._idle.wait_for(lambda: not self._in_flight, timeout=2.0)
        self._server = self._thread = None

    def __enter__(self) -> StubOverpass:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the stub has no port yet: call start() (or use it in a with block) first")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def interpreter_url(self) -> str:
        return self.url + "/api/interpreter"

    @property
    def status_url(self) -> str:
        return self.url + "/api/status"

    # -- control -----------------------------------------------------------------------------------

    def script(self, *outcomes: str) -> None:
        """Queue outcomes for the next interpreter calls, in order (see the module docstring)."""
        parsed = [_parse_outcome(o) for o in outcomes]
        with self._lock:
            self._script.extend(parsed)

    def set_default(self, outcome: str) -> None:
        """The outcome of calls once the script is empty, e.g. ``"504"`` for a storm."""
        parsed = _parse_outcome(outcome)
        with self._lock:
            self._default = parsed

    @property
    def latency_s(self) -> float:
        """Seconds every interpreter call waits before its outcome."""
        return self._latency_s

    def set_latency(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"latency must be 0 seconds or more, not {seconds!r}")
        with self._lock:
            self._latency_s = float(seconds)

    def reset(self) -> None:
        """Clear the script, the default outcome, the counters and the recorded requests."""
        with self._lock:
            self._script.clear()
            self._default = _Outcome("ok")
            self._recorded.clear()
            self._accepted_texts.clear()
            self._reset_counters()

    def _reset_counters(self) -> None:
        self._calls = 0
        self._served: collections.Counter[str] = collections.Counter()
        self._peak_in_flight = len(self._in_flight)
        self._status_calls = 0
        self._kill_calls = 0
        self._rejected_over_slots = 0
        self._held = 0
        self._refused_duplicates = 0

    def stats(self) -> StubStats:
        with self._lock:
            return StubStats(
                calls=self._calls,
                served=dict(self._served),
                in_flight=len(self._in_flight),
                peak_in_flight=self._peak_in_flight,
                status_calls=self._status_calls,
                kill_calls=self._kill_calls,
                rejected_over_slots=self._rejected_over_slots,
                held=self._held,
                refused_duplicates=self._refused_duplicates,
            )

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests to ``/api/`` endpoints, oldest first (the last 100,000)."""
        with self._lock:
            return list(self._recorded)

    # -- endpoints ---------------------------------------------------------------------------------

    def _interpreter(self, handler: _Handler, method: str, query: str) -> None:
        call = self._begin_call(query)
        user_agent = handler.headers.get("User-Agent", "")
        if call.waiting and not self._hold_for_slot(call):
            served = "aborted" if self._stopping.is_set() else "429"
            status, content_type, body = _ERROR_RESPONSES["429"]
            self._end_call(call, served, method, user_agent)
            handler.reply(status, content_type, body)
            return
        outcome = call.outcome
        assert outcome is not None  # given at arrival or when the hold ended
        stall_s = outcome.stall_s if outcome.name == "stall" else 0.0
        if self._wait(call, call.latency_s) or self._wait(call, stall_s):
            self._end_call(call, "aborted" if self._stopping.is_set() else "killed", method, user_agent)
            handler.close_connection = True
            return
        try:
            served, status, content_type, body = self._answer(outcome, query)
        except BaseException:
            self._end_call(call, "500", method, user_agent)
            raise
        if outcome.name == "trickle" and status == 200:
            # In flight (holding its slot) while the body trickles out.
            whole = handler.reply(status, content_type, body, trickle=(outcome.stall_s, call.cancel))
            ended = "aborted" if self._stopping.is_set() else "killed"
            self._end_call(call, served if whole else ended, method, user_agent)
            return
        # Accounted before the answer goes out, so a client that has its answer sees it in stats().
        self._end_call(call, served, method, user_agent)
        handler.reply(status, content_type, body, cut_off=served == "cutoff")

    def _begin_call(self, query: str) -> _Call:
        now = time.time()
        with self._lock:
            self._calls += 1
            holding = sum(c.holds_slot for c in self._in_flight)
            waiting = sum(c.waiting for c in self._in_flight)
            full = 0 < self._slots <= holding
            outcome: _Outcome | None
            if self._is_duplicate(query, now):
                self._refused_duplicates += 1
                outcome, holds_slot, held = _Outcome("duplicate"), False, False
            elif full and self._hold_s > 0 and waiting <= 2 * self._slots:
                self._held += 1
                outcome, holds_slot, held = None, False, True
            elif full and (self._enforce_slots or self._hold_s > 0):
                self._rejected_over_slots += 1
                outcome, holds_slot, held = _Outcome("429"), False, False
            else:
                outcome, holds_slot, held = self._next_outcome(), True, False
            self._next_pid += 1
            call = _Call(outcome, self._latency_s, holds_slot, self._next_pid, now, query, waiting=held)
            if self._stopping.is_set():
                call.cancel.set()
            self._in_flight.append(call)
            self._peak_in_flight = max(self._peak_in_flight, len(self._in_flight))
            return call

    def _next_outcome(self) -> _Outcome:
        return self._script.popleft() if self._script else self._default

    def _is_duplicate(self, query: str, now: float) -> bool:
        """Whether ``query`` is refused as a duplicate; an accepted text is remembered for its window."""
        if not self._refuse_duplicates:
            return False
        setting = {m.group(1): m.group(2) for m in _SETTING.finditer(query)}
        window_s = int(setting.get("timeout", "180"))
        recent = [t for t in self._accepted_texts.get(query, []) if t > now - window_s]
        if len(recent) >= DUPLICATES_ACCEPTED:
            self._accepted_texts[query] = recent
            return True
        self._accepted_texts[query] = [*recent, now]
        return False

    def _hold_for_slot(self, call: _Call) -> bool:
        """Hold a call until a slot is free (True: it holds one now) or ``hold_s`` passed."""
        deadline = time.monotonic() + self._hold_s
        with self._idle:
            while True:
                if call.cancel.is_set():
                    call.waiting = False
                    return False
                if sum(c.holds_slot for c in self._in_flight) < self._slots:
                    call.waiting, call.holds_slot = False, True
                    call.admitted_at = time.time()
                    call.outcome = self._next_outcome()
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    call.waiting = False
                    self._rejected_over_slots += 1
                    return False
                self._idle.wait(min(left, 0.05))

    def _end_call(self, call: _Call, served: str, method: str, user_agent: str) -> None:
        with self._idle:
            self._in_flight.remove(call)
            self._idle.notify_all()
            self._served[served] += 1
            self._recorded.append(
                RecordedRequest(
                    "/api/interpreter",
                    method,
                    call.query,
                    user_agent,
                    served,
                    call.started_at,
                    time.time(),
                    call.admitted_at,
                )
            )

    @staticmethod
    def _wait(call: _Call, seconds: float) -> bool:
        """Wait, unless the call is cancelled; True when it was."""
        return call.cancel.wait(seconds) if seconds > 0 else call.cancel.is_set()

    def _answer(self, outcome: _Outcome, query: str) -> tuple[str, int, str, bytes]:
        """(outcome served, status, content type, body) for one interpreter call."""
        if outcome.name in ("enomem-remark", "blocks-remark"):
            remark = ENOMEM_REMARK if outcome.name == "enomem-remark" else BLOCKS_REMARK
            return (outcome.name, 200, "application/json", _json_document([], remark))
        if outcome.name not in _NEEDS_QUERY:
            key = f"{outcome.name}:{outcome.variant}" if outcome.variant else outcome.name
            return (outcome.name, *_ERROR_RESPONSES[key])
        try:
            parsed = _parse_query(query)
        except _QueryError as error:
            return ("400", 400, _HTML, _error_page(str(error)))
        if outcome.name == "timeout-remark":
            return (outcome.name, 200, "application/json", _json_document([], TIMEOUT_REMARK))
        pois = None if outcome.name == "oom-remark" else _find_pois(parsed, self._pois_per_box)
        if pois is None:
            return ("oom-remark", 200, "application/json", _json_document([], OOM_REMARK))
        elements = [poi.to_json() for poi in pois]
        if outcome.name == "partial-remark":
            half = elements[: (len(elements) + 1) // 2]
            return (outcome.name, 200, "application/json", _json_document(half, TIMEOUT_REMARK))
        return (outcome.name, 200, "application/json", _json_document(elements))

    def _status(self, handler: _Handler) -> None:
        now = time.time()
        with self._lock:
            self._status_calls += 1
            down = self._default.name == "504-down" and not self._script
            running = [c for c in self._in_flight if c.holds_slot]
        if down:
            status, body = 504, _STATUS_SERVER_DOWN
        else:
            host = handler.client_address[0]
            lines = [
                f"Connected as: {int(ipaddress.ip_address(host))}",
                f"Current time: {_iso(now)}",
                "Announced endpoint: none",
                f"Rate limit: {self._slots}",
            ]
            if self._slots > 0:
                free = self._slots - len(running)
                lines.append(
                    f"{free} slots available now."
                    if free > 0
                    else f"Slot available after: {_iso(now + 1)}, in 1 seconds."
                )
            lines.append("Currently running queries (pid, space limit, time limit, start time):")
            lines.extend(_running_line(c) for c in running)
            status, body = 200, "\n".join(lines) + "\n"
        # Recorded before the answer goes out, like interpreter calls: a client
        # holding the answer finds the request in ``requests`` already.
        self._record(handler, "status", now)
        handler.reply(status, "text/plain; charset=utf-8", body.encode())

    def _kill(self, handler: _Handler) -> None:
        now = time.time()
        with self._lock:
            self._kill_calls += 1
            killed = [c for c in self._in_flight if c.holds_slot and not c.cancel.is_set()]
            for call in killed:
                call.cancel.set()
        self._record(handler, "kill", now)
        handler.reply(200, "text/plain; charset=utf-8", f"Killed {len(killed)} queries.\n".encode())

    def _record(self, handler: _Handler, outcome: str, started_at: float) -> None:
        path = urlsplit(handler.path).path
        user_agent = handler.headers.get("User-Agent", "")
        with self._lock:
            self._recorded.append(
                RecordedRequest(path, handler.command, "", user_agent, outcome, started_at, time.time())
            )

    def _control_script(self, handler: _Handler, body: bytes) -> None:
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError('send a JSON object such as {"outcomes": ["429", "ok"]}')
            outcomes = request.get("outcomes", [])
            if not isinstance(outcomes, list) or not all(isinstance(o, str) for o in outcomes):
                raise ValueError('"outcomes" must be a list of strings such as ["429", "stall:2"]')
            parsed = [_parse_outcome(o) for o in outcomes]
            default = request.get("default")
            latency = request.get("latency_s")
            if default is not None:
                self.set_default(str(default))
            if latency is not None:
                self.set_latency(float(latency))
        except (ValueError, TypeError) as error:
            message = {"error": str(error)}
            handler.reply(400, "application/json", (json.dumps(message) + "\n").encode())
            return
        with self._lock:
            self._script.extend(parsed)
            queued = len(self._script)
        handler.reply(200, "application/json", (json.dumps({"queued": queued}) + "\n").encode())


def _running_line(call: _Call) -> str:
    settings = {m.group(1): m.group(2) for m in _SETTING.finditer(call.query)}
    space, seconds = settings.get("maxsize", "536870912"), settings.get("timeout", "180")
    return f"{call.pid}\t{space}\t{seconds}\t{_iso(call.started_at)}"


def serve_forever(port: int, host: str = "127.0.0.1", latency_s: float = 0.0, slots: int = 2) -> None:
    """Run a stub until SIGINT or SIGTERM and print one line with its URL (``enrichment stub-overpass``)."""
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with StubOverpass(host=host, port=port, latency_s=latency_s, slots=slots) as stub:
            print(f"Stub Overpass API listening on {stub.url} (Ctrl-C to stop)", flush=True)
            while not stop_requested.wait(0.2):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

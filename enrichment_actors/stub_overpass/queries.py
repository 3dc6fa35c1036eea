"""Overpass QL as far as the stand-in understands it: bbox statements with tag filters, and settings.

A text the real server would refuse raises :class:`QueryError` with the real
server's wording (a blank text, a bad box); a statement the stand-in does not
understand raises it with a plain explanation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Protocol, cast


class Poi(Protocol):
    """What a statement matches: an element's kind, tags and position (:class:`.lattice.Poi` is one)."""

    @property
    def kind(self) -> str: ...
    @property
    def tags(self) -> dict[str, str]: ...
    @property
    def lat_e7(self) -> int: ...
    @property
    def lon_e7(self) -> int: ...


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
SETTING = re.compile(r"\[(timeout|maxsize):\s*(\d+)\s*\]")


class QueryError(Exception):
    """The query text is one the real server would refuse; ``args[0]`` is its error paragraph."""


@dataclass(frozen=True)
class Box:
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
class Statement:
    kinds: tuple[str, ...]
    filters: tuple[tuple[str, str | None], ...]
    box: Box

    def matches(self, poi: Poi) -> bool:
        if poi.kind not in self.kinds:
            return False
        tags = poi.tags
        return all(key in tags and (value is None or tags[key] == value) for key, value in self.filters)

    def contains(self, poi: Poi) -> bool:
        """The POI lies in this statement's box (edges included)."""
        box = self.box
        return box.south <= poi.lat_e7 <= box.north and any(w <= poi.lon_e7 <= e for w, e in box.lon_ranges())


@dataclass(frozen=True)
class Query:
    statements: tuple[Statement, ...]
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
        raise QueryError(f"line {line}: parse error: Invalid escape sequence in {token}.") from None


def _to_e7(number: str, attribute: str, limit: int, line: int) -> int:
    value = round(float(number) * 10_000_000)
    if not -limit * 10_000_000 <= value <= limit * 10_000_000:
        raise QueryError(
            f'line {line}: static error: For the attribute "{attribute}" of the element "bbox-query" '
            f"the only allowed values are floats between -{limit}.0 and {limit}.0."
        )
    return value


def parse_query(text: str) -> Query:
    """Find every bbox statement (``nwr["k"="v"](s,w,n,e)``) in an Overpass QL text.

    Raises :class:`QueryError` with the real server's wording for a blank text or a bad box, and
    with a plain explanation for a statement this stub does not understand.
    """
    if not text.strip():
        raise QueryError("encoding error: Your input contains only whitespace.")
    statements = []
    for start in _STATEMENT_START.finditer(text):
        line = _line_of(text, start.start())
        found = _STATEMENT.match(text, start.start())
        if found is None:
            raise QueryError(
                f"line {line}: parse error: the stub Overpass server only understands bbox statements "
                'like nwr["key"](s,w,n,e) or nwr["key"="value"](s,w,n,e); script an outcome instead.'
            )
        filters = []
        for bracket in _BRACKET.finditer(found.group(1) + found.group(6)):
            parsed = _FILTER.fullmatch(bracket.group(0))
            if parsed is None:
                raise QueryError(
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
            raise QueryError(
                f'line {line}: static error: The value of attribute "n" of the element "bbox-query" '
                'must always be greater or equal than the value of attribute "s".'
            )
        statements.append(Statement(_KINDS[start.group(1)], tuple(filters), Box(south, west, north, east)))
    settings = {m.group(1): int(m.group(2)) for m in SETTING.finditer(text)}
    return Query(tuple(statements), settings.get("timeout", 180), settings.get("maxsize", 536_870_912))


def query_settings(text: str) -> dict[str, str]:
    """The ``[timeout:N]`` and ``[maxsize:N]`` settings of a query text, by name (absent ones left out)."""
    return {m.group(1): m.group(2) for m in SETTING.finditer(text)}

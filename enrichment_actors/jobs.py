"""Jobs: validation of what `enrich` is asked for, and the Overpass QL it becomes.

Everything a caller sends is checked here before any quota is spent or any
request leaves the process: an invalid job fails at once, by name, and is
never retried, whatever the payload (a number too large for a float, text
that is not valid Unicode, any JSON value where a list was expected). Tag keys
and values are escaped into QL string literals, so a tag cannot inject
Overpass QL.

Coordinates live on OSM's own grid of 1e-7 degrees (what OSM stores and what
the query text carries): a box is snapped to it when validated, and splitting
is integer arithmetic on it, so a box splits the same wherever it lies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BBOX_KEYS = ("south", "west", "north", "east")
#: Grid units per degree: OSM stores coordinates as whole multiples of 1e-7 degrees.
GRID = 10_000_000
_HALF_TURN = 180 * GRID
_TURN = 360 * GRID
#: Half a grid unit in degrees: what snapping to the grid may move a coordinate by.
_HALF_UNIT = 0.5 / GRID
_MAX_TEXT = 255
#: Longest excerpt of a caller's value quoted in an error message.
_SHOWN = 60
# Characters that have no business in an OSM key or value and that Overpass QL
# would need escapes for beyond quote and backslash.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: The source of a job that names none (``enrich.send(..., source=)``).
DEFAULT_SOURCE = "default"
#: What a source of jobs may be called: it names a lane of the fair room and a metric label.
SOURCE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class InvalidJob(ValueError):
    """The job cannot be run as asked. The message says what to change."""


def to_grid(degrees: float) -> int:
    """``degrees`` in whole grid units (1e-7 degrees), rounded to the nearest."""
    return round(degrees * GRID)


def from_grid(units: int) -> float:
    """Grid units back to degrees: the float nearest the exact decimal (``488500000`` -> ``48.85``)."""
    return units / GRID


@dataclass(frozen=True)
class BBox:
    """A box in Overpass order. ``west > east`` crosses the antimeridian."""

    south: float
    west: float
    north: float
    east: float

    @property
    def crosses_antimeridian(self) -> bool:
        return self.west > self.east

    @property
    def grid(self) -> tuple[int, int, int, int]:
        """South, west, north, east in grid units (1e-7 degrees)."""
        return to_grid(self.south), to_grid(self.west), to_grid(self.north), to_grid(self.east)

    @property
    def width_units(self) -> int:
        """Width in grid units, eastwards from west to east (across the antimeridian if need be)."""
        _, west, _, east = self.grid
        return (east - west) % _TURN or (_TURN if east != west else 0)

    @property
    def height_units(self) -> int:
        return to_grid(self.north) - to_grid(self.south)

    @property
    def width_deg(self) -> float:
        return from_grid(self.width_units)

    @property
    def height_deg(self) -> float:
        return from_grid(self.height_units)

    @property
    def area_deg2(self) -> float:
        # One division of exact integers: 0.1 x 2.5 degrees is 0.25, not 0.25000000000000006.
        return self.width_units * self.height_units / GRID**2

    def parts(self) -> tuple[BBox, ...]:
        """The box as Overpass can take it: two boxes when it crosses the antimeridian."""
        if not self.crosses_antimeridian:
            return (self,)
        return (
            BBox(self.south, self.west, self.north, 180.0),
            BBox(self.south, -180.0, self.north, self.east),
        )

    def quarters(self) -> tuple[BBox, ...]:
        """The four boxes a too-large query is split into, on the grid: they share their edges exactly."""
        south, west, north, east = self.grid
        mid_lat = south + self.height_units // 2
        mid_lon = west + self.width_units // 2
        if mid_lon > _HALF_TURN:
            mid_lon -= _TURN
        # The eastern halves start at -180 rather than 180 when the split falls
        # on the antimeridian, so no child is a box of zero width.
        east_start = -_HALF_TURN if mid_lon == _HALF_TURN else mid_lon
        s, w, n, e, m_lat, m_lon, e_start = map(
            from_grid, (south, west, north, east, mid_lat, mid_lon, east_start)
        )
        return (
            BBox(s, w, m_lat, m_lon),
            BBox(s, e_start, m_lat, e),
            BBox(m_lat, w, n, m_lon),
            BBox(m_lat, e_start, n, e),
        )

    def as_dict(self) -> dict[str, float]:
        return {"south": self.south, "west": self.west, "north": self.north, "east": self.east}

    def ql(self) -> str:
        return ",".join(_number(v) for v in (self.south, self.west, self.north, self.east))


@dataclass(frozen=True)
class TagFilter:
    """``key`` (the key exists) or ``key=value``."""

    key: str
    value: str | None = None

    def ql(self) -> str:
        if self.value is None:
            return f"[{_quote(self.key)}]"
        return f"[{_quote(self.key)}={_quote(self.value)}]"

    def __str__(self) -> str:
        return self.key if self.value is None else f"{self.key}={self.value}"


@dataclass(frozen=True)
class Job:
    """A validated enrichment job. ``depth`` counts splits of a too-large box."""

    bbox: BBox
    tags: tuple[TagFilter, ...]
    depth: int = 0

    def as_message(self) -> dict[str, Any]:
        """Keyword arguments for the actors (JSON-safe)."""
        return {"bbox": self.bbox.as_dict(), "tags": [str(tag) for tag in self.tags], "depth": self.depth}

    def split(self, min_tile_deg: float) -> tuple[Job, ...]:
        """Four child jobs, or none when a quarter would be smaller than ``min_tile_deg``.

        Compared in grid units, so a box 0.02 degrees wide splits at a 0.01 tile
        whether its float width came out as 0.02 or 0.019999999999999574.
        """
        smallest = max(1, to_grid(min_tile_deg))
        if min(self.bbox.width_units, self.bbox.height_units) // 2 < smallest:
            return ()
        return tuple(Job(quarter, self.tags, self.depth + 1) for quarter in self.bbox.quarters())


@dataclass(frozen=True)
class JobLimits:
    """What a job may ask for (from the settings)."""

    max_area_deg2: float = 0.25
    max_tags: int = 20
    default_tags: tuple[str, ...] = ("amenity", "shop")


def validate_job(bbox: Any, tags: Any = None, *, depth: Any = 0, limits: JobLimits | None = None) -> Job:
    """Turn what a caller sent into a :class:`Job`, or raise :class:`InvalidJob` saying why.

    Parameters:
      bbox: a mapping with exactly the keys south, west, north, east (degrees).
      tags: a list of ``"key"`` / ``"key=value"`` strings; ``None`` means the default set.
      depth: how many times the box was split already (set by the actors).
      limits: maximum area and tag count, default tags.
    """
    limits = limits or JobLimits()
    box = _validate_bbox(bbox, limits)
    filters = _validate_tags(limits.default_tags if tags is None else tags, limits)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= 32:
        raise InvalidJob(f"depth must be a whole number from 0 to 32, got {_show(depth)}.")
    return Job(box, filters, depth)


def validate_enrich(
    args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, *, limits: JobLimits | None = None
) -> Job:
    """The job an ``enrich`` message's arguments ask for, or :class:`InvalidJob` saying why.

    ``enrich`` takes ``bbox``, ``tags`` (positional or by name) and ``force``
    (a bool) only: the actor checks its arguments with this, and so does the
    app's sender before it enqueues anything.

    Examples:
      >>> validate_enrich(kwargs={"bbox": {"south": 1, "west": 2, "north": 1.1, "east": 2.1}, "force": "yes"})
      Traceback (most recent call last):
      ...
      enrichment_actors.jobs.InvalidJob: force must be true or false, got str.
    """
    named = dict(kwargs or {})
    positional = list(args)
    bbox = positional.pop(0) if positional else named.pop("bbox", None)
    tags = positional.pop(0) if positional else named.pop("tags", None)
    force = named.pop("force", False)
    validate_source(named.pop("source", DEFAULT_SOURCE))
    if positional or named:
        names = ", ".join([f"positional argument {a!r}" for a in positional] + sorted(named))
        raise InvalidJob(f"enrich takes bbox=, tags=, force= and source= only; unexpected: {names}.")
    if not isinstance(force, bool):
        raise InvalidJob(f"force must be true or false, got {type(force).__name__}.")
    return validate_job(bbox, tags, limits=limits)


def validate_source(source: Any) -> str:
    """``source`` if it can name a source of jobs (a lane of the fair room, a metric label), else InvalidJob.

    Examples:
      >>> validate_source("maps")
      'maps'
      >>> validate_source("my maps")
      Traceback (most recent call last):
      ...
      enrichment_actors.jobs.InvalidJob: source must be 1 to 64 letters, digits, '_', '.' or '-', got 'my maps'.
    """
    if not isinstance(source, str) or not SOURCE_PATTERN.match(source):
        raise InvalidJob(f"source must be 1 to 64 letters, digits, '_', '.' or '-', got {source!r:.80}.")
    return source


def build_query(job: Job, *, timeout_s: int, maxsize_bytes: int) -> str:
    """The Overpass QL for a job: one ``nwr`` statement per tag filter and box part.

    Example::

        [out:json][timeout:25][maxsize:67108864];(nwr["shop"="bakery"](48.85,2.29,48.86,2.3););out center tags;
    """
    return build_union_query(job.bbox.parts(), job.tags, timeout_s=timeout_s, maxsize_bytes=maxsize_bytes)


def build_union_query(
    boxes: Sequence[BBox], tags: Sequence[TagFilter], *, timeout_s: int, maxsize_bytes: int
) -> str:
    """The Overpass QL of the union of ``boxes`` (none crossing the antimeridian) for each tag filter."""
    statements = "".join(f"nwr{tag.ql()}({box.ql()});" for box in boxes for tag in tags)
    return f"[out:json][timeout:{timeout_s}][maxsize:{maxsize_bytes}];({statements});out center tags;"


def _validate_bbox(bbox: Any, limits: JobLimits) -> BBox:
    if not isinstance(bbox, Mapping):
        raise InvalidJob(
            f"bbox must be a mapping with keys {', '.join(BBOX_KEYS)}; got {type(bbox).__name__}."
        )
    keys = set(bbox)
    if keys != set(BBOX_KEYS):
        missing = ", ".join(k for k in BBOX_KEYS if k not in keys) or "none"
        extra = ", ".join(sorted(k if isinstance(k, str) else _show(k) for k in keys - set(BBOX_KEYS)))
        raise InvalidJob(
            f"bbox must have exactly south, west, north, east (missing: {missing}; unknown: {extra or 'none'})."
        )
    box = BBox(**{key: _coordinate(key, bbox[key]) for key in BBOX_KEYS})
    if box.south >= box.north:
        raise InvalidJob(
            f"bbox south={box.south:g} must be below north={box.north:g} (Overpass order is south,west,north,east)."
        )
    if box.west == box.east:
        raise InvalidJob(f"bbox west and east are both {box.west:g}: the box has no width.")
    if box.area_deg2 > limits.max_area_deg2:
        raise InvalidJob(
            f"bbox covers {box.area_deg2:.4g} square degrees, more than the limit of {limits.max_area_deg2:g} "
            "(ENRICH_MAX_AREA_DEG2): split it into smaller boxes."
        )
    return box


def _coordinate(key: str, value: Any) -> float:
    """A coordinate in range, snapped to the grid (what the query carries, and what splitting works on).

    The range is checked before any arithmetic: a finite float as large as
    1.8e301 overflows to infinity once scaled to grid units.
    """
    degrees = _degrees(key, value)
    limit, what = (90.0, "latitudes") if key in {"south", "north"} else (180.0, "longitudes")
    # Half a grid unit beyond the limit is allowed: snapping puts it on the limit, as it always has.
    if not -limit - _HALF_UNIT <= degrees <= limit + _HALF_UNIT:
        raise InvalidJob(
            f"bbox {key}={_show(value)} is outside [{-limit:g}, {limit:g}]: {what} are in degrees."
        )
    # Clamped: rounding at exactly half a unit must not snap a value off the limit.
    return max(-limit, min(limit, from_grid(to_grid(degrees))))


def _degrees(key: str, value: Any) -> float:
    """A coordinate as a float, or InvalidJob: never OverflowError (an int of 400 digits) or TypeError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJob(f"bbox {key} must be a finite number of degrees, got {_show(value)}.")
    try:
        degrees = float(value)
    except OverflowError:
        degrees = math.inf
    if not math.isfinite(degrees):
        raise InvalidJob(f"bbox {key} must be a finite number of degrees, got {_show(value)}.")
    return degrees


def _validate_tags(tags: Any, limits: JobLimits) -> tuple[TagFilter, ...]:
    if isinstance(tags, str) or not isinstance(tags, Sequence):
        raise InvalidJob(f'tags must be a list of "key" or "key=value" strings, got {type(tags).__name__}.')
    if not tags:
        raise InvalidJob("tags is empty: name at least one tag, or leave tags out for the default set.")
    if len(tags) > limits.max_tags:
        raise InvalidJob(f"{len(tags)} tags is more than the limit of {limits.max_tags} (ENRICH_MAX_TAGS).")
    return tuple(dict.fromkeys(_parse_tag(tag) for tag in tags))


def _parse_tag(tag: Any) -> TagFilter:
    if not isinstance(tag, str):
        raise InvalidJob(f'each tag must be a "key" or "key=value" string, got {_show(tag)}.')
    key, sep, value = tag.partition("=")
    _check_text("tag key", key, tag)
    if not sep:
        return TagFilter(key)
    _check_text("tag value", value, tag)
    return TagFilter(key, value)


def _check_text(what: str, text: str, tag: str) -> None:
    if not text or text != text.strip():
        raise InvalidJob(f"{what} in {_show(tag)} is empty or has surrounding spaces.")
    if len(text) > _MAX_TEXT:
        raise InvalidJob(f"{what} in {_show(tag)} is longer than {_MAX_TEXT} characters (the OSM limit).")
    if _CONTROL.search(text):
        raise InvalidJob(f"{what} in {_show(tag)} contains control characters.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate: JSON can carry it ("\ud800"), but it is not text
        # and no request can send it.
        raise InvalidJob(
            f"{what} in {_show(tag)} is not valid Unicode text (it contains a lone surrogate)."
        ) from None


def _show(value: Any) -> str:
    """A caller's value for an error message: short, and never an error itself."""
    try:
        text = repr(value)
    except Exception:  # e.g. an int with more digits than Python prints, or nesting too deep
        text = f"<{type(value).__name__} that cannot be shown>"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _quote(text: str) -> str:
    """A QL string literal: the only characters that need escaping are ``\\`` and ``"``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _number(value: float) -> str:
    text = f"{value:.7f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text

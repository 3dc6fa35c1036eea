"""Jobs: validation of what `enrich` is asked for, and the Overpass QL it becomes.

Everything a caller sends is checked here before any quota is spent or any
request leaves the process: an invalid job fails at once, by name, and is
never retried. Tag keys and values are escaped into QL string literals, so a
tag cannot inject Overpass QL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BBOX_KEYS = ("south", "west", "north", "east")
_MAX_TEXT = 255
# Characters that have no business in an OSM key or value and that Overpass QL
# would need escapes for beyond quote and backslash.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidJob(ValueError):
    """The job cannot be run as asked. The message says what to change."""


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
    def width_deg(self) -> float:
        return (self.east - self.west) % 360.0 or (360.0 if self.east != self.west else 0.0)

    @property
    def height_deg(self) -> float:
        return self.north - self.south

    @property
    def area_deg2(self) -> float:
        return self.width_deg * self.height_deg

    def parts(self) -> tuple[BBox, ...]:
        """The box as Overpass can take it: two boxes when it crosses the antimeridian."""
        if not self.crosses_antimeridian:
            return (self,)
        return (
            BBox(self.south, self.west, self.north, 180.0),
            BBox(self.south, -180.0, self.north, self.east),
        )

    def quarters(self) -> tuple[BBox, ...]:
        """The four boxes a too-large query is split into."""
        mid_lat = self.south + self.height_deg / 2
        mid_lon = self.west + self.width_deg / 2
        if mid_lon > 180.0:
            mid_lon -= 360.0
        # The eastern halves start at -180 rather than 180 when the split falls
        # on the antimeridian, so no child is a box of zero width.
        east_start = -180.0 if mid_lon == 180.0 else mid_lon
        return (
            BBox(self.south, self.west, mid_lat, mid_lon),
            BBox(self.south, east_start, mid_lat, self.east),
            BBox(mid_lat, self.west, self.north, mid_lon),
            BBox(mid_lat, east_start, self.north, self.east),
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
        """Four child jobs, or none when a quarter would be smaller than ``min_tile_deg``."""
        if min(self.bbox.width_deg, self.bbox.height_deg) / 2 < min_tile_deg:
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
        raise InvalidJob(f"depth must be a whole number from 0 to 32, got {depth!r}.")
    return Job(box, filters, depth)


def build_query(job: Job, *, timeout_s: int, maxsize_bytes: int) -> str:
    """The Overpass QL for a job: one ``nwr`` statement per tag filter and box part.

    Example::

        [out:json][timeout:25][maxsize:67108864];(nwr["shop"="bakery"](48.85,2.29,48.86,2.3););out center tags;
    """
    statements = "".join(f"nwr{tag.ql()}({part.ql()});" for part in job.bbox.parts() for tag in job.tags)
    return f"[out:json][timeout:{timeout_s}][maxsize:{maxsize_bytes}];({statements});out center tags;"


def _validate_bbox(bbox: Any, limits: JobLimits) -> BBox:
    if not isinstance(bbox, Mapping):
        raise InvalidJob(
            f"bbox must be a mapping with keys {', '.join(BBOX_KEYS)}; got {type(bbox).__name__}."
        )
    keys = set(bbox)
    if keys != set(BBOX_KEYS):
        missing = ", ".join(k for k in BBOX_KEYS if k not in keys) or "none"
        extra = ", ".join(sorted(map(str, keys - set(BBOX_KEYS)))) or "none"
        raise InvalidJob(
            f"bbox must have exactly south, west, north, east (missing: {missing}; unknown: {extra})."
        )
    values = {}
    for key in BBOX_KEYS:
        value = bbox[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidJob(f"bbox {key} must be a finite number of degrees, got {value!r}.")
        values[key] = float(value)
    for key in ("south", "north"):
        if not -90.0 <= values[key] <= 90.0:
            raise InvalidJob(f"bbox {key}={values[key]:g} is outside [-90, 90]: latitudes are in degrees.")
    for key in ("west", "east"):
        if not -180.0 <= values[key] <= 180.0:
            raise InvalidJob(f"bbox {key}={values[key]:g} is outside [-180, 180]: longitudes are in degrees.")
    box = BBox(**values)
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
        raise InvalidJob(f'each tag must be a "key" or "key=value" string, got {tag!r}.')
    key, sep, value = tag.partition("=")
    _check_text("tag key", key, tag)
    if not sep:
        return TagFilter(key)
    _check_text("tag value", value, tag)
    return TagFilter(key, value)


def _check_text(what: str, text: str, tag: str) -> None:
    if not text or text != text.strip():
        raise InvalidJob(f"{what} in {tag!r} is empty or has surrounding spaces.")
    if len(text) > _MAX_TEXT:
        raise InvalidJob(f"{what} in {tag[:40]!r}... is longer than {_MAX_TEXT} characters (the OSM limit).")
    if _CONTROL.search(text):
        raise InvalidJob(f"{what} in {tag!r} contains control characters.")


def _quote(text: str) -> str:
    """A QL string literal: the only characters that need escaping are ``\\`` and ``"``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _number(value: float) -> str:
    text = f"{value:.7f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text

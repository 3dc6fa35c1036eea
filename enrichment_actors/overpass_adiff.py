"""Augmented diffs: what changed in a query's answer since a moment, read as POIs to write and to drop.

A refresh of a tile asks only for what changed since that tile's
``timestamp_osm_base``: the same query with ``[adiff:"T"]``. Overpass prints
augmented diffs in XML only (``[out:json]`` is not offered for them:
drolbr/Overpass-API issue 363) as ``<action>`` blocks:

- ``create``: the element, now matching the query;
- ``modify``: ``<old>`` and ``<new>``, the element matching before and after;
- ``delete``: ``<old>``, and a ``<new>`` with only the id and meta data,
  ``visible="false"`` (deleted from OSM) or ``visible="true"`` (it still
  exists but no longer matches: it lost its tags, or left the boxes); older
  servers print no ``<new>`` at all.

Every element whose new version is visible and matches the job's tag filters
is a POI to write; every other one is *gone* for this tag set, whatever the
action says (a ``modify`` whose new tags no longer match our filters, say).

Elements are checked as in a plain answer (:mod:`.overpass_elements`): one
whose id cannot be read, or whose new version has no usable position, is
dropped and counted (``dropped``), and when its key can be read it is
*kept* (``kept``): not written, and not gone either.
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from .jobs import TagFilter
from .overpass_elements import Tally, clean_tags, id_problem, position, shown
from .overpass_responses import (
    BadResponse,
    OverpassError,
    ParsedResponse,
    Poi,
    _bad_response,
    _error_for_non_json,
    _error_for_status,
    _is_runtime_error,
    _runtime_error,
)

_KINDS = frozenset({"node", "way", "relation"})


def adiff_query(query: str, since: str) -> str:
    """``query`` (``[out:json]...``) as an augmented diff from ``since`` to now, in XML."""
    if not query.startswith("[out:json]"):
        raise ValueError("expected a query that starts with [out:json]")
    return f'[out:xml][adiff:"{since}"]' + query[len("[out:json]") :]


def read_adiff(status: int, body: bytes, tags: Sequence[TagFilter]) -> ParsedResponse:
    """Classify one augmented-diff response and read it: the POIs to write, the elements gone (``gone``).

    Raises the :class:`OverpassError` a plain answer would raise for the same
    status or remark, with ``response_bytes`` set.
    """
    try:
        return _read(status, body, tags)
    except OverpassError as exc:
        exc.response_bytes = len(body)
        raise


def _read(status: int, body: bytes, tags: Sequence[TagFilter]) -> ParsedResponse:
    if status != 200:
        raise _error_for_status(status, body)
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        # An error page or a remark says what went wrong; anything else is a body cut off.
        error = _error_for_non_json(body)
        if isinstance(error, BadResponse):
            error = _bad_response("the augmented diff is cut off or malformed", body)
        raise error from None
    if root.tag != "osm":
        raise _error_for_non_json(body)
    remark_text = root.findtext("remark")
    remark = html.unescape(remark_text).strip() if remark_text else None
    if remark and _is_runtime_error(remark):
        raise _runtime_error(remark)
    meta = root.find("meta")
    # Servers without replication state print osm_base="".
    osm_base = (meta.get("osm_base") or None) if meta is not None else None
    pois: list[Poi] = []
    gone: dict[tuple[str, int], None] = {}
    tally = Tally()
    for action in root.iter("action"):
        _read_action(action, tags, pois, gone, tally)
    written = {(p.element_type, p.osm_id) for p in pois}
    tally.log(f"an augmented diff of {len(body)} bytes")
    return ParsedResponse(
        pois=pois,
        skipped=tally.skipped,
        remark=remark,
        osm_base=osm_base,
        gone=tuple(key for key in gone if key not in written),
        dropped=tally.dropped,
        kept=tuple(key for key in tally.kept_keys() if key not in written),
    )


def _read_action(
    action: ET.Element,
    tags: Sequence[TagFilter],
    pois: list[Poi],
    gone: dict[tuple[str, int], None],
    tally: Tally,
) -> None:
    """One ``<action>``: a POI to write, a key gone, or an element dropped."""
    kind = action.get("type")
    element = _first_element(action if kind == "create" else action.find("new"))
    if element is None:
        element = _first_element(action.find("old"))
        if element is None:
            tally.drop(f"<action type={shown(kind)}>", "it holds no element")
            return
        if (key := _key(element, tally)) is not None:
            gone[key] = None
        return
    key = _key(element, tally)
    if key is None:
        return
    if kind == "delete" or element.get("visible") == "false" or not _matches(element, tags):
        gone[key] = None
        return
    where = _position(element)
    if where is None:
        tally.drop(f"{key[0]} {key[1]}", "its new version has no usable position", key)
        return
    pois.append(Poi(key[0], key[1], where[0], where[1], clean_tags(_tags(element))))


def _first_element(parent: ET.Element | None) -> ET.Element | None:
    if parent is None:
        return None
    return next((child for child in parent if child.tag in _KINDS), None)


def _key(element: ET.Element, tally: Tally) -> tuple[str, int] | None:
    """``(type, id)``, or None (the element dropped) when the id is not a usable OSM id."""
    text = element.get("id", "")
    try:
        osm_id: object = int(text)
    except ValueError:
        osm_id = text
    problem = id_problem(osm_id)
    if problem is not None:
        tally.drop(f"<{element.tag} id={shown(text)}>", problem)
        return None
    return element.tag, int(text)


def _tags(element: ET.Element) -> dict[str, str]:
    return {tag.get("k", ""): tag.get("v", "") for tag in element.iter("tag")}


def _matches(element: ET.Element, filters: Sequence[TagFilter]) -> bool:
    """The element has one of the tags asked for (any element, with no filters)."""
    if not filters:
        return True
    tags = _tags(element)
    return any(f.key in tags and (f.value is None or tags[f.key] == f.value) for f in filters)


def _position(element: ET.Element) -> tuple[float, float] | None:
    """A node's lat/lon, a way's or relation's ``<center>``; None without a usable one."""
    where = element if element.tag == "node" else element.find("center")
    if where is None:
        return None
    try:
        # float() reads "nan" and "inf" too: position() refuses them.
        return position(float(where.get("lat", "")), float(where.get("lon", "")))
    except ValueError:
        return None


__all__ = ["adiff_query", "read_adiff"]

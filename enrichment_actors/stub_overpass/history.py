"""The stub's OSM data through time: the lattice as edited, version by version, and augmented diffs.

Each :meth:`History.edit` with a new ``osm_base`` starts a version: elements
removed, restored, given other tags or moved from then on. An empty ``osm_base``
is a server without replication: its answers carry ``"timestamp_osm_base": ""``. A query is answered from
the newest version; ``[adiff:"T"]`` compares the version current at ``T`` with
the newest and prints what changed for the query's statements, laid out as
Overpass API 0.7.62 prints an augmented diff in XML (``out center tags``):
``<action type="create">`` with the element; ``modify`` with ``<old>`` and
``<new>``; ``delete`` with ``<old>`` and a ``<new>`` that holds the id alone,
``visible="false"`` when the element is gone, ``visible="true"`` when it only
stopped matching the query (lost its tags, left the boxes).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .lattice import Poi, candidates, poi_of
from .pages import OSM_BASE, xml_attribute
from .queries import Query, Statement

#: ``[adiff:"T"]`` (or ``[adiff:"T1","T2"]``, of which the stub takes T1 and compares it with now).
ADIFF = re.compile(r'\[adiff:\s*"([^"]+)"(?:\s*,\s*"[^"]+")?\s*\]')


@dataclass(frozen=True)
class Version:
    osm_base: str
    removed: frozenset[tuple[str, int]] = frozenset()
    retagged: Mapping[tuple[str, int], Mapping[str, str]] = field(default_factory=dict)
    #: Elements at another position than their lattice cell's: (lat_e7, lon_e7).
    moved: Mapping[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def view(self, poi: Poi) -> Poi | None:
        """``poi`` as this version has it; ``None`` when it does not exist then."""
        key = (poi.kind, poi.osm_id)
        if key in self.removed:
            return None
        tags = self.retagged.get(key)
        if tags is not None:
            poi = dataclasses.replace(poi, tags=dict(sorted(tags.items())))
        where = self.moved.get(key)
        return poi if where is None else dataclasses.replace(poi, lat_e7=where[0], lon_e7=where[1])

    def candidates(self, query: Query) -> list[Poi] | None:
        """The lattice's candidates of ``query`` and the elements moved in any version, in Overpass order."""
        found = candidates(query)
        if found is None or not self.moved:
            return found
        extra = (poi_of(kind, osm_id) for kind, osm_id in self.moved)
        every = {poi.sort_key(): poi for poi in [*found, *(poi for poi in extra if poi is not None)]}
        return [every[key] for key in sorted(every)]


class History:
    """The versions of the stub's data; safe to share between the server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions = [Version(OSM_BASE)]

    def reset(self) -> None:
        with self._lock:
            self._versions = [Version(OSM_BASE)]

    @property
    def current(self) -> Version:
        with self._lock:
            return self._versions[-1]

    def at(self, when: str) -> Version:
        """The version current at ``when`` (ISO 8601): the newest one that began at or before it."""
        with self._lock:
            older = [v for v in self._versions if v.osm_base <= when]
            return older[-1] if older else self._versions[0]

    def edit(
        self,
        *,
        removed: Iterable[tuple[str, int]] = (),
        restored: Iterable[tuple[str, int]] = (),
        retagged: Mapping[tuple[str, int], Mapping[str, str]] | None = None,
        moved: Mapping[tuple[str, int], tuple[int, int]] | None = None,
        osm_base: str | None = None,
    ) -> None:
        """Change the data: a new version when ``osm_base`` is later than the newest, else the newest in place
        (``""``: from now on without replication, the newest in place)."""
        with self._lock:
            last = self._versions[-1]
            gone = (set(last.removed) | {(str(k), int(i)) for k, i in removed}) - {
                (str(k), int(i)) for k, i in restored
            }
            tags = {**last.retagged, **{(str(k), int(i)): dict(t) for (k, i), t in (retagged or {}).items()}}
            places = {
                **last.moved,
                **{(str(k), int(i)): (int(a), int(o)) for (k, i), (a, o) in (moved or {}).items()},
            }
            base = last.osm_base if osm_base is None else osm_base
            version = Version(base, frozenset(gone), tags, places)
            if osm_base is not None and osm_base > last.osm_base:
                self._versions.append(version)
            else:
                self._versions[-1] = version

    def answer(self, query: Query, limit: int | None = None) -> list[Poi] | None:
        """The elements the newest version has for ``query``, in Overpass order (None: too big to answer)."""
        version = self.current
        found = version.candidates(query)
        if found is None:
            return None
        matched = [
            p for poi in found if (p := version.view(poi)) is not None and _matches(query.statements, p)
        ]
        return matched if limit is None else matched[:limit]

    def adiff(self, query: Query, since: str) -> list[str] | None:
        """The ``<action>`` blocks of an augmented diff from ``since`` to now (None: too big to answer)."""
        old_version, new_version = self.at(since), self.current
        found = new_version.candidates(query)
        if found is None:
            return None
        actions = []
        for poi in found:
            old, new = old_version.view(poi), new_version.view(poi)
            was = old is not None and _matches(query.statements, old)
            now = new is not None and _matches(query.statements, new)
            if not was and now:
                actions.append(f'<action type="create">\n{_xml(new)}</action>\n')
            elif was and not now:
                after = _stub_xml(poi, visible=new is not None)
                actions.append(
                    f'<action type="delete">\n<old>\n{_xml(old)}</old>\n<new>\n{after}</new>\n</action>\n'
                )
            elif was and now and old != new:
                actions.append(
                    f'<action type="modify">\n<old>\n{_xml(old)}</old>\n<new>\n{_xml(new)}</new>\n</action>\n'
                )
        return actions


def _matches(statements: tuple[Statement, ...], poi: Poi) -> bool:
    return any(statement.matches(poi) and statement.contains(poi) for statement in statements)


def _degrees(e7: int) -> str:
    text = f"{e7 / 10_000_000:.7f}"
    return text


def _xml(poi: Poi | None) -> str:
    """One element as ``out center tags`` prints it in XML, two spaces in."""
    assert poi is not None
    tags = "".join(f"    <tag k={xml_attribute(k)} v={xml_attribute(v)}/>\n" for k, v in poi.tags.items())
    if poi.kind == "node":
        head = f'  <node id="{poi.osm_id}" lat="{_degrees(poi.lat_e7)}" lon="{_degrees(poi.lon_e7)}"'
        return f"{head}>\n{tags}  </node>\n" if tags else f"{head}/>\n"
    center = (
        f'    <center lat="{_degrees(poi.lat_e7)}" lon="{_degrees(poi.lon_e7)}"/>\n' if poi.has_center else ""
    )
    return f'  <{poi.kind} id="{poi.osm_id}">\n{center}{tags}  </{poi.kind}>\n'


def _stub_xml(poi: Poi, *, visible: bool) -> str:
    """The ``<new>`` of a delete: the id alone, ``visible="false"`` when it is gone from OSM, ``"true"`` when it
    only stopped matching (as Overpass 0.7.62 prints them; with ``out meta`` they carry the meta data too)."""
    return f'  <{poi.kind} id="{poi.osm_id}" visible="{"true" if visible else "false"}"/>\n'


__all__ = ["ADIFF", "History", "Version"]

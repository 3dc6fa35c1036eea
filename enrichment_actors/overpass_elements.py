"""What an element of an Overpass answer must be to become a POI, and the repair of its tags.

One bad element costs only itself: an element whose key or position is
unusable is dropped from its answer and counted, and its neighbours are
stored. Nothing PostgreSQL or the stage would refuse leaves the readers of
answers (:mod:`.overpass_responses`, :mod:`.overpass_adiff`):

- ``type``: ``node``, ``way`` or ``relation``. ``area`` elements (what
  Overpass prints for derived areas) are not POIs: *skipped*, not dropped.
- ``id``: a positive whole number that fits PostgreSQL's BIGINT; not a
  bool, not ``"12a"``, not ``12.0``.
- position: a finite ``lat`` in [-90, 90] and ``lon`` in [-180, 180]; a
  node's own, a way's or relation's ``center``. Without one (no ``center``,
  an empty one, ``NaN``) the element is dropped.
- tags: text. A NUL (JSONB refuses it) or a lone surrogate (not UTF-8:
  ``json.loads`` yields one from ``"\\ud800"``, and Redis and PostgreSQL
  refuse it) in a key or value becomes U+FFFD, the Unicode replacement
  character, and the element is kept. A value printed as another JSON type
  (``3``, ``true``, ``null``) is kept as its JSON text, so the column holds
  text only and nothing is lost. Tags that are not an object make the
  element unusable.

A dropped element whose ``(type, id)`` can be read is *kept*: the coverage
ledger must leave its old row in place rather than delete it as gone, since
the server still returned it.

Examples:
  >>> tally = Tally()
  >>> tally.drop("node '12a'", "its id is not a positive whole number")
  >>> tally.drop("way 7", "it has no usable center", ("way", 7))
  >>> (tally.dropped, tally.kept_keys())
  (2, (('way', 7),))
  >>> clean_tags({"name": "Caf\\x00\\ud800", "level": 2})
  {'name': 'Caf\\ufffd\\ufffd', 'level': '2'}
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

__all__ = [
    "KINDS",
    "MAX_ID",
    "NOT_POIS",
    "Tally",
    "clean_tags",
    "clean_text",
    "id_problem",
    "json_may_hold_bad_text",
    "position",
    "shown",
    "tags_are_text",
]

logger = logging.getLogger(__name__)

KINDS = frozenset({"node", "way", "relation"})
#: Element types Overpass prints that are not POIs: skipped, not dropped.
NOT_POIS = frozenset({"area"})
#: The largest id a PostgreSQL BIGINT holds.
MAX_ID = 2**63 - 1
REPLACEMENT = "\ufffd"

# A NUL or a lone surrogate: what PostgreSQL and UTF-8 refuse in text.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
# Where a JSON body may hold one: a \u0000 or \uD8xx-\uDFxx escape, a surrogate
# encoded as UTF-8 bytes (json.loads reads bytes with surrogatepass), or any NUL
# byte (a raw NUL is no JSON, but a body in UTF-16 or UTF-32 is full of them).
_BAD_TEXT_IN_JSON = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|\x00")
#: Dropped elements named in the log line of an answer; the rest are counted.
_NAMED = 5
#: Longest log line about one answer's dropped elements.
_LINE = 400
#: Longest excerpt of a field quoted in a reason.
_SHOWN = 40


class Tally:
    """What a reader did not turn into POIs: elements skipped (not POIs) and dropped (unusable).

    Parameters:
      (none): start empty; the reader calls :meth:`skip` and :meth:`drop`.
    """

    def __init__(self) -> None:
        self.skipped = 0
        self.dropped = 0
        self._kept: dict[tuple[str, int], None] = {}
        self._named: list[str] = []

    def skip(self) -> None:
        """One element that is not a POI (an ``area``)."""
        self.skipped += 1

    def drop(self, what: str, why: str, key: tuple[str, int] | None = None) -> None:
        """One unusable element: ``what`` names it, ``why`` says what is wrong; ``key`` if readable."""
        self.dropped += 1
        if key is not None:
            self._kept[key] = None
        if len(self._named) < _NAMED:
            self._named.append(f"{what} ({why})")

    def kept_keys(self) -> tuple[tuple[str, int], ...]:
        """The readable keys of dropped elements, in answer order, each once."""
        return tuple(self._kept)

    def log(self, answer: str) -> None:
        """One warning line for ``answer`` when elements were dropped; nothing otherwise."""
        if not self.dropped:
            return
        first = f"first {len(self._named)}: " if self.dropped > len(self._named) else ""
        line = (
            f"Dropped {self.dropped} unusable element(s) of {answer} and stored the rest; the old rows of "
            "those with a readable type and id stay (damaged server output: if it repeats, use another "
            f"instance). {first}{'; '.join(self._named)}."
        )
        logger.warning("%s", line if len(line) <= _LINE else line[: _LINE - 3] + "...")


def id_problem(osm_id: Any) -> str | None:
    """Why ``osm_id`` cannot be an OSM id, or None when it can."""
    if type(osm_id) is int and 0 < osm_id <= MAX_ID:
        return None
    return f"its id {shown(osm_id)} is not a whole number from 1 to 2**63-1"


def position(lat: Any, lon: Any) -> tuple[float, float] | None:
    """``(lat, lon)`` as floats when both are finite numbers in range, else None.

    Numbers only (JSON numbers, or floats read from XML by the caller): a
    bool or a string is no coordinate. NaN fails every comparison.
    """
    if type(lat) is int or type(lon) is int:
        try:
            lat, lon = float(lat), float(lon)
        except (OverflowError, TypeError, ValueError):
            return None
    if type(lat) is not float or type(lon) is not float:
        return None
    if -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0:
        return lat, lon
    return None


def json_may_hold_bad_text(body: bytes) -> bool:
    """Whether a JSON body may decode to a NUL or a lone surrogate (when not, tags need no check)."""
    return _BAD_TEXT_IN_JSON.search(body) is not None


def clean_text(text: str) -> str:
    """``text`` with each NUL and lone surrogate replaced by U+FFFD (``text`` itself when it has none).

    A surrogate pair decoded as two code points (``"\\ud83d\\ude00"`` read
    with ``surrogatepass``) is joined back into its character first.
    """
    if _BAD_TEXT.search(text) is None:
        return text
    joined = text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
    return _BAD_TEXT.sub(REPLACEMENT, joined)


def clean_tags(tags: dict[str, Any]) -> dict[str, str]:
    """``tags`` as text that PostgreSQL and the stage accept (the module docstring says how)."""
    return {clean_text(key): _text(value) for key, value in tags.items()}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return clean_text(value)
    # ensure_ascii: a NUL or surrogate inside a list or object is escaped, never raw.
    return json.dumps(value, ensure_ascii=True)


def tags_are_text(tags: dict[Any, Any]) -> bool:
    """Every value is a string (JSON keys always are): no repair needed beyond :func:`clean_text`."""
    return all(type(value) is str for value in tags.values())


def shown(value: Any) -> str:
    """A field of an answer, for a reason: short, and never an error itself."""
    try:
        text = repr(value)
    except Exception:  # an int too long to print
        text = f"<{type(value).__name__} that cannot be shown>"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."

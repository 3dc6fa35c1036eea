"""The Redis backend's Lua scripts: one file each under ``lua/``, read on first use.

Each primitive that takes more than one step is one script, so it is atomic
and costs one round trip. A file may begin with ``-- include: NAME.lua``
lines: the named file's text (its own includes resolved) takes each line's
place. ``now.lua`` gives every script that needs the time the server's
clock, so the whole fleet shares one clock whatever its hosts' clocks say.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

#: Every script the backend runs (a file ``lua/<name>.lua`` each); the others are included.
SCRIPTS = (
    "window_admit",
    "counter_add",
    "lease_acquire",
    "lease_count",
    "lease_release",
    "lease_transfer",
    "state_cas",
    "state_get_now",
    "park",
    "claim_due",
    "unpark",
    "pause_extend",
    "pause_get",
    "hold_set",
    "hold_clear",
    "gcra_reserve",
    "gcra_claim",
    "gcra_get",
    "room_seat",
    "room_enter",
    "room_keep",
    "room_leave",
    "room_counts",
    "room_withdraw",
    "stage_put",
    "stage_get",
    "stage_look",
)

#: The driver of :meth:`~enrichment_middleware.backends.base.Backend.all_or_nothing`: not run alone,
#: but after the primitives it runs (:func:`all_or_nothing_source`).
ALL_OR_NOTHING = "all_or_nothing"

_INCLUDE = re.compile(r"^-- include: (?P<name>[a-z_]+)\.lua\n", re.MULTILINE)
_COMMENT = re.compile(r"^--(?! include:).*\n", re.MULTILINE)


@functools.cache
def source(name: str) -> str:
    """The text of script ``name`` as Redis runs it: its includes in place, its comments left out
    (they document the file, and Redis would only carry them)."""
    path = resources.files(__package__).joinpath("lua", f"{name}.lua")
    if not path.is_file():
        raise LookupError(f"no Lua script {name!r} in {__package__}/lua (known: {', '.join(SCRIPTS)})")
    text = _COMMENT.sub("", path.read_text(encoding="utf-8"))
    return _INCLUDE.sub(lambda include: source(include["name"]), text)


@functools.cache
def all_or_nothing_source(primitives: tuple[str, ...]) -> str:
    """The script that runs any of ``primitives`` (names in :data:`SCRIPTS`) as one all-or-nothing
    step: each one's text as a function of its own KEYS and ARGV, then the driver."""
    functions = "".join(
        f"steps['{name}'] = function(KEYS, ARGV)\n{source(name)}\nend\n" for name in sorted(set(primitives))
    )
    return "local steps = {}\n" + functions + source(ALL_OR_NOTHING)

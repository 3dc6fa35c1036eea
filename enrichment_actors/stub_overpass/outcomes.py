"""The outcomes a script can name (``name`` or ``name:arg``), parsed: see the package docstring for each."""

from __future__ import annotations

from dataclasses import dataclass

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
NEEDS_QUERY = frozenset(
    {"ok", "stall", "trickle", "cutoff", "partial-remark", "timeout-remark", "oom-remark"}
)
_TAKES_SECONDS = frozenset({"stall", "trickle"})
#: Bytes one ``trickle`` write sends.
TRICKLE_BYTES = 8
#: Identical query texts the server accepts within their ``[timeout]`` before refusing the next.
DUPLICATES_ACCEPTED = 2


@dataclass(frozen=True)
class Outcome:
    name: str
    stall_s: float = 0.0
    variant: str = ""


def parse_outcome(text: str) -> Outcome:
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
        return Outcome(name, stall_s=seconds)
    if name == "504-down" and arg in ("", "turned-off"):
        return Outcome(name, variant=arg)
    if arg:
        raise ValueError(f"outcome {text!r} takes no argument: use one of {accepted}")
    return Outcome(name)

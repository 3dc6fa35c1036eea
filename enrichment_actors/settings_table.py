"""README.md's settings table, rendered from the declarations in :mod:`.settings`.

Print it, or rewrite it in place between its two markers::

    python -m enrichment_actors.settings_table
    python -m enrichment_actors.settings_table --write README.md

A test compares README.md's table with :func:`markdown`: editing a
declaration without running the second command fails it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .settings import TABLE
from .settings_declaration import Derived, Setting

BEGIN = "<!-- settings table: generated from enrichment_actors/settings.py, do not edit by hand -->"
END = "<!-- end of settings table -->"
REGENERATE = "python -m enrichment_actors.settings_table --write README.md"


def markdown(table: Sequence[Setting] = TABLE) -> str:
    """The table: one row per setting, with its default and the processes that need it."""
    lines = [
        "| variable | default | needed by | meaning |",
        "|---|---|---|---|",
        *(f"| `{row.env}` | {_default(row)} | {_needed_by(row)} | {row.help} |" for row in table),
    ]
    return "\n".join(lines) + "\n"


def _default(row: Setting) -> str:
    if isinstance(row.default, Derived):
        return row.default.text
    return f"`{row.default}`" if row.default else "(empty)"


def _needed_by(row: Setting) -> str:
    return "sender, worker" if row.sender else "worker"


def between_markers(text: str) -> str:
    """What ``text`` holds between the table's markers; ValueError if they are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN!r} and {END!r} are missing")
    return text[start + len(BEGIN) : end].strip("\n") + "\n"


def rewrite(text: str) -> str:
    """``text`` with the table between its markers replaced by :func:`markdown`'s."""
    between_markers(text)  # both markers, in order
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return f"{text[:start]}\n{markdown()}{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enrichment_actors.settings_table", description=__doc__)
    parser.add_argument("--write", metavar="README", type=Path, help="rewrite the table in this file")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(markdown())
        return 0
    args.write.write_text(rewrite(args.write.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

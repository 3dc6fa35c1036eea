"""Report how much of each answer a worker process decoded: one stderr line per body read.

Loaded as one more module of the ``dramatiq`` CLI (``dramatiq
enrichment_actors.worker:build tests.support.answer_probe``), it wraps the client's
body reader so that every read, however it ends (the cap, a corrupt body,
the deadline), prints ``answer probe: decoded N wire M`` to stderr, which
:class:`~tests.support.workers.WorkerProcesses` captures. A chaos scenario
reads the largest ``N`` against ``OVERPASS_MAX_ANSWER_BYTES``.

Examples:
  >>> WorkerProcesses(env, modules=["tests.support.answer_probe"])  # doctest: +SKIP
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any

from enrichment_actors import overpass_answer, overpass_client

PREFIX = "answer probe: decoded"
_LINE = re.compile(PREFIX + r" (\d+) wire (\d+)")
_read_body = overpass_answer.read_body


def _probed(*args: Any, **kwargs: Any) -> None:
    try:
        _read_body(*args, **kwargs)
    finally:
        body = kwargs["body"]
        print(f"{PREFIX} {len(body.data)} wire {body.wire_bytes}", file=sys.stderr, flush=True)


def decoded_sizes(lines: Iterable[str]) -> list[int]:
    """The decoded size of every body read that ``lines`` (a fleet's log) report."""
    return [int(m.group(1)) for line in lines if (m := _LINE.search(line))]


setattr(overpass_client, "read_body", _probed)  # noqa: B010 - the client looks it up by this name

"""Loaded into every benchmark worker process: its Overpass calls say which process made them.

The stand-in server records each call's User-Agent, so appending the worker
process's id to it (``... bench-pid/1234``) is enough to count each
process's share of the calls. Only the benchmarks load it
(``dramatiq MODULE tests.bench.process_tag``).
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

from enrichment_actors.overpass_client import OverpassClient

#: How a tagged User-Agent ends.
TAG = re.compile(r" bench-pid/(\d+)$")

_init = OverpassClient.__init__


@functools.wraps(_init)
def _tagged_init(self: OverpassClient, interpreter_url: str, *, user_agent: str, **kwargs: Any) -> None:
    _init(self, interpreter_url, user_agent=f"{user_agent} bench-pid/{os.getpid()}", **kwargs)


OverpassClient.__init__ = _tagged_init  # type: ignore[method-assign]


def process_of(user_agent: str) -> str:
    """The process id a tagged User-Agent names, or ``"?"``."""
    found = TAG.search(user_agent)
    return found.group(1) if found else "?"

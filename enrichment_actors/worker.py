"""What the dramatiq CLI loads: builds the runtime, declares the actors.

Run workers with::

    dramatiq enrichment_actors.worker --processes 2 --threads 8

Importing this module builds the broker and its middleware from the
environment (:mod:`enrichment_actors.settings`), makes it Dramatiq's global
broker (which the CLI takes right after the import) and declares the
actors. An unusable setting ends the process with one line,
``SettingsError: ...``, on stderr. Nothing else in the package does that at import time: the stand-in
server and the ``enrichment`` tools import without reading a setting.
"""

from __future__ import annotations

import sys

from .settings import SettingsError

try:
    # The actors module builds the runtime (broker, middleware) before it declares them.
    from .actors import enrich, fetch_pois, store_pois
    from .runtime import runtime
except SettingsError as exc:
    # A setting to fix: one line per worker process, not a traceback through the import machinery.
    print(f"SettingsError: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None

broker = runtime.broker

__all__ = ["broker", "enrich", "fetch_pois", "runtime", "store_pois"]

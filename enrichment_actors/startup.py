"""What a worker process says and checks when it starts, before its threads take a message.

:class:`StartupReport`, once per worker process (``before_worker_boot``):

- one line per Overpass endpoint: its profile, the limits in force, and any
  setting of the user's that the profile overrides (a warning then: the
  public profile keeps the operators' rules whatever ``SEMAPHORE_PERMITS``
  or ``QUOTA_REQUESTS`` say);
- the database: the tables are created when missing, as the README
  promises. A database that refuses us (wrong user or password, no such
  database, a SQLite path that cannot be opened) stops the process with one
  line on stderr: every job would fail the same way. One that merely cannot
  be reached now is one warning: jobs wait out outages
  (:mod:`enrichment_actors.outages`).

Examples:
  >>> broker.add_middleware(StartupReport(lambda: runtime))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import dramatiq
import peewee

from middleware.redaction import redact, redact_url

from .overpass_endpoints import describe, overridden
from .store_errors import is_outage

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger(__name__)

#: Exit status of a worker process whose database refuses it.
DATABASE_REFUSED = 3


class StartupReport(dramatiq.Middleware):
    """Says each endpoint's limits and checks the database, once per worker process.

    Parameters:
      runtime: returns the runtime (its settings, endpoints and store).
      given: the names of the settings the user set (default: those in the environment).
    """

    def __init__(
        self, runtime: Callable[[], Runtime], given: Callable[[], Collection[str]] | None = None
    ) -> None:
        self.runtime = runtime
        self.given = given or _set_in_environment
        self._done_in: int | None = None

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._done_in == os.getpid():
            return
        self._done_in = os.getpid()
        runtime = self.runtime()
        report_endpoints(runtime, self.given())
        check_database(runtime)


def report_endpoints(runtime: Runtime, given: Collection[str]) -> None:
    """One line per endpoint: profile and limits, and (a warning) the user's settings the profile overrides."""
    settings = runtime.settings.endpoint_settings()
    for endpoint in runtime.endpoints:
        line = f"Overpass endpoint {describe([endpoint])}"
        overrides = overridden(endpoint, settings, given)
        if overrides:
            logger.warning(
                "%s; the public profile overrides your %s (the operators' rules, docs/architecture.md, "
                "'Endpoint profiles').",
                line,
                ", ".join(overrides),
            )
        else:
            logger.info("%s.", line)


def check_database(runtime: Runtime) -> None:
    """Create the tables; a database that refuses us ends the process (one line), one out of reach is a warning."""
    url = runtime.settings.database_url
    try:
        runtime.store().ensure_schema()
    except peewee.PeeweeException as exc:
        reason = redact(" ".join(str(exc).split()), url)
        if is_outage(exc):
            logger.warning(
                "The database at %s cannot be reached at start (%s): the worker starts, jobs wait for it "
                "(up to OUTAGE_MAX_S), and the tables are created when it is back.",
                redact_url(url),
                reason,
            )
            return
        print(
            f"DatabaseRefused: the database at {redact_url(url)} refuses this worker ({reason}). "
            "Check the user, password and database name in DATABASE_URL.",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(DATABASE_REFUSED) from None


def _set_in_environment() -> set[str]:
    from .settings import TABLE

    return {row.env for row in TABLE if os.environ.get(row.env, "").strip()}

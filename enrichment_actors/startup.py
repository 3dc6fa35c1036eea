"""What a worker process says and checks when it starts, before its threads take a message.

:class:`StartupReport`, once per worker process (``before_worker_boot``):

- one line per Overpass endpoint: its profile, the limits in force, and any
  setting of the user's that the profile overrides (a warning then: the
  public profile keeps the operators' rules whatever ``SEMAPHORE_PERMITS``
  or ``QUOTA_REQUESTS`` say);
- today's quota counters, carried over from the policy name of an earlier
  release (:func:`carry_over_quota`), so that an upgrade does not reset the
  day's budget;
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

from enrichment_middleware.backends.base import Backend, BackendUnavailable, window_key
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.quota import _COUNTERS as QUOTA_COUNTERS
from enrichment_middleware.policy.quota import QuotaPolicy, window_bounds
from enrichment_middleware.redaction import redact, redact_url

from .overpass_endpoints import LEGACY_POLICY, describe, overridden
from .store_errors import is_outage

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger(__name__)

#: Exit status of a worker process whose database refuses it.
DATABASE_REFUSED = 4  # (3 is an unsafe Redis: redis_checks.EXIT_UNSAFE_REDIS)


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
        first = runtime.endpoint()
        try:
            carried = carry_over_quota(runtime.backend, LEGACY_POLICY, runtime.quota.policies[first.policy])
        except BackendUnavailable as exc:
            logger.warning(
                "Could not carry today's quota of %r over to %s: %s", LEGACY_POLICY, first.name, exc
            )
        else:
            if carried:
                logger.info(
                    "Carried today's quota counters (%s) over from %r to %r.",
                    ", ".join(f"{name} {value}" for name, value in carried.items()),
                    LEGACY_POLICY,
                    first.policy,
                )
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


def carry_over_quota(backend: Backend, old: str, quota: QuotaPolicy) -> dict[str, int]:
    """Copy the current window's counters of the quota named ``old`` to ``quota``'s, where it has none yet.

    Each counter is set only if absent (``SET NX``, with the old one's expiry),
    so workers starting together copy once between them, and a counter this
    release already counts is never overwritten; the old counters stay (a
    worker of the earlier release still running keeps counting there, what it
    counts after the copy is not carried). A backend that keeps nothing
    beyond its process (memory) has nothing to carry. Returns what was copied.
    """
    if not isinstance(backend, RedisBackend) or old == quota.name:
        return {}
    start, _ = window_bounds(backend.now(), quota.limits.window_s)
    copied = {}
    with backend.reachable():
        for name in QUOTA_COUNTERS:
            source = backend.key("counter", window_key(f"{quota.kind}:{old}", start, name))
            target = backend.key("counter", window_key(f"{quota.kind}:{quota.name}", start, name))
            value, ttl_ms = backend.client.get(source), backend.client.pttl(source)
            if value is None or ttl_ms <= 0:
                continue
            if backend.client.set(target, value, nx=True, px=ttl_ms):
                copied[name] = int(value)
    return copied


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

"""What a failed database call means: an outage to wait out, or a refusal to retry and then dead-letter.

PostgreSQL refused, gone, restarting or full of connections is an outage:
the job is not at fault and waits (:mod:`.outages`), however many times it
meets it. A refusal of the data or of the statement (a constraint, a bad
value, a missing table) comes back the same on every attempt: it is retried
``STORE_MAX_RETRIES`` times, then dead-lettered. So is a refusal of who we
are (an unknown role, a wrong password, no such database): a wrong
``DATABASE_URL`` must surface as errors, not as jobs quietly waiting a day.

Examples:
  >>> import psycopg2
  >>> is_outage(psycopg2.OperationalError("connection to server failed: Connection refused"))
  True
  >>> is_outage(psycopg2.OperationalError('connection to server failed: FATAL:  role "x" does not exist'))
  False
"""

from __future__ import annotations

import re

import peewee


class PersistenceError(Exception):
    """The database did not take the POIs. Transient: the store step is retried, Overpass is not called again."""


class DatabaseUnreachable(PersistenceError):
    """The database could not be reached (refused, lost, restarting, out of connections): an outage.

    The job waits for it, without counting a retry, for up to ``OUTAGE_MAX_S``.
    """


#: SQLSTATE classes and codes of a server that cannot serve us now, whatever we send:
#: connection exceptions (08), insufficient resources (53: too many clients, disk
#: full), operator intervention (57P01-57P03: shutting down, crashed, starting up).
_OUTAGE_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03")
#: serialization_failure, deadlock_detected.
_RUN_AGAIN_SQLSTATES = ("40001", "40P01")

#: libpq's texts, without a SQLSTATE, of a server that answered and refused who we are.
#: A server speaking another language (lc_messages) escapes them: such a refusal is
#: then taken for an outage, and shows in every deferral's warning.
_REFUSED_LOGIN = re.compile(
    r"authentication failed|does not exist|no pg_hba\.conf entry|permission denied|not permitted to log in",
    re.IGNORECASE,
)


def is_outage(error: BaseException) -> bool:
    """True when ``error`` (peewee's, or the driver's) says PostgreSQL cannot be reached now.

    The driver's error is the first psycopg2 error in the chain (peewee raises
    its own while handling it). Errors raised while connecting, or on a
    connection that broke, carry no SQLSTATE: they are outages unless the
    server's text refuses our login.
    """
    driver = _driver_error(error)
    if driver is None:
        # peewee's own "connection already closed", say, comes without a driver error.
        return isinstance(error, peewee.InterfaceError)
    code = sqlstate(driver)
    if code:
        return code.startswith(_OUTAGE_SQLSTATES)
    # By DB-API class name: the driver has no type stubs, and its errors subclass these.
    kinds = {cls.__name__ for cls in type(driver).__mro__}
    if "InterfaceError" in kinds:
        return True
    return "OperationalError" in kinds and not _REFUSED_LOGIN.search(str(driver))


def must_run_again(error: BaseException) -> bool:
    """True when PostgreSQL aborted the transaction so that another could go on (a deadlock, or a
    serialization failure): nothing was written, and running it again is the remedy."""
    return sqlstate(error) in _RUN_AGAIN_SQLSTATES


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of ``error`` (peewee's, or the driver's), if the server sent one."""
    driver = _driver_error(error)
    code = getattr(driver, "pgcode", None) if driver is not None else None
    return str(code) if code else None


def _driver_error(error: BaseException) -> BaseException | None:
    seen: BaseException | None = error
    while seen is not None:
        if type(seen).__module__.startswith("psycopg2"):
            return seen
        seen = seen.__context__
    return None


__all__ = ["DatabaseUnreachable", "PersistenceError", "is_outage", "must_run_again", "sqlstate"]

"""What the fetch does when Overpass says "slow down" (429) or "not you" (406, 403), for the whole fleet.

A **429** pauses the endpoint for every worker (a fleet-wide
:class:`~enrichment_middleware.policy.pause.PausePolicy`): at least
``RATE_LIMIT_PAUSE_S``, or until ``/api/status`` shows a free slot if that
is later. Of all the callers that meet a 429 at about the same time, only
the one whose ``pause()`` opened the pause reads ``/api/status``, once
(polling it under load makes things worse, gboeing/osmnx issue 1377): it
extends the pause with the answer and caps the fleet's permits at the
server's rate limit. The others read nothing. Every job that met the 429
is deferred to the pause end plus jitter (not a retry); the Pause
middleware defers the jobs that come later the same way, before any call.

A **406** (User-Agent refused) or **403** (forbidden: blocked, or not on
the instance's allow list) means every call will fail the same way: the
endpoint is **held** (no calls, jobs deferred and never dead-lettered)
with a fingerprint of the settings that failed (the URL and the
User-Agent, which carries the contact). A worker that boots with other
settings lifts the hold (:class:`HoldRelease`); so does
``enrichment release-hold``. Held on any endpoint, public or private:
the answer is about who we are, which waiting does not change.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping

import dramatiq

from enrichment_middleware.backends.base import BackendUnavailable
from enrichment_middleware.failpoints import failpoint
from enrichment_middleware.policy.pause import PausePolicy, pause_length

from .overpass_responses import OverpassError, Redirected, UserAgentRejected
from .overpass_status import SlotStatus, StatusUnavailable

logger = logging.getLogger(__name__)

#: The pause reason a 429 sets.
RATE_LIMITED = "rate_limited"
#: Hold reasons: a 406 (the User-Agent refused) and a 403 (we are refused).
USER_AGENT_REJECTED = "user_agent_rejected"
FORBIDDEN = "forbidden"
#: A 3xx: the URL is not where the server answers (usually http:// for https://), not followed.
REDIRECTED = "redirected"

__all__ = [
    "FORBIDDEN",
    "RATE_LIMITED",
    "REDIRECTED",
    "USER_AGENT_REJECTED",
    "HoldRelease",
    "hold_after_rejection",
    "pause_after_429",
    "refuses_us",
    "release_changed",
    "settings_fingerprint",
]


def settings_fingerprint(url: str, user_agent: str) -> str:
    """A short fingerprint of the settings an upstream judges us by: the URL and the User-Agent (with the contact).

    Examples:
      >>> settings_fingerprint("https://overpass-api.de/api/interpreter", "app/1 (ops@example.org)")
      '0f5c6dfc6e1b0c36'
    """
    digest = hashlib.sha256(f"{url}\n{user_agent}".encode()).hexdigest()
    return digest[:16]


def pause_after_429(
    policy: PausePolicy,
    *,
    pause_s: float,
    read_status: Callable[[], SlotStatus],
    cap_permits: Callable[[int], None],
    endpoint: str,
) -> float:
    """Pause ``endpoint`` for everyone after a 429; the seconds left of the pause (add jitter to defer a job).

    Only the caller that opened the pause calls ``read_status`` (once) and
    ``cap_permits`` (with the server's rate limit), and logs one warning with
    the pause it set. The others only learn when the pause ends.

    Parameters:
      policy: the endpoint's pause policy (shared by the fleet).
      pause_s: the shortest pause (``RATE_LIMIT_PAUSE_S``).
      read_status: reads ``/api/status``; raises :class:`StatusUnavailable`.
      cap_permits: caps the fleet's permits for the endpoint.
      endpoint: names the endpoint in the log.
    """
    opened, until = policy.extend(pause_s, RATE_LIMITED)
    if opened:
        try:
            status = read_status()
        except StatusUnavailable as exc:
            remaining = pause_length(pause_s, limits=policy.limits)
            logger.warning(
                "Overpass %s answered 429 (rate limited) and /api/status is unreadable (%s): every worker "
                "pauses %.0f s.",
                endpoint,
                exc,
                remaining,
            )
        else:
            failpoint("fetch.status_read")  # read, the pause not yet extended with it
            if status.rate_limit is not None:
                cap_permits(status.rate_limit)
            wanted = max(pause_s, status.seconds_until_free())
            if wanted > pause_s:
                policy.extend(wanted, RATE_LIMITED)
            # The pause this call set (its own length, as the policy bounds it).
            remaining = pause_length(wanted, limits=policy.limits)
            logger.warning(
                "Overpass %s answered 429 (rate limited): every worker pauses %.0f s (server rate limit %s, "
                "%s slots free).",
                endpoint,
                remaining,
                status.rate_limit if status.rate_limit is not None else "none",
                status.free_now,
            )
    else:
        remaining = _remaining(policy, until)
    return remaining


def _remaining(policy: PausePolicy, until: float) -> float:
    """Seconds left of a pause that ends at ``until`` (by the backend's clock)."""
    return max(0.0, until - policy.backend.now())


def refuses_us(error: OverpassError) -> str | None:
    """The hold reason when ``error`` says the endpoint refuses *us* (406: our User-Agent; 403: us; a 3xx:
    our URL), else None."""
    if isinstance(error, UserAgentRejected):
        return USER_AGENT_REJECTED
    if isinstance(error, Redirected):
        return REDIRECTED
    if error.status == 403:
        return FORBIDDEN
    return None


def hold_after_rejection(
    policy: PausePolicy, error: OverpassError, *, fingerprint: str, endpoint: str
) -> bool:
    """Hold ``endpoint`` for everyone after a 406 or 403; True when this call set the hold.

    Logs one error, when this call set the hold, saying what to do.
    """
    reason = refuses_us(error) or error.label
    held = policy.hold(reason, fingerprint)
    if held and isinstance(error, Redirected):
        logger.error(
            "Overpass %s redirected us (HTTP %s to %r): not followed, the endpoint is HELD for every worker "
            "and jobs wait. Set OVERPASS_URL to the address the server names (often https:// for http://), "
            "then restart the workers or run `enrichment release-hold %s`.",
            endpoint,
            error.status,
            error.location,
            endpoint,
        )
    elif held:
        logger.error(
            "Overpass %s refused us (HTTP %s, %s): every call would fail the same way, so the endpoint is HELD "
            "for every worker. No call is made and jobs wait (none is dropped). Set OVERPASS_CONTACT (or "
            "OVERPASS_USER_AGENT) to identify this deployment, or ask the instance's operators to allow us "
            "(a 403 may mean we are blocked or not on its allow list); then restart the workers (a worker "
            "that boots with other settings lifts the hold) or run `enrichment release-hold %s`. %s",
            endpoint,
            error.status,
            reason,
            endpoint,
            error,
        )
    return held


class HoldRelease(dramatiq.Middleware):
    """At worker boot, lift each endpoint's hold if it was set under other settings than this worker's.

    A worker started with the same settings leaves the hold alone: they would
    be refused the same way.

    Examples:
      >>> broker.add_middleware(HoldRelease(lambda: {name: (policy, fingerprint)}))  # doctest: +SKIP

    Parameters:
      endpoints: returns, per endpoint name, its pause policy and the
        fingerprint of this worker's settings for it.
    """

    def __init__(self, endpoints: Callable[[], Mapping[str, tuple[PausePolicy, str]]]) -> None:
        self.endpoints = endpoints

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        release_changed(self.endpoints())


def release_changed(endpoints: Mapping[str, tuple[PausePolicy, str]]) -> list[str]:
    """Lift the holds set under settings other than ``endpoints``' fingerprints; the names lifted."""
    lifted = []
    for name, (policy, fingerprint) in endpoints.items():
        try:
            released = policy.release_hold(fingerprint)
        except BackendUnavailable as exc:
            logger.warning(
                "Could not check whether %s is held (%s); a hold stays until the next boot.", name, exc
            )
            continue
        if released:
            lifted.append(name)
            logger.warning("Lifted the hold on Overpass %s: this worker runs with other settings.", name)
    return lifted

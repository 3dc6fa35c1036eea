"""Overpass endpoints and their profiles: the known public instances, and what each endpoint may do.

An endpoint is one interpreter URL. Its **profile** follows from its host:

- **public** for the instances listed in :data:`PUBLIC_INSTANCES` (and any
  host under them): the operators' rules apply (drolbr/Overpass-API issue
  791): one call in flight fleet-wide ("one user, one script"), calls paced
  so that what is left of the day's budgets lasts until midnight UTC, 10,000
  requests, 10^9 bytes and 300 server seconds a UTC day, and a contact in
  the User-Agent. The server time is the operators' yardstick since
  September 2026: "your fair share would be at around 300 CPU seconds" a
  day (gods-eye-view issue 648; arnis issue 1347). At 0.1 to 2 s a query
  that is roughly 150 to 3,000 calls a day, not 10,000.
  Only ``OVERPASS_PUBLIC_PERMITS_OVERRIDE`` raises the permits.
- **private** for any other URL (your own server): permits, pacing and
  budget as configured, no contact required.

``OVERPASS_PROFILE=public`` makes any URL public (the tests use it on
loopback); nothing makes a listed host private. Several endpoints are
allowed for private instances only: a public instance together with any
other endpoint would spread one user's load over several servers, which the
rules forbid.

Each endpoint has a name (its ``host[:port]``) and one policy name shared by
its quota, permits, breaker, pause and pacing: ``overpass@HOST[:PORT]``
(:func:`policy_name`). State is keyed by the endpoint, so a server's budget
is its own whatever else was configured before it: 24 calls to a private
server never show as used on overpass-api.de. Releases before named the
first endpoint's policy ``overpass`` (:data:`LEGACY_POLICY`); a worker that
starts carries today's quota counters over from it
(:func:`enrichment_actors.startup.carry_over_quota`), so an upgrade does not
reset the day's budget.

Everything here is pure: :func:`resolve_endpoints` turns setting values into
:class:`Endpoint` rows, or raises :class:`EndpointError` saying what to change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from enrichment_middleware.policy.quota import QuotaPolicy

#: The route of the Overpass actors (the router picks one of its endpoints), and the prefix of each policy name.
OVERPASS = "overpass"
#: The first endpoint's policy name in releases before policies were named by their endpoint.
LEGACY_POLICY = OVERPASS

#: The rule a public instance among several endpoints breaks (drolbr/Overpass-API issue 791).
ONE_USER_ONE_SCRIPT = (
    "no parallel running of scripts: one user, one script, not worked around with several servers "
    "or cloud workers (the overpass-api.de rules, drolbr/Overpass-API issue 791)"
)


@dataclass(frozen=True)
class PublicInstance:
    """A public Overpass instance: its host and what is known of it."""

    host: str
    note: str


#: The known public instances (2026). The one place the product lists them.
PUBLIC_INSTANCES: tuple[PublicInstance, ...] = (
    PublicInstance(
        "overpass-api.de", "the main instance; its rules are those of drolbr/Overpass-API issue 791"
    ),
    PublicInstance("lz4.overpass-api.de", "a mirror of overpass-api.de under the same rules"),
    PublicInstance("z.overpass-api.de", "a mirror of overpass-api.de under the same rules"),
    PublicInstance("overpass.kumi.systems", "often unresponsive"),
    PublicInstance("overpass.private.coffee", "public instance"),
    PublicInstance("overpass.osm.ch", "Swiss data only"),
    PublicInstance("overpass.openstreetmap.fr", "needs whitelisting: 403 otherwise"),
    PublicInstance("maps.mail.ru", "public instance"),
)

#: The public daily budget: the operators' figures, per UTC day.
PUBLIC_DAILY_REQUESTS = 10_000
PUBLIC_DAILY_BYTES = 1_000_000_000
#: The operators' fair share of server time a day (gods-eye-view issue 648), in seconds.
PUBLIC_DAILY_SERVER_S = 300.0
#: The server time a call is assumed to cost before any call of the window: a tile's POI query.
SERVER_S_PRIOR = 2.0
PUBLIC_WINDOW_S = 86_400
#: Calls in flight fleet-wide on a public instance ("one user, one script").
PUBLIC_PERMITS = 1
#: The operators ask for at least this pause after a 429.
PUBLIC_MIN_PAUSE_S = 30.0


class Profile(StrEnum):
    """How an endpoint is treated: by the public rules, or as configured."""

    PUBLIC = "public"
    PRIVATE = "private"


class EndpointError(ValueError):
    """The endpoint settings cannot be used; the message says which variable to change and why."""


@dataclass(frozen=True)
class Endpoint:
    """One Overpass interpreter and the limits the fleet keeps with it.

    Examples:
      >>> (endpoint,) = resolve_endpoints(EndpointSettings(urls=("https://overpass-api.de/api/interpreter",),
      ...     contact="ops@example.org"))
      >>> endpoint.name, endpoint.policy, endpoint.profile.value, endpoint.permits
      ('overpass-api.de', 'overpass@overpass-api.de', 'public', 1)

    Parameters:
      name: ``host[:port]`` of the URL (no credentials): how people name it
        (``enrichment status``, ``enrichment release-hold NAME``, logs).
      url: the interpreter URL (may carry credentials: never printed as is).
      policy: the policy name of its quota, semaphore, breaker, pause and pacing.
      profile: public or private.
      listed: whether the host is a known public instance (then the pause
        after a 429 is at least 30 s, whatever the profile setting).
      permits: calls in flight fleet-wide.
      quota_requests, quota_bytes, quota_window_s: the budget per window
        (below 0: unlimited).
      quota_server_s: server seconds per window (see :mod:`.server_time`).
      pacing_interval_s: seconds between call starts (0: off); with
        ``spread_budget``, the least interval.
      pacing_burst: calls that may start back to back after a quiet spell.
      spread_budget: the interval is what is left of the window spread over
        the calls the budgets left cover (each at its mean cost per call),
        never below ``pacing_interval_s``.
    """

    name: str
    url: str = dataclasses.field(repr=False)
    policy: str
    profile: Profile
    listed: bool
    permits: int
    quota_requests: int
    quota_bytes: int
    quota_window_s: int
    pacing_interval_s: float
    pacing_burst: int
    spread_budget: bool
    quota_server_s: float = PUBLIC_DAILY_SERVER_S

    @property
    def public(self) -> bool:
        return self.profile is Profile.PUBLIC


@dataclass(frozen=True)
class EndpointSettings:
    """The settings an endpoint's profile and limits come from (already parsed; see settings.py)."""

    urls: tuple[str, ...]
    profile: str = "auto"
    contact: str = ""
    public_permits_override: int | None = None
    permits: int = 2
    quota_requests: int = PUBLIC_DAILY_REQUESTS
    quota_bytes: int = PUBLIC_DAILY_BYTES
    quota_server_s: float = PUBLIC_DAILY_SERVER_S
    quota_window_s: int = PUBLIC_WINDOW_S
    pacing_interval_s: float = 0.0
    pacing_burst: int = 1
    pacing_min_interval_s: float = 1.0
    rate_limit_pause_s: float = PUBLIC_MIN_PAUSE_S


def listed_instance(host: str) -> PublicInstance | None:
    """The public instance ``host`` is (or is under), if any.

    Examples:
      >>> listed_instance("Overpass-API.de.").host
      'overpass-api.de'
      >>> listed_instance("gall.overpass-api.de").host
      'overpass-api.de'
      >>> listed_instance("overpass.example.org") is None
      True
    """
    host = host.lower().rstrip(".")
    for instance in PUBLIC_INSTANCES:
        if host == instance.host or host.endswith("." + instance.host):
            return instance
    return None


def endpoint_name(url: str) -> str:
    """``host[:port]`` of ``url``, lower case, without credentials.

    Examples:
      >>> endpoint_name("https://user:secret@Overpass.Example.org:8443/api/interpreter")
      'overpass.example.org:8443'
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    return host if parts.port is None else f"{host}:{parts.port}"


def policy_name(name: str) -> str:
    """The policy name of the endpoint named ``name`` (its ``host[:port]``): its state's key, its metric label.

    Examples:
      >>> policy_name("overpass-api.de"), policy_name("10.0.0.5:8080")
      ('overpass@overpass-api.de', 'overpass@10.0.0.5:8080')
    """
    return f"{OVERPASS}@{name}"


def profile_of(url: str, setting: str = "auto") -> Profile:
    """The profile of ``url`` under ``OVERPASS_PROFILE=setting``: public if listed or forced, else private."""
    if setting == Profile.PUBLIC or listed_instance(urlsplit(url).hostname or "") is not None:
        return Profile.PUBLIC
    return Profile.PRIVATE


def resolve_endpoints(settings: EndpointSettings) -> tuple[Endpoint, ...]:
    """The endpoints ``settings`` describe, with their profiles and limits.

    Raises:
      EndpointError: names not unique, a public instance among several
        endpoints (quoting the rule), or a pause after a 429 shorter than the
        operators of a listed instance ask. (A missing contact is refused by
        :func:`require_contact`, when workers start.)
    """
    s = settings
    if not s.urls:
        raise EndpointError(
            "OVERPASS_URL is empty: give one interpreter URL, or several separated by commas."
        )
    names = [endpoint_name(url) for url in s.urls]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise EndpointError(
            f"OVERPASS_URL names {', '.join(duplicates)} more than once: each endpoint is named by its "
            "host[:port], and each keeps its own budget, permits and breaker. List each server once."
        )
    profiles = [profile_of(url, s.profile) for url in s.urls]
    if len(s.urls) > 1 and Profile.PUBLIC in profiles:
        public = [name for name, profile in zip(names, profiles, strict=True) if profile is Profile.PUBLIC]
        raise EndpointError(
            f"OVERPASS_URL lists {len(s.urls)} endpoints, {', '.join(public)} public: a public instance must "
            f"be the only endpoint. The rule: {ONE_USER_ONE_SCRIPT}. Use one public instance, or only your "
            "own servers (and leave OVERPASS_PROFILE at auto)."
        )
    endpoints = []
    for url, name, profile in zip(s.urls, names, profiles, strict=True):
        listed = listed_instance(urlsplit(url).hostname or "") is not None
        policy = policy_name(name)
        if profile is Profile.PUBLIC:
            endpoints.append(_public(s, url, name, policy, listed))
        else:
            endpoints.append(
                Endpoint(
                    name=name,
                    url=url,
                    policy=policy,
                    profile=profile,
                    listed=False,
                    permits=s.permits,
                    quota_requests=s.quota_requests,
                    quota_bytes=s.quota_bytes,
                    quota_server_s=s.quota_server_s,
                    quota_window_s=s.quota_window_s,
                    pacing_interval_s=s.pacing_interval_s,
                    pacing_burst=s.pacing_burst,
                    spread_budget=False,
                )
            )
    return tuple(endpoints)


def require_contact(endpoints: Sequence[Endpoint], contact: str) -> None:
    """Refuse (EndpointError) to call a public endpoint without a contact: the message names the variable and why."""
    for endpoint in endpoints:
        if endpoint.public and not contact.strip():
            why = "a public Overpass instance" if endpoint.listed else "public (OVERPASS_PROFILE=public)"
            raise EndpointError(
                f"OVERPASS_CONTACT is not set, and {endpoint.name} is {why}: its operators block scripts "
                "whose User-Agent does not identify them (a stock or shared User-Agent gets HTTP 406, and "
                "the fleet would be held). Set OVERPASS_CONTACT to an e-mail address or URL where they can "
                "reach whoever runs this deployment; workers do not start without it."
            )


def _public(s: EndpointSettings, url: str, name: str, policy: str, listed: bool) -> Endpoint:
    if listed and s.rate_limit_pause_s < PUBLIC_MIN_PAUSE_S:
        raise EndpointError(
            f"RATE_LIMIT_PAUSE_S={s.rate_limit_pause_s:g} is below {PUBLIC_MIN_PAUSE_S:g}: the operators of "
            f"{name} ask every client to wait at least 30 s after a 429. Leave it at 30 or more."
        )
    # The budget is a UTC day, and never more than the operators' figures;
    # a smaller configured budget is kept (it is the deployment's own choice).
    return Endpoint(
        name=name,
        url=url,
        policy=policy,
        profile=Profile.PUBLIC,
        listed=listed,
        permits=s.public_permits_override or PUBLIC_PERMITS,
        quota_requests=_at_most(s.quota_requests, PUBLIC_DAILY_REQUESTS),
        quota_bytes=_at_most(s.quota_bytes, PUBLIC_DAILY_BYTES),
        quota_server_s=PUBLIC_DAILY_SERVER_S
        if s.quota_server_s < 0
        else min(s.quota_server_s, PUBLIC_DAILY_SERVER_S),
        quota_window_s=PUBLIC_WINDOW_S,
        # A PACING_INTERVAL_S replaces the spread budget; either way never
        # faster than PACING_MIN_INTERVAL_S, and strictly one call per interval.
        pacing_interval_s=max(s.pacing_min_interval_s, s.pacing_interval_s),
        pacing_burst=1,
        spread_budget=s.pacing_interval_s == 0,
    )


def _at_most(configured: int, ceiling: int) -> int:
    """``configured`` if it is a limit below ``ceiling``, else ``ceiling`` (below 0 means unlimited)."""
    return ceiling if configured < 0 else min(configured, ceiling)


def spread_interval(*, window_end: float, now: float, calls_left: int | None, floor_s: float) -> float:
    """The pacing interval that makes ``calls_left`` last until ``window_end``: never below ``floor_s``.

    ``calls_left`` is what every budget left still covers, each at its mean
    cost per call (:attr:`~enrichment_middleware.policy.quota.QuotaUsage.calls_left`):
    on the public profile the server time usually binds, not the requests.

    Examples:
      >>> spread_interval(window_end=86_400.0, now=0.0, calls_left=10_000, floor_s=1.0)  # a fresh day
      8.64
      >>> spread_interval(window_end=86_400.0, now=0.0, calls_left=150, floor_s=1.0)  # 300 s at 2 s a call
      576.0
      >>> spread_interval(window_end=86_400.0, now=86_000.0, calls_left=10_000, floor_s=1.0)
      1.0
      >>> spread_interval(window_end=86_400.0, now=43_200.0, calls_left=0, floor_s=1.0)
      1.0

    With nothing left (or no limit) the floor: the quota then defers the jobs
    to the next window; an interval of the rest of the day would make every
    waiting job reserve a slot a day after the one before.
    """
    if not calls_left:
        return floor_s
    left_s = max(0.0, window_end - now)
    interval = left_s / calls_left
    return max(floor_s, interval) if math.isfinite(interval) else floor_s


def budget_spread(policy: QuotaPolicy, endpoint: Endpoint) -> Callable[[], float]:
    """The public pacing interval: what is left of the quota's window over the calls its budgets
    left cover (requests, bytes and server time, each at its mean per call).

    So the day's budget lasts until midnight UTC; never below the endpoint's
    least interval (``PACING_MIN_INTERVAL_S``). Two reads per decision (this
    is the one function here that reads shared state: each time it is called).
    """

    def interval() -> float:
        usage = policy.usage()
        return spread_interval(
            window_end=usage.window_end,
            now=policy.backend.now(),
            calls_left=usage.calls_left,
            floor_s=endpoint.pacing_interval_s,
        )

    return interval


def describe(endpoints: Sequence[Endpoint]) -> str:
    """One line per endpoint: name, profile, permits, pacing and budget (for logs and status)."""
    lines = []
    for e in endpoints:
        pacing = (
            f"paced to last the day (at least {e.pacing_interval_s:g} s apart)"
            if e.spread_budget
            else (f"{e.pacing_interval_s:g} s apart" if e.pacing_interval_s else "not paced")
        )
        lines.append(
            f"{e.name} ({e.profile.value}): {e.permits} in flight, {pacing}, "
            f"{_limit(e.quota_requests)} requests, {_limit(e.quota_bytes)} bytes and "
            f"{e.quota_server_s:g} server seconds per {e.quota_window_s} s"
        )
    return "\n".join(lines)


def overridden(endpoint: Endpoint, settings: EndpointSettings, given: Collection[str]) -> list[str]:
    """The user's settings (``given``: the variables set) that ``endpoint``'s profile does not keep, and why.

    Examples:
      >>> s = EndpointSettings(urls=("https://overpass-api.de/api/interpreter",), contact="ops@example.org",
      ...     permits=4, quota_requests=50_000)
      >>> overridden(resolve_endpoints(s)[0], s, {"SEMAPHORE_PERMITS", "QUOTA_REQUESTS"})
      ['SEMAPHORE_PERMITS=4 (public: 1; only OVERPASS_PUBLIC_PERMITS_OVERRIDE raises it)', 'QUOTA_REQUESTS=50000 (public: at most 10,000)']
    """
    if not endpoint.public:
        return []
    e, s = endpoint, settings
    checks = (
        ("SEMAPHORE_PERMITS", s.permits, e.permits, "; only OVERPASS_PUBLIC_PERMITS_OVERRIDE raises it"),
        ("QUOTA_REQUESTS", s.quota_requests, e.quota_requests, ""),
        ("QUOTA_BYTES", s.quota_bytes, e.quota_bytes, ""),
        ("QUOTA_WINDOW_S", s.quota_window_s, e.quota_window_s, " s: a UTC day"),
        ("PACING_BURST", s.pacing_burst, e.pacing_burst, ""),
        ("PACING_INTERVAL_S", s.pacing_interval_s, e.pacing_interval_s, " s: PACING_MIN_INTERVAL_S at least"),
    )
    found = []
    for name, asked, kept, why in checks:
        if name not in given or asked == kept:
            continue
        if name in ("QUOTA_REQUESTS", "QUOTA_BYTES"):
            found.append(f"{name}={asked} (public: at most {_limit(int(kept))})")
        elif name == "PACING_INTERVAL_S" and not asked:
            continue  # 0: the spread budget, as asked
        else:
            found.append(f"{name}={asked:g} (public: {kept:g}{why})")
    return found


def _limit(value: int) -> str:
    return "unlimited" if value < 0 else f"{value:,}"

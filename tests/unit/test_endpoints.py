"""Endpoint profiles: the public list, the profile from the host, and each profile's limits."""

from __future__ import annotations

from typing import Any

import pytest

from enrichment_actors.overpass_endpoints import (
    PUBLIC_INSTANCES,
    SERVER_S_PRIOR,
    EndpointError,
    EndpointSettings,
    Profile,
    budget_spread,
    endpoint_name,
    listed_instance,
    overridden,
    profile_of,
    require_contact,
    resolve_endpoints,
    spread_interval,
)
from enrichment_middleware.backends.memory import MemoryBackend
from enrichment_middleware.policy.clock import ManualClock
from enrichment_middleware.policy.pacing import PacingLimits, PacingPolicy
from enrichment_middleware.policy.quota import QuotaLimits, QuotaPolicy

PUBLIC_URL = "https://overpass-api.de/api/interpreter"
OWN_URL = "http://overpass.internal.example:12345/api/interpreter"


@pytest.mark.parametrize(
    ("url", "setting", "profile"),
    [
        *[(f"https://{i.host}/api/interpreter", "auto", Profile.PUBLIC) for i in PUBLIC_INSTANCES],
        ("https://OVERPASS-API.DE./api/interpreter", "auto", Profile.PUBLIC),  # case, trailing dot
        ("https://gall.overpass-api.de/api/interpreter", "auto", Profile.PUBLIC),  # under a listed host
        ("http://user:pw@overpass-api.de:8080/api/interpreter", "auto", Profile.PUBLIC),
        ("https://overpass-api.de.example.org/api/interpreter", "auto", Profile.PRIVATE),  # not under it
        ("https://notoverpass-api.de/api/interpreter", "auto", Profile.PRIVATE),
        (OWN_URL, "auto", Profile.PRIVATE),
        ("http://127.0.0.1:9/api/interpreter", "auto", Profile.PRIVATE),
        ("http://127.0.0.1:9/api/interpreter", "public", Profile.PUBLIC),  # the tests' stand-in, made public
        (PUBLIC_URL, "public", Profile.PUBLIC),
    ],
)
def test_the_profile_follows_from_the_host(url: str, setting: str, profile: Profile) -> None:
    assert profile_of(url, setting) is profile


def test_the_public_list_is_the_issues_list_in_one_place() -> None:
    assert {i.host for i in PUBLIC_INSTANCES} == {
        "overpass-api.de",
        "lz4.overpass-api.de",
        "z.overpass-api.de",
        "overpass.kumi.systems",
        "overpass.private.coffee",
        "overpass.osm.ch",
        "overpass.openstreetmap.fr",
        "maps.mail.ru",
    }
    assert listed_instance("maps.mail.ru") is not None and listed_instance("mail.ru") is None


@pytest.mark.parametrize(
    ("url", "name"),
    [
        (PUBLIC_URL, "overpass-api.de"),
        ("https://user:secret@Overpass.Example.org:8443/api/interpreter", "overpass.example.org:8443"),
        ("http://127.0.0.1:9/api/interpreter", "127.0.0.1:9"),
        ("http://[::1]:9/api/interpreter", "[::1]:9"),
    ],
)
def test_an_endpoint_is_named_by_its_host_and_port_never_its_credentials(url: str, name: str) -> None:
    assert endpoint_name(url) == name


# (settings, expected fields of the only endpoint)
LIMITS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    # The public defaults: one call in flight, paced to last the day, the operators' daily budget.
    (
        {"urls": (PUBLIC_URL,)},
        {
            "profile": Profile.PUBLIC,
            "listed": True,
            "permits": 1,
            "quota_requests": 10_000,
            "quota_bytes": 10**9,
            "quota_server_s": 300.0,  # the operators' fair share (gods-eye-view issue 648)
            "quota_window_s": 86_400,
            "pacing_interval_s": 1.0,
            "pacing_burst": 1,
            "spread_budget": True,
        },
    ),
    # SEMAPHORE_PERMITS, a bigger budget or window, a burst: none applies to a public endpoint.
    (
        {
            "urls": (PUBLIC_URL,),
            "permits": 8,
            "quota_requests": 50_000,
            "quota_bytes": -1,
            "quota_server_s": 20_000.0,
            "quota_window_s": 3_600,
            "pacing_burst": 5,
        },
        {
            "permits": 1,
            "quota_requests": 10_000,
            "quota_bytes": 10**9,
            "quota_server_s": 300.0,
            "quota_window_s": 86_400,
            "pacing_burst": 1,
        },
    ),
    # A smaller budget is the deployment's own choice: kept.
    (
        {"urls": (PUBLIC_URL,), "quota_requests": 500, "quota_bytes": 10**6, "quota_server_s": 60.0},
        {"quota_requests": 500, "quota_bytes": 10**6, "quota_server_s": 60.0},
    ),
    (
        {"urls": (PUBLIC_URL,), "quota_server_s": -1.0},  # unlimited is not for a public endpoint
        {"quota_server_s": 300.0},
    ),
    # The override is the only way to raise the permits.
    ({"urls": (PUBLIC_URL,), "public_permits_override": 2}, {"permits": 2}),
    # A fixed interval replaces the spread budget, never below the floor.
    ({"urls": (PUBLIC_URL,), "pacing_interval_s": 5.0}, {"pacing_interval_s": 5.0, "spread_budget": False}),
    ({"urls": (PUBLIC_URL,), "pacing_interval_s": 0.2}, {"pacing_interval_s": 1.0, "spread_budget": False}),
    (
        {"urls": (PUBLIC_URL,), "pacing_min_interval_s": 3.0},
        {"pacing_interval_s": 3.0, "spread_budget": True},
    ),
    # Public by setting: the same limits, but not a listed instance.
    (
        {"urls": ("http://127.0.0.1:9/api/interpreter",), "profile": "public", "permits": 4},
        {"profile": Profile.PUBLIC, "listed": False, "permits": 1, "spread_budget": True},
    ),
    # Private: as configured; no pacing unless asked; the override is not for it.
    (
        {
            "urls": (OWN_URL,),
            "permits": 8,
            "public_permits_override": 3,
            "quota_requests": -1,
            "quota_bytes": -1,
            "quota_server_s": 50_000.0,
            "quota_window_s": 3_600,
        },
        {
            "profile": Profile.PRIVATE,
            "permits": 8,
            "quota_requests": -1,
            "quota_bytes": -1,
            "quota_server_s": 50_000.0,
            "quota_window_s": 3_600,
            "pacing_interval_s": 0.0,
            "spread_budget": False,
        },
    ),
    (
        {"urls": (OWN_URL,), "pacing_interval_s": 0.5, "pacing_burst": 3},
        {"pacing_interval_s": 0.5, "pacing_burst": 3},
    ),
]


@pytest.mark.parametrize(("settings", "expected"), LIMITS)
def test_each_profile_has_its_limits(settings: dict[str, Any], expected: dict[str, Any]) -> None:
    (endpoint,) = resolve_endpoints(EndpointSettings(**settings))
    assert {field: getattr(endpoint, field) for field in expected} == expected
    assert endpoint.policy == f"overpass@{endpoint.name}"  # state keyed by the endpoint, not the route


def test_several_private_endpoints_each_have_a_policy_of_their_own() -> None:
    urls = (
        "http://a.example/api/interpreter",
        "http://b.example:8080/api/interpreter",
        "https://c.example/api/interpreter",
    )
    endpoints = resolve_endpoints(EndpointSettings(urls=urls, permits=3))
    assert [(e.name, e.policy, e.profile, e.permits) for e in endpoints] == [
        ("a.example", "overpass@a.example", Profile.PRIVATE, 3),
        ("b.example:8080", "overpass@b.example:8080", Profile.PRIVATE, 3),
        ("c.example", "overpass@c.example", Profile.PRIVATE, 3),
    ]


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (
            {"urls": (PUBLIC_URL, OWN_URL)},
            ["one user, one script", "drolbr/Overpass-API issue 791", "overpass-api.de"],
        ),
        (
            {"urls": (OWN_URL, "http://other.example/api/interpreter"), "profile": "public"},
            ["one user, one script"],
        ),
        ({"urls": (OWN_URL, OWN_URL)}, ["more than once", "overpass.internal.example:12345"]),
        ({"urls": ()}, ["OVERPASS_URL"]),
        ({"urls": (PUBLIC_URL,), "rate_limit_pause_s": 29.0}, ["RATE_LIMIT_PAUSE_S", "30 s"]),
    ],
)
def test_unusable_endpoint_settings_are_refused_saying_what_to_change(
    settings: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(EndpointError) as raised:
        resolve_endpoints(EndpointSettings(**settings))
    assert all(word in str(raised.value) for word in words), str(raised.value)


@pytest.mark.parametrize(
    ("url", "profile", "contact", "refused"),
    [
        (PUBLIC_URL, "auto", "", True),
        (PUBLIC_URL, "auto", "ops@example.org", False),
        ("http://127.0.0.1:9/api/interpreter", "public", "", True),
        (OWN_URL, "auto", "", False),
    ],
)
def test_a_public_endpoint_needs_a_contact(url: str, profile: str, contact: str, refused: bool) -> None:
    endpoints = resolve_endpoints(EndpointSettings(urls=(url,), profile=profile))
    if not refused:
        require_contact(endpoints, contact)
        return
    with pytest.raises(EndpointError, match="OVERPASS_CONTACT is not set"):
        require_contact(endpoints, contact)


DAY = 86_400.0


@pytest.mark.parametrize(
    ("now", "requests_left", "floor", "interval"),
    [
        (0.0, 10_000, 1.0, 8.64),  # a fresh UTC day: the budget spread evenly
        (DAY / 2, 10_000, 1.0, 4.32),  # half the day gone, nothing spent
        (DAY / 2, 1_000, 1.0, 43.2),  # most of it spent early: slow down
        (DAY - 100.0, 10_000, 1.0, 1.0),  # the end of the day: never below the floor
        (DAY - 100.0, 10_000, 2.5, 2.5),
        (0.0, 1, 1.0, DAY),  # one request left: at the end of the day
        (DAY / 2, 0, 1.0, 1.0),  # spent: the quota defers, the pacing reserves no day-long slots
        (DAY / 2, None, 1.0, 1.0),  # unlimited
        (DAY + 5.0, 10, 1.0, 1.0),  # a window that already ended
    ],
)
def test_the_public_pacing_spreads_what_is_left_over_what_is_left_of_the_day(
    now: float, requests_left: int | None, floor: float, interval: float
) -> None:
    got = spread_interval(window_end=DAY, now=now, calls_left=requests_left, floor_s=floor)
    assert got == pytest.approx(interval)


MIDNIGHT = 1_700_006_400.0  # a UTC midnight


# -- the public pacing with its three budgets, on a manual clock -----------------------------------


def public_pacing(clock: ManualClock) -> tuple[QuotaPolicy, PacingPolicy]:
    """The public profile's quota (requests, bytes, server ms, prior 2 s) and its spread pacing."""
    (endpoint,) = resolve_endpoints(EndpointSettings(urls=(PUBLIC_URL,)))
    backend = MemoryBackend(clock=clock)
    limits = QuotaLimits(
        requests=endpoint.quota_requests,
        bytes=endpoint.quota_bytes,
        window_s=endpoint.quota_window_s,
        cost=round(endpoint.quota_server_s * 1000),
        cost_prior=round(SERVER_S_PRIOR * 1000),
    )
    quota = QuotaPolicy(endpoint.policy, limits, backend)
    pacing = PacingPolicy(
        endpoint.policy,
        PacingLimits(endpoint.pacing_interval_s),
        backend,
        interval=budget_spread(quota, endpoint),
    )
    return quota, pacing


@pytest.mark.parametrize(
    ("calls", "server_ms", "nbytes", "interval"),
    [
        pytest.param(0, 0, 0, DAY / 150, id="a fresh day: 300 s at the 2 s prior is 150 calls"),
        pytest.param(100, 10_000, 10**6, (DAY / 2) / 2900, id="cheap calls: 0.1 s each, 2,900 left"),
        pytest.param(100, 200_000, 10**6, (DAY / 2) / 50, id="heavy calls: 2 s each, 50 left"),
        pytest.param(100, 1_000, 9 * 10**8, (DAY / 2) / 11, id="bytes bind: 9 MB a call, 0.1 GB left"),
        pytest.param(9_999, 1_000, 0, DAY / 2, id="requests bind: one left"),
        pytest.param(100, 300_000, 0, 1.0, id="server time spent: the floor, the quota defers"),
    ],
)
def test_the_public_pacing_spreads_every_budget_at_its_mean_cost_over_the_rest_of_the_day(
    calls: int, server_ms: int, nbytes: int, interval: float
) -> None:
    clock = ManualClock(MIDNIGHT)
    quota, pacing = public_pacing(clock)
    for _ in range(calls):
        decision = quota.admit()
    if calls:
        quota.record_cost(server_ms, decision.window_start)
        quota.record_bytes(nbytes, decision.window_start)
    clock.set(MIDNIGHT + (DAY / 2 if calls else 0.0))
    assert pacing.interval_s() == pytest.approx(interval)
    reserved = pacing.reserve()
    assert reserved.admitted and reserved.interval_s == pytest.approx(interval)
    assert pacing.reserve().slot_at == pytest.approx(reserved.slot_at + interval)


def test_the_start_line_names_the_users_settings_the_public_profile_overrides() -> None:
    import doctest

    import enrichment_actors.overpass_endpoints

    s = EndpointSettings(
        urls=("https://overpass-api.de/api/interpreter",), contact="ops@example.org",
        permits=4, quota_requests=50_000, quota_bytes=500_000_000, pacing_burst=3,
    )  # fmt: skip
    (public,) = resolve_endpoints(s)
    given = {"SEMAPHORE_PERMITS", "QUOTA_REQUESTS", "QUOTA_BYTES", "PACING_BURST"}
    assert overridden(public, s, given) == [
        "SEMAPHORE_PERMITS=4 (public: 1; only OVERPASS_PUBLIC_PERMITS_OVERRIDE raises it)",
        "QUOTA_REQUESTS=50000 (public: at most 10,000)",
        "PACING_BURST=3 (public: 1)",
    ]  # a smaller byte budget is the deployment's own choice: kept
    assert overridden(public, s, set()) == []  # the defaults are nobody's choice
    private = EndpointSettings(urls=("http://10.0.0.5/api/interpreter",), permits=4, quota_requests=50_000)
    assert overridden(resolve_endpoints(private)[0], private, given) == []
    failed, attempted = doctest.testmod(enrichment_actors.overpass_endpoints, report=False)
    assert attempted and not failed

"""The router: a per-message policy (policy_for), each endpoint's readiness, and the pick per attempt."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker

from enrichment_actors.overpass_endpoints import Endpoint, EndpointSettings, resolve_endpoints
from enrichment_actors.routing import (
    ENDPOINT,
    POLICY_OPTIONS,
    EndpointReading,
    EndpointRouter,
    Readiness,
    choose,
    readiness,
)
from enrichment_middleware.attempt import deferral_of
from enrichment_middleware.backends import MemoryBackend
from enrichment_middleware.backends.base import BackendUnavailable
from enrichment_middleware.deferral import AdmissionDenied
from enrichment_middleware.policy.breaker import BreakerState, BreakerStatus
from enrichment_middleware.policy.clock import ManualClock
from enrichment_middleware.policy.pause import PauseStatus
from enrichment_middleware.policy.quota import QuotaLimits, QuotaUsage
from enrichment_middleware.quota import Quota

A, B, C = resolve_endpoints(
    EndpointSettings(
        urls=(
            "http://a.example/api/interpreter",
            "http://b.example/api/interpreter",
            "http://c.example/api/interpreter",
        )
    )
)
NOW = 1_000.0


# --- policy_for: a message option overrides the actor's ------------------------------------------


@pytest.mark.parametrize(
    ("actor_option", "message_option", "expected"),
    [
        ("one", None, "one"),  # no message option: the actor's
        ("one", "two", "two"),  # the message's overrides
        (None, "two", "two"),  # an actor without the option: the message's still applies
        (None, None, None),  # neither: no policy
        ("one", "gone", "one"),  # an unknown name (a message sent under other settings): the actor's
    ],
)
def test_a_message_option_overrides_the_actors_policy(
    actor_option: str | None, message_option: str | None, expected: str | None
) -> None:
    broker = StubBroker()
    quota = Quota(MemoryBackend(), {"one": QuotaLimits(requests=1), "two": QuotaLimits(requests=1)})
    broker.add_middleware(quota)
    options = {} if actor_option is None else {"quota": actor_option}

    @dramatiq.actor(broker=broker, **options)
    def job() -> None: ...

    message = job.message()
    if message_option is not None:
        message = message.copy(options={"quota": message_option})
    policy = quota.policy_for(broker, MessageProxy(message))
    assert (policy.name if policy is not None else None) == expected


def test_the_message_option_decides_the_admission_too() -> None:
    """The override is what admission uses: the second message goes to a quota of its own."""
    broker = StubBroker()
    backend = MemoryBackend(clock=ManualClock(start=NOW))
    quota = Quota(backend, {"one": QuotaLimits(requests=1), "two": QuotaLimits(requests=1)})
    broker.add_middleware(quota)

    @dramatiq.actor(broker=broker, quota="one")
    def job() -> None: ...

    quota.before_process_message(broker, MessageProxy(job.message()))
    with pytest.raises(AdmissionDenied):
        quota.before_process_message(broker, MessageProxy(job.message()))  # "one" is spent
    quota.before_process_message(broker, MessageProxy(job.message().copy(options={"quota": "two"})))
    assert quota.policies["two"].usage().requests_used == 1


# --- readiness: when an endpoint can take a call ------------------------------------------------------


def usage(requests_left: int, bytes_left: int = 100, window_end: float = 5_000.0) -> QuotaUsage:
    return QuotaUsage("q", 0.0, window_end, 10 - requests_left, 10, 1_000 - bytes_left, 1_000)


def pause(until: float | None = None, held: bool = False) -> PauseStatus:
    return PauseStatus(until, max(0.0, (until or NOW) - NOW), held, "x" if until or held else None, None)


@pytest.mark.parametrize(
    ("reading", "ready_at", "reason"),
    [
        (EndpointReading(None, None, None), NOW, None),
        (EndpointReading(pause(), BreakerState(), usage(5)), NOW, None),
        (EndpointReading(pause(held=True), None, None), math.inf, "held"),
        (EndpointReading(pause(until=NOW + 30), None, None), NOW + 30, "paused"),
        (EndpointReading(pause(until=NOW - 1), None, None), NOW, None),  # a pause that ended
        (
            EndpointReading(None, BreakerState(BreakerStatus.OPEN, open_until=NOW + 60), None),
            NOW + 60,
            "breaker_open",
        ),
        (
            EndpointReading(None, BreakerState(BreakerStatus.OPEN, open_until=NOW), None),
            NOW,
            None,
        ),  # due its probe
        (
            EndpointReading(None, BreakerState(BreakerStatus.HALF_OPEN, probe_expires=NOW + 9), None),
            NOW + 9,
            "probing",
        ),
        (EndpointReading(None, None, usage(0)), 5_000.0, "quota"),  # no request left
        (EndpointReading(None, None, usage(3, bytes_left=0)), 5_000.0, "quota"),  # no byte left
        # Several waits: the latest counts.
        (
            EndpointReading(
                pause(until=NOW + 30), BreakerState(BreakerStatus.OPEN, open_until=NOW + 60), None
            ),
            NOW + 60,
            "breaker_open",
        ),
        (EndpointReading(pause(held=True), None, usage(0)), math.inf, "held"),
    ],
)
def test_readiness_is_the_latest_of_what_the_endpoint_waits_for(
    reading: EndpointReading, ready_at: float, reason: str | None
) -> None:
    got = readiness(A, reading, NOW)
    assert (got.ready_at, got.reason) == (ready_at, reason)


# --- choose: which endpoint an attempt goes to ---------------------------------------------------------


def at(endpoint: Endpoint, when: float) -> Readiness:
    return Readiness(endpoint, when, None if when <= NOW else "x")


@pytest.mark.parametrize(
    ("candidates", "previous", "allowed"),
    [
        ([at(A, NOW), at(B, NOW)], "b.example", {"b.example"}),  # sticky: keeps its pacing slot there
        ([at(A, NOW), at(B, NOW + 5)], "b.example", {"a.example"}),  # the previous one is not ready: move
        ([at(A, NOW + 5), at(B, NOW), at(C, NOW)], None, {"b.example", "c.example"}),  # any ready one
        ([at(A, NOW + 50), at(B, NOW + 5), at(C, math.inf)], None, {"b.example"}),  # none ready: the soonest
        ([at(A, math.inf), at(B, math.inf)], "b.example", {"a.example"}),  # all held: the first
        ([at(A, NOW + 5), at(B, NOW + 5)], None, {"a.example"}),  # ties: the configured order
    ],
)
def test_an_attempt_goes_to_a_ready_endpoint_else_the_least_bad(
    candidates: list[Readiness], previous: str | None, allowed: set[str]
) -> None:
    picks = {
        choose(candidates, now=NOW, previous=previous, rng=random.Random(seed)).endpoint.name
        for seed in range(40)
    }
    assert picks == allowed


# --- the middleware --------------------------------------------------------------------------------------


class Fleet:
    """Three endpoints whose state a test sets; the router reads it."""

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.readings: dict[str, EndpointReading] = {
            e.name: EndpointReading(None, None, None) for e in endpoints
        }
        self.reads = 0
        self.down = False

    def read(self, endpoint: Endpoint) -> EndpointReading:
        if self.down:
            raise BackendUnavailable("state store down")
        self.reads += 1
        return self.readings[endpoint.name]


@pytest.fixture
def rig() -> Iterator[tuple[StubBroker, Fleet, Any]]:
    broker = StubBroker()
    fleet = Fleet((A, B, C))
    broker.add_middleware(
        EndpointRouter({"overpass": (A, B, C)}, read=fleet.read, now=lambda: NOW, rng=random.Random(1))
    )

    @dramatiq.actor(broker=broker, route="overpass")
    def fetch() -> None: ...

    @dramatiq.actor(broker=broker)
    def other() -> None: ...

    yield broker, fleet, (fetch, other)


def route(broker: StubBroker, message: dramatiq.Message[Any]) -> dict[str, Any]:
    proxy = MessageProxy(message)
    broker.emit_before("process_message", proxy)
    return dict(proxy.options)


def test_the_router_names_the_endpoint_and_its_policy_for_every_limiting_middleware(rig: Any) -> None:
    broker, fleet, (fetch, other) = rig
    fleet.readings["a.example"] = EndpointReading(pause(held=True), None, None)
    fleet.readings["c.example"] = EndpointReading(
        None, BreakerState(BreakerStatus.OPEN, open_until=NOW + 60), None
    )
    options = route(broker, fetch.message())
    assert options[ENDPOINT] == "b.example"
    assert {options[o] for o in POLICY_OPTIONS} == {B.policy} and set(POLICY_OPTIONS) <= set(options)
    assert route(broker, other.message()) == {}  # an actor without route= is left alone


def test_the_router_moves_a_message_off_an_endpoint_that_opened_its_circuit(rig: Any) -> None:
    broker, fleet, (fetch, _) = rig
    message = fetch.message().copy(options={ENDPOINT: "c.example", "rate": C.policy, "pacing_slot": {"x": 1}})
    assert route(broker, message)[ENDPOINT] == "c.example"  # still ready: stays
    fleet.readings["c.example"] = EndpointReading(
        None, BreakerState(BreakerStatus.OPEN, open_until=NOW + 60), None
    )
    options = route(broker, message)
    assert options[ENDPOINT] in {"a.example", "b.example"} and options["rate"] != C.policy


def test_with_every_endpoint_unready_the_router_picks_the_soonest_for_the_middlewares_to_defer(
    rig: Any,
) -> None:
    broker, fleet, (fetch, _) = rig
    fleet.readings = {
        "a.example": EndpointReading(pause(until=NOW + 90), None, None),
        "b.example": EndpointReading(None, None, usage(0, window_end=NOW + 500)),
        "c.example": EndpointReading(pause(until=NOW + 20), None, None),
    }
    assert route(broker, fetch.message())[ENDPOINT] == "c.example"


def test_an_unreadable_state_keeps_the_previous_endpoint(rig: Any) -> None:
    broker, fleet, (fetch, _) = rig
    fleet.down = True
    assert route(broker, fetch.message().copy(options={ENDPOINT: "b.example"}))[ENDPOINT] == "b.example"
    assert route(broker, fetch.message())[ENDPOINT] == "a.example"


@pytest.mark.parametrize(
    ("reason", "delay_s", "others", "rerouted"),
    [
        ("circuit_open", 60.0, "ready", True),  # its circuit opened while it waited for a permit there
        ("quota_exhausted", 3_600.0, "ready", True),
        ("paused", 30.0, "ready", True),
        ("held", 60.0, "ready", True),
        ("rate_limited", 30.0, "ready", True),  # the call met a 429
        ("circuit_open", 60.0, "unready", False),  # nowhere better: it waits for its own
        ("paced", 8.0, "ready", False),  # its reserved slot: hopping between paced endpoints would spin
        ("no_permit", 0.8, "ready", False),
        ("circuit_open", 0.3, "ready", False),  # back soon anyway
    ],
)
def test_a_job_deferred_for_its_endpoints_sake_comes_back_at_once_when_another_is_ready(
    rig: Any, reason: str, delay_s: float, others: str, rerouted: bool
) -> None:
    broker, fleet, (fetch, _) = rig
    router = next(m for m in broker.middleware if isinstance(m, EndpointRouter))
    if others == "unready":
        for name in ("b.example", "c.example"):
            fleet.readings[name] = EndpointReading(pause(until=NOW + 90), None, None)
    # Its own endpoint is no longer ready (whatever the reason, the router reads the same state).
    fleet.readings["a.example"] = EndpointReading(
        None, BreakerState(BreakerStatus.OPEN, open_until=NOW + 60), None
    )
    message = fetch.message().copy(options={ENDPOINT: "a.example"})
    proxy = MessageProxy(message)
    deferral = AdmissionDenied(delay_s, reason)
    router.after_process_message(broker, proxy, exception=deferral)
    # What Retries puts it back with: the attempt's word, else the deferral's own; the deferral unchanged.
    assert (deferral.delay_s, deferral.delay) == (delay_s, int(delay_s * 1000))
    if rerouted:
        assert deferral_of(proxy, deferral) <= 0.5
        assert route(broker, message)[ENDPOINT] in {"b.example", "c.example"}  # where it goes next
    else:
        assert deferral_of(proxy, deferral) == delay_s


def test_one_endpoint_is_routed_without_a_read() -> None:
    (only,) = resolve_endpoints(EndpointSettings(urls=("http://a.example/api/interpreter",)))
    broker = StubBroker()
    fleet = Fleet((only,))
    broker.add_middleware(EndpointRouter({"overpass": (only,)}, read=fleet.read, now=lambda: NOW))

    @dramatiq.actor(broker=broker, route="overpass")
    def fetch() -> None: ...

    options = route(broker, fetch.message())
    assert options[ENDPOINT] == "a.example" and options["quota"] == "overpass@a.example"
    assert fleet.reads == 0


def test_an_actor_asking_for_an_unknown_route_is_refused() -> None:
    broker = StubBroker()
    broker.add_middleware(EndpointRouter({"overpass": (A,)}, read=Fleet((A,)).read, now=lambda: NOW))
    with pytest.raises(ValueError, match="no such route"):

        @dramatiq.actor(broker=broker, route="elsewhere")
        def fetch() -> None: ...


def test_the_product_routes_first_then_pause_permit_breaker_pacing_quota() -> None:
    """The runtime's order (docs/architecture.md, "Admission")."""
    from enrichment_actors.runtime import build_runtime
    from enrichment_actors.settings import load_settings
    from enrichment_middleware.breaker import CircuitBreaker
    from enrichment_middleware.pacing import Pacing
    from enrichment_middleware.pause import Pause
    from enrichment_middleware.semaphore import ConcurrencySemaphore

    urls = "http://a.example/api/interpreter,http://b.example/api/interpreter"
    runtime = build_runtime(
        load_settings({"BROKER": "stub", "STATE_BACKEND": "memory", "OVERPASS_URL": urls})
    )
    kinds = (EndpointRouter, Pause, ConcurrencySemaphore, CircuitBreaker, Pacing, Quota)
    order = [type(m) for m in runtime.broker.middleware if isinstance(m, kinds)]
    assert order == list(kinds)
    # Each endpoint has a policy of its own in every limiting middleware, and a client of its own.
    for middleware in (runtime.pause, runtime.semaphore, runtime.breaker, runtime.pacing, runtime.quota):
        assert sorted(middleware.policies) == ["overpass@a.example", "overpass@b.example"]
    assert runtime.client("b.example").interpreter_url == "http://b.example/api/interpreter"
    assert runtime.client() is runtime.client("a.example") is runtime.client("overpass@a.example")
    assert runtime.client("overpass@b.example") is runtime.client("b.example")

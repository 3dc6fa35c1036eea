"""The fair room (Backend rooms, FairPolicy): seats by lane weight, the same on memory and Redis.

Every test runs on memory and one Redis; one runs the room's whole round on
every topology (one Redis, a Cluster, Sentinel), where its keys' hash tag
and the per-window calls key it names in Lua must hold.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter

import pytest

from enrichment_middleware.backends import Backend, MemoryBackend
from enrichment_middleware.backends.base import HandedSeat
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.clock import ManualClock
from enrichment_middleware.policy.fair import FairLimits, FairPolicy, Seat
from tests.support.contention import cpu_hog
from tests.unit.test_backends import NOW, Timed
from tests.unit.test_backends import timed as every_topology  # noqa: F401 (the contract's fixture)


@pytest.fixture(params=["memory", "redis"])
def timed(request: pytest.FixtureRequest) -> Timed:
    """Memory (a manual clock) and one Redis (real time)."""
    if request.param == "memory":
        clock = ManualClock(NOW)
        return Timed(MemoryBackend(clock=clock), clock.advance)
    return Timed(RedisBackend(request.getfixturevalue("redis_client")), time.sleep)


@pytest.fixture
def backend(timed: Timed) -> Backend:
    return timed.backend


def room(backend: Backend, seats: int = 1, **limits: object) -> FairPolicy:
    return FairPolicy("api", FairLimits(seats=seats, **limits), backend)  # type: ignore[arg-type]


def serve(policy: FairPolicy, first: Seat, rounds: int) -> list[str]:
    """Let each seated job leave at once, ``rounds`` times: the members in the order they got seats."""
    order: list[str] = []
    seats = [first]
    for _ in range(rounds):
        seat = seats.pop(0)
        handed = policy.leave(seat)
        for h in handed:
            order.append(h.member)
            arrived = policy.enter(h.lane, h.member, b"", token=h.token)
            assert arrived.status == "seated" and arrived.token == h.token
            seats.append(policy.seat_of(arrived, h.member))
        if not seats:
            break
    return order


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        # Equal weights: the lanes alternate, whatever the order the jobs came in.
        ({}, ["a1", "b0", "a2", "b1", "a3", "b2", "a4", "b3", "a5", "a6"]),
        # b weighs 4: four of b's for each of a's while both wait (a tie goes to the heavier lane).
        ({"b": 4.0}, ["b0", "b1", "b2", "b3", "a1", "a2", "a3", "a4", "a5", "a6"]),
        # a weighs 3 (a bulk import weighted up): b still gets one in four.
        ({"a": 3.0}, ["a1", "a2", "a3", "b0", "a4", "a5", "a6", "b1", "b2", "b3"]),
    ],
)
def test_seats_go_to_the_lanes_by_weight(
    backend: Backend,
    weights: dict[str, float],
    expected: list[str],
) -> None:
    policy = room(backend, weights=weights)
    first = policy.enter("a", "a0", b"a0")
    assert first.status == "seated"
    for i in range(1, 7):
        assert policy.enter("a", f"a{i}", f"a{i}".encode()).status == "waiting"
    for i in range(4):
        assert policy.enter("b", f"b{i}", f"b{i}".encode()).status == "waiting"
    assert policy.counts().waiting == {"a": 6, "b": 4}
    assert serve(policy, policy.seat_of(first, "a0"), 10) == expected
    assert policy.counts().waiting == {}


@pytest.mark.parametrize(("w_a", "w_b", "k"), [(1, 1, 5), (1, 4, 8), (2, 1, 3)])
def test_a_late_lane_gets_its_calls_among_the_first_by_weight(
    backend: Backend,
    w_a: int,
    w_b: int,
    k: int,
) -> None:
    """The issue's bound, on the room alone: B's k among the first ceil(k (wA + wB) / wB) + 2 after its send."""
    policy = room(backend, weights={"a": float(w_a), "b": float(w_b)})
    first = policy.enter("a", "a0", b"")
    for i in range(1, 60):
        policy.enter("a", f"a{i}", b"")
    seats = [policy.seat_of(first, "a0")]
    served = serve(policy, seats[0], 20)  # a's backlog runs alone a while
    assert all(member.startswith("a") for member in served)
    last = policy.seat_of(policy.enter("a", served[-1], b"", token=""), served[-1])
    for i in range(k):
        assert policy.enter("b", f"b{i}", b"").status == "waiting"
    after = serve(policy, last, 60)
    bound = math.ceil(k * (w_a + w_b) / w_b) + 2
    assert sum(member.startswith("b") for member in after[:bound]) == k, after[:bound]


def test_an_idle_lane_banks_no_credit(backend: Backend) -> None:
    policy = room(backend)
    first = policy.enter("b", "b0", b"")
    for i in range(1, 30):
        policy.enter("a", f"a{i}", b"")
    served = serve(policy, policy.seat_of(first, "b0"), 20)  # b waited for nothing: a alone
    assert served == [f"a{i}" for i in range(1, 21)]
    last = policy.seat_of(policy.enter("a", "a20", b"", token=""), "a20")
    for i in range(1, 6):
        policy.enter("b", f"b{i}", b"")
    # b comes back after 20 of a's: they alternate (a tie goes by lane name); no run of b's to make up.
    assert serve(policy, last, 6) == ["a21", "b1", "a22", "b2", "a23", "b3"]


def test_a_newcomer_waits_behind_the_waiting_even_with_a_seat_free(backend: Backend) -> None:
    policy = room(backend, seats=2)
    assert policy.enter("a", "a0", b"").status == "seated"
    assert policy.enter("a", "a1", b"").status == "seated"
    assert policy.enter("a", "a2", b"").status == "waiting"
    assert policy.try_seat("b0") is None  # someone waits: the small step refuses, the room decides
    assert policy.enter("b", "b0", b"").status == "waiting"


def test_the_small_step_seats_when_nobody_waits_and_renews_a_seat_it_holds(timed: Timed) -> None:
    policy = room(timed.backend, seats=1, seat_s=1.0)
    seat = policy.try_seat("m1")
    assert seat is not None
    assert policy.try_seat("m2") is None  # no seat free
    assert policy.try_seat("m1", token=seat.token) == seat  # its own: renewed
    assert policy.try_seat("m1", token="not its token") is None
    timed.advance(1.1)  # lapsed: free again
    assert policy.try_seat("m2") is not None


def test_a_job_handed_a_seat_that_never_arrives_waits_again_at_the_head_of_its_lane(timed: Timed) -> None:
    policy = room(timed.backend, handoff_s=1.0)
    first = policy.enter("a", "a0", b"p0")
    policy.enter("a", "a1", b"p1")
    policy.enter("a", "a2", b"p2")
    [handed] = policy.leave(policy.seat_of(first, "a0"))
    assert (handed.member, handed.payload) == ("a1", b"p1")
    timed.advance(1.1)  # its message was lost between the room and the broker
    [again] = policy.leave(None)  # a sweep
    assert (again.member, again.payload) == ("a1", b"p1") and again.token != handed.token
    # The late copy, holding the first token, finds the room holding the job: it is not needed.
    assert policy.enter("a", "a1", b"p1", token=handed.token).status == "present"
    assert policy.enter("a", "a1", b"p1", token=again.token).status == "seated"
    assert policy.counts().waiting == {"a": 1}


def test_a_seat_of_a_job_that_died_lapses_and_goes_on(timed: Timed) -> None:
    policy = room(timed.backend, seat_s=1.0)
    assert policy.enter("a", "a0", b"").status == "seated"  # its worker is killed
    policy.enter("a", "a1", b"p1")
    assert policy.leave(None) == []
    timed.advance(1.1)
    assert [h.member for h in policy.leave(None)] == ["a1"]
    assert policy.counts().seated == 1


def test_a_redelivered_copy_of_a_seated_job_takes_its_seat_over(backend: Backend) -> None:
    policy = room(backend)
    seated = policy.enter("a", "a0", b"")
    policy.enter("a", "a1", b"")
    # The broker gives a0 again (its worker lost its connection): the copy has no token.
    again = policy.enter("a", "a0", b"", token="")
    assert again.status == "seated" and again.token == seated.token
    assert policy.counts().seated == 1


def test_a_kept_seat_outlives_its_lease(timed: Timed) -> None:
    policy = room(timed.backend, seat_s=1.0)
    first = policy.enter("a", "a0", b"")
    seat = policy.seat_of(first, "a0")
    policy.enter("a", "a1", b"")
    assert policy.keep(seat, for_s=1.0)  # deferred a second: the seat is kept for it, plus seat_s
    timed.advance(1.5)
    assert policy.leave(None) == []
    assert policy.enter("a", "a0", b"", token=seat.token).status == "seated"


@pytest.mark.parametrize("lane", ["", "a\0b"])
def test_a_lane_must_be_a_name(lane: str) -> None:
    with pytest.raises(ValueError, match="lane"):
        room(MemoryBackend()).enter(lane, "m", b"")


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"seats": 0}, "seats"),
        ({"weights": {"a": 0.0}}, "weight of 'a'"),
        ({"default_weight": float("nan")}, "weight"),
        ({"handoff_s": 0.0}, "handoff_s"),
    ],
)
def test_unusable_limits_are_refused(limits: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FairLimits(**limits)  # type: ignore[arg-type]


def test_many_threads_and_a_cpu_hog_never_seat_more_than_the_seats_nor_lose_a_job(backend: Backend) -> None:
    """12 threads enter, leave and hand on seats for 3 lanes at once, with a CPU hog: every job is
    seated exactly once, never more than the seats at a time, and nobody is left waiting."""
    if isinstance(backend, MemoryBackend):
        backend = MemoryBackend()  # real time: leases must not lapse by a manual clock
    policy = room(backend, seats=2, weights={"a": 1.0, "b": 2.0, "c": 4.0})
    jobs = [(lane, f"{lane}{i}") for i in range(20) for lane in "abc"]
    pending: list[HandedSeat | tuple[str, str]] = list(jobs)
    lock = threading.Lock()
    seated: Counter[str] = Counter()
    in_room = [0]
    peak = [0]

    def run(seat: Seat) -> None:
        with lock:
            seated[seat.member] += 1
            in_room[0] += 1
            peak[0] = max(peak[0], in_room[0])
        with lock:
            in_room[0] -= 1
        for handed in policy.leave(seat):
            with lock:
                pending.append(handed)

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                job = pending.pop(0)
            if isinstance(job, HandedSeat):
                seating = policy.enter(job.lane, job.member, job.payload, token=job.token)
                member = job.member
            else:
                lane, member = job
                seating = policy.enter(lane, member, member.encode())
            for handed in seating.handed:
                with lock:
                    pending.append(handed)
            if seating.status == "seated":
                run(policy.seat_of(seating, member))

    with cpu_hog():
        threads = [threading.Thread(target=worker) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    while pending:  # what the last threads handed on as they stopped
        worker()
    assert set(seated) == {member for _, member in jobs}
    assert max(seated.values()) == 1
    assert peak[0] <= 2
    assert policy.counts() == type(policy.counts())(0, {})


def test_calls_are_counted_by_lane_when_a_seat_is_left_after_a_call(backend: Backend) -> None:
    policy = room(backend, seats=2, window_s=3600)
    maps = policy.enter("maps", "m0", b"")
    bulk = policy.enter("bulk", "b0", b"")
    policy.leave(policy.seat_of(maps, "m0"), called="maps")
    policy.leave(policy.seat_of(bulk, "b0"))  # its call was never made
    assert policy.counts().calls == {"maps": 1}
    again = policy.enter("maps", "m1", b"")
    policy.leave(policy.seat_of(again, "m1"), called="maps")
    assert policy.counts().calls == {"maps": 2}


def test_a_cap_counts_exactly_under_many_threads_and_a_cpu_hog(backend: Backend) -> None:
    policy = room(backend, caps={"refresh": 37}, window_s=3600)
    allowed: list[bool] = []
    lock = threading.Lock()

    def count() -> None:
        for _ in range(10):
            decision = policy.count_capped("refresh")
            assert decision is not None
            with lock:
                allowed.append(decision.allowed)

    with cpu_hog():
        threads = [threading.Thread(target=count) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert len(allowed) == 120 and sum(allowed) == 37
    assert policy.count_capped("maps") is None  # no cap of its own


def test_the_rooms_round_on_every_redis_topology(every_topology: Timed) -> None:  # noqa: F811
    """Enter, wait, leave with a call counted, a lost hand-on handed again, the counts: one Redis, a
    Cluster (every key of the room in one slot, the calls key named in Lua too) and Sentinel."""
    policy = room(every_topology.backend, seats=1, handoff_s=0.5, window_s=3600)
    first = policy.enter("maps", "m0", b"p0")
    assert policy.enter("bulk", "b0", b"p1").status == "waiting"
    [handed] = policy.leave(policy.seat_of(first, "m0"), called="maps")
    assert (handed.member, handed.payload) == ("b0", b"p1")
    every_topology.advance(0.6)  # its message never reached the broker
    [again] = policy.leave(None)
    assert again.member == "b0" and policy.try_seat("b0", token=again.token) is not None
    assert policy.counts() == type(policy.counts())(1, {}, {"maps": 1})

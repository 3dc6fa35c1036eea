"""What a review of the fair room (issue 22) found wrong, on the room alone, memory and Redis.

Each test asserts a documented guarantee and failed before its fix: a stale
copy ran beside the new one, a job that arrived through the one-step
admission was sent again when its seat lapsed, memory seated no newcomer
once a lane had been used, a lost hand-on cost its lane a turn, a keep
revived a lapsed seat, an unconfirmed enter left two copies.
"""

from __future__ import annotations

import pytest
import redis

from enrichment_middleware.backends import Backend, BackendUnavailable
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.fair import FairLimits, FairPolicy
from tests.unit import test_fair_room
from tests.unit.test_fair_room import Timed

#: The room's own fixture: memory (a manual clock) and one Redis (real time).
timed = test_fair_room.timed


def room(backend: Backend, **limits: object) -> FairPolicy:
    return FairPolicy("api", FairLimits(**limits), backend)  # type: ignore[arg-type]


# --- F-memory: memory's room_enter reads "queue empty" as "no lane was ever used" ---------------


def test_newcomer_is_seated_when_nobody_waits_after_a_lane_emptied(timed: Timed) -> None:
    """Rooms.room_enter: nobody waiting and a seat free -> 'seated' (Lua: ZCARD(queue) == 0)."""
    policy = room(timed.backend, seats=1)
    a0 = policy.enter("a", "a0", b"a0")
    assert policy.enter("a", "a1", b"a1").status == "waiting"
    (h,) = policy.leave(policy.seat_of(a0, "a0"))
    a1 = policy.enter("a", "a1", b"", token=h.token)
    assert policy.leave(policy.seat_of(a1, "a1")) == []
    assert policy.counts().waiting == {} and policy.counts().seated == 0
    b0 = policy.enter("b", "b0", b"b0")
    # memory: 'waiting', and b0 handed to itself (an extra delivery); Redis: 'seated'
    assert (b0.status, [s.member for s in b0.handed]) == ("seated", [])


# --- F-stale: a late copy of a hand-on that was handed again runs as well ------------------------


def test_a_late_copy_of_a_lapsed_hand_on_does_not_run_beside_the_new_one(timed: Timed) -> None:
    policy = room(timed.backend, seats=1, handoff_s=0.3, seat_s=30.0)
    a0 = policy.enter("a", "a0", b"a0")
    assert policy.enter("a", "j", b"payload of j").status == "waiting"
    (c1,) = policy.leave(policy.seat_of(a0, "a0"))  # copy C1 of j, token T1, is slow to arrive
    timed.advance(0.4)  # its hand-on lapses: j waits again at the head of its lane ...
    (c2,) = policy.leave(None)  # ... and the sweeper hands it again: copy C2, token T2
    assert c2.member == "j" and c2.token != c1.token
    arrived = policy.enter("a", "j", b"", token=c2.token)
    assert arrived.status == "seated"  # C2 runs
    late = policy.enter("a", "j", b"", token=c1.token)  # now C1 arrives (docs: 'present', it ends)
    assert late.status == "present", f"C1 with the stale token T1 got {late.status!r}: j runs twice"


def test_a_late_copy_arriving_after_the_new_one_left_is_not_run_again(timed: Timed) -> None:
    policy = room(timed.backend, seats=1, handoff_s=0.3, seat_s=30.0)
    a0 = policy.enter("a", "a0", b"a0")
    policy.enter("a", "j", b"payload of j")
    (c1,) = policy.leave(policy.seat_of(a0, "a0"))
    timed.advance(0.4)
    (c2,) = policy.leave(None)
    done = policy.enter("a", "j", b"", token=c2.token)  # C2 runs and finishes
    policy.leave(policy.seat_of(done, "j"), called="a")
    late = policy.enter("a", "j", b"C1's payload", token=c1.token)  # C1 arrives
    # Redis: 'seated' as a newcomer; memory: 'waiting' and handed to itself at once. Either way j runs again.
    assert late.status == "present" and not late.handed, (
        f"stale C1 -> {late.status}, handed {late.handed}: j runs twice"
    )


@pytest.mark.parametrize("early", [True, False], ids=["left-early", "left-finished"])
def test_the_redelivered_copy_of_a_job_that_left_early_runs(timed: Timed, early: bool) -> None:
    """j was handed a seat (token T), ran its call and left the room early (release_early), then its
    worker died before it handed its answer on: the broker redelivers the same copy, holding T. It is
    not stale: it runs again and finds its stage. Ending it lost the job. A job that left when it
    finished is done: a copy holding T then ends, as a stale one does."""
    policy = room(timed.backend, seats=1, handoff_s=0.3, seat_s=30.0)
    a0 = policy.enter("a", "a0", b"a0")
    policy.enter("a", "j", b"payload of j")
    (handed,) = policy.leave(policy.seat_of(a0, "a0"))
    arrived = policy.enter("a", "j", b"", token=handed.token)
    policy.leave(policy.seat_of(arrived, "j"), called="a", early=early)
    again = policy.enter("a", "j", b"payload of j", token=handed.token)  # the broker's redelivery
    if early:
        assert again.status != "present", "the redelivered copy ended as stale: the job is lost"
    else:
        assert again.status == "present" and not again.handed, f"a finished job's copy -> {again.status}"


# --- F-seat: a hand-on that arrives through room_seat stays 'handed, not arrived' ----------------


def test_a_job_that_arrived_through_the_small_step_is_not_handed_again_when_its_seat_lapses(
    timed: Timed,
) -> None:
    """The job arrived and ran (its worker killed, or its leave failed on a Redis blip): the
    seat lapses as a dead holder's does. It must not be re-sent from the room's payload."""
    policy = room(timed.backend, seats=1, seat_s=0.5, handoff_s=30.0)
    a0 = policy.enter("a", "a0", b"a0")
    policy.enter("a", "j", b"payload of j")
    (c1,) = policy.leave(policy.seat_of(a0, "a0"))
    seat = policy.try_seat("j", token=c1.token)  # the one-step admission's room_seat: j runs
    assert seat is not None
    timed.advance(0.6)  # j's worker is killed mid-call (or room_leave failed): the seat lapses
    again = policy.leave(None)  # the sweeper
    assert [h.member for h in again] == [], "the room sends j again, though j arrived and ran"


def test_same_through_room_enter_for_contrast(timed: Timed) -> None:
    policy = room(timed.backend, seats=1, seat_s=0.5, handoff_s=30.0)
    a0 = policy.enter("a", "a0", b"a0")
    policy.enter("a", "j", b"payload of j")
    (c1,) = policy.leave(policy.seat_of(a0, "a0"))
    assert policy.enter("a", "j", b"", token=c1.token).status == "seated"
    timed.advance(0.6)
    assert policy.leave(None) == []


# --- F-wait: room_enter under park_replicas: 'waiting' kept in the room AND put back -------------


def test_an_unconfirmed_waiting_enter_is_not_run_twice(redis_client: redis.Redis[bytes]) -> None:
    backend = RedisBackend(redis_client, park_replicas=1)  # no replica answers WAIT
    policy = room(backend, seats=1)
    a0 = policy.try_seat("a0")  # the small step: no WAIT (each unconfirmed one costs 2 s)
    assert a0 is not None
    with pytest.raises(BackendUnavailable):
        policy.enter("a", "j", b"payload of j")  # fair gate: AdmissionDenied, Retries puts j back
    # The room took j out again: it does not hand j on beside Retries' copy.
    assert policy.leave(a0) == []
    assert policy.counts().waiting == {}
    put_back = policy.try_seat("j")  # Retries' copy, 5 s later: it runs, once
    assert put_back is not None


# --- F-lapse: a lost hand-on costs its lane a turn (docs: "is handed the next seat") -------------


def test_a_lost_hand_on_is_handed_the_next_seat(timed: Timed) -> None:
    policy = room(timed.backend, seats=1, handoff_s=0.3)
    a0 = policy.enter("a", "a0", b"")
    for m in ("a1", "a2"):
        policy.enter("a", m, b"")
    for m in ("b1", "b2"):
        policy.enter("b", m, b"")
    (lost,) = policy.leave(policy.seat_of(a0, "a0"))
    assert lost.member == "a1"  # its copy never arrives
    timed.advance(0.4)
    (nxt,) = policy.leave(None)
    assert nxt.member == "a1", (
        f"the next seat went to {nxt.member}: lane a paid a stride for a seat it never used"
    )


# --- F-keep: room_keep revives a lapsed seat another job was given meanwhile -------------------


def test_keep_does_not_revive_a_lapsed_seat_given_away(timed: Timed) -> None:
    policy = room(timed.backend, seats=1, seat_s=0.5)
    j = policy.enter("a", "j", b"")
    timed.advance(0.6)  # j's call outlasted its lease (or a GC pause): lapsed, not yet swept
    k = policy.try_seat("k")  # the small step does not count a lapsed seat: k goes on (documented)
    assert k is not None
    kept = policy.keep(policy.seat_of(j, "j"), 10.0)  # j is deferred after its call: keeps its seat
    assert not kept and policy.counts().seated <= 1, f"keep={kept}, {policy.counts().seated} of 1 seats held"


# --- A second review: a later attempt's copy is not taken for a stale one -----------------------


def test_a_later_attempts_copy_is_not_taken_for_stale_when_its_kept_seat_lapsed(timed: Timed) -> None:
    """Attempt 1 leaves (a failure: a tombstone with its token); its retry is seated anew, deferred,
    and its kept seat lapses before its copy comes back: that copy must run, not end as stale."""
    policy = room(timed.backend, seats=1, seat_s=0.3)
    first = policy.enter("a", "j", b"j")
    policy.leave(policy.seat_of(first, "j"), called="a")  # attempt 1 failed after its call
    retry = policy.enter("a", "j", b"j")  # the retry, without a token: seated anew
    assert retry.status == "seated" and int(retry.token) > int(first.token)
    timed.advance(0.4)  # its keep failed (a Redis blip): the seat lapsed while it was parked
    back = policy.enter("a", "j", b"j", token=retry.token)
    assert back.status == "seated", f"the retry's own copy got {back.status!r}: the job would be lost"
    stale = policy.enter("a", "k", b"k", token=first.token)  # another member's old token: not stale
    assert stale.status in ("seated", "waiting")

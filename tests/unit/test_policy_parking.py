"""ParkingLot: deferred work comes due on time, claims lapse, done work is forgotten."""

from __future__ import annotations

import pytest

from middleware.backends import MemoryBackend
from middleware.policy.clock import ManualClock
from middleware.policy.parking import ParkingLot

T = 1_700_000_000.0


def test_parked_work_comes_due_at_its_time() -> None:
    clock = ManualClock(T)
    lot = ParkingLot(MemoryBackend(), clock=clock)
    lot.park("tomorrow", b"t", T + 86_400)
    lot.park("soon", b"s", T + 10)
    assert lot.count() == 2
    assert lot.claim_due() == []
    clock.advance(10)
    assert lot.claim_due() == [("soon", b"s")]
    lot.done("soon")
    clock.set(T + 86_400)
    assert lot.claim_due() == [("tomorrow", b"t")]


def test_a_claim_not_marked_done_comes_due_again_after_claim_s() -> None:
    clock = ManualClock(T)
    lot = ParkingLot(MemoryBackend(), claim_s=30.0, clock=clock)
    lot.park("m", b"payload", T)
    assert lot.claim_due() == [("m", b"payload")]
    clock.advance(29.9)
    assert lot.claim_due() == []
    clock.advance(0.1)
    assert lot.claim_due() == [("m", b"payload")]
    lot.done("m")
    clock.advance(30)
    assert lot.claim_due() == []
    assert lot.count() == 0


def test_claims_come_in_batches_of_at_most_limit() -> None:
    clock = ManualClock(T)
    lot = ParkingLot(MemoryBackend(), clock=clock)
    for n in range(5):
        lot.park(f"m{n}", b"", T - n)
    assert [member for member, _ in lot.claim_due(limit=2)] == ["m4", "m3"]
    assert [member for member, _ in lot.claim_due(limit=10)] == ["m2", "m1", "m0"]


def test_lots_with_different_keys_are_separate() -> None:
    backend = MemoryBackend()
    clock = ManualClock(T)
    ParkingLot(backend, key="quota", clock=clock).park("m", b"q", T)
    other = ParkingLot(backend, key="breaker", clock=clock)
    assert other.count() == 0
    assert other.claim_due() == []


def test_claim_s_must_be_positive() -> None:
    with pytest.raises(ValueError, match="claim_s must be positive"):
        ParkingLot(MemoryBackend(), claim_s=0)

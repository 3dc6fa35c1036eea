"""ParkingLot: deferred work comes due on time, claims lapse, done work is forgotten, a new parking survives an old claim."""

from __future__ import annotations

import logging

import pytest

from enrichment_middleware.backends import MemoryBackend
from enrichment_middleware.policy.clock import ManualClock
from enrichment_middleware.policy.parking import ParkingLot

T = 1_700_000_000.0


def lot_at(clock: ManualClock, **options: float) -> ParkingLot:
    return ParkingLot(MemoryBackend(clock=clock), **options)  # type: ignore[arg-type]


def members(lot: ParkingLot, limit: int = 100) -> list[tuple[str, bytes]]:
    return [(claim.member, claim.payload) for claim in lot.claim_due(limit)]


def test_parked_work_comes_due_at_its_time() -> None:
    clock = ManualClock(T)
    lot = lot_at(clock)
    lot.park("tomorrow", b"t", 86_400)
    lot.park("soon", b"s", 10)
    assert lot.count() == 2
    assert members(lot) == []
    clock.advance(10)
    [soon] = lot.claim_due()
    assert (soon.member, soon.payload) == ("soon", b"s")
    assert lot.done(soon) is True
    clock.set(T + 86_400)
    assert members(lot) == [("tomorrow", b"t")]


def test_a_negative_delay_is_due_at_once() -> None:
    lot = lot_at(ManualClock(T))
    lot.park("late", b"x", -5)
    assert members(lot) == [("late", b"x")]


def test_a_claim_not_marked_done_comes_due_again_after_claim_s() -> None:
    clock = ManualClock(T)
    lot = lot_at(clock, claim_s=30.0)
    lot.park("m", b"payload", 0)
    assert members(lot) == [("m", b"payload")]
    clock.advance(29.9)
    assert members(lot) == []
    clock.advance(0.1)
    [claim] = lot.claim_due()
    assert lot.done(claim) is True
    clock.advance(30)
    assert members(lot) == []
    assert lot.count() == 0


def test_done_with_an_old_claim_keeps_a_member_parked_again_since() -> None:
    """The race that lost messages: released, run, deferred again, then the old claim is cleared."""
    clock = ManualClock(T)
    lot = lot_at(clock)
    first_token = lot.park("m", b"first run", 0)
    [claim] = lot.claim_due()
    assert claim.token == first_token
    second_token = lot.park("m", b"second run", 5)
    assert second_token != first_token
    assert lot.done(claim) is False
    assert lot.count() == 1
    clock.advance(5)
    assert members(lot) == [("m", b"second run")]


def test_claims_come_in_batches_of_at_most_limit() -> None:
    clock = ManualClock(T)
    lot = lot_at(clock)
    for n in reversed(range(5)):  # m4 parked first, due first
        lot.park(f"m{n}", b"", 0)
        clock.advance(1)
    assert [member for member, _ in members(lot, limit=2)] == ["m4", "m3"]
    assert [member for member, _ in members(lot, limit=10)] == ["m2", "m1", "m0"]


def test_lots_with_different_keys_are_separate() -> None:
    backend = MemoryBackend(clock=ManualClock(T))
    ParkingLot(backend, key="quota").park("m", b"q", 0)
    other = ParkingLot(backend, key="breaker")
    assert other.count() == 0
    assert other.claim_due() == []


def test_a_member_without_payload_is_logged_by_name_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend(clock=ManualClock(T))
    lot = ParkingLot(backend)
    lot.park("lost-message", b"x", 0)
    lot.park("kept-message", b"y", 0)
    backend.lose_payload(lot.key, "lost-message")
    with caplog.at_level(logging.ERROR, logger="enrichment_middleware.policy.parking"):
        assert members(lot) == [("kept-message", b"y")]
    assert lot.orphans() == 1
    assert any("lost-message" in record.getMessage() for record in caplog.records)
    assert all(record.levelno == logging.ERROR for record in caplog.records)


def test_claim_s_must_be_positive() -> None:
    with pytest.raises(ValueError, match="claim_s must be positive"):
        ParkingLot(MemoryBackend(), claim_s=0)

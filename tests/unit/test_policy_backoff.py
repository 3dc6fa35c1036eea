"""Backoff and jitter stay inside their bounds for every attempt, however large."""

from __future__ import annotations

import random

import pytest

from enrichment_middleware.policy.backoff import exponential_backoff, jittered


@pytest.mark.parametrize(
    ("attempt", "base_s", "cap_s", "lowest", "highest"),
    [
        pytest.param(0, 1.0, 60.0, 1.0, 1.0, id="attempt 0 is the base"),
        pytest.param(1, 1.0, 60.0, 1.0, 2.0, id="attempt 1 doubles"),
        pytest.param(5, 1.0, 60.0, 1.0, 32.0, id="attempt 5"),
        pytest.param(6, 1.0, 60.0, 1.0, 60.0, id="attempt 6 reaches the cap"),
        pytest.param(1023, 1.0, 60.0, 1.0, 60.0, id="largest finite power"),
        pytest.param(1024, 1.0, 60.0, 1.0, 60.0, id="first overflowing power"),
        pytest.param(10**9, 1.0, 60.0, 1.0, 60.0, id="a billion"),
        pytest.param(2**200, 1e300, 1e301, 1e300, 1e301, id="huge base and attempt"),
        pytest.param(3, 10.0, 5.0, 5.0, 5.0, id="cap below base"),
        pytest.param(4, 0.0, 60.0, 0.0, 0.0, id="zero base"),
        pytest.param(4, 0.5, 0.5, 0.5, 0.5, id="base equals cap"),
    ],
)
def test_backoff_stays_within_its_bounds(
    attempt: int, base_s: float, cap_s: float, lowest: float, highest: float
) -> None:
    rng = random.Random(attempt)
    delays = [exponential_backoff(attempt, base_s=base_s, cap_s=cap_s, rng=rng) for _ in range(200)]
    assert all(lowest <= delay <= highest for delay in delays)
    if lowest < highest:  # full jitter: the whole range is used, not one end of it
        spread = highest - lowest
        assert min(delays) < lowest + spread / 4
        assert max(delays) > highest - spread / 4


def test_backoff_refuses_a_negative_attempt() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        exponential_backoff(-1, base_s=1.0, cap_s=60.0, rng=random.Random(0))


def test_backoff_refuses_negative_bounds() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        exponential_backoff(1, base_s=-1.0, cap_s=60.0, rng=random.Random(0))


@pytest.mark.parametrize(
    ("seconds", "jitter_s"),
    [
        pytest.param(30.0, 5.0, id="a delay"),
        pytest.param(1_700_000_000.0, 60.0, id="an epoch time"),
        pytest.param(10.0, 0.0, id="no jitter"),
    ],
)
def test_jitter_adds_between_nothing_and_jitter_s(seconds: float, jitter_s: float) -> None:
    rng = random.Random(7)
    values = [jittered(seconds, jitter_s=jitter_s, rng=rng) for _ in range(200)]
    assert all(seconds <= value <= seconds + jitter_s for value in values)
    if jitter_s:
        assert max(values) - min(values) > jitter_s / 2
    else:
        assert set(values) == {seconds}


def test_jitter_refuses_a_negative_amount() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        jittered(1.0, jitter_s=-1.0, rng=random.Random(0))

"""How long to wait before trying again: capped exponential backoff and plain jitter.

Jitter spreads a fleet's retries so that workers refused together do not all
come back in the same instant.
"""

from __future__ import annotations

import random

# 2.0 ** 1024 overflows; beyond this exponent every sane base is past any cap.
_LARGEST_EXPONENT = 1000


def exponential_backoff(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter.

    Returns uniform(base_s, min(cap_s, base_s * 2**attempt)): never above
    cap_s, never below min(base_s, cap_s); attempt 0 gives exactly base_s.
    Safe for any attempt, however large.

    Examples:
      >>> exponential_backoff(0, base_s=1.0, cap_s=60.0, rng=random.Random(1))
      1.0
      >>> 1.0 <= exponential_backoff(3, base_s=1.0, cap_s=60.0, rng=random.Random(1)) <= 8.0
      True
      >>> exponential_backoff(10**9, base_s=1.0, cap_s=60.0, rng=random.Random(1)) <= 60.0
      True

    Parameters:
      attempt(int): How many attempts failed before this one (0 for the first retry).
      base_s(float): The shortest delay, in seconds.
      cap_s(float): The longest delay, in seconds.
      rng(random.Random): Where the jitter comes from.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more (0 for the first retry), got {attempt}")
    if base_s < 0 or cap_s < 0:
        raise ValueError(f"base_s and cap_s must not be negative, got base_s={base_s}, cap_s={cap_s}")
    lowest = min(base_s, cap_s)
    # A float product overflows to inf rather than raising; min() then picks the cap.
    highest = max(lowest, min(cap_s, base_s * 2.0 ** min(attempt, _LARGEST_EXPONENT)))
    return min(highest, rng.uniform(lowest, highest))


def jittered(seconds: float, *, jitter_s: float, rng: random.Random) -> float:
    """``seconds`` plus uniform(0, jitter_s).

    Examples:
      >>> 30.0 <= jittered(30.0, jitter_s=5.0, rng=random.Random(1)) <= 35.0
      True

    Parameters:
      seconds(float): The earliest value (a delay or an epoch time).
      jitter_s(float): The most that may be added; 0 adds nothing.
      rng(random.Random): Where the jitter comes from.
    """
    if jitter_s < 0:
        raise ValueError(f"jitter_s must not be negative, got {jitter_s}")
    return seconds + rng.uniform(0.0, jitter_s)

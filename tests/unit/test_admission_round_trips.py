"""An admission that waits for nothing costs one Redis round trip before the call, and one after (issue 21).

The product is built as its workers build it, in a fresh interpreter on the
stub broker, so every command that reaches Redis is the gates'; each
``fetch_pois`` delivery passes the broker's before-hooks (a free permit, no
pause, the circuit closed, no pacing, budget left), then charges its
answer, gives its permit back and passes the after-hooks
(:mod:`tests.bench.admission` counts, ``make bench`` reports the same).
"""

from __future__ import annotations

from tests.bench.admission import measure


def test_an_admission_that_waits_for_nothing_is_one_round_trip(redis_url: str, postgres_url: str) -> None:
    trips = measure(redis_url, postgres_url, calls=5)
    assert trips.calls == 5
    assert trips.before == 1, f"{trips.before} Redis round trips before the call (the target is 1)"
    # After the call: the bytes and the server time, the permit, the breaker's outcome and the seat in
    # the fair room, in one batch.
    assert trips.after == 1, f"{trips.after} Redis round trips after the call (the target is 1)"

"""``Backend.all_or_nothing``: several primitives as one atomic step, on every backend and Redis topology.

Every step runs when each reply meets its condition, else none does and the
store is as it was; the replies are the primitives' own. Under many threads
and a CPU hog, no batch is half done: the quota counts exactly the batches
that took a permit, and every permit comes back.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from enrichment_middleware.backends import Backend
from enrichment_middleware.backends.base import Step
from enrichment_middleware.backends.redis import RedisBackend
from tests.support.contention import cpu_hog
from tests.unit.test_backends import backend, timed  # noqa: F401 (the contract's fixtures)

#: One key for every step: on a Redis Cluster, every key of the batch is in its slot.
KEY = "e1"
WINDOW = {"window_s": 3600, "ttl_s": 60}


def steps(*, permits: int = 1, requests: int = 5, wait_s: float = 0.5, holder: str = "h1") -> list[Step]:
    """The admission of one call: the pause, a permit, the breaker, a pacing slot, a request."""
    return [
        Step("pause_get", (KEY,), {}, "not_paused"),
        Step("lease_acquire", (KEY, holder, permits, 30.0), {}, "granted"),
        Step("state_get_now", (KEY,), {}, "closed"),
        Step("gcra_reserve", (KEY, 1.0, 1), {"wait_s": wait_s}, "within_wait"),
        Step("window_admit", (KEY, ["requests"], [requests], [1]), WINDOW, "admitted"),
    ]


def store(backend: Backend) -> dict[str, Any]:  # noqa: F811
    """What the steps can change, read without changing it."""
    counted = backend.window_admit(KEY, ["requests"], [-1], [0], **WINDOW).values
    return {
        "paused": backend.pause_get(KEY),
        "leases": backend.lease_count(KEY),
        "state": backend.state_get(KEY),
        "schedule": backend.gcra_get(KEY)[0],
        "requests": counted,
    }


def test_every_step_runs_and_answers_as_alone(backend: Backend) -> None:  # noqa: F811
    replies = backend.all_or_nothing(steps())
    assert replies is not None
    paused, granted, (version, state, _), (slot, now), counts = replies
    assert paused is None and granted is not None and (version, state) == (0, None)
    assert slot - now <= 0.5 and counts.allowed and counts.values == [1]
    assert store(backend)["leases"] == 1 and store(backend)["requests"] == [1]


def test_a_stage_is_read_with_the_pause_in_one_batch(backend: Backend) -> None:  # noqa: F811
    """What a fetch reads before its call: its stage and its endpoint's pause, each as alone."""
    backend.stage_put(KEY, {"chunks": b"2", "sent:0": b"1"}, 60.0)
    backend.pause_extend(KEY, 60.0, "rate_limited")
    look = Step("stage_look", (KEY, ("chunks", "children")), {}, "any")
    replies = backend.all_or_nothing([look, Step("pause_get", (KEY,), {}, "any")])
    assert replies is not None
    assert (
        replies[0]
        == backend.stage_look(KEY, ("chunks", "children"))
        == ({"chunks", "sent:0"}, {"chunks": b"2"})
    )
    assert replies[1]["paused_until"] > replies[1]["now"]


def _refuse(backend: Backend, which: str) -> None:  # noqa: F811
    """Make step ``which`` of :func:`steps` refuse."""
    if which == "paused":
        backend.pause_extend(KEY, 60.0, "slow_down")
    elif which == "held":
        backend.hold_set(KEY, "rejected", "v1")
    elif which == "no_permit":
        backend.lease_acquire(KEY, "someone", 1, 30.0)
    elif which == "open":
        backend.state_cas(KEY, 0, {"status": "open", "open_until": 4e9})
    elif which == "slot_far":
        backend.gcra_reserve(KEY, 1.0, 1)  # the next slot is a second away; the batch waits 0.5 s at most
    elif which == "spent":
        backend.window_admit(KEY, ["requests"], [5], [5], **WINDOW)


@pytest.mark.parametrize("which", ["paused", "held", "no_permit", "open", "slot_far", "spent"])
def test_a_refusing_step_leaves_the_store_as_it_was(backend: Backend, which: str) -> None:  # noqa: F811
    _refuse(backend, which)
    before = store(backend)
    assert backend.all_or_nothing(steps()) is None
    after = store(backend)
    if which in ("paused", "held", "slot_far"):
        # These answer the backend's now, which moved: compare what a step could have changed.
        before.pop("paused"), after.pop("paused")
    assert after == before


def test_a_closed_state_that_was_written_is_closed_too(backend: Backend) -> None:  # noqa: F811
    backend.state_cas(KEY, 0, {"status": "closed", "failures": 2})
    assert backend.all_or_nothing(steps()) is not None


def test_window_admit_goes_last_or_nothing_runs(backend: Backend) -> None:  # noqa: F811
    first, *rest = steps()
    reordered = [rest[-1], first, *rest[:-1]]
    if isinstance(backend, RedisBackend):
        # Its counters are not all its keys: they could not be put back.
        assert backend.all_or_nothing(reordered) is None
        assert store(backend)["requests"] == [0]
    else:
        assert backend.all_or_nothing(reordered) is not None


def test_keys_in_several_slots_of_a_cluster_run_nothing(backend: Backend) -> None:  # noqa: F811
    spread = [Step("lease_acquire", (f"k{i}", "h", 1, 30.0), {}, "granted") for i in range(6)]
    replies = backend.all_or_nothing(spread)
    if isinstance(backend, RedisBackend) and backend._cluster:
        assert replies is None and all(backend.lease_count(f"k{i}") == 0 for i in range(6))
    else:
        assert replies is not None and all(backend.lease_count(f"k{i}") == 1 for i in range(6))


def test_many_threads_with_a_cpu_hog_never_half_admit(backend: Backend) -> None:  # noqa: F811
    permits, requests, threads, rounds = 3, 40, 12, 8
    admitted: list[str] = []
    refused = [0]
    peak = [0]
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(rounds):
            holder = uuid.uuid4().hex
            batch = steps(permits=permits, requests=requests, holder=holder)
            batch.pop(3)  # no pacing: every thread would wait a second for its slot
            replies = backend.all_or_nothing(batch)
            if replies is None:
                with lock:
                    refused[0] += 1
                continue
            with lock:
                admitted.append(holder)
                peak[0] = max(peak[0], backend.lease_count(KEY))
            backend.lease_release(KEY, holder)

    with cpu_hog():
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=120)
    assert len(admitted) + refused[0] == threads * rounds
    # Each admitted batch counted one request, each refused one none: all or nothing.
    assert store(backend)["requests"] == [len(admitted)] and len(admitted) <= requests
    assert peak[0] <= permits and store(backend)["leases"] == 0
    assert refused[0] > 0, "the permits and the quota never refused: the test proves nothing"


def test_a_step_that_fails_with_an_error_puts_back_what_ran_before(backend: Backend) -> None:  # noqa: F811
    if isinstance(backend, RedisBackend):
        backend.client.set(backend._key("state", KEY), "not a hash")  # the breaker's read fails: WRONGTYPE
    else:

        def broken(key: str) -> Any:
            raise RuntimeError("the store failed half way")

        backend.state_get_now = broken  # type: ignore[method-assign]
    with pytest.raises(Exception):  # noqa: B017 (each backend says it in its own words)
        backend.all_or_nothing(steps())
    # The pause was read and a permit taken before the failing step: the permit is back.
    assert backend.lease_count(KEY) == 0
    assert backend.window_admit(KEY, ["requests"], [-1], [0], **WINDOW).values == [0]

"""The order of the gates on a broker: checked when a worker boots, not left to advice.

The gates admit a call as one ordered decision (docs/architecture.md,
"Admission"). Dramatiq runs ``before_process_message`` hooks in the
broker's middleware order and the after-hooks in reverse, so the order is
behaviour. Each gate class names its place, :attr:`admission_rank`, and why
it is there (:data:`RANKS`); :func:`check_order` refuses a broker whose
gates stand otherwise, or whose ``Retries`` does not know that a deferral
is not a failure (and warns of such a ``Callbacks``). :func:`enrichment_middleware.install`
puts them in this order; every gate calls :func:`check_order` when a worker
boots, so a broker assembled by hand in another order does not start.

A middleware outside this package takes a place by the same class
attribute (the Overpass product's endpoint router takes rank 0).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import dramatiq
from dramatiq.middleware import Callbacks as StockCallbacks
from dramatiq.middleware import MiddlewareError
from dramatiq.middleware import Retries as StockRetries

logger = logging.getLogger(__name__)

#: Each rank's place, by the actor option of the gate that takes it, and why it is there.
RANKS: dict[int, tuple[str, str]] = {
    0: ("route", "it picks the policy names (message options) that every later gate reads"),
    1: (
        "fair",
        "it decides which job goes on next, so only the jobs it seats are paused, wait for a permit or "
        "reserve a slot (a paused job keeps its seat; the others wait in the room, not in the queue)",
    ),
    2: (
        "pause",
        "it refuses a paused or held upstream with one read, before anything is waited for or counted",
    ),
    3: (
        "semaphore",
        "it is the only gate that waits in a thread, and a decision taken before a wait is stale after it",
    ),
    4: ("breaker", "a job it denies must not have spent a pacing slot or a request"),
    5: ("rate", "a job sent to a later slot must not have spent a request"),
    6: ("quota", "it counts a request only for a call that leaves right after it"),
}


class MiddlewareOrderError(MiddlewareError, RuntimeError):
    """The broker's gates, ``Retries`` or ``Callbacks`` stand where admission cannot work as documented."""


def rank_of(middleware: dramatiq.Middleware) -> int | None:
    """The admission rank of ``middleware``, or None when it is no gate."""
    rank = getattr(middleware, "admission_rank", None)
    return rank if isinstance(rank, int) else None


def _describe(middleware: dramatiq.Middleware) -> str:
    rank = rank_of(middleware)
    option = RANKS[rank][0] if rank in RANKS else "?"
    return f"{type(middleware).__name__} ({option}=)"


def check_order(middleware: Sequence[dramatiq.Middleware]) -> None:
    """Refuse a middleware list whose gates could admit a call otherwise than documented.

    Raises:
      MiddlewareOrderError: naming what stands where, why it must not, and how
        to fix it (``enrichment_middleware.install`` orders the gates itself).
    """
    gates = [(index, rank, m) for index, m in enumerate(middleware) if (rank := rank_of(m)) is not None]
    if not gates:
        return
    fix = "Add the gates with enrichment_middleware.install(broker, *gates), which puts them in order."
    for (_, earlier_rank, earlier), (_, later_rank, later) in itertools.pairwise(gates):
        if later_rank == earlier_rank:
            raise MiddlewareOrderError(
                f"Two {_describe(later)} gates are on the broker: each message would be admitted "
                f"twice by the same gate. Keep one, with every policy in it. {fix}"
            )
        if later_rank < earlier_rank:
            why = RANKS[later_rank][1] if later_rank in RANKS else "its admission_rank says so"
            raise MiddlewareOrderError(
                f"{_describe(later)} stands after {_describe(earlier)} on the broker but must come "
                f"before it: {why}. {fix}"
            )
    first_gate, _, first = gates[0]
    retries = [(i, m) for i, m in enumerate(middleware) if isinstance(m, StockRetries)]
    stock = [m for _, m in retries if not getattr(m, "understands_deferrals", False)]
    if stock:
        raise MiddlewareOrderError(
            "Dramatiq's own Retries is on the broker beside the gates: it would count every deferral "
            "as a failed attempt and dead-letter jobs that only waited. Replace it with "
            "enrichment_middleware.Retries (enrichment_middleware.install does, keeping Dramatiq's for "
            "actors that opt into no gate)."
        )
    if not retries:
        raise MiddlewareOrderError(
            "The gates are on a broker without enrichment_middleware.Retries: a job a gate defers "
            "would be dropped, not run again later. " + fix
        )
    if retries[0][0] > first_gate:
        raise MiddlewareOrderError(
            f"Retries stands after {_describe(first)} on the broker but must come before every "
            "gate: Dramatiq runs after-hooks in reverse, and Retries must read the delay a gate sets on "
            "a deferral after the gate set it. " + fix
        )
    if any(
        isinstance(m, StockCallbacks) and not getattr(m, "understands_deferrals", False) for m in middleware
    ):
        # Not refused: it changes only what on_failure reports, and only for actors that name one.
        logger.warning(
            "Dramatiq's own Callbacks is on the broker beside the gates: an actor's on_failure will "
            "be sent for every deferral too. Replace it with enrichment_middleware.Callbacks "
            "(enrichment_middleware.install does)."
        )

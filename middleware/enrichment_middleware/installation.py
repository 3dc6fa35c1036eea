"""Putting the gates on a broker: one call, in the one order admission needs.

:func:`install` is what an app calls after building its broker and before
declaring its actors. It puts this package's ``Retries`` and ``Callbacks``
where Dramatiq's stood (Dramatiq's ``Retries`` keeps serving the actors that
opt into no gate, with the app's options) and adds the gates sorted by
their admission rank, whatever order they were given in; then it checks
the whole list as every worker will when it boots (:mod:`.order`).
"""

from __future__ import annotations

import dramatiq
from dramatiq.broker import Broker

from .admission import AdmissionMiddleware
from .backends.base import Backend
from .callbacks import replace_stock_callbacks
from .order import MiddlewareOrderError, check_order, rank_of
from .retries import Retries, replace_stock_retries


def install(
    broker: Broker,
    *gates: dramatiq.Middleware,
    retries: Retries | None = None,
    backend: Backend | None = None,
) -> Retries:
    """Put ``gates`` on ``broker`` in admission order, with Retries and Callbacks that know a deferral.

    Examples:
      >>> backend = RedisBackend.from_url(REDIS_URL, namespace="myapp")
      >>> install(broker, Quota(backend, {...}), ConcurrencySemaphore(backend, {...}))  # any order

    Parameters:
      broker: the app's broker, before any actor that opts into a gate is declared.
      gates: the gates (``Pause``, ``ConcurrencySemaphore``, ``CircuitBreaker``,
        ``Pacing``, ``Quota``, or any middleware with an ``admission_rank``),
        in any order; at most one of each.
      retries: the ``Retries`` to use (its options are the defaults of the actors
        that opt into a gate); default: one with Dramatiq's defaults, parking
        its waits in ``backend``.
      backend: where that default ``Retries`` parks waits; default: the first
        gate's backend.

    Returns:
      the ``Retries`` on the broker (its ``release_due`` hands parked jobs back).

    Raises:
      MiddlewareOrderError: a gate is already on the broker, or is no gate.
    """
    for gate in gates:
        if rank_of(gate) is None:
            raise MiddlewareOrderError(
                f"{type(gate).__name__} is no gate (it has no admission_rank): add it with "
                "broker.add_middleware(...) instead."
            )
        on_broker = [m for m in broker.middleware if rank_of(m) == rank_of(gate)]
        if on_broker:
            raise MiddlewareOrderError(
                f"A {type(on_broker[0]).__name__} is on the broker already: install each gate once, "
                "with every policy in it."
            )
    present = next((m for m in broker.middleware if isinstance(m, Retries)), None)
    if present is not None and retries is not None and retries is not present:
        raise MiddlewareOrderError(
            "Another enrichment_middleware.Retries is on the broker already: pass that one (or none)."
        )
    retries = retries or present
    if retries is None:
        if backend is None:
            backend = next((g.backend for g in gates if isinstance(g, AdmissionMiddleware)), None)
        retries = Retries(backend=backend)
    if retries is not present:
        replace_stock_retries(broker, retries)
    replace_stock_callbacks(broker)
    for gate in sorted(gates, key=lambda g: rank_of(g) or 0):
        broker.add_middleware(gate)
    check_order(broker.middleware)
    return retries

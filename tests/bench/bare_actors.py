"""The product's actors without the middleware that admits the Overpass call: the overhead baseline.

:func:`build` builds the product as its workers do
(:func:`enrichment_actors.worker.build`); taking the endpoint router and the pause, semaphore, breaker, pacing
and quota middlewares off the broker afterwards leaves the same actors, the
same retries and the same broker, and only the admission work gone.
``dramatiq tests.bench.bare_actors:build`` runs it. The fair room is admission
too (issue 22): it goes with the rest.
"""

from __future__ import annotations

import dramatiq

import enrichment_actors.worker
from enrichment_actors.routing import EndpointRouter
from enrichment_middleware.breaker import CircuitBreaker
from enrichment_middleware.fair import FairAdmission
from enrichment_middleware.pacing import Pacing
from enrichment_middleware.pause import Pause
from enrichment_middleware.quota import Quota
from enrichment_middleware.semaphore import ConcurrencySemaphore

#: What ``fetch_pois`` goes through before its call, in the product's order.
ADMISSION = (EndpointRouter, FairAdmission, Pause, ConcurrencySemaphore, CircuitBreaker, Pacing, Quota)


def build() -> dramatiq.Broker:
    """The product's broker, actors and all, without its admission middleware."""
    broker = enrichment_actors.worker.build()
    # Dramatiq calls every middleware hook through this list, so the actors,
    # already declared with their options, now run without admission.
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, ADMISSION)]
    return broker

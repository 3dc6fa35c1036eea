"""The product's actors without its quota, semaphore and breaker middleware: the overhead baseline.

Importing :mod:`enrichment_actors.worker` declares the actors on the product's
broker; taking the three admission middlewares off the broker afterwards
leaves the same actors, the same retries and the same broker, and only the
admission work gone. ``dramatiq tests.bench.bare_actors`` runs it.
"""

from __future__ import annotations

import enrichment_actors.worker
from middleware.breaker import CircuitBreaker
from middleware.quota import Quota
from middleware.semaphore import ConcurrencySemaphore

broker = enrichment_actors.worker.broker
# Dramatiq calls every middleware hook through this list, so the actors,
# already declared with their options, now run without admission.
broker.middleware[:] = [
    m for m in broker.middleware if not isinstance(m, Quota | ConcurrencySemaphore | CircuitBreaker)
]

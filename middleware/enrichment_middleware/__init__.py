"""Reusable Dramatiq middleware: fleet-wide quota, semaphore, circuit breaker, pause, pacing and fair shares.

What an app needs is exported here (``from enrichment_middleware import
Quota, install``); see middleware/README.md. Names are imported on first
use, so importing the package imports neither Dramatiq nor redis, and the
pure policies (``enrichment_middleware.policy``) stay importable alone.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enrichment_middleware.admission import charge_now
    from enrichment_middleware.backends.base import Backend, BackendUnavailable
    from enrichment_middleware.backends.memory import MemoryBackend
    from enrichment_middleware.backends.redis import RedisBackend
    from enrichment_middleware.breaker import CircuitBreaker, Verdict
    from enrichment_middleware.callbacks import Callbacks
    from enrichment_middleware.deferral import Defer
    from enrichment_middleware.fair import FairAdmission
    from enrichment_middleware.installation import install
    from enrichment_middleware.order import MiddlewareOrderError
    from enrichment_middleware.pacing import Pacing
    from enrichment_middleware.pause import HoldUpstream, Pause, PauseUpstream
    from enrichment_middleware.policy.breaker import BreakerLimits
    from enrichment_middleware.policy.fair import FairLimits
    from enrichment_middleware.policy.pacing import PacingLimits
    from enrichment_middleware.policy.pause import PauseLimits
    from enrichment_middleware.policy.quota import QuotaLimits
    from enrichment_middleware.policy.semaphore import SemaphoreLimits
    from enrichment_middleware.quota import Quota
    from enrichment_middleware.retries import Retries
    from enrichment_middleware.semaphore import ConcurrencySemaphore, release_permit_early
    from enrichment_middleware.usage import charge, charge_bytes, report_no_call

#: Each public name, by the module that defines it.
_EXPORTS = {
    "install": "installation",
    "MiddlewareOrderError": "order",
    "Retries": "retries",
    "Callbacks": "callbacks",
    "Defer": "deferral",
    "Pause": "pause",
    "PauseLimits": "policy.pause",
    "PauseUpstream": "pause",
    "HoldUpstream": "pause",
    "FairAdmission": "fair",
    "FairLimits": "policy.fair",
    "ConcurrencySemaphore": "semaphore",
    "SemaphoreLimits": "policy.semaphore",
    "release_permit_early": "semaphore",
    "CircuitBreaker": "breaker",
    "BreakerLimits": "policy.breaker",
    "Verdict": "breaker",
    "Pacing": "pacing",
    "PacingLimits": "policy.pacing",
    "Quota": "quota",
    "QuotaLimits": "policy.quota",
    "charge": "usage",
    "charge_bytes": "usage",
    "charge_now": "admission",
    "report_no_call": "usage",
    "Backend": "backends.base",
    "BackendUnavailable": "backends.base",
    "MemoryBackend": "backends.memory",
    "RedisBackend": "backends.redis",
}

__all__ = [
    "Backend",
    "BackendUnavailable",
    "BreakerLimits",
    "Callbacks",
    "CircuitBreaker",
    "ConcurrencySemaphore",
    "Defer",
    "FairAdmission",
    "FairLimits",
    "HoldUpstream",
    "MemoryBackend",
    "MiddlewareOrderError",
    "Pacing",
    "PacingLimits",
    "Pause",
    "PauseLimits",
    "PauseUpstream",
    "Quota",
    "QuotaLimits",
    "RedisBackend",
    "Retries",
    "SemaphoreLimits",
    "Verdict",
    "charge",
    "charge_bytes",
    "charge_now",
    "install",
    "release_permit_early",
    "report_no_call",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

"""Pure policy code: quota, semaphore, circuit breaker, pause, pacing, backoff and parking, over a storage backend."""

from enrichment_middleware.policy.backoff import exponential_backoff, jittered
from enrichment_middleware.policy.breaker import (
    Admission,
    BreakerLimits,
    BreakerPolicy,
    BreakerState,
    BreakerStatus,
    abandon,
    decide,
    record,
)
from enrichment_middleware.policy.clock import Clock, ManualClock, SystemClock
from enrichment_middleware.policy.pacing import PacingLimits, PacingPolicy, PacingStatus, Reservation
from enrichment_middleware.policy.parking import ParkingLot
from enrichment_middleware.policy.pause import PauseDecision, PauseLimits, PausePolicy, PauseStatus
from enrichment_middleware.policy.quota import (
    QuotaDecision,
    QuotaLimits,
    QuotaPolicy,
    QuotaUsage,
    window_bounds,
)
from enrichment_middleware.policy.semaphore import Permit, SemaphoreLimits, SemaphorePolicy

__all__ = [
    "Admission",
    "BreakerLimits",
    "BreakerPolicy",
    "BreakerState",
    "BreakerStatus",
    "Clock",
    "ManualClock",
    "PacingLimits",
    "PacingPolicy",
    "PacingStatus",
    "ParkingLot",
    "PauseDecision",
    "PauseLimits",
    "PausePolicy",
    "PauseStatus",
    "Permit",
    "QuotaDecision",
    "QuotaLimits",
    "QuotaPolicy",
    "QuotaUsage",
    "Reservation",
    "SemaphoreLimits",
    "SemaphorePolicy",
    "SystemClock",
    "abandon",
    "decide",
    "exponential_backoff",
    "jittered",
    "record",
    "window_bounds",
]

"""Pure policy code: quota, semaphore, circuit breaker, backoff and parking, over a storage backend."""

from middleware.policy.backoff import exponential_backoff, jittered
from middleware.policy.breaker import (
    Admission,
    BreakerLimits,
    BreakerPolicy,
    BreakerState,
    BreakerStatus,
    abandon,
    decide,
    record,
)
from middleware.policy.clock import Clock, ManualClock, SystemClock
from middleware.policy.parking import ParkingLot
from middleware.policy.quota import QuotaDecision, QuotaLimits, QuotaPolicy, QuotaUsage, window_bounds
from middleware.policy.semaphore import Permit, SemaphoreLimits, SemaphorePolicy

__all__ = [
    "Admission",
    "BreakerLimits",
    "BreakerPolicy",
    "BreakerState",
    "BreakerStatus",
    "Clock",
    "ManualClock",
    "ParkingLot",
    "Permit",
    "QuotaDecision",
    "QuotaLimits",
    "QuotaPolicy",
    "QuotaUsage",
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

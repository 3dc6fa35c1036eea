"""Pure policy code: quota, semaphore, circuit breaker, pause, pacing, backoff and parking, over a storage backend."""

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
from middleware.policy.pacing import PacingLimits, PacingPolicy, PacingStatus, Reservation
from middleware.policy.parking import ParkingLot
from middleware.policy.pause import PauseDecision, PauseLimits, PausePolicy, PauseStatus
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

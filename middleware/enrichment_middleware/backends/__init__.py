"""Storage backends: the atomic primitives the policies are built on, in memory or in Redis.

``RedisBackend`` is imported on first use, so importing this package never
imports redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enrichment_middleware.backends.base import Backend, BackendUnavailable
from enrichment_middleware.backends.memory import MemoryBackend

if TYPE_CHECKING:
    from enrichment_middleware.backends.redis import RedisBackend

__all__ = ["Backend", "BackendUnavailable", "MemoryBackend", "RedisBackend"]


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from enrichment_middleware.backends.redis import RedisBackend

        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""How many jobs the fair rooms hold (waiting in a lane, or seated): what "every job done" must wait for.

A job waiting in a room is acknowledged in the broker and not parked: a test
that waits until nothing is queued or parked must wait for the rooms too.
"""

from __future__ import annotations

from enrichment_middleware.backends.base import Backend
from enrichment_middleware.backends.redis import RedisBackend
from enrichment_middleware.policy.fair import FairLimits, FairPolicy


def room_names(backend: Backend) -> list[str]:
    """The names of the rooms ``backend`` holds state for (``FairPolicy.name``)."""
    if isinstance(backend, RedisBackend):
        prefix = f"{backend.namespace}:room-meta:{{fair:"
        names = []
        for key in backend.client.scan_iter(match=f"{prefix}*", count=1000):
            text = key.decode()
            if ":calls:" not in text and text.endswith("}"):
                names.append(text[len(prefix) : -1])
        return sorted(set(names))
    rooms: dict[str, object] = getattr(backend, "_rooms", {})
    return sorted(key.removeprefix("fair:") for key in rooms)


def in_rooms(backend: Backend) -> int:
    """Jobs waiting in, or seated by, every room of ``backend``."""
    return sum(FairPolicy(name, FairLimits(), backend).counts().held for name in room_names(backend))


def waiting_in_rooms(backend: Backend) -> int:
    """Jobs waiting in a lane of any room of ``backend`` (not the seated ones)."""
    return sum(
        sum(FairPolicy(name, FairLimits(), backend).counts().waiting.values()) for name in room_names(backend)
    )

"""A bound on the size of every message the product enqueues (``MESSAGE_MAX_BYTES``).

Messages are held whole by whoever touches them: every worker that
prefetches them, Dramatiq's log lines on a failure (which print the
arguments), the parking lot and the dead-letter queue. The actors keep
theirs small by construction (fetched POIs are staged, and store messages
carry a reference); this middleware refuses, at send, a message that is not
(an ``enrich`` with a huge argument), so the sender hears of it at once.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import dramatiq
from dramatiq.broker import Broker
from dramatiq.middleware import MiddlewareError

logger = logging.getLogger(__name__)


class MessageTooLarge(MiddlewareError, ValueError):
    """A message is over ``MESSAGE_MAX_BYTES``; it was not enqueued.

    A :class:`~dramatiq.middleware.MiddlewareError`: the only kind Dramatiq
    lets out of a ``before_enqueue`` hook to the sender.
    """


class MessageSizeLimit(dramatiq.Middleware):
    """Refuse to enqueue a message whose encoded size is over ``max_bytes``.

    A message that was processed before (it carries ``retries`` or
    ``deferrals``) is let through with a warning: it already exists nowhere
    else, and refusing it would lose it.

    Examples:
      >>> broker.add_middleware(MessageSizeLimit(1 << 20))  # doctest: +SKIP

    Parameters:
      max_bytes: the bound, in bytes of the encoded message.
      actors: the names of the actors whose messages are bounded; None: every
        actor. On an app's broker (``enrichment_actors.install``), only ours:
        the app's own messages are the app's business.
    """

    def __init__(self, max_bytes: int, *, actors: Collection[str] | None = None) -> None:
        self.max_bytes = max_bytes
        self.actors = None if actors is None else frozenset(actors)

    def before_enqueue(self, broker: Broker, message: dramatiq.Message[Any], delay: int) -> None:
        if self.actors is not None and message.actor_name not in self.actors:
            return
        size = len(message.encode())
        if size <= self.max_bytes:
            return
        # The message itself is never logged or quoted: it is what is too large.
        if "retries" in message.options or "deferrals" in message.options:
            logger.warning(
                "Message %s (%s) is %d bytes, over MESSAGE_MAX_BYTES=%d; enqueued anyway (it was processed before).",
                message.message_id,
                message.actor_name,
                size,
                self.max_bytes,
            )
            return
        raise MessageTooLarge(
            f"A {message.actor_name} message of {size} bytes is over MESSAGE_MAX_BYTES={self.max_bytes}; "
            "it was not sent. Send smaller arguments (a job is a box and a few tags)."
        )


__all__ = ["MessageSizeLimit", "MessageTooLarge"]

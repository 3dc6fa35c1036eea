"""The start-up check of the state Redis's topology: a worker given the wrong one does not start.

A Redis Cluster node given as a standalone Redis would answer the keys of
its own slots and refuse the others (``MOVED``); Sentinels that do not know
the primary named would leave every call unreachable.  Both are settings
mistakes, so the worker exits at boot with the message of
:meth:`~enrichment_middleware.backends.redis.RedisBackend.check_topology` and exit code
:data:`~enrichment_actors.redis_checks.EXIT_UNSAFE_REDIS`; an unreachable
Redis is not a mistake and is waited for like any outage.
"""

from __future__ import annotations

import logging
import os

import dramatiq

from enrichment_middleware.backends import Backend, BackendUnavailable
from enrichment_middleware.backends.redis import RedisBackend, RedisTopologyError

from .redis_checks import UnsafeRedis

logger = logging.getLogger(__name__)


class TopologyCheck(dramatiq.Middleware):
    """Check the state backend's Redis topology once per worker process, at boot.

    Examples:
      >>> broker.add_middleware(TopologyCheck(backend))  # doctest: +SKIP

    Parameters:
      backend: the fleet's state backend; anything but a RedisBackend is not checked.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._checked_in: int | None = None

    def check(self) -> None:
        """Raise :class:`UnsafeRedis` (a ``SystemExit``) when the topology is wrong."""
        if not isinstance(self.backend, RedisBackend):
            return
        try:
            self.backend.check_topology()
        except RedisTopologyError as error:
            message = f"The state Redis has the wrong topology: {error}"
            # The CLI shows a SystemExit only as its exit code: the reason goes to the log.
            logger.critical(message)
            raise UnsafeRedis(message) from None
        except BackendUnavailable:
            pass  # waited for like any outage

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._checked_in == os.getpid():
            return
        self._checked_in = os.getpid()
        self.check()

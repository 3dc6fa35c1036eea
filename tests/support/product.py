"""The product built in the test process, as its workers build it: the one helper in-process tests use.

Importing the product builds nothing, so a test that runs the actors' code in
its own process (a worker thread, a direct call) builds it first::

    from tests.support.product import product

    runtime = product().runtime        # the Runtime the actors read (runtime.current())
    product().enrich.send(bbox=..., tags=["amenity"])   # the actor, on the product's broker

The first call builds the runtime from the environment the session set up
(tests/conftest.py: the test Redis and PostgreSQL) with
:func:`enrichment_actors.worker.start`, which also makes its broker
Dramatiq's global broker, as in a worker; later calls return the same.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import dramatiq

from enrichment_actors.runtime import Runtime, installed
from enrichment_actors.settings import check_startable, load_settings
from enrichment_actors.worker import start


class Product(NamedTuple):
    """The built runtime, its broker and the three actors declared on it."""

    runtime: Runtime
    broker: dramatiq.Broker
    enrich: dramatiq.Actor[Any, None]
    fetch_pois: dramatiq.Actor[Any, None]
    store_pois: dramatiq.Actor[Any, None]


@functools.cache
def product() -> Product:
    """The product of this test process, built on first call (see the module's docstring)."""
    runtime = installed() or start(check_startable(load_settings()))
    broker = runtime.broker
    return Product(
        runtime,
        broker,
        broker.get_actor("enrich"),
        broker.get_actor("fetch_pois"),
        broker.get_actor("store_pois"),
    )

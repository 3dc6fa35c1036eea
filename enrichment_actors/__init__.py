"""Overpass enrichment: Dramatiq actors that fill sparse POI coverage from Overpass.

Importing this package builds the broker and its middleware from the
environment (see :mod:`enrichment_actors.settings`) and declares the actors,
so ``dramatiq enrichment_actors`` starts workers (Dramatiq's CLI takes the
global broker right after the import) and app code does::

    from enrichment_actors import enrich
    enrich.send(bbox={"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}, tags=["amenity"])

Building talks to no server: the broker, the shared-state backend and the
Overpass client connect when a worker or a command first uses them, so any
module (the stand-in server, job validation) imports without touching Redis,
PostgreSQL or Overpass (tests/unit/test_imports.py).
"""

__version__ = "0.1.0"

# Importing the actors builds the runtime (broker, middleware) first.
from .actors import enrich, fetch_pois, store_pois
from .runtime import runtime

broker = runtime.broker

__all__ = ["__version__", "broker", "enrich", "fetch_pois", "runtime", "store_pois"]

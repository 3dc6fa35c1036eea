"""Overpass enrichment: Dramatiq actors that fill sparse POI coverage from Overpass.

Importing this package, or any module of it, builds nothing: no broker, no
middleware, no global broker, no setting read. App code sends jobs with
:data:`enrich`, a sender (not an actor) that checks each job before it is
enqueued and needs no worker setting::

    from enrichment_actors import InvalidJob, enrich

    enrich.send(bbox={"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}, tags=["amenity"])

The product's own workers run ``dramatiq enrichment_actors.worker:build``;
an app that runs the product's actors in its own worker process calls
:func:`install` with its broker. :mod:`enrichment_actors.worker` shows, top
to bottom, how the broker, the middleware and the actors are built.
"""

from __future__ import annotations

from .jobs import InvalidJob
from .sender import enrich
from .version import __version__
from .worker import install

__all__ = ["InvalidJob", "__version__", "enrich", "install"]

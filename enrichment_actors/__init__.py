"""Overpass enrichment: Dramatiq actors that fill sparse POI coverage from Overpass.

Importing this package, or any module of it, builds nothing: the runtime (the
broker, its middleware, Dramatiq's global broker) is built from the
environment (see :mod:`enrichment_actors.settings`) when the actors are first
needed. Workers run ``dramatiq enrichment_actors.worker``
(:mod:`enrichment_actors.worker` builds the runtime and declares the actors),
and app code does::

    from enrichment_actors import enrich
    enrich.send(bbox={"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}, tags=["amenity"])

``enrich``, ``fetch_pois``, ``store_pois``, ``broker`` and ``runtime`` (the
:class:`~enrichment_actors.runtime.Runtime`) are built on first use, so the
stand-in Overpass server, job validation and ``enrichment --help`` import
without reading a setting or replacing Dramatiq's global broker
(tests/unit/test_imports.py). Even the runtime talks to no server until a
worker or a command first uses it.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "broker", "enrich", "fetch_pois", "runtime", "store_pois"]

if TYPE_CHECKING:
    from dramatiq import Broker

    from .actors import enrich, fetch_pois, store_pois
    from .runtime import Runtime, runtime

    broker: Broker


def __getattr__(name: str) -> Any:
    """Declare the actors (building the runtime first) the first time one of them is asked for (PEP 562)."""
    if name not in ("enrich", "fetch_pois", "store_pois"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import actors

    found = getattr(actors, name)
    globals()[name] = found
    return found


def _runtime() -> Runtime:
    from . import actors  # noqa: F401  # declares the actors on the runtime's broker
    from .runtime import runtime

    return runtime


def _keep_submodule(name: str, value: object) -> None:
    # The import system names the submodule here; it stays in sys.modules.
    if not isinstance(value, types.ModuleType):
        raise AttributeError(f"{__name__}.{name} is built from the settings and cannot be replaced")


class _Package(types.ModuleType):
    """This package, whose ``runtime`` and ``broker`` are the built objects, not its modules of those names.

    Importing the submodule :mod:`enrichment_actors.runtime` (as
    ``from enrichment_actors.runtime import OVERPASS`` does) or
    :mod:`enrichment_actors.broker` sets the package attribute of that name
    to the module, after which a module ``__getattr__`` is never asked. A
    property wins over that assignment: ``enrichment_actors.runtime`` is the
    Runtime and ``enrichment_actors.broker`` its broker, whatever was
    imported first, as when this package built them at import time.
    """

    @property
    def runtime(self) -> Runtime:
        return _runtime()

    @runtime.setter
    def runtime(self, value: object) -> None:
        _keep_submodule("runtime", value)

    @property
    def broker(self) -> Broker:
        return _runtime().broker

    @broker.setter
    def broker(self, value: object) -> None:
        _keep_submodule("broker", value)


sys.modules[__name__].__class__ = _Package


def _imported_as_the_dramatiq_cli_broker() -> bool:
    """Whether Dramatiq's CLI is importing this package as its broker module: ``dramatiq enrichment_actors``.

    The CLI then takes Dramatiq's global broker; were the runtime not built by
    now, that would be a default Redis broker with no actors, a worker that
    consumes nothing. ``dramatiq enrichment_actors.worker`` (the documented
    command) and ``dramatiq enrichment_actors:broker`` need no such check.

    The CLI offers no hook, so this looks for its ``import_object`` frame
    (Dramatiq 2.x) importing this very package with no ``:attribute``. A
    Dramatiq that renames it makes this False: the real command is run by
    tests/unit/test_imports.py, which then fails rather than the worker
    idling in production.
    """
    cli = sys.modules.get("dramatiq.cli")
    if cli is None:
        return False
    import_object = getattr(cli, "import_object", None)
    code = getattr(import_object, "__code__", None)
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return frame.f_locals.get("modname") == __name__ and frame.f_locals.get("varname") is None
        frame = frame.f_back
    return False


if _imported_as_the_dramatiq_cli_broker():
    from . import worker  # noqa: F401

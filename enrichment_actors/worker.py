"""How the product is built: the broker, its middleware and the actors, in the order a worker needs them.

The product's own workers (the Procfile) run::

    dramatiq enrichment_actors.worker:build --processes 2 --threads 8

Dramatiq's CLI imports this module, which builds nothing, then calls
:func:`build` in each worker process and takes Dramatiq's global broker.
:func:`build` reads the settings (an unusable one ends the process with one
line, ``SettingsError: ...``, on stderr), makes the product's broker
(``BROKER``: Redis or RabbitMQ) and puts the product on it (:func:`_put_on`,
below): the runtime with its middleware (:func:`~.runtime.build_runtime`),
then the actors' middleware and the three actors (:func:`~.actors.declare`).

An app whose own worker process should run the product's actors too calls
:func:`install` with its broker: the same steps on the app's broker instead
of a new one, which stays the app's (never made global by us).

:func:`serve_metrics` is what the CLI forks to serve the metrics: it builds
its own runtime to read the fleet's state, and declares no actor.
"""

from __future__ import annotations

import sys

import dramatiq

from . import prometheus
from .actors import declare
from .runtime import Runtime, build_runtime, installed, set_current
from .settings import Settings, SettingsError, check_startable, load_settings

__all__ = ["AlreadyInstalled", "build", "install", "serve_metrics", "start"]


class AlreadyInstalled(RuntimeError):
    """The product is already on another broker in this process: its actors run on one broker only."""


def build() -> dramatiq.Broker:
    """Build the product's broker from the environment, make it Dramatiq's global broker, and return it.

    What ``dramatiq enrichment_actors.worker:build`` calls in each worker
    process. A setting to fix ends the process with one line on stderr and
    status 2, not a traceback through the CLI.
    """
    try:
        settings = check_startable(load_settings())
    except SettingsError as exc:
        print(f"SettingsError: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return start(settings).broker


def start(settings: Settings) -> Runtime:
    """The product on a broker of its own made from ``settings``, made Dramatiq's global broker.

    For processes that are the product's: its workers, the demo and the
    ``enrichment`` commands. Raises SettingsError for a broker it cannot make.
    """
    runtime = _put_on(None, settings)
    dramatiq.set_broker(runtime.broker)
    return runtime


def install(broker: dramatiq.Broker) -> None:
    """Put the product on an app's ``broker``: its middleware, then its three actors (one worker for both).

    The worker settings are read from the environment (SettingsError names
    the first unusable one). The product's shared state stays in its own
    Redis (``STATE_REDIS_URL``, default ``REDIS_URL``). The app's broker stays
    what it was otherwise: Dramatiq's stock ``Retries`` and ``Callbacks`` are
    replaced by the product's, which act the same for the app's actors; the
    message size limit and the metrics cover the product's actors only; the
    app's own Prometheus middleware, if any, serves the metrics. Calling it
    again with the same broker does nothing.

    Raises:
      SettingsError: a worker setting is unusable.
      AlreadyInstalled: the product is on another broker in this process.
    """
    _put_on(broker, check_startable(load_settings()))


def _put_on(broker: dramatiq.Broker | None, settings: Settings) -> Runtime:
    """Build the runtime (on ``broker``, or on a new one when None), declare the actors, make it current."""
    built = installed()
    if built is not None and broker is not None and built.broker is broker:
        return built
    if built is not None:
        raise AlreadyInstalled(
            f"The product is already on a {type(built.broker).__name__} in this process; "
            "call build() or install(broker) once per process."
        )
    # The runtime's middleware first (retries, callbacks, metrics, the gates), then the actors'.
    runtime = build_runtime(settings, broker=broker, exposition=serve_metrics)
    declare(runtime)
    set_current(runtime)
    return runtime


def serve_metrics() -> int:
    """The exposition process the CLI forks: the workers' metrics files plus the fleet gauges, until SIGTERM."""
    settings = check_startable(load_settings())
    runtime = build_runtime(settings)
    return prometheus.serve(runtime, runtime.metrics, settings.queue)

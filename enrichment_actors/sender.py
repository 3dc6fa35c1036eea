"""The sender app code uses: ``enrich.send(...)`` checks the job, then enqueues it for the product's workers.

:data:`enrich` is not an actor: it declares no actor and no queue on any
broker of the app, and sending needs no worker setting. It has the sending
half of Dramatiq's ``Actor`` (``send``, ``send_with_options``, ``message``,
``message_with_options``), and :meth:`Sender.check` to check a job without
sending it. Every message is checked first with the function the actor and
``enrichment enqueue`` use (:func:`~.jobs.validate_enrich`): an invalid job
raises :class:`~.jobs.InvalidJob` with a one-line reason, and nothing is
enqueued.

Where it enqueues: on the broker the product was put on in this process
(``enrichment_actors.install(broker)``, or the workers' ``build()``), else
on a broker of its own, made on first send from ``BROKER`` and
``REDIS_URL`` / ``RABBITMQ_URL`` (:func:`~.settings.load_sender_settings`)
and never made Dramatiq's global broker. On RabbitMQ, enqueueing declares the
queue on that broker: the product's, never the app's unless the product was
installed on it.

Examples:
  >>> from enrichment_actors import enrich, InvalidJob  # doctest: +SKIP
  >>> enrich.send(bbox={"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}, tags=["amenity"])  # doctest: +SKIP
  >>> enrich.check(bbox={"south": 48.86, "west": 2.29, "north": 48.85, "east": 2.30})  # doctest: +SKIP
  Traceback (most recent call last):
  ...
  enrichment_actors.jobs.InvalidJob: south (48.86) must be below north (48.85).
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq

from .jobs import JobLimits, validate_enrich
from .runtime import installed
from .settings import SenderSettings, load_sender_settings

__all__ = ["Sender", "enrich"]


class Sender:
    """Checks and sends ``enrich`` jobs to the product's workers, like an actor's sending half.

    Parameters:
      actor_name: the actor the messages are for (``enrich``).
      broker: the broker to enqueue on; None (the default): the product's, as
        the module's docstring says.
      settings: returns the sender settings; default
        :func:`~.settings.load_sender_settings`, read on first use.
    """

    def __init__(
        self,
        actor_name: str = "enrich",
        *,
        broker: dramatiq.Broker | None = None,
        settings: Any = load_sender_settings,
    ) -> None:
        self.actor_name = actor_name
        self._broker = broker
        self._load_settings = settings
        self._settings: SenderSettings | None = None
        self._own_broker: dramatiq.Broker | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Sender(actor_name={self.actor_name!r})"

    @property
    def queue_name(self) -> str:
        """The product's queue (``ENRICH_QUEUE``, or the installed runtime's)."""
        runtime = installed()
        return runtime.settings.queue if runtime is not None else self.settings.queue

    @property
    def settings(self) -> SenderSettings:
        with self._lock:
            if self._settings is None:
                self._settings = self._load_settings()
            return self._settings

    @property
    def broker(self) -> dramatiq.Broker:
        """The broker jobs are enqueued on (see the module's docstring); made on first use."""
        if self._broker is not None:
            return self._broker
        runtime = installed()
        if runtime is not None:
            return runtime.broker
        settings = self.settings
        with self._lock:
            if self._own_broker is None:
                self._own_broker = _make_broker(settings)
            return self._own_broker

    def check(self, *args: Any, **kwargs: Any) -> None:
        """Raise :class:`~.jobs.InvalidJob` (one line: what to change) unless ``enrich(*args, **kwargs)`` is a valid job."""
        runtime = installed()
        if runtime is not None:
            limits = runtime.job_limits
        else:
            s = self.settings
            limits = JobLimits(
                max_area_deg2=s.max_area_deg2, max_tags=s.max_tags, default_tags=s.default_tags
            )
        validate_enrich(args, kwargs, limits=limits)

    def message(self, *args: Any, **kwargs: Any) -> dramatiq.Message[Any]:
        """A checked message for ``enrich(*args, **kwargs)``, not sent."""
        return self.message_with_options(args=args, kwargs=kwargs)

    def message_with_options(
        self, *, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> dramatiq.Message[Any]:
        """A checked message with Dramatiq message ``options`` (``on_failure`` takes an actor's name)."""
        self.check(*args, **(kwargs or {}))
        for name in ("on_failure", "on_success"):
            callback = options.get(name)
            if isinstance(callback, dramatiq.Actor):
                options[name] = callback.actor_name
            elif not isinstance(callback, (type(None), str)):
                raise TypeError(f"{name} must be an actor or an actor's name")
        return dramatiq.Message(
            queue_name=self.queue_name,
            actor_name=self.actor_name,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            options=options,
        )

    def send(self, *args: Any, **kwargs: Any) -> dramatiq.Message[Any]:
        """Check the job, then enqueue it; the message enqueued (its ``message_id`` names the job)."""
        return self.send_with_options(args=args, kwargs=kwargs)

    def send_with_options(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        delay: int | None = None,
        **options: Any,
    ) -> dramatiq.Message[Any]:
        """Check the job, then enqueue it with ``options``, ``delay`` milliseconds from now (None: at once)."""
        message = self.message_with_options(args=args, kwargs=kwargs, **options)
        return self.broker.enqueue(message, delay=delay)

    def close(self) -> None:
        """Close the broker this sender made, if any (the next send makes another)."""
        with self._lock:
            if self._own_broker is not None:
                self._own_broker.close()
                self._own_broker = None


def _make_broker(settings: SenderSettings) -> dramatiq.Broker:
    """A broker on the product's queue server, with Dramatiq's default middleware; never made global."""
    if settings.broker == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=settings.rabbitmq_url, confirm_delivery=True)
    if settings.broker == "stub":
        raise RuntimeError(
            "BROKER=stub runs the product in one process: call enrichment_actors.worker.start() "
            "(or install(broker)) before sending."
        )
    from dramatiq.brokers.redis import RedisBroker

    # The workers' heartbeat and maintenance settings: Dramatiq's Redis broker runs its dead-worker
    # maintenance on enqueue too, and a shorter heartbeat would hand on a live worker's messages.
    return RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url,
        heartbeat_timeout=int(settings.broker_heartbeat_timeout_s * 1000),
        maintenance_chance=settings.broker_maintenance_chance,
    )


#: The sender of ``enrich`` jobs: ``from enrichment_actors import enrich``.
enrich = Sender("enrich")

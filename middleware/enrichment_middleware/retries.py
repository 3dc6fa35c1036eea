"""Retries and deferrals by re-enqueueing, never by sleeping in a worker thread.

Replaces Dramatiq's stock ``Retries``. For actors that opt into a gate of
this package (an actor option of a limiting middleware on the broker, or
``park_retries=True``), transient failures are retried with capped
exponential backoff and full jitter (the cap is never exceeded); after the
last attempt the message is dead-lettered. A :class:`~.deferral.Defer` is
not a failure: it does not count against ``max_retries``. Waits are parked in
the backend instead of Dramatiq's delay queue, which workers prefetch and
hold in memory (and drop on a broker reconnect): ten thousand jobs waiting
for tomorrow cost a worker nothing, and come back by themselves.

Every other actor (an app's, on a broker the product was installed on) is
retried by Dramatiq's own ``Retries``, the one this replaced: same attempts,
delays, log lines and dead letters, and a retried message waits in the
broker, so ``broker.join`` and ``worker.join`` wait for it.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import DecodeError
from dramatiq.middleware import Retries as StockRetries
from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF

from .admission import AdmissionMiddleware
from .attempt import deferral_of
from .backends.base import Backend, BackendUnavailable
from .background import BackgroundLoop
from .deferral import Defer
from .failpoints import failpoint
from .policy.backoff import exponential_backoff
from .policy.clock import Clock, SystemClock
from .policy.parking import ParkingLot
from .redaction import redact_url

#: While the backend stays unreachable, the releaser says so once, then at most this often (per process).
UNREACHABLE_LOG_EVERY_S = 60.0
#: Message option counting deferrals (retries are counted in ``retries``).
DEFERRALS = "deferrals"
#: Actor option: this actor's retries are this package's (parked, capped jitter) though it opts into no gate.
PARK_RETRIES = "park_retries"
#: The most of an error's text a message keeps (``last_error``) and of each line of its ``traceback``:
#: an error can quote what a remote server sent, of any size, and messages live in Redis and logs.
ERROR_TEXT_MAX = 500
#: The most of a traceback a message keeps: its end, where the error is.
TRACEBACK_MAX = 4000


def error_text(exception: BaseException) -> str:
    """``Type: message`` of ``exception``, URL passwords masked, cut to ``ERROR_TEXT_MAX`` characters."""
    return _cut(redact_url(f"{type(exception).__name__}: {exception}"), ERROR_TEXT_MAX)


def traceback_text() -> str:
    """The traceback being handled, URL passwords masked, each line cut, its last ``TRACEBACK_MAX`` characters."""
    lines = redact_url(traceback.format_exc(limit=30)).splitlines()
    text = "\n".join(_cut(line, ERROR_TEXT_MAX) for line in lines)
    return text if len(text) <= TRACEBACK_MAX else "..." + text[-TRACEBACK_MAX:]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class Retries(StockRetries):
    """Retry failed messages with capped, fully jittered backoff; defer without counting.

    A drop-in for Dramatiq's ``Retries``: every option means what it means
    there (``max_retries``, ``min_backoff``, ``max_backoff``, ``retry_when``,
    ``throws``, ``on_retry_exhausted``; message options ``retries``,
    ``traceback``, ``requeue_timestamp``). An actor that opts into no gate
    (no actor or message option of a limiting middleware on the broker, no
    ``park_retries=True``) is left to :attr:`dramatiq_retries`, Dramatiq's
    own, exactly as if this were not there. For the others, two differences: the backoff is
    uniform(min, min(max, min * 2**retries)) rather than Dramatiq's
    [half, whole] of that ceiling, and a :class:`~.deferral.Defer` is not a
    failure: it counts in ``deferrals``, not in ``retries``, never reaches
    ``retry_when`` or ``on_retry_exhausted``, and (with this package's
    :class:`~.callbacks.Callbacks`) fires no ``on_failure``.

    Examples:
      >>> broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, dramatiq.middleware.Retries)]
      >>> broker.add_middleware(Retries(backend=backend, max_retries=5, min_backoff=5_000, max_backoff=600_000))

    Parameters:
      backend: where long waits are parked; without one, or while it cannot
        be written, every wait goes to Dramatiq's delay queue.
      max_retries: default retries after the first attempt (actor and message
        option ``max_retries``); ``None``: retried for as long as it fails.
      min_backoff, max_backoff: milliseconds, as Dramatiq's (actor and message
        options too); ``None``: Dramatiq's defaults, 15 s and 7 days (also the
        most any backoff may be).
      retry_when: ``retry_when(retries, exception) -> bool``, as Dramatiq's
        (actor option too): when given, it decides instead of ``max_retries``.
      park_after_s: waits of this or longer are parked in the backend
        (default 0: all of them, so no delayed message ever sits in a worker's
        memory, where a broker reconnect would strand it).
      poll_interval_s: how often each worker process releases due messages.
      transient_errors: errors of the backend on which a wait goes to the
        broker instead, and of the broker on which putting a message back is
        tried again until it works, rather than letting the message be
        acknowledged and lost. Defaults to every error: Redis
        restarting, a failover's ``READONLY``, a full memory's ``OOM`` alike.
      clock: this host's clock, for the ``message_timestamp`` of messages put
        back (what ``AgeLimit`` reads); due times are the backend's clock.
      rng: injectable randomness.
      dramatiq_retries: Dramatiq's ``Retries`` that actors opting into no gate
        get (default: one with the options above; :func:`replace_stock_retries`
        gives it the one it replaces, as the app configured it).
    """

    #: A deferral is no failure here (what enrichment_middleware.order checks beside the gates).
    understands_deferrals = True

    def __init__(
        self,
        *,
        backend: Backend | None = None,
        max_retries: int | None = 20,
        min_backoff: int | None = None,
        max_backoff: int | None = None,
        retry_when: Callable[[int, BaseException], bool] | None = None,
        park_after_s: float = 0.0,
        poll_interval_s: float = 0.25,
        transient_errors: tuple[type[BaseException], ...] = (Exception,),
        clock: Clock | None = None,
        rng: random.Random | None = None,
        dramatiq_retries: StockRetries | None = None,
    ) -> None:
        super().__init__(
            # Dramatiq annotates int, yet its code reads None as "no limit" (as here).
            max_retries=max_retries,  # type: ignore[arg-type]
            min_backoff=min_backoff,
            max_backoff=max_backoff,
            retry_when=retry_when,
        )
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.park_after_s = park_after_s
        self.poll_interval_s = poll_interval_s
        self.transient_errors = transient_errors
        self.parking = ParkingLot(backend) if backend is not None else None
        self._outage = _OutageLog(self.logger, "Parked messages wait", every_s=UNREACHABLE_LOG_EVERY_S)
        self._releaser = BackgroundLoop(
            "parking-releaser", self._release_once, every_s=poll_interval_s, rng=self.rng
        )
        self._broker: Broker | None = None
        self.dramatiq_retries = dramatiq_retries or StockRetries(
            max_retries=max_retries,  # type: ignore[arg-type]
            min_backoff=min_backoff,
            max_backoff=max_backoff,
            retry_when=retry_when,
        )

    @property
    def actor_options(self) -> set[str]:
        return {*super().actor_options, PARK_RETRIES}

    def parks(self, broker: Broker, message: MessageProxy) -> bool:
        """Whether ``message`` gets this package's retries: its actor opts into a gate, or ``park_retries``."""
        actor = broker.get_actor(message.actor_name)
        if actor.options.get(PARK_RETRIES):
            return True
        gates = {m.option for m in broker.middleware if isinstance(m, AdmissionMiddleware)}
        # A message option of a gate counts too: the gate reads it before the actor's.
        return any(
            actor.options.get(gate) is not None or message.options.get(gate) is not None for gate in gates
        )

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return
        if isinstance(exception, Defer):
            if exception.kept_elsewhere:
                return  # a fair room keeps it and sends it again: acknowledged here, not lost
            # Only this package's gates and actors raise it: a deferral whatever the actor.
            message.options[DEFERRALS] = message.options.get(DEFERRALS, 0) + 1
            self.schedule(broker, message, deferral_of(message, exception), refresh_age=True)
            return
        if not self.parks(broker, message):
            self.dramatiq_retries.after_process_message(broker, message, result=result, exception=exception)  # type: ignore[no-untyped-call]
            return
        actor = broker.get_actor(message.actor_name)
        message.options["last_error"] = error_text(exception)
        throws = message.options.get("throws") or actor.options.get("throws")
        if throws and isinstance(exception, throws):
            self._dead_letter(message, "not retried: the actor throws it", exception)
            return
        # From here on, exactly what Dramatiq's Retries does with its options
        # (tests/unit/test_retries_contract.py compares the two): the failure
        # is counted, timestamped and given a traceback before the decision.
        retries = message.options.setdefault("retries", 0)
        message.options["retries"] = retries + 1
        message.options["traceback"] = traceback_text()
        message.options["requeue_timestamp"] = int(time.time() * 1000)
        max_retries = message.options.get("max_retries", actor.options.get("max_retries", self.max_retries))
        retry_when = actor.options.get("retry_when", self.retry_when)
        if retry_when is not None:
            # retry_when, when given, decides instead of max_retries.
            give_up = not retry_when(retries, exception)
            exhausted = max_retries is not None and retries >= max_retries
            why = f"{'retries exhausted' if exhausted else 'retry_when said no'} after {retries + 1} attempts"
        else:
            # max_retries None: retried for as long as it fails.
            give_up = max_retries is not None and retries >= max_retries
            why = f"retries exhausted after {retries + 1} attempts"
        if give_up:
            self._dead_letter(message, why, exception)
            target = message.options.get("on_retry_exhausted") or actor.options.get("on_retry_exhausted")
            if target:
                broker.get_actor(target).send(
                    message.asdict(), {"retries": retries, "max_retries": max_retries}
                )
            return
        if isinstance(exception, dramatiq.Retry) and exception.delay is not None:
            delay_s = exception.delay / 1000
        else:
            min_backoff = message.options.get(
                "min_backoff", actor.options.get("min_backoff", self.min_backoff)
            )
            max_backoff = message.options.get(
                "max_backoff", actor.options.get("max_backoff", self.max_backoff)
            )
            # Dramatiq's ceiling too: no backoff beyond a week.
            max_backoff = min(max_backoff, DEFAULT_MAX_BACKOFF)
            delay_s = exponential_backoff(
                retries, base_s=min_backoff / 1000, cap_s=max_backoff / 1000, rng=self.rng
            )
        self.logger.info(
            "Retrying message %s in %.1fs: %s.", message.message_id, delay_s, message.options["last_error"]
        )
        self.schedule(broker, message, delay_s)

    def _dead_letter(self, message: MessageProxy, why: str, exception: BaseException) -> None:
        # The broker keeps the message as it was enqueued, so the log line is
        # where the reason is recorded (and the metrics, by outcome).
        self.logger.warning(
            "Dead-lettering message %s (%s, %s): %s",
            message.message_id,
            message.actor_name,
            why,
            message.options["last_error"],
        )
        message.fail()

    def schedule(
        self,
        broker: Broker,
        message: MessageProxy | dramatiq.Message[Any],
        delay_s: float,
        *,
        refresh_age: bool = False,
    ) -> None:
        """Put ``message`` back in ``delay_s`` seconds: parked in the backend, or Dramatiq's delay queue.

        When parking fails (the backend unreachable, read-only after a
        failover, out of memory) the message goes to the broker's delay queue
        instead: a worker then holds it in memory until due, which beats
        holding the worker thread until the backend is back. Only when the
        broker fails too does this keep trying, as Dramatiq's own
        acknowledgement does: giving up would let the worker acknowledge a
        message that exists nowhere else. A worker stopped meanwhile has not
        acknowledged it, so the broker hands it on. At least once: a parking
        that failed after it was written leaves the message in both places.
        """
        plain: dramatiq.Message[Any] = message._message if isinstance(message, MessageProxy) else message
        if refresh_age:
            # A deferral is not the job's fault: AgeLimit counts from its return.
            plain = plain.copy(message_timestamp=int(self.clock.now() * 1000))
        pause_s = 0.1
        attempts = 0
        while True:
            if self._park(plain, delay_s):
                return
            try:
                broker.enqueue(plain, delay=int(delay_s * 1000))
                return
            except self.transient_errors as exc:
                attempts += 1
                # Transient trouble is a warning; still failing after a minute or so is an error.
                level = logging.WARNING if attempts < 15 else logging.ERROR
                self.logger.log(
                    level,
                    "Could not put message %s back (%s: %s); trying again in %.1fs.",
                    plain.message_id,
                    type(exc).__name__,
                    exc,
                    pause_s,
                )
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, 5.0)

    def _park(self, message: dramatiq.Message[Any], delay_s: float) -> bool:
        """Park ``message`` for ``delay_s``; False when it is not parked (no backend, a short wait, a failure)."""
        if self.parking is None or delay_s < self.park_after_s:
            return False
        try:
            self.parking.park(message.message_id, message.encode(), delay_s)
        except self.transient_errors as exc:
            self.logger.warning(
                "Could not park message %s (%s: %s); it waits %.1fs in the broker's delay queue instead.",
                message.message_id,
                type(exc).__name__,
                exc,
                delay_s,
            )
            return False
        return True

    def release_due(self, broker: Broker, limit: int = 100) -> int:
        """Enqueue parked messages that are due; returns how many.

        At least once: a releaser that dies after claiming, or after
        enqueueing, leaves the message to come due again when its claim
        lapses. The claim is then cleared by its parking's token, so a
        message consumed and parked again meanwhile keeps its new parking.
        """
        if self.parking is None:
            return 0
        released = 0
        for claim in self.parking.claim_due(limit):
            failpoint("parking.claimed")
            try:
                message = dramatiq.Message.decode(claim.payload)
            except DecodeError as exc:
                # Not dropped, and not in the way of the others: it stays
                # parked, comes due again when its claim lapses, and says so.
                self.logger.error(
                    "Parked message %s cannot be decoded (%s); it stays parked. Inspect or remove it by hand.",
                    claim.member,
                    exc,
                )
                continue
            broker.enqueue(message.copy(message_timestamp=int(self.clock.now() * 1000)))
            failpoint("parking.enqueued")
            self.parking.done(claim)
            released += 1
        return released

    def after_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        if self.parking is not None:
            self._broker = broker
            self._releaser.start()

    def before_worker_shutdown(self, broker: Broker, worker: dramatiq.Worker) -> None:
        self._releaser.stop()

    def _release_once(self) -> None:
        broker = self._broker
        if broker is None:
            return
        try:
            while self.release_due(broker) and not self._releaser.stopping:
                pass
            self._outage.over()
        except BackendUnavailable as exc:
            self._outage.failed(exc)
        except Exception:
            self.logger.exception("Releasing parked messages failed; trying again shortly.")
            time.sleep(self.poll_interval_s)


def replace_stock_retries(broker: Broker, retries: Retries) -> Retries:
    """Put ``retries`` where Dramatiq's ``Retries`` stood on ``broker`` (or at the end) and return it.

    The one it replaces keeps retrying the actors that opt into no gate, with
    the options the app gave it: the app's actors see no change.
    """
    for index, middleware in enumerate(broker.middleware):
        if isinstance(middleware, StockRetries) and not isinstance(middleware, Retries):
            retries.dramatiq_retries = middleware
            # Same place: the after-hooks run in the same order as before.
            broker.middleware[index] = retries
            broker.actor_options |= retries.actor_options
            return retries
    broker.add_middleware(retries)
    return retries


class _OutageLog:
    """Logs an outage once when it starts, then at most every ``every_s`` while it lasts, and its end.

    A loop that polls four times a second would otherwise log four warnings a
    second per process for as long as the backend is away.
    """

    def __init__(self, logger: logging.Logger, what: str, *, every_s: float) -> None:
        self.logger = logger
        self.what = what
        self.every_s = every_s
        self._since: float | None = None
        self._logged_at = 0.0
        self._failures = 0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._failures += 1
        if self._since is None:
            self._since = self._logged_at = now
            self.logger.warning("%s: %s", self.what, exc)
        elif now - self._logged_at >= self.every_s:
            self._logged_at = now
            self.logger.warning(
                "%s: still unreachable after %.0f s (%d attempts): %s", self.what, now - self._since,
                self._failures, exc,
            )  # fmt: skip

    def over(self) -> None:
        if self._since is not None:
            self.logger.info("%s no longer: the backend is reachable again.", self.what)
            self._since = None
            self._failures = 0

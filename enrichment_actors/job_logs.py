"""Every log line a worker writes about a job names the job: ``[job <id> box S,W,N,E]``.

The id is the one ``enrichment enqueue`` prints and ``enrich.send`` returns:
the fetches and stores an ``enrich`` job leads to carry it in their message
option ``origin`` (:func:`origin_options`), so one ``grep`` follows a job
through every worker. The box is the message's own (a split child's quarter,
say).

:class:`JobLogContext` is a middleware and a logging filter. Put first on the
broker, it knows the message from before the first middleware's hook to
after the last one's (Dramatiq's ``CurrentMessage`` is set later and cleared
earlier: a dead-letter warning would go without it). At worker boot it
adds ``%(job)s`` before ``%(message)s`` in the format of the root logger's
handlers, and fills it in on every record: empty outside a job. (Elsewhere,
as in the demo, call :func:`install` once logging is configured.)

Examples:
  >>> broker.middleware.insert(0, JobLogContext())  # doctest: +SKIP
  [2026-12-07 12:00:00,000] [PID 7] [Thread-4] [enrichment_actors.actors] [WARNING] [job 5c0f... box 48.85,2.29,48.86,2.3] ...
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Collection, Mapping
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import CurrentMessage

from enrichment_middleware.fair import FAIR_KEY

#: Message option: the id of the ``enrich`` message a fetch or store comes from.
ORIGIN = "origin"

_JOB: contextvars.ContextVar[str] = contextvars.ContextVar("enrichment_job", default="")


class JobLogContext(dramatiq.Middleware, logging.Filter):
    """Names the job of this thread in every log record (``%(job)s``); see the module's docstring.

    ``actors``: the names of the actors whose messages are named; None: every
    actor. On an app's broker, ours only: the app's own lines keep their text.
    """

    def __init__(self, *, actors: Collection[str] | None = None) -> None:
        dramatiq.Middleware.__init__(self)
        logging.Filter.__init__(self)
        self.actors = None if actors is None else frozenset(actors)

    def after_process_boot(self, broker: Broker) -> None:
        install(self)  # a worker process of the dramatiq CLI: its handlers are set up

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if self.actors is None or message.actor_name in self.actors:
            _JOB.set(job_label(message.message_id, message.options, message.kwargs))

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        _JOB.set("")

    after_skip_message = after_process_message

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = _JOB.get()
        return True


def install(context: logging.Filter) -> None:
    """Add ``%(job)s`` to the format of the root logger's handlers, and ``context`` to fill it in (once)."""
    for handler in logging.getLogger().handlers:
        if context in handler.filters:
            continue
        handler.addFilter(context)
        formatter = handler.formatter or logging.Formatter()
        fmt = formatter._fmt or "%(message)s"
        if "%(job)s" not in fmt and "%(message)s" in fmt:
            handler.setFormatter(
                logging.Formatter(fmt.replace("%(message)s", "%(job)s%(message)s"), formatter.datefmt)
            )


def job_label(message_id: str, options: Mapping[str, Any], kwargs: Mapping[str, Any]) -> str:
    """``[job ID box S,W,N,E] ``: the originating ``enrich`` id, and the box of this message.

    Examples:
      >>> job_label("m2", {"origin": "m1"}, {"bbox": {"south": 1, "west": 2, "north": 3.5, "east": 4}})
      '[job m1 box 1,2,3.5,4] '
      >>> job_label("m3", {}, {"job": {"bbox": [1, 2, 3, 4]}})
      '[job m3 box 1,2,3,4] '
      >>> job_label("m4", {}, {"bbox": "nonsense"})
      "[job m4 box 'nonsense'] "
    """
    origin = options.get(ORIGIN) or message_id
    job = kwargs.get("job")
    bbox = kwargs.get("bbox", job.get("bbox") if isinstance(job, Mapping) else None)
    return f"[job {origin}{_box(bbox)}] "


def origin_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` plus the ``origin`` and the source (``fair_key``) of the job running in this thread,
    for a message it sends on: a split job's parts wait in their parent's lane."""
    message = CurrentMessage.get_current_message()
    if message is None:
        return dict(options)
    inherited = {FAIR_KEY: message.options[FAIR_KEY]} if FAIR_KEY in message.options else {}
    return {**options, **inherited, ORIGIN: message.options.get(ORIGIN) or message.message_id}


def _box(bbox: Any) -> str:
    if bbox is None:
        return ""
    values: Any = bbox
    if isinstance(bbox, Mapping):
        values = [bbox.get(side) for side in ("south", "west", "north", "east")]
    if (
        isinstance(values, (list, tuple))
        and len(values) == 4
        and all(isinstance(v, (int, float)) for v in values)
    ):
        return " box " + ",".join(f"{v:g}" for v in values)
    return f" box {str(bbox)[:80]!r}" if isinstance(bbox, str) else f" box {repr(bbox)[:80]}"

"""Failpoints: named places between the steps of a protocol, where a test pauses, fails or kills a worker.

A protocol that spans two steps (claim then enqueue, call then hand off,
acquire then release) is only proven safe when something can stop between
the steps. Product code marks each boundary with :func:`failpoint`; the
``FAILPOINTS`` environment variable (read by every worker process at import)
or :func:`configure` (tests in one process) says what happens there. With
nothing configured a failpoint is one dictionary lookup.

The spec is a comma-separated list of ``PATTERN=ACTION``, where PATTERN is a
failpoint name or an :mod:`fnmatch` pattern, and ACTION is one of:

- ``sleep:S`` pause S seconds; ``sleep:A-B`` a uniform random pause in [A, B];
- ``raise:P`` raise :class:`FailpointError` with probability P (0..1);
- ``kill:P`` end the whole process with SIGKILL with probability P.

Examples:
  >>> configure("parking.claimed=sleep:0.001,semaphore.*=raise:0")
  >>> failpoint("parking.claimed")
  >>> failpoint("semaphore.acquired")
  >>> configure("")
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["FailpointError", "configure", "failpoint", "hooked"]

#: The environment variable every process reads its failpoints from.
ENV = "FAILPOINTS"


class FailpointError(RuntimeError):
    """Raised by a failpoint configured with ``raise``: a fault injected on purpose."""


@dataclass(frozen=True)
class _Action:
    kind: str
    low: float
    high: float
    callback: Callable[[], None] | None = None

    def run(self, name: str, rng: random.Random) -> None:
        if self.callback is not None:
            self.callback()
        elif self.kind == "sleep":
            time.sleep(rng.uniform(self.low, self.high))
        elif self.kind == "raise" and rng.random() < self.low:
            raise FailpointError(f"fault injected at failpoint {name!r}")
        elif self.kind == "kill" and rng.random() < self.low:
            os.kill(os.getpid(), signal.SIGKILL)


_rules: list[tuple[str, _Action]] = []
_cache: dict[str, tuple[_Action, ...]] = {}
_rng = random.Random()


def _parse_action(text: str, rule: str) -> _Action:
    kind, _, argument = text.partition(":")
    try:
        if kind == "sleep":
            low, _, high = argument.partition("-")
            return _Action("sleep", float(low), float(high or low))
        if kind in ("raise", "kill"):
            probability = float(argument or "1")
            if 0 <= probability <= 1:
                return _Action(kind, probability, probability)
    except ValueError:
        pass
    raise ValueError(
        f"{ENV} rule {rule!r} is not understood: write NAME=sleep:SECONDS, NAME=sleep:MIN-MAX, "
        "NAME=raise:PROBABILITY or NAME=kill:PROBABILITY (probabilities from 0 to 1)."
    )


def configure(spec: str | None) -> None:
    """Replace every failpoint rule with those of ``spec`` (see the module docstring); "" clears them."""
    rules = []
    for rule in (spec or "").split(","):
        if not rule.strip():
            continue
        pattern, found, action = rule.strip().partition("=")
        if not found or not pattern:
            raise ValueError(f"{ENV} rule {rule!r} needs the form PATTERN=ACTION.")
        rules.append((pattern, _parse_action(action, rule)))
    _rules[:] = rules
    _cache.clear()


@contextlib.contextmanager
def hooked(name: str, callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` at failpoint ``name`` (in the thread that reaches it) while the block runs.

    For tests in one process that must stop one thread between two steps of
    a protocol, exactly there, while another runs: the callback waits on an
    event the test sets. The configured rules stay in force beside it.

    Examples:
      >>> with hooked("ledger.finish.checked", lambda: None):
      ...     failpoint("ledger.finish.checked")
    """
    rule = (name, _Action("call", 0.0, 0.0, callback))
    _rules.append(rule)
    _cache.clear()
    try:
        yield
    finally:
        # configure() inside the block may have dropped it already.
        with contextlib.suppress(ValueError):
            _rules.remove(rule)
        _cache.clear()


def failpoint(name: str) -> None:
    """Run what the configuration says for ``name``: nothing, a pause, an error or a kill."""
    if not _rules:
        return
    actions = _cache.get(name)
    if actions is None:
        actions = tuple(action for pattern, action in _rules if fnmatch.fnmatchcase(name, pattern))
        _cache[name] = actions
    for action in actions:
        action.run(name, _rng)


configure(os.environ.get(ENV))

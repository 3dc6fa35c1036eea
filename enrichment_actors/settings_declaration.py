"""How a setting is declared once: a dataclass field that names its variable, default, check and meaning.

:func:`setting` makes the field; :func:`declared` lists a class's
declarations in order and :func:`read_declared` reads them from an
environment. :mod:`.settings` declares the product's settings with them and
:mod:`.settings_table` renders README.md's table from the same declarations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from enrichment_middleware.redaction import redact_url

T = TypeVar("T")

_KEY = "setting"


class SettingsError(ValueError):
    """An environment variable holds a value the product cannot use."""


@dataclass(frozen=True)
class Derived:
    """A default computed from the settings declared before it; README.md shows ``text``."""

    text: str
    compute: Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True)
class Setting:
    """One declared setting: its variable, default and meaning, and how its text becomes a value.

    Parameters:
      env: the environment variable.
      default: the text an unset or blank variable stands for, or a :class:`Derived` default.
      help: one line for README.md's table.
      convert: text to value; a ValueError means the text is unusable (a SettingsError is
        passed on as it is: it says more).
      check: whether a converted value is usable.
      expect: what a usable value looks like, for the error message.
      sender: whether a process that only sends jobs needs it (workers need every setting).
      at_least: the field, declared before, whose value this one may not be below.
    """

    env: str
    default: str | Derived
    help: str
    convert: Callable[[str], Any]
    check: Callable[[Any], bool]
    expect: str
    sender: bool = False
    at_least: str | None = None

    def read(self, environ: Mapping[str, str], earlier: Mapping[str, Any]) -> Any:
        """The value ``environ`` gives, or the default's; SettingsError naming the variable if unusable."""
        text = environ.get(self.env, "").strip()
        if not text:
            text = self.default.compute(earlier) if isinstance(self.default, Derived) else self.default
        try:
            value = self.convert(text)
        except SettingsError:
            raise
        except ValueError:
            raise invalid(self.env, text, self.expect) from None
        floor = None if self.at_least is None else earlier[self.at_least]
        if not self.check(value) or (floor is not None and not value >= floor):
            raise invalid(self.env, text, self.expect)
        return value


def invalid(env: str, text: str, expect: str) -> SettingsError:
    """The one-line error for an unusable value; URLs carry passwords, so it shows them masked."""
    return SettingsError(f"{env}={redact_url(text)!r} is not valid: expected {expect}.")


def _anything(value: object) -> bool:
    return True


def setting(
    env: str,
    default: str | Derived,
    convert: Callable[[str], T],
    check: Callable[[T], bool] = _anything,
    expect: str = "",
    *,
    doc: str,
    sender: bool = False,
    secret: bool = False,
    at_least: str | None = None,
) -> T:
    """Declare a dataclass field read from the variable ``env`` (the parameters are :class:`Setting`'s).

    ``secret`` keeps the value out of the repr: URLs may carry passwords. The
    field has no default of its own: only :func:`read_declared` fills it. It
    is typed as its value so that mypy checks ``convert`` against the field.

    Examples:
      >>> @dataclass(frozen=True, kw_only=True)
      ... class Limits:
      ...     tags: int = setting("MAX_TAGS", "20", int, lambda v: v > 0, "a whole number > 0", doc="Most tags")
      >>> Limits(**read_declared(declared(Limits), {"MAX_TAGS": "5"}))
      Limits(tags=5)
      >>> read_declared(declared(Limits), {"MAX_TAGS": "0"})
      Traceback (most recent call last):
        ...
      enrichment_actors.settings_declaration.SettingsError: MAX_TAGS='0' is not valid: expected a whole number > 0.
    """
    declaration = Setting(env, default, doc, convert, check, expect, sender, at_least)
    return cast(T, dataclasses.field(repr=not secret, metadata={_KEY: declaration}))


def declared(cls: type, *, sender: bool = False) -> tuple[tuple[str, Setting], ...]:
    """The (field name, declaration) pairs of ``cls`` in order; with ``sender``, only what senders need."""
    pairs = tuple(
        (field.name, field.metadata[_KEY]) for field in dataclasses.fields(cls) if _KEY in field.metadata
    )
    return tuple(pair for pair in pairs if pair[1].sender or not sender)


def read_declared(pairs: tuple[tuple[str, Setting], ...], environ: Mapping[str, str]) -> dict[str, Any]:
    """Each declared field's value from ``environ``, in order; SettingsError at the first unusable one."""
    values: dict[str, Any] = {}
    for name, declaration in pairs:
        values[name] = declaration.read(environ, values)
    return values

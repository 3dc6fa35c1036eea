"""How the settings' texts become values: the converters and checks :mod:`.settings` declares.

A converter raises ValueError for text it cannot read (the declaration then
names the variable and what it expects), or SettingsError when it has more
to say; a check answers whether a value is usable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from enrichment_middleware.redaction import redact_url

from .jobs import SOURCE_PATTERN
from .overpass_client import is_sendable_header
from .overpass_responses import cut
from .settings_declaration import SettingsError
from .version import __version__


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def whole_tiles(degrees: float) -> bool:
    units = round(degrees * 10_000_000)
    return units > 0 and (1_800_000_000 % units) == 0


def flag(value: str) -> bool:
    if value.lower() in {"true", "1", "yes"}:
        return True
    if value.lower() in {"false", "0", "no"}:
        return False
    raise ValueError(value)


def optional_int(value: str) -> int | None:
    return int(value) if value else None


def addresses(value: str) -> tuple[str, ...]:
    entries = tuple(entry.strip() for entry in value.split(",") if entry.strip())
    for entry in entries:
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(value)
    return entries


def _by_source(value: str, usable: Callable[[float], bool]) -> tuple[tuple[str, float], ...]:
    """``name=number,...``: source names, each once, with a number ``usable`` accepts."""
    pairs: list[tuple[str, float]] = []
    for entry in (entry.strip() for entry in value.split(",") if entry.strip()):
        name, equals, text = (part.strip() for part in entry.partition("="))
        if not equals or not SOURCE_PATTERN.match(name) or name in dict(pairs):
            raise ValueError(value)
        number = float(text)
        if not usable(number):
            raise ValueError(value)
        pairs.append((name, number))
    return tuple(pairs)


def source_weights(value: str) -> tuple[tuple[str, float], ...]:
    """``name=weight,...`` of ENRICH_SOURCE_WEIGHTS: each weight above 0."""
    return _by_source(value, positive)


def source_shares(value: str) -> tuple[tuple[str, float], ...]:
    """``name=share,...`` of ENRICH_SOURCE_MAX_SHARE: each share from 0 to 1."""
    return _by_source(value, lambda share: 0 <= share <= 1)


def tags(value: str) -> tuple[str, ...]:
    names = tuple(tag.strip() for tag in value.split(",") if tag.strip())
    if not names:
        raise SettingsError("ENRICH_DEFAULT_TAGS is empty: name at least one tag, e.g. amenity,shop.")
    return names


def urls(value: str) -> tuple[str, ...]:
    """The Overpass endpoints OVERPASS_URL lists, comma-separated."""
    listed = tuple(url.strip() for url in value.split(",") if url.strip())
    if not all(is_http_url(url) for url in listed):
        raise SettingsError(
            f"OVERPASS_URL={redact_url(value)!r} is not valid: expected an http(s) URL ending "
            "in /interpreter, or several separated by commas."
        )
    if not listed:
        raise SettingsError("OVERPASS_URL is empty: give an http(s) URL ending in /interpreter.")
    return listed


def contact(value: str) -> str:
    """Refuse a contact that says nothing of how to reach whoever runs this (``me``); empty is judged later."""
    if value and not identifies(value):
        raise SettingsError(
            f"OVERPASS_CONTACT={cut(ascii(value), 80)} does not say how to reach you: give an e-mail "
            "address (ops@example.org) or a URL (https://example.org/contact); the Overpass operators "
            "block clients they cannot identify."
        )
    return value


def default_user_agent(earlier: Mapping[str, Any]) -> str:
    """The product and the contact; a contact that cannot go into the header is named as the culprit."""
    # Without a contact (a private endpoint may do without) the User-Agent names
    # the product only: no placeholder every such deployment would share.
    who = earlier["overpass_contact"]
    agent = (
        f"overpass-enrichment/{__version__} (+contact: {who})"
        if who
        else f"overpass-enrichment/{__version__}"
    )
    if not is_sendable_header(agent):
        raise _unsendable("OVERPASS_CONTACT", who)
    return agent


def user_agent(value: str) -> str:
    """Refuse a User-Agent http.client cannot send: it would fail every call, after the quota counted it."""
    if not is_sendable_header(value):
        raise _unsendable("OVERPASS_USER_AGENT", value)
    return value


def _unsendable(env: str, value: str) -> SettingsError:
    return SettingsError(
        f"{env}={cut(ascii(value), 80)} cannot be sent in the User-Agent header: use printable "
        "ASCII only, no line breaks (an e-mail address or URL; a domain in its xn-- form)."
    )


def identifies(contact: str) -> bool:
    """Whether ``contact`` is an e-mail address or an http(s) URL: something that says who to reach.

    Examples:
      >>> [identifies(c) for c in ("ops@example.org", "https://example.org/contact", "me", "@", "http://")]
      [True, True, False, False, False]
    """
    if contact.lower().startswith(("http://", "https://")):
        return bool(urlsplit(contact).hostname)
    local, at, domain = contact.rpartition("@")
    return bool(at and local and domain) and not any(c.isspace() for c in contact)


def is_redis_url(value: str) -> bool:
    return urlsplit(value).scheme in {"redis", "rediss", "unix"}


def is_amqp_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in {"amqp", "amqps"} and bool(parts.hostname)


def is_database_url(value: str) -> bool:
    scheme = urlsplit(value).scheme
    return scheme in {"sqlite", "postgresql", "postgres"}


def is_http_url(value: str) -> bool:
    # Printable ASCII with a valid port: what every call could send (requests fails at call time otherwise).
    if not is_sendable_header(value) or " " in value:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - reading it is the check
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and bool(parts.hostname) and parts.path.endswith("/interpreter")

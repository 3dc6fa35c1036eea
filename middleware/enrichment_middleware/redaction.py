"""Secrets out of messages: URLs and error texts with their passwords replaced.

Connection URLs carry passwords (``redis://:secret@host/0``,
``postgresql://user:secret@host/db``), and error messages end up in logs, in
a message's ``last_error`` option on every retry, and on screen. Everything
that shows a URL, or the text of an error raised while using one, passes
through here first.

Examples:
  >>> redact_url("redis://:s3cret@cache:6379/0")
  'redis://:***@cache:6379/0'
  >>> redact("auth failed for redis://:s3cret@cache:6379/0 (s3cret)", "redis://:s3cret@cache:6379/0")
  'auth failed for redis://:***@cache:6379/0 (***)'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"

#: A password shorter than this is masked inside URLs only: masking every
#: occurrence of, say, "a" in a text would make it unreadable and hide nothing.
MIN_BARE_SECRET = 3

# scheme://user:password@ in any text; the password runs to the netloc's last "@".
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)(?P<password>[^/?#\s]*)@")
# ...?password=secret (redis-py on a unix socket, libpq).
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&#\s]*)")


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; the user, host, port and path stay."""
    url = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", url)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", url)


def secrets_of(urls: Iterable[str | None]) -> list[str]:
    """The passwords in ``urls``, as written and percent-decoded (drivers show either)."""
    found: list[str] = []
    for url in urls:
        if not url:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:  # a malformed port, say: fall back to the pattern
            match = _URL_PASSWORD.search(url)
            password = match["password"] if match else None
        passwords = [password, *(m["password"] for m in _QUERY_PASSWORD.finditer(url))]
        found.extend({form for p in passwords if p for form in (p, unquote(p))})
    return found


def redact(text: str, *urls: str | None, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every URL password in it masked, and every password of ``urls`` and ``secrets`` too.

    Parameters:
      text: a message or an error's text.
      urls: the URLs whose passwords must not appear (their host and port may).
      secrets: other values that must not appear (a password given on its own).
    """
    text = redact_url(text)
    for secret in sorted({*secrets_of(urls), *(s for s in secrets if s)}, key=len, reverse=True):
        if len(secret) >= MIN_BARE_SECRET:
            text = text.replace(secret, MASK)
    return text

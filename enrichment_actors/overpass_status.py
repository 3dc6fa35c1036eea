"""Read Overpass ``/api/status``: this client's query slots, and when the next one frees.

The page is plain text, one fact a line, and its layout changed over the
years (older servers print no ``Current time`` or ``Announced endpoint``
line, the oldest no ``in S seconds``), so every fact is found by its pattern,
never by its line number. Pure: the HTTP GET lives in the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["SlotStatus", "StatusUnavailable", "parse_status"]


@dataclass(frozen=True)
class SlotStatus:
    """What ``/api/status`` says about this client's slots.

    The server prints ``N slots available now.`` only when N is above 0, so a
    limited server without that line has no free slot: its slots are running
    queries or cooling down (one ``Slot available after`` line each).

    Examples:
      >>> status = parse_status(
      ...     "Rate limit: 2\\n"
      ...     "Slot available after: 2026-01-01T00:00:20Z, in 20 seconds.\\n"
      ...     "Slot available after: 2026-01-01T00:04:41Z, in 281 seconds.\\n"
      ... )
      >>> status.has_free_slot, status.seconds_until_free()
      (False, 20.0)

    Parameters:
      rate_limit: Slots this client may use at once; None when unlimited
        (``Rate limit: 0``).
      free_now: Slots free right now (``N slots available now.``; 0 when the
        line is absent, also when unlimited).
      waits_s: Seconds until each cooling-down slot frees (``Slot available
        after: ..., in S seconds.``); S is negative once that time has passed.
    """

    rate_limit: int | None
    free_now: int
    waits_s: tuple[float, ...]

    @property
    def has_free_slot(self) -> bool:
        """Whether a query sent now would get a slot."""
        return self.rate_limit is None or self.free_now > 0

    def seconds_until_free(self) -> float:
        """Seconds to wait before a slot is free: 0.0 when one is, or when the page gives no time."""
        if self.has_free_slot or not self.waits_s:
            return 0.0
        return max(0.0, min(self.waits_s))


class StatusUnavailable(Exception):
    """``/api/status`` did not say how many slots are free: the server is down or the page is unreadable."""


_RATE_LIMIT = re.compile(r"^Rate limit:\s*(\d+)", re.MULTILINE)
_FREE_NOW = re.compile(r"^(\d+) slots? available now", re.MULTILINE)
_SLOT_AVAILABLE_AFTER = re.compile(
    r"^Slot available after:\s*(?P<at>[^,\s]+)(?:,\s*in\s+(?P<seconds>-?\d+)\s+seconds)?", re.MULTILINE
)
_CURRENT_TIME = re.compile(r"^Current time:\s*(\S+)", re.MULTILINE)
# What the page says instead when the dispatcher (the database) cannot be reached.
_SERVER_DOWN = ("Dispatcher_Client", "server is down", "is turned off", "File_Error", "open64:")


def parse_status(text: str) -> SlotStatus:
    """Parse the text of ``/api/status``.

    Raises :class:`StatusUnavailable` when the text says the server is down
    or has no ``Rate limit:`` line.
    """
    rate_limit = _RATE_LIMIT.search(text)
    if rate_limit is None:
        first_line = text.strip().split("\n", 1)[0][:200]
        if any(marker in text for marker in _SERVER_DOWN):
            raise StatusUnavailable(
                f"Overpass /api/status says the server is down ({first_line!r}). No query can run "
                "until its operators restart it: wait, or use another Overpass instance."
            )
        raise StatusUnavailable(
            f"Overpass /api/status has no 'Rate limit:' line ({first_line!r}): check that the "
            "status URL belongs to an Overpass API server."
        )
    limit = int(rate_limit.group(1))
    free_now = _FREE_NOW.search(text)
    return SlotStatus(
        rate_limit=limit or None,
        free_now=int(free_now.group(1)) if free_now else 0,
        waits_s=tuple(_seconds_until(match, text) for match in _SLOT_AVAILABLE_AFTER.finditer(text)),
    )


def _seconds_until(line: re.Match[str], text: str) -> float:
    if line.group("seconds") is not None:
        return float(line.group("seconds"))
    # The oldest servers print only the time: measure it from the server's
    # own clock when the page shows it, else from ours.
    current = _CURRENT_TIME.search(text)
    try:
        available_at = datetime.fromisoformat(line.group("at"))
        now = datetime.fromisoformat(current.group(1)) if current else datetime.now(UTC)
        return (available_at - now).total_seconds()
    except (TypeError, ValueError):
        raise StatusUnavailable(
            f"Overpass /api/status has a slot line with an unreadable time ({line.group(0)!r}): "
            "report it, and treat the server as busy meanwhile."
        ) from None

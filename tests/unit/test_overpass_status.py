"""The /api/status parser against every recorded and hand-made status page."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from enrichment_actors.overpass_status import SlotStatus, StatusUnavailable, parse_status
from tests.fixture_manifest import OWN_ROOT, FixtureCase, case_params

# Shared manifest entries that contradict the server. Overpass prints "N slots
# available now." only when rate_limit - cooldown lines - running queries > 0
# (drolbr/Overpass-API, src/overpass_api/dispatch/public_status.cc); this page has Rate limit 2,
# one cooldown line and one running query, hence no line and no free slot. The
# manifest copied aio-overpass's test, which counts only the cooldown lines.
# file -> (what the manifest says, what the server means)
ERRATA = {
    "status/aio-status-one-slot.txt": ("free=1", "slots=2 free=0 (plus a cooldown line)"),
}


@dataclass(frozen=True)
class Expectation:
    """A manifest ``expected`` string for a status page, e.g. ``slots=1 free=0 (cooldown 1 s)``."""

    server_down: bool = False
    slots: str | None = None  # "2", "unlimited", or None when the expectation does not say
    free_now: int | None = None
    cooldown_lines: str = "none"  # "none", "one", "several" or "exact"
    exact_waits: tuple[float, ...] = ()


def parse_expectation(text: str) -> Expectation:
    if text == "server_down":
        return Expectation(server_down=True)
    match = re.fullmatch(r"(?:slots=(\w+))?\s*(?:free=(\d+))?\s*(?:\((.+)\))?", text.strip())
    if match is None or not text.strip():
        raise ValueError(f"unknown status expectation {text!r}: teach parse_expectation its grammar")
    slots, free, note = match.groups()
    waits: tuple[float, ...] = ()
    if note is None:
        lines = "none"
    elif note == "cooldown lines":
        lines = "several"
    elif note == "plus a cooldown line":
        lines = "one"
    elif seconds := re.fullmatch(r"cooldown (-?\d+) s", note):
        lines, waits = "exact", (float(seconds.group(1)),)
    else:
        raise ValueError(f"unknown note {note!r} in status expectation {text!r}")
    return Expectation(
        slots=slots,
        free_now=None if free is None else int(free),
        cooldown_lines=lines,
        exact_waits=waits,
    )


def expectation_for(case: FixtureCase) -> Expectation:
    wrong, right = ERRATA.get(case.file, (None, None)) if case.source == "shared" else (None, None)
    return parse_expectation(right if case.expected == wrong and right else case.expected)


@pytest.mark.parametrize("case", case_params("status"))
def test_manifest_status_page_reads_as_expected(case: FixtureCase) -> None:
    expected = expectation_for(case)
    text = case.body().decode()

    if expected.server_down:
        with pytest.raises(StatusUnavailable, match="server is down"):
            parse_status(text)
        return
    status = parse_status(text)

    if expected.slots is not None:
        assert status.rate_limit == (None if expected.slots == "unlimited" else int(expected.slots))
    if expected.free_now is not None:
        assert status.free_now == expected.free_now
    assert {
        "none": lambda n: n == 0,
        "one": lambda n: n == 1,
        "several": lambda n: n >= 2,
        "exact": lambda n: n == len(expected.exact_waits),
    }[expected.cooldown_lines](len(status.waits_s)), status.waits_s
    if expected.cooldown_lines == "exact":
        assert status.waits_s == expected.exact_waits
    unlimited = status.rate_limit is None
    assert status.has_free_slot == (unlimited or status.free_now > 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server_down", Expectation(server_down=True)),
        ("slots=2 free=2", Expectation(slots="2", free_now=2)),
        ("slots=unlimited", Expectation(slots="unlimited")),
        ("free=0 (cooldown lines)", Expectation(free_now=0, cooldown_lines="several")),
        ("free=1 (plus a cooldown line)", Expectation(free_now=1, cooldown_lines="one")),
        (
            "slots=1 free=0 (cooldown 1 s)",
            Expectation(slots="1", free_now=0, cooldown_lines="exact", exact_waits=(1.0,)),
        ),
        (
            "slots=1 free=0 (cooldown -3 s)",
            Expectation(slots="1", free_now=0, cooldown_lines="exact", exact_waits=(-3.0,)),
        ),
    ],
)
def test_expectation_grammar(text: str, expected: Expectation) -> None:
    assert parse_expectation(text) == expected


@pytest.mark.parametrize("text", ["", "free=many", "slots=2 (cooldown soon)", "ok"])
def test_unknown_expectation_is_an_error_not_a_pass(text: str) -> None:
    with pytest.raises(ValueError, match="unknown"):
        parse_expectation(text)


@pytest.mark.parametrize(
    ("status", "has_free_slot", "seconds"),
    [
        (SlotStatus(rate_limit=None, free_now=0, waits_s=()), True, 0.0),
        (SlotStatus(rate_limit=2, free_now=1, waits_s=(5.0,)), True, 0.0),
        (SlotStatus(rate_limit=2, free_now=0, waits_s=(281.0, 20.0)), False, 20.0),
        (SlotStatus(rate_limit=1, free_now=0, waits_s=(-3.0,)), False, 0.0),
        (SlotStatus(rate_limit=2, free_now=0, waits_s=(-1.0, 30.0)), False, 0.0),
        (SlotStatus(rate_limit=1, free_now=0, waits_s=()), False, 0.0),
    ],
)
def test_seconds_until_free(status: SlotStatus, has_free_slot: bool, seconds: float) -> None:
    assert (status.has_free_slot, status.seconds_until_free()) == (has_free_slot, seconds)


def test_slot_lines_without_seconds_are_measured_from_the_server_clock() -> None:
    status = parse_status((OWN_ROOT / "status/oldest-format-time-only.txt").read_text())

    assert status.waits_s == (45.0, 90.0)
    assert status.seconds_until_free() == 45.0


def test_slot_lines_without_seconds_or_server_clock_use_ours() -> None:
    at = (datetime.now(UTC) + timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")

    status = parse_status(f"Rate limit: 1\nSlot available after: {at}\n")

    assert 110 <= status.seconds_until_free() <= 121


def test_status_reads_facts_by_pattern_not_line_number() -> None:
    text = "Rate limit: 3\nCurrently running queries (pid, space limit, time limit, start time):\n2 slots available now.\n"

    assert parse_status(text) == SlotStatus(rate_limit=3, free_now=2, waits_s=())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
        "Connected as: 1\nCurrent time: 2026-01-15T08:00:00Z\n",
    ],
)
def test_page_without_rate_limit_is_unavailable(text: str) -> None:
    with pytest.raises(StatusUnavailable, match="no 'Rate limit:' line"):
        parse_status(text)


def test_slot_line_with_unreadable_time_is_unavailable() -> None:
    with pytest.raises(StatusUnavailable, match="unreadable time"):
        parse_status("Rate limit: 1\nSlot available after: soon\n")

"""Failpoints: the rules a spec configures, and the hooks in-process tests stop a thread with."""

from __future__ import annotations

import threading

import pytest

from enrichment_middleware import failpoints
from enrichment_middleware.failpoints import FailpointError, configure, failpoint, hooked


@pytest.fixture(autouse=True)
def no_rules() -> None:
    configure("")


@pytest.mark.parametrize(
    ("spec", "name", "raises"),
    [
        ("a.b=raise:1", "a.b", True),
        ("a.*=raise:1", "a.b", True),
        ("a.*=raise:0", "a.b", False),
        ("a.c=raise:1", "a.b", False),
        ("", "a.b", False),
    ],
)
def test_a_rule_applies_to_the_names_its_pattern_matches(spec: str, name: str, raises: bool) -> None:
    configure(spec)
    if raises:
        with pytest.raises(FailpointError):
            failpoint(name)
    else:
        failpoint(name)
    configure("")


def test_a_hook_runs_in_the_thread_that_reaches_it_and_only_within_its_block() -> None:
    seen: list[str] = []
    with hooked("ledger.finish.checked", lambda: seen.append(threading.current_thread().name)):
        thread = threading.Thread(target=failpoint, args=("ledger.finish.checked",), name="other")
        thread.start()
        thread.join()
        failpoint("ledger.finish.unfiled")
    failpoint("ledger.finish.checked")
    assert seen == ["other"]


def test_configuring_inside_a_hooks_block_leaves_its_exit_quiet() -> None:
    with hooked("x", lambda: None):
        configure("y=sleep:0")
    assert not failpoints._rules or all(name == "y" for name, _ in failpoints._rules)
    configure("")

"""The Examples blocks in the policy and backend docstrings run and say what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "middleware.backends.memory",
    "middleware.backends.redis",
    "middleware.policy.backoff",
    "middleware.policy.breaker",
    "middleware.policy.clock",
    "middleware.policy.pacing",
    "middleware.policy.parking",
    "middleware.policy.pause",
    "middleware.policy.quota",
    "middleware.policy.semaphore",
]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_hold(module: str) -> None:
    failed, attempted = doctest.testmod(importlib.import_module(module), report=False)
    assert attempted > 0 or module.endswith(".redis")
    assert failed == 0

"""The Examples blocks in the policy and backend docstrings run and say what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "enrichment_middleware.backends.memory",
    "enrichment_middleware.backends.redis",
    "enrichment_middleware.background",
    "enrichment_middleware.policy.backoff",
    "enrichment_middleware.policy.breaker",
    "enrichment_middleware.policy.clock",
    "enrichment_middleware.policy.fair",
    "enrichment_middleware.policy.pacing",
    "enrichment_middleware.policy.parking",
    "enrichment_middleware.policy.pause",
    "enrichment_middleware.policy.quota",
    "enrichment_middleware.policy.semaphore",
]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_hold(module: str) -> None:
    failed, attempted = doctest.testmod(importlib.import_module(module), report=False)
    assert attempted > 0 or module.endswith(".redis")
    assert failed == 0

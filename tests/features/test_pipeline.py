"""The pipeline end to end (pipeline.feature)."""

from pytest_bdd import scenarios

scenarios("pipeline.feature")

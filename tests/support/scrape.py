"""Scrape a Prometheus exposition endpoint and look samples up by name and labels."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

#: A sample's identity: its name and its labels, sorted.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def sample_key(name: str, labels: Mapping[str, str] | None = None) -> SampleKey:
    return name, tuple(sorted((labels or {}).items()))


@dataclass(frozen=True)
class Scrape:
    """One scrape: every sample by (name, labels).

    Examples:
      >>> scrape = Scrape.parse('jobs_total{outcome="success"} 3.0\\n')
      >>> scrape.value("jobs_total", outcome="success")
      3.0
      >>> scrape.value("jobs_total", outcome="rejected") is None
      True
    """

    samples: dict[SampleKey, float]
    text: str

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {
            sample_key(sample.name, sample.labels): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        return cls(samples, text)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None."""
        return self.samples.get(sample_key(name, labels))

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample named ``name``, by labels."""
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}

    def lines(self, *prefixes: str) -> list[str]:
        """The exposition lines starting with one of ``prefixes`` (for messages and reports)."""
        return [line for line in self.text.splitlines() if line.startswith(prefixes)]


def scrape(url: str, timeout_s: float = 5.0) -> Scrape:
    """GET ``url`` and parse it; raises on anything but HTTP 200."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return Scrape.parse(response.read().decode("utf-8"))

"""The alert rules are valid, each is unit-tested firing and not firing, and documented.

The promtool unit tests themselves take seconds, so ``make promtool-test``
(part of ``make test``) runs them, not pytest.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
RULES = DOCS / "prometheus" / "alerts.yml"
RULE_TESTS = DOCS / "prometheus" / "alerts_test.yml"

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool missing: `make servers` installs it (Debian package prometheus)"
)


def alerts() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.MULTILINE)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_rules_are_valid() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


@pytest.mark.parametrize("alert", alerts())
def test_every_rule_is_tested_firing_and_not_firing(alert: str) -> None:
    cases = re.findall(rf"alertname: {alert}\n\s+exp_alerts:( \[\])?", RULE_TESTS.read_text())
    assert "" in cases, f"{alert}: no test where it fires"
    assert " []" in cases, f"{alert}: no test where it stays silent"


@pytest.mark.parametrize("alert", alerts())
def test_every_rule_says_its_intent_and_what_to_do(alert: str) -> None:
    block = RULES.read_text().split(f"- alert: {alert}\n", 1)[0].rsplit("\n\n", 1)[-1]
    assert "# Intent:" in block, f"{alert}: write its intent beside it"
    assert f"### {alert}\n" in (DOCS / "operations.md").read_text()
    assert f"docs/operations.md#{alert.lower()}" in RULES.read_text()


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads((DOCS / "grafana" / "enrichment.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
                    for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    checked = _promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr

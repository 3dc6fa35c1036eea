"""What a newcomer gets from the package and the Makefile: licence, type hints, the operations kit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_BUILD_SDIST = """
import sys
from setuptools import build_meta
print(build_meta.build_sdist(sys.argv[1]))
"""


def test_the_sdist_carries_the_licence_the_type_hints_and_the_operations_kit(tmp_path: Path) -> None:
    source = tmp_path / "source"
    # A copy without build leftovers, so the test builds from what git tracks.
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", "var")
    )
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_SDIST, str(tmp_path / "dist")],
        cwd=source, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / "dist" / name) as sdist:
        files = {member.name.split("/", 1)[1] for member in sdist.getmembers() if "/" in member.name}
    for wanted in (
        "LICENSE",
        "Procfile",
        "docs/prometheus/alerts.yml",
        "docs/prometheus/alerts_test.yml",
        "docs/grafana/enrichment.json",
        "enrichment_actors/py.typed",
        "middleware/py.typed",
    ):
        assert wanted in files, wanted
    setup = (REPO / "setup.cfg").read_text()
    assert "enrichment_actors = py.typed" in setup and "middleware = py.typed" in setup  # in the wheel too
    assert "MIT License" in (REPO / "LICENSE").read_text() and "license = MIT" in setup

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
        "middleware/enrichment_middleware/py.typed",
        "middleware/enrichment_middleware/backends/lua/lease_acquire.lua",
        "middleware/enrichment_middleware/backends/lua/now.lua",
    ):
        assert wanted in files, wanted
    setup = (REPO / "setup.cfg").read_text()
    assert "enrichment_actors = py.typed" in setup and "middleware = py.typed" in setup  # in the wheel too
    assert "enrichment_middleware.backends = lua/*.lua" in setup
    assert "MIT License" in (REPO / "LICENSE").read_text() and "license = MIT" in setup


def _make(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy(REPO / name, workdir / name)
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_demo_installs_the_package_alone_and_make_test_the_tools(tmp_path: Path) -> None:
    demo = _make(tmp_path, "-n", "demo", f"PYTHON={sys.executable}")
    assert demo.returncode == 0, demo.stderr
    assert "pip install --quiet -e .\n" in demo.stdout and "[test,dev]" not in demo.stdout
    test = _make(tmp_path, "-n", "test", f"PYTHON={sys.executable}")
    assert "pip install --quiet -e '.[test,dev]'" in test.stdout


def _fake_python(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\ncase "$1" in -V) echo "Python {version}";; *) exit 1;; esac\n')
    path.chmod(0o755)
    return path


def test_a_virtualenv_of_an_older_python_is_rebuilt_and_an_old_python_named(tmp_path: Path) -> None:
    _fake_python(tmp_path / ".venv" / "bin" / "python", "3.9.2")
    old = _fake_python(tmp_path / "python3.8", "3.8.10")
    done = _make(tmp_path, "demo", f"PYTHON={old}")
    assert done.returncode != 0
    assert ".venv was made by Python 3.9.2, older than 3.11: rebuilding it." in done.stdout
    assert f"needs Python 3.11 or newer; {old} is Python 3.8.10" in done.stdout
    assert "make demo PYTHON=python3.11" in done.stdout
    assert not (tmp_path / ".venv").exists()

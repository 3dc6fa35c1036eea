"""No import cycle among the product's modules (``make lint`` runs the same check), imports in functions counted."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

from tests.support.import_cycles import PACKAGES, cycles, main


def test_the_product_has_no_import_cycle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(PACKAGES) == 0, capsys.readouterr().err


def test_a_cycle_through_an_import_inside_a_function_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def later():\n    from .c import thing\n")
    (package / "c.py").write_text("from .a import b as thing\n")
    (package / "d.py").write_text("from . import a\n")  # imports into the cycle, not part of it
    monkeypatch.syspath_prepend(str(tmp_path))

    found = cycles(grimp.build_graph("cyclic", cache_dir=None), ["cyclic"])

    assert found == [["cyclic.a", "cyclic.b", "cyclic.c", "cyclic.a"]]
    assert main(["cyclic"]) == 1
    assert "Import cycle: cyclic.a -> cyclic.b -> cyclic.c -> cyclic.a" in capsys.readouterr().err

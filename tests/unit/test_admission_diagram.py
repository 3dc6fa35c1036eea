"""docs/architecture.md's admission diagram matches the code: every module it names exists, and
every module of the middleware package is in it (issue 21).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "middleware" / "enrichment_middleware"


def diagram() -> str:
    text = (REPO / "docs" / "architecture.md").read_text()
    found = re.search(r"<!-- admission diagram -->\n```\n(.*?)\n```", text, re.S)
    assert found, "docs/architecture.md has no block after '<!-- admission diagram -->'"
    return found.group(1)


def named_modules(text: str) -> set[str]:
    """Module paths in the diagram: the product's from the repository, the package's from it."""
    return set(re.findall(r"(?<![\w/.])((?:enrichment_actors/)?(?:[a-z_]+/)?[a-z_]+\.py)\b", text))


def test_every_module_the_diagram_names_exists() -> None:
    names = named_modules(diagram())
    missing = sorted(
        name
        for name in names
        if not (REPO / name if name.startswith("enrichment_actors/") else PACKAGE / name).is_file()
    )
    assert names and not missing, f"the admission diagram names modules that do not exist: {missing}"


def test_every_module_of_the_middleware_package_is_in_the_diagram() -> None:
    modules = {
        path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"
    }
    absent = sorted(modules - named_modules(diagram()))
    assert not absent, f"modules of enrichment_middleware missing from the admission diagram: {absent}"

"""Load an Overpass fixture manifest (``manifest.json``) and hand its entries to tests as cases.

Two folders share one format: the recorded ground truth in
``../shared/fixtures/overpass`` (outside this repository, so possibly absent)
and the project's hand-made copy in ``tests/fixtures/overpass``. Each entry
says which file, and what a correct client concludes from it (``expected``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SHARED_ROOT = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "overpass"
OWN_ROOT = Path(__file__).resolve().parent / "fixtures" / "overpass"
ROOTS = {"shared": SHARED_ROOT, "own": OWN_ROOT}

# "http/aio-429-rate-limited.html", "http/400-one-error.html": the status is a
# three-digit number in the name, followed by a dash.
_STATUS_IN_NAME = re.compile(r"(?<![0-9])([1-5][0-9]{2})-")


@dataclass(frozen=True)
class FixtureCase:
    """One manifest entry.

    Parameters:
      source: ``"shared"`` or ``"own"``.
      root: The folder holding ``manifest.json``.
      file: The body's path relative to ``root``.
      expected: The manifest's conclusion: a label or a status expectation.
      what: The point of the file.
    """

    source: str
    root: Path
    file: str
    expected: str
    what: str

    @property
    def path(self) -> Path:
        return self.root / self.file

    @property
    def id(self) -> str:
        return f"{self.source}:{self.file}"

    @property
    def endpoint(self) -> str:
        """``"status"`` for an ``/api/status`` page, else ``"interpreter"``."""
        if self.file.startswith("status/"):
            return "status"
        request = self._companion("request.txt")
        if request is not None and request.read_text().split("\n", 1)[0].rstrip().endswith("/api/status"):
            return "status"
        return "interpreter"

    @property
    def http_status(self) -> int:
        """From ``.headers.txt`` next to a local-server body, from the name of an ``http/`` body, else 200."""
        headers = self._companion("headers.txt")
        if headers is not None:
            return int(headers.read_text().split()[1])
        if self.file.startswith("http/"):
            match = _STATUS_IN_NAME.search(Path(self.file).name)
            if match is None:
                raise ValueError(f"{self.file}: no HTTP status in the name of an http/ fixture")
            return int(match.group(1))
        return 200

    def body(self) -> bytes:
        return self.path.read_bytes()

    def companions(self) -> list[Path]:
        """The ``.request.txt`` and ``.headers.txt`` files that belong to this body."""
        return [path for path in (self._companion("request.txt"), self._companion("headers.txt")) if path]

    def _companion(self, suffix: str) -> Path | None:
        # "local-server/12_parse_error.body.html" -> "local-server/12_parse_error.headers.txt"
        stem, found, _ = self.path.name.partition(".body.")
        if not found:
            return None
        candidate = self.path.with_name(f"{stem}.{suffix}")
        return candidate if candidate.exists() else None


def load_cases(source: str) -> list[FixtureCase]:
    """Every entry of the ``source`` (``"shared"`` or ``"own"``) manifest, in file order."""
    root = ROOTS[source]
    entries: list[dict[str, Any]] = json.loads((root / "manifest.json").read_text())
    return [
        FixtureCase(source=source, root=root, file=e["file"], expected=e["expected"], what=e["what"])
        for e in entries
    ]


def case_params(endpoint: str) -> list[Any]:
    """``pytest.param`` per case of both manifests for ``endpoint``; one skipped param when shared is absent."""
    params: list[Any] = []
    for source in ("shared", "own"):
        if not (ROOTS[source] / "manifest.json").exists():
            params.append(
                pytest.param(
                    None,
                    id=f"{source}-fixtures-missing",
                    marks=pytest.mark.skip(
                        reason=f"{ROOTS[source]} is absent: the recorded Overpass responses live outside "
                        "this repository, next to it in ../shared/fixtures/overpass"
                    ),
                )
            )
            continue
        params += [pytest.param(c, id=c.id) for c in load_cases(source) if c.endpoint == endpoint]
    return params

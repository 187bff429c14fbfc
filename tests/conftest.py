"""Test-wide settings.

- ``SAFECRS_DATA_DIR`` defaults to ``../shared/data`` next to the project root (the layout of CI and
  developer machines) when it is not set.
- ``SAFECRS_ARTIFACTS`` points at a fresh temporary folder for the whole test session unless it is
  set, so tests never read or write the project's own ``artifacts/``.
- ``SAFECRS_FIGURES`` and ``SAFECRS_GENERATED`` (the published results tables) point at fresh
  temporary folders too, and the session fails if the repository's ``figures/``,
  ``notebooks/_executed/`` or ``book/_generated/`` changed while it ran (tests write figures,
  tables, executed notebooks and stages only under temporary folders).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if not os.environ.get("SAFECRS_DATA_DIR"):
    os.environ["SAFECRS_DATA_DIR"] = str((ROOT.parent / "shared" / "data").resolve())

_SESSION_ARTIFACTS: str | None = None
if not os.environ.get("SAFECRS_ARTIFACTS"):
    _SESSION_ARTIFACTS = tempfile.mkdtemp(prefix="safecrs-test-artifacts-")
    os.environ["SAFECRS_ARTIFACTS"] = _SESSION_ARTIFACTS


_SESSION_FIGURES = tempfile.mkdtemp(prefix="safecrs-test-figures-")
os.environ["SAFECRS_FIGURES"] = _SESSION_FIGURES
_SESSION_GENERATED = tempfile.mkdtemp(prefix="safecrs-test-generated-")
os.environ["SAFECRS_GENERATED"] = _SESSION_GENERATED
_UNTOUCHED = (ROOT / "figures", ROOT / "notebooks" / "_executed", ROOT / "book" / "_generated")


def _snapshot() -> dict[str, tuple[int, int]]:
    """Size and mtime of every file of the folders tests must leave alone."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for d in _UNTOUCHED if d.is_dir() for p in d.rglob("*") if p.is_file()}


_BEFORE = _snapshot()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "notebook: starts a Jupyter kernel (a few seconds each)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    after = _snapshot()
    changed = sorted(set(after) ^ set(_BEFORE) | {p for p in after if p in _BEFORE and after[p] != _BEFORE[p]})
    if changed:
        print(f"\nFAILED: the tests changed {len(changed)} file(s) of the working tree's figures/, "
              f"notebooks/_executed/ or book/_generated/ (tests must write only under temporary folders): "
              f"{changed[:5]}")
        session.exitstatus = 1


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_ARTIFACTS:
        shutil.rmtree(_SESSION_ARTIFACTS, ignore_errors=True)
    shutil.rmtree(_SESSION_FIGURES, ignore_errors=True)
    shutil.rmtree(_SESSION_GENERATED, ignore_errors=True)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def data_dir() -> Path:
    """The data directory; tests that need real data are skipped when it is absent."""
    d = Path(os.environ["SAFECRS_DATA_DIR"])
    if not d.is_dir():
        pytest.skip(f"data directory {d} not found (set SAFECRS_DATA_DIR)")
    return d


@pytest.fixture
def artifacts_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty artifacts root for one test."""
    root = tmp_path / "artifacts"
    monkeypatch.setenv("SAFECRS_ARTIFACTS", str(root))
    return root


def ref(item_id: str) -> dict:
    """A benchmark item reference (``targets``/``seen`` entry) that names only a catalog id."""
    return {"title": "", "year": None, "item_id": item_id}


@pytest.fixture(scope="module")
def movies_world():
    """``(catalog, oracle, ids by popularity)`` of the movie domain; skipped without data."""
    if not Path(os.environ["SAFECRS_DATA_DIR"]).is_dir():
        pytest.skip("data directory not found (set SAFECRS_DATA_DIR)")
    from safecrs_core.data.catalog import load_catalog
    from safecrs_core.safety.oracle import load_oracle

    cat = load_catalog()
    top = cat.items["popularity"].sort_values(ascending=False, kind="stable").index.tolist()
    return cat, load_oracle(), top

"""Test-wide settings.

- ``SAFECRS_DATA_DIR`` defaults to ``../shared/data`` next to the project root (the layout of CI and
  developer machines) when it is not set.
- ``SAFECRS_ARTIFACTS`` points at a fresh temporary folder for the whole test session unless it is
  set, so tests never read or write the project's own ``artifacts/``.
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "notebook: starts a Jupyter kernel (a few seconds each)")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_ARTIFACTS:
        shutil.rmtree(_SESSION_ARTIFACTS, ignore_errors=True)


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
    from safecrs_core.catalog import load_catalog
    from safecrs_core.oracle import load_oracle

    cat = load_catalog()
    top = cat.items["popularity"].sort_values(ascending=False, kind="stable").index.tolist()
    return cat, load_oracle(), top

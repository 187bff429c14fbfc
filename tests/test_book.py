"""The whole chain under the smoke profile: notebooks 01-05 with papermill, then the Jupyter
Book build with warnings as errors, whose results page must show the results table."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from safecrs_core import evaluate as E
from safecrs_core import metrics as M
from safecrs_core import pipeline as pl


def _text(page: Path) -> str:
    """Visible text of an HTML page, whitespace collapsed."""
    raw = re.sub(r"<(script|style)\b.*?</\1>", " ", page.read_text(encoding="utf-8"), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", raw)))


@pytest.mark.slow
@pytest.mark.notebook
def test_smoke_chain_builds_a_book_with_the_results_table(tmp_path, repo_root):
    site = tmp_path / "site"
    site.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(repo_root / name, site / name)
    shutil.copytree(repo_root / "book", site / "book")
    runs = pl.run_notebooks("smoke", out_dir=site / "notebooks" / "_executed", log=print)
    assert [r.stem for r in runs] == [p.stem for p in pl.discover_notebooks()]
    assert all(r.status == "ok" for r in runs), [(r.stem, r.status) for r in runs]

    exe = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(exe), "build", str(site), "--builder", "html", "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    html_dir = site / "_build" / "html"
    assert (html_dir / "index.html").is_file()
    page = _text(html_dir / "notebooks" / "_executed" / "04_evaluate.html")
    res = E.load_results(E.find_results("smoke"))
    table = M.format_table(res.summary, E.main_metrics(10))
    assert len(table) >= 4  # baselines and at least one model
    for name, row in table.iterrows():
        assert name in page, f"{name!r} missing from the rendered results page"
        assert row["recall@10"] in page and row["svr@10"] in page, (name, row.to_dict())
    # numbers in the prose are glued from the same results
    recall = f"{res.summary.loc['Retrieval', 'recall@10']:.3f}"
    assert f"Embedding retrieval finds {recall} of the ground truth" in page
    assert "{glue" not in page
    # every chapter of the table of contents became a page
    for nb in pl.discover_notebooks():
        assert (html_dir / "notebooks" / "_executed" / f"{nb.stem}.html").is_file()

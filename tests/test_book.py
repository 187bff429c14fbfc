"""The whole chain under the smoke profile: the notebooks with papermill for both domains
(SafeMovie and SafeGame), then the Jupyter Book build with warnings as errors, whose results
pages must show the results tables."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from safecrs_core.evaluation import evaluate as E
from safecrs_core.evaluation import metrics as M
from safecrs_core import pipeline as pl
from safecrs_core.benchmark import benchmark_for_profile


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
    runs = pl.run_notebooks("smoke", out_dir=site / "notebooks" / "_executed", log=print, domains=("movies", "games"))
    plan = pl.notebook_plan(pl.discover_notebooks(), ("movies", "games"))
    assert [(r.stem, r.domain) for r in runs] == [(p.stem, d) for p, d in plan]
    assert ("04_evaluate", "games") in [(r.stem, r.domain) for r in runs]
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
    # the fine-tuned rows are the stages notebooks 02 and 03 train under the profile
    ds_s, _, bench_s = benchmark_for_profile("smoke")
    trained = E.profile_stages("smoke", ds_s, bench_s, domain="movies")
    assert trained and all(pl.is_done(d) for d in trained.values())
    assert set(trained) <= set(res.summary.index)
    # numbers in the prose are glued from the same results
    recall = f"{res.summary.loc['Retrieval', 'recall@10']:.3f}"
    assert f"Embedding retrieval finds {recall} of the ground truth" in page
    assert "{glue" not in page
    # the SafeGame chain: its own results page, and both domains side by side in notebook 07
    games = E.load_results(E.find_results("smoke", E.results_label("main", "games")))
    assert games.stage != res.stage
    games_page = _text(html_dir / "notebooks" / "_executed" / "games" / "04_evaluate.html")
    assert "SafeGame:" in games_page
    for name, row in M.format_table(games.summary, E.main_metrics(10)).iterrows():
        assert name in games_page and row["recall@10"] in games_page and row["svr@10"] in games_page, name
    assert "Safe-SFT" in games.summary.index and "Safe-GDPO" in games.summary.index
    side = _text(html_dir / "notebooks" / "_executed" / "07_safegame.html")
    assert "Every system on both domains" in side and "{glue" not in side
    # every chapter of the table of contents became a page
    for nb, domain in plan:
        folder = html_dir / "notebooks" / "_executed" / ("" if domain == "movies" else domain)
        assert (folder / f"{nb.stem}.html").is_file()

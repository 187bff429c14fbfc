"""Every figure the book shows. Functions take computed tables and return a matplotlib Figure;
:func:`save` writes it under ``figures/`` (PNG)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import traits as T  # noqa: E402

VERDICT_COLORS = {"safe": "#4c9f70", "unsafe": "#c8553d", "unknown": "#b8b8b8"}


def figures_dir(path: str | os.PathLike | None = None) -> Path:
    if path is not None:
        p = Path(path)
    else:
        from .pipeline import repo_root
        p = Path(os.environ.get("SAFECRS_FIGURES", repo_root() / "figures"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def save(fig, name: str, directory: str | os.PathLike | None = None) -> Path:
    out = figures_dir(directory) / f"{name}.png"
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    os.replace(tmp, out)
    return out


def _names(ids) -> list[str]:
    return [T.get(t).name if t in T.TRAIT_IDS else t for t in ids]


def trait_distribution(stats: dict):
    """Conversations per assigned trait and split (from the benchmark's stats)."""
    df = pd.DataFrame(stats["traits"]).reindex(list(T.TRAIT_IDS)).fillna(0).astype(int)
    df.index = _names(df.index)
    fig, ax = plt.subplots(figsize=(8, 6))
    df.plot.barh(stacked=True, ax=ax, color=sns.color_palette("deep", len(df.columns)))
    ax.invert_yaxis()
    ax.set_xlabel("conversations")
    ax.set_ylabel("")
    ax.set_title("SafeRec: assigned sensitivity trait per split")
    ax.legend(title="split")
    fig.tight_layout()
    return fig


def oracle_coverage(coverage: pd.DataFrame, title: str = "Safety Oracle verdicts per trait"):
    """Stacked safe / unsafe / unknown shares per trait (``Oracle.coverage()`` output)."""
    df = coverage[["safe", "unsafe", "unknown"]].reindex(list(T.TRAIT_IDS))
    share = df.div(df.sum(1).replace(0, 1), axis=0)
    share.index = _names(share.index)
    fig, ax = plt.subplots(figsize=(8, 6))
    share.plot.barh(stacked=True, ax=ax, color=[VERDICT_COLORS[c] for c in share.columns], width=0.8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of items")
    ax.set_ylabel("")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def targets_removed(stats: dict):
    """Targets kept, kept-but-unknown and removed (unsafe) per assigned trait."""
    ids = list(T.TRAIT_IDS)
    kept = pd.Series(stats["kept_targets_per_trait"]).reindex(ids).fillna(0)
    unknown = pd.Series(stats["unknown_targets_per_trait"]).reindex(ids).fillna(0)
    removed = pd.Series(stats["removed_targets_per_trait"]).reindex(ids).fillna(0)
    df = pd.DataFrame({"kept (safe)": kept - unknown, "kept (unknown)": unknown, "removed (unsafe)": removed})
    df.index = _names(ids)
    fig, ax = plt.subplots(figsize=(8, 6))
    df.plot.barh(stacked=True, ax=ax, color=[VERDICT_COLORS["safe"], VERDICT_COLORS["unknown"], VERDICT_COLORS["unsafe"]])
    ax.invert_yaxis()
    ax.set_xlabel("ground-truth targets")
    ax.set_ylabel("")
    ax.set_title("Oracle filtering of ground-truth targets per trait")
    fig.tight_layout()
    return fig

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

from ..safety import traits as T  # noqa: E402
from .metrics import better, metric_label  # noqa: E402

VERDICT_COLORS = {"safe": "#4c9f70", "unsafe": "#c8553d", "unknown": "#b8b8b8"}


def figures_dir(path: str | os.PathLike | None = None) -> Path:
    if path is not None:
        p = Path(path)
    else:
        from ..pipeline import repo_root
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
    return [T.get(t).name if t in T.CONSTRAINT_IDS else t for t in ids]


def _ids(*present) -> list[str]:
    """The 20 traits, then the age constraints that occur in any of ``present`` (index-likes)."""
    seen = set().union(*(set(p) for p in present))
    return list(T.TRAIT_IDS) + [t for t in T.AGE_CONSTRAINT_IDS if t in seen]


def trait_distribution(stats: dict):
    """Conversations per assigned trait and split (from the benchmark's stats)."""
    df = pd.DataFrame(stats["traits"])
    df = df.reindex(_ids(df.index)).fillna(0).astype(int)
    df.index = _names(df.index)
    fig, ax = plt.subplots(figsize=(8, 6))
    df.plot.barh(stacked=True, ax=ax, color=sns.color_palette("deep", len(df.columns)))
    ax.invert_yaxis()
    ax.set_xlabel("conversations")
    ax.set_ylabel("")
    ax.set_title("SafeRec: assigned sensitivity trait or age constraint per split")
    ax.legend(title="split")
    fig.tight_layout()
    return fig


def oracle_coverage(coverage: pd.DataFrame, title: str = "Safety Oracle verdicts per trait"):
    """Stacked safe / unsafe / unknown shares per trait (``Oracle.coverage()`` output)."""
    df = coverage[["safe", "unsafe", "unknown"]].reindex(_ids(coverage.index))
    share = df.div(df.sum(1).replace(0, 1), axis=0)
    share.index = _names(share.index)
    fig, ax = plt.subplots(figsize=(8, 6))
    share.plot.barh(stacked=True, ax=ax, color=[VERDICT_COLORS[c] for c in share.columns], width=0.8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of items")
    ax.set_ylabel("")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def coverage_by_domain(coverages: dict, title: str = "Oracle coverage per trait"):
    """Per trait, the covered share (judged safe or unsafe, not unknown) in each domain side by
    side: ``coverages`` maps a domain label to an ``Oracle.coverage()``-like frame (index trait, a
    ``coverage`` column in [0, 1])."""
    ids = _ids(*(c.index for c in coverages.values()))
    df = pd.DataFrame({label: c["coverage"].reindex(ids) for label, c in coverages.items()}).fillna(0.0)
    df.index = _names(ids)
    fig, ax = plt.subplots(figsize=(8, 7))
    df.plot.barh(ax=ax, color=sns.color_palette("deep", len(df.columns)), width=0.8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of items the oracle judges (safe or unsafe)")
    ax.set_ylabel("")
    ax.set_title(title)
    ax.legend(loc="upper right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def targets_removed(stats: dict):
    """Targets kept, kept-but-unknown and removed (unsafe) per assigned trait."""
    ids = _ids(stats["kept_targets_per_trait"], stats["removed_targets_per_trait"])
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


# ------------------------------------------------------------------------------------------------
# Evaluation (notebooks 04 and 05): tables from safecrs_core.evaluation.evaluate

GROUP_COLORS = {"baseline": "#8c8c8c", "zero-shot": "#4c72b0", "fine-tuned": "#c44e52", "llm": "#4c72b0"}
GROUP_MARKERS = {"baseline": "s", "zero-shot": "o", "fine-tuned": "D", "llm": "o"}


def _axis_label(metric: str) -> str:
    """The metric's label with which direction is better (``"SVR@10 (lower is safer)"``)."""
    direction = better(metric)
    if direction is None:
        return metric_label(metric)
    if direction == "lower" and metric.partition("@")[0] in ("svr", "sdcg", "n_unsafe"):
        return f"{metric_label(metric)} (lower is safer)"
    return f"{metric_label(metric)} ({direction} is better)"


def tradeoff(summary: pd.DataFrame, groups: dict, x: str = "svr@10", y: str = "recall@10",
             title: str = "Relevance against safety violations (95% bootstrap CIs)"):
    """Each system at (``x``, ``y``) means with CI bars from a ``metrics.summarize`` frame indexed by
    system; ``groups`` maps system -> group (baseline / zero-shot / fine-tuned), which sets the
    marker. Systems are told apart by colour and named in the legend (labels next to points would
    overlap where systems coincide). The upper-left corner (relevant and safe) is the goal."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = sns.color_palette("tab10" if len(summary) <= 10 else "tab20", max(len(summary), 1))
    for (name, row), color in zip(summary.iterrows(), colors):
        g = groups.get(name, "llm")
        xerr = [[row[x] - row[f"{x}_lo"]], [row[f"{x}_hi"] - row[x]]]
        yerr = [[row[y] - row[f"{y}_lo"]], [row[f"{y}_hi"] - row[y]]]
        ax.errorbar(row[x], row[y], xerr=xerr, yerr=yerr, fmt=GROUP_MARKERS.get(g, "o"), ms=9, capsize=3,
                    color=color, alpha=0.9, label=f"{name} ({g})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="system (group)")
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(_axis_label(y))
    ax.set_xlim(left=-0.02)
    ax.set_ylim(bottom=min(0, ax.get_ylim()[0]))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def trait_heatmap(per_trait: pd.DataFrame, metric: str = "svr@10", min_n: int = 1,
                  title: str | None = None):
    """Systems (rows) x traits (columns) heatmap of ``metric`` from a per-(system, trait)
    ``metrics.summarize`` frame; cells hold the mean, traits with fewer than ``min_n`` samples
    are blank. Column labels carry the number of conversations per trait."""
    df = per_trait.reset_index()
    sys_col, trait_col = df.columns[0], df.columns[1]
    order = list(dict.fromkeys(df[sys_col]))
    values = df.pivot(index=sys_col, columns=trait_col, values=metric).reindex(order)
    counts = df.groupby(trait_col)["n"].max()
    values = values.where(df.pivot(index=sys_col, columns=trait_col, values="n").reindex(order) >= min_n)
    traits = [t for t in T.TRAIT_IDS if t in values.columns] + [t for t in values.columns if t not in T.TRAIT_IDS]
    values = values[traits]
    values.columns = [f"{n} ({int(counts[t])})" for n, t in zip(_names(traits), traits)]
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(traits) + 3), 0.5 * len(order) + 2.5))
    sns.heatmap(values, ax=ax, annot=True, fmt=".2f", cmap="Reds", vmin=0, vmax=max(0.05, float(values.max().max())),
                cbar_kws={"label": metric_label(metric)}, annot_kws={"fontsize": 7})
    ax.set_xlabel("user's sensitivity trait (conversations)")
    ax.set_ylabel("")
    ax.set_title(title or f"{metric_label(metric)} per trait")
    fig.tight_layout()
    return fig


def metric_bars(summary: pd.DataFrame, metrics: list, groups: dict | None = None, title: str | None = None):
    """One panel per metric: a horizontal bar per system (mean) with its 95% CI."""
    groups = groups or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.45 * len(summary) + 1.8), sharey=True)
    axes = [axes] if len(metrics) == 1 else list(axes)
    names = list(summary.index)
    for ax, m in zip(axes, metrics):
        mean = summary[m].to_numpy()
        err = [mean - summary[f"{m}_lo"].to_numpy(), summary[f"{m}_hi"].to_numpy() - mean]
        colors = [GROUP_COLORS.get(groups.get(n, "llm"), "#4c72b0") for n in names]
        ax.barh(range(len(names)), mean, xerr=err, color=colors, capsize=3)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(metric_label(m))
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def reported_tradeoff(table: pd.DataFrame, label: str, x: str = "svr@10", y: str = "recall@10"):
    """The paper's reported systems at (``x``, ``y``), no CIs (none are reported), titled with
    ``label`` so the figure is never read as this book's result."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(table[x], table[y], color="#55a868", marker="^", s=60)
    for name, row in table.iterrows():
        ax.annotate(name, (row[x], row[y]), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(metric_label(y))
    ax.set_xlim(left=-0.02)
    ax.set_title(f"Reported numbers: {label}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def lookup_audit(audit: pd.DataFrame, k: int = 10):
    """Per system, SVR@k under the project convention, the release convention and the release
    convention with the reference lookup as described (:func:`safecrs_core.evaluation.evaluate.lookup_audit`):
    grouped horizontal bars."""
    cols = [c for c in audit.columns if c.startswith(f"svr@{k} (")]
    long = audit[cols].rename(columns=lambda c: c[len(f"svr@{k} ("):-1]).rename_axis("system").reset_index()
    long = long.melt(id_vars="system", var_name="convention", value_name=f"svr@{k}")
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(audit) + 1.8))
    sns.barplot(data=long, y="system", x=f"svr@{k}", hue="convention", ax=ax,
                palette=["#4c72b0", "#dd8452", "#b8b8b8"])
    ax.set_xlabel(_axis_label(f"svr@{k}"))
    ax.set_ylabel("")
    ax.set_title("The same lists under three ways of looking titles up")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title=None, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
    fig.tight_layout()
    return fig

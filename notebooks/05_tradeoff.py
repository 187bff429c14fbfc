# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Relevance against safety
#
# The paper's central claim is a trade-off that Safe-GDPO escapes: recommenders tuned for
# relevance recommend unsafe items, and naive safety measures cost relevance. This chapter plots
# the systems of the [evaluation](04_evaluate) in the plane of Recall@10 and SVR@10 (the
# analogue of the paper's Figure 4), looks at what the lists contain, and shows, in a separate
# block, the numbers the paper's authors report for their own data and models.

# %% tags=["parameters"]
profile = "book"
domain = "movies"  # or "games" (SafeGame)
seed = 0
k = 10
n_examples = 2

# %%
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from safecrs_core.pipeline import shown_path
from safecrs_core.evaluation import evaluate as E
from safecrs_core.evaluation import plots
from safecrs_core.safety import traits as T
from safecrs_core.benchmark import benchmark_for_profile
from safecrs_core.data.catalog import load_catalog
from safecrs_core.safety.oracle import load_oracle

res = E.load_results(E.find_results(profile, E.results_label("main", domain)))  # written by notebook 04
figure_suffix = "" if domain == "movies" else f"_{domain}"
groups = {x["name"]: x["group"] for x in res.systems}
print(shown_path(res.stage))

# %% [markdown]
# ## The trade-off
# Each point is a system's mean over the same test conversations, with 95% bootstrap intervals
# on both axes. The upper-left corner (relevant and safe) is the goal.

# %%
plots.save(plots.tradeoff(res.summary, groups, x=f"svr@{k}", y=f"recall@{k}"), f"tradeoff_recall_svr{figure_suffix}");

# %%
s = res.summary
best = s[f"recall@{k}"].idxmax()
glue("best_recall_name", best, display=False)
glue("best_recall", float(s.loc[best, f"recall@{k}"]), display=False)
glue("best_recall_svr", float(s.loc[best, f"svr@{k}"]), display=False)
glue("max_svr_name", s[f"svr@{k}"].idxmax(), display=False)
glue("max_svr", float(s[f"svr@{k}"].max()), display=False)

# %% [markdown]
# The most relevant system here is {glue:text}`best_recall_name` (Recall@10
# {glue:text}`best_recall:.3f`), with SVR@10 {glue:text}`best_recall_svr:.1%`; the highest
# violation rate belongs to {glue:text}`max_svr_name` ({glue:text}`max_svr:.1%`). The filtered
# baselines sit on the SVR@10 = 0 line by construction: they consult the oracle at
# recommendation time, which a deployed recommender cannot do for sensitivities it has to infer
# from the conversation.

# %% [markdown]
# ## What the lists hold
# A low SVR@10 means little if a system returns few items or items the oracle cannot judge.
# `catalog_hit` is the share of returned lines that name a catalog item at all.

# %%
plots.save(plots.metric_bars(res.summary, ["list_len", f"unknown@{k}", "catalog_hit"], groups,
                             title="List length, unknown share and resolvable titles (95% CIs)"),
           f"tradeoff_list_quality{figure_suffix}");

# %% [markdown]
# ## Examples
# Conversations where some system recommended the most unsafe items (ties by id), with the last
# turns, the user's sensitivity and each system's list. Marks: `[unsafe]` and `[unknown]` are the
# oracle's verdicts for this user's trait, `[hit]` a ground-truth target.

# %%
ds, _, _ = benchmark_for_profile(profile, seed=seed, domain=domain)
catalog, oracle = load_catalog(domain), load_oracle(domain=domain)
worst = (res.per_sample.groupby("id")[f"n_unsafe@{k}"].max().reset_index()
         .sort_values([f"n_unsafe@{k}", "id"], ascending=[False, True]))
example_rows = E.rows_by_id(ds["test"], worst["id"].head(n_examples).tolist())

# %%
for row in example_rows:
    turns = "\n".join(f"> **{t['role']}**: {t['text']}" for t in row["turns"][-3:])
    display(Markdown(f"**{row['id']}**: trait *{T.get(row['trait']).name}* ({row['constraint_style']}: "
                     f"\u201c{row['constraint']}\u201d)\n\n{turns}"))
    display(E.example_lists(res.per_sample, row, catalog, oracle, k=k))

# %% [markdown]
# ## Reported by the paper's authors (different data and models)
#
# The numbers below are **not** results of this book. They are what the paper's authors report
# for their SafeRec (built from Reddit-v2 with DoesTheDogDie and IMDb Parents Guide labels) and
# their models (GPT-4 and GPT-5.2 prompted zero-shot; SafeCRS trained on Llama-3.1-8B and
# Qwen2.5-0.5B). Data, oracle, catalog and models all differ from the ones above, so the two
# blocks show the shape of the trade-off, not comparable values. Sources are listed with the
# table (`safecrs_core/data/paper_results.json`).

# %%
reported = E.load_paper_results()
paper = E.paper_table(reported)
if domain != "movies":
    display(Markdown(f"*These reported numbers are for movies; the paper reports none for {domain}.*"))
if paper.empty:
    display(Markdown("*No reported numbers are stored: the paper's results tables could not be read, "
                     "and none are typed in by hand.*"))
else:
    src = reported["sources"][reported["table"]["source"]]
    display(Markdown(f"**{reported['label']}.** Source: {src['what']}, {src['where']}."))
    display(paper)

# %%
for c in reported.get("claims", []):
    display(Markdown(f"*{reported['sources'][c['source']]['where']}*: \u201c{c['text']}\u201d"))
if not paper.empty:
    plots.save(plots.reported_tradeoff(paper, reported["label"], x=f"svr@{k}", y=f"recall@{k}"),
               "tradeoff_reported");

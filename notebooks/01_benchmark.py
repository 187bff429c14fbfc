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
# # Building SafeRec from public data
#
# SafeRec pairs a recommendation conversation with one **sensitivity trait** of the user, removes
# ground-truth items that violate the trait, and phrases the trait into the user's last turn.
# The paper builds it from Reddit-v2 conversations with DoesTheDogDie and IMDb Parents Guide
# labels. Neither label source is available offline, so this notebook rebuilds SafeRec from the
# public conversations and safety signals described in the [data card](/book/data.md):
# ReDial, IARD, INSPIRED, the Facebook Movie Dialog tasks and the authors' Reddit-v2 samples, judged by
# the [Safety Oracle](/book/oracle.md) on Kids-In-Mind, MPAA rating reasons, keyword tags and genres.
# Nothing here is synthetic: every conversation and target is real; only the sentence that states
# the user's sensitivity is added from templates.
#
# With `domain = "games"` the same notebook builds **SafeGame** (see the [SafeGame data card](/book/safegame.md)):
# a game catalog from the ESRB, PEGI and vgsales
# tables, an oracle on ESRB content descriptors and ratings and PEGI ages, and game requests that
# are **synthetic** (no real game-recommendation conversations exist): seed games and targets are
# drawn from real structure in the data (series, developer, publisher and genre, platform and
# year), phrased by templates, and every row is marked `synthetic`.

# %% tags=["parameters"]
profile = "book"
seed = 0
threshold = 0.66  # the paper's unsafe threshold
implicit_share = 0.5  # share of constraints phrased implicitly
n_examples = 3
domain = "movies"  # or "games" (SafeGame)

# %%
import json

import pandas as pd
from IPython.display import Markdown, display

from safecrs_core.pipeline import shown_path
from safecrs_core.evaluation import plots
from safecrs_core.benchmark import benchmark_for_profile, config_for_profile

# the profile fixes how many conversations per source and split are drawn (smoke: 40, book: 1500,
# paper: all); later notebooks of the same profile reuse this cached build
print(config_for_profile(profile, seed=seed, threshold=threshold, implicit_share=implicit_share, domain=domain))
ds, stats, stage = benchmark_for_profile(profile, seed=seed, threshold=threshold, implicit_share=implicit_share,
                                         domain=domain)
figure_suffix = "" if domain == "movies" else f"_{domain}"  # figures of each domain under their own names
print(shown_path(stage))
ds

# %% [markdown]
# ## Resolving titles
# Every title — in conversations, ground truth, model output — goes through one resolver
# (`safecrs_core.data.catalog`): normalised case, punctuation, unicode and articles, ±1 year. For
# movies its accuracy is measured by leaving one id-carrying source out of the catalog and
# resolving that source's own "Title (Year)" strings against the rest: *coverage* is the share
# resolved, *precision* the share of those that got the right IMDb id, *accuracy_reachable* the
# accuracy on titles the reduced catalog holds at all. The last row is the share of the authors'
# Reddit-v2 ground-truth catalog that resolves.
#
# Games have no second id-carrying source to hold out, so for games the table shows the
# resolver's *tolerance* instead: a sample of vgsales rows written the ways users write games
# (bare title, with the year, with a platform code or name, Roman numerals as digits) and the
# share that still reaches the game the catalog gave the row. A bare title is the weakest form:
# remakes and reboots share titles, and an ambiguous one is left unresolved.

# %%
from safecrs_core.data.catalog import evaluate_game_resolver, evaluate_resolver

if domain == "movies":
    resolver_eval = evaluate_resolver()
    shown = resolver_eval[["sample", "n", "coverage", "precision", "accuracy", "accuracy_reachable"]].round(3)
else:
    resolver_eval = evaluate_game_resolver(seed=seed)
    shown = resolver_eval[["form", "example", "n", "coverage", "precision", "accuracy"]].round(3)
shown

# %% [markdown]
# ## Sizes per split and source

# %%
sizes = pd.DataFrame(stats["by_source"]).fillna(0).astype(int)
sizes.loc["total"] = sizes.sum()
sizes

# %% [markdown]
# ## Which traits the users carry
# A trait is assigned to each conversation from the oracle risk of its own items (targets and
# items the user mentioned), balanced over the traits; the Reddit samples keep the trait their
# authors assigned.

# %%
plots.save(plots.trait_distribution(stats), f"benchmark_traits{figure_suffix}");

# %% [markdown]
# Besides the 20 traits, a share of users carries an **age limit** ("it's for my 8-year-old"):
# the audience's age maps to the highest MPAA rating allowed (G under 8, PG under 13, PG-13
# under 17), judged by the same oracle from the ratings the sources give. For games the same three
# bands allow, at the band's youngest age, the ESRB and PEGI ratings of
# `data/age_ratings.json`, and the strictest rating any source gives a game decides.

# %%
pd.DataFrame(stats["constraint_kinds"]).fillna(0).astype(int)

# %% [markdown]
# ## How much the oracle knows
# Share of the benchmark's items judged safe, unsafe or **unknown** per trait. Unknown is never
# treated as safe: such targets stay in the data, flagged, and metrics report them separately.

# %%
cov = pd.DataFrame(stats["oracle_coverage_on_benchmark_items"]).T
plots.save(plots.oracle_coverage(cov, f"Oracle verdicts on the {stats['benchmark_items']:,} benchmark items"),
           f"benchmark_oracle_coverage{figure_suffix}");

# %%
cov.assign(coverage=lambda d: (d["coverage"] * 100).round(1).astype(str) + " %")

# %% [markdown]
# For games, how the ESRB content descriptors map onto the traits' severity channels and hard
# triggers (`data/games.json`), and the oracle's coverage over the whole game catalog: traits the
# ratings say nothing about stay `unknown` for every game.

# %%
if domain == "games":
    from safecrs_core.data.catalog import load_catalog
    from safecrs_core.safety.oracle import game_descriptor_table, load_oracle

    game_catalog = load_catalog("games")
    game_oracle = load_oracle(threshold=threshold, domain="games")
    print(f"{len(game_catalog):,} games; sources per game:",
          game_catalog.items["sources"].map(" + ".join).value_counts().to_dict())
    display(game_descriptor_table())
    display(game_oracle.coverage().assign(coverage=lambda d: (d["coverage"] * 100).round(1)))

# %% [markdown]
# ## Ground truth removed by the oracle

# %%
plots.save(plots.targets_removed(stats), f"benchmark_targets_removed{figure_suffix}");

# %% [markdown]
# ## Examples

# %%
def _named(t):
    return t["title"] if t["year"] is None else f"{t['title']} ({t['year']})"


test = ds["test"].shuffle(seed=seed).select(range(min(n_examples, len(ds["test"]))))
for row in test:
    turns = "\n".join(f"> **{t['role']}**: {t['text']}" for t in row["turns"][-3:])
    kept = ", ".join(f"{_named(t)} [{t['verdict']}]" for t in row["targets"])
    removed = ", ".join(f"{_named(t)} risk {t['risk']:.2f}" for t in row["removed_targets"]) or "none"
    tag = " — synthetic request" if row["synthetic"] else ""
    display(Markdown(f"**{row['id']}** — trait `{row['trait']}` ({row['constraint_style']}){tag}\n\n{turns}\n\n"
                     f"targets kept: {kept}\n\nremoved as unsafe: {removed}"))

# %%
print(json.dumps({k: stats[k] for k in ("sizes", "targets", "dropped_no_resolved_target")}, indent=1))

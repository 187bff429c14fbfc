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
# # SafeGame next to SafeMovie
#
# **SafeGame** carries SafeRec over to video games (see the [SafeGame data card](/book/safegame.md)):
# the same 20 sensitivity traits and three age constraints, the same Safety Oracle formula, here on
# ESRB content descriptors and ratings and PEGI ages, the same phrasing of the user's sensitivity
# and the same split of phrasing templates. The games, their ratings and the relations between
# them (series, developer, publisher and genre, platform and year) are real.
#
# ```{warning}
# **Every SafeGame request is synthetic.** No public source holds real game-recommendation
# conversations, so each request is generated from templates around real games (every row carries
# `synthetic: true`). SafeGame measures whether a recommender respects a stated sensitivity over
# real games; it says nothing about how people actually ask for games. SafeMovie (the SafeRec
# build of the previous chapters) is built from real conversations.
# ```
#
# This chapter scores the non-LLM baselines of [notebook 04](04_evaluate) on the whole SafeGame
# test split with the same metrics, the same bootstrap confidence intervals and the same oracle
# rules (unknown is never counted as safe), sets them beside the same baselines on SafeMovie, and
# then puts every system of both domains' evaluations side by side.

# %% tags=["parameters"]
profile = "book"
seed = 0
k = 10
n_popular = 2000  # most popular catalog items added to the retrieval pool (as in notebook 04)
context_turns = 4  # conversation turns the retrieval baseline embeds
n_boot = 1000

# %%
import pandas as pd
from myst_nb import glue

from safecrs_core.pipeline import shown_path
from safecrs_core.evaluation import evaluate as E
from safecrs_core.evaluation import metrics as M
from safecrs_core.evaluation import plots
from safecrs_core.benchmark import benchmark_for_profile
from safecrs_core.safety.oracle import load_oracle

games_ds, games_stats, games_bench = benchmark_for_profile(profile, seed=seed, domain="games")
print(shown_path(games_bench))
synthetic = sum(sum(ds_split["synthetic"]) for ds_split in games_ds.values())
print(f"{synthetic:,} of {sum(len(s) for s in games_ds.values()):,} SafeGame rows are synthetic requests")
glue("games_synthetic_share", synthetic / sum(len(s) for s in games_ds.values()), display=False)
glue("games_n_test", len(games_ds["test"]), display=False)
pd.DataFrame(games_stats["by_source"]).fillna(0).astype(int)

# %% [markdown]
# The benchmark is the cached SafeGame build of this profile (the one
# [notebook 01](01_benchmark) shows with `domain = "games"`); {glue:text}`games_synthetic_share:.0%`
# of its rows are generated requests.
#
# ## Baselines on both domains
# The four baselines of notebook 04, each scored on the whole test split of its domain:
#
# * **Popularity**: items by how often they are a target in the *train* split, then by catalog
#   popularity (for games: copies sold, from vgsales);
# * **Retrieval**: all-MiniLM-L6-v2 cosine similarity between the last turns and each candidate's
#   text. Games have no plot overviews, so a game's text is its title and year, genre, platform
#   names, developer and publisher (`baselines.game_item_text`); the candidate pool is every item
#   of the benchmark plus the most popular catalog items;
# * **+ filter**: the same lists with the items the oracle marks *unsafe* for the user's trait
#   removed (it reads the trait from the benchmark, which a deployed system would have to infer).
#
# The SafeMovie numbers are the cached results stage of notebook 04 for this profile (same
# parameters, same key: whichever notebook runs first builds it).

# %%
games = E.load_results(E.baselines_stage(profile, "games", seed=seed, k=k, n_boot=n_boot, n_popular=n_popular,
                                         context_turns=context_turns))
movies = E.load_results(E.baselines_stage(profile, "movies", seed=seed, k=k, n_boot=n_boot, n_popular=n_popular,
                                          context_turns=context_turns))
print(shown_path(games.stage), shown_path(movies.stage), sep="\n")
E.domain_table({"SafeMovie": movies.summary, "SafeGame": games.summary}, [f"recall@{k}", f"ndcg@{k}", f"svr@{k}"])

# %% [markdown]
# Mean [95% bootstrap CI] over the test conversations of each domain (`n`). The two columns are
# not a contest between domains: the requests differ in kind (real conversations against
# templates that name seed games of one series, developer or platform), and so do the candidate
# pools and the oracle's coverage (below).

# %%
for domain, res in (("games", games), ("movies", movies)):
    s = res.summary
    for key, name in {"pop": "Popularity", "pop_f": "Popularity + filter", "ret": "Retrieval",
                      "ret_f": "Retrieval + filter"}.items():
        for m in (f"recall@{k}", f"svr@{k}", f"unknown@{k}"):
            glue(f"{domain}_{key}_{m.split('@')[0]}", float(s.loc[name, m]), display=False)

# %% [markdown]
# On SafeGame, retrieval reaches Recall@10 {glue:text}`games_ret_recall:.3f` at SVR@10
# {glue:text}`games_ret_svr:.1%` (SafeMovie: {glue:text}`movies_ret_recall:.3f` at
# {glue:text}`movies_ret_svr:.1%`), popularity Recall@10 {glue:text}`games_pop_recall:.3f` at SVR@10
# {glue:text}`games_pop_svr:.1%` (SafeMovie: {glue:text}`movies_pop_recall:.3f` at
# {glue:text}`movies_pop_svr:.1%`). The oracle filter brings SVR@10 to zero by construction on
# both; what it cannot remove shows in the unknown share: {glue:text}`games_ret_f_unknown:.1%` of
# the filtered retrieval lists on SafeGame are games the oracle cannot judge for the user's trait
# (SafeMovie: {glue:text}`movies_ret_f_unknown:.1%`), so a low SVR@10 on games says less than on
# movies. Popularity finds few or none of the SafeGame targets: a whole group of related games
# lands in one split (see the data card), so the games targeted most often in training are other
# groups' games.
#
# ## What the game oracle can judge
# Share of items the oracle judges safe or unsafe (not unknown) per trait, on the items each
# benchmark uses. ESRB descriptors and PEGI ages speak of violence, blood, sex, language and
# substances; the traits the paper labels from trigger lists, and those led by frightening
# content (horror, claustrophobia, flashing lights), have no game signal and stay unknown.

# %%
movie_stats = benchmark_for_profile(profile, seed=seed)[1]
coverage = {label: pd.DataFrame(st["oracle_coverage_on_benchmark_items"]).T
            for label, st in (("SafeMovie", movie_stats), ("SafeGame", games_stats))}
plots.save(plots.coverage_by_domain(coverage, "Oracle coverage per trait on the benchmark items"),
           "safegame_oracle_coverage");

# %%
games_oracle = load_oracle(domain="games")
catalog_cov = games_oracle.coverage()
judged = [t for t in catalog_cov.index if catalog_cov.loc[t, "covered"] > 0]
never_unsafe = [t for t in judged if catalog_cov.loc[t, "unsafe"] == 0]
glue("games_n_judged", len(judged), display=False)
glue("games_n_constraints", len(catalog_cov), display=False)
glue("games_n_never_unsafe", len(never_unsafe), display=False)
glue("games_catalog_items", len(games_oracle.item_ids), display=False)

# %% [markdown]
# Over the whole game catalog ({glue:text}`games_catalog_items:,` games), the oracle judges some
# games for {glue:text}`games_n_judged` of the {glue:text}`games_n_constraints` constraints (traits
# and age bands). For {glue:text}`games_n_never_unsafe` of those it never says *unsafe*: only a
# rating cap can make a game safe for them, no descriptor makes one unsafe, so their SVR@10 is zero
# whatever a system recommends.
#
# ## Violations per trait on SafeGame
# SVR@10 per baseline for the constraints the game oracle can judge, with the oracle's coverage
# of the game catalog, its number of unsafe games and the number of test conversations carrying
# the constraint. Constraints with few conversations have wide intervals.

# %%
E.trait_table(games.per_trait, f"svr@{k}", coverage=catalog_cov, traits=judged)

# %% [markdown]
# The same SVR@10 split into conversations with an age constraint and those with a trait:

# %%
by_kind = M.summarize(games.per_sample.assign(constraint=lambda d: d["trait"].map(E.constraint_kind)),
                      by=["system", "constraint"], metrics=[f"svr@{k}", f"unknown@{k}"], n_boot=n_boot, seed=seed)
glue("games_ret_svr_age", float(by_kind.loc[("Retrieval", "age"), f"svr@{k}"]), display=False)
glue("games_ret_svr_trait", float(by_kind.loc[("Retrieval", "trait"), f"svr@{k}"]), display=False)
M.format_table(by_kind, [f"svr@{k}", f"unknown@{k}"])

# %% [markdown]
# Retrieval's SVR@10 is {glue:text}`games_ret_svr_age:.1%` under an age constraint and
# {glue:text}`games_ret_svr_trait:.1%` under a trait. The letters and ages of ESRB and PEGI judge
# most games for the age bands, while the descriptors that make a game unsafe for a trait cover
# one console era; a low trait SVR@10 on SafeGame is partly the oracle not knowing.

# %% [markdown]
# ## Every system on both domains
# The LLM systems run on SafeGame through the same notebooks as on SafeMovie, with
# `domain = "games"`: [benchmark](games/01_benchmark), [Safe-SFT](games/02_safe_sft),
# [Safe-GDPO](games/03_safe_gdpo), [evaluation](games/04_evaluate) and
# [trade-off](games/05_tradeoff). Their target lists take neighbours from the games themselves
# (co-mention in the training requests and shared series, developer and publisher) instead of
# MovieLens ratings. To fit the CPU budget the `book` profile trains only Safe-SFT and Safe-GDPO
# on SafeGame (no plain SFT, no GDPO ablations; the `paper` profile trains all of them). Below,
# each domain's main results table (the sampled test conversations of its notebook 04) side by
# side; a system missing on one domain shows as a dash.

# %%
main = {label: E.load_results(E.find_results(profile, E.results_label("main", d)))
        for label, d in (("SafeMovie", "movies"), ("SafeGame", "games"))}
for label, r in main.items():
    print(label, shown_path(r.stage))
E.domain_table({label: r.summary for label, r in main.items()},
               [f"recall@{k}", f"svr@{k}", f"unknown@{k}", "list_len"])

# %%
g = main["SafeGame"].summary
for key, name in {"zs": next(x["name"] for x in main["SafeGame"].systems if x["group"] == "zero-shot"),
                  "ssft": "Safe-SFT", "sgdpo": "Safe-GDPO"}.items():
    for m in (f"recall@{k}", f"svr@{k}", f"unknown@{k}", "list_len"):
        glue(f"games_{key}_{m.split('@')[0]}", float(g.loc[name, m]) if name in g.index else float("nan"),
             display=False)
glue("games_n_main", int(g["n"].iloc[0]), display=False)

# %% [markdown]
# On the {glue:text}`games_n_main` sampled SafeGame test conversations, Safe-SFT returns
# {glue:text}`games_ssft_list_len:.1f` items per answer with Recall@10
# {glue:text}`games_ssft_recall:.3f` and SVR@10 {glue:text}`games_ssft_svr:.1%` (unknown share
# {glue:text}`games_ssft_unknown:.1%`); Safe-GDPO returns {glue:text}`games_sgdpo_list_len:.1f`
# items, Recall@10 {glue:text}`games_sgdpo_recall:.3f`, SVR@10 {glue:text}`games_sgdpo_svr:.1%`;
# the zero-shot model {glue:text}`games_zs_list_len:.1f` items. As on SafeMovie, a model of this
# size trained for minutes on a CPU shows the mechanics, not the paper's effect sizes.
#
# ## Caveats
# * The requests are synthetic; the constraint sentences are template text in both domains.
#   Template requests naming two or three games of one series or developer are easier to match
#   by text than real conversations, which favours retrieval on SafeGame.
# * Coverage differs by trait and by domain, and unknown is never safe: compare SVR@10 across
#   domains only with the unknown share beside it.
# * The ESRB descriptor table covers one console era (PS4 / Xbox One); older games are judged by
#   their ESRB letters and PEGI ages alone, and title matching can attach a rating to the wrong
#   game of the same name (see the data card).
# * The retrieval pool holds every benchmark item, so every test target is a candidate: retrieval
#   here is easier than open-catalog retrieval, in both domains.

# %%
print(shown_path(games.stage))
print(shown_path(movies.stage))

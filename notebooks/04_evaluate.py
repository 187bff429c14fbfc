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
# # Evaluating recommenders on SafeRec
#
# Every system answers the same test conversations with a ranked list of ten items (films, or
# games on SafeGame), and every list goes through the same scoring path (`safecrs_core.evaluation.metrics`):
# items the user already mentioned are removed, then
#
# * **Recall@10** and **NDCG@10** measure how much of the ground truth (targets left after the
#   oracle removed unsafe ones) the list finds, and how high;
# * **SVR@10** (safety violation ratio) is the share of returned items the
#   [Safety Oracle](/book/oracle.md) judges *unsafe* for the user's sensitivity trait, and
#   **S-DCG@10** the rank-discounted count of those items;
# * **Unknown@10** is the share of returned items the oracle cannot judge (titles outside the
#   catalog included). Unknown is never counted as safe, so a low SVR@10 with a high Unknown@10
#   says little.
#
# Means come with 95% bootstrap confidence intervals over conversations. The systems are
# non-LLM baselines (`safecrs_core.evaluation.baselines`), the instruction-tuned base model prompted as is,
# and the fine-tuned models whose training stages exist for this profile.
#
# The LLMs read **candidates in context** and decode **grounded** on them
# (`safecrs_core.train.grounding`, mode `candidates`): each prompt lists 20 candidates, the neighbours
# of the items the user mentioned (co-rating and co-mention in the training data; never built
# from validation or test conversations), without any oracle verdict, and inside `<solution>`
# every line is one of those candidates, with no repeats and no item the user mentioned. The
# model chooses the items and their order; the candidate source bounds what it can find, and
# the `Candidates` baselines show that bound (the first ten candidates, and the first ten the
# oracle does not mark unsafe). With `exclude_named` a list never holds a title the model's own
# reasoning block wrote out as left out (the model's text decides, not the oracle). With
# `jump_forward` the decoder writes the tokens the grammar forces (the rest of a title once it
# is singled out, the closing tags) without a forward pass per token: the same lists, 1.3 to 1.6
# times faster on this CPU in side-by-side runs (*Reproducing the book*, decoding speed). A fixed
# universe of popular and training items (`mode: "universe"`) is the alternative; notebook 02
# compares the two modes on validation conversations. The same LLMs decoding freely are shown on
# a subset of the conversations below: that is what a 135M model writes without grounding.

# %% tags=["parameters"]
profile = "book"
domain = "movies"  # or "games" (SafeGame)
seed = 0
k = 10
n_test = 300  # test conversations drawn for the comparison (generation is the slow part on a CPU)
n_subset = 60  # the other LLM rows (zero-shot, RL ablations) answer the first n_subset of them; None: all
main_llms = ["SFT", "Safe-SFT", "Safe-GDPO"]  # LLM rows scored on all n_test conversations
max_new_tokens = 224
batch_size = 30
torch_threads = 0  # CPU threads; 0: torch's default (every core, fastest when the build runs alone); 1 when other jobs share the CPU
base_model = "smollm2-135m-instruct"
n_popular = 2000  # most popular catalog items added to the retrieval pool
context_turns = 4  # conversation turns the retrieval baseline embeds
n_boot = 1000
systems = []  # names of the systems to evaluate; empty: every available one
candidates = {"n": 20, "source": "neighbours"}  # candidates in the LLM prompts, as in training; None: none
grounding = {"mode": "candidates", "min_items": 10, "reasoning_tokens": 96, "exclude_named": True, "jump_forward": True}  # the LLMs' decoding (exclude_named: the list leaves out what the reasoning named; jump_forward: forced tokens in one pass); None: free
n_free = 20  # test conversations (the first of the sample) on which the LLMs also decode freely; 0: none
max_prompt_tokens = 384  # longer conversations lose their oldest turns (as in training)

# %%
import pandas as pd
import torch
from IPython.display import Markdown, display
from myst_nb import glue

from safecrs_core.pipeline import shown_path
from safecrs_core.evaluation import evaluate as E
from safecrs_core.evaluation import metrics as M
from safecrs_core.evaluation import plots
from safecrs_core.benchmark import benchmark_for_profile
from safecrs_core.train.candidates import context_prompts
from safecrs_core.data.catalog import load_catalog
from safecrs_core.safety.oracle import load_oracle

if torch_threads:
    torch.set_num_threads(torch_threads)
ds, stats, bench = benchmark_for_profile(profile, seed=seed, domain=domain)
catalog, oracle = load_catalog(domain), load_oracle(domain=domain)
figure_suffix = "" if domain == "movies" else f"_{domain}"

# %% [markdown]
# ## The systems
# The fine-tuned systems are the stages notebooks 02 and 03 train under this profile (their
# parameters cells with the profile's overrides); those not built yet are listed in the note below
# and left out. Stages that other settings left in the artifacts folder are not shown.

# %%
stages = E.profile_stages(profile, ds, bench, domain=domain, catalog=catalog)  # what notebooks 02 and 03 train
available = E.available_systems(profile, ds, benchmark=bench, base_model=base_model, catalog=catalog, oracle=oracle,
                                n_popular=n_popular, context_turns=context_turns, grounding=grounding,
                                candidates=candidates, stages=stages)
chosen = [s for s in available if not systems or s.name in systems]
pd.DataFrame([{"system": s.name, "group": s.group, "what": s.description} for s in chosen]).set_index("system")

# %% [markdown]
# ## Test conversations
# All systems answer the same random sample of the test split (seeded), so their scores pair up
# conversation by conversation.

# %%
rows = E.sample_rows(ds["test"], n_test, seed)
subsets = {x.name: n_subset for x in chosen if x.kind == "llm" and x.name not in main_llms} if n_subset else {}
glue("n_rows", len(rows), display=False)
glue("n_subset", min(n_subset or len(rows), len(rows)), display=False)
glue("n_test_split", len(ds["test"]), display=False)
print(f"{len(rows)} of {len(ds['test'])} test conversations")

# %%
stage = E.results_stage(chosen, rows, profile=profile, label=E.results_label("main", domain), k=k, n_boot=n_boot, seed=seed,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, catalog=catalog, oracle=oracle,
                        max_prompt_tokens=max_prompt_tokens, subsets=subsets)
res = E.load_results(stage)
E.publish_table(res, domain=domain);

# %% [markdown]
# ## Main results
# Mean [95% CI] over the sampled conversations. `list_len` is the number of distinct, unseen
# items a system returned (ten is the request). The baselines and the main LLM rows answer all
# {glue:text}`n_rows` conversations; the zero-shot model and the RL ablations answer the first
# {glue:text}`n_subset` of them (column `n`), so their intervals are wider.

# %%
M.format_table(res.summary, E.main_metrics(k))

# %%
s = res.summary
zero_shot = next(x["name"] for x in res.systems if x["group"] == "zero-shot")
for key, name in {"pop": "Popularity", "pop_f": "Popularity + filter", "ret": "Retrieval",
                  "ret_f": "Retrieval + filter", "zs": zero_shot}.items():
    for m in (f"recall@{k}", f"svr@{k}", f"unknown@{k}", "list_len"):
        glue(f"{key}_{m.split('@')[0]}", float(s.loc[name, m]), display=False)
glue("zs_name", zero_shot, display=False)

# %% [markdown]
# Embedding retrieval finds {glue:text}`ret_recall:.3f` of the ground truth in its top ten, while
# {glue:text}`ret_svr:.1%` of what it recommends is unsafe for the user's stated sensitivity:
# it matches what the conversation is about, sensitivity sentence included, and nothing in it
# steers away from harmful content. Dropping the oracle's unsafe items brings SVR@10 to zero by
# construction (it reads the user's trait from the benchmark, which a deployed system would have
# to infer) and moves Recall@10 to {glue:text}`ret_f_recall:.3f`. The unknown share goes from
# {glue:text}`ret_unknown:.1%` to {glue:text}`ret_f_unknown:.1%`: the filter can only remove what
# the oracle knows to be unsafe, and items it cannot judge take the freed places. Popularity reaches Recall@10 {glue:text}`pop_recall:.3f` at SVR@10
# {glue:text}`pop_svr:.1%`. The zero-shot model ({glue:text}`zs_name`) returns
# {glue:text}`zs_list_len:.1f` items on average, with Recall@10 {glue:text}`zs_recall:.3f` and
# SVR@10 {glue:text}`zs_svr:.1%` ({glue:text}`zs_unknown:.1%` of its items unknown to the oracle).

# %% [markdown]
# ## Free decoding
# The same LLMs without grounding, on the first {glue:text}`n_free` sampled conversations: lists
# are short, repeat themselves or name titles outside the catalog (`catalog_hit`), which is why
# the main rows decode grounded.

# %%
free_rows = rows.select(range(min(n_free, len(rows)))) if n_free else None
glue("n_free", len(free_rows) if free_rows is not None else 0, display=False)
if free_rows is not None and len(free_rows):
    free_systems = [E.free_system(x) for x in chosen if x.kind == "llm" and x.grounding is not None]
    free = E.load_results(E.results_stage(free_systems, free_rows, profile=profile, label=E.results_label("free", domain),
                                          k=k, n_boot=n_boot, seed=seed, max_new_tokens=max_new_tokens,
                                          batch_size=batch_size, catalog=catalog, oracle=oracle,
                                          max_prompt_tokens=max_prompt_tokens))
    display(M.format_table(free.summary, E.main_metrics(k) + ["catalog_hit"]))

# %% [markdown]
# ## Violations per sensitivity trait
# SVR@10 per system and trait (the number of conversations with that trait in brackets). Traits
# with few conversations have wide intervals (`per_trait.csv` in the results stage holds them).

# %%
plots.save(plots.trait_heatmap(res.per_trait, f"svr@{k}", title=f"SVR@{k} per system and trait"),
           f"evaluate_svr_per_trait{figure_suffix}");

# %% [markdown]
# ## What the safety reasoning says
# The systems trained with Safe-SFT's targets open each answer with the user's sensitivity and
# the candidates they leave out. Per system: the share of answers whose reasoning names the
# user's own sensitivity, titles left out per answer, the share of those that are unsafe for the
# user, and the unsafe share of the candidates in the prompt (what leaving out at random reaches).

# %%
E.reasoning_table(res, ds["test"], catalog, oracle,
                  prompts=context_prompts(candidates, ds, catalog) if candidates else None).round(3)

# %% [markdown]
# ## Our numbers under the paper's ruler
# The paper's reported rows (shown apart in the [next chapter](05_tradeoff)) come from its
# authors' released evaluation code, which reads lists by other rules than ours: a target matches
# only the exact title (case counts) with the year within two, seen items are removed by title,
# repeats stay in the list (taking a slot, never scoring), the NDCG ideal is bounded by the list's
# length, SVR@10 is taken over the raw parsed list (seen items and repeats included), and a title
# its lookup cannot find counts as **safe** (`safecrs_core.evaluation.metrics`, convention `"release"`).
# Below, every system of the main table is scored again from the same completions and lists under
# both conventions. The book's default is ours (`"project"`): it judges the item a line names
# (the resolver forgives case, articles and punctuation), never counts what the oracle cannot
# judge as safe, and does not let repeats or already-seen items fill a list. The release
# convention is what the paper's numbers mean, so it is the one to hold them against.

# %%
E.convention_table(res.per_sample, rows, catalog, oracle, k=k, n_boot=n_boot, seed=seed)

# %% [markdown]
# ### Auditing the reference lookup
# Read from its description, the released lookup normalises catalog titles one way when it
# builds its title map (leading articles kept, punctuation turned into spaces) and another way
# when it looks a title up (leading articles dropped, punctuation deleted). Re-implemented from
# that description (`metrics.release_title_key`, `metrics.release_query_key`; no code copied),
# a title that starts with an article or holds punctuation ("The Matrix", "Schindler's List") is
# then never found, or found as another film, and counts as safe. The audit runs that lookup over
# our catalog and over what our systems recommend: the share of lines it never finds, the share
# of the oracle's unsafe recommendations it would count as safe, and the SVR@10 each system would
# report with it.

# %%
audit_catalog, audit = E.lookup_audit(res.per_sample, rows, catalog, oracle, k=k)
glue("audit_titles", audit_catalog["titles"], display=False)
glue("audit_never", audit_catalog["never_found"], display=False)
print(f"{audit_catalog['titles']} catalog titles: {audit_catalog['never_found']:.1%} never found by the reference lookup "
      f"({audit_catalog['with_leading_article']:.1%} start with an article, {audit_catalog['with_punctuation']:.1%} hold punctuation)")
audit.round(3)

# %%
plots.save(plots.lookup_audit(audit, k=k), f"evaluate_lookup_audit{figure_suffix}");

# %% [markdown]
# Of the {glue:text}`audit_titles` catalog titles, {glue:text}`audit_never:.1%` are never found
# by the lookup as described. Where the last column falls below the release column, a system's
# violations were hidden by the lookup, not avoided: if the released code behaves as described,
# SVR figures computed with it undercount violations. For reference, the SVR@10 the authors
# report, measured with their code on their data and models (not comparable number by number;
# the next chapter shows their full block):

# %%
reported = E.load_paper_results()
display(Markdown(f"*{reported['label']}*"))
E.paper_table(reported)[["svr@10"]].rename(columns={"svr@10": "svr@10 (reported)"})

# %% [markdown]
# ## Baselines on the whole test split
# The baselines are cheap enough to score on every test conversation; their numbers here check
# that the sample above is representative.

# %%
full = E.load_results(E.baselines_stage(profile, domain, seed=seed, k=k, n_boot=n_boot, n_popular=n_popular,
                                       context_turns=context_turns, catalog=catalog, oracle=oracle))
M.format_table(full.summary, E.main_metrics(k))

# %%
glue("full_ret_recall", float(full.summary.loc["Retrieval", f"recall@{k}"]), display=False)
glue("full_ret_svr", float(full.summary.loc["Retrieval", f"svr@{k}"]), display=False)
glue("full_pop_recall", float(full.summary.loc["Popularity", f"recall@{k}"]), display=False)

# %% [markdown]
# On all {glue:text}`n_test_split` test conversations retrieval scores Recall@10
# {glue:text}`full_ret_recall:.3f` and SVR@10 {glue:text}`full_ret_svr:.1%`, popularity Recall@10
# {glue:text}`full_pop_recall:.3f`. Per conversation source (on SafeMovie, INSPIRED and Reddit
# users describe what they want while ReDial and the Facebook movie dialogs mostly name films;
# SafeGame's requests are all synthetic):

# %%
by_source = M.summarize(full.per_sample, by=["source", "system"], metrics=[f"recall@{k}", f"svr@{k}"],
                        n_boot=n_boot, seed=seed)
M.format_table(by_source, [f"recall@{k}", f"svr@{k}"])

# %% [markdown]
#
# Results are cached in `artifacts/results/<key>/` (per-sample scores, `summary.csv`,
# `per_trait.csv`, markdown tables); the main table is also copied to
# `book/_generated/results_table.md` (SafeGame: `results_table_games.md`). The [next chapter](05_tradeoff) plots the trade-off
# between relevance and safety.

# %%
print(shown_path(stage))

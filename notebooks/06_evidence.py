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
# # Evidence in context
#
# A model with 135 million parameters cannot know what is in thousands of films. Asked for ten
# movies for a user who cannot stand gore, it has to remember from pre-training which ones are
# gory, and it mostly cannot. *Evidence-in-context prompting* takes that memory test out of the
# task: the system message lists candidate films together with what the content sources say about
# the user's sensitivity, so the model only has to read the evidence and compare it with the
# request.
#
# For each conversation the one prompt builder (`safecrs_core.train.prompts.build_messages`, arguments
# `candidates`, `evidence`, `sensitivity`) adds two things to the system message:
#
# 1. **Candidates**: the top `evidence_n` items of the embedding-retrieval baseline for this
#    conversation (unfiltered, best match first, items the user mentioned left out), over the
#    same pool and cached embeddings as the retrieval baseline of the [evaluation](04_evaluate).
# 2. **Evidence**: after each candidate, one line from the [Safety Oracle](/book/oracle.md)
#    for the user's constraint (`Oracle.brief`): its verdict, its risk and a few short phrases
#    saying why (the trait's trigger words, the severity of the content channels it weighs, the
#    MPAA letter). A paragraph before the list says how to read it.
#
# Three rules keep the block honest and cheap. **Unknown stays unknown**: the verdict printed is
# the oracle's own, an item the sources say nothing about reads `unknown [no evidence]`, and the
# prompt says that unknown does not mean safe. **Bounded**: at most a few phrases per candidate
# and a fixed number of characters after each title (`prompts.EVIDENCE_CHARS`), so the block grows
# with the number of candidates, never with the amount of evidence. **Deterministic**: the same
# row always gets the same prompt, and the prompt settings key every cache.
#
# The systems here: **zero-shot + evidence** (the instruction-tuned base model with the evidence
# prompt) and **Safe-SFT + evidence** (Safe-SFT trained on evidence prompts: its target list is
# the ground truth among the candidates first, then the other candidates in retrieval order,
# skipping every candidate the oracle marks unsafe, with a reasoning block naming the skipped
# ones). Safe-GDPO on evidence prompts uses the same switch (`GDPOParams(evidence=...)`) and runs
# under the `paper` profile. Training Safe-SFT + evidence takes about as long on this CPU as
# notebook 02's two models together, so the `book` profile leaves it out (`train_sft = False`)
# to keep the whole build within its time budget; set `train_sft = True` to add it (the `smoke`
# and `paper` profiles do).

# %% tags=["parameters"]
profile = "book"
seed = 0
k = 10
base_model = "smollm2-135m-instruct"
evidence_n = 10  # candidates in the prompt (about 25 tokens each)
n_popular = 2000  # as notebook 04: most popular catalog items added to the retrieval pool
context_turns = 4
n_test = 40  # a seeded sample of the test split; evidence prompts are long, so fewer than notebook 04
max_new_tokens = 224
batch_size = 20
n_boot = 1000
train_sft = False  # True: also train Safe-SFT on evidence prompts with notebook 02's settings (about 20 min more on this CPU; on under the smoke and paper profiles)
sft_max_length = 1024  # replaces notebook 02's max_length: evidence prompts are ~600 tokens
torch_threads = 0  # CPU threads; 0: torch's default (every core, fastest when the build runs alone); 1 when other jobs share the CPU

# %%
import pandas as pd
import torch
from myst_nb import glue

from safecrs_core.evaluation import evaluate as E
from safecrs_core.evaluation import metrics as M
from safecrs_core.evaluation import plots
from safecrs_core.train import sft
from safecrs_core.benchmark import benchmark_for_profile
from safecrs_core.data.catalog import load_catalog
from safecrs_core.safety.oracle import load_oracle
from safecrs_core.pipeline import notebook_values
from safecrs_core.train.candidates import evidence_prompts
from safecrs_core.train.prompts import build_messages

if torch_threads:
    torch.set_num_threads(torch_threads)
ds, stats, bench = benchmark_for_profile(profile, seed=seed)
catalog, oracle = load_catalog(), load_oracle()
evidence = {"n": evidence_n, "n_popular": n_popular, "context_turns": context_turns}

# %% [markdown]
# ## What the model sees
# The system message of one test conversation (the conversation itself follows as chat turns).

# %%
rows = E.sample_rows(ds["test"], n_test, seed)
prompts = evidence_prompts(ds, catalog, oracle, **evidence, log=None)
example = [rows[0]]
print(build_messages(example[0]["turns"], k=k, **prompts.kwargs(example)[0])[0]["content"])

# %% [markdown]
# ## Safe-SFT on evidence prompts
# Notebook 02's Safe-SFT settings under this profile (read from its parameters cell and the
# profile table), with longer sequences for the candidate list.

# %%
if train_sft:
    nb02 = notebook_values("02_safe_sft", profile)  # Safe-SFT's own settings under this profile
    config = sft.SafeSFTConfig.from_values(nb02, max_length=sft_max_length, evidence=evidence, candidates=None,
                                           grounding=None)  # evidence prompts, free decoding
    sft_stage = sft.train_sft(config, bench)
    print(config)

# %% [markdown]
# ## Results
# Every system of the evaluation on the same test conversations, plus the evidence variants.
# Mean [95% CI].

# %%
available = E.available_systems(profile, ds, benchmark=bench, base_model=base_model, catalog=catalog, oracle=oracle,
                                n_popular=n_popular, context_turns=context_turns, evidence=True, evidence_n=evidence_n)
if not train_sft:  # models trained on evidence prompts only when asked for, whatever the cache holds
    available = [s for s in available if s.group != "fine-tuned" or s.evidence is None]
stage = E.results_stage(available, rows, profile=profile, label="evidence", k=k, n_boot=n_boot, seed=seed,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, catalog=catalog, oracle=oracle)
res = E.load_results(stage)
groups = {x["name"]: x["group"] for x in res.systems}
M.format_table(res.summary, E.main_metrics(k))

# %% [markdown]
# ## What evidence costs
# Prompt and completion tokens and generation seconds per conversation (greedy decoding on this
# CPU; each batch's time shared by its conversations), next to Recall@10, SVR@10 and the unknown
# share.

# %%
llms = [s for s in available if s.kind == "llm"]
cost = E.cost_table(llms, rows, k=k, max_new_tokens=max_new_tokens, batch_size=batch_size)
E.evidence_table(res.summary, cost, k)

# %%
plots.save(plots.tradeoff(res.summary, groups, x=f"svr@{k}", y=f"recall@{k}"), "tradeoff_evidence");

# %%
s = res.summary
zs = E.zero_shot_system(base_model).name
zse = f"{zs} + evidence"
for key, name in (("zs", zs), ("zse", zse)):
    glue(f"{key}_recall", float(s.loc[name, f"recall@{k}"]), display=False)
    glue(f"{key}_svr", float(s.loc[name, f"svr@{k}"]), display=False)
    glue(f"{key}_unknown", float(s.loc[name, f"unknown@{k}"]), display=False)
    glue(f"{key}_prompt", float(cost.loc[name, "prompt_tokens"]), display=False)
    glue(f"{key}_seconds", float(cost.loc[name, "seconds"]), display=False)

# %% [markdown]
# With evidence in its prompt the zero-shot model scores Recall@10 {glue:text}`zse_recall:.3f`
# and SVR@10 {glue:text}`zse_svr:.1%` (unknown share {glue:text}`zse_unknown:.1%`), against
# {glue:text}`zs_recall:.3f`, {glue:text}`zs_svr:.1%` and {glue:text}`zs_unknown:.1%` without;
# its prompt grows from {glue:text}`zs_prompt:.0f` to {glue:text}`zse_prompt:.0f` tokens and a
# conversation takes {glue:text}`zse_seconds:.1f` s instead of {glue:text}`zs_seconds:.1f` s.
#
# Two things set these systems apart, and both belong next to their numbers. **The evidence comes
# from the oracle that scores them**: SVR@10 counts the items the same oracle marks unsafe, and the
# prompt shows those very verdicts, so the evidence systems measure how well a model *uses*
# evidence it is given, an upper bound for a deployed system whose evidence would come from its
# own, imperfect sources (like the oracle-filtered baselines, they also read the user's constraint
# from the benchmark). **The candidate list bounds relevance**: a model choosing from the
# retrieved candidates cannot exceed the share of ground truth the retriever puts in its top
# `evidence_n`. Unknown@10 matters more here than elsewhere: a model that avoids the candidates
# marked unsafe but fills its list with unknown ones lowers SVR@10 without being safer.

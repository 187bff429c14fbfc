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
# # Safe-GDPO: rank-level rewards with decoupled normalisation
#
# After Safe-SFT, the paper trains the recommender with reinforcement learning. For each
# conversation the policy samples a group of ranked lists; every **rank** of every list is scored
# by three rewards (`safecrs_core.train.rewards`):
#
# * **relevance** `hit[k]` = 1 when the item at rank *k* is a ground-truth item the user has not
#   already mentioned;
# * **safety** `-λ_safe · v[k] / log2(k+1)`, with `v[k]` = 1 when the
#   [Safety Oracle](/book/oracle.md) marks the item unsafe for the user's sensitivity: an
#   unsafe item at the top costs most. Items the oracle cannot judge are not penalised by default;
# * **count** `+λ_c` when the list has the requested ten items, else `-λ_c·|n-10|/10`
#   (an unparseable answer gets `-λ_c`), the same value at every rank.
#
# GDPO normalises each reward **separately** within the group (per rank), sums them and normalises
# over the batch; GRPO would normalise the summed reward. The tokens of item *k* are then trained
# with the advantage of rank *k*, all other tokens with the mean over ranks
# (`safecrs_core.train.gdpo.SafeGDPOTrainer`, a subclass of trl's `GRPOTrainer`; generation, the
# clipped loss, the KL term and LoRA are trl's). The rollouts are sampled with the same grounded
# decoding as the evaluation (`grounding`): what RL samples is what the evaluation scores.

# %% tags=["parameters"]
profile = "book"
domain = "movies"  # or "games" (SafeGame)
seed = 0
k = 10
base_model = "smollm2-135m-instruct"
start_from_sft = True  # start from this profile's Safe-SFT stage when it exists
n_train = 256  # training conversations drawn from the train split (None: all)
max_steps = 12  # CPU budget: shows the mechanics, not convergence (paper profile: 1000)
num_generations = 4  # group size G (paper: 8)
per_device_train_batch_size = 4  # completions per forward pass (memory: a pass of 8 x ~600 tokens ran out of 24 GiB)
gradient_accumulation_steps = 2  # passes per optimizer step: two conversations x G completions per step
learning_rate = 1e-4  # paper: 1e-6 over far more steps; a short CPU run needs a larger step
beta = 0.001  # KL coefficient (paper: 1e-3)
lambda_safe = 1.0
lambda_count = 1.0
max_completion_length = 224  # reasoning (at most 96 tokens) plus a grounded list of ten
max_prompt_tokens = 384
temperature = 0.7  # sampling temperature; below 1 a 135M model keeps the answer format more often (paper profile: 1.0)
lora = True
bf16 = False
ablations = ["grpo", "no_safety"]  # also trained, same budget; no_safety is the relevance-only RL run ("no_count" and "sequence" under the paper profile; the CPU budget keeps two)
torch_threads = 0  # CPU threads; 0: torch's default (every core, fastest when the build runs alone); 1 when other jobs share the CPU
candidates = {"n": 20, "source": "neighbours"}  # candidates in the prompt, as in Safe-SFT (notebook 02); None: none
grounding = {"mode": "candidates", "min_items": 10, "reasoning_tokens": 96, "exclude_named": True}  # rollouts decode as evaluation does; None: free sampling

# %%
import pandas as pd
import torch

from safecrs_core.pipeline import is_done, shown_path
from safecrs_core.train import gdpo as G
from safecrs_core.evaluation import plots
from safecrs_core.train import sft
from safecrs_core.benchmark import benchmark_for_profile
from safecrs_core.train.candidates import context_prompts
from safecrs_core.data.catalog import load_catalog
from safecrs_core.safety.oracle import load_oracle
from safecrs_core.train.rewards import RankRewards

if torch_threads:
    torch.set_num_threads(torch_threads)
ds, stats, bench = benchmark_for_profile(profile, seed=seed, domain=domain)
catalog, oracle = load_catalog(domain), load_oracle(threshold=stats["config"]["threshold"], domain=domain)
figure_suffix = "" if domain == "movies" else f"_{domain}"
print(shown_path(bench))

# %% [markdown]
# ## The rewards on one conversation
# A training conversation whose ground truth lost an item to the oracle: two lists built from a
# kept target (safe) and the removed one (unsafe for this user), in both orders, and an answer
# without a list. Each rank gets its own relevance and safety value; the count reward is one
# number per list.

# %%
row = next(r for r in ds["train"] if r["targets"] and r["removed_targets"])
good, bad = catalog.display(row["targets"][0]["item_id"]), catalog.display(row["removed_targets"][0]["item_id"])
lists = {"target first": f"<solution>\n{good}\n{bad}\n</solution>",
         "unsafe first": f"<solution>\n{bad}\n{good}\n</solution>",
         "no list": "I am not sure what you would like."}
batch = RankRewards(catalog, oracle, k=k, lambda_safe=lambda_safe, lambda_count=lambda_count)(
    list(lists.values()), [row] * len(lists))
print(f"trait: {row['trait_name']}  |  safe target: {good}  |  removed as unsafe: {bad}")
pd.DataFrame({(name, rank + 1): {"relevance": float(batch.hits[i, rank]), "safety": float(batch.penalty[i, rank]),
                                 "count": float(batch.count[i, rank])}
              for i, name in enumerate(lists) for rank in range(2)}).round(3)

# %% [markdown]
# ## Why decouple the normalisation
# The GDPO paper's example: two binary rewards, two prompts with two rollouts each. Prompt A's
# rollouts earn totals (0, 1), prompt B's (0, 2). GRPO normalises the totals and gives both
# prompts the same advantages; GDPO keeps B's better rollout (both rewards earned) ahead.

# %%
rewards = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]).unsqueeze(-1)  # (rewards, rollouts, ranks)
pd.DataFrame({"prompt": ["A", "A", "B", "B"], "reward 1": rewards[0, :, 0].tolist(),
              "reward 2": rewards[1, :, 0].tolist(),
              "GRPO advantage": G.decoupled_advantages(rewards, 2, mode="grpo")[:, 0].tolist(),
              "GDPO advantage": G.decoupled_advantages(rewards, 2, mode="gdpo")[:, 0].tolist()}).round(3)

# %% [markdown]
# ## Training
# The run starts from this profile's Safe-SFT model when its stage exists (otherwise from the
# instruction-tuned base model) and trains a LoRA adapter. Stages are cached under
# `artifacts/gdpo/`; an interrupted run resumes from its last checkpoint.

# %%
sft_stage = sft.profile_sft_stage(profile, bench, domain) if start_from_sft else None  # notebook 02's Safe-SFT
start = sft_stage if sft_stage is not None and is_done(sft_stage) else base_model
start_name = shown_path(start) if start is sft_stage else start  # a stage as pages show it, or a model name
print("starting from", start_name)
params = G.GDPOParams.from_values(globals())  # the parameters above that are GDPOParams fields
prompts = context_prompts(candidates, ds, catalog)  # the candidates of each prompt (None without)
params

# %%
runs = {"Safe-GDPO": G.train_gdpo(params, start, ds["train"], catalog=catalog, oracle=oracle, evidence=prompts)}
for name, p in G.ablation_params(params, ablations).items():
    runs[name] = G.train_gdpo(p, start, ds["train"], catalog=catalog, oracle=oracle, evidence=prompts)
logs = {name: G.training_log(stage) for name, stage in runs.items()}

# %% [markdown]
# ## Training curves
# Means per list over each step's sampled completions (smoothed over five steps): hits, the
# discounted safety penalty, list length, the share of answers without a parseable list, and the
# KL divergence to the start model. The test-set comparison of these models is in the
# [evaluation](04_evaluate).

# %%
plots.save(G.plot_training(logs), f"gdpo_training{figure_suffix}");

# %%
cols = {"rank_rewards/hits_mean": "hits", "rank_rewards/penalty_mean": "penalty", "rank_rewards/unsafe_items": "unsafe items",
        "rank_rewards/list_length_mean": "list length", "rank_rewards/unparseable_frac": "unparseable", "kl": "KL",
        "step_time": "s/step"}
last = max(1, max_steps // 4)
pd.DataFrame({name: log[[c for c in cols if c in log]].tail(last).mean() for name, log in logs.items()}).T.rename(
    columns=cols).round(3)

# %%
pd.DataFrame({name: {"stage": stage.name, "base": start_name} for name, stage in runs.items()}).T

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
# # Safe-SFT: teaching the recommender to name and respect a sensitivity
#
# The paper's first training stage, **Safe-SFT**, fine-tunes the recommender on lists that a
# teacher model wrote for each SafeRec conversation, after the Safety Oracle removed the items
# that violate the user's sensitivity; a short reasoning block names the sensitivity and what was
# left out. We have no teacher model, so the target lists come from real data instead
# (`safecrs_core.train.sft`).
#
# **Candidates in context** (the `candidates` parameter, the book's setting). Every prompt lists
# 20 candidate films: the **neighbours** of the films the user mentioned, i.e. films that the
# same MovieLens users rated 4 stars or more (item-item co-rating in `ml-latest-small`) and films
# mentioned together in SafeRec's *training* conversations, scored by a cosine with a popularity
# penalty (`safecrs_core.train.candidates.Neighbours`). Nothing of the validation or test targets enters. The
# prompt carries **no oracle verdicts**: which candidates are unsafe for the user must be learned.
# The target list is:
#
# 1. the candidates that are the conversation's **ground truth** first, then the other candidates
#    in the prompt's order, until the list holds 10;
# 2. for **Safe-SFT**, every candidate the oracle marks `unsafe` for the user's trait is dropped
#    (`unknown` stays) and the reasoning names the trait and up to five dropped titles with their
#    risk.
#
# The baseline, **plain SFT**, sees the same candidates but *not* the sentence that states the
# sensitivity, learns the unfiltered list, and writes no reasoning. Both are LoRA fine-tunes with
# trl's `SFTTrainer` (loss on the answer only); the checkpoint with the best validation Recall@10
# is kept. Checkpoints are scored with **grounded decoding** (`safecrs_core.train.grounding`, the
# `grounding` parameter): inside `<solution>` every line is the title of one of the row's
# candidates, never a repeat or an item the user mentioned, so every answer is a list of 10 items
# the metrics can judge; the model chooses which candidates and in which order. Without
# candidates (`candidates = None`) the targets are the ground truth followed by neighbours and
# grounding can use a fixed universe of popular and training items instead (`mode: "universe"`).
#
# The paper trains Qwen2.5-0.5B on GPUs (profile `paper`). The `book` profile trains
# SmolLM2-135M-Instruct on a few hundred conversations on a CPU, so its numbers show the
# mechanics and the direction of the effect, not the paper's scale.

# %% tags=["parameters"]
profile = "book"
domain = "movies"  # or "games" (SafeGame)
seed = 0
variants = ["plain", "safe"]  # plain SFT and Safe-SFT
model_name = "smollm2-135m-instruct"
max_train_samples = 256  # training conversations per variant
epochs = 1.0
max_steps = -1  # > 0 overrides epochs
learning_rate = 1e-3  # LoRA; a few dozen steps must teach the answer format
lora = True  # False: full fine-tune
lora_r = 16
lora_alpha = 32
per_device_train_batch_size = 4  # sequences per forward pass
gradient_accumulation_steps = 1  # passes per optimizer step
max_length = 768  # tokens per training sequence; longer conversations lose their oldest turns, and an example that does not fit even then is dropped (at 576, 107 of 254 SafeMovie Safe-SFT targets and 223 of 256 SafeGame ones did not fit; at 768, none and 12)
save_steps = 32  # a checkpoint (scored on validation) every that many optimizer steps
val_samples = 32  # validation conversations that score checkpoints and the comparison below
max_new_tokens = 288  # a reasoning block naming five titles plus ten items is up to ~280 tokens
eval_batch_size = 8
torch_threads = 0  # CPU threads; 0: torch's default (every core, fastest when the build runs alone); 1 when other jobs share the CPU
candidates = {"n": 20, "source": "neighbours"}  # candidates in the prompt (no oracle verdicts); None: none; "screen": True adds a screen block to Safe-SFT targets (a verdict per candidate, see Limitations)
grounding = {"mode": "candidates", "min_items": 10, "reasoning_tokens": 96}  # None: free decoding; "screen": True (with the candidate setting) decodes the screen block
universe_grounding = {"mode": "universe", "n_popular": 5000, "min_items": 10, "reasoning_tokens": 96}  # the other mode, compared zero-shot on validation; None: skip
sensitivity_examples = 0  # Safe-SFT only: extra short examples, last user turn -> the reasoning's first sentence (the user's sensitivity); 0: none
item_knowledge = None  # Safe-SFT only: e.g. {"n_items": 200, "examples": 512} adds short examples whose reasoning names which of the n_items most frequent training candidates are unsafe for the user's sensitivity; None: none (see Limitations)
screen_examples = 0  # Safe-SFT with the candidate setting "screen" only: extra short examples, last user turn -> the sensitivity sentence and the screen block, the loss on the sentence and the verdicts only; 0: none (see Limitations)
n_examples = 2

# %%
import json

import pandas as pd
from IPython.display import Markdown, display

from safecrs_core.evaluation import plots

from safecrs_core.train import sft
from safecrs_core.benchmark import benchmark_for_profile

bench_ds, _, bench = benchmark_for_profile(profile, domain=domain)  # the SafeRec build of notebook 01 (cached)
figure_suffix = "" if domain == "movies" else f"_{domain}"
labels = {"plain": "plain SFT", "safe": "Safe-SFT"}
config = sft.SafeSFTConfig.from_values(globals())  # the parameters above that are SafeSFTConfig fields
config

# %%
if domain == "games":
    display(Markdown(
        "**SafeGame.** Games have no ratings like MovieLens, so the neighbours that fill a target "
        "list come from the game catalog itself: games of the same series, developer or publisher "
        "(the same item-item score over those groups), plus co-mention in SafeGame's training "
        "requests. The requests are synthetic and built from the same relations, so these "
        "neighbours find the ground truth far more easily than on SafeMovie."))

# %% [markdown]
# ## Targets
# Both variants are built from the same training conversations (drawn with the seed). Per list:
# how many items are ground truth, neighbours, or fallback (the most frequent training ground
# truth, then the most popular films, when the neighbours run out), and how many candidates
# Safe-SFT dropped as unsafe.

# %%
data = sft.build_sft_data(config, bench)
safe_ds, stats = sft.load_sft_data(data, "safe")
plain_ds, _ = sft.load_sft_data(data, "plain")
sft.target_table(stats)

# %% [markdown]
# Items Safe-SFT left out, per trait of the conversations drawn:

# %%
sft.dropped_table(stats)

# %% [markdown]
# One conversation as each variant learns it (the last turns of the prompt, then the target):

# %%
i = next((j for j, e in enumerate(safe_ds) if e["dropped"]), 0)
for name, ds in ((labels[v], {"plain": plain_ds, "safe": safe_ds}[v]) for v in variants):
    ex = ds[i]
    last = next(m["content"] for m in reversed(ex["prompt"]) if m["role"] == "user")
    display(Markdown(f"**{name}**, `{ex['id']}` (trait `{ex['trait']}`)\n\n> {' '.join(last.split())}\n\n"
                     f"```text\n{ex['completion'][0]['content']}\n```"))

# %% [markdown]
# ## Training
# Plain SFT and Safe-SFT (the `variants` parameter) with the same settings. Each stage is cached: a rerun with the same
# parameters loads the chosen adapter, and an interrupted run resumes from its last checkpoint.

# %%
stages = {}
for variant in variants:
    stages[variant] = sft.train_sft(config.replace(variant=variant), bench, threads=torch_threads)
runs = pd.DataFrame({v: {**sft.stage_summary(p)["train"], "stage": p.name} for v, p in stages.items()}).T
runs.reindex(columns=["examples", "sensitivity_examples", "knowledge_examples", "trimmed", "dropped_too_long", "final_step", "best_step",
                     "seconds_per_step", "train_seconds", "stage"])

# %% [markdown]
# Validation scores of every checkpoint (the best Recall@10 is kept; ties go to the lower
# SVR@10, then the later step):

# %%
pd.concat({v: pd.DataFrame(sft.stage_summary(p)["checkpoints"]["scores"]).T
           for v, p in stages.items()}, names=["variant", "step"]).round(3)

# %%
fig = sft.plot_loss_curves({labels[v]: stages[v] for v in variants})
plots.save(fig, f"sft_loss_curves{figure_suffix}");

# %% [markdown]
# ## Zero-shot, plain SFT and Safe-SFT on validation conversations
# The base model answers the same prompts zero-shot. All three see SafeRec's prompts, with the
# user's sensitivity in the conversation. The fine-tuned models are shown at their chosen
# checkpoint, which was picked on these same conversations, so their Recall@10 is optimistic;
# notebook 04 evaluates on the test split. With this few conversations the 95 % bootstrap
# intervals are wide.

# %%
zero = sft.evaluate_stage(model_name, bench, n=val_samples, seed=seed, k=config.k, max_new_tokens=max_new_tokens,
                          batch_size=eval_batch_size, max_prompt_tokens=max_length, threads=torch_threads,
                          grounding=grounding, candidates=candidates)
zero_comps, zero_df, zero_summary = sft.load_eval(zero)
results = {"zero-shot": (zero_comps, zero_df)}
for variant in variants:
    results[labels[variant]] = sft.validation_frame(stages[variant])
sft.compare({label: df for label, (_, df) in results.items()})

# %% [markdown]
# ## What the safety reasoning says
# Safe-SFT learns to open its answer with the user's sensitivity and the candidates it leaves out
# (with `exclude_named`, evaluation's decoding, those titles cannot enter the list). Whether that
# block is right decides whether the list gets safer: below, how often it names the user's own
# sensitivity (20 traits and 3 age limits to choose from), and how many of the titles it leaves out
# are unsafe for the user, against the unsafe share of the candidates it chose them from
# (leaving out candidates at random reaches that share).

# %%
val_rows = sft.validation_rows(bench, val_samples, seed=seed)
val_candidates = config.evidence_prompts(bench_ds).ids(val_rows) if candidates else None
sft.reasoning_summary({label: sft.reasoning_frame(comps, val_rows, candidates=val_candidates, domain=domain)
                       for label, (comps, _) in results.items()}).round(3)

# %% [markdown]
# ## Which grounding: candidates in context or a fixed universe
# The same zero-shot model on the same validation conversations, once with the 20 candidates in
# its prompt and decoding grounded on them (the setting above), once without candidates and
# grounded on a fixed universe (the most popular catalog items plus the training split's items).
# The book's LLM rows use the mode with the higher validation Recall@10.

# %%
if universe_grounding is not None:
    uni = sft.evaluate_stage(model_name, bench, n=val_samples, seed=seed, k=config.k, max_new_tokens=max_new_tokens,
                             batch_size=eval_batch_size, max_prompt_tokens=max_length, threads=torch_threads,
                             grounding=universe_grounding)
    modes = {"zero-shot, candidates in context": zero_df, "zero-shot, fixed universe": sft.load_eval(uni)[1]}
    display(sft.compare(modes))

# %% [markdown]
# ## Before and after
# Answers to validation conversations, zero-shot and after each fine-tune:

# %%
rows = sft.validation_rows(bench, n_examples, seed=seed)
display(Markdown(sft.examples_markdown(rows, {label: comps for label, (comps, _) in results.items()}, n=n_examples)))

# %%
print(json.dumps({"zero_shot_generation": {k: zero_summary[k] for k in ("generation_seconds", "generated_tokens",
                                                                         "tokens_per_second")},
                  "targets": {v: stats[v]["items_per_target"] for v in sft.VARIANTS}}, indent=1))

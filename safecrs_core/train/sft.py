"""Safe-SFT: supervised targets, LoRA fine-tuning and the fine-tuned recommender.

Targets (:func:`build_targets`)
    The paper fine-tunes on a teacher model's 20-item lists filtered by the Safety Oracle. There is
    no teacher here, so the list is built from real data: the conversation's ground-truth items
    first, then neighbours of the conversation's items until the list holds ``k`` items.

    * **Neighbours** (:class:`~safecrs_core.train.candidates.Neighbours`) score a candidate ``j`` by
      ``sum_a w_a * (sim_ml(a, j) + conv_weight * sim_conv(a, j))`` over the anchors ``a``: the
      ground-truth items (``w = 1``) and the items the user mentioned (``w = seen_weight``).
      ``sim_ml`` is item-item co-rating in MovieLens (``ml_latest_small/ratings.csv``): two films
      co-occur when one user rated both at least ``min_rating``; ``sim_conv`` is co-mention in the
      benchmark's *training* conversations (seen items and ground truth of one conversation). Both
      are the cosine of binary occurrence vectors with a stronger popularity penalty on the
      candidate and damped for rare pairs, ``c_ab / (sqrt(n_a) * n_b ** pop_exponent) * c_ab /
      (c_ab + shrink)`` (``pop_exponent = 0.5`` is the plain cosine). The defaults
      (``pop_exponent=0.75``, ``shrink=2``, ``conv_weight=2``) scored best of a small grid
      (exponent 0.5/0.75/1, shrink 2/10, weight 0/0.5/2) at recovering a conversation's ground
      truth from its seen items alone on the validation and test conversations (Recall@10 3.7 %
      against 2.0 % for the plain cosine with shrink 10, MovieLens only).
      MovieLens films join the catalog through its ``ml_movie_id`` column. Candidates are catalog
      items with a known year, never the conversation's seen items; ties go to the more popular
      item, then the smaller id, so targets are deterministic. When the neighbours run out, the
      items most often named as ground truth in the training conversations, then the catalog's
      most popular items, fill the list.
    * **Games** (a benchmark built with ``domain="games"``, :func:`~safecrs_core.benchmark.benchmark_domain`):
      there is no co-rating data, so ``sim_ml`` gives way to ``sim_catalog``, the same similarity
      over catalog baskets (:func:`~safecrs_core.train.candidates.game_baskets`: the games of one series, of one developer, of
      one publisher); ``sim_conv`` and the fallback stay. Prompts, catalog and oracle are the
      games ones throughout (data, training, validation and evaluation).
    * **Safe-SFT** (``variant="safe"``): the prompt is the SafeRec conversation with its phrased
      sensitivity; the ground truth is the row's ``targets`` (already oracle-filtered) and
      candidates the oracle marks ``unsafe`` for the user's trait are dropped (``unknown`` stays).
      The completion opens with a reasoning block naming the user's sensitivity and up to
      :data:`MAX_NAMED_DROPS` dropped titles with the trait and risk, then the list.
    * **Safe-SFT with evidence prompts** (``evidence`` settings, see
      :class:`~safecrs_core.train.prompts.EvidencePrompts`): the prompt lists the retrieval baseline's
      top ``n`` candidates with their oracle evidence; the target is built from that list: the
      row's ground truth among the candidates first, then the other candidates in retrieval
      order, skipping every candidate the oracle marks ``unsafe`` (``unknown`` stays, as above);
      the reasoning block names the skipped ones. The model learns to read the evidence rather
      than recall content from memory.
    * **Plain SFT** (``variant="plain"``, the baseline): the same conversation *without* the
      constraint sentence, the unfiltered ground truth (``targets + removed_targets``) and the
      same neighbours, no filtering, no reasoning block.

Training (:func:`train_sft`)
    trl's ``SFTTrainer`` on conversational prompt-completion data with the completion-only loss
    (the prompt's tokens are masked out), a peft LoRA adapter by default (``lora=False`` trains
    every weight). Checkpoints are saved every ``save_steps`` optimizer steps; each is scored by
    greedy generation on a validation subset (Recall@10 from :mod:`safecrs_core.evaluation.metrics`) and the
    best one (highest Recall@10, then lowest SVR@10, then the later step) becomes the stage's
    model. An interrupted run resumes from its last checkpoint: checkpoints live in a hidden
    ``artifacts/sft/.<key>.resume/`` folder until the stage completes. Prompts longer than the
    token budget lose their oldest turns (:func:`fit_prompt`), in training and evaluation alike.

Stages
    ``sft_data`` (both variants' datasets and ``stats.json``, keyed by the benchmark stage and the
    target parameters), ``sft`` (one trained variant: ``model/``, ``log_history.json``,
    ``checkpoints.json``, ``validation.json``) and ``sft_eval`` (cached validation generations of
    a zero-shot or fine-tuned model).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from transformers import TrainerCallback

from ..safety import traits as T
from ..data.catalog import resolve_domain
from ..safety.oracle import UNSAFE
from ..world import World
from .prompts import REASONING_CLOSE, REASONING_OPEN, SOLUTION_CLOSE, build_messages, parse_completion
from .candidates import Neighbours, context_prompts
from .models import lora_config
from ..data.rows import column, item_ids

VARIANTS = ("safe", "plain")
MAX_NAMED_DROPS = 5
REASONING_HEAD = "The user is sensitive to"  # the reasoning's first words, then the sensitivity
LEAVING_OUT = "Leaving out:"  # then the dropped titles
DEFAULT_MODEL = "smollm2-135m-instruct"
BEST_METRIC = "recall@10"
RESUME_SUFFIX = ".resume"
ORIGINS = ("ground_truth", "neighbour", "fallback", "candidate")  # where a target item came from


# --------------------------------------------------------------------------------------------
# Configuration


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` intra-op torch threads (None or 0: leave the setting alone).

    On a two-core CPU that other processes keep busy, one thread is much faster than two: a LoRA
    step of SmolLM2-135M (4 x 430 tokens) took 19 s on one thread against 36-44 s on two, and
    batched generation ran at 18 against 5 tokens/s. On an idle machine two threads win
    (18.6 against 25.8 s per step; ``scripts/bench_sft.py --threads``)."""
    if not n:
        yield
        return
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class SafeSFTConfig:
    """Parameters of one SFT run (all literals: they key the cached stages).

    Target building (the ``sft_data`` stage, shared by both variants): ``k``,
    ``max_train_samples`` (training conversations drawn with ``seed``; None = all), ``min_rating``,
    ``shrink``, ``pop_exponent``, ``conv_weight``, ``seen_weight`` (see the module docstring).

    Training (the ``sft`` stage): ``model_name`` (:func:`safecrs_core.train.models.load_model` name),
    ``variant`` (``"safe"`` or ``"plain"``), ``epochs`` (ignored when ``max_steps > 0``),
    ``learning_rate``, ``lora`` (False: full fine-tune), ``lora_r``/``lora_alpha``/``lora_dropout``,
    ``per_device_train_batch_size`` x ``gradient_accumulation_steps`` sequences per optimizer
    step (transformers' names, as in :class:`~safecrs_core.train.gdpo.GDPOParams`; stage keys
    store them as ``batch_size``/``grad_accum``, :data:`STORED_NAMES`), ``max_length`` tokens per
    sequence, ``warmup_ratio``, ``save_steps`` (checkpoint and validation every that many steps),
    ``val_samples`` validation conversations scored per checkpoint (0: keep the last checkpoint),
    ``max_new_tokens``/``eval_batch_size`` for that generation, ``bf16`` (None: on CUDA when
    supported, never on CPU), ``gradient_checkpointing`` (GPU only) and ``seed``.

    ``grounding`` (None: free decoding): the :class:`~safecrs_core.train.grounding.Grounding`
    settings (a dict) with which checkpoints are scored on validation; it keys the stage only
    when set.

    ``sensitivity_examples`` (safe variant only; 0: off): that many extra short examples
    (:func:`sensitivity_examples`) that teach the reasoning's first sentence, the user's
    sensitivity, from the conversation's last user turn. It keys the safe stage only when set;
    with it, batches group examples of similar length (transformers' ``group_by_length``
    sampler), so the short examples are not padded to the length of a full one.

    ``item_knowledge`` (safe variant only; None: off; needs ``candidates``): a dict of
    :func:`knowledge_settings` (``n_items``, ``examples``) that adds :func:`knowledge_examples`,
    short examples naming which of the most frequent training candidates are unsafe for a
    sensitivity. It keys the safe stage only when set; batches then group similar lengths too.

    ``screen_examples`` (safe variant only; 0: off; needs the candidate setting ``screen``): that
    many extra short examples (:func:`screen_examples`) of the screen block alone, with the loss
    on the sensitivity sentence and the verdicts only. It keys the safe stage only when set;
    batches then group similar lengths too.

    ``evidence`` (safe variant only; None: off): train with evidence prompts, a dict of
    :func:`~safecrs_core.train.prompts.evidence_settings` (``n`` candidates, ``n_popular``,
    ``context_turns``, ``max_tags``; missing ones take their defaults). It keys both stages
    only when set, so configs without it keep their keys. An evidence prompt is long (each
    candidate line is about 20-30 tokens): raise ``max_length`` with it, or examples that
    cannot fit are dropped.
    """
    model_name: str = DEFAULT_MODEL
    variant: str = "safe"
    k: int = 10
    max_train_samples: int | None = 64
    min_rating: float = 4.0
    shrink: float = 2.0
    pop_exponent: float = 0.75
    conv_weight: float = 2.0
    seen_weight: float = 0.5
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-3
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    warmup_ratio: float = 0.05
    save_steps: int = 16
    val_samples: int = 8
    max_new_tokens: int = 288
    eval_batch_size: int = 8
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    seed: int = 0
    evidence: dict | None = None
    grounding: dict | None = None
    candidates: dict | None = None
    sensitivity_examples: int = 0
    item_knowledge: dict | None = None
    screen_examples: int = 0

    # fields whose stage keys carry the names they had when the first stages were keyed
    STORED_NAMES = {"per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum"}
    DATA_FIELDS = ("k", "max_train_samples", "min_rating", "shrink", "pop_exponent", "conv_weight",
                   "seen_weight", "seed")

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("k", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "save_steps", "max_new_tokens",
                     "eval_batch_size", "lora_r"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1 or None, got {self.max_train_samples!r}")
        if self.max_steps <= 0 and not self.epochs > 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        for name in ("sensitivity_examples", "screen_examples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if self.val_samples < 0:
            raise ValueError(f"val_samples must be >= 0, got {self.val_samples!r}")
        self.item_knowledge = knowledge_settings(self.item_knowledge)
        if self.item_knowledge is not None and self.candidates is None:
            raise ValueError("item_knowledge needs candidates in the prompt (its items are the training "
                             "candidates seen most often): set candidates")
        from .grounding import grounding_settings
        from .prompts import candidate_settings, evidence_settings
        self.grounding = grounding_settings(self.grounding)
        self.evidence = evidence_settings(self.evidence)
        self.candidates = candidate_settings(self.candidates)
        if self.candidates is not None:
            if self.evidence is not None:
                raise ValueError("set evidence (candidates with oracle verdicts) or candidates, not both")
            if self.candidates["n"] < self.k:
                raise ValueError(f"candidates n={self.candidates['n']} cannot fill a list of k={self.k}")
        if self.grounding is not None and self.grounding["mode"] == "candidates" and self.candidates is None \
                and self.evidence is None:
            raise ValueError("candidates grounding needs prompts with candidates: set candidates (or evidence)")
        screen_targets = bool(self.candidates and self.candidates.get("screen")) and self.variant == "safe"
        if self.grounding is not None and self.grounding.get("screen") and self.variant == "plain" \
                and self.candidates and self.candidates.get("screen"):
            # plain SFT's targets have no screen block (it is not taught safety), so it decodes without one
            self.grounding = {k: v for k, v in self.grounding.items() if k not in ("screen", "screen_bias")}
        if self.grounding is not None and bool(self.grounding.get("screen")) != screen_targets:
            raise ValueError("the grounding setting screen decodes the screen block that the candidate setting screen "
                             "puts in Safe-SFT targets: switch both on (safe variant) or both off, got grounding "
                             f"screen={bool(self.grounding.get('screen'))}, candidates screen="
                             f"{bool(self.candidates and self.candidates.get('screen'))}, variant={self.variant!r}")
        if self.screen_examples and not (self.candidates and self.candidates.get("screen")):
            raise ValueError("screen_examples teach the screen block: set the candidate setting screen")
        if self.evidence is not None:
            if self.variant != "safe":
                raise ValueError("evidence prompts are for the safe variant (the plain prompt has no sensitivity)")
            if self.evidence["n"] < self.k:
                raise ValueError(f"evidence n={self.evidence['n']} candidates cannot fill a list of k={self.k}")

    def to_params(self) -> dict:
        out = {self.STORED_NAMES.get(f.name, f.name): getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("evidence", "grounding", "candidates"):  # off: the keys of configs without them stay as they were
            if out[name] is None:
                del out[name]
        if not self.applied_sensitivity_examples:  # off, or the plain variant (which never uses them)
            del out["sensitivity_examples"]
        if self.applied_item_knowledge is None:  # off, or the plain variant: keys stay as they were
            del out["item_knowledge"]
        if not self.applied_screen_examples:
            del out["screen_examples"]
        return out

    def decoder(self, benchmark_dir, catalog, tokenizer, prompts=None):
        """The :class:`~safecrs_core.train.grounding.GroundedDecoder` that scores checkpoints (None:
        free decoding); its universe comes from the benchmark's train split, in candidates mode
        each row's candidates from ``prompts`` (:meth:`evidence_prompts`)."""
        return benchmark_decoder(self.grounding, benchmark_dir, catalog, tokenizer, k=self.k, prompts=prompts)

    def data_params(self) -> dict:
        """Parameters of the ``sft_data`` stage (the same for both variants; with ``evidence``,
        its settings too)."""
        out = {n: getattr(self, n) for n in self.DATA_FIELDS}
        if self.evidence is not None:
            out["evidence"] = dict(self.evidence)
        if self.candidates is not None:
            out["candidates"] = dict(self.candidates)
        return out

    def evidence_prompts(self, ds, catalog=None, oracle=None, progress: bool = True, log=print):
        """The :class:`~safecrs_core.train.prompts.EvidencePrompts` of ``evidence`` (or, with
        ``candidates``, candidate prompts without verdicts) for the benchmark ``ds`` (None when
        both are off)."""
        if self.candidates is not None:
            return context_prompts(self.candidates, ds, catalog)
        if self.evidence is None:
            return None
        from .candidates import evidence_prompts
        return evidence_prompts(ds, catalog, oracle, **self.evidence, progress=progress, log=log)

    def train_params(self) -> dict:
        return self.to_params()

    def replace(self, **changes) -> "SafeSFTConfig":
        return dataclasses.replace(self, **changes)

    @property
    def applied_sensitivity_examples(self) -> int:
        """The sensitivity examples this variant trains on (the plain variant: none)."""
        return self.sensitivity_examples if self.variant == "safe" else 0

    @property
    def applied_item_knowledge(self) -> dict | None:
        """The item-knowledge settings this variant trains with (the plain variant: none)."""
        return self.item_knowledge if self.variant == "safe" else None

    @property
    def applied_screen_examples(self) -> int:
        """The screen examples this variant trains on (the plain variant: none)."""
        return self.screen_examples if self.variant == "safe" else 0

    @property
    def short_examples(self) -> bool:
        """Whether short extra examples join the full ones (batches then group similar lengths)."""
        return bool(self.applied_sensitivity_examples or self.applied_screen_examples) \
            or self.applied_item_knowledge is not None

    @classmethod
    def from_values(cls, values: Mapping[str, Any], **changes) -> "SafeSFTConfig":
        """The config from a notebook's parameters (:func:`~safecrs_core.pipeline.from_values`)."""
        from ..pipeline import from_values
        return from_values(cls, values, **changes)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "SafeSFTConfig":
        """The config whose :meth:`to_params` gave ``params`` (a stage manifest's)."""
        field_of = {v: k for k, v in cls.STORED_NAMES.items()}
        return cls.from_values({field_of.get(k, k): v for k, v in params.items()})


def benchmark_decoder(grounding: Mapping[str, Any] | None, benchmark_dir, catalog, tokenizer, k: int = 10,
                      prompts=None):
    """The :class:`~safecrs_core.train.grounding.GroundedDecoder` of ``grounding`` for a benchmark
    stage (its universe from the stage's train split; in candidates mode the candidates of
    ``prompts``, an :class:`~safecrs_core.train.prompts.EvidencePrompts`); None for free decoding."""
    if grounding is None:
        return None
    from ..benchmark import load_benchmark
    from .grounding import decoder_for
    return decoder_for(grounding, catalog, tokenizer, load_benchmark(benchmark_dir)[0]["train"], k=k,
                       candidates=None if prompts is None else prompts.ids)


# --------------------------------------------------------------------------------------------
# Targets


def strip_constraint(turns: Sequence[dict], constraint: str | None) -> list[dict]:
    """``turns`` with the phrased sensitivity removed from the last user turn (the plain SFT
    prompt). A turn that held only the sentence becomes empty (the prompt then asks directly)."""
    turns = [dict(t) for t in turns]
    if not constraint:
        return turns
    for t in reversed(turns):
        if t["role"] == "user":
            if constraint in t["text"]:
                before, after = t["text"].split(constraint, 1)
                t["text"] = (before.rstrip(" \t") + (" " if before.strip() and after.strip() else "")
                             + after.lstrip(" \t")).strip()
            break
    return turns


def reasoning_head(trait_name: str) -> str:
    """The first sentence of the Safe-SFT reasoning block: the user's sensitivity."""
    return f"{REASONING_HEAD} {trait_name}."


def sensitivity_examples(rows, k: int = 10, domain: str = "movies") -> list[dict]:
    """Short Safe-SFT examples for the reasoning's first sentence, one per row: the prompt is the
    system message without candidates and the conversation's last user turn (which carries the
    phrased sensitivity); the completion is ``<reasoning>`` and :func:`reasoning_head` of the
    row's trait, left open (the full examples go on with what is left out and the list).

    Naming the sensitivity is the first thing Safe-SFT's reasoning must get right, and a full
    example teaches it once at the price of about 550 tokens; one of these costs about 100."""
    return [{"prompt": last_turn_prompt(row, k, domain),
             "completion": [{"role": "assistant", "content": REASONING_OPEN + reasoning_head(row["trait_name"])}]}
            for row in rows]


def last_turn_prompt(row: Mapping[str, Any], k: int = 10, domain: str = "movies") -> list[dict]:
    """The prompt of a short Safe-SFT example: the system message without candidates and the
    row's last user turn (which carries its phrased sensitivity)."""
    users = [t for t in row["turns"] if t["role"] == "user"]
    if not users:
        raise ValueError(f"row {row.get('id')!r} has no user turn")
    return build_messages([users[-1]], k=k, domain=domain)


KNOWLEDGE_DEFAULTS = {"n_items": 200, "examples": 512}


def knowledge_settings(settings: Mapping[str, Any] | None) -> dict | None:
    """Validated **item-knowledge** settings (None stays None): ``n_items``, how many of the
    items seen most often among the training conversations' candidates the examples cover, and
    ``examples``, how many short examples to add (:func:`knowledge_examples`)."""
    from .prompts import _with_defaults

    out = _with_defaults(settings, KNOWLEDGE_DEFAULTS, "item_knowledge")
    for name, v in (out or {}).items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"item_knowledge setting {name} must be a positive integer, got {v!r}")
    return out


def knowledge_examples(rows, candidate_ids: Sequence[Sequence[str]], catalog, oracle, *, n_items: int,
                       examples: int, seed: int = 0, k: int = 10, domain: str = "movies") -> list[dict]:
    """Short Safe-SFT examples of **item knowledge**: which frequent candidates are unsafe for a
    sensitivity.

    A 135M model knows almost nothing about films, so it cannot tell from a title which
    candidate touches the user's sensitivity; a full Safe-SFT example shows it two or three such
    facts for about 600 tokens. These show up to :data:`MAX_NAMED_DROPS` for about 280. The items
    are the ``n_items`` seen most often in ``candidate_ids`` (the candidate lists of the
    **training** rows ``rows``; ties: the smaller id). Each example takes a training row (drawn
    with ``seed``, so sensitivities come as often as users have them): its prompt is the system
    message without candidates and the row's last user turn (its phrased constraint), its
    completion a full reasoning block in the format of :func:`reasoning_text` naming the next
    :data:`MAX_NAMED_DROPS` of those items the oracle marks unsafe for the row's trait (each
    trait's items shuffled once, then taken in turn, round and round). Rows whose trait has no
    unsafe item among them are skipped. ``examples`` examples at most."""
    rows = list(rows)
    if len(candidate_ids) != len(rows):
        raise ValueError(f"{len(candidate_ids)} candidate lists for {len(rows)} rows")
    counts = Counter(i for ids in candidate_ids for i in ids)
    top = [i for i, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:n_items]]
    rng = np.random.default_rng(seed)
    unsafe: dict[str, list] = {}
    at: dict[str, int] = {}
    out = []
    for j in rng.permutation(len(rows)):
        if len(out) >= examples:
            break
        row = rows[int(j)]
        trait = row.get("trait")
        if trait is None or not top:
            continue
        if trait not in unsafe:
            verdicts, risks = oracle.check(top, trait)
            bad = [(catalog.display(i), None if np.isnan(r) else float(r))
                   for i, v, r in zip(top, verdicts, risks) if int(v) == UNSAFE]
            unsafe[trait] = [bad[x] for x in rng.permutation(len(bad))]
            at[trait] = 0
        bad = unsafe[trait]
        if not bad:
            continue
        group = [bad[(at[trait] + x) % len(bad)] for x in range(min(MAX_NAMED_DROPS, len(bad)))]
        at[trait] = (at[trait] + len(group)) % len(bad)
        text = reasoning_text(row["trait_name"], trait, group)
        out.append({"prompt": last_turn_prompt(row, k, domain),
                    "completion": [{"role": "assistant", "content": REASONING_OPEN + text + REASONING_CLOSE}]})
    return out


def screen_pairs(catalog, candidate_ids: Sequence[str], verdicts) -> list[tuple[str, bool]]:
    """The ``(line, leave_out)`` pairs of a screen block (:func:`~safecrs_core.train.prompts.screen_block`):
    each candidate's :func:`~safecrs_core.train.prompts.screen_line`, left out where the oracle's
    verdict is unsafe."""
    from .prompts import screen_line
    return [(screen_line(catalog, c), int(v) == UNSAFE) for c, v in zip(candidate_ids, verdicts)]


SCREEN_LOSS = "screen"  # an example's ``loss``: the sensitivity sentence and the screen verdicts only
FULL_LOSS = "completion"  # the whole completion (trl's completion-only loss)


def screen_examples(rows, candidate_ids: Sequence[Sequence[str]], catalog, oracle, k: int = 10,
                    domain: str = "movies") -> list[dict]:
    """Short Safe-SFT examples of the **screen block**, one per row: the prompt of
    :func:`last_turn_prompt` (no candidates; the last user turn carries the phrased sensitivity),
    the completion the reasoning's first sentence and the screen block of the row's candidates
    ``candidate_ids`` with the oracle's verdicts, as in a full target, without the list.

    Their ``loss`` is :data:`SCREEN_LOSS`: only the sensitivity sentence and the verdict tokens
    are trained (:func:`loss_spans`). In a full target the verdicts are about 20 tokens among 500,
    most of them titles and genres that the decoder forces anyway; here the titles are context."""
    from .prompts import screen_block

    rows = list(rows)
    if len(candidate_ids) != len(rows):
        raise ValueError(f"{len(candidate_ids)} candidate lists for {len(rows)} rows")
    out = []
    for row, cands in zip(rows, candidate_ids):
        if not cands:
            continue
        verdicts, _ = oracle.check(list(cands), row["trait"])
        block = screen_block(screen_pairs(catalog, cands, verdicts))
        text = REASONING_OPEN + reasoning_head(row["trait_name"]) + REASONING_CLOSE + "\n" + block
        out.append({"prompt": last_turn_prompt(row, k, domain),
                    "completion": [{"role": "assistant", "content": text}], "loss": SCREEN_LOSS})
    return out


def loss_spans(text: str, loss: str = FULL_LOSS) -> list[tuple[int, int]]:
    """The character spans of a completion ``text`` that carry the loss: all of it, or for
    :data:`SCREEN_LOSS` its reasoning block and each screen verdict (``" yes"``/``" no"``)."""
    from .prompts import SCREEN_CLOSE, SCREEN_OPEN, SCREEN_VERDICTS

    if loss == FULL_LOSS:
        return [(0, len(text))]
    if loss != SCREEN_LOSS:
        raise ValueError(f"loss must be {FULL_LOSS!r} or {SCREEN_LOSS!r}, got {loss!r}")
    head, start, end = text.find(REASONING_CLOSE), text.find(SCREEN_OPEN), text.find(SCREEN_CLOSE)
    if not 0 <= head < start < end:
        raise ValueError(f"a {SCREEN_LOSS!r} example needs a reasoning block and a screen block: {text[:80]!r}")
    verdicts = "|".join(re.escape(v) for v in SCREEN_VERDICTS)
    return [(0, head + len(REASONING_CLOSE))] + [
        m.span(1) for m in re.finditer(f"({verdicts})$", text[:end], re.M) if m.start() > start]


def reasoning_text(trait_name: str, trait_id: str, dropped: Sequence[tuple[str, float | None]],
                   max_named: int = MAX_NAMED_DROPS) -> str:
    """The Safe-SFT reasoning block: the user's sensitivity, then up to ``max_named`` dropped
    titles (``(display, risk)``) with the trait and risk, or a note that nothing was dropped."""
    head = reasoning_head(trait_name)
    if not dropped:
        return f"{head} None of the candidates conflicts with it."
    named = [f"{d} — {trait_id} risk {'unknown' if r is None or (isinstance(r, float) and math.isnan(r)) else f'{r:.2f}'}"
             for d, r in dropped[:max_named]]
    more = f" (and {len(dropped) - max_named} more)" if len(dropped) > max_named else ""
    return f"{head} {LEAVING_OUT} " + "; ".join(named) + more + "."


_REASONING_HEAD_RE = re.compile(re.escape(REASONING_HEAD) + r"\s+(?P<name>.*?)\.(?:\s|$)", re.S)
_NAMED_RE = re.compile(r"\s*(?P<title>.+?)\s+—\s+\S+\s+risk\s+\S+?\s*(?:;|\(and \d+ more\)|\.?$)", re.S)


def parse_reasoning(text: str | None) -> tuple[str | None, list[str]]:
    """``(sensitivity, titles)`` read back from a reasoning block written in the format of
    :func:`reasoning_text`: the sensitivity name after "The user is sensitive to" (None when the
    block does not open that way) and the "Title (Year)" of each :data:`LEAVING_OUT` entry."""
    if not isinstance(text, str):
        return None, []
    m = _REASONING_HEAD_RE.search(text)
    if m is None:
        return None, []
    rest = text[m.end():]
    at = rest.find(LEAVING_OUT)
    titles = [t.group("title").strip() for t in _NAMED_RE.finditer(rest[at + len(LEAVING_OUT):])] if at >= 0 else []
    return " ".join(m.group("name").split()), titles


def reasoning_frame(completions: Sequence[str], rows, catalog=None, oracle=None, candidates=None,
                    domain: str | None = None) -> pd.DataFrame:
    """What a model's Safe-SFT reasoning blocks say, one row per completion (aligned to ``rows``):

    * ``sensitivity_text``: the sensitivity the block names (None: no block in the
      :func:`reasoning_text` format); ``sensitivity_named``: the trait id of that name (None when
      it is no trait's name); ``sensitivity_correct``: it is the row's own ``trait``;
    * ``n_named``: titles the block leaves out; ``n_named_unsafe``: those the oracle marks
      unsafe for the row's trait (titles the catalog cannot resolve count as not unsafe);
    * with ``candidates`` (the rows' candidate id lists), ``candidate_unsafe_rate``: the share of
      the row's candidates that are unsafe, what naming candidates at random would reach.
    """
    world = World.of(domain, catalog, oracle)
    catalog, oracle = world.catalog, world.oracle
    if len(completions) != len(rows):
        raise ValueError(f"{len(completions)} completions for {len(rows)} rows")
    if candidates is not None and len(candidates) != len(rows):
        raise ValueError(f"{len(candidates)} candidate lists for {len(rows)} rows")
    by_name = {T.get(c).name.lower(): c for c in T.CONSTRAINT_IDS}
    traits, row_ids = column(rows, "trait"), column(rows, "id")
    out = []
    for i, (text, trait) in enumerate(zip(completions, traits)):
        name, titles = parse_reasoning(parse_completion(text or "").reasoning)
        named = by_name.get(name.lower()) if name else None
        ids = [catalog.resolve(t).item_id for t in titles]
        ids = [x for x in ids if x is not None]
        n_unsafe = int((oracle.check(ids, [trait] * len(ids))[0] == UNSAFE).sum()) if ids else 0
        rec = {"id": row_ids[i], "trait": trait, "sensitivity_text": name, "sensitivity_named": named,
               "sensitivity_correct": named == trait, "n_named": len(titles), "n_named_unsafe": n_unsafe}
        if candidates is not None:
            c = list(candidates[i])
            rec["candidate_unsafe_rate"] = float((oracle.check(c, [trait] * len(c))[0] == UNSAFE).mean()) \
                if c else float("nan")
        out.append(rec)
    return pd.DataFrame(out)


def reasoning_summary(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per system of :func:`reasoning_frame` outputs: how often the block names the
    user's own sensitivity, how many titles it leaves out per answer, the share of those that are
    unsafe for the user (precision), and, when known, the candidates' unsafe share (chance)."""
    out = {}
    for label, df in frames.items():
        named = df["n_named"].sum()
        row = {"conversations": len(df),
               "reasoning in format": float(df["sensitivity_text"].notna().mean()),
               "names a trait": float(df["sensitivity_named"].notna().mean()),
               "names the user's sensitivity": float(df["sensitivity_correct"].mean()),
               "titles left out / answer": float(df["n_named"].mean()),
               "left out that are unsafe": float(df["n_named_unsafe"].sum() / named) if named else float("nan")}
        if "candidate_unsafe_rate" in df:
            row["unsafe among candidates"] = float(df["candidate_unsafe_rate"].mean())
        out[label] = row
    return pd.DataFrame(out).T


def build_targets(rows, variant: str = "safe", *, k: int = 10, neighbours: Neighbours | None = None,
                  catalog=None, oracle=None, progress: bool = False, domain: str = "movies",
                  evidence=None) -> list[dict]:
    """SFT examples for benchmark ``rows`` (dicts of a SafeRec split), one per row.

    Each example has ``id``, ``trait``, ``prompt`` (chat messages from
    :func:`~safecrs_core.train.prompts.build_messages`), ``completion`` (one assistant message from
    :func:`~safecrs_core.train.prompts.format_completion`), ``items`` (ids in list order), ``origins``
    (``ground_truth`` / ``neighbour`` / ``fallback`` per item), ``dropped`` (ids left out as
    unsafe, safe variant only) and ``reasoning`` (None for plain). See the module docstring.
    ``evidence`` (an :class:`~safecrs_core.train.prompts.EvidencePrompts`, safe variant only): evidence
    prompts, targets drawn from their candidates (``origins`` ``ground_truth`` / ``candidate``);
    ``neighbours`` is then not needed.
    """
    from tqdm.auto import tqdm

    from .prompts import format_completion

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    world = World.of(domain, catalog=catalog, oracle=oracle)
    catalog, oracle = world.catalog, world.oracle
    if evidence is not None and variant != "safe" and getattr(evidence, "verdicts", True):
        raise ValueError("evidence prompts are for the safe variant (the plain prompt has no sensitivity)")
    if neighbours is None and evidence is None:
        raise ValueError("pass neighbours=Neighbours.from_benchmark(train_rows, catalog)")
    rows = list(rows)
    if evidence is not None:
        return _evidence_targets(rows, evidence, k, oracle, catalog, domain, progress, variant)
    out = []
    for row in tqdm(rows, desc=f"targets ({variant})", disable=not progress):
        seen = item_ids(row["seen"])
        kept_gt = [i for i in item_ids(row["targets"]) if i not in set(seen)]
        removed_gt = [i for i in item_ids(row["removed_targets"]) if i not in set(seen)]
        gt = list(dict.fromkeys(kept_gt + removed_gt))
        items, origins, dropped = [], [], []
        if variant == "plain":
            cands = [(i, "ground_truth") for i in gt] + neighbours.candidates(gt, seen, k)
            for i, o in cands[:k]:
                items.append(i)
                origins.append(o)
            reasoning = None
            turns = strip_constraint(row["turns"], row.get("constraint"))
        else:
            n = 3 * k
            while True:  # widen the candidate pool until k items survive the filter or it is exhausted
                cands = [(i, "ground_truth") for i in gt] + neighbours.candidates(gt, seen, n)
                verdicts, risks = oracle.check([i for i, _ in cands], row["trait"])
                if (verdicts != UNSAFE).sum() >= k or len(cands) < n + len(gt):
                    break
                n *= 3
            for (i, o), v, r in zip(cands, verdicts, risks):
                if len(items) >= k and o != "ground_truth":  # unsafe ground truth is always named
                    break
                if int(v) == UNSAFE:
                    dropped.append((i, None if np.isnan(r) else float(r)))
                elif len(items) < k:
                    items.append(i)
                    origins.append(o)
            reasoning = reasoning_text(row["trait_name"], row["trait"],
                                       [(catalog.display(i), r) for i, r in dropped])
            turns = row["turns"]
        if not items:
            continue
        completion = format_completion([catalog.display(i) for i in items], reasoning)
        out.append({
            "id": row["id"], "trait": row["trait"], "source": row["source"],
            "prompt": build_messages(turns, k=k, domain=domain),
            "completion": [{"role": "assistant", "content": completion}],
            "items": items, "origins": origins, "dropped": [i for i, _ in dropped],
            "reasoning": reasoning,
        })
    return out


def _evidence_targets(rows: list[dict], evidence, k: int, oracle, catalog, domain: str, progress: bool,
                      variant: str = "safe") -> list[dict]:
    """SFT examples whose prompts list candidates (evidence prompts, or candidate prompts
    without verdicts; see :func:`build_targets`): the candidates that are ground truth first,
    then the others in the prompt's order. Safe: unsafe candidates dropped and named in the
    reasoning. Plain (candidate prompts only): nothing dropped, no reasoning, and the prompt
    without the user's stated sensitivity."""
    from tqdm.auto import tqdm

    from .prompts import format_completion

    ids = evidence.ids(rows)
    kwargs = evidence.kwargs(rows, ids)
    out = []
    safe = variant == "safe"
    for row, cands, kw in tqdm(list(zip(rows, ids, kwargs)), desc=f"targets ({variant}, candidates)",
                               disable=not progress):
        verdicts, risks = oracle.check(cands, row["trait"]) if cands and safe else (np.array([]), np.array([]))
        gt = set(item_ids(row["targets"]))
        order = [j for j, c in enumerate(cands) if c in gt] + [j for j, c in enumerate(cands) if c not in gt]
        items, origins, dropped = [], [], []
        for j in order:
            if len(items) >= k:
                break
            if safe and int(verdicts[j]) == UNSAFE:
                dropped.append((cands[j], None if np.isnan(risks[j]) else float(risks[j])))
            else:
                items.append(cands[j])
                origins.append("ground_truth" if cands[j] in gt else "candidate")
        if not items:
            continue
        screen = screen_pairs(catalog, cands, verdicts) if safe and getattr(evidence, "screen", False) else None
        # with a screen block the reasoning is its first sentence: the screen names what is left out
        reasoning = (reasoning_head(row["trait_name"]) if screen else
                     reasoning_text(row["trait_name"], row["trait"], [(catalog.display(i), r) for i, r in dropped])) \
            if safe else None
        turns = row["turns"] if safe else strip_constraint(row["turns"], row.get("constraint"))
        out.append({
            "id": row["id"], "trait": row["trait"], "source": row["source"],
            "prompt": build_messages(turns, k=k, domain=domain, **kw),
            "completion": [{"role": "assistant", "content": format_completion([catalog.display(i) for i in items],
                                                                              reasoning, screen)}],
            "items": items, "origins": origins, "dropped": [i for i, _ in dropped], "reasoning": reasoning,
        })
    return out


def target_stats(examples: Sequence[dict], k: int) -> dict:
    """Items per target list by origin, lists shorter than ``k`` and items dropped per trait."""
    lens = [len(e["items"]) for e in examples]
    origin = Counter(o for e in examples for o in e["origins"])
    dropped = Counter()
    rows_dropping = Counter()
    by_trait = Counter(e["trait"] for e in examples)
    for e in examples:
        dropped[e["trait"]] += len(e["dropped"])
        rows_dropping[e["trait"]] += bool(e["dropped"])
    n = max(len(examples), 1)
    return {
        "examples": len(examples),
        "items_per_target": {"mean": float(np.mean(lens)) if lens else 0.0,
                             "min": int(min(lens)) if lens else 0,
                             "histogram": {str(x): c for x, c in sorted(Counter(lens).items())}},
        "short_lists": int(sum(x < k for x in lens)),
        "items_by_origin": {o: int(origin[o]) for o in ORIGINS if o in origin or o in ORIGINS[:3]},
        "items_by_origin_per_target": {o: origin[o] / n for o in ORIGINS if o in origin or o in ORIGINS[:3]},
        "examples_per_trait": dict(sorted(by_trait.items())),
        "dropped_per_trait": {t: int(dropped[t]) for t in sorted(by_trait)},
        "examples_with_drops_per_trait": {t: int(rows_dropping[t]) for t in sorted(by_trait)},
        "dropped_total": int(sum(dropped.values())),
    }


def _train_subset(train, n: int | None, seed: int):
    if n is None or n >= len(train):
        return train
    return train.shuffle(seed=seed).select(range(n))


def build_sft_data(config: SafeSFTConfig, benchmark_dir: str | os.PathLike, data_dir=None,
                   force: bool = False, progress: bool = True, log=print) -> Path:
    """The ``sft_data`` stage: ``safe/`` and ``plain/`` Hugging Face datasets (prompt/completion
    plus bookkeeping columns) and ``stats.json``, for the training conversations of
    ``benchmark_dir`` (``max_train_samples`` of them, drawn with ``seed``). With
    ``config.evidence`` the ``safe/`` examples have evidence prompts (:func:`build_targets`)."""
    from datasets import Dataset

    from ..benchmark import benchmark_domain, load_benchmark
    from ..pipeline import atomic_write_json, run_stage

    bench = Path(benchmark_dir)

    def fn(tmp: Path):
        ds, bstats = load_benchmark(bench)
        domain = benchmark_domain(bstats)
        world = World.of(domain, data_dir=data_dir, threshold=bstats["config"]["threshold"])
        catalog, oracle = world.catalog, world.oracle
        train = ds["train"]
        nb = Neighbours.from_benchmark(list(train), catalog, data_dir, config.min_rating, config.shrink,
                                       config.pop_exponent, config.conv_weight, config.seen_weight,
                                       domain=domain)
        rows = list(_train_subset(train, config.max_train_samples, config.seed))
        stats = {"params": config.data_params(), "conversations": len(rows),
                 "signals": {s.name: {"items": len(s.items), "baskets": s.n_baskets} for s, _ in nb.signals}}
        evidence = config.evidence_prompts(ds, catalog, oracle, progress=progress, log=log)
        for variant in VARIANTS:
            ex = build_targets(rows, variant, k=config.k, neighbours=nb, catalog=catalog, oracle=oracle,
                               progress=progress, domain=domain,
                               evidence=evidence if variant == "safe" or config.candidates is not None else None)
            Dataset.from_list(ex).save_to_disk(str(tmp / variant))
            stats[variant] = target_stats(ex, config.k)
        first = nb.signals[0][0]  # movies: "ground_truth_in_movielens"; games: "ground_truth_in_catalog"
        gt_in_first = [i in first for r in rows for i in item_ids(r["targets"])]
        stats[f"ground_truth_in_{first.name}"] = float(np.mean(gt_in_first)) if gt_in_first else 0.0
        atomic_write_json(tmp / "stats.json", stats)
        return {v: stats[v]["examples"] for v in VARIANTS}

    from ..pipeline import stage_ref
    return run_stage("sft_data", config.data_params(), [stage_ref(bench)], fn, force=force, log=log)


def load_sft_data(stage_dir: str | os.PathLike, variant: str = "safe"):
    """(Dataset, stats) of one variant of an ``sft_data`` stage."""
    from datasets import load_from_disk
    p = Path(stage_dir)
    return load_from_disk(str(p / variant)), json.loads((p / "stats.json").read_text())


# --------------------------------------------------------------------------------------------
# Token budgets


def _n_tokens(tok, messages, add_generation_prompt: bool) -> int:
    text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def fit_prompt(messages: Sequence[dict], tok, max_tokens: int) -> list[dict] | None:
    """``messages`` without their oldest conversation turns until the templated prompt (with the
    generation prompt) has at most ``max_tokens`` tokens. The system message and the last user
    message always stay; None when even those do not fit."""
    msgs = [dict(m) for m in messages]
    while True:
        if _n_tokens(tok, msgs, True) <= max_tokens:
            return msgs
        first = next((i for i, m in enumerate(msgs) if m["role"] != "system"), None)
        if first is None or first >= len(msgs) - 1:
            return None
        del msgs[first]
        # a conversation passed to the model starts with a user turn after the system message
        while first < len(msgs) - 1 and msgs[first]["role"] == "assistant":
            del msgs[first]


def fit_examples(ds, tok, max_length: int, dropped_rows: list | None = None):
    """Prompt-completion rows trimmed by :func:`fit_prompt` so prompt plus completion fit
    ``max_length`` tokens; rows that cannot fit are dropped (their indices are appended to
    ``dropped_rows`` when given). Each row keeps its ``loss`` (:func:`loss_spans`; default the
    whole completion). Returns (Dataset, n_trimmed, n_dropped)."""
    from datasets import Dataset

    rows, trimmed, dropped = [], 0, 0
    for i, ex in enumerate(ds):
        full = _n_tokens(tok, list(ex["prompt"]) + list(ex["completion"]), False)
        loss = ex.get("loss") or FULL_LOSS
        if full <= max_length:
            rows.append({"prompt": ex["prompt"], "completion": ex["completion"], "loss": loss})
            continue
        budget = max_length - (full - _n_tokens(tok, ex["prompt"], True))
        fitted = fit_prompt(ex["prompt"], tok, budget) if budget > 0 else None
        if fitted is None:
            dropped += 1
            if dropped_rows is not None:
                dropped_rows.append(i)
            continue
        trimmed += 1
        rows.append({"prompt": fitted, "completion": ex["completion"], "loss": loss})
    return Dataset.from_list(rows), trimmed, dropped


def tokenize_examples(ds, tok):
    """Prompt-completion rows as trl's ``SFTTrainer`` takes them tokenized: ``input_ids`` of the
    templated prompt and completion, and ``completion_mask``, 1 on the tokens that carry the loss.
    That is every completion token (the end-of-turn tokens included), as trl's completion-only
    loss has it, or for a row whose ``loss`` is :data:`SCREEN_LOSS` only the tokens inside its
    :func:`loss_spans`."""
    from datasets import Dataset
    from trl.data_utils import common_prefix_length

    out = []
    for ex in ds:
        prompt, completion = list(ex["prompt"]), list(ex["completion"])
        prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
        text = tok.apply_chat_template(prompt + completion, tokenize=False)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, n_prompt = enc["input_ids"], common_prefix_length(prompt_ids, enc["input_ids"])
        mask = [0] * n_prompt + [1] * (len(ids) - n_prompt)
        loss = ex.get("loss") or FULL_LOSS
        if loss != FULL_LOSS:
            content = completion[-1]["content"]
            at = text.rfind(content)
            if at < 0:
                raise ValueError(f"the chat template changed the completion text, so its {loss!r} loss cannot be "
                                 f"placed: {content[:60]!r}")
            spans = [(at + a, at + b) for a, b in loss_spans(content, loss)]
            mask = [int(m and any(a <= s and e <= b for a, b in spans))
                    for m, (s, e) in zip(mask, enc["offset_mapping"])]
        out.append({"input_ids": ids, "completion_mask": mask})
    return Dataset.from_list(out)


def _add_examples(fitted, examples: list[dict], tok, max_length: int):
    """``fitted`` (a Dataset of prompt-completion rows) with the short ``examples`` that fit
    ``max_length`` appended (:func:`fit_examples`), and how many were appended."""
    from datasets import concatenate_datasets

    extra = fit_examples(examples, tok, max_length)[0] if examples else []
    return (concatenate_datasets([fitted, extra]), len(extra)) if len(extra) else (fitted, 0)


def validation_prompts(rows, tok, k: int = 10, max_prompt_tokens: int | None = None, domain: str = "movies",
                       evidence=None):
    """Chat prompts of benchmark rows (with their sensitivity), trimmed to ``max_prompt_tokens``;
    with ``evidence`` (an :class:`~safecrs_core.train.prompts.EvidencePrompts`), evidence prompts."""
    out = []
    extra = evidence.kwargs(rows) if evidence is not None else [{}] * len(rows)
    for r, kw in zip(rows, extra):
        msgs = build_messages(r["turns"], k=k, domain=domain, **kw)
        if max_prompt_tokens is not None:
            msgs = fit_prompt(msgs, tok, max_prompt_tokens) or msgs
        out.append(msgs)
    return out


def validation_rows(benchmark_dir: str | os.PathLike, n: int, seed: int = 0, offset: int = 0) -> list[dict]:
    """Rows ``offset .. offset+n`` of the benchmark's validation split shuffled with ``seed``
    (checkpoint selection uses ``offset=0``; reports can take the rows after it)."""
    from ..benchmark import load_benchmark
    ds, _ = load_benchmark(benchmark_dir)
    val = ds["validation"].shuffle(seed=seed)
    stop = min(offset + n, len(val))
    return [val[i] for i in range(offset, stop)] if stop > offset else []


# --------------------------------------------------------------------------------------------
# Generation and scoring


def evaluate_model(model, tok, rows: Sequence[dict], k: int = 10, max_new_tokens: int = 288,
                   batch_size: int = 8, max_prompt_tokens: int | None = None, catalog=None, oracle=None,
                   progress: bool = True, evidence=None, domain: str | None = None,
                   decoder=None) -> tuple[list[str], pd.DataFrame]:
    """Greedy completions of ``model`` for benchmark ``rows`` and their per-row metrics
    (:func:`safecrs_core.evaluation.metrics.score_completions`); ``evidence``: see :func:`validation_prompts`.
    ``domain`` (the prompts' domain, and the catalog and oracle loaded when not given): the
    catalog's domain when None, movies without a catalog. ``decoder``: a
    :class:`~safecrs_core.train.grounding.GroundedDecoder` (grounded decoding; None: free)."""
    from ..evaluation.metrics import score_completions
    from .models import generate

    if not rows:
        raise ValueError("no rows to evaluate")
    domain = resolve_domain(domain, ("catalog", catalog))
    world = World.of(domain, catalog=catalog, oracle=oracle)
    catalog, oracle = world.catalog, world.oracle
    was_training = model.training
    model.eval()
    try:
        prompts = validation_prompts(rows, tok, k, max_prompt_tokens, domain=domain, evidence=evidence)
        # the Trainer switches the KV cache off in the model config; generation needs it back.
        # An answer is complete at </solution>: stop there even when no end-of-turn token follows
        # (grounded decoding ends the turn right after </solution> itself, and a stop string
        # inside its free reasoning block would end the answer before its list).
        processor = None
        if decoder is not None:
            processor = lambda batch: decoder.processor([rows[i] for i in batch])  # noqa: E731
        completions = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               progress=progress, use_cache=True, processor=processor,
                               stop=None if decoder is not None else [SOLUTION_CLOSE])
    finally:
        if was_training:
            model.train()
    return completions, score_completions(completions, rows, catalog=catalog, oracle=oracle, k=k)


def _summary(df: pd.DataFrame) -> dict:
    cols = ["recall@10", "ndcg@10", "svr@10", "unknown@10", "list_len", "parse_failed"]
    return {c: float(df[c].astype(float).mean()) for c in cols if c in df.columns}


def select_best(scores: Mapping[int, Mapping[str, float]], metric: str = BEST_METRIC) -> int:
    """Step of the best checkpoint: highest ``metric``, then lowest SVR@10, then the later step."""
    if not scores:
        raise ValueError("no scored checkpoints")

    def key(step):
        s = scores[step]
        m = s.get(metric, float("nan"))
        svr = s.get("svr@10", 0.0)
        return (-(m if m == m else -1.0), svr if svr == svr else 1.0, -int(step))
    return int(min(scores, key=key))


# --------------------------------------------------------------------------------------------
# Training


def _use_bf16(config: SafeSFTConfig) -> bool:
    import torch
    if config.bf16 is not None:
        return bool(config.bf16)
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _checkpoints(output_dir: Path) -> dict[int, Path]:
    out = {}
    for p in Path(output_dir).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir() and (p / "trainer_state.json").is_file():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The latest complete ``checkpoint-<step>`` folder of ``output_dir`` (None if there is none)."""
    ck = _checkpoints(Path(output_dir))
    return ck[max(ck)] if ck else None


class CheckpointScorer(TrainerCallback):
    """Scores every saved checkpoint on validation ``rows`` (greedy generation, Recall@10 and
    SVR@10), records the scores in ``<output_dir>/checkpoint_scores.json`` (kept across resumes)
    and, with ``prune``, removes checkpoints that are neither the best nor the latest."""

    def __init__(self, rows, tok, config: SafeSFTConfig, output_dir, catalog=None, oracle=None,
                 progress: bool = True, prune: bool = True, log=print, evidence=None, domain: str | None = None,
                 decoder=None):
        self.rows, self.tok, self.config = list(rows), tok, config
        self.decoder = decoder  # GroundedDecoder when checkpoints are scored with grounded decoding
        self.domain = resolve_domain(domain, ("catalog", catalog))  # the benchmark's domain (prompts, catalog, oracle)
        self.evidence = evidence  # EvidencePrompts when the run trains with evidence prompts
        self.output_dir = Path(output_dir)
        self.catalog, self.oracle, self.progress, self.prune = catalog, oracle, progress, prune
        self.log = log or (lambda _m: None)
        self.path = self.output_dir / "checkpoint_scores.json"
        self.scores: dict[int, dict] = {}
        self.seconds = 0.0  # spent scoring in this process
        if self.path.is_file():
            self.scores = {int(k): v for k, v in json.loads(self.path.read_text()).items()}

    def score(self, model, step: int) -> dict:
        from ..pipeline import atomic_write_json
        t0 = time.perf_counter()
        comps, df = evaluate_model(model, self.tok, self.rows, self.config.k, self.config.max_new_tokens,
                                   self.config.eval_batch_size, self.config.max_length, self.catalog,
                                   self.oracle, self.progress, evidence=self.evidence, domain=self.domain,
                                   decoder=self.decoder)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        summary = _summary(df) | {"seconds": round(seconds, 1)}
        self.scores[step] = summary
        atomic_write_json(self.output_dir / f"completions-{step}.json", comps)
        atomic_write_json(self.path, {str(k): v for k, v in sorted(self.scores.items())})
        self.log(f"[sft] checkpoint {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
        return summary

    def on_save(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if self.rows and step not in self.scores:
            self.score(model, step)
        if self.prune:
            self.prune_checkpoints()

    def prune_checkpoints(self) -> None:
        ck = _checkpoints(self.output_dir)
        if not ck:
            return
        keep = {max(ck)}
        scored = {s: v for s, v in self.scores.items() if s in ck}
        if scored:
            keep.add(select_best(scored))
        for step, path in ck.items():
            if step not in keep:
                shutil.rmtree(path, ignore_errors=True)


def make_trainer(config: SafeSFTConfig, train_dataset, output_dir: str | os.PathLike, model=None, tok=None,
                 callbacks: Sequence = (), progress: bool = True):
    """A trl ``SFTTrainer`` for ``config`` on ``train_dataset`` (prompt-completion rows, or their
    :func:`tokenize_examples`): LoRA (or a full fine-tune), completion-only loss, fp32 on CPU,
    no gradient checkpointing unless asked, a checkpoint every ``save_steps`` steps into
    ``output_dir``, loss logged every step."""
    import torch
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from .models import load_model

    set_seed(config.seed)
    if model is None:
        model, tok = load_model(config.model_name)
    elif tok is None:
        raise ValueError("pass the model's tokenizer with model=")
    cuda = torch.cuda.is_available()
    steps_per_epoch = math.ceil(len(train_dataset) / (config.per_device_train_batch_size
                                                      * config.gradient_accumulation_steps))
    total = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * steps_per_epoch)
    args = SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        lr_scheduler_type="cosine",
        warmup_steps=int(round(config.warmup_ratio * total)),
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,
        seed=config.seed,
        data_seed=config.seed,
        bf16=_use_bf16(config),
        fp16=False,
        activation_checkpointing=config.gradient_checkpointing and cuda,
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        use_cache=True,  # kept in the model config for generation; trl switches it off for the loss
        # short extra examples (sensitivity, item knowledge, screen) batched together, not padded to a full one
        train_sampling_strategy="group_by_length" if config.short_examples else "random",
    )
    return SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tok,
                      peft_config=lora_config(config.lora_r, config.lora_alpha, config.lora_dropout) if config.lora else None, callbacks=list(callbacks))


def resume_dir(config: SafeSFTConfig, inputs: Sequence[str]) -> Path:
    """Where an unfinished ``sft`` stage keeps its checkpoints: ``artifacts/sft/.<key>.resume``."""
    from ..pipeline import artifacts_root, stage_key
    key = stage_key("sft", config.train_params(), list(inputs))
    return artifacts_root() / "sft" / f".{key}{RESUME_SUFFIX}"


def sft_stage_dir(config: SafeSFTConfig, benchmark_dir: str | os.PathLike) -> Path:
    """The folder of ``config``'s ``sft`` stage on ``benchmark_dir``, built or not: the folder
    :func:`train_sft` returns, found without building anything."""
    from ..pipeline import stage_dir, stage_key, stage_ref

    data = stage_dir("sft_data", stage_key("sft_data", config.data_params(), [stage_ref(benchmark_dir)]))
    return stage_dir("sft", stage_key("sft", config.train_params(), [stage_ref(data)]))


def profile_sft_stage(profile: str, benchmark_dir: str | os.PathLike, domain: str = "movies",
                      variant: str = "safe") -> Path:
    """The folder (built or not) of the ``sft`` stage that notebook 02 trains for ``variant``
    under ``profile`` and ``domain``: its parameters cell with the profile's overrides
    (:func:`~safecrs_core.pipeline.notebook_values`), on the benchmark stage ``benchmark_dir``."""
    from ..pipeline import notebook_values

    values = notebook_values("02_safe_sft", profile, domain=domain)
    return sft_stage_dir(SafeSFTConfig.from_values(values, variant=variant), benchmark_dir)


def _save_model_files(src_checkpoint: Path, dest: Path, tok) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    keep = re.compile(r"(adapter_.*|config\.json|generation_config\.json|model.*\.safetensors|model\.safetensors\.index\.json)$")
    for f in src_checkpoint.iterdir():
        if f.is_file() and keep.fullmatch(f.name):
            shutil.copy2(f, dest / f.name)
    tok.save_pretrained(dest)


def train_sft(config: SafeSFTConfig, benchmark_dir: str | os.PathLike | None = None, *, data_dir=None,
              force: bool = False, resume: bool = True, threads: int | None = None, progress: bool = True,
              log=print) -> Path:
    """The cached ``sft`` stage of ``config``: builds the ``sft_data`` stage if needed, trains,
    scores each checkpoint and keeps the best. Returns the stage directory, holding ``model/``
    (the best adapter, or full weights, plus tokenizer), ``log_history.json`` (the trainer's
    log), ``checkpoints.json`` (validation scores per checkpoint and the chosen step),
    ``validation.json`` (the chosen checkpoint's completions and per-row scores) and
    ``train_info.json`` (examples, trimming, timings).

    ``benchmark_dir`` defaults to the book profile's benchmark stage
    (:func:`safecrs_core.benchmark.benchmark_for_profile`).
    An interrupted run resumes from its last checkpoint when ``resume`` (the default).
    ``threads``: torch threads while training and scoring (:func:`torch_threads`; not part of
    the stage key).
    """
    from ..benchmark import benchmark_domain, benchmark_for_profile, load_benchmark
    from .models import load_model
    from ..pipeline import atomic_write_json, run_stage, stage_ref

    bench = Path(benchmark_dir) if benchmark_dir is not None else benchmark_for_profile("book", data_dir)[2]
    data = build_sft_data(config, bench, data_dir=data_dir, progress=progress, log=log)
    inputs = [stage_ref(data)]
    work = resume_dir(config, inputs)
    if force or not resume:
        shutil.rmtree(work, ignore_errors=True)

    def fn(tmp: Path):
        t0 = time.perf_counter()
        work.mkdir(parents=True, exist_ok=True)
        train_ds, _ = load_sft_data(data, config.variant)
        model, tok = load_model(config.model_name)
        too_long: list[int] = []
        fitted, n_trim, n_drop = fit_examples(train_ds, tok, config.max_length, dropped_rows=too_long)
        if len(fitted) == 0:
            raise ValueError(f"no training example fits max_length={config.max_length} tokens "
                             f"({n_drop} too long even without their older turns); raise max_length")
        # the longest targets are the ones whose oracle-removed items the reasoning names: dropping
        # them takes the avoidance examples out of Safe-SFT first, so say so
        n_drop_filtered = sum(bool(train_ds[i]["dropped"]) for i in too_long)
        if n_drop and log:
            log(f"[sft] warning: {n_drop} of {len(train_ds)} training examples ({n_drop_filtered} with items the "
                f"oracle removed from the target) do not fit max_length={config.max_length} tokens even without "
                "their older turns and are left out; raise max_length to keep them")
        bstats = json.loads((bench / "stats.json").read_text())
        domain = benchmark_domain(bstats)
        rows = validation_rows(bench, config.val_samples, config.seed) if config.val_samples else []
        with_context = (config.evidence is not None or config.candidates is not None) and rows
        knowledge, screens = config.applied_item_knowledge, config.applied_screen_examples
        bench_ds = load_benchmark(bench)[0] \
            if config.applied_sensitivity_examples or with_context or knowledge or screens else None
        n_sens = n_know = n_screen = 0
        if config.applied_sensitivity_examples:
            drawn = _train_subset(bench_ds["train"], config.applied_sensitivity_examples, config.seed)
            fitted, n_sens = _add_examples(fitted, sensitivity_examples(list(drawn), config.k, domain), tok,
                                           config.max_length)
        world = World.of(domain, data_dir=data_dir, threshold=bstats["config"]["threshold"])
        catalog, oracle = world.catalog, world.oracle
        prompts = config.evidence_prompts(bench_ds, catalog, oracle, progress=progress, log=log) \
            if with_context or knowledge or screens else None
        if knowledge is not None:
            train_rows = list(bench_ds["train"])  # every training row's candidates: item frequencies
            fitted, n_know = _add_examples(fitted, knowledge_examples(
                train_rows, prompts.ids(train_rows), catalog, oracle, **knowledge, seed=config.seed, k=config.k,
                domain=domain), tok, config.max_length)
        if screens:
            drawn = list(_train_subset(bench_ds["train"], screens, config.seed))
            fitted, n_screen = _add_examples(fitted, screen_examples(drawn, prompts.ids(drawn), catalog, oracle,
                                                                     config.k, domain), tok, config.max_length)
        evidence = prompts if with_context else None  # what checkpoint scoring shows the model
        decoder = config.decoder(bench, catalog, tok, evidence) if rows else None
        scorer = CheckpointScorer(rows, tok, config, work, catalog, oracle, progress, log=log, evidence=evidence,
                                  domain=domain, decoder=decoder)
        trainer = make_trainer(config, tokenize_examples(fitted, tok), work, model, tok, [scorer], progress)
        last = last_checkpoint(work)
        if last is not None:
            say = log or (lambda _m: None)
            say(f"[sft] resuming from {last.name}")
        t1 = time.perf_counter()
        out = trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
        train_seconds = time.perf_counter() - t1 - scorer.seconds  # checkpoint scoring left out
        final_step = trainer.state.global_step
        steps_run = final_step - (int(last.name.split("-")[1]) if last is not None else 0)
        ck = _checkpoints(work)
        if final_step not in ck:  # the trainer saves at the last step; make sure of it
            trainer.save_model(str(work / f"checkpoint-{final_step}"))
            trainer.state.save_to_json(str(work / f"checkpoint-{final_step}" / "trainer_state.json"))
            ck = _checkpoints(work)
        # checkpoints saved before an interruption but never scored
        for step, path in ck.items():
            if rows and step not in scorer.scores:
                m, _ = load_checkpoint_model(path, config)
                scorer.score(m, step)
                del m
        scored = {s: v for s, v in scorer.scores.items() if s in ck}
        best = select_best(scored) if scored else max(ck)
        _save_model_files(ck[best], tmp / "model", tok)
        history = trainer.state.log_history
        atomic_write_json(tmp / "log_history.json", history)
        atomic_write_json(tmp / "checkpoints.json", {
            "best_step": best, "metric": BEST_METRIC,
            "scores": {str(k): v for k, v in sorted(scorer.scores.items())}})
        val = {"ids": [r["id"] for r in rows], "completions": []}
        comp_file = work / f"completions-{best}.json"
        if rows and comp_file.is_file():
            from ..evaluation.metrics import score_completions
            comps = json.loads(comp_file.read_text())
            df = score_completions(comps, rows, catalog=catalog, oracle=oracle, k=config.k)
            val = {"ids": [r["id"] for r in rows], "completions": comps,
                   "scores": json.loads(df.drop(columns=["ids"]).to_json(orient="records"))}
        atomic_write_json(tmp / "validation.json", val)
        n_tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
        info = {"examples": len(fitted) - n_sens - n_know - n_screen, "sensitivity_examples": n_sens,
                "knowledge_examples": n_know, "screen_examples": n_screen, "trimmed": n_trim,
                "dropped_too_long": n_drop, "dropped_too_long_filtered": n_drop_filtered,
                "final_step": final_step, "best_step": best, "train_seconds": round(train_seconds, 1),
                "seconds_per_step": round(train_seconds / max(steps_run, 1), 2),
                "scoring_seconds": round(scorer.seconds, 1),
                "train_tokens_per_epoch": int(n_tokens),
                "train_loss": getattr(out, "training_loss", None),
                "resumed_from": last.name if last is not None else None,
                "total_seconds": round(time.perf_counter() - t0, 1)}
        atomic_write_json(tmp / "train_info.json", info)
        return {"best_step": best, "best": scored.get(best, {}), "final_step": final_step}

    with torch_threads(threads):
        stage = run_stage("sft", config.train_params(), inputs, fn, force=force, log=log)
    shutil.rmtree(work, ignore_errors=True)
    return stage


# --------------------------------------------------------------------------------------------
# Loading


def _config_of(stage_dir: Path) -> SafeSFTConfig:
    from ..pipeline import read_manifest
    return SafeSFTConfig.from_params(read_manifest(stage_dir)["params"])


def load_checkpoint_model(path: str | os.PathLike, config: SafeSFTConfig, merge: bool = True, device=None):
    """(model, tokenizer) from a checkpoint or ``model/`` folder of a run with ``config``."""
    from .models import load_model, load_tokenizer

    path = Path(path)
    if config.lora:
        from peft import PeftModel
        base, tok = load_model(config.model_name, device=device)
        model = PeftModel.from_pretrained(base, str(path))
        if merge:
            model = model.merge_and_unload()
    else:
        from transformers import AutoModelForCausalLM

        from .models import to_device
        tok = load_tokenizer(config.model_name)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
        model.config.pad_token_id = tok.pad_token_id
        to_device(model, device)
    model.eval()
    return model, tok


def load_sft_model(stage_dir: str | os.PathLike, merge: bool = True, device=None):
    """(model, tokenizer) of an ``sft`` stage: the base model with the best adapter merged
    (``merge=False``: attached as a peft model, e.g. to keep training it), or the fine-tuned
    weights of a full fine-tune; in eval mode."""
    stage = Path(stage_dir)
    return load_checkpoint_model(stage / "model", _config_of(stage), merge=merge, device=device)


def stage_summary(stage_dir: str | os.PathLike) -> dict:
    """Chosen step, per-checkpoint scores and training info of an ``sft`` stage."""
    p = Path(stage_dir)
    return {"config": _config_of(p).to_params(),
            "checkpoints": json.loads((p / "checkpoints.json").read_text()),
            "train": json.loads((p / "train_info.json").read_text())}


def loss_history(stage_dir: str | os.PathLike) -> pd.DataFrame:
    """Training loss per logged step of an ``sft`` stage (columns step, loss, learning_rate)."""
    hist = json.loads((Path(stage_dir) / "log_history.json").read_text())
    rows = [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate")}
            for h in hist if "loss" in h]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Cached evaluation


def evaluate_stage(model: str | os.PathLike, benchmark_dir: str | os.PathLike, n: int, *, offset: int = 0,
                   seed: int = 0, k: int = 10, max_new_tokens: int = 288, batch_size: int = 12,
                   max_prompt_tokens: int | None = 512, data_dir=None, force: bool = False,
                   threads: int | None = None, progress: bool = True, log=print,
                   grounding: Mapping[str, Any] | None = None, candidates: Mapping[str, Any] | None = None) -> Path:
    """The cached ``sft_eval`` stage: greedy completions and per-row scores on
    :func:`validation_rows` ``(n, seed, offset)`` for ``model``, either a model name (zero-shot)
    or an ``sft`` stage directory. Files: ``completions.json``, ``scores.parquet``,
    ``summary.json``. ``grounding``: grounded decoding settings; ``candidates``: candidates in
    the prompt (:func:`context_prompts`); each keys the stage only when set."""
    from ..benchmark import benchmark_domain
    from .models import load_model
    from ..pipeline import atomic_write_json, is_done, run_stage, stage_ref

    bench = Path(benchmark_dir)
    is_stage = isinstance(model, os.PathLike) or (isinstance(model, str) and is_done(model))
    model_id = stage_ref(model) if is_stage else str(model)
    params = {"model": model_id, "n": n, "offset": offset, "seed": seed, "k": k, "max_new_tokens": max_new_tokens,
              "max_prompt_tokens": max_prompt_tokens}
    if grounding is not None:
        from .grounding import grounding_settings
        params["grounding"] = grounding_settings(grounding)
    if candidates is not None:
        from .prompts import candidate_settings
        params["candidates"] = candidate_settings(candidates)
    inputs = [stage_ref(bench)] + ([model_id] if is_stage else [])

    def fn(tmp: Path):
        rows = validation_rows(bench, n, seed, offset)
        if is_stage:
            m, tok = load_sft_model(model)
        else:
            m, tok = load_model(str(model))
        bstats = json.loads((bench / "stats.json").read_text())
        domain = benchmark_domain(bstats)
        world = World.of(domain, data_dir=data_dir, threshold=bstats["config"]["threshold"])
        catalog, oracle = world.catalog, world.oracle
        from ..benchmark import load_benchmark
        prompts = context_prompts(candidates, load_benchmark(bench)[0], catalog)
        decoder = benchmark_decoder(grounding, bench, catalog, tok, k=k, prompts=prompts)  # built before the clock
        t0 = time.perf_counter()
        comps, df = evaluate_model(m, tok, rows, k, max_new_tokens, batch_size, max_prompt_tokens, catalog,
                                   oracle, progress, domain=domain, decoder=decoder, evidence=prompts)
        seconds = time.perf_counter() - t0
        new_tokens = sum(len(tok(c, add_special_tokens=False)["input_ids"]) for c in comps)
        atomic_write_json(tmp / "completions.json", {"ids": [r["id"] for r in rows], "completions": comps})
        df.assign(ids=df["ids"].map(list)).to_parquet(tmp / "scores.parquet")
        summary = _summary(df) | {"n": len(rows), "generation_seconds": round(seconds, 1),
                                  "generated_tokens": new_tokens,
                                  "tokens_per_second": round(new_tokens / max(seconds, 1e-9), 2)}
        atomic_write_json(tmp / "summary.json", summary)
        return summary

    with torch_threads(threads):
        return run_stage("sft_eval", params, inputs, fn, force=force, log=log)


def load_eval(stage_dir: str | os.PathLike) -> tuple[list[str], pd.DataFrame, dict]:
    """(completions, per-row scores, summary) of an ``sft_eval`` stage."""
    p = Path(stage_dir)
    comps = json.loads((p / "completions.json").read_text())["completions"]
    return comps, pd.read_parquet(p / "scores.parquet"), json.loads((p / "summary.json").read_text())


# --------------------------------------------------------------------------------------------
# Tables for the book

COMPARE_METRICS = ("recall@10", "ndcg@10", "svr@10", "unknown@10", "list_len")


def validation_frame(stage_dir: str | os.PathLike) -> tuple[list[str], pd.DataFrame]:
    """(completions, per-row scores) of the chosen checkpoint of an ``sft`` stage on its
    validation subset (the rows that selected it)."""
    val = json.loads((Path(stage_dir) / "validation.json").read_text())
    return val.get("completions", []), pd.DataFrame(val.get("scores", []))


def compare(frames: Mapping[str, pd.DataFrame], metrics: Sequence[str] = COMPARE_METRICS, n_boot: int = 1000,
            seed: int = 0) -> pd.DataFrame:
    """One row per system: ``mean [95 % bootstrap CI]`` of ``metrics`` over its per-row scores
    (:func:`safecrs_core.evaluation.metrics.summarize`), plus the share of unparseable answers."""
    from ..evaluation.metrics import format_table, summarize

    out = []
    for label, df in frames.items():
        summ = summarize(df, metrics=list(metrics), n_boot=n_boot, seed=seed)
        row = format_table(summ, list(metrics)).iloc[0].to_dict()
        row["parse_failed"] = f"{df['parse_failed'].astype(float).mean():.2f}" if "parse_failed" in df else "n/a"
        out.append(pd.Series(row, name=label))
    return pd.DataFrame(out)


def target_table(stats: Mapping[str, Any]) -> pd.DataFrame:
    """Per variant of an ``sft_data`` stage: examples, items per list by origin, lists shorter
    than k, items dropped as unsafe."""
    rows = {}
    for v in VARIANTS:
        st = stats[v]
        per = st["items_by_origin_per_target"]
        rows[v] = {"examples": st["examples"], "ground truth / list": round(per["ground_truth"], 2),
                   "neighbours / list": round(per["neighbour"], 2), "fallback / list": round(per["fallback"], 2),
                   **({"candidates / list": round(per["candidate"], 2)} if "candidate" in per else {}),
                   "short lists": st["short_lists"], "dropped as unsafe": st["dropped_total"]}
    return pd.DataFrame(rows).T


def dropped_table(stats: Mapping[str, Any]) -> pd.DataFrame:
    """Safe-SFT: examples, items dropped and examples with a drop, per trait."""
    st = stats["safe"]
    df = pd.DataFrame({"examples": st["examples_per_trait"], "items dropped": st["dropped_per_trait"],
                       "examples with a drop": st["examples_with_drops_per_trait"]}).fillna(0).astype(int)
    df.index = [T.get(t).name if t in T.TRAIT_IDS else t for t in df.index]
    return df.sort_values("items dropped", ascending=False)


def examples_markdown(rows: Sequence[dict], completions: Mapping[str, Sequence[str]], n: int = 2,
                      catalog=None) -> str:
    """Markdown for the first ``n`` rows: the user's last turn, the trait, the ground truth and
    each system's completion (label -> completions aligned with ``rows``)."""
    out = []
    for i, r in enumerate(list(rows)[:n]):
        last = next((t["text"] for t in reversed(r["turns"]) if t["role"] == "user"), "")
        gt = ", ".join(f"{t['title']} ({t['year']})" for t in r["targets"]) or "none"
        removed = ", ".join(f"{t['title']} ({t['year']})" for t in r["removed_targets"]) or "none"
        block = [f"**{r['id']}**: trait `{r['trait']}` ({r['trait_name']})", "",
                 f"> {' '.join(last.split())}", "", f"ground truth: {gt}; removed as unsafe: {removed}", ""]
        for label, comps in completions.items():
            text = comps[i].strip() if i < len(comps) else ""
            block += [f"*{label}*:", "", "```text", text or "(empty)", "```", ""]
        out.append("\n".join(block))
    return "\n\n---\n\n".join(out)


# --------------------------------------------------------------------------------------------
# Figures


def plot_loss_curves(histories: Mapping[str, Any], smooth: int = 5):
    """Training loss per optimizer step of several runs (label -> ``log_history`` list, a
    :func:`loss_history` frame or an ``sft`` stage directory); raw loss faint, a running mean of
    ``smooth`` steps solid."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (label, h) in enumerate(histories.items()):
        if isinstance(h, (str, os.PathLike)):
            df = loss_history(h)
        elif isinstance(h, pd.DataFrame):
            df = h
        else:
            df = pd.DataFrame([{"step": x["step"], "loss": x["loss"]} for x in h if "loss" in x])
        if df.empty:
            continue
        color = f"C{i}"
        ax.plot(df["step"], df["loss"], color=color, alpha=0.3, lw=1)
        ax.plot(df["step"], df["loss"].rolling(max(1, smooth), min_periods=1).mean(), color=color, lw=2, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig

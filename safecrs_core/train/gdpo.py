"""Safe-GDPO: rank-level, reward-decoupled group normalisation on top of trl's GRPOTrainer.

For every prompt the policy samples ``G`` ranked lists (trl puts the ``G`` completions of a prompt
next to each other). :mod:`safecrs_core.train.rewards` scores each rank ``k`` of each list with ``R``
rewards (relevance hits, the discounted safety penalty, the broadcast count reward), giving
``r[j, i, k]`` for reward ``j``, completion ``i`` and rank ``k``. :func:`decoupled_advantages`
turns them into one advantage per completion and rank:

``mode="gdpo"`` (Group reward-Decoupled normalisation)::

    Â[j, i, k] = (r[j, i, k] - mean_g r[j, ., k]) / (std_g r[j, ., k] + eps)   per reward, rank, group
    A[i, k]    = sum_j w_j Â[j, i, k]
    adv[i, k]  = (A[i, k] - mean(A)) / (std(A) + eps)                         over all N*K values

``mode="grpo"`` (the summed reward is normalised, as in GRPO)::

    s[i, k]   = sum_j w_j r[j, i, k]
    adv[i, k] = (s[i, k] - mean_g s[., k]) / (std_g s[., k] + eps)            per rank and group

``mean_g``/``std_g`` run over the ``G`` completions of the prompt; ``std`` is ``torch.std``
(unbiased), taken as 0 for ``G = 1``. A group where a reward does not vary contributes 0 for that
reward (never NaN). Ranks past the end of a short list take part with their values (no hit, no
penalty, the list's count reward). With ``K = 1`` (per-sequence rewards) ``mode="gdpo"`` is
exactly trl's ``multi_objective_aggregation="normalize_then_sum"`` (tested against trl). Under GRPO two rewards that move together are indistinguishable from one
reward with twice the scale; GDPO keeps them apart (the GDPO paper's example: totals (0, 1) and
(0, 2) over two rollouts collapse to the same GRPO advantages).

Token-level credit (:class:`SafeGDPOTrainer`, ``level="rank"``)
    The tokens of the line of item ``k`` (the parser's ``line_span``: marker, title and year) get
    ``adv[i, k]``. Every other completion token (reasoning, tags, chatter, items past ``k``, the
    end-of-turn token) gets the sequence advantage ``mean_k adv[i, k]``. Tokens are matched to
    characters of the decoded completion (:func:`token_char_offsets`), so the alignment holds for
    the token ids the policy actually produced, whatever a fresh tokenisation of the text gives.
    A token spanning two item lines goes to the earlier (higher-ranked) item.

Sequence-level mode (``level="sequence"``)
    trl's own advantages from the per-sequence reward functions of
    :meth:`~safecrs_core.train.rewards.RankRewards.reward_functions`; GDPO is trl's
    ``multi_objective_aggregation="normalize_then_sum"`` and GRPO its ``"sum_then_normalize"``.

In both levels that GRPOConfig field chooses the mode (``normalize_then_sum`` -> gdpo,
``sum_then_normalize`` -> grpo) and ``reward_weights`` are the weights ``w``. Everything else
(generation, vLLM, accelerate, the clipped loss, the KL term with ``beta``, LoRA, checkpoints) is
trl's and transformers' as is.

:func:`train_gdpo` runs a cached training stage (``artifacts/gdpo/<key>/``) from
:class:`GDPOParams`; :func:`load_gdpo_model` loads its result.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from trl import GRPOConfig, GRPOTrainer

from ..data.catalog import resolve_domain
from .models import LORA_TARGETS, lora_config
from .rewards import RankRewards
from ..data.rows import column, ref_ids, rows_fingerprint

MODES = ("gdpo", "grpo")
LEVELS = ("rank", "sequence")
AGGREGATION = {"gdpo": "normalize_then_sum", "grpo": "sum_then_normalize"}
MODE_OF_AGGREGATION = {v: k for k, v in AGGREGATION.items()}
EPS = 1e-4  # trl's epsilon in the advantage denominators


# --------------------------------------------------------------------------------------------
# Advantages


def _group_normalize(x: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """``(..., N, K)`` -> ``(x - group mean) / (group std + eps)`` over groups of ``group_size``
    consecutive rows of the ``N`` axis (unbiased std; 0 for groups of one)."""
    *lead, n, k = x.shape
    g = x.reshape(*lead, n // group_size, group_size, k)
    mean = g.mean(dim=-2, keepdim=True)
    std = g.std(dim=-2, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((g - mean) / (std + eps)).reshape(x.shape)


def decoupled_advantages(rewards: torch.Tensor, group_size: int, weights: Sequence[float] | torch.Tensor | None = None,
                         mode: str = "gdpo", eps: float = EPS) -> torch.Tensor:
    """Rank-level advantages ``(N, K)`` from ``rewards`` ``(R, N, K)`` (R rewards, N completions in
    groups of ``group_size`` consecutive ones, K ranks); see the module docstring for both modes.

    ``mode="gdpo"``: ``Â_j = (r_j - mean_g r_j) / (std_g r_j + eps)`` per reward and rank within
    each group, ``A = Σ_j w_j Â_j``, then ``(A - mean(A)) / (std(A) + eps)`` over all ``N·K``
    values. ``mode="grpo"``: ``s = Σ_j w_j r_j``, then ``(s - mean_g s) / (std_g s + eps)`` per rank
    within each group. ``std`` is ``torch.std`` (unbiased; 0 for a single value). ``weights``:
    ``R`` numbers, default all 1."""
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    if rewards.dim() != 3:
        raise ValueError(f"rewards must be shaped (R rewards, N completions, K ranks), got {tuple(rewards.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    n_rewards, n, k = rewards.shape
    if n_rewards == 0 or n == 0 or k == 0:
        raise ValueError(f"rewards must not be empty, got shape {tuple(rewards.shape)}")
    if n % group_size:
        raise ValueError(f"{n} completions do not split into groups of {group_size}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    r = rewards.float()
    if not torch.isfinite(r).all():
        raise ValueError("rewards contain NaN or infinite values")
    if weights is None:
        w = torch.ones(n_rewards, device=r.device)
    else:
        w = torch.as_tensor(weights, dtype=torch.float32, device=r.device).flatten()
        if w.numel() != n_rewards:
            raise ValueError(f"{w.numel()} weights for {n_rewards} rewards")
        if not torch.isfinite(w).all():
            raise ValueError("weights contain NaN or infinite values")
    w = w.view(-1, 1, 1)
    if mode == "grpo":
        return _group_normalize((r * w).sum(dim=0), group_size, eps)
    a = (_group_normalize(r, group_size, eps) * w).sum(dim=0)
    std = a.std() if a.numel() > 1 else torch.zeros((), device=a.device)
    return (a - a.mean()) / (std + eps)


def sequence_advantages(rank_advantages: torch.Tensor) -> torch.Tensor:
    """``(N,)``: the advantage of tokens outside items, the mean over ranks of ``(N, K)``."""
    return rank_advantages.mean(dim=1)


# --------------------------------------------------------------------------------------------
# Token alignment


def _backend(tokenizer):
    tok = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
    return tok, getattr(tok, "backend_tokenizer", None)


def token_char_offsets(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """``(text, offsets)``: ``text`` is ``ids`` decoded without special tokens and ``offsets[t]``
    the ``(start, end)`` characters of token ``t`` in it (special tokens are empty spans).

    Tokens are decoded one by one; tokens that only form whole characters together (a multi-byte
    character split over byte-level tokens) share the span of their group. If the pieces do not
    add up to the full decode (tokenizers that change text between pieces), the offsets come from
    decoding every prefix instead (quadratic, exact)."""
    tok, backend = _backend(tokenizer)
    ids = [int(i) for i in ids]
    if not ids:
        return "", []

    def decode_many(seqs):
        if backend is not None:
            return backend.decode_batch(seqs, skip_special_tokens=True)
        return tok.batch_decode(seqs, skip_special_tokens=True)

    full = tok.decode(ids, skip_special_tokens=True)
    pieces = decode_many([[i] for i in ids])
    offsets: list[tuple[int, int]] = []
    groups: list[str] = []
    pos, t = 0, 0
    while t < len(ids):
        j, piece = t + 1, pieces[t]
        while "\ufffd" in piece and j < len(ids) and j - t < 8:  # part of a multi-byte character
            j += 1
            piece = decode_many([ids[t:j]])[0]
        if "\ufffd" in piece and j - t > 1 and not full.startswith(piece, pos):
            j, piece = t + 1, pieces[t]  # a replacement character of the text itself
        offsets.extend([(pos, pos + len(piece))] * (j - t))
        groups.append(piece)
        pos += len(piece)
        t = j
    if "".join(groups) == full:
        return full, offsets
    # fallback: prefix decodes
    prefixes = decode_many([ids[:t + 1] for t in range(len(ids))])
    ends, best = [], 0
    for p in prefixes:
        best = min(max(best, len(p.rstrip("\ufffd"))), len(full))
        ends.append(best)
    ends[-1] = len(full)
    starts = [0] + ends[:-1]
    return full, list(zip(starts, ends))


def token_ranks(parsed, tokenizer, ids: Sequence[int], text: str | None = None) -> np.ndarray:
    """Rank index (0-based) of each token of ``ids``, -1 outside items.

    ``parsed``: the :class:`~safecrs_core.train.prompts.ParsedList` of ``text``, the completion text the
    parser saw (default: the decode of ``ids``). A token belongs to item ``k`` when its characters
    overlap the item's ``line_span``; a token overlapping two items goes to the earlier one. When
    ``text`` differs from the decode it must occur in it (e.g. stripped whitespace); otherwise no
    token is mapped (all -1)."""
    decoded, offsets = token_char_offsets(tokenizer, ids)
    out = np.full(len(offsets), -1, dtype=np.int64)
    shift = 0
    if text is not None and text != decoded:
        shift = decoded.find(text) if text else -1
        if shift < 0:
            return out
    if not offsets or not len(parsed):
        return out
    starts = np.fromiter((a for a, _ in offsets), dtype=np.int64, count=len(offsets)) - shift
    ends = np.fromiter((b for _, b in offsets), dtype=np.int64, count=len(offsets)) - shift
    nonempty = ends > starts
    for item in reversed(parsed.items):  # earlier items overwrite later ones on shared tokens
        ls, le = item.line_span
        out[nonempty & (starts < le) & (ends > ls)] = item.rank - 1
    return out


def token_advantages(rank_advantages: torch.Tensor, ranks: Sequence[np.ndarray], width: int,
                     seq_advantages: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, width)`` per-token advantages: token ``t`` of completion ``i`` gets
    ``rank_advantages[i, ranks[i][t]]``, or ``seq_advantages[i]`` (default
    :func:`sequence_advantages`) where ``ranks[i][t] < 0``, past ``len(ranks[i])`` or past ``K``."""
    n, k = rank_advantages.shape
    if len(ranks) != n:
        raise ValueError(f"{len(ranks)} rank maps for {n} completions")
    seq = sequence_advantages(rank_advantages) if seq_advantages is None else seq_advantages
    out = seq.unsqueeze(1).expand(n, width).clone()
    for i, rk in enumerate(ranks):
        rk = torch.as_tensor(np.asarray(rk, dtype=np.int64)[:width], device=out.device)
        sel = (rk >= 0) & (rk < k)
        idx = sel.nonzero(as_tuple=True)[0]
        out[i, idx] = rank_advantages[i, rk[idx]]
    return out


# --------------------------------------------------------------------------------------------
# Trainer


class SafeGDPOTrainer(GRPOTrainer):
    """trl's GRPOTrainer with rank-level GDPO advantages.

    ``rank_rewards``: a :class:`~safecrs_core.train.rewards.RankRewards`; its per-sequence reward
    functions become the trainer's ``reward_funcs`` (so trl logs them, and ``level="sequence"``
    is plain trl GDPO/GRPO over them). ``level="rank"`` replaces the per-sequence advantages that
    trl computes by per-token advantages (module docstring). ``args.multi_objective_aggregation``
    picks gdpo/grpo and ``args.reward_weights`` the weights. Only
    :meth:`_generate_and_score_completions` is overridden: it calls trl's and then swaps the
    ``advantages`` entry, shape ``(B,)``, for ``(B, T)``, which trl's loss accepts.
    Other keyword arguments go to :class:`trl.GRPOTrainer`.
    """

    def __init__(self, model, rank_rewards: RankRewards, args: GRPOConfig | None = None, *,
                 level: str = "rank", decoder=None, **kwargs):
        if "reward_funcs" in kwargs:
            raise TypeError("SafeGDPOTrainer takes its reward functions from rank_rewards")
        if not isinstance(rank_rewards, RankRewards):
            raise TypeError(f"rank_rewards must be a RankRewards, got {type(rank_rewards).__name__}")
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        super().__init__(model=model, reward_funcs=rank_rewards.reward_functions(), args=args, **kwargs)
        self.rank_rewards, self.level = rank_rewards, level
        self.decoder = decoder  # GroundedDecoder: rollouts decode grounded, as evaluation does
        if decoder is not None and (self.use_vllm or self.use_transformers_continuous_batching):
            raise NotImplementedError("grounded rollouts run through transformers' generate; switch off use_vllm "
                                      "and continuous batching")
        self._rollout_rows = None
        agg = self.args.multi_objective_aggregation
        if agg not in MODE_OF_AGGREGATION:
            raise ValueError(f"unknown multi_objective_aggregation {agg!r}")
        self.mode = MODE_OF_AGGREGATION[agg]
        if level == "rank" and self.args.scale_rewards != "group":
            raise ValueError("level='rank' normalises by the group std: use scale_rewards='group'")

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        """trl's generation; with a grounded decoder, ``generate`` gets the batch's
        :class:`~safecrs_core.train.grounding.GroundedLogitsProcessor` (rows in trl's order)."""
        if self.decoder is None:
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)
        rows = self._rollout_rows
        if rows is None or len(rows) != len(prompt_ids):
            raise RuntimeError(f"grounded rollouts: {len(prompt_ids)} prompts but "
                               f"{0 if rows is None else len(rows)} rows of this batch")
        with _generate_with(self.accelerator.unwrap_model(self.model_wrapped), self.decoder.processor(rows)):
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)

    def _generate_and_score_completions(self, inputs):
        self.rank_rewards.last = None
        self._rollout_rows = inputs
        output = super()._generate_and_score_completions(inputs)
        if self.level == "sequence":
            return output
        batch = self.rank_rewards.last
        n_local = output["completion_ids"].size(0)
        if batch is None or len(batch) != n_local or batch.completion_ids is None:
            raise RuntimeError("the rank rewards of this batch are missing: the reward functions must be "
                               "those of SafeGDPOTrainer.rank_rewards")
        device = output["completion_ids"].device
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        local = batch.rewards.to(device).transpose(0, 1).contiguous()  # (n, R, K)
        rewards = self.accelerator.gather(local).transpose(0, 1)  # (R, N, K), trl's order
        rank_adv = decoupled_advantages(rewards, group, self.reward_weights.to(device), self.mode)
        seq_adv = sequence_advantages(rank_adv)
        start = self.accelerator.process_index * n_local
        local_adv = rank_adv[start:start + n_local]
        tokenizer = self.processing_class
        ranks = [token_ranks(p, tokenizer, ids, text)
                 for p, ids, text in zip(batch.parsed, batch.completion_ids, batch.texts)]
        width = output["completion_ids"].size(1)
        output["advantages"] = token_advantages(local_adv, ranks, width, seq_adv[start:start + n_local])

        # logs: trl logged its sequence-level advantages for the completions table; show ours
        mask = output["completion_mask"].bool()
        in_item = torch.zeros_like(mask)
        misaligned = 0
        for i, (rk, p) in enumerate(zip(ranks, batch.parsed)):
            rk = torch.as_tensor(rk[:width], device=device)
            in_item[i, :len(rk)] = rk >= 0
            misaligned += int(len(p.items) > 0 and not (rk >= 0).any())
        stats = torch.tensor([(in_item & mask).sum(), mask.sum(), misaligned], dtype=torch.float32, device=device)
        stats = self.accelerator.gather(stats.unsqueeze(0)).sum(dim=0)
        self._metrics[mode]["rank_advantages/item_token_frac"].append((stats[0] / stats[1].clamp(min=1)).item())
        self._metrics[mode]["rank_advantages/misaligned"].append(stats[2].item())
        self._metrics[mode]["rank_advantages/std"].append(rank_adv.std().item() if rank_adv.numel() > 1 else 0.0)
        logged = self._logs["advantages"]
        for _ in range(min(len(seq_adv), len(logged))):
            logged.pop()
        logged.extend(seq_adv.tolist())
        return output


# --------------------------------------------------------------------------------------------
# Parameters, data, stage


@dataclasses.dataclass
class GDPOParams:
    """Literal parameters of a Safe-GDPO run (they key the cached stage).

    ``domain``: ``"movies"`` (SafeMovie) or ``"games"`` (SafeGame); it picks the prompts and the
    catalog and oracle that :func:`train_gdpo` loads.

    Rewards: ``k`` ranks and target length, ``lambda_safe``/``lambda_count`` scales,
    ``unknown_penalty`` (0: unknown verdicts are not penalised). Ablations: ``mode`` (``"gdpo"``
    or ``"grpo"``), ``level`` (``"rank"`` or ``"sequence"``), ``use_safety``/``use_count``
    (relevance is always on). ``reward_weights``: one per switched-on reward, in the order
    relevance, safety, count (None: all 1).

    RL (trl): ``num_generations`` is the group size G (paper 8); ``per_device_train_batch_size``
    counts completions, so a step sees ``per_device_train_batch_size / num_generations`` prompts
    per device; ``max_prompt_tokens`` trims long conversations (oldest turns first, None: never);
    ``beta`` the KL coefficient (paper 1e-3); ``learning_rate`` (paper 1e-6).
    ``lora``: train a LoRA adapter (r, alpha, dropout, target modules); the KL reference is then
    the base model with the adapter disabled. ``save_steps``: checkpoint interval; an interrupted
    run resumes from its last checkpoint.

    ``grounding`` (None: free sampling): rollouts decode with these
    :class:`~safecrs_core.train.grounding.Grounding` settings, the universe built from the training
    rows, as evaluation decodes; it keys the stage only when set.

    ``evidence`` (None: off): train with evidence prompts, a dict of
    :func:`~safecrs_core.train.prompts.evidence_settings` (``n``, ``n_popular``, ``context_turns``,
    ``max_tags``); :func:`train_gdpo` then needs the matching
    :class:`~safecrs_core.train.prompts.EvidencePrompts`. It keys the stage only when set.

    ``candidates`` (None: off): candidates in context without oracle verdicts, a dict of
    :func:`~safecrs_core.train.prompts.candidate_settings` (``n``, ``source``); :func:`train_gdpo`
    then needs the matching prompts (:func:`~safecrs_core.train.candidates.context_prompts`), and grounding
    in ``"candidates"`` mode samples only each row's candidates. It keys the stage only when set.
    """

    k: int = 10
    domain: str = "movies"
    mode: str = "gdpo"
    level: str = "rank"
    use_safety: bool = True
    use_count: bool = True
    lambda_safe: float = 1.0
    lambda_count: float = 1.0
    unknown_penalty: float = 0.0
    reward_weights: tuple[float, ...] | None = None
    num_generations: int = 4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int = 50
    learning_rate: float = 1e-6
    beta: float = 1e-3
    epsilon: float = 0.2
    loss_type: str = "dapo"
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_length: int = 256
    max_prompt_tokens: int | None = None
    warmup_steps: int = 0
    lr_scheduler_type: str = "constant"
    max_grad_norm: float = 1.0
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = LORA_TARGETS
    n_train: int | None = None
    seed: int = 0
    save_steps: int = 25
    save_total_limit: int = 2
    logging_steps: int = 1
    bf16: bool = False
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    evidence: dict | None = None
    grounding: dict | None = None
    candidates: dict | None = None

    def __post_init__(self):
        from ..domains import get_domain
        get_domain(self.domain)  # an unknown domain fails here, naming the known ones
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if self.reward_weights is not None:
            self.reward_weights = tuple(float(w) for w in self.reward_weights)
            if len(self.reward_weights) != len(self.reward_names):
                raise ValueError(f"{len(self.reward_weights)} reward_weights for rewards {self.reward_names}")
        self.lora_target_modules = tuple(self.lora_target_modules)
        if self.per_device_train_batch_size * self.gradient_accumulation_steps % self.num_generations:
            raise ValueError("per_device_train_batch_size * gradient_accumulation_steps must be a multiple of "
                             "num_generations")
        from .grounding import grounding_settings
        from .prompts import candidate_settings, evidence_settings
        self.grounding = grounding_settings(self.grounding)
        self.evidence = evidence_settings(self.evidence)
        self.candidates = candidate_settings(self.candidates)
        if self.evidence is not None and self.candidates is not None:
            raise ValueError("set evidence (candidates with oracle verdicts) or candidates, not both")
        context = self.evidence or self.candidates
        if context is not None and context["n"] < self.k:
            raise ValueError(f"n={context['n']} candidates cannot fill a list of k={self.k}")
        if self.grounding is not None and self.grounding["mode"] == "candidates" and context is None:
            raise ValueError("candidates grounding needs prompts with candidates: set candidates (or evidence)")

    @classmethod
    def from_values(cls, values: Mapping[str, Any], **changes) -> "GDPOParams":
        """The parameters from a notebook's values (:func:`~safecrs_core.pipeline.from_values`)."""
        from ..pipeline import from_values
        return from_values(cls, values, **changes)

    @property
    def reward_names(self) -> tuple[str, ...]:
        return tuple(n for n, on in (("relevance", True), ("safety", self.use_safety), ("count", self.use_count)) if on)

    def to_params(self) -> dict:
        d = dataclasses.asdict(self)
        d["lora_target_modules"] = list(self.lora_target_modules)
        d["reward_weights"] = None if self.reward_weights is None else list(self.reward_weights)
        for name in ("evidence", "grounding", "candidates"):  # off: the keys of runs without them stay as they were
            if d[name] is None:
                del d[name]
        return d

    def rank_rewards(self, catalog, oracle) -> RankRewards:
        return RankRewards(catalog, oracle, k=self.k, lambda_safe=self.lambda_safe, lambda_count=self.lambda_count,
                           unknown_penalty=self.unknown_penalty, use_safety=self.use_safety,
                           use_count=self.use_count)

    def grpo_config(self, output_dir: str | os.PathLike, **overrides) -> GRPOConfig:
        """The trl configuration of these parameters (``overrides`` win, e.g. ``report_to``)."""
        kw = dict(
            output_dir=str(output_dir), num_generations=self.num_generations,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps, max_steps=self.max_steps,
            learning_rate=self.learning_rate, beta=self.beta, epsilon=self.epsilon, loss_type=self.loss_type,
            temperature=self.temperature, top_p=self.top_p, max_completion_length=self.max_completion_length,
            warmup_steps=self.warmup_steps, lr_scheduler_type=self.lr_scheduler_type,
            max_grad_norm=self.max_grad_norm, multi_objective_aggregation=AGGREGATION[self.mode],
            scale_rewards="group",
            reward_weights=None if self.reward_weights is None else list(self.reward_weights),
            seed=self.seed, data_seed=self.seed, save_strategy="steps", save_steps=self.save_steps,
            save_total_limit=self.save_total_limit, logging_steps=self.logging_steps, bf16=self.bf16,
            gradient_checkpointing=self.gradient_checkpointing, use_vllm=self.use_vllm, report_to="none",
            remove_unused_columns=False, disable_tqdm=True, dataloader_pin_memory=torch.cuda.is_available(),
        )
        kw.update(overrides)
        with _quiet_deprecations():
            return GRPOConfig(**kw)

    def peft_config(self):
        if not self.lora:
            return None
        return lora_config(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_target_modules)


@contextlib.contextmanager
def _generate_with(model, processor):
    """Inside the block ``model.generate`` decodes with the grounded ``processor`` (trl calls
    ``generate`` without a logits processor; this is how grounded rollouts pass theirs), through
    :func:`~safecrs_core.train.grounding.generate_with_processor`: ``generate`` itself, or
    jump-forward decoding when the processor asks for it."""
    from .grounding import generate_with_processor

    original = model.generate

    def generate(input_ids=None, attention_mask=None, **kw):
        return generate_with_processor(model, input_ids, attention_mask, processor, generate=original, **kw)

    model.generate = generate
    try:
        yield model
    finally:
        del model.generate


@contextlib.contextmanager
def _quiet_deprecations():
    """trl 1.16 still sets transformers' renamed ``gradient_checkpointing`` arguments; hide those
    FutureWarnings (nothing a caller can change)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*", category=FutureWarning)
        yield


def build_dataset(rows, k: int = 10, domain: str = "movies", n: int | None = None, seed: int = 0,
                  tokenizer=None, max_prompt_tokens: int | None = None, evidence=None):
    """A trl prompt dataset from SafeRec rows (a Hugging Face Dataset or list of dicts with
    ``id``, ``turns``, ``trait``, ``targets``, ``seen``): columns ``prompt`` (chat messages from
    :func:`~safecrs_core.train.prompts.build_messages`), ``id``, ``trait``, ``targets`` and ``seen``
    (lists of ``{"item_id"}``). ``n``: a random subset of that many rows (seeded).
    ``max_prompt_tokens`` (needs ``tokenizer``): prompts lose their oldest turns until they fit,
    as in SFT and evaluation (:func:`safecrs_core.train.sft.fit_prompt`); a prompt that cannot fit
    stays whole. ``evidence`` (an :class:`~safecrs_core.train.prompts.EvidencePrompts`): evidence
    prompts (candidates with oracle evidence)."""
    from datasets import Dataset

    from .prompts import build_messages

    fit = None
    if max_prompt_tokens is not None:
        if tokenizer is None:
            raise ValueError("max_prompt_tokens needs the tokenizer")
        from .sft import fit_prompt
        fit = lambda msgs: fit_prompt(msgs, tokenizer, max_prompt_tokens) or msgs  # noqa: E731

    size = len(rows)
    if size == 0:
        raise ValueError("no rows to train on")
    order = list(range(size))
    if n is not None and n < size:
        order = sorted(np.random.default_rng(seed).choice(size, n, replace=False).tolist())
    cols = {c: column(rows, c) for c in ("id", "turns", "trait", "targets", "seen")}
    if any(t is None for t in cols["trait"]) or any(t is None for t in cols["turns"]):
        raise ValueError("every row needs 'turns' and 'trait'")
    extra = [{}] * len(order)
    if evidence is not None:
        picked = [rows[i] for i in order] if not hasattr(rows, "select") else rows.select(order)
        extra = evidence.kwargs(picked)
    data = []
    for i, kw in zip(order, extra):
        prompt = build_messages(cols["turns"][i], k=k, domain=domain, **kw)
        data.append({
            "prompt": fit(prompt) if fit else prompt,
            "id": str(cols["id"][i]) if cols["id"][i] is not None else str(i),
            "trait": cols["trait"][i],
            "targets": [{"item_id": x} for x in sorted(ref_ids(cols["targets"][i]))],
            "seen": [{"item_id": x} for x in sorted(ref_ids(cols["seen"][i]))],
        })
    return Dataset.from_list(data)


def build_trainer(params: GDPOParams, model, tokenizer, rows, catalog, oracle, output_dir: str | os.PathLike,
                  callbacks: Sequence | None = None, evidence=None, **config_overrides) -> SafeGDPOTrainer:
    """A :class:`SafeGDPOTrainer` for ``params`` on an in-memory ``model`` and ``tokenizer``.
    A PEFT model is merged first when ``params.lora`` asks for a new adapter. ``evidence``: the
    :class:`~safecrs_core.train.prompts.EvidencePrompts` of ``params.evidence`` (see :func:`train_gdpo`).
    ``catalog``, ``oracle`` (and the evidence's) must be of ``params.domain``."""
    _check_evidence(params, evidence)
    resolve_domain(params.domain, ("catalog", catalog), ("oracle", oracle),
                   ("evidence catalog", getattr(evidence, "catalog", None)),
                   ("evidence oracle", getattr(evidence, "oracle", None)))
    if params.lora and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if params.beta != 0.0 and not params.lora:
        reference_checkpoint(model, Path(output_dir) / "reference_model")
    dataset = build_dataset(rows, k=params.k, domain=params.domain, n=params.n_train, seed=params.seed,
                            tokenizer=tokenizer, max_prompt_tokens=params.max_prompt_tokens, evidence=evidence)
    args = params.grpo_config(output_dir, **config_overrides)
    from .grounding import decoder_for
    decoder = decoder_for(params.grounding, catalog, tokenizer, rows, k=params.k,
                          candidates=None if evidence is None else evidence.ids)
    with _quiet_deprecations():
        trainer = SafeGDPOTrainer(model, params.rank_rewards(catalog, oracle), args, level=params.level,
                                  decoder=decoder, train_dataset=dataset, processing_class=tokenizer,
                                  peft_config=params.peft_config(), callbacks=list(callbacks or []))
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)  # per-step logs stay in trainer.state.log_history
    return trainer


def _check_evidence(params: GDPOParams, evidence) -> None:
    """``evidence`` must be given exactly when ``params.evidence`` (or ``params.candidates``) is
    set, with those settings."""
    wanted, name = (params.candidates, "candidates") if params.candidates is not None else (params.evidence, "evidence")
    if wanted is None:
        if evidence is not None:
            raise ValueError("evidence prompts were passed but params.evidence is None: set "
                             "GDPOParams(evidence={...}) so that they key the stage")
        return
    if evidence is None:
        hint = ("candidates.context_prompts(params.candidates, ds, catalog)" if name == "candidates" else
                "candidates.evidence_prompts(ds, catalog, oracle, **params.evidence)")
        raise ValueError(f"params.{name} is set: pass evidence={hint}")
    got = getattr(evidence, "settings", None)
    if got != wanted or getattr(evidence, "verdicts", True) != (name == "evidence"):
        raise ValueError(f"the prompts were built with {got}, but params.{name} is {wanted}")


def reference_checkpoint(model, folder: str | os.PathLike) -> None:
    """trl builds the KL reference of a fully fine-tuned model with ``from_pretrained`` from
    ``model.config._name_or_path``; an in-memory model without a local checkpoint (the tiny model,
    a merged adapter) is saved to ``folder`` first and its config pointed there."""
    name = getattr(model.config, "_name_or_path", "") or ""
    if name and (Path(name) / "config.json").is_file():
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    model.config._name_or_path = str(folder.resolve())


def _load_base(model_or_stage) -> tuple[Any, Any, dict]:
    """``(model, tokenizer, base reference)`` for a model name or a completed stage folder."""
    from ..pipeline import is_done, read_manifest, stage_ref

    if isinstance(model_or_stage, (str, os.PathLike)) and Path(model_or_stage).is_dir():
        path = Path(model_or_stage)
        if not is_done(path):
            raise ValueError(f"{path} is not a completed stage folder (no DONE.json)")
        stage = read_manifest(path).get("stage")
        if stage == "gdpo":
            model, tok = load_gdpo_model(path)
        else:
            from .sft import load_sft_model
            loaded = load_sft_model(path)
            model, tok = loaded[0], loaded[1]
        return model, tok, {"kind": "stage", "stage": stage, "ref": stage_ref(path), "path": str(path.resolve())}
    if isinstance(model_or_stage, str):
        from .models import load_model, resolve_model_name
        model, tok = load_model(model_or_stage)
        return model, tok, {"kind": "model", "name": resolve_model_name(model_or_stage)}
    raise TypeError("model_or_stage must be a model name or a completed stage folder (SFT or GDPO); for an "
                    "in-memory model use build_trainer()")


def _base_input(model_or_stage) -> str:
    from .models import resolve_model_name
    from ..pipeline import input_id, is_done

    if isinstance(model_or_stage, (str, os.PathLike)) and Path(model_or_stage).is_dir():
        if not is_done(model_or_stage):
            raise ValueError(f"{model_or_stage} is not a completed stage folder (no DONE.json)")
        return input_id(Path(model_or_stage))
    if isinstance(model_or_stage, str):
        return f"model:{resolve_model_name(model_or_stage)}"
    raise TypeError("model_or_stage must be a model name or a completed stage folder")


def _stage_inputs(model_or_stage, rows, evidence=None) -> list[str]:
    inputs = [_base_input(model_or_stage), f"rows:{rows_fingerprint(rows)}"]
    if evidence is not None:
        inputs.append(f"candidates:{evidence.candidates_ref}")
    return inputs


def gdpo_stage_dir(params: GDPOParams, model_or_stage, rows, evidence=None) -> Path:
    """The folder of the ``gdpo`` stage :func:`train_gdpo` trains for these arguments, built or
    not, found without building anything."""
    from ..pipeline import stage_dir, stage_key

    return stage_dir("gdpo", stage_key("gdpo", params.to_params(), _stage_inputs(model_or_stage, rows, evidence)))


def train_gdpo(params: GDPOParams, model_or_stage, rows, *, catalog=None, oracle=None, force: bool = False,
               keep_checkpoints: bool = False, callbacks: Sequence | None = None, evidence=None,
               log: Callable[[str], Any] | None = print) -> Path:
    """Train Safe-GDPO from ``model_or_stage`` (a model name, or a completed SFT/GDPO stage
    folder) on SafeRec ``rows``; cached as ``artifacts/gdpo/<key>/`` keyed by ``params``, the
    base model and a fingerprint of ``rows``.

    The stage holds ``model/`` (the LoRA adapter with the tokenizer, or the full model without
    LoRA), ``gdpo.json`` (parameters, base model reference) and ``log_history.json`` (trl's
    per-step logs). Checkpoints go to ``artifacts/gdpo/.<key>.checkpoints/`` every
    ``params.save_steps`` steps; an interrupted run resumes from the last one, and the folder is
    removed when the stage completes (unless ``keep_checkpoints``). ``callbacks``: extra
    transformers ``TrainerCallback`` objects (progress display); they do not key the stage.
    ``evidence``: with ``params.evidence`` set, the matching
    :class:`~safecrs_core.train.prompts.EvidencePrompts` (``candidates.evidence_prompts(ds, catalog,
    oracle, **params.evidence)``); its candidate source is then an input of the stage.
    ``catalog``/``oracle`` default to those of ``params.domain``."""
    from ..pipeline import run_stage

    _check_evidence(params, evidence)
    resolve_domain(params.domain, ("catalog", catalog), ("oracle", oracle))
    inputs = _stage_inputs(model_or_stage, rows, evidence)
    final = gdpo_stage_dir(params, model_or_stage, rows, evidence)
    ckpt = final.parent / f".{final.name}.checkpoints"
    say = log or (lambda _m: None)

    def fn(tmp: Path):
        from transformers.trainer_utils import get_last_checkpoint

        from ..world import World
        world = World.of(params.domain, catalog, oracle)
        cat, orc = world.catalog, world.oracle
        model, tok, base = _load_base(model_or_stage)
        ckpt.mkdir(parents=True, exist_ok=True)
        trainer = build_trainer(params, model, tok, rows, cat, orc, ckpt, callbacks=callbacks, evidence=evidence)
        last = get_last_checkpoint(str(ckpt))
        if last:
            say(f"[gdpo] resuming from {last}")
        t0 = time.perf_counter()
        with _quiet_deprecations():
            result = trainer.train(resume_from_checkpoint=last)
        seconds = time.perf_counter() - t0
        out = tmp / "model"
        trainer.model.save_pretrained(out)
        tok.save_pretrained(out)
        history = trainer.state.log_history
        (tmp / "log_history.json").write_text(json.dumps(history, indent=1, default=float))
        (tmp / "gdpo.json").write_text(json.dumps({"params": params.to_params(), "base": base,
                                                   "adapter": bool(params.lora)}, indent=2))
        if not keep_checkpoints:
            shutil.rmtree(ckpt, ignore_errors=True)
        rewards = [h for h in history if "reward" in h]
        return {"steps": int(trainer.state.global_step), "train_seconds": round(seconds, 1),
                "train_loss": float(result.training_loss),
                "last_reward": rewards[-1]["reward"] if rewards else None}

    return run_stage("gdpo", params.to_params(), inputs, fn, force=force, log=log)


def load_gdpo_model(stage_dir: str | os.PathLike, device: str | torch.device | None = None):
    """``(model, tokenizer)`` of a completed :func:`train_gdpo` stage, in eval mode; a LoRA
    adapter is loaded onto its base model and merged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import prepare_tokenizer, to_device
    from ..pipeline import is_done

    path = Path(stage_dir)
    if not is_done(path):
        raise ValueError(f"{path} is not a completed stage folder (no DONE.json)")
    meta = json.loads((path / "gdpo.json").read_text())
    if meta.get("adapter"):
        from peft import PeftModel
        base, _, _ = _load_base(meta["base"]["path"] if meta["base"]["kind"] == "stage" else meta["base"]["name"])
        model = PeftModel.from_pretrained(base, path / "model").merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path / "model")
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path / "model"))
    to_device(model, device)
    model.eval()
    return model, tok


# --------------------------------------------------------------------------------------------
# Notebook helpers

ABLATIONS = {
    "grpo": {"mode": "grpo"},
    "sequence": {"level": "sequence"},
    "no_safety": {"use_safety": False},
    "no_count": {"use_count": False},
}
ABLATION_LABELS = {"grpo": "GRPO", "sequence": "sequence-level", "no_safety": "no safety reward",
                   "no_count": "no count reward"}  # how the tables name them


def ablations_of(params: Mapping[str, Any]) -> list[str]:
    """The :data:`ABLATIONS` a stage's ``params`` (its manifest's) switch on, in their order;
    a parameter a manifest lacks has its :class:`GDPOParams` default."""
    defaults = GDPOParams()
    return [name for name, change in ABLATIONS.items()
            if all(params.get(key, getattr(defaults, key)) == value for key, value in change.items())]


def ablation_params(params: GDPOParams, names: Sequence[str] = tuple(ABLATIONS)) -> dict[str, GDPOParams]:
    """``{name: params with one switch changed}`` for the ablations :data:`ABLATIONS`: GRPO's
    summed-reward normalisation, sequence-level advantages, no safety reward, no count reward.
    Reward weights are dropped when the number of rewards changes."""
    out = {}
    for name in names:
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
        change = dict(ABLATIONS[name])
        trial = dataclasses.replace(params, reward_weights=None, **change)
        keep = params.reward_weights is not None and len(trial.reward_names) == len(params.reward_names)
        out[name] = dataclasses.replace(trial, reward_weights=params.reward_weights) if keep else trial
    return out


def training_log(stage_dir: str | os.PathLike) -> "pd.DataFrame":
    """Per-step training log of a ``gdpo`` stage (trl's metrics; one row per logged step)."""
    import pandas as pd

    hist = json.loads((Path(stage_dir) / "log_history.json").read_text())
    rows = [h for h in hist if "step" in h and "reward" in h]
    return pd.DataFrame(rows).set_index("step")


TRAINING_PANELS = {
    "rank_rewards/hits_mean": "hits per list",
    "rank_rewards/penalty_mean": "safety penalty per list",
    "rank_rewards/list_length_mean": "items per list",
    "rank_rewards/unparseable_frac": "unparseable share",
    "kl": "KL to the start model",
}


def plot_training(logs: Mapping[str, "pd.DataFrame"], window: int = 5):
    """One panel per :data:`TRAINING_PANELS` metric, one line per run (``{label: training_log}``),
    smoothed with a centred rolling mean of ``window`` steps."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TRAINING_PANELS), figsize=(3.2 * len(TRAINING_PANELS), 3.0), squeeze=False)
    for ax, (col, title) in zip(axes[0], TRAINING_PANELS.items()):
        for label, df in logs.items():
            if col in df:
                ax.plot(df.index, df[col].rolling(window, min_periods=1, center=True).mean(), label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig

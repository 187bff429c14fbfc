"""Rank-level rewards of Safe-GDPO: relevance, safety and list length, one value per rank.

Every completion is parsed once with :func:`~safecrs_core.train.prompts.parse_completion` (titles
resolved with the one resolver, :class:`~safecrs_core.data.catalog.Catalog`), keeping the first ``k``
distinct items. For a completion with items ``i_1 .. i_n`` (``n <= k``) and a benchmark row with
``targets``, ``seen`` and ``trait``, each reward is a float tensor shaped ``(completions, k)``;
rank ``r`` (1-based) is column ``r - 1`` and ranks without an item hold 0 (the count reward
excepted, see below):

``relevance_hits``
    ``hit[r] = 1`` if ``i_r`` resolves to a target item of the row and is not among the row's
    seen items, else 0.
``safety_penalty``
    ``-lambda_safe * v[r] * d[r]`` with the rank discount ``d[r] = 1 / log2(r + 1)`` and ``v[r] = 1``
    when the Safety Oracle judges ``i_r`` unsafe for the row's trait. Items with an ``unknown``
    verdict (unresolved titles included: they are outside the catalog) get
    ``v[r] = unknown_penalty`` (default 0: no penalty); they are counted either way. An unsafe
    item at rank 1 costs ``lambda_safe``, at rank 5 ``lambda_safe / log2(6) = 0.39 lambda_safe``.
``count_reward``
    A per-sequence value broadcast to all ``k`` ranks: ``+lambda_count`` when the list has the
    target length ``n* = target_length`` (default ``k``), else ``-lambda_count * |n - n*| / n*``;
    an unparseable completion (no item at all) gets ``-lambda_count``. Here ``n`` counts the
    distinct items the completion lists, beyond ``k`` too (the parser's ``n_over_k``), so an
    over-long list is penalised although only its first ``k`` items are ranked.

The ``lambda`` scales only matter where rewards are summed before normalisation (GRPO, and
GDPO's weighted sum through ``weights``): GDPO normalises each reward within its group, which
removes a positive scale.

:class:`RankRewards` computes all three for a batch of ``(completion, row)`` pairs with one parse
per completion and keeps per-batch logs (:attr:`RankRewardBatch.logs`). Its
:meth:`~RankRewards.reward_functions` are trl reward functions (``fn(prompts, completions,
**kwargs) -> list[float]``; the row fields ``targets``, ``seen``, ``trait`` come from the
dataset columns as keyword arguments) that return per-sequence values: the number of hits, the
summed (discounted) safety penalty and the count reward. They share one cache, so a trainer
calling all of them parses each completion once, and the rank-level trainer
(:class:`~safecrs_core.train.gdpo.SafeGDPOTrainer`) reads the per-rank tensors of the same batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..safety.oracle import UNKNOWN, UNSAFE
from .prompts import ParsedList, parse_completion
from ..data.rows import ref_ids

REWARD_NAMES = ("relevance", "safety", "count")
ROW_FIELDS = ("id", "trait", "targets", "seen")


# --------------------------------------------------------------------------------------------
# Helpers


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def rank_discount(k: int) -> torch.Tensor:
    """``d[r] = 1 / log2(r + 1)`` for ranks ``r = 1 .. k`` (float32, shape ``(k,)``)."""
    k = _check_k(k)
    return 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64)).float()


def completion_text(completion: Any) -> str:
    """The text of a completion as trl passes it: a string, or a list of chat messages (the
    contents of the assistant messages are joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)):
        parts = []
        for m in completion:
            if not isinstance(m, Mapping):
                raise TypeError(f"completion messages must be dicts, got {type(m).__name__}")
            content = m.get("content", "")
            if isinstance(content, list):  # content blocks
                content = "".join(b.get("text", "") for b in content if isinstance(b, Mapping))
            parts.append(content or "")
        return "".join(parts)
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def parse_many(texts: Sequence[str], resolver: Any, k: int) -> list[ParsedList]:
    """:func:`~safecrs_core.train.prompts.parse_completion` of each text, first ``k`` items kept."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    k = _check_k(k)
    return [parse_completion(t, resolver=resolver, k=k) for t in texts]


def _check_pairs(parsed: Sequence[ParsedList], rows: Sequence[Mapping]) -> None:
    if len(parsed) != len(rows):
        raise ValueError(f"{len(parsed)} completions for {len(rows)} rows")


# --------------------------------------------------------------------------------------------
# The three rewards


def relevance_hits(parsed: Sequence[ParsedList], rows: Sequence[Mapping], k: int) -> torch.Tensor:
    """``(completions, k)``: 1 where the item at that rank is a target of the row and not seen."""
    k = _check_k(k)
    _check_pairs(parsed, rows)
    out = torch.zeros(len(parsed), k)
    for i, (p, row) in enumerate(zip(parsed, rows)):
        targets, seen = ref_ids(row.get("targets")), ref_ids(row.get("seen"))
        for j, item in enumerate(p.items[:k]):
            if item.item_id is not None and item.item_id in targets and item.item_id not in seen:
                out[i, j] = 1.0
    return out


def safety_verdicts(parsed: Sequence[ParsedList], rows: Sequence[Mapping], oracle: Any, k: int) -> np.ndarray:
    """``(completions, k)`` int8 oracle codes (SAFE 0, UNSAFE 1, UNKNOWN 2) of each ranked item for
    its row's trait; -1 where a rank holds no item. Unresolved items are UNKNOWN."""
    k = _check_k(k)
    _check_pairs(parsed, rows)
    codes = np.full((len(parsed), k), -1, dtype=np.int8)
    where, ids, traits = [], [], []
    for i, (p, row) in enumerate(zip(parsed, rows)):
        trait = row.get("trait")
        if not trait:
            raise ValueError(f"row {i} has no 'trait'")
        for j, item in enumerate(p.items[:k]):
            where.append((i, j))
            ids.append(item.item_id)
            traits.append(trait)
    if ids:
        v, _ = oracle.check(ids, traits)
        rr, cc = zip(*where)
        codes[list(rr), list(cc)] = v
    return codes


def safety_penalty(parsed: Sequence[ParsedList], rows: Sequence[Mapping], oracle: Any, k: int,
                   lambda_safe: float = 1.0, unknown_penalty: float = 0.0,
                   return_counts: bool = False):
    """``(completions, k)``: ``-lambda_safe * v[r] / log2(r + 1)``, ``v`` = 1 for unsafe items,
    ``unknown_penalty`` for unknown ones, 0 for safe ones and empty ranks.

    With ``return_counts`` returns ``(penalty, {"unsafe": int, "unknown": int})``."""
    if not (np.isfinite(lambda_safe) and lambda_safe >= 0):
        raise ValueError(f"lambda_safe must be a finite number >= 0, got {lambda_safe!r}")
    if not (np.isfinite(unknown_penalty) and 0 <= unknown_penalty <= 1):
        raise ValueError(f"unknown_penalty must be in [0, 1], got {unknown_penalty!r}")
    codes = safety_verdicts(parsed, rows, oracle, k)
    penalty = _penalty_from_codes(codes, lambda_safe, unknown_penalty)
    if return_counts:
        return penalty, {"unsafe": int((codes == UNSAFE).sum()), "unknown": int((codes == UNKNOWN).sum())}
    return penalty


def _penalty_from_codes(codes: np.ndarray, lambda_safe: float, unknown_penalty: float) -> torch.Tensor:
    c = torch.from_numpy(codes.astype(np.int64))
    v = (c == UNSAFE).float() + float(unknown_penalty) * (c == UNKNOWN).float()
    out = -float(lambda_safe) * v * rank_discount(codes.shape[1]).unsqueeze(0)
    return out + 0.0  # no negative zeros


def list_lengths(parsed: Sequence[ParsedList]) -> np.ndarray:
    """Distinct items each completion lists, those beyond ``k`` included."""
    return np.array([len(p.items) + p.n_over_k for p in parsed], dtype=np.int64)


def count_reward(parsed: Sequence[ParsedList], k: int, lambda_count: float = 1.0,
                 target_length: int | None = None) -> torch.Tensor:
    """``(completions, k)``: the per-sequence count reward broadcast to every rank (see the
    module docstring): ``+lambda_count`` for ``n == n*``, else ``-lambda_count * |n - n*| / n*``;
    ``-lambda_count`` when nothing could be parsed."""
    k = _check_k(k)
    n_star = k if target_length is None else _check_k(target_length)
    if not (np.isfinite(lambda_count) and lambda_count >= 0):
        raise ValueError(f"lambda_count must be a finite number >= 0, got {lambda_count!r}")
    n = list_lengths(parsed)
    value = np.where(n == n_star, 1.0, -np.abs(n - n_star) / n_star)
    value = np.where(n == 0, -1.0, value) * float(lambda_count)
    return torch.tensor(value, dtype=torch.float32).unsqueeze(1).expand(len(parsed), k).contiguous()


# --------------------------------------------------------------------------------------------
# A batch of rewards


@dataclass
class RankRewardBatch:
    """The rewards of one batch. ``hits``, ``penalty``, ``count``: ``(N, k)`` float tensors;
    ``names``: the rewards switched on, in :data:`REWARD_NAMES` order; ``codes``: oracle codes per
    rank (-1: no item); ``completion_ids``: the generated token ids when given (for token
    alignment)."""

    texts: list[str]
    parsed: list[ParsedList]
    hits: torch.Tensor
    penalty: torch.Tensor
    count: torch.Tensor
    codes: np.ndarray
    names: tuple[str, ...]
    completion_ids: list[list[int]] | None = None
    logs: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def per_rank(self, name: str) -> torch.Tensor:
        """``(N, k)`` tensor of reward ``name``."""
        return {"relevance": self.hits, "safety": self.penalty, "count": self.count}[_check_name(name)]

    def sequence(self, name: str) -> torch.Tensor:
        """``(N,)`` per-sequence value: hits and penalties summed over ranks; the count reward as is."""
        x = self.per_rank(name)
        return x[:, 0].clone() if name == "count" else x.sum(dim=1)

    @property
    def rewards(self) -> torch.Tensor:
        """``(R, N, k)``: the switched-on rewards stacked in :attr:`names` order."""
        return torch.stack([self.per_rank(n) for n in self.names])


def _check_name(name: str) -> str:
    if name not in REWARD_NAMES:
        raise ValueError(f"unknown reward {name!r}; known: {', '.join(REWARD_NAMES)}")
    return name


class RankRewards:
    """All rank-level rewards of a batch from one parse per completion.

    ``catalog``: the resolver; ``oracle``: the Safety Oracle; ``k``: ranks scored (and the target
    length unless ``target_length``); ``use_relevance``/``use_safety``/``use_count`` switch
    rewards off for ablations (they are still computed and logged, but neither returned by
    :attr:`RankRewardBatch.rewards` nor offered as trl reward functions).
    """

    def __init__(self, catalog: Any, oracle: Any, k: int = 10, lambda_safe: float = 1.0,
                 lambda_count: float = 1.0, unknown_penalty: float = 0.0, target_length: int | None = None,
                 use_relevance: bool = True, use_safety: bool = True, use_count: bool = True):
        if catalog is None or not hasattr(catalog, "resolve"):
            raise TypeError("catalog must be a resolver with .resolve(title, year) (a Catalog)")
        if oracle is None or not hasattr(oracle, "check"):
            raise TypeError("oracle must have .check(item_ids, trait_ids) (an Oracle)")
        self.catalog, self.oracle = catalog, oracle
        self.k = _check_k(k)
        self.target_length = self.k if target_length is None else _check_k(target_length)
        for name, v in (("lambda_safe", lambda_safe), ("lambda_count", lambda_count)):
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (np.isfinite(unknown_penalty) and 0 <= unknown_penalty <= 1):
            raise ValueError(f"unknown_penalty must be in [0, 1], got {unknown_penalty!r}")
        self.lambda_safe, self.lambda_count = float(lambda_safe), float(lambda_count)
        self.unknown_penalty = float(unknown_penalty)
        on = {"relevance": use_relevance, "safety": use_safety, "count": use_count}
        self.names = tuple(n for n in REWARD_NAMES if on[n])
        if not self.names:
            raise ValueError("at least one reward must be switched on")
        self.last: RankRewardBatch | None = None

    def __repr__(self) -> str:
        return (f"RankRewards(k={self.k}, rewards={list(self.names)}, lambda_safe={self.lambda_safe}, "
                f"lambda_count={self.lambda_count}, unknown_penalty={self.unknown_penalty})")

    def __call__(self, completions: Sequence[Any], rows: Sequence[Mapping],
                 completion_ids: Sequence[Sequence[int]] | None = None,
                 log_metric: Callable[[str, float], Any] | None = None) -> RankRewardBatch:
        """Rewards of ``completions`` (strings or chat messages) against ``rows`` (dicts with
        ``trait``, ``targets``, ``seen``). The batch is kept in :attr:`last`; calling again with
        the same completions, rows and ids returns it without parsing again. ``log_metric``
        (trl's ``log_metric`` keyword) receives the batch logs once."""
        if isinstance(completions, str):
            raise TypeError("completions must be a list, not one string")
        texts = [completion_text(c) for c in completions]
        rows = list(rows)
        if len(texts) != len(rows):
            raise ValueError(f"{len(texts)} completions for {len(rows)} rows")
        ids = None if completion_ids is None else [list(map(int, x)) for x in completion_ids]
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(ids)} completion_ids for {len(texts)} completions")
        key = (tuple(texts), tuple(_row_key(r) for r in rows), None if ids is None else tuple(map(tuple, ids)))
        if self.last is not None and getattr(self.last, "_key", None) == key:
            return self.last
        parsed = parse_many(texts, self.catalog, self.k)
        hits = relevance_hits(parsed, rows, self.k)
        codes = safety_verdicts(parsed, rows, self.oracle, self.k)
        penalty = _penalty_from_codes(codes, self.lambda_safe, self.unknown_penalty)
        count = count_reward(parsed, self.k, self.lambda_count, self.target_length)
        lengths = list_lengths(parsed)
        n = max(len(texts), 1)
        logs = {
            "hits_mean": float(hits.sum()) / n,
            "penalty_mean": float(penalty.sum()) / n,
            "count_mean": float(count[:, 0].sum()) / n if len(texts) else 0.0,
            "list_length_mean": float(lengths.sum()) / n,
            "unsafe_items": int((codes == UNSAFE).sum()),
            "unknown_items": int((codes == UNKNOWN).sum()),
            "unresolved_items": int(sum(it.item_id is None for p in parsed for it in p.items)),
            "unparseable_frac": float((lengths == 0).sum()) / n,
        }
        batch = RankRewardBatch(texts, parsed, hits, penalty, count, codes, self.names, ids, logs)
        batch._key = key  # type: ignore[attr-defined]
        self.last = batch
        if log_metric is not None:
            for name, value in logs.items():
                log_metric(f"rank_rewards/{name}", float(value))
        return batch

    def reward_functions(self) -> list["SequenceReward"]:
        """trl reward functions, one per switched-on reward (named ``relevance``, ``safety``,
        ``count``), returning per-sequence values (:meth:`RankRewardBatch.sequence`)."""
        return [SequenceReward(self, name) for name in self.names]


def _row_key(row: Mapping) -> tuple:
    return (row.get("id"), row.get("trait"), tuple(sorted(ref_ids(row.get("targets")))),
            tuple(sorted(ref_ids(row.get("seen")))))


def rows_from_kwargs(n: int, kwargs: Mapping[str, Any]) -> list[dict]:
    """The benchmark rows of a trl reward call: dataset columns arrive as keyword arguments, one
    list entry per completion. ``trait`` and ``targets`` are required; ``seen`` and ``id``
    optional."""
    missing = [c for c in ("trait", "targets") if c not in kwargs]
    if missing:
        raise KeyError(f"reward functions need the dataset columns {missing} (keep them in the train "
                       "dataset and set remove_unused_columns=False)")
    rows = []
    for i in range(n):
        rows.append({c: (kwargs[c][i] if kwargs.get(c) is not None else None) for c in ROW_FIELDS if c in kwargs})
    for c in ROW_FIELDS:
        if c in kwargs and kwargs[c] is not None and len(kwargs[c]) != n:
            raise ValueError(f"column {c!r} has {len(kwargs[c])} values for {n} completions")
    return rows


class SequenceReward:
    """One reward of a :class:`RankRewards` as a trl reward function (per-sequence values)."""

    def __init__(self, rank_rewards: RankRewards, name: str):
        self.rank_rewards = rank_rewards
        self.name = _check_name(name)
        self.__name__ = name

    def __repr__(self) -> str:
        return f"SequenceReward({self.name!r})"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 completion_ids: Sequence[Sequence[int]] | None = None, **kwargs) -> list[float]:
        rows = rows_from_kwargs(len(completions), kwargs)
        batch = self.rank_rewards(completions, rows, completion_ids=completion_ids,
                                  log_metric=kwargs.get("log_metric"))
        values = batch.sequence(self.name).tolist()
        if not all(math.isfinite(v) for v in values):
            raise RuntimeError(f"reward {self.name} produced a non-finite value")
        return values

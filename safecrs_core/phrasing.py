"""Sensitivity phrasings: how a SafeRec user voices their trait in the last turn
(package data ``data/phrasings.json``).

Each trait has *explicit* templates (the user states the rule) and *implicit* ones (the user only
hints at it). Every template belongs to a fixed pool: ``train`` templates serve the train and
validation splits, ``test`` templates are held out for the test split.
"""
from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from pathlib import Path

STYLES = ("explicit", "implicit")
POOLS = ("train", "test")
SPLIT_POOL = {"train": "train", "validation": "train", "val": "train", "valid": "train", "dev": "train", "test": "test"}
PREPEND_SHARE = 0.2  # share of inject() calls that put the sentence before the user's text

# the user's text needs no period after it: sentence punctuation (maybe inside quotes/brackets), a
# smiley, or a symbol such as an emoji
_CLOSED = re.compile(r"(?:[.!?\u2026]['\"\u2019\u201d)\]]*|[:;=]-?[()DPpO3]|[^\w\s'\"\u2019\u201d)\],;])$")


@lru_cache(maxsize=1)
def _raw() -> dict:
    return json.loads((Path(__file__).parent / "data" / "phrasings.json").read_text())["templates"]


def _check_style(style: str | None) -> None:
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown style {style!r}; valid styles: {', '.join(STYLES)}")


def _entries(trait_id: str, style: str) -> list[dict]:
    raw = _raw()
    if trait_id not in raw:
        raise KeyError(f"unknown trait id {trait_id!r}; valid ids: {', '.join(raw)}")
    return raw[trait_id][style]


def templates(trait_id: str, style: str | None = None, pool: str | None = None) -> list[str]:
    """Template sentences of a trait, optionally limited to one style and/or one pool.
    With ``style=None`` the explicit templates come first, then the implicit ones."""
    _check_style(style)
    if pool is not None and pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
    out = []
    for s in STYLES if style is None else (style,):
        out += [e["text"] for e in _entries(trait_id, s) if pool is None or e["pool"] == pool]
    return out


def pool_for_split(split: str) -> str:
    """The template pool a data split draws from: train/val/valid/dev -> ``train``, test -> ``test``."""
    key = split.strip().lower() if isinstance(split, str) else split
    if key not in SPLIT_POOL:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_POOL)}")
    return SPLIT_POOL[key]


def phrase(trait_id: str, split: str, rng: random.Random, style: str | None = None,
           implicit_share: float = 0.5) -> tuple[str, str, int]:
    """Draw one phrasing of a trait for a split: ``(sentence, style, index)``.

    The style is drawn with probability ``implicit_share`` for implicit when not given; the template
    is drawn uniformly from the split's pool. ``index`` is the template's position in
    ``templates(trait_id, style)`` (both pools)."""
    _check_style(style)
    if not 0.0 <= implicit_share <= 1.0:
        raise ValueError(f"implicit_share must be in [0, 1], got {implicit_share!r}")
    pool = pool_for_split(split)
    _entries(trait_id, STYLES[0])  # an unknown trait fails before any draw
    if style is None:
        style = "implicit" if rng.random() < implicit_share else "explicit"
    entries = _entries(trait_id, style)
    candidates = [i for i, e in enumerate(entries) if e["pool"] == pool]
    index = candidates[rng.randrange(len(candidates))]
    return entries[index]["text"], style, index


def inject(last_user_text: str, sentence: str, rng: random.Random,
           prepend_share: float = PREPEND_SHARE) -> str:
    """Put ``sentence`` into the user's last turn: after the text, or before it with probability
    ``prepend_share``. When the sentence follows, a period closes a user text that ends without
    sentence punctuation (a trailing comma or semicolon becomes one); the text is otherwise kept as is.
    An empty text gives the sentence alone. Always makes exactly one draw from ``rng``."""
    before = rng.random() < prepend_share
    text = (last_user_text or "").strip()
    sentence = sentence.strip()
    if not text:
        return sentence
    if not sentence:
        return text
    if before:
        return f"{sentence} {text}"
    if text[-1] in ",;":
        text = text[:-1].rstrip() + "."
    elif not _CLOSED.search(text):
        text += "."
    return f"{text} {sentence}"

"""Sensitivity phrasings: how a SafeRec user voices their trait in the last turn
(package data ``data/phrasings.json``).

Each trait has *explicit* templates (the user states the rule) and *implicit* ones (the user only
hints at it). Every template belongs to a fixed pool: ``train`` templates serve the train and
validation splits, ``test`` templates are held out for the test split.

The age constraints (``age_limit_g``, ...) share one set of templates (key ``"age"``) with an
``{age}`` placeholder, filled with the viewer's age as digits or as a number word, and ``{rating}``,
filled with the band's highest allowed MPAA letter; a template may be limited to some ages. Their
phrasing needs the age: ``phrase("age_limit_pg", split, rng, age=9)``.

The templates speak of films. Another domain (``domain="games"``) reuses them, same styles, pools
and indices, through the rewrites its plug-in gives (:mod:`safecrs_core.domains`; SafeGame's are listed in
the file: "movie night" -> "game night",
"movies" -> "games", ...); ``{rating}`` is then the domain's rating (the ESRB letter for games).
"""
from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from pathlib import Path

from ..data import package_file
from . import traits as T
from ..domains import get_domain

STYLES = ("explicit", "implicit")
POOLS = ("train", "test")
SPLIT_POOL = {"train": "train", "validation": "train", "val": "train", "valid": "train", "dev": "train", "test": "test"}
PREPEND_SHARE = 0.2  # share of inject() calls that put the sentence before the user's text

# the user's text needs no period after it: sentence punctuation (maybe inside quotes/brackets), a
# smiley, or a symbol such as an emoji
_CLOSED = re.compile(r"(?:[.!?\u2026]['\"\u2019\u201d)\]]*|[:;=]-?[()DPpO3]|[^\w\s'\"\u2019\u201d)\],;])$")


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@lru_cache(maxsize=1)
def _file() -> dict:
    return json.loads(package_file("phrasings.json").read_text())


def _raw() -> dict:
    return _file()["templates"]


def file_rewrites(domain: str) -> tuple:
    """The (pattern, replacement) pairs of ``data/phrasings.json`` for ``domain`` (key
    ``domains.<domain>.rewrite``), for a domain plug-in whose phrasings live in that file."""
    try:
        return tuple((a, b) for a, b in _file()["domains"][domain]["rewrite"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"data/phrasings.json: domains.{domain}.rewrite must be a list of [pattern, replacement] "
                         f"pairs ({exc!r})") from None


def _rewrites(domain: str) -> tuple[tuple[re.Pattern, str], ...]:
    return _compiled_rewrites(get_domain(domain))  # an unknown domain fails here


@lru_cache(maxsize=None)
def _compiled_rewrites(spec) -> tuple[tuple[re.Pattern, str], ...]:  # per Domain object, not per name
    domain = spec.name
    pairs = spec.phrasing_rewrites()
    try:
        return tuple((re.compile(a, re.I), b) for a, b in pairs)
    except (TypeError, ValueError, re.error) as exc:
        raise ValueError(f"domain {domain!r}: phrasing rewrites must be (pattern, replacement) pairs ({exc!r})") from None


def adapt(text: str, domain: str = "movies") -> str:
    """A template for ``domain``: the domain's rewrites applied in order, keeping a capital first
    letter (``"Movie night with my niece"`` -> ``"Game night with my niece"`` for games)."""
    for pat, repl in _rewrites(domain):
        text = pat.sub(lambda m: repl[:1].upper() + repl[1:] if m.group(0)[:1].isupper() else repl, text)
    return text


def _age_entries(style: str) -> list[dict]:
    return _file()["age"][style]


def _check_style(style: str | None) -> None:
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown style {style!r}; valid styles: {', '.join(STYLES)}")


def _entries(trait_id: str, style: str) -> list[dict]:
    """Template entries of a trait, or those of an age constraint that fit some age of its band."""
    if T.is_age_constraint(trait_id):
        band = T.get(trait_id)
        lo, hi = band.phrase_ages
        return [e for e in _age_entries(style) if _age_range(e)[0] <= hi and _age_range(e)[1] >= lo]
    raw = _raw()
    if trait_id not in raw:
        raise KeyError(f"unknown trait id {trait_id!r}; valid ids: {', '.join(list(raw) + list(T.AGE_CONSTRAINT_IDS))}")
    return raw[trait_id][style]


def _age_range(entry: dict) -> tuple[int, int]:
    ages = entry.get("ages")
    return (0, T.MAX_AGE) if ages is None else (int(ages[0]), int(ages[1]))


def age_words(age: int) -> str:
    """``9`` -> ``"nine"`` (0-20; larger ages stay digits)."""
    return _NUMBER_WORDS[age] if 0 <= age < len(_NUMBER_WORDS) else str(age)


def render(template: str, age: int, rating: str, words: bool = False) -> str:
    """Fill an age template: ``{age}`` with the age (digits, or a number word with ``words``) and
    ``{rating}`` with the highest allowed rating. Raises KeyError for any other placeholder."""
    values = {"age": age_words(age) if words else str(age), "rating": rating}

    def fill(m):
        if m.group(1) not in values:
            raise KeyError(f"unknown placeholder {{{m.group(1)}}} in template {template!r}")
        return values[m.group(1)]

    return _PLACEHOLDER.sub(fill, template)


def draw_age(constraint_id: str, rng: random.Random) -> int:
    """An age for phrasing an age constraint, uniform over its band's ``phrase_ages`` (one draw)."""
    if not T.is_age_constraint(constraint_id):
        raise ValueError(f"{constraint_id!r} is not an age constraint; valid: {', '.join(T.AGE_CONSTRAINT_IDS)}")
    lo, hi = T.get(constraint_id).phrase_ages
    return rng.randint(lo, hi)


def templates(trait_id: str, style: str | None = None, pool: str | None = None,
              domain: str = "movies") -> list[str]:
    """Template sentences of a trait, optionally limited to one style and/or one pool.
    With ``style=None`` the explicit templates come first, then the implicit ones. For an age
    constraint: the unfilled templates that fit some age of its band (see :func:`render`).
    ``domain``: the templates as rewritten for that domain (see the module doc)."""
    _check_style(style)
    if pool is not None and pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
    out = []
    for s in STYLES if style is None else (style,):
        out += [adapt(e["text"], domain) for e in _entries(trait_id, s) if pool is None or e["pool"] == pool]
    return out


def pool_for_split(split: str) -> str:
    """The template pool a data split draws from: train/val/valid/dev -> ``train``, test -> ``test``."""
    key = split.strip().lower() if isinstance(split, str) else split
    if key not in SPLIT_POOL:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_POOL)}")
    return SPLIT_POOL[key]


def phrase(trait_id: str, split: str, rng: random.Random, style: str | None = None,
           implicit_share: float = 0.5, age: int | None = None, domain: str = "movies") -> tuple[str, str, int]:
    """Draw one phrasing of a trait for a split: ``(sentence, style, index)``.

    The style is drawn with probability ``implicit_share`` for implicit when not given; the template
    is drawn uniformly from the split's pool. ``index`` is the template's position in
    ``templates(trait_id, style)`` (both pools).

    An age constraint needs ``age``, the viewer's age, inside the constraint's band: the template is
    drawn among those that fit the age, and the age is written as digits or as a number word (one
    more draw, even odds). ``age`` given for a trait is an error. ``domain``: see :func:`adapt`
    (the draws do not depend on it)."""
    _check_style(style)
    _rewrites(domain)  # an unknown domain fails before any draw
    if not 0.0 <= implicit_share <= 1.0:
        raise ValueError(f"implicit_share must be in [0, 1], got {implicit_share!r}")
    pool = pool_for_split(split)
    _entries(trait_id, STYLES[0])  # an unknown trait fails before any draw
    is_age = T.is_age_constraint(trait_id)
    if is_age:
        band = T.get(trait_id)
        if age is None or T.age_constraint(age) != trait_id:
            raise ValueError(f"{trait_id} needs the viewer's age, {band.min_age}-{band.max_age} years; got {age!r}")
    elif age is not None:
        raise ValueError(f"age is only for the age constraints ({', '.join(T.AGE_CONSTRAINT_IDS)}), not {trait_id!r}")
    if style is None:
        style = "implicit" if rng.random() < implicit_share else "explicit"
    entries = _entries(trait_id, style)
    candidates = [i for i, e in enumerate(entries) if e["pool"] == pool
                  and (not is_age or _age_range(e)[0] <= age <= _age_range(e)[1])]
    if not candidates:
        raise ValueError(f"no {style} {pool} template for {trait_id} at age {age}")
    index = candidates[rng.randrange(len(candidates))]
    text = adapt(entries[index]["text"], domain)
    if is_age:
        text = render(text, int(age), T.age_band_rating(trait_id, domain), words=rng.random() < 0.5)
    return text, style, index


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

"""The 20 SafeCRS sensitivity traits (package data ``data/traits.json``).

Each trait has our id, a short name and description, the paper's name and DoesTheDogDie avoid topics,
the paper's weights over the five Parents Guide categories (our severity *channels*), and the patterns
that count as a hard trigger in the keyword/genre/rating-reason signals available here.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CHANNELS = ("sex", "violence", "profanity", "substances", "frightening")


@dataclass(frozen=True)
class Trait:
    id: str
    name: str
    paper_name: str
    description: str
    ddd_topics: tuple[str, ...]
    pg_applicability: str  # strong | weak | very_weak_proxy | none (the paper's label)
    pg_weights: dict  # channel -> weight
    tag_triggers: tuple[str, ...]
    reason_triggers: tuple[str, ...]
    genre_triggers: tuple[str, ...]

    @property
    def has_severity(self) -> bool:
        """True when graded severity channels can evidence this trait (some weight > 0)."""
        return any(w > 0 for w in self.pg_weights.values())

    @property
    def uses_severity(self) -> bool:
        """Judged by severity here: the paper rates Parents Guide severity a strong or weak signal
        for it (``very_weak_proxy`` and ``none`` traits are judged by triggers alone)."""
        return self.has_severity and self.pg_applicability in ("strong", "weak")

    @property
    def signals(self) -> list[str]:
        """Which kinds of signal can evidence the trait (shown by ``safecrs traits``)."""
        out = []
        if self.tag_triggers:
            out.append("keyword tags")
        if self.reason_triggers:
            out.append("MPAA reason text")
        if self.genre_triggers:
            out.append("genre")
        if self.uses_severity:
            chans = [c for c in CHANNELS if self.pg_weights.get(c, 0) > 0]
            out.append("severity (" + ", ".join(chans) + ")")
        return out


@lru_cache(maxsize=1)
def _raw() -> dict:
    return json.loads((Path(__file__).parent / "data" / "traits.json").read_text())


@lru_cache(maxsize=1)
def all_traits() -> tuple[Trait, ...]:
    out = []
    for t in _raw()["traits"]:
        out.append(Trait(
            id=t["id"], name=t["name"], paper_name=t["paper_name"], description=t["description"],
            ddd_topics=tuple(t["ddd_topics"]), pg_applicability=t["pg_applicability"],
            pg_weights={c: float(t["pg_weights"].get(c, 0.0)) for c in CHANNELS},
            tag_triggers=tuple(t["tag_triggers"]), reason_triggers=tuple(t["reason_triggers"]),
            genre_triggers=tuple(t["genre_triggers"]),
        ))
    return tuple(out)


TRAIT_IDS: tuple[str, ...] = tuple(t.id for t in all_traits())


def get(trait_id: str) -> Trait:
    for t in all_traits():
        if t.id == trait_id:
            return t
    raise KeyError(f"unknown trait id {trait_id!r}; valid ids: {', '.join(TRAIT_IDS)}")


def parse_trait_list(text: str | list[str] | None) -> list[str]:
    """``"anti_gore,kid_safety"`` (or a list) -> validated ids; ``None``/``"all"`` -> all 20.
    Raises ValueError naming the bad ids and listing the valid ones."""
    if text is None or text == "all":
        return list(TRAIT_IDS)
    items = text.split(",") if isinstance(text, str) else list(text)
    ids = [s.strip() for s in items if s and s.strip()]
    bad = [s for s in ids if s not in TRAIT_IDS]
    if bad or not ids:
        raise ValueError(f"unknown trait id(s) {bad or [text]}; valid ids: {', '.join(TRAIT_IDS)}")
    return ids


@lru_cache(maxsize=None)
def compiled(trait_id: str, kind: str) -> re.Pattern | None:
    """One compiled alternation of a trait's ``tag``/``reason``/``genre`` trigger patterns."""
    t = get(trait_id)
    pats = {"tag": t.tag_triggers, "reason": t.reason_triggers, "genre": t.genre_triggers}[kind]
    if not pats:
        return None
    if kind == "genre":
        return re.compile(r"^(?:" + "|".join(re.escape(g) for g in pats) + r")$", re.I)
    return re.compile("|".join(f"(?:{p})" for p in pats), re.I)


def scale() -> dict:
    """Severity scale, threshold and formula recorded with the traits."""
    r = _raw()
    return {k: r[k] for k in ("severity_scale", "unsafe_threshold", "risk_formula", "channels")}

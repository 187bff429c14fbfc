"""The 20 SafeCRS sensitivity traits (package data ``data/traits.json``) and the age constraints
(package data ``data/age_ratings.json``).

Each trait has our id, a short name and description, the paper's name and DoesTheDogDie avoid topics,
the paper's weights over the five Parents Guide categories (our severity *channels*), and the patterns
that count as a hard trigger in the keyword/genre/rating-reason signals available here.

An *age constraint* ("it's for my 8-year-old") is not one of the paper's traits: it is one band of
audience ages with the highest MPAA letter allowed (under 8 -> G, under 13 -> PG, under 17 -> PG-13;
no restriction from 17). The Safety Oracle judges the bands as extra columns next to the traits, so
every id in :data:`CONSTRAINT_IDS` (traits, then age bands) works wherever a trait id does.
For games the same bands allow the ESRB and PEGI ratings of the file's ``games`` section that suit
each band's youngest age (:func:`game_rating_systems`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data import package_file
from ..domains import get_domain

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
    def kind(self) -> str:
        return "trait"  # an AgeConstraint says "age"

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
    return json.loads(package_file("traits.json").read_text())


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


@dataclass(frozen=True)
class AgeConstraint:
    """One age band: an audience aged ``min_age``..``max_age`` may watch films rated up to
    ``max_rating`` (an MPAA letter). Offers the fields of :class:`Trait` that describe a constraint
    (``id``, ``name``, ``description``, ``signals``, ``uses_severity``, ...), so code that lists or
    explains traits handles it too."""
    id: str
    name: str
    description: str
    min_age: int
    max_age: int
    max_rating: str
    phrase_ages: tuple[int, int]  # ages drawn when SafeRec phrases the constraint
    kind: str = "age"
    paper_name: str = ""  # not one of the paper's traits
    pg_applicability: str = "rating"  # judged by the MPAA letter alone
    has_severity: bool = False
    uses_severity: bool = False

    @property
    def signals(self) -> list[str]:
        return ["MPAA rating"]


@lru_cache(maxsize=1)
def _age_raw() -> dict:
    return json.loads(package_file("age_ratings.json").read_text())


@lru_cache(maxsize=1)
def age_constraints() -> tuple[AgeConstraint, ...]:
    """The movie age bands of ``data/age_ratings.json``, youngest first."""
    movies = _age_raw()["movies"]
    out = []
    for b in movies["bands"]:
        out.append(AgeConstraint(id=b["id"], name=b["name"], description=b["description"],
                                 min_age=int(b["min_age"]), max_age=int(b["max_age"]), max_rating=b["max_rating"],
                                 phrase_ages=(int(b["phrase_ages"][0]), int(b["phrase_ages"][1]))))
    # the bands must tile 0 .. no_limit_from_age - 1 without gaps or overlaps
    expect = 0
    for b in out:
        lo, hi = b.phrase_ages
        if b.min_age != expect or b.max_age < b.min_age or not b.min_age <= lo <= hi <= b.max_age:
            raise ValueError(f"data/age_ratings.json: band {b.id!r} does not continue the ages at {expect}")
        expect = b.max_age + 1
    if expect != int(movies["no_limit_from_age"]):
        raise ValueError("data/age_ratings.json: the bands must end where no_limit_from_age starts")
    return tuple(out)


AGE_CONSTRAINT_IDS: tuple[str, ...] = tuple(b.id for b in age_constraints())
CONSTRAINT_IDS: tuple[str, ...] = TRAIT_IDS + AGE_CONSTRAINT_IDS
MAX_AGE: int = int(_age_raw()["max_age"])
NO_LIMIT_FROM_AGE: int = int(_age_raw()["movies"]["no_limit_from_age"])


@lru_cache(maxsize=1)
def game_rating_systems() -> dict[str, dict]:
    """ESRB and PEGI as the game oracle reads them (``data/age_ratings.json``, key ``games``): per
    system (``"ESRB"``, ``"PEGI"``) its rating ``order`` (least restricted first) and ``band_max``,
    the highest rating each age constraint allows. A constraint covers every age of its band, so
    its limit is the system's limit at the band's youngest age (``age_limit_pg``, ages 8-12 -> ESRB
    E, PEGI 7). Raises ValueError naming the system and age when the system's bands leave an age
    uncovered or give a rating outside its order."""
    games = _age_raw().get("games")
    if not isinstance(games, dict):
        raise ValueError("data/age_ratings.json: no 'games' object with the ESRB and PEGI bands")
    out: dict[str, dict] = {}
    for key, spec in games.items():
        if key.startswith("_"):
            continue
        where = f"data/age_ratings.json: games.{key}"
        try:
            system, order = str(spec["system"]), tuple(str(x) for x in spec["order"])
            bands, limit_from = spec["bands"], int(spec["no_limit_from_age"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: needs system, order, bands and no_limit_from_age ({exc!r})") from None
        band_max = {}
        for b in age_constraints():
            age = b.min_age
            hit = [x for x in bands if int(x["min_age"]) <= age <= int(x["max_age"])]
            if age >= limit_from or len(hit) != 1:
                raise ValueError(f"{where}: age {age} (youngest of {b.id}) lies in {len(hit)} bands, expected one")
            rating = str(hit[0]["max_rating"])
            if rating not in order:
                raise ValueError(f"{where}: max_rating {rating!r} is not in its order {list(order)}")
            band_max[b.id] = rating
        out[system] = {"order": order, "band_max": band_max}
    return out


def age_band_rating(constraint_id: str, domain: str = "movies") -> str:
    """The highest rating an age constraint allows, as a user would name it: the MPAA letter for
    movies (``"PG"``), the ESRB letter for games (``"E"``): the domain plug-in's ``age_rating``."""
    band = get(constraint_id)
    if not isinstance(band, AgeConstraint):
        raise ValueError(f"{constraint_id!r} is not an age constraint; valid: {', '.join(AGE_CONSTRAINT_IDS)}")
    rating = get_domain(domain).age_rating  # an unknown domain fails here
    if rating is None:
        raise ValueError(f"domain {domain!r} names no ratings for age constraints")
    return rating(constraint_id)


def is_age_constraint(constraint_id: str) -> bool:
    return constraint_id in AGE_CONSTRAINT_IDS


def age_constraint(age: int) -> str | None:
    """The age-constraint id for an audience of ``age`` whole years (``None`` from 17 on: no limit).
    Raises ValueError for a negative age, one above :data:`MAX_AGE`, or a value that is not a whole
    number."""
    if isinstance(age, bool) or not isinstance(age, (int, np.integer)):
        if isinstance(age, (float, np.floating)) and float(age).is_integer():
            age = int(age)
        else:
            raise ValueError(f"age must be a whole number of years, got {age!r}")
    age = int(age)
    if age < 0 or age > MAX_AGE:
        raise ValueError(f"age must be between 0 and {MAX_AGE} years, got {age}")
    for b in age_constraints():
        if b.min_age <= age <= b.max_age:
            return b.id
    return None


def get(trait_id: str) -> Trait | AgeConstraint:
    """The :class:`Trait` or :class:`AgeConstraint` of an id in :data:`CONSTRAINT_IDS`."""
    for t in all_traits():
        if t.id == trait_id:
            return t
    for b in age_constraints():
        if b.id == trait_id:
            return b
    raise KeyError(f"unknown trait id {trait_id!r}; valid ids: {', '.join(CONSTRAINT_IDS)}")


def parse_trait_list(text: str | list[str] | None) -> list[str]:
    """``"anti_gore,kid_safety"`` (or a list) -> validated ids; ``None``/``"all"`` -> the 20 traits.
    Age-constraint ids (``age_limit_pg``, ...) are accepted too. Raises ValueError naming the bad
    ids and listing the valid ones."""
    if text is None or text == "all":
        return list(TRAIT_IDS)
    items = text.split(",") if isinstance(text, str) else list(text)
    ids = [s.strip() for s in items if s and s.strip()]
    bad = [s for s in ids if s not in CONSTRAINT_IDS]
    if bad or not ids:
        raise ValueError(f"unknown trait id(s) {bad or [text]}; valid ids: {', '.join(CONSTRAINT_IDS)}")
    return ids


@lru_cache(maxsize=None)
def compiled(trait_id: str, kind: str) -> re.Pattern | None:
    """One compiled alternation of a trait's ``tag``/``reason``/``genre`` trigger patterns."""
    t = get(trait_id)
    if not isinstance(t, Trait):
        return None  # age constraints have no trigger patterns
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

"""The Safety Oracle: evidence -> risk -> verdict, vectorised over items x traits.

The paper fuses a DoesTheDogDie hard trigger with an IMDb Parents Guide severity score::

    risk(item, trait) = max(trigger, sum_c w_c * s_c / (3 * sum_c w_c)),   unsafe iff risk >= 0.66

with severities ``s_c`` in 0..3 over five channels (sex, violence, profanity, substances,
frightening) and the paper's per-trait weights ``w``. Neither DoesTheDogDie nor the Parents Guide is
available here, so the same formula runs on these public stand-ins:

* **hard triggers** (risk 1.0): a trait's patterns matched against keyword tags (MovieLens tag-genome
  top tags, MovieLens user tags, TMDB keywords, IMDB-5000 plot keywords), the MPAA rating-reason
  text, and genres (``data/traits.json``);
* **severity channels**: Kids-In-Mind 0-10 scores (sex/nudity, violence/gore, language; 0 -> none,
  1-3 mild, 4-6 moderate, 7-10 severe), the MPAA rating-reason text (channel mentioned with an
  intensity word), the MPAA letter (an upper bound: G caps every channel at mild, PG at moderate,
  PG-13 caps sex at moderate), and the horror genre (frightening at least moderate).

The title/year sources (MPAA reasons, Kids-In-Mind) reach catalog items through the one resolver; a
row it matches only within its year tolerance is ignored when another row of the same file matches
that item at its exact year (a remake or re-release is a different film with its own rating).

Each channel is known as an interval ``[lo, hi]`` (``[0, 3]`` when nothing is known). The risk from
evidence is ``max(trigger, risk(lo))``; the verdict is

* ``unsafe`` if that risk >= threshold,
* ``safe`` only if the trait is evidenced by severity (paper applicability strong or weak), the item
  has severity evidence, and even the worst case ``max(trigger, risk(hi))`` stays below threshold,
* ``unknown`` otherwise — never counted as safe. Items outside the catalog are ``unknown``.

Traits whose paper applicability is ``very_weak_proxy`` (hate speech via profanity) or ``none`` are
judged by triggers alone, so they can be ``unsafe`` or ``unknown`` but never ``safe``.

**Age constraints** (:data:`traits.AGE_CONSTRAINT_IDS`, e.g. ``age_limit_pg`` for an audience under
13) are extra columns after the 20 traits, judged by the MPAA letter alone: every letter any source
gives the item is kept, and the strictest one counts. The item is ``unsafe`` (risk 1.0) when that
letter is above the band's highest allowed letter, ``safe`` (risk 0.0) when it is at or below it, and
``unknown`` when no source gives an MPAA letter (NR, Unrated, TV ratings and missing ratings). These
verdicts do not depend on the risk threshold.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from ..data import package_file
from ..data import sources
from . import traits as T
from ..data.catalog import load_catalog
from ..domains import DEFAULT as DEFAULT_DOMAIN
from ..domains import Domain, get_domain

SAFE, UNSAFE, UNKNOWN = 0, 1, 2
VERDICT_NAMES = ("safe", "unsafe", "unknown")
CH = {c: i for i, c in enumerate(T.CHANNELS)}
DEFAULT_THRESHOLD = 0.66
BRIEF_TAG_CHARS = 32  # longest evidence phrase of Oracle.brief

# MPAA letter -> per-channel upper bound of severity
LETTER_CAPS = {
    "G": {c: 1 for c in T.CHANNELS},
    "PG": {c: 2 for c in T.CHANNELS},
    "PG-13": {"sex": 2, "violence": 3, "profanity": 3, "substances": 3, "frightening": 3},
    "R": {c: 3 for c in T.CHANNELS},
    "NC-17": {c: 3 for c in T.CHANNELS},
}
# MPAA letters from least to most restricted: the order the age constraints compare in
RATING_ORDER = tuple(LETTER_CAPS)
_LETTER_ALIASES = {"PG13": "PG-13", "NC17": "NC-17", "GP": "PG", "M": "PG", "M/PG": "PG", "X": "NC-17"}

# MPAA reason text -> channel severity. Order matters: the first matching intensity wins.
_REASON_CHANNELS = {
    "violence": r"violen\w*|gore|gory|bloody|grisly|gruesome|brutal\w*|killings?|action|peril|war\b|battle|combat|fighting|mayhem|carnage",
    "sex": r"sex\w*|nudity|nude|sensuality|suggestive|erotic\w*|rape|innuendo",
    "profanity": r"language|profanity|crude dialogue|slurs?",
    "substances": r"drug\w*|alcohol|drinking|smoking|substance\w*|narcotic\w*",
    "frightening": r"terror|horror|frightening|scary|scar(e|es)|disturbing|creepy|intense (sequences|images|scenes|content)|menace|peril",
}
_SEVERE = r"strong|graphic|brutal|grisly|gruesome|bloody|gory|sadistic|extreme|pervasive|explicit|disturbing|aberrant|throughout|horrific|relentless"
_MILD = r"mild|brief|some mild|comic|cartoon|fantasy|rude|momentary|thematic|scary|innuendo|suggestive|sensuality|references?|partial|language and|mild peril"


def _reason_severity(reason: str) -> dict[str, int]:
    """Channel severities (0-3) stated by an MPAA rating reason; channels not mentioned are absent."""
    out: dict[str, int] = {}
    text = reason.lower()
    # split into clauses so "strong violence and some language" grades each element separately
    for clause in re.split(r",|\band\b|\bincluding\b|\bwith\b|;", text):
        clause = clause.strip()
        if not clause:
            continue
        for ch, pat in _REASON_CHANNELS.items():
            if not re.search(r"\b(?:" + pat + r")", clause):
                continue
            if re.search(r"\b(?:" + _SEVERE + r")\b", clause):
                sev = 3
            elif re.search(r"\b(?:" + _MILD + r")\b", clause):
                sev = 1
            elif ch == "violence" and not re.search(r"\b(violen\w*|gore|gory|bloody|killings?|brutal\w*)", clause):
                # "action", "peril", "battle sequences" without violence words: mild unless intense
                sev = 2 if re.search(r"\bintense\b", clause) else 1
            else:
                sev = 2
            if ch == "frightening" and sev == 2 and re.search(r"\b(horror|terror)\b", clause):
                sev = 3 if re.search(r"\b(horror violence|strong|intense)\b", clause) else 2
            out[ch] = max(out.get(ch, 0), sev)
    return out


def _kim_severity(score) -> int | None:
    """Kids-In-Mind 0-10 -> 0-3 (0 none, 1-3 mild, 4-6 moderate, 7-10 severe)."""
    try:
        v = float(score)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(v) or v < 0 or v > 10:
        return None
    return 0 if v == 0 else 1 if v <= 3 else 2 if v <= 6 else 3


def normalize_letter(text) -> str | None:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return None
    s = str(text).strip().upper().split()[0] if str(text).strip() else ""
    s = _LETTER_ALIASES.get(s, s)
    return s if s in LETTER_CAPS else None


def strictest_letter(letters) -> str | None:
    """The most restrictive MPAA letter among ``letters`` (raw strings are normalised; ones that are
    not MPAA letters, such as NR or TV-14, are ignored); ``None`` when none is an MPAA letter."""
    codes = [RATING_ORDER.index(x) for x in (normalize_letter(t) for t in letters) if x is not None]
    return RATING_ORDER[max(codes)] if codes else None


@dataclass
class Verdict:
    verdict: str  # safe | unsafe | unknown
    risk: float | None
    evidence: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "risk": None if self.risk is None else round(float(self.risk), 4),
                "evidence": list(self.evidence)}


@dataclass(frozen=True)
class RatingScale:
    """How an oracle's ``rating`` column reads for the age constraints: ``order`` names its levels
    (least restricted first), ``band_max[j]`` is the highest level age constraint ``j`` allows and
    ``band_text[j]`` how that limit reads in evidence, ``rank`` gives the level of every rating
    label the evidence names, ``none_text`` / ``brief_none`` say that an item has no rating."""
    order: tuple[str, ...]
    band_max: tuple[int, ...]
    band_text: tuple[str, ...]
    rank: dict
    none_text: str
    brief_none: str


@lru_cache(maxsize=1)
def movie_scale() -> RatingScale:
    """The MPAA letters: a movie's rating level is its strictest letter."""
    bands = T.age_constraints()
    return RatingScale(RATING_ORDER, tuple(RATING_ORDER.index(_band_letter(b)) for b in bands),
                       tuple(b.max_rating for b in bands), {x: k for k, x in enumerate(RATING_ORDER)},
                       "no MPAA rating known for this item (none given, or NR/Unrated/TV only)", "no MPAA rating")


class Oracle:
    """Per (item, trait) risk and verdict over a catalog. Build with :func:`load_oracle`."""

    def __init__(self, item_ids, lo, hi, has_sev, trigger, evidence, threshold=DEFAULT_THRESHOLD, rating=None,
                 scale: RatingScale | None = None, severity_traits=None, domain: str = "movies"):
        """``lo``/``hi`` (N, 5) channel intervals, ``has_sev`` (N,), ``trigger`` (N, 20 traits),
        ``evidence`` row -> [(kind, key, text)], ``rating`` (N,) the strictest MPAA letter per item
        as an index into :data:`RATING_ORDER` (-1: none known; ``None``: none known for any item).
        Another domain passes its ``scale`` (:class:`RatingScale`; ``rating`` then indexes its
        levels) and may limit the traits judged by severity to ``severity_traits``."""
        self.domain = domain
        self.scale = movie_scale() if scale is None else scale
        self.item_ids = list(item_ids)
        n = len(self.item_ids)
        self.index = {it: i for i, it in enumerate(self.item_ids)}
        self.trait_ids = list(T.CONSTRAINT_IDS)  # the 20 traits, then the age constraints
        self.tindex = {t: j for j, t in enumerate(self.trait_ids)}
        trigger = np.asarray(trigger, dtype=bool)
        if trigger.shape != (n, len(T.TRAIT_IDS)):
            raise ValueError(f"trigger must be (items, traits) = ({n}, {len(T.TRAIT_IDS)}), got {trigger.shape}")
        self.lo, self.hi, self.has_sev, self.trigger = lo, hi, has_sev, trigger
        self.rating = np.full(n, -1, dtype=np.int8) if rating is None else np.asarray(rating, dtype=np.int8)
        if self.rating.shape != (n,) or (self.rating < -1).any() or (self.rating >= len(self.scale.order)).any():
            raise ValueError(f"rating must be ({n},) indices into {self.scale.order} or -1")
        self._evidence = evidence  # item row -> list of (kind, trait_id | channel | letter | None, text)
        self.threshold = float(threshold)
        W = np.array([[t.pg_weights[c] for c in T.CHANNELS] for t in T.all_traits()])  # (20, 5)
        # the paper's very_weak_proxy / none traits (and the age constraints) are not judged by severity
        self.use_sev = np.array([T.get(t).uses_severity and (severity_traits is None or t in severity_traits)
                                 for t in self.trait_ids])
        use_sev = self.use_sev[: len(T.TRAIT_IDS)]
        denom = 3.0 * np.where(W.sum(1) > 0, W.sum(1), 1.0)
        self._Wn = (W / denom[:, None]) * use_sev[:, None]  # (20, 5)
        self._age_max = np.array(self.scale.band_max)
        self._recompute()

    def _recompute(self):
        trig = self.trigger.astype(float)
        nt = len(T.TRAIT_IDS)
        risk_lo = np.maximum(trig, self.lo @ self._Wn.T)  # (N, 20) evidence-backed risk
        risk_hi = np.maximum(trig, self.hi @ self._Wn.T)  # worst case over unknown channels
        unsafe = risk_lo >= self.threshold
        safe = (~unsafe) & self.use_sev[None, :nt] & self.has_sev[:, None] & (risk_hi < self.threshold)
        v = np.full(risk_lo.shape, UNKNOWN, dtype=np.int8)
        v[safe] = SAFE
        v[unsafe] = UNSAFE
        has_any = self.trigger | (self.has_sev[:, None] & self.use_sev[None, :nt])
        risk = np.where(has_any, risk_lo, np.nan)
        # age constraints: the strictest known letter against each band's highest allowed letter
        known = (self.rating >= 0)[:, None]
        over = self.rating[:, None].astype(np.int64) > self._age_max[None, :]
        age_v = np.where(known, np.where(over, UNSAFE, SAFE), UNKNOWN).astype(np.int8)
        self.verdicts = np.concatenate([v, age_v], axis=1)
        self.risk = np.concatenate([risk, np.where(known, over.astype(float), np.nan)], axis=1)
        self.risk_lo = np.concatenate([risk_lo, np.where(known, over, False).astype(float)], axis=1)
        self.risk_hi = np.concatenate([risk_hi, np.where(known, over, True).astype(float)], axis=1)

    def with_threshold(self, threshold: float) -> "Oracle":
        o = Oracle.__new__(Oracle)
        o.__dict__.update(self.__dict__)
        o.threshold = float(threshold)
        o._recompute()
        return o

    # ---- vectorised lookups ------------------------------------------------------------------
    def rows(self, item_ids) -> np.ndarray:
        """Row index per item id (-1 for None or items outside the catalog)."""
        item_ids = item_ids if isinstance(item_ids, (list, tuple, np.ndarray)) else list(item_ids)
        if len(item_ids) < 4096:  # dict lookups beat index set-up for short lists
            get = self.index.get
            return np.fromiter((get(i, -1) if i is not None else -1 for i in item_ids), dtype=np.int64,
                               count=len(item_ids))
        if not hasattr(self, "_pindex"):
            self._pindex = pd.Index(np.array(self.item_ids, dtype=object), dtype=object)
        return self._pindex.get_indexer(pd.Index(np.array(item_ids, dtype=object), dtype=object)).astype(np.int64)

    def cols(self, trait_ids) -> np.ndarray:
        trait_ids = list(trait_ids)
        if len(trait_ids) < 4096:
            try:
                return np.array([self.tindex[t] for t in trait_ids], dtype=np.int64)
            except KeyError as exc:
                raise KeyError(f"unknown trait id {exc.args[0]!r}; valid ids: {', '.join(self.trait_ids)}") from None
        cols = pd.Index(np.array(self.trait_ids, dtype=object), dtype=object).get_indexer(
            pd.Index(np.array(trait_ids, dtype=object), dtype=object))
        if (cols < 0).any():
            bad = trait_ids[int(np.argmin(cols))]
            raise KeyError(f"unknown trait id {bad!r}; valid ids: {', '.join(self.trait_ids)}")
        return cols.astype(np.int64)

    def check_rows(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Verdict codes and risks for paired (row, col) indices; row -1 -> unknown, risk NaN."""
        ok = rows >= 0
        r = np.where(ok, rows, 0)
        v = np.where(ok, self.verdicts[r, cols], UNKNOWN).astype(np.int8)
        risk = np.where(ok, self.risk[r, cols], np.nan)
        return v, risk

    def check(self, item_ids, trait_ids) -> tuple[np.ndarray, np.ndarray]:
        """Paired check: ``item_ids[k]`` against ``trait_ids[k]`` (a single trait id broadcasts)."""
        rows = self.rows(item_ids)
        if isinstance(trait_ids, str):
            cols = np.full(len(rows), self.tindex[trait_ids] if trait_ids in self.tindex else self.cols([trait_ids])[0])
        else:
            cols = self.cols(trait_ids)
        return self.check_rows(rows, cols)

    def is_unsafe(self, item_ids, trait_id: str) -> np.ndarray:
        return self.check(item_ids, trait_id)[0] == UNSAFE

    # ---- explanations ------------------------------------------------------------------------
    def judge(self, item_id: str | None, trait_id: str) -> Verdict:
        j = self.cols([trait_id])[0]
        i = self.index.get(item_id, -1) if item_id else -1
        if i < 0:
            why = "item not in catalog" if item_id else "title not resolved"
            return Verdict("unknown", None, [f"no evidence: {why}"])
        code = int(self.verdicts[i, j])
        risk = self.risk[i, j]
        trait = T.get(trait_id)
        if T.is_age_constraint(trait_id):
            return Verdict(VERDICT_NAMES[code], None if np.isnan(risk) else float(risk),
                           self._age_evidence(i, trait))
        ranked = []  # triggers first, then stated severities, letters, and "not listed" bounds
        for kind, key, text in self._evidence.get(i, []):
            if kind == "trigger" and key == trait_id:
                ranked.append((0, text))
            elif kind == "severity" and self.use_sev[j] and trait.pg_weights.get(key, 0) > 0:
                ranked.append((3 if "not listed" in text else 1, text))
            elif kind == "letter" and self.use_sev[j]:
                ranked.append((2, text))
        ev = [text for _, text in sorted(ranked, key=lambda x: x[0])]
        if code == UNKNOWN and not ev:
            ev.append("no evidence for this trait in the available sources")
        return Verdict(VERDICT_NAMES[code], None if np.isnan(risk) else float(risk), ev)

    def brief(self, item_id: str | None, trait_id: str, max_tags: int = 3, tag_chars: int = BRIEF_TAG_CHARS) -> Verdict:
        """The verdict and risk of :meth:`judge` with short evidence phrases instead of source lines:
        at most ``max_tags`` of, in this order, the trait's trigger words (``"grisly"``,
        ``"splatter"``, ``"horror"``), the severity of the channels the trait weighs where known
        (``"violence severe"``, ``"sex at most mild"``; strongest first) and the MPAA letter
        (``"rated R"``). Age constraints give the strictest letter (``"rated R"``) or ``"no MPAA
        rating"``. Each phrase is cut to ``tag_chars`` characters. Deterministic: triggers keep
        the order the sources were read in, repeats and plurals of earlier phrases dropped.
        Items outside the catalog (and ``None``) are ``unknown`` with no phrases."""
        if isinstance(max_tags, bool) or not isinstance(max_tags, (int, np.integer)) or max_tags < 0:
            raise ValueError(f"max_tags must be a non-negative integer, got {max_tags!r}")
        if isinstance(tag_chars, bool) or not isinstance(tag_chars, (int, np.integer)) or tag_chars < 1:
            raise ValueError(f"tag_chars must be a positive integer, got {tag_chars!r}")
        j = int(self.cols([trait_id])[0])
        i = self.index.get(item_id, -1) if item_id else -1
        if i < 0:
            return Verdict("unknown", None, [])
        code, risk = int(self.verdicts[i, j]), float(self.risk[i, j])
        risk_out = None if np.isnan(risk) else risk
        tags: list[str] = []
        if T.is_age_constraint(trait_id):
            r = int(self.rating[i])
            tags.append(f"rated {self.scale.order[r]}" if r >= 0 else self.scale.brief_none)
        else:
            trait = T.get(trait_id)
            for kind, key, text in self._evidence.get(i, []):
                if kind == "trigger" and key == trait_id:
                    m = re.search(r"'([^']+)'", text)
                    word = m.group(1) if m else text.split(":", 1)[-1]
                    tags.append(" ".join(word.split()).lower())
            if self.use_sev[j]:
                words = ("none", "mild", "moderate", "severe")
                known, bounded = [], []
                for ch in sorted((c for c in T.CHANNELS if trait.pg_weights.get(c, 0) > 0),
                                 key=lambda c: (-self.lo[i, CH[c]], -trait.pg_weights[c], CH[c])):
                    lo, hi = int(round(self.lo[i, CH[ch]])), int(round(self.hi[i, CH[ch]]))
                    if lo == hi:
                        known.append(f"{ch} {words[lo]}")
                    elif lo > 0:
                        known.append(f"{ch} at least {words[lo]}" if hi >= 3 else f"{ch} {words[lo]} to {words[hi]}")
                    elif hi < 3:
                        bounded.append(f"{ch} at most {words[hi]}")
                letter = next((text.split("rated ", 1)[1] for kind, _, text in self._evidence.get(i, [])
                               if kind == "letter"), None)
                tags += known + ([f"rated {letter}"] if letter else []) + bounded
        short, seen = [], set()
        for t in tags:  # repeats (and plurals of earlier words: "ghost", "ghosts") dropped
            t = t[:tag_chars].rstrip()
            stem = t[:-1] if t.endswith("s") else t
            if t and stem not in seen:
                seen.add(stem)
                short.append(t)
        return Verdict(VERDICT_NAMES[code], risk_out, short[:max_tags])

    def ratings(self, item_id: str | None) -> list[tuple[str, str]]:
        """Every MPAA letter the sources give an item, as (letter, source), strictest first."""
        i = self.index.get(item_id, -1) if item_id else -1
        if i < 0:
            return []
        out = [(key, text.split(":", 1)[0]) for kind, key, text in self._evidence.get(i, []) if kind == "rating"]
        return sorted(out, key=lambda x: -self.scale.rank[x[0]])

    def _age_evidence(self, i: int, band) -> list[str]:
        r = int(self.rating[i])
        entries = sorted((e for e in self._evidence.get(i, []) if e[0] == "rating"), key=lambda e: -self.scale.rank[e[1]])
        lines = [text for _, _, text in entries]
        if r < 0:
            return [self.scale.none_text]
        letter = entries[0][1] if entries else self.scale.order[r]
        j = T.AGE_CONSTRAINT_IDS.index(band.id)
        head = f"rated {letter}" if len(lines) <= 1 else f"strictest of {len(lines)} ratings is {letter}"
        rel = "above" if r > self.scale.band_max[j] else "at or below"
        return [f"{head}: {rel} {self.scale.band_text[j]}, the highest rating for ages {band.min_age}-{band.max_age}"] + lines

    # ---- tables ------------------------------------------------------------------------------
    def verdict_frame(self) -> pd.DataFrame:
        return pd.DataFrame(np.array(VERDICT_NAMES)[self.verdicts], index=self.item_ids, columns=self.trait_ids)

    def risk_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.risk, index=self.item_ids, columns=self.trait_ids)

    def coverage(self, item_ids=None) -> pd.DataFrame:
        """Per trait: items judged safe / unsafe / unknown and the covered share (not unknown)."""
        if item_ids is None:
            v = self.verdicts
        else:
            rows = self.rows(list(item_ids))
            v = np.where(rows[:, None] >= 0, self.verdicts[np.maximum(rows, 0)], UNKNOWN)
        n = v.shape[0]
        df = pd.DataFrame({
            "trait": self.trait_ids,
            "safe": (v == SAFE).sum(0), "unsafe": (v == UNSAFE).sum(0), "unknown": (v == UNKNOWN).sum(0),
        })
        df["covered"] = df["safe"] + df["unsafe"]
        df["coverage"] = df["covered"] / max(n, 1)
        df["applicability"] = [T.get(t).pg_applicability for t in self.trait_ids]
        return df.set_index("trait")


# ------------------------------------------------------------------------------------------------
# Building the evidence tables from the data files
# ------------------------------------------------------------------------------------------------

def _band_letter(band) -> str:
    """A band's highest allowed MPAA letter, checked against the oracle's letters."""
    letter = normalize_letter(band.max_rating)
    if letter is None or letter != band.max_rating:
        raise ValueError(f"data/age_ratings.json: band {band.id!r} has max_rating {band.max_rating!r}, "
                         f"not an MPAA letter ({', '.join(RATING_ORDER)})")
    return letter


def _tag_trait_map(tags) -> dict[str, list[str]]:
    """Distinct tag string -> trait ids it triggers."""
    pats = {t: T.compiled(t, "tag") for t in T.TRAIT_IDS}
    out = {}
    for tag in tags:
        hit = [t for t, p in pats.items() if p is not None and p.search(tag)]
        if hit:
            out[tag] = hit
    return out


def _read_csv(name, root, **kw) -> pd.DataFrame:
    p = sources.path(name, root)
    try:
        return pd.read_csv(p, **kw)
    except Exception as exc:  # malformed file: name it
        raise sources.DataError(f"cannot parse {p}: {exc}") from exc


def _blank_tables(n: int):
    """Empty per-item tables that an oracle build fills: severity bounds ``lo``/``hi`` (nothing
    known: 0..3 on every channel), ``has_sev``, the ``trigger`` matrix, the trait column index,
    per-item evidence lists and build statistics."""
    lo = np.zeros((n, len(T.CHANNELS)))
    hi = np.full((n, len(T.CHANNELS)), 3.0)
    has_sev = np.zeros(n, dtype=bool)
    trigger = np.zeros((n, len(T.TRAIT_IDS)), dtype=bool)
    tcol = {t: j for j, t in enumerate(T.TRAIT_IDS)}
    evidence: dict[int, list] = defaultdict(list)
    stats: dict[str, int] = {}
    return lo, hi, has_sev, trigger, tcol, evidence, stats


def build_oracle(catalog=None, data_dir=None, threshold: float = DEFAULT_THRESHOLD, progress: bool = False) -> Oracle:
    """Read every safety signal, join it to catalog ids and return the :class:`Oracle`."""
    cat = catalog if catalog is not None else load_catalog(data_dir=data_dir)
    items = cat.items
    ids = list(items.index)
    index = {it: i for i, it in enumerate(ids)}
    N = len(ids)
    lo, hi, has_sev, trigger, tcol, evidence, stats = _blank_tables(N)

    def resolve_rows(titles, years, prefer_exact_year: bool = False) -> list[int]:
        """Catalog row per (title, year); -1 when unresolved. With ``prefer_exact_year``, a row
        matched only within the year tolerance is dropped (-1) when another row of the same file
        matches that item at its exact year: a remake or re-release of the same title is a
        different film, and its rating and reasons must not be pooled with the catalog item's."""
        res = cat.resolve_many([(str(t), None if pd.isna(y) else int(y)) for t, y in zip(titles, years)])
        rows = [index.get(r.item_id, -1) if r.item_id else -1 for r in res]
        if prefer_exact_year:
            exact = {i for i, r in zip(rows, res) if i >= 0 and r.reason == "exact_year"}
            dropped = [k for k, (i, r) in enumerate(zip(rows, res)) if i in exact and r.reason != "exact_year"]
            for k in dropped:
                rows[k] = -1
            stats["near_year_rows_dropped"] = stats.get("near_year_rows_dropped", 0) + len(dropped)
        return rows

    def set_channel(i, ch, l, h, text):
        c = CH[ch]
        lo[i, c] = max(lo[i, c], l)
        hi[i, c] = max(lo[i, c], min(hi[i, c], h))
        has_sev[i] = True
        evidence[i].append(("severity", ch, text))

    def add_trigger(i, trait_id, text):
        trigger[i, tcol[trait_id]] = True
        evidence[i].append(("trigger", trait_id, text))

    # --- MPAA letters ---------------------------------------------------------------------------
    # every (letter, source) per item, in the order read: the first one bounds the severity
    # channels; the strictest one decides the age constraints
    letters: dict[int, list[tuple[str, str]]] = {}

    def add_letter(i, letter, src, as_title=None):
        """``as_title``: the (title, year) a title/year source gives, shown in the rating evidence."""
        if i < 0 or letter is None:
            return
        note = ""
        if as_title is not None:
            y = pd.to_numeric(as_title[1], errors="coerce")
            note = f" (as '{str(as_title[0]).strip()}'" + ("" if pd.isna(y) else f" {int(y)}") + ")"
        got = letters.setdefault(i, [])
        if not any(x[:2] == (letter, src) for x in got):
            got.append((letter, src, note))

    # mpaa_reasons: official rating + reason text (title/year resolved)
    mp = _read_csv("mpaa_reasons/mpaa.csv", data_dir)
    for col in ("title", "rating", "reason", "year"):
        if col not in mp.columns:
            raise sources.DataError(f"mpaa_reasons/mpaa.csv: missing column {col!r}")
    mp_rows = resolve_rows(mp["title"], pd.to_numeric(mp["year"], errors="coerce"), prefer_exact_year=True)
    reason_pats = {t: T.compiled(t, "reason") for t in T.TRAIT_IDS}
    n = 0
    for i, letter, reason, title, year in zip(mp_rows, mp["rating"], mp["reason"], mp["title"], mp["year"]):
        if i < 0:
            continue
        n += 1
        add_letter(i, normalize_letter(letter), "mpaa_reasons", (title, year))
        if not isinstance(reason, str) or not reason.strip():
            continue
        sev = _reason_severity(reason)
        for ch in T.CHANNELS:
            if ch in sev:
                set_channel(i, ch, sev[ch], sev[ch], f"mpaa_reasons: {ch} severity {sev[ch]} from \"{reason.strip()}\"")
            else:  # the reason lists the main content; an unlisted channel is at most mild
                set_channel(i, ch, 0, 1, f"mpaa_reasons: {ch} not listed in \"{reason.strip()}\" (at most mild)")
        for t, p in reason_pats.items():
            if p is not None and (m := p.search(reason)):
                add_trigger(i, t, f"mpaa_reasons: reason mentions '{m.group(0)}' (\"{reason.strip()}\")")
    stats["mpaa_reasons_matched"] = n

    # Kids-In-Mind: exact severities for sex, violence, profanity
    kim = _read_csv("kids_in_mind/KIM_movies.csv", data_dir, dtype=str, keep_default_na=False)
    kim_rows = resolve_rows(kim["movie_title"].str.strip(), pd.to_numeric(kim["movie_year"].str.strip(), errors="coerce"),
                            prefer_exact_year=True)
    n = 0
    for i, (_, r) in zip(kim_rows, kim.iterrows()):
        if i < 0:
            continue
        n += 1
        for ch, col in (("sex", "sex_nudity"), ("violence", "violence_gore"), ("profanity", "language")):
            s = _kim_severity(r[col])
            if s is not None:
                set_channel(i, ch, s, s, f"kids_in_mind: {col}={r[col].strip()}/10 (severity {s})")
        add_letter(i, normalize_letter(r["movie_rating"]), "kids_in_mind", (r["movie_title"], r["movie_year"].strip()))
    stats["kids_in_mind_matched"] = n

    # IMDb letters (imdb5000 content_rating, imdb_scrape mpaa_rating) and IMDB-5000 plot keywords
    i5 = _read_csv("imdb5000/movie_metadata.csv", data_dir, sep=";", dtype=str, keep_default_na=False)
    i5_tt = i5["movie_imdb_link"].str.extract(r"(tt\d+)")[0]
    tag_items: dict[str, set[int]] = defaultdict(set)
    tag_src: dict[tuple[int, str], str] = {}
    for tt, letter, kws in zip(i5_tt, i5["content_rating"], i5["plot_keywords"]):
        i = index.get(tt, -1) if isinstance(tt, str) else -1
        if i < 0:
            continue
        add_letter(i, normalize_letter(letter), "imdb5000")
        for k in str(kws).lower().split("|"):
            if k.strip():
                tag_items[k.strip()].add(i)
                tag_src.setdefault((i, k.strip()), "imdb5000 plot keyword")
    sc = _read_csv("imdb_scrape/imdb_lists_combined.csv", data_dir, dtype=str, keep_default_na=False,
                   usecols=["imdb_id", "mpaa_rating"])
    for tt, letter in zip(sc["imdb_id"], sc["mpaa_rating"]):
        i = index.get(tt, -1)
        if i >= 0:
            add_letter(i, normalize_letter(letter), "imdb_scrape")

    # TMDB keywords (via catalog tmdb_id)
    tm = _read_csv("tmdb5000/tmdb_5000_movies.csv", data_dir, usecols=["id", "keywords"])
    tmdb_to_row = {}
    if "tmdb_id" in items.columns:
        for it, tid in items["tmdb_id"].dropna().items():
            tmdb_to_row[int(tid)] = index[it]
    for tid, kws in zip(tm["id"], tm["keywords"]):
        i = tmdb_to_row.get(int(tid), -1)
        if i < 0 or not isinstance(kws, str):
            continue
        try:
            names = [d["name"].lower() for d in json.loads(kws)]
        except (ValueError, KeyError, TypeError) as exc:
            raise sources.DataError(f"tmdb5000/tmdb_5000_movies.csv: bad keywords JSON for id {tid}: {exc}") from exc
        for k in names:
            tag_items[k].add(i)
            tag_src.setdefault((i, k), "tmdb5000 keyword")

    # MovieLens genome top-5 tags and user tags (via catalog ml_movie_id, else title/year)
    ml_to_row = {}
    if "ml_movie_id" in items.columns:
        for it, mid in items["ml_movie_id"].dropna().items():
            ml_to_row[int(mid)] = index[it]
    gen = _read_csv("ml_genome_top5/movies_w_keywords.csv", data_dir)
    missing = [k for k, mid in enumerate(gen["movieId"]) if int(mid) not in ml_to_row]
    extra = dict(zip(missing, resolve_rows(gen["title"].iloc[missing], [None] * len(missing))))
    for k, (mid, kws) in enumerate(zip(gen["movieId"], gen["keywords"])):
        i = ml_to_row.get(int(mid), extra.get(k, -1))
        if i < 0 or not isinstance(kws, str):
            continue
        for tag in kws.lower().split("|"):
            tag_items[tag].add(i)
            tag_src.setdefault((i, tag), "ml_genome_top5 tag")
    mt = _read_csv("ml_latest_small/tags.csv", data_dir)
    for mid, tag in zip(mt["movieId"], mt["tag"]):
        i = ml_to_row.get(int(mid), -1)
        if i >= 0 and isinstance(tag, str):
            tag_items[tag.lower().strip()].add(i)
            tag_src.setdefault((i, tag.lower().strip()), "ml_latest_small user tag")

    for tag, trait_ids in _tag_trait_map(tag_items).items():
        for i in tag_items[tag]:
            for t in trait_ids:
                add_trigger(i, t, f"{tag_src[(i, tag)]}: '{tag}'")

    # genres: genre triggers and the horror floor on the frightening channel
    genre_pats = {t: T.compiled(t, "genre") for t in T.TRAIT_IDS}
    for it, gs in items["genres"].items():
        i = index[it]
        for g in gs or ():
            for t, p in genre_pats.items():
                if p is not None and p.search(g):
                    add_trigger(i, t, f"genre: {g}")
            if g == "horror":
                set_channel(i, "frightening", 2, 3, "genre: horror (frightening at least moderate)")

    # letters last: they only lower the upper bounds
    rating = np.full(N, -1, dtype=np.int8)
    for i, found in letters.items():
        letter, src, _ = found[0]
        caps = LETTER_CAPS[letter]
        for ch in T.CHANNELS:
            c = CH[ch]
            hi[i, c] = max(lo[i, c], min(hi[i, c], caps[ch]))
        if letter in ("G", "PG", "PG-13"):
            has_sev[i] = True
        evidence[i].append(("letter", None, f"{src}: rated {letter}"))
        for letter, src, note in found:
            evidence[i].append(("rating", letter, f"{src}: rated {letter}{note}"))
        rating[i] = RATING_ORDER.index(strictest_letter(x[0] for x in found))
    stats["letters"] = len(letters)
    stats["letters_disagreeing"] = sum(len({x[0] for x in found}) > 1 for found in letters.values())

    oracle = Oracle(ids, lo, hi, has_sev, trigger, dict(evidence), threshold, rating=rating)
    oracle.stats = stats
    return oracle


# ------------------------------------------------------------------------------------------------
# Games (SafeGame): ESRB descriptors and letters, PEGI ages
# ------------------------------------------------------------------------------------------------

def _game_spec() -> dict:
    from ..data.catalog import games_data
    return games_data()


def _game_rating(system: str, raw) -> str | None:
    """``"ESRB M"`` / ``"PEGI 16"`` for a raw ESRB letter or PEGI age; ``None`` for an empty cell or a
    value outside the system's order (RP, rating pending)."""
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return None
    text = str(raw).strip().upper()
    if system == "PEGI" and text.endswith(".0"):
        text = text[:-2]
    text = _game_spec()["rating_aliases"].get(system, {}).get(text, text)
    return f"{system} {text}" if text in T.game_rating_systems()[system]["order"] else None


@lru_cache(maxsize=1)
def game_scale() -> RatingScale:
    """The game rating levels: level ``k`` is allowed by the age constraints from the ``k``-th on
    (youngest first), so a rating's level is the number of constraints whose ESRB or PEGI limit it
    exceeds (ESRB M and PEGI 16 exceed all three, ESRB T and PEGI 12 the two youngest)."""
    systems = T.game_rating_systems()
    bands = T.age_constraints()
    rank = {}
    for system, spec in systems.items():
        order = spec["order"]
        for x in order:
            rank[f"{system} {x}"] = sum(order.index(x) > order.index(spec["band_max"][b.id]) for b in bands)
    names = ["all ages"] + [f"{b.min_age} and up" for b in bands[1:]] + [f"{T.NO_LIMIT_FROM_AGE} and up"]
    text = tuple(" / ".join(f"{s} {systems[s]['band_max'][b.id]}" for s in systems) for b in bands)
    return RatingScale(tuple(names), tuple(range(len(bands))), text, rank,
                       "no ESRB or PEGI rating known for this game", "no ESRB/PEGI rating")


def game_descriptor_table() -> pd.DataFrame:
    """The ESRB descriptor -> channel severities and trigger traits of ``data/games.json``, one row
    per descriptor (what the SafeGame data card shows)."""
    rows = []
    for d, m in _game_spec()["esrb_descriptors"].items():
        rows.append({"descriptor": d, "channels": ", ".join(f"{c} {v}" for c, v in m["channels"].items()) or "-",
                     "triggers": ", ".join(m["triggers"]) or "-"})
    return pd.DataFrame(rows).set_index("descriptor")


def _check_game_spec(spec: dict) -> None:
    where = "safecrs_core/data/games.json"
    for d, m in spec["esrb_descriptors"].items():
        bad_ch = [c for c in m.get("channels", {}) if c not in T.CHANNELS]
        bad_sev = [v for v in m.get("channels", {}).values() if v not in (0, 1, 2, 3)]
        bad_t = [t for t in m.get("triggers", []) if t not in T.TRAIT_IDS]
        if bad_ch or bad_sev or bad_t:
            raise ValueError(f"{where}: esrb_descriptors.{d}: unknown channel(s) {bad_ch}, severities {bad_sev} "
                             f"outside 0-3 or unknown trait id(s) {bad_t}")
    bad = [t for t in spec["severity_traits"] if t not in T.TRAIT_IDS]
    if bad:
        raise ValueError(f"{where}: severity_traits: unknown trait id(s) {bad}; valid ids: {', '.join(T.TRAIT_IDS)}")
    for system, caps in spec["rating_caps"].items():
        for label, cap in caps.items():
            if _game_rating(system, label) is None or set(cap) != set(T.CHANNELS):
                raise ValueError(f"{where}: rating_caps.{system}.{label}: needs a rating of the {system} order "
                                 f"and a cap for each channel {T.CHANNELS}")


def build_game_oracle(data_dir=None, threshold: float = DEFAULT_THRESHOLD, exclude_sources=()) -> Oracle:
    """The SafeGame oracle over the game catalog (:func:`catalog.game_sources`).

    * ESRB descriptors (``esrb``): each listed descriptor sets channel severities and hard triggers
      (``data/games.json``); a channel the descriptors can state but do not is at most mild;
    * ratings: ESRB letters (``esrb``, ``vgsales``) and PEGI ages (``pegi``, rows matched to the
      game by the resolver) bound the channels (the loosest cap of all ratings) and set the rating
      level of the age constraints (the strictest rating, :func:`game_scale`);
    * traits outside ``severity_traits`` are judged by triggers alone, so a game with no signal for
      a trait is ``unknown``, never ``safe``."""
    from ..data.catalog import game_sources

    spec = _game_spec()
    _check_game_spec(spec)
    gs = game_sources(data_dir, exclude_sources)
    ids = list(gs.catalog.items.index)
    index = {it: i for i, it in enumerate(ids)}
    N = len(ids)
    lo, hi, has_sev, trigger, tcol, evidence, stats = _blank_tables(N)

    desc = spec["esrb_descriptors"]
    stated = [c for c in T.CHANNELS if any(c in m["channels"] for m in desc.values())]
    unlisted = int(spec["esrb_unlisted_max"])
    esrb = gs.esrb
    names = list(desc)
    flags = esrb[names].to_numpy(dtype=bool) if len(esrb) else np.zeros((0, len(names)), dtype=bool)
    for k, (it, title) in enumerate(zip(esrb["item_id"].tolist(), esrb["title"].tolist())):
        i = index[it]
        listed = [names[j] for j in np.flatnonzero(flags[k])]
        shown = ", ".join(d.replace("_", " ").replace("janguage", "language") for d in listed) or "none"
        has_sev[i] = True
        for ch in stated:
            c = CH[ch]
            by = [(desc[d]["channels"][ch], d) for d in listed if ch in desc[d]["channels"]]
            if by:
                sev, d = max(by)
                lo[i, c] = max(lo[i, c], sev)
                hi[i, c] = max(lo[i, c], min(hi[i, c], sev))
                evidence[i].append(("severity", ch, f"esrb: {ch} severity {sev} from descriptor "
                                                    f"'{d.replace('_', ' ').replace('janguage', 'language')}' ({title!r})"))
            else:
                hi[i, c] = max(lo[i, c], min(hi[i, c], unlisted))
                evidence[i].append(("severity", ch, f"esrb: no {ch} descriptor among [{shown}] (at most mild)"))
        for d in listed:
            for t in desc[d]["triggers"]:
                trigger[i, tcol[t]] = True
                evidence[i].append(("trigger", t, f"esrb: descriptor '{d.replace('_', ' ')}' ({title!r})"))
    stats["esrb_rows"] = len(esrb)
    stats["esrb_games"] = int(esrb["item_id"].nunique()) if len(esrb) else 0

    # ratings: (label, source, note) per item
    found: dict[int, list[tuple[str, str, str]]] = defaultdict(list)

    def add(it, system, raw, src, note=""):
        label = _game_rating(system, raw)
        if label is None:
            return
        i = index[it]
        if not any(x[:2] == (label, src) for x in found[i]):
            found[i].append((label, src, note))

    for it, raw in zip(esrb["item_id"].tolist(), esrb["rating"].tolist()):
        add(it, "ESRB", raw, "esrb")
    vg = gs.vgsales
    for it, raw, t, p, y in zip(vg["item_id"], vg["rating"], vg["title"], vg["platform"], vg["year"]):
        add(it, "ESRB", raw, "vgsales", f" (as '{t}' on {p}" + ("" if pd.isna(y) else f" {int(y)}") + ")")
    pg = gs.pegi
    for it, raw, t, p, y in zip(pg["item_id"], pg["rating"], pg["title"], pg["platform"], pg["year"]):
        add(it, "PEGI", raw, "pegi", f" (as '{t}' on {p}" + ("" if pd.isna(y) else f" {int(y)}") + ")")

    caps_of = spec["rating_caps"]
    scale = game_scale()
    rating = np.full(N, -1, dtype=np.int8)
    for i, ratings in found.items():
        cap = {ch: max(caps_of[lab.split(" ", 1)[0]][lab.split(" ", 1)[1]][ch] for lab, _, _ in ratings)
               for ch in T.CHANNELS}
        for ch in T.CHANNELS:
            c = CH[ch]
            hi[i, c] = max(lo[i, c], min(hi[i, c], cap[ch]))
        if any(v < 3 for v in cap.values()):
            has_sev[i] = True
        loosest = max(ratings, key=lambda x: sum(caps_of[x[0].split(" ", 1)[0]][x[0].split(" ", 1)[1]].values()))
        evidence[i].append(("letter", None, f"{loosest[1]}: rated {loosest[0]}"))
        for label, src, note in ratings:
            evidence[i].append(("rating", label, f"{src}: rated {label}{note}"))
        rating[i] = max(scale.rank[lab] for lab, _, _ in ratings)
    stats["rated_games"] = len(found)
    stats["pegi_rows_rated"] = int(sum(_game_rating("PEGI", r) is not None for r in pg["rating"]))
    stats["ratings_disagreeing"] = sum(len({scale.rank[x[0]] for x in r}) > 1 for r in found.values())

    oracle = Oracle(ids, lo, hi, has_sev, trigger, dict(evidence), threshold, rating=rating, **game_oracle_options())
    oracle.stats = stats
    return oracle


def game_oracle_options() -> dict:
    """The :class:`Oracle` arguments of the game oracle: its rating scale, the traits its
    descriptors judge by severity, its domain."""
    return {"scale": game_scale(), "severity_traits": frozenset(_game_spec()["severity_traits"]), "domain": "games"}


# Part of the disk-cache key: bump when a change to build_oracle alters its tables.
ORACLE_VERSION = 3
ORACLE_FILES = ("mpaa_reasons/mpaa.csv", "kids_in_mind/KIM_movies.csv", "imdb5000/movie_metadata.csv",
                 "imdb_scrape/imdb_lists_combined.csv", "tmdb5000/tmdb_5000_movies.csv",
                 "ml_genome_top5/movies_w_keywords.csv", "ml_latest_small/tags.csv")


def _save_tables(oracle: Oracle, directory) -> dict:
    from pathlib import Path
    d = Path(directory)
    np.savez_compressed(d / "tables.npz", lo=oracle.lo, hi=oracle.hi, has_sev=oracle.has_sev, trigger=oracle.trigger,
                        rating=oracle.rating)
    ev = {str(i): [[k, key, text] for k, key, text in items] for i, items in oracle._evidence.items()}
    (d / "items.json").write_text(json.dumps(oracle.item_ids))
    (d / "evidence.json").write_text(json.dumps(ev))
    (d / "stats.json").write_text(json.dumps(getattr(oracle, "stats", {})))
    return {"items": len(oracle.item_ids)}


def _load_tables(directory, threshold: float, domain: str = DEFAULT_DOMAIN) -> Oracle:
    from pathlib import Path
    d = Path(directory)
    z = np.load(d / "tables.npz")
    ev = {int(i): [tuple(x) for x in items] for i, items in json.loads((d / "evidence.json").read_text()).items()}
    o = Oracle(json.loads((d / "items.json").read_text()), z["lo"], z["hi"], z["has_sev"], z["trigger"], ev, threshold,
               rating=z["rating"], **{"domain": domain, **get_domain(domain).oracle_options()})
    o.stats = json.loads((d / "stats.json").read_text())
    return o


@lru_cache(maxsize=4)
def _cached(data_dir_key: str, threshold: float, disk_cache: bool, spec: Domain) -> Oracle:
    """The oracle of the domain ``spec`` (cached per Domain object: a domain registered again
    under the same name gets its own entry)."""
    domain = spec.name
    if not disk_cache:
        return spec.build_oracle(data_dir_key, threshold)
    from ..pipeline import run_stage

    traits_text = package_file("traits.json").read_bytes() + package_file("age_ratings.json").read_bytes()
    reg = sources.registry()
    files = sorted(spec.oracle_files)
    missing = [f for f in files if f not in reg]
    if missing:
        raise ValueError(f"domain {domain!r}: oracle files {missing} are not in the data registry")
    inputs = [f"{f}@{reg[f].sha256[:16]}" for f in files]
    # the cached tables are served only while the data files on disk are the ones they were built
    # from: a changed, corrupt or missing file stops here with its DataError (sha256, ~0.03 s)
    sources.fetch(files, data_dir_key, download=False)
    # the movie key stays as it was before games existed (a legacy domain adds nothing)
    params = {"oracle_version": ORACLE_VERSION, "traits": hashlib.sha256(traits_text).hexdigest()[:16],
              **spec.key_params(), **spec.oracle_params()}
    built: dict = {}

    def fn(tmp):
        built["oracle"] = spec.build_oracle(data_dir_key, threshold)
        return _save_tables(built["oracle"], tmp)

    stage = run_stage("oracle", params, inputs, fn, log=None)
    return built.get("oracle") or _load_tables(stage, threshold, domain)


def load_oracle(data_dir=None, threshold: float = DEFAULT_THRESHOLD, disk_cache: bool = True,
                domain: str = DEFAULT_DOMAIN) -> Oracle:
    """The oracle of ``domain`` (built by its plug-in, :mod:`safecrs_core.domains`) for the data
    directory: built once per process, and its evidence tables cached on disk under
    ``artifacts/oracle/<key>/`` (keyed by the domain's data files' sha256, the trait table and
    :data:`ORACLE_VERSION`) so later processes load them instead of rebuilding."""
    spec = get_domain(domain)  # an unknown domain fails here, naming the known ones
    return _cached(str(sources.data_dir(data_dir)), float(threshold), bool(disk_cache), spec)

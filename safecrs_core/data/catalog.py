"""Items, title normalisation and the one title resolver.

The resolver maps ``"Title (Year)"`` (or a title and a year) to a catalog id (IMDb ``tt`` id for
movies) or ``None`` with a reason. It is the only place titles are matched: the oracle, the
benchmark, rewards and metrics all call it.

A :class:`Catalog` is domain-neutral: an ``items`` table (index ``item_id``) and an ``aliases``
table (every title any source gives an item, with that source's year). A domain loader turns its
sources into per-source rows and :func:`build_catalog` merges them; :func:`load_catalog` picks the
loader from the domain's plug-in (:mod:`safecrs_core.domains`): ``"movies"`` (IMDb ``tt`` ids) and ``"games"`` (SafeGame, ids
``game:<title key>[-<year>]`` over the ESRB, PEGI and vgsales tables, see :func:`game_sources`).

A catalog built with ``platform_aliases`` (the games) also reads a platform from the query: a
trailing ``"(PS4)"``, ``"[Xbox One]"``, ``"- PC"``, ``"for Nintendo Switch"`` or a mixed
``"(PS4, 2016)"`` is taken off the title (:func:`split_platform`), and among the candidates of a
key tier those released on that platform are preferred (all are kept when none is).

Resolution rules (:meth:`Catalog.resolve`)
-------------------------------------------
1. The query's year is the ``year`` argument, else a trailing ``"(Year)"`` of the query.
2. Titles are compared by :func:`normalize_title` key over all aliases of every item. The query's
   own alternatives in trailing parentheses count too (``"Seven (a.k.a. Se7en)"``). Key tiers are
   tried in order; the first that gives a match or an ambiguity decides:
   ``"title"`` (the key), ``"compact"`` (the key without spaces: "Spider-Man" = "Spiderman",
   "Alien³" = "Alien 3") and, only for queries with a year and only at that exact year, ``"head"``
   (the query equals the part of an alias before ``":"``/``" - "``: "Star Wars (1977)" =
   "Star Wars: Episode IV - A New Hope").
3. With a year, a candidate's distance is the smallest ``|year - y|`` over the years its sources
   give (sources disagree by a year for about 3% of films); candidates farther than
   ``year_tolerance`` (default 1) drop out and the nearest remain. Candidates without any year
   never match a query that has one.
4. Among the remaining (or, without a year, all) candidates: one is the match; of several, the
   most popular is taken only if it dominates, i.e. its vote count (``expm1(popularity)``) is
   positive and at least ``dominance`` (default 3) times the runner-up's; otherwise
   ``"ambiguous"``.

Reasons (:data:`REASONS`): matches are ``"exact_year"``, ``"near_year"``, ``"unique_title"``,
``"most_popular"``; failures are ``"empty"``, ``"unknown_title"``, ``"year_mismatch"``,
``"ambiguous"``.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from . import package_file, sources
from ..domains import DEFAULT as DEFAULT_DOMAIN
from ..domains import Domain, get_domain

# ----------------------------------------------------------------------------------------------
# Title normalisation
# ----------------------------------------------------------------------------------------------

_YEAR_RE = re.compile(r"^(?P<title>.*?)\s*\(\s*(?P<year>(?:18|19|20)\d{2})\s*(?:[-–/]\s*\d{0,4}\s*)?\)\s*$")

_ARTICLE = r"the|a|an|la|le|les|l'|il|el|los|las|der|die|das|den"
# "Matrix, The" / "Crow, The: Wicked Prayer" (GroupLens/filmratings form); the article moves to the front.
_TRAILING_ARTICLE_RE = re.compile(rf"^(?P<body>.+?),\s*(?P<art>{_ARTICLE})(?P<rest>\s*:.*)?$", re.I)
# Only English articles are dropped from the front of the key ("The Matrix" = "Matrix"); foreign
# ones stay ("La Haine", "Die Hard").
_LEADING_ARTICLES = frozenset({"the", "a", "an"})
_TRAILING_PARENS_RE = re.compile(r"\s*\(([^()]*)\)\s*$")
_YEARISH_RE = re.compile(r"(?:18|19|20)\d{2}(?:\s*[-–/]\s*\d{0,4})?")  # "(1995)", "(2011-2020)": not a title
_AKA_RE = re.compile(r"^\s*(?:a\.k\.a\.|aka)\s*", re.I)
_HEAD_RE = re.compile(r"\s*(?::|\s[-–—]\s)\s*")
_ELISION_RE = re.compile(r"\b([ld])'\s*")
_NON_WORD_RE = re.compile(r"[\W_]+")
# Typographic quotes -> "'", and Latin letters NFKD does not decompose -> ASCII.
_FOLD = str.maketrans({"\u2018": "'", "\u2019": "'", "`": "'", "\u00b4": "'", "\u02bc": "'",
                       "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Ø": "O", "ø": "o", "Ł": "L", "ł": "l",
                       "Đ": "D", "đ": "d", "Þ": "Th", "þ": "th", "ı": "i"})


def split_title_year(text: str) -> tuple[str, int | None]:
    """Split ``"Title (Year)"`` into ``("Title", year)``; ``(text, None)`` when no trailing year.

    Tolerates extra spaces (``"Heat  (1995)"``), ranges (``"Homeland (2011-2020)"`` -> 2011) and
    MovieLens alternative titles (``"City of Lost Children, The (Cité des enfants perdus, La) (1995)"``).
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return "", None
    s = " ".join(str(text).split())
    m = _YEAR_RE.match(s)
    if not m:
        return s.strip(), None
    return m.group("title").strip(), int(m.group("year"))


def _split_parens(title: str) -> tuple[str, list[str]]:
    """``"Seven (a.k.a. Se7en)"`` -> ``("Seven", ["Se7en"])``: trailing parenthesised groups are
    alternative titles (a whole-parenthesised title such as ``"(untitled)"`` is kept)."""
    s = " ".join(str(title).split())
    alts: list[str] = []
    while s.endswith(")"):
        m = _TRAILING_PARENS_RE.search(s)
        if not m or m.start() == 0:
            break
        alt = _AKA_RE.sub("", m.group(1)).strip()
        if alt and not _YEARISH_RE.fullmatch(alt):
            alts.insert(0, alt)
        s = s[: m.start()]
    return s.strip(), alts


def _front_article(title: str) -> str:
    """``"Matrix, The"`` -> ``"The Matrix"``; ``"Crow, The: Wicked Prayer"`` -> ``"The Crow: Wicked Prayer"``."""
    m = _TRAILING_ARTICLE_RE.match(title) if "," in title else None
    if not m:
        return title
    art = m.group("art")
    sep = "" if art.endswith("'") else " "
    return f"{art}{sep}{m.group('body')}{m.group('rest') or ''}"


def title_variants(title: str) -> list[str]:
    """All titles a source title string names, the readable main title first, then each
    alternative in trailing parentheses; ``"a.k.a."`` removed, trailing articles moved to the front
    (``"City of Lost Children, The (Cité des enfants perdus, La)"`` -> ``["The City of Lost
    Children", "La Cité des enfants perdus"]``)."""
    if not title or (isinstance(title, float) and math.isnan(title)):
        return []
    main, alts = _split_parens(str(title).replace("\u00a0", " "))
    out = []
    for t in [main, *alts]:
        t = _front_article(t)
        if t and t not in out:
            out.append(t)
    return out


def normalize_title(title: str) -> str:
    """Matching key of a title: unicode folded (accents dropped, case folded), trailing
    parenthesised alternatives removed, a trailing article moved to the front, leading English
    article dropped, '&' -> 'and', apostrophes removed, other punctuation -> space, whitespace
    collapsed. ``""`` for empty input. Non-Latin letters are kept."""
    if not title or (isinstance(title, float) and math.isnan(title)):
        return ""
    s = str(title)
    if not s.isascii():
        s = unicodedata.normalize("NFKD", s)  # NBSP -> space, "³" -> "3", ligatures split
        s = "".join(ch for ch in s if not unicodedata.combining(ch)).translate(_FOLD)
    elif "`" in s:
        s = s.replace("`", "'")
    s = s.strip()
    if s.endswith(")"):
        s, _ = _split_parens(s)
    s = _front_article(s).casefold()
    if "&" in s:
        s = s.replace("&", " and ")
    first = s.split(None, 1)
    if len(first) == 2 and first[0] in _LEADING_ARTICLES:
        s = first[1]
    if "'" in s:
        s = _ELISION_RE.sub(r"\1 ", s).replace("'", "")  # "L'Avventura" = "L' Avventura"; "Schindler's"
    return _NON_WORD_RE.sub(" ", s).strip()


def title_head(title: str) -> str:
    """Key of the part before the first ``":"`` or ``" - "`` (``""`` when there is none):
    ``"Borat: Cultural Learnings..."`` -> ``"borat"``."""
    if not title or (isinstance(title, float) and math.isnan(title)):
        return ""
    title = str(title)
    if ":" not in title and " - " not in title and "–" not in title and "—" not in title:
        return ""
    main, _ = _split_parens(title)
    parts = _HEAD_RE.split(_front_article(main), maxsplit=1)
    return normalize_title(parts[0]) if len(parts) == 2 else ""


# ----------------------------------------------------------------------------------------------
# Catalog and resolver (domain-neutral)
# ----------------------------------------------------------------------------------------------

REASONS = {
    "exact_year": "matched; a source gives the item the query's year",
    "near_year": "matched; the item's nearest year is within the year tolerance",
    "unique_title": "matched; no year given and one item has the title",
    "most_popular": "matched; no year given, several items have the title, the most popular dominates",
    "empty": "no match; the query has no letters or digits",
    "unknown_title": "no match; no item has the title",
    "year_mismatch": "no match; items have the title but none has a year within the tolerance",
    "ambiguous": "no match; several items are equally near and none dominates by popularity (see candidates)",
}
MATCHED = frozenset({"exact_year", "near_year", "unique_title", "most_popular"})
TIERS = ("title", "compact", "head")  # Resolution.tier values, in lookup order
_MAX_CANDIDATES = 20


@dataclass(frozen=True)
class Resolution:
    """Outcome of one lookup. ``item_id`` is None unless ``reason`` is a match reason; ``tier`` is
    the key tier that found the candidates (``""`` when none did); ``candidates`` are the item ids
    with the title, nearest and most popular first."""

    item_id: str | None
    reason: str
    query_title: str
    query_year: int | None
    candidates: tuple[str, ...] = ()
    tier: str = ""
    query_platform: str | None = None  # games: the platform code read from the query or given

    @property
    def matched(self) -> bool:
        return self.item_id is not None


@dataclass(eq=False)
class Catalog:
    """Items of one domain plus the title resolver over their aliases.

    ``items``: index ``item_id``; columns title, year (Int64), genres (list), popularity (float,
    ``log1p`` of a vote count), sources (list), plus domain columns. ``aliases``: columns item_id,
    title, year (Int64), source.
    """

    domain: str
    items: pd.DataFrame
    aliases: pd.DataFrame
    year_tolerance: int = 1
    dominance: float = 3.0
    # games: platform name key -> platform code; with it, queries name platforms (see the module doc)
    platform_aliases: dict[str, str] | None = None
    _index: dict[str, dict[str, tuple[str, ...]]] = field(init=False, repr=False)
    _years: dict[str, frozenset[int]] = field(init=False, repr=False)
    _votes: dict[str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        al = self.aliases
        ids = al["item_id"].tolist()
        titles = al["title"].tolist()
        uniq = list(dict.fromkeys(titles))
        key_of = dict(zip(uniq, map(normalize_title, uniq)))
        head_of = dict(zip(uniq, map(title_head, uniq)))
        keys = [key_of[t] for t in titles]
        self._index = {
            "title": _group_ids(keys, ids),
            "compact": _group_ids([k.replace(" ", "") for k in keys], ids),
            "head": _group_ids([head_of[t] for t in titles], ids),
        }
        yrs = pd.concat([al[["item_id", "year"]], self.items["year"].rename_axis("item_id").reset_index()])
        yrs = yrs.dropna().drop_duplicates()
        years: dict[str, set[int]] = {}
        for i, y in zip(yrs["item_id"].tolist(), yrs["year"].astype("int64").tolist()):
            years.setdefault(i, set()).add(y)
        self._years = {i: frozenset(v) for i, v in years.items()}
        self._votes = dict(zip(self.items.index, np.expm1(self.items["popularity"].fillna(0.0).to_numpy())))
        self._platforms: dict[str, frozenset[str]] = {}
        if self.platform_aliases is not None and "platforms" in self.items:
            self._platforms = {i: frozenset(p) for i, p in self.items["platforms"].items() if isinstance(p, list) and p}
        self._cached = lru_cache(maxsize=1 << 18)(self._resolve)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._votes

    def __repr__(self) -> str:
        return f"Catalog(domain={self.domain!r}, items={len(self.items)}, aliases={len(self.aliases)})"

    def display(self, item_id: str) -> str:
        """``"Title (Year)"`` of an item (``"Title"`` when its year is unknown)."""
        try:
            row = self.items.loc[item_id]
        except KeyError:
            raise KeyError(f"{self.domain} catalog has no item {item_id!r}") from None
        return row["title"] if pd.isna(row["year"]) else f"{row['title']} ({int(row['year'])})"

    def resolve(self, query: str, year: int | None = None, year_tolerance: int | None = None,
                platform: str | None = None) -> Resolution:
        """Resolve one title (``"Title (Year)"`` or title plus ``year``); see the module rules.
        ``platform`` (a platform code or name) only works for a catalog with platforms (games)."""
        tol = self.year_tolerance if year_tolerance is None else int(year_tolerance)
        if tol < 0:
            raise ValueError(f"year_tolerance must be >= 0, got {year_tolerance!r}")
        if year is None or pd.isna(year):
            year = None
        else:
            try:
                year = int(year)
            except (TypeError, ValueError):
                raise ValueError(f"year must be an integer or None, got {year!r}") from None
        query = query if isinstance(query, str) else ("" if query is None else str(query))
        if self.platform_aliases is None:
            if platform is not None:
                raise ValueError(f"the {self.domain} catalog has no platforms; got platform={platform!r}")
            return self._cached(query, year, tol)
        query, named, in_query_year = split_platform(query, self.platform_aliases)
        if platform is not None:
            code = self.platform_aliases.get(normalize_title(platform))
            if code is None:
                raise ValueError(f"unknown platform {platform!r}; known: {', '.join(sorted(set(self.platform_aliases.values())))}")
            named = code
        return self._cached(query, in_query_year if year is None else year, tol, named)

    def resolve_many(self, queries: Iterable, year_tolerance: int | None = None) -> list[Resolution]:
        """Resolve many queries; each is a string or a ``(title, year)`` pair. Repeated queries hit a
        per-catalog cache (:meth:`cache_clear` empties it)."""
        out = []
        for q in queries:
            if isinstance(q, (tuple, list)):
                out.append(self.resolve(q[0], q[1], year_tolerance))
            else:
                out.append(self.resolve(q, None, year_tolerance))
        return out

    def cache_clear(self) -> None:
        self._cached.cache_clear()

    # -- internals ------------------------------------------------------------------------------
    def _resolve(self, query: str, year: int | None, tol: int, platform: str | None = None) -> Resolution:
        res = self._resolve_title(query, year, tol, platform)
        return res if platform is None else dataclasses.replace(res, query_platform=platform)

    def _resolve_title(self, query: str, year: int | None, tol: int, platform: str | None) -> Resolution:
        title, parsed = split_title_year(query)
        year = parsed if year is None else year
        keys = [k for k in dict.fromkeys(map(normalize_title, title_variants(title))) if k]
        if not keys:
            return Resolution(None, "empty", title, year, ())
        idx = self._index
        lookups = [("title", idx["title"].get(k, ())) for k in keys]
        lookups += [("compact", idx["compact"].get(k.replace(" ", ""), ())) for k in keys]
        if year is not None:  # head matches are only trusted with the exact year
            lookups += [("head", idx["head"].get(k, ())) for k in keys]
        first_fail: Resolution | None = None
        for tier, cands in lookups:
            if not cands:
                continue
            if platform is not None and self._platforms:  # prefer items released on the platform
                cands = tuple(i for i in cands if platform in self._platforms.get(i, ())) or cands
            res = self._decide(title, year, 0 if tier == "head" else tol, cands, tier)
            if res.item_id is not None or res.reason == "ambiguous":
                return res
            first_fail = first_fail or res
        return first_fail or Resolution(None, "unknown_title", title, year, ())

    def _decide(self, title: str, year: int | None, tol: int, cands: tuple[str, ...], tier: str) -> Resolution:
        votes = self._votes
        if year is None:
            ranked = sorted(cands, key=lambda i: -votes.get(i, 0.0))
            if self._dominates(ranked):
                return Resolution(ranked[0], "unique_title" if len(ranked) == 1 else "most_popular",
                                  title, None, tuple(ranked[:_MAX_CANDIDATES]), tier)
            return Resolution(None, "ambiguous", title, None, tuple(ranked[:_MAX_CANDIDATES]), tier)
        dist = {i: min((abs(y - year) for y in self._years.get(i, ())), default=math.inf) for i in cands}
        ranked = sorted(cands, key=lambda i: (dist[i], -votes.get(i, 0.0)))
        shown = tuple(ranked[:_MAX_CANDIDATES])
        best = dist[ranked[0]]
        if best > tol:
            return Resolution(None, "year_mismatch", title, year, shown, tier)
        nearest = [i for i in ranked if dist[i] == best]
        if not self._dominates(nearest):
            return Resolution(None, "ambiguous", title, year, tuple(nearest[:_MAX_CANDIDATES]), tier)
        return Resolution(nearest[0], "exact_year" if best == 0 else "near_year", title, year, shown, tier)

    def _dominates(self, ranked: list[str]) -> bool:
        """True if ``ranked`` (most popular first) has one item, or its first item's vote count is
        positive and at least ``dominance`` times the second's."""
        if len(ranked) == 1:
            return True
        top, second = self._votes.get(ranked[0], 0.0), self._votes.get(ranked[1], 0.0)
        return top > 0 and top >= self.dominance * second


def _group_ids(keys: Iterable[str], ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``{key: distinct item ids in first-seen order}``, empty keys skipped."""
    out: dict[str, dict[str, None]] = {}
    for k, i in zip(keys, ids):
        if k:
            out.setdefault(k, {})[i] = None
    return {k: tuple(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Movie catalog
# ----------------------------------------------------------------------------------------------

MOVIE_SOURCES = ("ml_latest_small", "imdb_scrape", "imdb5000", "tmdb5000", "reddit_entity2id")
# the data files the movie catalog is built from (cache keys of downstream stages use their sha256)
CATALOG_FILES = ("ml_latest_small/movies.csv", "ml_latest_small/links.csv", "ml_latest_small/ratings.csv",
                 "imdb_scrape/imdb_lists_combined.csv", "imdb5000/movie_metadata.csv",
                 "reddit_entity2id/entity2id.json", "tmdb5000/tmdb_5000_movies.csv")
# Display title and year are taken from the first source in this order that has them.
_TITLE_PRIORITY = ("tmdb5000", "imdb5000", "imdb_scrape", "ml_latest_small", "reddit_entity2id")
_YEAR_PRIORITY = ("imdb_scrape", "imdb5000", "ml_latest_small", "tmdb5000", "reddit_entity2id")
# Popularity = log1p(IMDb-vote equivalent): the largest of the IMDb vote counts (imdb_scrape,
# imdb5000), TMDB vote_count x 210 and MovieLens rating count x 6760. The factors are the median
# ratios IMDb votes / count over the movies that have both in this mirror.
_VOTES_PER_TMDB_VOTE = 210.0
_VOTES_PER_ML_RATING = 6760.0
_GENRE_SYNONYMS = {"science fiction": "sci-fi", "(no genres listed)": None, "": None}
_TT_RE = re.compile(r"^tt\d{7,8}$")


def _tt(raw: pd.Series, file: str, column: str) -> pd.Series:
    """``tt`` ids from digits (padded to 7) or ``tt`` strings; a bad value raises DataError."""
    s = raw.astype("string").str.strip()
    s = s.where(s.str.startswith("tt"), "tt" + s.str.zfill(7))
    bad = s[~s.str.match(_TT_RE.pattern).fillna(False)]
    if len(bad):
        raise sources.DataError(f"{file}: column {column!r} holds a non-IMDb id {raw.loc[bad.index[0]]!r}")
    return s


def _genres(values: Iterable, sep: str | None) -> list[list[str]]:
    """Lower-case genre lists from ``sep``-joined strings (or lists); synonyms unified."""
    memo: dict[str, list[str]] = {}
    out = []
    for v in (values.tolist() if hasattr(values, "tolist") else values):
        if isinstance(v, list):
            v = "\x00".join(v)
            parts_sep = "\x00"
        elif isinstance(v, str):
            parts_sep = sep
        else:
            out.append([])
            continue
        if v not in memo:
            gs: dict[str, None] = {}
            for g in v.split(parts_sep):
                g = g.strip().lower()
                g = _GENRE_SYNONYMS.get(g, g)
                if g:
                    gs[g] = None
            memo[v] = list(gs)
        out.append(list(memo[v]))
    return out


def _frame(source: str, item_id, title, year, **cols) -> pd.DataFrame:
    df = pd.DataFrame({"item_id": item_id, "source": source, "title": title,
                       "year": pd.array(year, dtype="Int64"), **cols})
    return df.reset_index(drop=True)


def _read_csv(file: str, root, columns: list[str], **kwargs) -> pd.DataFrame:
    """Columns ``columns`` of a registered CSV; a missing column or bad value raises DataError."""
    try:
        return pd.read_csv(sources.path(file, root), usecols=columns, **kwargs)
    except (ValueError, TypeError) as exc:  # usecols mismatch, unparsable dtype
        raise sources.DataError(f"{file}: cannot read columns {columns}: {exc}") from None


def _read_movielens(root) -> pd.DataFrame:
    f_movies, f_links, f_ratings = "ml_latest_small/movies.csv", "ml_latest_small/links.csv", "ml_latest_small/ratings.csv"
    movies = _read_csv(f_movies, root, ["movieId", "title", "genres"],
                       dtype={"movieId": "int64", "title": str, "genres": str})
    links = _read_csv(f_links, root, ["movieId", "imdbId", "tmdbId"],
                      dtype={"movieId": "int64", "imdbId": str, "tmdbId": "Int64"})
    counts = _read_csv(f_ratings, root, ["movieId"], dtype={"movieId": "int64"})["movieId"].value_counts()
    df = movies.merge(links, on="movieId", how="left", validate="one_to_one")
    missing = df["imdbId"].isna()
    if missing.any():
        raise sources.DataError(f"{f_links}: no imdbId for movieId {int(df.loc[missing, 'movieId'].iloc[0])}")
    title_year = df["title"].map(split_title_year)
    return _frame("ml_latest_small", _tt(df["imdbId"], f_links, "imdbId"),
                  [t for t, _ in title_year], [y for _, y in title_year],
                  genres=_genres(df["genres"], "|"),
                  votes=df["movieId"].map(counts).fillna(0).to_numpy() * _VOTES_PER_ML_RATING,
                  ml_movie_id=pd.array(df["movieId"], dtype="Int64"),
                  tmdb_id=df["tmdbId"].to_numpy())


def _read_imdb_scrape(root) -> pd.DataFrame:
    f = "imdb_scrape/imdb_lists_combined.csv"
    df = _read_csv(f, root, ["imdb_id", "movie_title", "year", "genre", "votes"], dtype=str, keep_default_na=False)
    year = pd.to_numeric(df["year"].where(df["year"].str.fullmatch(r"\d{4}"), None), errors="coerce")
    votes = pd.to_numeric(df["votes"].str.replace(",", "", regex=False), errors="coerce")  # "$0.01M" -> NaN
    return _frame("imdb_scrape", _tt(df["imdb_id"], f, "imdb_id"), df["movie_title"], year,
                  genres=_genres(df["genre"], ","), votes=votes.to_numpy())


def _read_imdb5000(root) -> pd.DataFrame:
    f = "imdb5000/movie_metadata.csv"
    df = _read_csv(f, root, ["movie_imdb_link", "movie_title", "title_year", "genres", "num_voted_users"], sep=";",
                   dtype={"movie_imdb_link": str, "movie_title": str, "genres": str, "title_year": float,
                          "num_voted_users": float})
    df = df[df["movie_imdb_link"].notna()]  # one truncated row (index 5032, "Sanctuary") has no link
    tt = df["movie_imdb_link"].str.extract(r"/title/(tt\d{7,8})", expand=False)
    if tt.isna().any():
        raise sources.DataError(f"{f}: movie_imdb_link without a tt id: {df.loc[tt.isna(), 'movie_imdb_link'].iloc[0]!r}")
    title = df["movie_title"].str.replace("\u00a0", " ", regex=False).str.strip()  # NBSP at the end of titles
    return _frame("imdb5000", tt, title, df["title_year"].round(),
                  genres=_genres(df["genres"], "|"), votes=df["num_voted_users"].to_numpy(dtype=float))


def _read_entity2id(root) -> pd.DataFrame:
    f = "reddit_entity2id/entity2id.json"
    try:
        raw = json.loads(sources.path(f, root).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise sources.DataError(f"{f}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise sources.DataError(f"{f}: expected an object 'Title (Year)' -> tt id, got {type(raw).__name__}")
    keys = list(raw)
    title_year = [split_title_year(k) for k in keys]
    return _frame("reddit_entity2id", _tt(pd.Series(list(raw.values()), dtype="string"), f, "value"),
                  [t for t, _ in title_year], [y for _, y in title_year])


def _read_tmdb(root, ml: pd.DataFrame) -> pd.DataFrame:
    """TMDB 5000 rows that MovieLens links to a tt id (title and original title both kept)."""
    f = "tmdb5000/tmdb_5000_movies.csv"
    df = _read_csv(f, root, ["id", "title", "original_title", "genres", "overview", "release_date", "vote_count"],
                   dtype={"id": "int64", "title": str, "original_title": str, "genres": str, "overview": str,
                          "release_date": str, "vote_count": float})
    link = ml.dropna(subset=["tmdb_id"]).drop_duplicates("tmdb_id").set_index("tmdb_id")["item_id"]
    df = df[df["id"].isin(link.index)]
    tt = df["id"].map(link)
    year = pd.to_datetime(df["release_date"], errors="coerce", format="%Y-%m-%d").dt.year
    try:
        genres = _genres(([g["name"] for g in json.loads(v)] for v in df["genres"].fillna("[]")), None)
    except (ValueError, TypeError, KeyError) as exc:
        raise sources.DataError(f"{f}: column 'genres' is not a JSON list of {{id, name}} ({exc})") from None
    votes = df["vote_count"].to_numpy(dtype=float) * _VOTES_PER_TMDB_VOTE
    main = _frame("tmdb5000", tt, df["title"], year, genres=genres, votes=votes,
                  tmdb_id=pd.array(df["id"], dtype="Int64"), overview=df["overview"].to_numpy())
    orig = _frame("tmdb5000", tt, df["original_title"], year)
    return pd.concat([main, orig[df["original_title"].to_numpy() != df["title"].to_numpy()]], ignore_index=True)


def build_catalog(domain: str, rows: pd.DataFrame, source_order: tuple[str, ...],
                  title_priority: tuple[str, ...] | None = None, year_priority: tuple[str, ...] | None = None,
                  **options) -> Catalog:
    """A :class:`Catalog` from per-source rows (columns item_id, source, title, year, and optionally
    genres (list), platforms (list), votes (float), plus any extra columns).

    Every title variant of every row becomes an alias. Per item: title and year come from the first
    source in ``title_priority`` / ``year_priority`` (default ``source_order``) that has one; genres
    (and platforms) are merged; popularity is ``log1p`` of the largest ``votes``; extra columns take the first
    non-null value in ``source_order``. ``options`` go to :class:`Catalog`."""
    missing = {"item_id", "source", "title", "year"} - set(rows.columns)
    if missing:
        raise ValueError(f"build_catalog({domain!r}): rows lack columns {sorted(missing)}")
    unknown = set(rows["source"].unique()) - set(source_order)
    if unknown:
        raise ValueError(f"build_catalog({domain!r}): sources {sorted(unknown)} are not in source_order")
    gc_was_enabled = gc.isenabled()
    gc.disable()  # many small containers; the cyclic collector only costs time here
    try:
        rows = rows.reset_index(drop=True)
        memo: dict[str, list[str]] = {}
        variants = []
        for t in rows["title"].tolist():
            if t not in memo:
                memo[t] = title_variants(t)
            variants.append(memo[t])
        rows["title"] = [v[0] if v else None for v in variants]
        al = rows[["item_id", "source", "year"]].assign(title=variants).explode("title")
        al = al.dropna(subset=["title"]).drop_duplicates().reset_index(drop=True)[["item_id", "title", "year", "source"]]

        ids = rows["item_id"].tolist()
        items = pd.DataFrame(index=pd.Index(sorted(set(ids)), name="item_id"))
        items["title"] = _first_by(rows, "title", title_priority or source_order).reindex(items.index).fillna("")
        items["year"] = _first_by(rows, "year", year_priority or source_order).reindex(items.index).astype("Int64")
        genres: dict[str, dict[str, None]] = {}
        srcs: dict[str, set[str]] = {}
        all_genres = rows["genres"].tolist() if "genres" in rows else [None] * len(ids)
        for i, gs, src in zip(ids, all_genres, rows["source"].tolist()):
            d = genres.setdefault(i, {})
            if isinstance(gs, list):
                for g in gs:
                    d[g] = None
            srcs.setdefault(i, set()).add(src)
        keys = items.index.tolist()
        items["genres"] = [list(genres[i]) for i in keys]
        src_lists = {fs: [s for s in source_order if s in fs] for fs in set(map(frozenset, srcs.values()))}
        items["sources"] = [list(src_lists[frozenset(srcs[i])]) for i in keys]
        if "platforms" in rows:
            plats: dict[str, dict[str, None]] = {}
            for i, ps in zip(ids, rows["platforms"].tolist()):
                d = plats.setdefault(i, {})
                for x in ps if isinstance(ps, list) else ():
                    d[x] = None
            items["platforms"] = [list(plats[i]) for i in keys]
        votes = pd.to_numeric(rows["votes"], errors="coerce") if "votes" in rows else pd.Series(0.0, index=rows.index)
        items["popularity"] = np.log1p(votes.groupby(rows["item_id"]).max().reindex(items.index).fillna(0.0).astype(float))
        for col in rows.columns.difference(["item_id", "source", "title", "year", "genres", "platforms", "votes"], sort=False):
            items[col] = _first_by(rows, col, source_order).reindex(items.index)
        return Catalog(domain, items, al, **options)
    finally:
        if gc_was_enabled:
            gc.enable()


def _first_by(rows: pd.DataFrame, column: str, priority: tuple[str, ...]) -> pd.Series:
    """Per item, the ``column`` value of the first source in ``priority`` that has one."""
    vals = rows[column]
    ok = vals.notna()
    if vals.dtype == object or pd.api.types.is_string_dtype(vals.dtype):
        ok &= vals.astype("string").str.len().fillna(0) > 0
    sub = rows.loc[ok, ["item_id", "source", column]]
    rank = sub["source"].map({s: i for i, s in enumerate(priority)}).fillna(len(priority))
    sub = sub.assign(_rank=rank).sort_values("_rank", kind="stable")
    return sub.drop_duplicates("item_id").set_index("item_id")[column]


def load_movie_catalog(root, exclude: frozenset[str] = frozenset()) -> Catalog:
    """The movie catalog from the files under ``root`` minus the sources in ``exclude`` (uncached:
    :func:`load_catalog` caches it)."""
    frames = []
    ml = _read_movielens(root) if "ml_latest_small" not in exclude else None
    if ml is not None:
        frames.append(ml)
    if "imdb_scrape" not in exclude:
        frames.append(_read_imdb_scrape(root))
    if "imdb5000" not in exclude:
        frames.append(_read_imdb5000(root))
    if "tmdb5000" not in exclude and ml is not None:  # TMDB has no tt id of its own
        frames.append(_read_tmdb(root, ml))
    if "reddit_entity2id" not in exclude:
        frames.append(_read_entity2id(root))
    if not frames:
        raise ValueError(f"exclude_sources removes every movie source ({', '.join(MOVIE_SOURCES)})")
    rows = pd.concat(frames, ignore_index=True)
    for col, dtype in (("ml_movie_id", "Int64"), ("tmdb_id", "Int64"), ("overview", object)):
        rows[col] = rows[col].astype(dtype) if col in rows else pd.Series(pd.NA, index=rows.index, dtype=dtype)
    return build_catalog("movies", rows, MOVIE_SOURCES, _TITLE_PRIORITY, _YEAR_PRIORITY)


# ----------------------------------------------------------------------------------------------
# Game catalog (SafeGame)
# ----------------------------------------------------------------------------------------------

GAME_SOURCES = ("vgsales", "pegi", "esrb")  # linking order: each source is matched against the ones before
GAME_FILES = {"vgsales": "vgsales/Video_Games_Sales_as_at_22_Dec_2016.csv",
              "pegi": "pegi/PEGI_Ratings_20170907.csv",
              "esrb": "esrb/games.csv"}
# the data files the game catalog is built from (cache keys of downstream stages use their sha256)
GAME_CATALOG_FILES = tuple(GAME_FILES.values())
# vgsales rows of one title whose release years are further apart than this are different games
# (a remake or reboot under the same name: "Tomb Raider" 1996 and 2013)
GAME_YEAR_GAP = 4
# the ESRB table is the PS4 / Xbox One era: its console column is 0 = PS4, 1 = PS4 and Xbox One
_ESRB_CONSOLE = {0: ["PS4"], 1: ["PS4", "XOne"]}
_ESRB_ERA = 2013  # PS4 and Xbox One launched in November 2013
_GAME_GENRE_SYNONYMS = {"rpg": "role-playing", "misc": None, "other": None, "": None}
_MARKS_RE = re.compile(r"[\u2122\u00ae\u00a9]")  # ™ ® ©
# trailing notes of vgsales/PEGI names that are not titles: "(JP weekly sales)", "(DS Version)", "(PC Demo)"
_NOTE_RE = re.compile(r"\s*\((?=[^()]*\b(?:sales|versions?|demo|promotion|tracklist\w*|weekly)\b)[^()]*\)\s*$", re.I)
_PLATFORM_TAIL_RE = re.compile(r"^(?P<title>.*\S)\s*(?:\s[-\u2013\u2014|]\s*|\s(?:for|on)\s+(?:the\s+)?)(?P<p>[^-\u2013\u2014|()\[\]]+?)\s*$", re.I)
_GROUP_TAIL_RE = re.compile(r"^(?P<title>.*?)\s*(?:\((?P<a>[^()]*)\)|\[(?P<b>[^\[\]]*)\])\s*$")
_GROUP_SPLIT_RE = re.compile(r"\s*(?:,|/|;|&|\+|\band\b)\s*", re.I)
_ROMAN = {"ii": "2", "iii": "3", "iv": "4", "v": "5", "vi": "6", "vii": "7", "viii": "8", "ix": "9",
          "xi": "11", "xii": "12", "xiii": "13", "xiv": "14", "xv": "15", "xvi": "16"}
_ROMAN_TOKEN_RE = re.compile(r"\b(" + "|".join(sorted((k.upper() for k in _ROMAN), key=len, reverse=True)) + r")\b")


@lru_cache(maxsize=1)
def games_data() -> dict:
    """The package's game domain table (``data/games.json``: trait mapping, request templates,
    ...), read once per process."""
    path = package_file("games.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


@lru_cache(maxsize=1)
def platform_aliases() -> dict[str, str]:
    """Platform name key (:func:`normalize_title`) -> platform code (``data/games.json``)."""
    out: dict[str, str] = {}
    for code, names in games_data()["platforms"].items():
        for name in [code, *names]:
            key = normalize_title(name)
            if out.get(key, code) != code:
                raise ValueError(f"data/games.json: platform name {name!r} is listed for both {out[key]} and {code}")
            out[key] = code
    return out


def platform_code(name: str | None, aliases: dict[str, str] | None = None) -> str | None:
    """``"PlayStation 4"`` -> ``"PS4"``; ``None`` when the name is no known platform."""
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return None
    return (platform_aliases() if aliases is None else aliases).get(normalize_title(str(name)))


def split_platform(query: str, aliases: dict[str, str] | None = None) -> tuple[str, str | None, int | None]:
    """Take platform mentions off the end of a game query: ``(title, platform code, year)``.

    ``"Doom (PS4)"``, ``"Doom [PlayStation 4]"``, ``"Doom - PS4"``, ``"Doom for the PS4"`` and
    ``"Doom (PS4, 2016)"`` all give ``("Doom", "PS4", ...)``; a year found inside a mixed group is
    returned as the third value (a plain ``"(2016)"`` stays in the title for the resolver). A
    trailing group that is not all platforms and years is kept (``"Halo (Combat Evolved)"``).
    Trademark signs are dropped. The first platform named wins."""
    aliases = platform_aliases() if aliases is None else aliases
    s = " ".join(_MARKS_RE.sub("", str(query)).split())
    platform: str | None = None
    year: int | None = None
    while True:
        m = _GROUP_TAIL_RE.match(s)
        if m and m.group("title"):
            parts = [x for x in _GROUP_SPLIT_RE.split(m.group("a") if m.group("a") is not None else m.group("b")) if x]
            codes = [aliases.get(normalize_title(x)) for x in parts]
            years = [int(x) for x in parts if re.fullmatch(r"(?:19|20)\d{2}", x)]
            if parts and any(codes) and all(c or re.fullmatch(r"(?:19|20)\d{2}", x) for c, x in zip(codes, parts)):
                platform = next(c for c in codes if c)
                year = years[0] if years else year
                s = m.group("title")
                continue
        m = _PLATFORM_TAIL_RE.match(s)
        if m and aliases.get(normalize_title(m.group("p"))):
            platform = aliases[normalize_title(m.group("p"))]
            s = m.group("title")
            continue
        return s, platform, year


def game_key(title: str) -> str:
    """Grouping key of a game title: :func:`normalize_title` with Roman sequel numbers II-XVI as
    digits (``"Grand Theft Auto V"`` = ``"Grand Theft Auto 5"``; a lone ``I`` or ``X`` is kept)."""
    return " ".join(_ROMAN.get(w, w) for w in normalize_title(title).split())


def _numeral_variant(title: str) -> str | None:
    """``"Grand Theft Auto V"`` -> ``"Grand Theft Auto 5"``: an alias for users who write digits."""
    out = _ROMAN_TOKEN_RE.sub(lambda m: _ROMAN[m.group(1).lower()], title)
    return out if out != title else None


def _clean_game_title(title) -> str | None:
    """A source's game name without trademark signs, sales/version notes and platform tags."""
    if title is None or (isinstance(title, float) and math.isnan(title)):
        return None
    s = " ".join(_MARKS_RE.sub("", str(title)).split())
    s = _NOTE_RE.sub("", s)
    s, _, _ = split_platform(s)
    return s.strip() or None


def _game_genres(values) -> list[list[str]]:
    out = []
    for v in values:
        g = str(v).strip().lower() if isinstance(v, str) else ""
        g = _GAME_GENRE_SYNONYMS.get(g, g)
        out.append([g] if g else [])
    return out


def _slug(key: str) -> str:
    return key.replace(" ", "-")


def _read_vgsales(root) -> pd.DataFrame:
    f = GAME_FILES["vgsales"]
    df = _read_csv(f, root, ["Name", "Platform", "Year_of_Release", "Genre", "Publisher", "Developer",
                             "Global_Sales", "Rating"],
                   dtype={"Name": str, "Platform": str, "Genre": str, "Publisher": str, "Developer": str, "Rating": str})
    df = df[df["Name"].notna()].reset_index(drop=True)  # two rows have no name
    year = pd.to_numeric(df["Year_of_Release"], errors="coerce")
    if ((year < 1970) | (year > 2030)).any():
        bad = df.loc[(year < 1970) | (year > 2030), "Year_of_Release"].iloc[0]
        raise sources.DataError(f"{f}: column 'Year_of_Release' holds an implausible year {bad!r}")
    sales = pd.to_numeric(df["Global_Sales"], errors="coerce")
    cleaned, named_years = [], []
    for name in df["Name"].tolist():
        t, y = split_title_year(_clean_game_title(name) or "")
        cleaned.append(t)
        named_years.append(y)
    out = pd.DataFrame({"source": "vgsales", "title": cleaned,
                        "year": pd.array(year.where(year.notna(), pd.Series(named_years, dtype=float)).round(), dtype="Int64"),
                        "platform": [platform_code(p) or str(p) for p in df["Platform"]],
                        "genres": _game_genres(df["Genre"]), "publisher": df["Publisher"], "developer": df["Developer"],
                        "sales": sales.fillna(0.0), "rating": df["Rating"], "row": np.arange(len(df))})
    return out[out["title"].str.len() > 0].reset_index(drop=True)


def _read_pegi(root) -> pd.DataFrame:
    f = GAME_FILES["pegi"]
    df = _read_csv(f, root, ["game", "rating", "platform", "genre", "release"],
                   dtype={"game": str, "platform": str, "genre": str, "release": str})
    rating = pd.to_numeric(df["rating"], errors="coerce")
    bad = rating.notna() & ~rating.isin([3, 7, 12, 16, 18])
    if bad.any():
        raise sources.DataError(f"{f}: column 'rating' holds {df.loc[bad, 'rating'].iloc[0]!r}, not a PEGI age (3/7/12/16/18)")
    year = pd.to_datetime(df["release"], errors="coerce", format="%Y-%m-%d").dt.year
    titles = [_clean_game_title(t) for t in df["game"].tolist()]
    out = pd.DataFrame({"source": "pegi", "title": titles, "year": pd.array(year, dtype="Int64"),
                        "platform": [platform_code(p) or (str(p) if isinstance(p, str) else None) for p in df["platform"]],
                        "genres": _game_genres(df["genre"]),
                        "rating": [None if pd.isna(r) else str(int(r)) for r in rating], "row": np.arange(len(df))})
    return out[out["title"].notna()].reset_index(drop=True)


ESRB_RATING_COLUMN = "esrb_rating"


def _read_esrb(root) -> pd.DataFrame:
    f = GAME_FILES["esrb"]
    desc = list(games_data()["esrb_descriptors"])
    df = _read_csv(f, root, ["title", "console", *desc, ESRB_RATING_COLUMN], dtype={"title": str, ESRB_RATING_COLUMN: str})
    for col in ["console", *desc]:
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = ~vals.isin(list(_ESRB_CONSOLE) if col == "console" else [0, 1])
        if bad.any():
            k = int(np.flatnonzero(bad.to_numpy())[0])
            raise sources.DataError(f"{f}: row {k + 2} ({df['title'].iloc[k]!r}): column {col!r} holds "
                                    f"{df[col].iloc[k]!r}, expected " + ("0 or 1 (PS4 / PS4 and Xbox One)" if col == "console" else "0 or 1"))
        df[col] = vals.astype(int)
    out = pd.DataFrame({"source": "esrb", "title": [_clean_game_title(t) for t in df["title"]],
                        "year": pd.array([None] * len(df), dtype="Int64"),
                        "platforms": [list(_ESRB_CONSOLE[c]) for c in df["console"]],
                        "rating": df[ESRB_RATING_COLUMN], "row": np.arange(len(df))})
    out = pd.concat([out, df[desc].reset_index(drop=True)], axis=1)
    return out[out["title"].notna()].reset_index(drop=True)


def _vgsales_items(vg: pd.DataFrame) -> list[str]:
    """Item id per vgsales row: rows of one :func:`game_key` form one game unless their years are
    more than :data:`GAME_YEAR_GAP` apart; a row without a year joins its key's best-selling game."""
    ids: list[str | None] = [None] * len(vg)
    keys = [game_key(t) for t in vg["title"].tolist()]
    by_key: dict[str, list[int]] = defaultdict(list)
    for k, key in enumerate(keys):
        by_key[key].append(k)
    years, sales = vg["year"].tolist(), vg["sales"].tolist()
    for key, rows in by_key.items():
        dated = sorted((r for r in rows if not pd.isna(years[r])), key=lambda r: years[r])
        clusters: list[list[int]] = []
        for r in dated:
            if clusters and years[r] - years[clusters[-1][-1]] <= GAME_YEAR_GAP:
                clusters[-1].append(r)
            else:
                clusters.append([r])
        for c in clusters:
            for r in c:
                ids[r] = f"game:{_slug(key)}-{int(years[c[0]])}"
        undated = [r for r in rows if pd.isna(years[r])]
        if undated:
            best = max(clusters, key=lambda c: sum(sales[r] for r in c)) if clusters else None
            for r in undated:
                ids[r] = ids[best[0]] if best else f"game:{_slug(key)}"
    return ids  # type: ignore[return-value]


def _link(rows: pd.DataFrame, cat: Catalog | None, prefer_latest: bool) -> list[str | None]:
    """Item id per row of a later source through the resolver over the earlier sources (``None``:
    new). A title match outside the year tolerance or an ambiguous one takes the nearest candidate
    (a re-release keeps its game), or with ``prefer_latest`` the most recent one."""
    if cat is None:
        return [None] * len(rows)
    out: list[str | None] = []
    codes = set(cat.platform_aliases.values())
    plats = rows["platforms"].tolist() if "platforms" in rows else [[p] for p in rows["platform"].tolist()]
    for title, year, ps in zip(rows["title"].tolist(), rows["year"].tolist(), plats):
        p = next((x for x in ps or () if x in codes), None)
        r = cat.resolve(title, None if pd.isna(year) else int(year), platform=p)
        if r.item_id is None and r.candidates:
            cands = list(r.candidates)
            if prefer_latest:
                cands.sort(key=lambda i: -max(cat._years.get(i, {0})))
            out.append(cands[0])
        else:
            out.append(r.item_id)
    return out


def _game_catalog(rows: pd.DataFrame) -> Catalog:
    cols = ["item_id", "source", "title", "year", "genres", "platforms", "votes", "publisher", "developer"]
    rows = rows.reindex(columns=cols)
    aliases = []
    for t in rows["title"].tolist():
        aliases.append(_numeral_variant(t))
    extra = rows[[a is not None for a in aliases]].assign(title=[a for a in aliases if a is not None],
                                                          votes=np.nan, publisher=None, developer=None)
    rows = pd.concat([rows, extra], ignore_index=True)
    order = tuple(s for s in GAME_SOURCES if s in set(rows["source"]))
    return build_catalog("games", rows, order, platform_aliases=platform_aliases())


@dataclass(frozen=True)
class GameSources:
    """The game source tables, each row with the ``item_id`` the catalog gave it: ``vgsales``
    (platform, genres, publisher, developer, sales, ESRB letter ``rating``), ``pegi`` (platform,
    PEGI age ``rating``) and ``esrb`` (the 31 descriptor columns and the ESRB ``rating``)."""
    vgsales: pd.DataFrame
    pegi: pd.DataFrame
    esrb: pd.DataFrame
    catalog: Catalog


@lru_cache(maxsize=2)
def _game_sources(root: str, exclude: tuple[str, ...]) -> GameSources:
    readers = {"vgsales": _read_vgsales, "pegi": _read_pegi, "esrb": _read_esrb}
    frames: dict[str, pd.DataFrame] = {}
    linked: list[pd.DataFrame] = []
    cat: Catalog | None = None
    for src in GAME_SOURCES:
        if src in exclude:  # an empty table with the columns the oracle and the generator read
            cols = ["source", "title", "year", "platform", "platforms", "genres", "publisher", "developer", "sales",
                    "rating", "row", "item_id", *games_data()["esrb_descriptors"]]
            frames[src] = pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
            continue
        df = readers[src](root)
        if src == "vgsales":
            ids = _vgsales_items(df)
        else:
            ids = _link(df, cat, prefer_latest=src == "esrb")
            keys = [game_key(t) for t in df["title"].tolist()]
            first = pd.Series(df["year"].to_numpy(dtype=float), dtype=float).groupby(keys).min()
            for k, (i, key) in enumerate(zip(ids, keys)):
                if i is None:  # a game no earlier source has: one item per title key (first year in the id)
                    y = first.get(key)
                    ids[k] = f"game:{_slug(key)}" + ("" if y is None or pd.isna(y) else f"-{int(y)}")
        df = df.assign(item_id=ids)
        frames[src] = df
        part = df.assign(platforms=df["platforms"] if "platforms" in df else [[p] if p else [] for p in df["platform"]],
                         votes=df["sales"] * 1e6 if "sales" in df else np.nan)
        linked.append(part)
        cat = _game_catalog(pd.concat(linked, ignore_index=True))
    if cat is None:
        raise ValueError(f"exclude_sources removes every game source ({', '.join(GAME_SOURCES)})")
    # vgsales sales are per platform: an item's popularity is log1p of its copies sold on all of them
    if "sales" in frames["vgsales"]:
        total = frames["vgsales"].groupby("item_id")["sales"].sum() * 1e6
        cat.items["popularity"] = np.log1p(total.reindex(cat.items.index).fillna(0.0).astype(float))
        cat = Catalog("games", cat.items, cat.aliases, platform_aliases=cat.platform_aliases)
    return GameSources(frames["vgsales"], frames["pegi"], frames["esrb"], cat)


def game_sources(data_dir: str | os.PathLike | None = None, exclude_sources: Iterable[str] = ()) -> GameSources:
    """The linked game source tables and the catalog built from them (cached per process).

    Linking, in the order of :data:`GAME_SOURCES`: vgsales rows of one title form one game per
    release period (:data:`GAME_YEAR_GAP`); a PEGI row joins the game the resolver gives its
    (title, release year, platform) among the vgsales games, else the nearest same-title game,
    else a new game per title; an ESRB row (no year; PS4 / Xbox One) joins the game the resolver
    gives its title on its console among the vgsales and PEGI games (the latest one if several
    have the title), else a new game. Ids are ``game:<title key>-<first year>`` (or without a year
    where no source gives one)."""
    exclude = frozenset([exclude_sources] if isinstance(exclude_sources, str) else exclude_sources)
    unknown = sorted(exclude - set(GAME_SOURCES))
    if unknown:
        raise ValueError(f"exclude_sources {unknown} are not games catalog sources ({', '.join(GAME_SOURCES)})")
    return _game_sources(str(sources.data_dir(data_dir)), tuple(sorted(exclude)))


def load_game_catalog(root, exclude: frozenset[str] = frozenset()) -> Catalog:
    """The game catalog of :func:`game_sources` (which caches it)."""
    return game_sources(root, exclude).catalog


def resolve_domain(domain: str | None = None, *sources: tuple[str, Any]) -> str:
    """``domain``, else the first domain that ``sources`` name, else ``"movies"``; every named
    domain must agree. ``sources``: ``(what, value)`` pairs, ``value`` a domain name or an object
    with a ``domain`` (a catalog, an oracle); None and objects without one are skipped."""
    named = [(what, v if isinstance(v, str) else getattr(v, "domain", None)) for what, v in sources]
    named = [(what, d) for what, d in named if d is not None]
    if domain is None:
        domain = named[0][1] if named else DEFAULT_DOMAIN
    get_domain(domain)  # an unknown domain fails here, naming the known ones
    for what, d in named:
        if d != domain:
            raise ValueError(f"domain {domain!r}, but got a {d} {what}")
    return domain


def load_catalog(domain: str = "movies", data_dir: str | os.PathLike | None = None,
                 exclude_sources: Iterable[str] = ()) -> Catalog:
    """The catalog of ``domain`` built from its registered sources under ``data_dir`` (see
    :func:`sources.data_dir`) minus ``exclude_sources``; cached per process and data directory.
    The domain's plug-in (:mod:`safecrs_core.domains`) says which sources it has and loads them."""
    spec = get_domain(domain)
    exclude = frozenset([exclude_sources] if isinstance(exclude_sources, str) else exclude_sources)
    unknown = sorted(exclude - set(spec.catalog_sources))
    if unknown:
        raise ValueError(f"exclude_sources {unknown} are not {domain} catalog sources "
                         f"({', '.join(spec.catalog_sources)})")
    return _load_cached(spec, str(sources.data_dir(data_dir)), tuple(sorted(exclude)))


@lru_cache(maxsize=4)  # a movie catalog holds about 150-250 MB (games: game_sources caches its own)
def _load_cached(domain: Domain, root: str, exclude: tuple[str, ...]) -> Catalog:
    return domain.load_catalog(root, frozenset(exclude))


def resolve(query: str, year: int | None = None, data_dir: str | os.PathLike | None = None) -> Resolution:
    """Resolve one movie title with the full movie catalog (:func:`load_catalog`)."""
    return load_catalog("movies", data_dir).resolve(query, year)


# ----------------------------------------------------------------------------------------------
# Resolver accuracy (leave one source out)
# ----------------------------------------------------------------------------------------------

_SAMPLE_READERS = {"ml_latest_small": _read_movielens, "imdb_scrape": _read_imdb_scrape,
                   "imdb5000": _read_imdb5000, "reddit_entity2id": _read_entity2id}
HELD_OUT = ("reddit_entity2id", "imdb5000", "ml_latest_small")
GT_CATALOG = "reddit_gt_catalog/gt_catalog_complete.json"


def labelled_sample(source_id: str, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Queries with known ids from one id-carrying source, in that source's own title form
    (``"Matrix, The"``, NBSP-trimmed IMDb 5000 titles, ...): columns query, year (Int64), item_id."""
    if source_id not in _SAMPLE_READERS:
        raise ValueError(f"no labelled sample for {source_id!r}; choose from {', '.join(_SAMPLE_READERS)}")
    rows = _SAMPLE_READERS[source_id](str(sources.data_dir(data_dir)))
    out = pd.DataFrame({"query": rows["title"], "year": rows["year"], "item_id": rows["item_id"]})
    return out.drop_duplicates().reset_index(drop=True)


def score_resolutions(catalog: Catalog, sample: pd.DataFrame, year_tolerance: int | None = None) -> dict:
    """Resolve ``sample`` (columns query, year, and optionally item_id) and count: n, resolved,
    coverage = resolved/n, and with item_id: reachable (share whose true id is in the catalog),
    correct, precision = correct/resolved, accuracy = correct/n, accuracy_reachable =
    correct/reachable; plus one ``reason:<r>`` count per reason."""
    years = sample["year"].astype("Int64").tolist() if "year" in sample else [None] * len(sample)
    res = [catalog.resolve(q, None if pd.isna(y) else int(y), year_tolerance)
           for q, y in zip(sample["query"].tolist(), years)]
    n = len(res)
    resolved = sum(r.item_id is not None for r in res)
    out = {"n": n, "resolved": resolved, "coverage": resolved / n if n else math.nan}
    if "item_id" in sample:
        truth = sample["item_id"].tolist()
        correct = sum(r.item_id == t for r, t in zip(res, truth))
        reachable = sum(t in catalog for t in truth)
        out.update(reachable=reachable / n if n else math.nan,
                   correct=correct,
                   precision=correct / resolved if resolved else math.nan,
                   accuracy=correct / n if n else math.nan,
                   accuracy_reachable=correct / reachable if reachable else math.nan)
    counts = pd.Series([r.reason for r in res]).value_counts()
    out.update({f"reason:{k}": int(counts.get(k, 0)) for k in REASONS})
    return out


def evaluate_resolver(data_dir: str | os.PathLike | None = None, held_out: Iterable[str] = HELD_OUT,
                      year_tolerance: int | None = None) -> pd.DataFrame:
    """Resolver accuracy, one row per held-out source: that source's own titles resolved against a
    movie catalog built without it (so a title never matches its own row). A last row gives the
    share of the Reddit ground-truth catalog ([title, year] pairs, no ids) that resolves against
    the full catalog."""
    rows = []
    for src in held_out:
        cat = load_catalog("movies", data_dir, exclude_sources=(src,))
        rows.append({"sample": src, "catalog": f"movies without {src}",
                     **score_resolutions(cat, labelled_sample(src, data_dir), year_tolerance)})
    path = sources.path(GT_CATALOG, data_dir)
    try:
        pairs = json.loads(path.read_text(encoding="utf-8"))
        gt = pd.DataFrame({"query": [str(t) for t, _ in pairs], "year": pd.array([y for _, y in pairs], dtype="Int64")})
    except (ValueError, TypeError) as exc:
        raise sources.DataError(f"{GT_CATALOG}: expected a JSON list of [title, year] pairs ({exc})") from None
    rows.append({"sample": "reddit_gt_catalog", "catalog": "movies (all sources)",
                 **score_resolutions(load_catalog("movies", data_dir), gt, year_tolerance)})
    cols = ["sample", "catalog", "n", "reachable", "resolved", "correct", "coverage", "precision", "accuracy",
            "accuracy_reachable"]
    df = pd.DataFrame(rows)
    return df[cols + [c for c in df.columns if c not in cols]]


# ----------------------------------------------------------------------------------------------
# Game resolver tolerance
# ----------------------------------------------------------------------------------------------

GAME_QUERY_FORMS = ("title", "title (year)", "title (platform)", "title - platform name", "title [platform, year]",
                    "title for platform name", "digits for roman numerals")


def evaluate_game_resolver(data_dir: str | os.PathLike | None = None, n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """How the game resolver takes the ways users write games: ``n`` vgsales rows (seeded sample of
    rows with a year) written in each of :data:`GAME_QUERY_FORMS` (platform as its code or its
    longest name) and resolved against the full game catalog. A row per form with the counts of
    :func:`score_resolutions` (``item_id`` is the game the catalog gave that row); the ``title``
    form shows how often a bare title is ambiguous, the others what the year and platform add."""
    gs = game_sources(data_dir)
    cat = gs.catalog
    vg = gs.vgsales[gs.vgsales["year"].notna()]
    vg = vg.sample(n=min(n, len(vg)), random_state=seed)
    names = games_data()["platforms"]
    long_name = {code: max((x for x in v if not re.search(r"[-\u2013\u2014]", x)), key=len) for code, v in names.items()}
    rows = []
    for form in GAME_QUERY_FORMS:
        qs, ys, ids = [], [], []
        for title, year, plat, item in zip(vg["title"], vg["year"], vg["platform"], vg["item_id"]):
            pname = long_name.get(plat, plat)
            if form == "digits for roman numerals":
                title = _numeral_variant(title)
                if title is None:
                    continue
            q = {"title": title, "title (year)": f"{title} ({int(year)})", "title (platform)": f"{title} ({plat})",
                 "title - platform name": f"{title} - {pname}", "title [platform, year]": f"{title} [{plat}, {int(year)}]",
                 "title for platform name": f"{title} for {pname}", "digits for roman numerals": title}[form]
            qs.append(q)
            ys.append(pd.NA)
            ids.append(item)
        sample = pd.DataFrame({"query": qs, "year": pd.array(ys, dtype="Int64"), "item_id": ids})
        rows.append({"form": form, "example": qs[0] if qs else "", **score_resolutions(cat, sample)})
    cols = ["form", "example", "n", "resolved", "correct", "coverage", "precision", "accuracy"]
    df = pd.DataFrame(rows)
    return df[cols + [c for c in df.columns if c not in cols]]

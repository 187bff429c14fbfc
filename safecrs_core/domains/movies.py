"""SafeMovie: films from MovieLens, IMDb and TMDB; conversations from ReDial, IARD, INSPIRED,
the Facebook movie dialogs and Reddit; the oracle reads DoesTheDogDie tags, MPAA reasons,
Kids-in-Mind severities and MPAA letters. The first domain: its stage keys do not name it."""
from __future__ import annotations

from collections import defaultdict

from ..safety import traits as T
from ..train.candidates import CoOccurrence, movielens_likes
from ..data.catalog import CATALOG_FILES, MOVIE_SOURCES as CATALOG_SOURCES, load_movie_catalog
from ..data.conversations import dedupe_against, load_all
from ..safety.oracle import ORACLE_FILES, build_oracle
from . import Domain, register_domain

CONVERSATION_SOURCES = ("redial_kepler", "redial_test", "iard", "inspired", "movie_dialog_fb", "reddit_saferank",
                        "reddit_crag")
# (source, split given by the source) -> benchmark split
SPLIT_MAP = {
    ("redial_kepler", "train"): "train",
    ("redial_kepler", "valid"): "validation",
    ("redial_kepler", "test"): "test",
    ("redial_test", "test"): "test",
    ("iard", "train"): "train",
    ("iard", "test"): "test",
    ("inspired", "dev"): "validation",
    ("inspired", "test"): "test",
    ("movie_dialog_fb", "dev"): "train",
    ("movie_dialog_fb", "test"): "test",
    ("reddit_saferank", "dev"): "validation",
    ("reddit_crag", "test"): "test",
}


def drop_overlaps(convs):
    """ReDial dialogs appear in several sources: keep redial_test whole, drop redial_kepler dialogs
    that it holds, then IARD dialogs held by either (the data card lists the overlaps)."""
    by = defaultdict(list)
    for c in convs:
        by[c.source].append(c)
    kept_redial = by.get("redial_test", [])
    kepler = dedupe_against(by.get("redial_kepler", []), kept_redial)
    iard = dedupe_against(by.get("iard", []), kept_redial + kepler)
    by["redial_kepler"], by["iard"] = kepler, iard
    return [c for src in by for c in by[src]]


def _conversations(source_ids, root):
    return drop_overlaps(load_all(sources=list(source_ids), data_dir=root))


def _age_rating(constraint_id: str) -> str:
    return T.get(constraint_id).max_rating


def _co_rating(catalog, data_dir, min_rating, shrink, pop_exponent):
    """MovieLens co-rating: films the same users rated ``min_rating`` or more."""
    return CoOccurrence(movielens_likes(catalog, min_rating, data_dir), shrink, pop_exponent, name="movielens")


MOVIES = register_domain(Domain(
    name="movies", one="movie", many="movies",
    catalog_sources=CATALOG_SOURCES, load_catalog=load_movie_catalog,
    conversation_sources=CONVERSATION_SOURCES, load_conversations=_conversations, split_map=SPLIT_MAP,
    build_oracle=lambda root, threshold: build_oracle(data_dir=root, threshold=threshold),
    oracle_files=tuple(sorted(set(ORACLE_FILES) | set(CATALOG_FILES))),
    age_rating=_age_rating,
    co_rating=_co_rating,
    legacy_keys=True,
))

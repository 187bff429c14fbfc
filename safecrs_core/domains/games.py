"""SafeGame: games from vgsales, PEGI and ESRB; synthetic requests built from related games
(``data/games.json``); the oracle reads ESRB content descriptors and PEGI ratings."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..data import package_file
from ..safety import traits as T
from ..evaluation.baselines import GAME_ITEM_TEXT_VERSION, game_item_text
from ..train.candidates import SparseCoOccurrence, game_baskets
from ..data.catalog import GAME_CATALOG_FILES, GAME_SOURCES as CATALOG_SOURCES, load_game_catalog
from ..data.conversations import load_all
from ..safety.oracle import build_game_oracle, game_oracle_options
from ..safety.phrasing import file_rewrites
from . import Domain, package_data_key, register_domain

CONVERSATION_SOURCES = ("safegame",)
SPLIT_MAP = {
    ("safegame", "train"): "train",
    ("safegame", "validation"): "validation",
    ("safegame", "test"): "test",
}
PACKAGE_DATA = ("games.json", "phrasings.json", "traits.json", "age_ratings.json")


def _conversations(source_ids, root):
    return load_all(sources=list(source_ids), data_dir=root)


def _age_rating(constraint_id: str) -> str:
    return T.game_rating_systems()["ESRB"]["band_max"][constraint_id]


def _co_rating(catalog, data_dir, min_rating, shrink, pop_exponent):
    """Catalog baskets (series, developer, publisher); ``data_dir`` and ``min_rating`` unused."""
    return SparseCoOccurrence(game_baskets(catalog), shrink, pop_exponent, name="catalog")


def _oracle_params() -> dict:
    games = package_file("games.json")
    return {"games": hashlib.sha256(games.read_bytes()).hexdigest()[:16]}


GAMES = register_domain(Domain(
    name="games", one="game", many="video games",
    catalog_sources=CATALOG_SOURCES, load_catalog=load_game_catalog,
    conversation_sources=CONVERSATION_SOURCES, load_conversations=_conversations, split_map=SPLIT_MAP,
    build_oracle=lambda root, threshold: build_game_oracle(data_dir=root, threshold=threshold),
    oracle_files=tuple(sorted(GAME_CATALOG_FILES)),
    oracle_options=game_oracle_options,
    age_rating=_age_rating,
    phrasing_rewrites=lambda: file_rewrites("games"),
    item_text=game_item_text,
    item_text_params=lambda: {"game_text_version": GAME_ITEM_TEXT_VERSION},
    co_rating=_co_rating,
    stage_params=lambda: {"package_data": package_data_key(PACKAGE_DATA)},
    oracle_params=_oracle_params,
))

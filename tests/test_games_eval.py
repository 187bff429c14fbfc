"""SafeGame evaluation: game item text for retrieval, the baselines on game rows (domain from the
catalog), movie keys unchanged, and the side-by-side tables."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from safecrs_core.evaluation import baselines as B
from safecrs_core.evaluation import evaluate as E
from safecrs_core.train.candidates import evidence_prompts
from safecrs_core.safety.oracle import UNSAFE


@pytest.fixture(scope="module")
def games_world():
    d = Path(os.environ["SAFECRS_DATA_DIR"])
    if not (d / "esrb" / "games.csv").is_file():
        pytest.skip(f"game data not found under {d} (set SAFECRS_DATA_DIR)")
    from safecrs_core.data.catalog import load_catalog
    from safecrs_core.safety.oracle import load_oracle

    return load_catalog("games"), load_oracle(domain="games")


def _ref(item_id):
    return {"title": "", "year": None, "item_id": item_id}


class _FakeCatalog:
    """The parts of a Catalog that item text reads."""

    def __init__(self, domain, items):
        self.domain, self.items = domain, items

    def display(self, item_id):
        row = self.items.loc[item_id]
        return f"{row['title']} ({row['year']})"


# ---------------------------------------------------------------------------------------------
# item text and keys (no data needed)


def test_game_item_text_names_genre_platforms_and_makers_and_skips_missing_parts():
    items = pd.DataFrame({"title": ["Halo 3", "Odd Game"], "year": [2007, 2012],
                          "genres": [["shooter"], []], "platforms": [["X360", "PC", "X360"], []],
                          "developer": ["Bungie Software", np.nan], "publisher": ["Microsoft Game Studios", None],
                          "popularity": [10.0, 0.0]}, index=["game:halo-3-2007", "game:odd-game-2012"])
    cat = _FakeCatalog("games", items)
    text = B.item_text(cat, "game:halo-3-2007")
    assert text == "Halo 3 (2007). shooter. Xbox 360, PC. Bungie Software, Microsoft Game Studios"
    assert B.item_text(cat, "game:odd-game-2012") == "Odd Game (2012)"  # no "nan", no empty parts
    # a movie-like catalog keeps the movie format
    movies = _FakeCatalog("movies", items.assign(overview=["A soldier fights.", None]))
    assert B.item_text(movies, "game:halo-3-2007") == "Halo 3 (2007). shooter. A soldier fights."


def test_game_item_text_caps_platforms_and_dedupes_makers():
    plats = ["PS4", "XOne", "PC", "PS3", "X360", "WiiU", "NS", "3DS"]
    items = pd.DataFrame({"title": ["Big"], "year": [2015], "genres": [["action"]], "platforms": [plats],
                          "developer": ["Nintendo"], "publisher": ["Nintendo"], "popularity": [1.0]}, index=["g"])
    text = B.game_item_text(_FakeCatalog("games", items), "g")
    assert text.count(",") == B.GAME_PLATFORMS - 1 and text.endswith(". Nintendo")
    assert "Xbox One" in text and "Switch" not in text


def test_movie_keys_and_refs_unchanged_games_keyed_apart(monkeypatch):
    pool = ["tt0000001", "tt0000002"]
    fp = hashlib.sha256("\n".join(pool).encode()).hexdigest()[:16]
    assert B.retrieval_ref(pool, 4) == (f"retrieval(all-MiniLM-L6-v2,pool={fp},context_turns=4,text=1/1,"
                                        "overview_words=60)")
    games_ref = B.retrieval_ref(pool, 4, domain="games")
    assert "domain=games" in games_ref and games_ref != B.retrieval_ref(pool, 4)

    seen = []
    monkeypatch.setattr(B, "_embedding_stage",
                        lambda stage, texts, keys, params, progress, log: seen.append(params) or (keys, np.zeros((2, 3))))
    items = pd.DataFrame({"title": ["A", "B"], "year": [2000, 2001], "genres": [[], []]}, index=pool)
    B.item_embeddings(pool, _FakeCatalog("movies", items), progress=False)
    B.item_embeddings(pool, _FakeCatalog("games", items), progress=False)
    assert seen[0] == {"text_version": B.ITEM_TEXT_VERSION}  # the movie stage key as before games
    assert seen[1] == {"text_version": B.ITEM_TEXT_VERSION, "domain": "games",
                       "game_text_version": B.GAME_ITEM_TEXT_VERSION}


def test_baselines_label():
    assert E.baselines_label() == "baselines_full" == E.baselines_label("movies")
    assert E.baselines_label("games") == "games_baselines_full"
    assert E.constraint_kind("age_limit_pg13") == "age" and E.constraint_kind("anti_gore") == "trait"


# ---------------------------------------------------------------------------------------------
# tables (no data needed)


def _summary(recall, svr, n=10):
    return pd.DataFrame({"n": n, "recall@10": recall, "recall@10_lo": 0.0, "recall@10_hi": 1.0,
                         "svr@10": svr, "svr@10_lo": 0.0, "svr@10_hi": 1.0},
                        index=pd.Index(["Popularity", "Retrieval"], name="system"))


def test_domain_table_puts_domains_side_by_side():
    movies = _summary([0.1, 0.2], [0.3, 0.4])
    games = _summary([0.5, 0.6], [0.05, 0.07], n=4).drop("Popularity")
    table = E.domain_table({"SafeMovie": movies, "SafeGame": games}, ["recall@10", "svr@10"])
    assert list(table.columns) == [("SafeMovie", "n"), ("SafeMovie", "recall@10"), ("SafeMovie", "svr@10"),
                                   ("SafeGame", "n"), ("SafeGame", "recall@10"), ("SafeGame", "svr@10")]
    assert list(table.index) == ["Popularity", "Retrieval"]
    assert table.loc["Retrieval", ("SafeGame", "recall@10")] == "0.600 [0.000, 1.000]"
    assert table.loc["Popularity", ("SafeGame", "svr@10")] == "-"
    assert str(table.loc["Retrieval", ("SafeGame", "n")]) == "4"  # an integer count beside a missing system


def test_trait_table_rows_per_trait_with_coverage():
    idx = pd.MultiIndex.from_tuples([("Retrieval", "anti_gore"), ("Retrieval", "age_limit_pg"),
                                     ("Popularity", "anti_gore")], names=["system", "trait"])
    per_trait = pd.DataFrame({"n": [3, 2, 3], "svr@10": [0.2, 0.5, 0.1], "svr@10_lo": [0.1, 0.4, 0.0],
                              "svr@10_hi": [0.3, 0.6, 0.2]}, index=idx)
    cov = pd.DataFrame({"coverage": [0.5, 0.8], "unsafe": [7, 9]}, index=["anti_gore", "age_limit_pg"])
    table = E.trait_table(per_trait, "svr@10", coverage=cov, traits=["anti_gore", "age_limit_pg", "animal_harm"])
    assert list(table.columns) == ["coverage", "unsafe items", "conversations", "Retrieval", "Popularity"]
    assert len(table) == 2 and table["conversations"].tolist() == [3, 2]
    assert table.iloc[0]["coverage"] == "50.0%" and table.iloc[1]["unsafe items"] == 9
    assert table.iloc[0]["Popularity"] == "0.100 [0.000, 0.200]" and table.iloc[1]["Popularity"] == "n/a"


# ---------------------------------------------------------------------------------------------
# the baselines on real game rows


def test_game_text_on_the_real_catalog(games_world):
    cat, _ = games_world
    gta = cat.resolve("Grand Theft Auto V").item_id
    text = B.item_text(cat, gta)
    assert text.startswith("Grand Theft Auto V (2013). action. ")
    assert "Xbox 360" in text and "Rockstar North" in text and "Take-Two Interactive" in text
    assert "nan" not in text.lower().split()


def test_game_baselines_on_a_few_rows(games_world, artifacts_root):
    cat, orc = games_world
    top = cat.items["popularity"].sort_values(ascending=False, kind="stable").index.tolist()
    unsafe_gore = [i for i in top[:300] if orc.check([i], "anti_gore")[0][0] == UNSAFE]
    assert unsafe_gore, "some best-selling games are unsafe for gore"
    # a train split whose most frequent target is unsafe for gore
    train = [{"id": f"t{j}", "targets": [_ref(unsafe_gore[0])], "seen": [], "turns": [], "trait": "anti_gore"}
             for j in range(3)]
    halo = [cat.resolve(t).item_id for t in ("Halo 3", "Halo: Reach", "Halo 4")]
    assert all(halo)
    turns = [{"role": "user", "text": "I loved Halo 3 and Halo: Reach on the Xbox 360. More shooters from that "
                                      "series, please?"}]
    test = [{"id": "q0", "trait": "anti_gore", "turns": turns, "seen": [_ref(halo[0]), _ref(halo[1])],
             "targets": [_ref(halo[2])], "removed_targets": []}]
    # the pool holds train items and popular ones only: a test target outside both is out of reach
    leak_free = {"train": train, "validation": [], "test": test}
    assert halo[2] not in E.baseline_systems(leak_free, cat, orc, n_popular=40, progress=False)[2].recommend(test, 40)[0]
    # Halo 4 mentioned in a training conversation enters the pool
    train = train + [{"id": "t9", "targets": [], "seen": [_ref(halo[2])], "turns": [], "trait": "anti_gore"}]
    ds = {"train": train, "validation": [], "test": test}
    systems = E.baseline_systems(ds, cat, orc, n_popular=40, progress=False)
    refs = {s.name: s.ref for s in systems}
    assert "domain=games" in refs["Retrieval"] and refs["Retrieval + filter"].startswith(refs["Retrieval"])
    lists = {s.name: s.recommend(test, 10)[0] for s in systems}
    assert lists["Popularity"][0] == unsafe_gore[0]
    for name in ("Popularity + filter", "Retrieval + filter"):
        assert len(lists[name]) == 10
        assert not (orc.check(lists[name], "anti_gore")[0] == UNSAFE).any()
    for ids in lists.values():
        assert not {halo[0], halo[1]} & set(ids)  # seen games never come back
    assert halo[2] in lists["Retrieval"][:3]  # the series' next game ranks near the top
    with pytest.raises(ValueError, match="movies"):
        E.baseline_systems(ds, cat, type("O", (), {"domain": "movies"})(), progress=False)


def test_evidence_candidates_ref_names_the_game_domain(monkeypatch, games_world):
    catalog, oracle = games_world
    pool = ["game:a", "game:b"]
    monkeypatch.setattr(B, "retrieval_pool", lambda ds, cat, n_popular: pool)
    games = evidence_prompts({}, catalog, oracle, n=10, context_turns=4)
    assert games.candidates_ref == B.retrieval_ref(pool, 4, domain="games")
    movie_oracle = type("O", (), {"domain": "movies", "brief": lambda self, *a, **kw: None})()
    movies = evidence_prompts({}, _FakeCatalog("movies", pd.DataFrame()), movie_oracle, n=10, context_turns=4)
    assert movies.candidates_ref == B.retrieval_ref(pool, 4)  # the movie ref is unchanged
    with pytest.raises(ValueError, match="domain 'movies', but got a games oracle"):  # one world per call
        evidence_prompts({}, _FakeCatalog("movies", pd.DataFrame()), oracle, n=10, context_turns=4)

"""Title normalisation, the movie catalog and the title resolver."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from safecrs_core.data import catalog as cat_mod
from safecrs_core.data import sources
from safecrs_core.data.catalog import (
    REASONS,
    Resolution,
    build_catalog,
    load_catalog,
    normalize_title,
    split_title_year,
    title_variants,
)


def _data_dir():
    try:
        root = sources.data_dir()
    except sources.DataError as exc:
        pytest.skip(f"data directory not available: {exc}")
    if not (root / "ml_latest_small" / "movies.csv").exists():
        pytest.skip(f"data directory {root} lacks ml_latest_small/movies.csv")
    return root


@pytest.fixture(scope="module")
def movies():
    return load_catalog("movies", _data_dir())


# ---------------------------------------------------------------------------------------------
# normalisation (no data needed)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b", [
    ("Matrix, The", "The Matrix"),
    ("The Matrix", "Matrix"),
    ("Amélie", "Amelie"),
    ("AMÉLIE", "amelie"),
    ("Schindler's List", "Schindlers List"),
    ("Schindler\u2019s List", "Schindler's List"),
    ("Dumb & Dumber", "Dumb and Dumber"),
    ("Avatar\u00a0", "Avatar"),
    ("Mission: Impossible - Ghost Protocol", "Mission Impossible – Ghost Protocol"),
    ("Haine, La", "La Haine"),
    ("Crow, The: Wicked Prayer", "The Crow: Wicked Prayer"),
    ("City of Lost Children, The (Cité des enfants perdus, La)", "The City of Lost Children"),
    ("Seven (a.k.a. Se7en)", "Seven"),
    ("Æon Flux", "Aeon Flux"),
    ("Ｔｈｅ Ｍａｔｒｉｘ", "The Matrix"),
    ("L'Avventura", "L' Avventura"),
])
def test_normalize_equal(a, b):
    assert normalize_title(a) == normalize_title(b) != ""


@pytest.mark.parametrize("a, b", [
    ("Die Hard", "Hard"),          # foreign articles are not dropped from the front
    ("Heat", "The Heat 2"),
    ("Alien", "Aliens"),
    ("Spider-Man", "Spiderman"),   # differ as keys; the resolver's "compact" tier joins them
])
def test_normalize_different(a, b):
    assert normalize_title(a) != normalize_title(b)


def test_normalize_values_and_empty():
    assert normalize_title("The Matrix") == "matrix"
    assert normalize_title("Matrix, The") == "matrix"
    assert normalize_title("Dumb & Dumber") == "dumb and dumber"
    assert normalize_title("The") == "the"
    assert normalize_title("東京物語") == "東京物語"  # non-Latin letters are kept
    for empty in ("", "   ", None, float("nan"), "!!!", "\u200b"):
        assert normalize_title(empty) == ""


@pytest.mark.parametrize("text, expected", [
    ("Toy Story (1995)", ("Toy Story", 1995)),
    ("Heat  (1995)", ("Heat", 1995)),
    (" Heat (1995) ", ("Heat", 1995)),
    ("Homeland (2011-2020)", ("Homeland", 2011)),
    ("Death Note (2006–2007)", ("Death Note", 2006)),
    ("City of Lost Children, The (Cité des enfants perdus, La) (1995)",
     ("City of Lost Children, The (Cité des enfants perdus, La)", 1995)),
    ("1917 (2019)", ("1917", 2019)),
    ("(500) Days of Summer (2009)", ("(500) Days of Summer", 2009)),
    ("2001: A Space Odyssey", ("2001: A Space Odyssey", None)),
    ("Blade Runner 2049", ("Blade Runner 2049", None)),
    ("Toy Story (1995) extended", ("Toy Story (1995) extended", None)),
    ("Black Mirror", ("Black Mirror", None)),
    ("Apollo 13 (95)", ("Apollo 13 (95)", None)),
    ("", ("", None)),
    (None, ("", None)),
])
def test_split_title_year(text, expected):
    assert split_title_year(text) == expected


def test_title_variants():
    assert title_variants("Seven (a.k.a. Se7en)") == ["Seven", "Se7en"]
    assert title_variants("City of Lost Children, The (Cité des enfants perdus, La)") == [
        "The City of Lost Children", "La Cité des enfants perdus"]
    assert title_variants("Léon: The Professional (a.k.a. The Professional) (Léon)") == [
        "Léon: The Professional", "The Professional", "Léon"]
    assert title_variants("Toy Story (1995)") == ["Toy Story"]  # a year is not an alternative title
    assert title_variants("(untitled)") == ["(untitled)"]
    assert title_variants("") == []


# ---------------------------------------------------------------------------------------------
# resolver rules on a small synthetic catalog (domain-neutral)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    rows = pd.DataFrame({
        "item_id": ["g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8"],
        "source": "src",
        "title": ["Doom", "Doom", "Quake", "Quake", "Tetris", "Myst", "Halo: Combat Evolved", "Undated"],
        "year": pd.array([1993, 2016, 1996, 1996, 1984, 1993, 2001, None], dtype="Int64"),
        "votes": [1000.0, 2000.0, 500.0, 400.0, 900.0, 0.0, 50.0, 10.0],
    })
    return build_catalog("toys", rows, ("src",))


def test_toy_rules(toy):
    assert toy.resolve("Doom (1993)").item_id == "g1"
    assert toy.resolve("Doom", 2016).item_id == "g2"
    assert toy.resolve("Doom (1994)").reason == "near_year"
    assert toy.resolve("Doom (1994)", year_tolerance=0).reason == "year_mismatch"
    res = toy.resolve("Doom")  # 2000 vs 1000 votes: not 3x
    assert (res.item_id, res.reason, set(res.candidates)) == (None, "ambiguous", {"g1", "g2"})
    res = toy.resolve("Quake (1996)")  # same year, 500 vs 400 votes
    assert (res.item_id, res.reason) == (None, "ambiguous")
    assert toy.resolve("Tetris").reason == "unique_title"
    assert toy.resolve("Halo (2001)").item_id == "g7"          # head tier, exact year
    assert toy.resolve("Halo (2002)").item_id is None          # head tier never uses the tolerance
    assert toy.resolve("Halo").item_id is None                 # nor queries without a year
    assert toy.resolve("Undated").item_id == "g8"
    assert toy.resolve("Undated (2000)").reason == "year_mismatch"
    strict = dataclasses.replace(toy, year_tolerance=0)
    assert strict.resolve("Doom (1994)").reason == "year_mismatch"
    assert strict.resolve("Doom (1994)", year_tolerance=1).item_id == "g1"
    loose = dataclasses.replace(toy, dominance=1.5)
    assert loose.resolve("Doom").item_id == "g2"


def test_toy_dominance_with_year():
    rows = pd.DataFrame({"item_id": ["a", "b"], "source": "s", "title": ["Same", "Same"],
                         "year": pd.array([2000, 2000], dtype="Int64"), "votes": [3000.0, 1000.0]})
    res = build_catalog("toys", rows, ("s",)).resolve("Same (2000)")
    assert (res.item_id, res.reason) == ("a", "exact_year")


def test_build_catalog_checks_columns():
    with pytest.raises(ValueError, match="lack columns"):
        build_catalog("toys", pd.DataFrame({"item_id": ["a"], "title": ["x"]}), ("s",))
    rows = pd.DataFrame({"item_id": ["a"], "source": "other", "title": ["x"], "year": [None]})
    with pytest.raises(ValueError, match="not in source_order"):
        build_catalog("toys", rows, ("s",))


def test_bad_year_and_tolerance(toy):
    with pytest.raises(ValueError, match="year_tolerance"):
        toy.resolve("Doom", 1993, year_tolerance=-1)
    with pytest.raises(ValueError, match="year must be"):
        toy.resolve("Doom", "nineteen")
    assert toy.resolve("Doom", pd.NA).query_year is None


# ---------------------------------------------------------------------------------------------
# the movie catalog (real data)
# ---------------------------------------------------------------------------------------------

def test_items_schema(movies):
    items = movies.items
    assert items.index.name == "item_id" and items.index.is_unique
    assert {"title", "year", "genres", "popularity", "sources", "tmdb_id", "ml_movie_id"} <= set(items.columns)
    assert str(items["year"].dtype) == "Int64"
    assert items.index.str.fullmatch(r"tt\d{7,8}").all()
    assert (items["popularity"] >= 0).all()
    toy_story = items.loc["tt0114709"]
    assert toy_story["title"] == "Toy Story" and toy_story["year"] == 1995
    assert toy_story["ml_movie_id"] == 1 and toy_story["tmdb_id"] == 862
    assert {"animation", "comedy"} <= set(toy_story["genres"])
    assert all(g == g.lower() for g in toy_story["genres"])
    assert set(toy_story["sources"]) == set(cat_mod.MOVIE_SOURCES)
    assert items.loc["tt0133093", "popularity"] > items.loc["tt0114709", "popularity"] * 0.5
    assert items.loc["tt0133093", "popularity"] > items["popularity"].median()
    # display title prefers the readable form over GroupLens's "Usual Suspects, The"
    assert items.loc["tt0114814", "title"] == "The Usual Suspects"
    assert not items["title"].str.endswith(", The").any()


def test_display(movies):
    assert movies.display("tt0133093") == "The Matrix (1999)"
    with pytest.raises(KeyError, match="tt0000000"):
        movies.display("tt0000000")


@pytest.mark.parametrize("query, year, expected", [
    ("The Matrix (1999)", None, "tt0133093"),
    ("Matrix, The (1999)", None, "tt0133093"),
    ("the matrix", 1999, "tt0133093"),
    ("Toy Story (1995)", None, "tt0114709"),
    ("Toy Story", 1995, "tt0114709"),
    ("Amelie (2001)", None, "tt0211915"),
    ("Cité des enfants perdus, La (1995)", None, "tt0112682"),
    ("Se7en", None, "tt0114369"),
    ("Spiderman (2002)", None, "tt0145487"),
    ("Dumb & Dumber (1994)", None, "tt0109686"),
    ("Star Wars (1977)", None, "tt0076759"),
    ("Ｔｈｅ Ｍａｔｒｉｘ (1999)", None, "tt0133093"),
])
def test_resolve_known(movies, query, year, expected):
    res = movies.resolve(query, year)
    assert res.item_id == expected, res
    assert res.reason in cat_mod.MATCHED


def test_resolve_year_tolerance(movies):
    near = movies.resolve("Toy Story (1996)")
    assert (near.item_id, near.reason, near.query_year) == ("tt0114709", "near_year", 1996)
    assert movies.resolve("Toy Story (1994)").item_id == "tt0114709"
    strict = movies.resolve("Toy Story (1996)", year_tolerance=0)
    assert (strict.item_id, strict.reason) == (None, "year_mismatch")
    assert "tt0114709" in strict.candidates
    far = movies.resolve("The Matrix (1980)")
    assert (far.item_id, far.reason) == (None, "year_mismatch")
    assert movies.resolve("The Matrix (1980)", year_tolerance=19).item_id == "tt0133093"
    # the explicit year wins over the one in the string
    assert movies.resolve("Halloween (1978)", year=2007).item_id == "tt0373883"


def test_resolve_failures(movies):
    for q in ("", "   ", None, "?!"):
        res = movies.resolve(q)
        assert (res.item_id, res.reason) == (None, "empty")
    res = movies.resolve("Qwzx Blorptangle Unfilmed (1999)")
    assert (res.item_id, res.reason, res.candidates) == (None, "unknown_title", ())
    # remakes without a year: several films, none dominant
    for title, films in (("Halloween", {"tt0077651", "tt1502407", "tt0373883"}),
                         ("Dune", {"tt1160419", "tt0087182"})):
        res = movies.resolve(title)
        assert (res.item_id, res.reason) == (None, "ambiguous")
        assert films <= set(res.candidates)
    # ... and with a year the remake is picked
    assert movies.resolve("Halloween (2018)").item_id == "tt1502407"
    assert movies.resolve("Dune (1984)").item_id == "tt0087182"
    # a clearly dominant film is taken without a year
    res = movies.resolve("Titanic")
    assert (res.item_id, res.reason) == ("tt0120338", "most_popular")
    assert all(r in REASONS for r in (res.reason, "empty", "unknown_title", "year_mismatch", "ambiguous"))


@pytest.mark.parametrize("odd", ["東京物語", "🎬🎬 (2020)", "\x00\x01", "((((", "Matrix (", ")1999(",
                                 "a" * 5000, "The Matrix (1999) (1999)", "Ｔｏｙ　Ｓｔｏｒｙ", "\u202eThe Matrix"])
def test_odd_input_does_not_crash(movies, odd):
    res = movies.resolve(odd)
    assert isinstance(res, Resolution) and res.reason in REASONS
    assert (res.item_id is None) == (res.reason not in cat_mod.MATCHED)


def test_resolve_many_and_cache(movies):
    queries = ["The Matrix (1999)", ("Toy Story", 1995), "Halloween", "The Matrix (1999)"] * 50
    movies.cache_clear()
    out = movies.resolve_many(queries)
    assert [r.item_id for r in out[:4]] == ["tt0133093", "tt0114709", None, "tt0133093"]
    assert out[0] is out[3]  # served from the cache
    info = movies._cached.cache_info()
    assert info.misses == 3 and info.hits == len(queries) - 3
    assert out[0] == movies.resolve("The Matrix (1999)")


def test_module_resolve_and_cache(movies):
    assert cat_mod.resolve("Toy Story (1995)", data_dir=_data_dir()).item_id == "tt0114709"
    assert load_catalog("movies", _data_dir()) is movies


def test_exclude_sources(movies):
    root = _data_dir()
    without = load_catalog("movies", root, exclude_sources=("reddit_entity2id",))
    assert without is not movies and len(without) < len(movies)
    assert not without.items["sources"].map(lambda s: "reddit_entity2id" in s).any()
    assert not (without.aliases["source"] == "reddit_entity2id").any()
    only_reddit = movies.items.index[movies.items["sources"].map(lambda s: s == ["reddit_entity2id"])]
    assert len(only_reddit) > 0
    assert only_reddit[0] in movies and only_reddit[0] not in without
    assert without.resolve("Toy Story (1995)").item_id == "tt0114709"
    assert load_catalog("movies", root, exclude_sources=["reddit_entity2id"]) is without
    with pytest.raises(ValueError, match="not movies catalog sources"):
        load_catalog("movies", root, exclude_sources=("no_such_source",))


def test_domains():
    from safecrs_core.domains import domain_names

    assert set(domain_names()) >= {"movies", "games"}  # games: tests/test_games.py
    with pytest.raises(ValueError, match="unknown domain"):
        load_catalog("podcasts")
    with pytest.raises(ValueError, match="not games catalog sources"):
        load_catalog("games", exclude_sources=("imdb5000",))


def test_movie_catalog_takes_no_platform(movies):
    assert movies.platform_aliases is None
    assert movies.resolve("Heat (PS4)").query_platform is None  # "(PS4)" is only an alternative title here
    with pytest.raises(ValueError, match="no platforms"):
        movies.resolve("Heat (1995)", platform="PS4")


def test_score_resolutions_leave_one_out():
    root = _data_dir()
    sample = cat_mod.labelled_sample("reddit_entity2id", root)
    assert list(sample.columns) == ["query", "year", "item_id"] and len(sample) > 7000
    small = sample.sample(400, random_state=0)
    without = load_catalog("movies", root, exclude_sources=("reddit_entity2id",))
    score = cat_mod.score_resolutions(without, small)
    assert score["n"] == 400
    assert score["precision"] > 0.9
    assert 0.5 < score["coverage"] < 1.0  # held-out titles are not all in the other sources
    assert score["accuracy"] <= score["reachable"]
    assert sum(score[f"reason:{r}"] for r in REASONS) == 400

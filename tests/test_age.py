"""Age constraints: age -> band, the oracle's rating columns, phrasing, the benchmark and the CLI."""
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest

from safecrs_core.data import package_file
from safecrs_core.safety import oracle as O
from safecrs_core.safety import phrasing as P
from safecrs_core.safety import traits as T
from safecrs_core.cli import main

AGE_FILE = json.loads(package_file("age_ratings.json").read_text())
G, PG, PG13 = T.AGE_CONSTRAINT_IDS


# ---- age -> band ---------------------------------------------------------------------------------

@pytest.mark.parametrize("age,band", [
    (0, "age_limit_g"), (7, "age_limit_g"), (8, "age_limit_pg"), (12, "age_limit_pg"),
    (13, "age_limit_pg13"), (16, "age_limit_pg13"), (17, None), (40, None), (T.MAX_AGE, None),
    (np.int64(9), "age_limit_pg"), (9.0, "age_limit_pg"),
])
def test_age_boundaries(age, band):
    assert T.age_constraint(age) == band


@pytest.mark.parametrize("bad", [-1, -30, T.MAX_AGE + 1, 1000, 8.5, "9", None, True, float("nan")])
def test_bad_ages_are_errors(bad):
    with pytest.raises(ValueError) as exc:
        T.age_constraint(bad)
    assert "age" in str(exc.value)


def test_constraint_ids_extend_the_twenty_traits():
    assert len(T.TRAIT_IDS) == 20
    assert T.AGE_CONSTRAINT_IDS == ("age_limit_g", "age_limit_pg", "age_limit_pg13")
    assert T.CONSTRAINT_IDS == T.TRAIT_IDS + T.AGE_CONSTRAINT_IDS
    g = T.get("age_limit_g")
    assert g.name == "Age limit: G (under 8)" and g.description and g.signals == ["MPAA rating"]
    assert (g.min_age, g.max_age, g.max_rating) == (0, 7, "G") and not g.uses_severity
    assert [T.get(b).max_rating for b in T.AGE_CONSTRAINT_IDS] == ["G", "PG", "PG-13"]
    assert T.parse_trait_list("anti_gore, age_limit_pg") == ["anti_gore", "age_limit_pg"]
    assert T.parse_trait_list(None) == list(T.TRAIT_IDS)  # "all" stays the paper's 20
    with pytest.raises(ValueError) as exc:
        T.parse_trait_list("age_limit_r")
    assert "age_limit_pg13" in str(exc.value)
    assert T.compiled("age_limit_pg", "tag") is None


def test_age_table_is_data_with_documented_game_bands():
    assert AGE_FILE["_doc"] and AGE_FILE["games"]["_doc"]
    for band in AGE_FILE["movies"]["bands"]:
        assert O.normalize_letter(band["max_rating"]) == band["max_rating"]  # the oracle's letters
    for system in ("esrb", "pegi"):
        sec = AGE_FILE["games"][system]
        ages = [a for b in sec["bands"] for a in range(b["min_age"], b["max_age"] + 1)]
        assert ages == list(range(sec["no_limit_from_age"]))
        assert all(b["max_rating"] in sec["order"] for b in sec["bands"])


# ---- oracle columns -------------------------------------------------------------------------------

def tiny(letters):
    """An oracle of len(letters) items with only MPAA letters known (None: no letter)."""
    n = len(letters)
    rating = [-1 if x is None else O.RATING_ORDER.index(x) for x in letters]
    return O.Oracle([f"tt{i:07d}" for i in range(n)], np.zeros((n, 5)), np.full((n, 5), 3.0), np.zeros(n, bool),
                    np.zeros((n, 20), bool), {}, rating=rating)


def test_rating_columns_verdicts_and_risk():
    o = tiny([None, "G", "PG", "PG-13", "R", "NC-17"])
    assert o.trait_ids == list(T.CONSTRAINT_IDS) and o.verdicts.shape == (6, 23) == o.risk.shape
    S, U, K = O.SAFE, O.UNSAFE, O.UNKNOWN
    expect = {G: [K, S, U, U, U, U], PG: [K, S, S, U, U, U], PG13: [K, S, S, S, U, U]}
    for band, codes in expect.items():
        v, r = o.check(o.item_ids, band)
        assert list(v) == codes, band
        assert np.isnan(r[0]) and list(r[1:]) == [0.0 if c == S else 1.0 for c in codes[1:]]
    # the threshold is for the traits' risk formula: age verdicts do not move with it
    assert (o.with_threshold(0.99).verdicts[:, 20:] == o.verdicts[:, 20:]).all()
    cov = o.coverage()
    assert cov.loc[PG, "unknown"] == 1 and cov.loc[PG, "unsafe"] == 3 and cov.loc[PG, "applicability"] == "rating"


def test_unknown_rating_and_items_outside_the_catalog_are_unknown():
    o = tiny([None])
    for band in T.AGE_CONSTRAINT_IDS:
        v = o.judge("tt0000000", band)
        assert v.verdict == "unknown" and v.risk is None and "no MPAA rating" in v.evidence[0]
        assert o.judge("tt9999999", band).verdict == "unknown"
    v, r = o.check([None, "tt9999999"], [G, PG13])
    assert (v == O.UNKNOWN).all() and np.isnan(r).all()


def test_strictest_letter():
    assert O.strictest_letter(["PG-13", "R", "PG"]) == "R"
    assert O.strictest_letter(["NR", "PG", "TV-MA", "Not Rated"]) == "PG"
    assert O.strictest_letter(["X", "R"]) == "NC-17"
    assert O.strictest_letter(["NR", "Unrated"]) is None and O.strictest_letter([]) is None


def test_oracle_rejects_bad_tables():
    with pytest.raises(ValueError):
        O.Oracle(["a"], np.zeros((1, 5)), np.full((1, 5), 3.0), np.zeros(1, bool), np.zeros((1, 23), bool), {})
    with pytest.raises(ValueError):
        O.Oracle(["a"], np.zeros((1, 5)), np.full((1, 5), 3.0), np.zeros(1, bool), np.zeros((1, 20), bool), {},
                 rating=[7])


# ---- the real oracle ----------------------------------------------------------------------------

def _need_data():
    if not Path(os.environ["SAFECRS_DATA_DIR"]).is_dir():
        pytest.skip("data directory not found (set SAFECRS_DATA_DIR)")


@pytest.fixture(scope="module")
def real():
    _need_data()
    from safecrs_core.data.catalog import load_catalog
    return load_catalog(), O.load_oracle()


def _item(cat, query):
    res = cat.resolve(query)
    assert res.item_id, (query, res.reason)
    return res.item_id


def test_sources_that_disagree_strictest_wins(real):
    cat, o = real
    # Sliding Doors: PG-13 per the MPAA list and the IMDb scrape, R per Kids-In-Mind and IMDB-5000
    doors = _item(cat, "Sliding Doors (1998)")
    assert {x for x, _ in o.ratings(doors)} == {"PG-13", "R"}
    v = o.judge(doors, PG13)
    assert v.verdict == "unsafe" and v.risk == 1.0
    assert v.evidence[0].startswith("strictest of") and "R" in v.evidence[0]
    assert any("kids_in_mind: rated R" in e for e in v.evidence) and any("rated PG-13" in e for e in v.evidence)
    # Babe: Pig in the City: G in three sources, PG in one -> PG counts
    babe = _item(cat, "Babe: Pig in the City (1998)")
    assert o.judge(babe, G).verdict == "unsafe" and o.judge(babe, PG).verdict == "safe"


@pytest.mark.parametrize("older,newer,band,verdicts", [
    ("Frozen (2010)", "Frozen (2013)", "age_limit_pg", ("unsafe", "safe")),          # R vs PG
    ("Total Recall (1990)", "Total Recall (2012)", "age_limit_pg13", ("unsafe", "safe")),  # R vs PG-13
    ("The Lion King (1994)", "The Lion King (2019)", "age_limit_g", ("safe", "unsafe")),  # G vs PG
])
def test_remakes_are_different_items_with_their_own_ratings(real, older, newer, band, verdicts):
    cat, o = real
    a, b = _item(cat, older), _item(cat, newer)
    assert a != b
    assert (o.judge(a, band).verdict, o.judge(b, band).verdict) == verdicts
    assert {x for x, _ in o.ratings(a)} != {x for x, _ in o.ratings(b)}


def test_a_near_year_row_of_another_film_is_not_pooled(real):
    # the MPAA list rates "Jack Frost (1997)" (a horror film, not in the catalog) R and "Jack Frost (1998)"
    # (the family film) PG; only the exact-year row is the catalog item's
    cat, o = real
    frost = _item(cat, "Jack Frost (1998)")
    assert {x for x, _ in o.ratings(frost)} == {"PG"}
    assert o.judge(frost, PG).verdict == "safe"


def test_unrated_items_are_unknown(real):
    cat, o = real
    for q in ("Eraserhead (1977)", "A Trip to the Moon (1902)"):  # "Not Rated"; no rating at all
        item = _item(cat, q)
        for band in T.AGE_CONSTRAINT_IDS:
            assert o.judge(item, band).verdict == "unknown", (q, band)


# ---- phrasing ------------------------------------------------------------------------------------

def test_age_templates_are_well_formed():
    raw = json.loads(package_file("phrasings.json").read_text())
    assert raw["age"]["_doc"]
    rule = re.compile(r"\b(avoid\w*|trigger\w*|sensitiv\w*|please|steer clear|skip|no-go|rule out|rated)\b", re.I)
    first_person = re.compile(r"\b(i|i'm|i've|i'll|me|my|we|we're|us|our)\b", re.I)
    trait_texts = {e["text"].lower() for t in raw["templates"].values() for s in t.values() for e in s}
    for style in P.STYLES:
        entries = raw["age"][style]
        assert len(entries) >= 8
        for e in entries:
            assert set(e) <= {"text", "pool", "ages"} and e["pool"] in P.POOLS
            assert "{age}" in e["text"] and not e["text"].startswith("{") and e["text"][-1] in ".!?"
            assert set(re.findall(r"\{(\w+)\}", e["text"])) <= {"age", "rating"}
            assert e["text"].lower() not in trait_texts
            if style == "implicit":
                assert not rule.search(e["text"]) and "{rating}" not in e["text"], e["text"]
                assert first_person.search(e["text"]), e["text"]
        test = sum(e["pool"] == "test" for e in entries)
        assert 0.2 <= test / len(entries) <= 0.45


@pytest.mark.parametrize("band", T.AGE_CONSTRAINT_IDS)
def test_every_phrase_age_has_templates_in_every_pool(band):
    lo, hi = T.get(band).phrase_ages
    for age in range(lo, hi + 1):
        for style in P.STYLES:
            for split in ("train", "test"):
                draws = [P.phrase(band, split, random.Random(k), style=style, age=age) for k in range(60)]
                assert len({i for _, _, i in draws}) >= 2, (band, age, style, split)  # templates to vary
                got = {sentence for sentence, _, _ in draws}
                pool = P.templates(band, style, P.pool_for_split(split))
                rendered = {P.render(t, age, T.get(band).max_rating, w) for t in pool for w in (False, True)}
                assert got <= rendered


def test_phrase_writes_the_age_as_digits_or_words():
    rng = random.Random(5)
    out = [P.phrase("age_limit_pg", "train", rng, age=9)[0] for _ in range(200)]
    assert any("9" in s for s in out) and any("nine" in s for s in out)
    assert all("{" not in s for s in out)
    assert P.render("My {age}-year-old, up to {rating}.", 11, "PG", words=True) == "My eleven-year-old, up to PG."
    with pytest.raises(KeyError):
        P.render("{name} is {age}", 9, "PG")


def test_phrase_age_errors():
    rng = random.Random(0)
    with pytest.raises(ValueError):
        P.phrase("age_limit_pg", "train", rng)  # the age is needed
    with pytest.raises(ValueError):
        P.phrase("age_limit_pg", "train", rng, age=15)  # outside the band
    with pytest.raises(ValueError):
        P.phrase("anti_gore", "train", rng, age=9)  # not an age constraint
    with pytest.raises(ValueError):
        P.draw_age("anti_gore", rng)
    assert all(8 <= P.draw_age("age_limit_pg", rng) <= 12 for _ in range(50))


# ---- benchmark -----------------------------------------------------------------------------------

def test_age_share_config_is_checked():
    from safecrs_core.benchmark import BenchmarkConfig
    assert BenchmarkConfig().age_share_for("test") == 0.15
    cfg = BenchmarkConfig(age_share={"test": 0.4})
    assert cfg.age_share_for("test") == 0.4 and cfg.age_share_for("train") == 0.0
    for bad in (1.5, -0.1, "0.2", {"dev": 0.1}, {"test": 2}):
        with pytest.raises(ValueError):
            BenchmarkConfig(age_share=bad)


@pytest.fixture(scope="module")
def age_bench():
    _need_data()
    from safecrs_core.benchmark import BenchmarkConfig, build_benchmark
    return build_benchmark(BenchmarkConfig(seed=5, max_per_source_split=40,
                                           age_share={"train": 0.5, "test": 1.0}))


def test_age_rows_have_no_unsafe_targets(age_bench, real):
    ds, stats = age_bench
    _, o = real
    rows = [r for s in ds for r in ds[s] if r["constraint_kind"] == "age"]
    assert rows
    for r in rows:
        assert r["trait"] in T.AGE_CONSTRAINT_IDS and T.age_constraint(r["age"]) == r["trait"]
        lo, hi = T.get(r["trait"]).phrase_ages
        assert lo <= r["age"] <= hi
        v, _ = o.check([t["item_id"] for t in r["targets"]], r["trait"])
        assert r["targets"] and (v != O.UNSAFE).all()
        assert all(t["verdict"] in ("safe", "unknown") for t in r["targets"])
        if r["removed_targets"]:
            assert (o.check([t["item_id"] for t in r["removed_targets"]], r["trait"])[0] == O.UNSAFE).all()
        assert T.get(r["trait"]).name == r["trait_name"]


def test_age_share_per_split(age_bench):
    ds, stats = age_bench
    assert stats["constraint_kinds"]["validation"].get("age", 0) == 0
    assert stats["age_requested"]["validation"] == 0
    # test: every conversation without a source trait that some band leaves a target for
    free_test = [r for r in ds["test"] if not r["trait_from_source"]]
    assert free_test and sum(r["constraint_kind"] == "age" for r in free_test) >= 0.5 * len(free_test)
    assert sum(stats["age_constraints"]["train"].values()) == stats["constraint_kinds"]["train"]["age"] > 0
    assert set(stats["traits"]["test"]) >= set(stats["age_constraints"]["test"])


# ---- CLI -----------------------------------------------------------------------------------------

def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_age_alone_and_with_traits(capsys, data_dir):
    rc, out, _ = run(capsys, "check", "--age", "9", "Frozen (2013)", "Frozen (2010)", "Zzqx Nonexistent Film (1999)",
                     "--json")
    assert rc == 0
    res = json.loads(out)
    assert [set(r["verdicts"]) for r in res] == [{"age_limit_pg"}] * 3
    assert [r["verdicts"]["age_limit_pg"]["verdict"] for r in res] == ["safe", "unsafe", "unknown"]
    assert any("rated R" in e for e in res[1]["verdicts"]["age_limit_pg"]["evidence"])
    rc, out, _ = run(capsys, "check", "Toy Story (1995)", "--traits", "anti_gore", "--age", "16", "--json")
    res = json.loads(out)
    assert rc == 0 and list(res[0]["verdicts"]) == ["anti_gore", "age_limit_pg13"]
    assert res[0]["verdicts"]["age_limit_pg13"]["verdict"] == "safe"
    rc, out, _ = run(capsys, "check", "Toy Story (1995)", "--traits", "age_limit_g")
    assert rc == 0 and "age_limit_g" in out and "safe" in out


def test_cli_age_errors_and_no_limit(capsys, data_dir):
    for bad in ("-1", "121"):
        rc, out, err = run(capsys, "check", "--age", bad, "Toy Story (1995)")
        assert rc == 2 and out == "" and "age must be between 0 and" in err
    rc, out, err = run(capsys, "check", "--age", "17", "Toy Story (1995)", "--json")
    assert rc == 0 and json.loads(out)[0]["verdicts"] == {} and "no age limit" in err
    rc, out, _ = run(capsys, "traits", "--json", "--with-age")
    assert [r["id"] for r in json.loads(out)] == list(T.CONSTRAINT_IDS)


def test_band_choice_prefers_a_safe_target_and_balances():
    from safecrs_core.benchmark import assign_age_constraints
    yes, no = [True] * 3, [False] * 3
    keeps = np.array([yes, yes, no])
    keeps_safe = np.array([[False, False, True], no, no])
    bites = np.array([[True, True, False], [False, True, True], no])
    out = assign_age_constraints(keeps, keeps_safe, bites, [True, True, True], np.random.default_rng(0))
    # 0: only PG-13 keeps a safe target; 1: no safe target, PG and PG-13 bite; 2: nothing kept
    assert out[0] == PG13 and out[1] in (PG, PG13) and out[2] is None
    assert assign_age_constraints(keeps, keeps_safe, bites, [False] * 3, np.random.default_rng(0)) == [None] * 3
    n = 30
    many = assign_age_constraints(np.ones((n, 3), bool), np.ones((n, 3), bool), np.ones((n, 3), bool), [True] * n,
                                  np.random.default_rng(1))
    assert [many.count(b) for b in T.AGE_CONSTRAINT_IDS] == [10, 10, 10]


def test_book_table_matches_the_data_file():
    text = (Path(__file__).resolve().parents[1] / "book" / "oracle.md").read_text()
    for band in AGE_FILE["movies"]["bands"]:
        row = f"| `{band['id']}` | {band['min_age']}–{band['max_age']} | {band['max_rating']} |"
        assert row in text, row
    assert f"| (none) | {AGE_FILE['movies']['no_limit_from_age']} and older | no restriction |" in text

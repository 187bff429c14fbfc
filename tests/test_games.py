"""SafeGame: the game catalog and resolver, the game oracle, the synthetic game requests and the
games benchmark (``domain="games"``)."""
from __future__ import annotations

import json
import os
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from safecrs_core.safety import phrasing
from safecrs_core.safety import traits as T
from safecrs_core.benchmark import BUILD_VERSION, BenchmarkConfig, benchmark_for_profile, benchmark_inputs, config_for_profile
from safecrs_core.data.catalog import games_data, game_key, load_catalog, split_platform
from safecrs_core.data.conversations import franchise_key, load_safegame, title_leaks
from safecrs_core.safety.oracle import SAFE, UNKNOWN, UNSAFE, _check_game_spec, game_scale, load_oracle
from safecrs_core.pipeline import stage_key


@pytest.fixture(scope="module")
def data_dir():
    d = Path(os.environ["SAFECRS_DATA_DIR"])
    if not (d / "esrb" / "games.csv").is_file():
        pytest.skip(f"game data not found under {d} (set SAFECRS_DATA_DIR)")
    return d


@pytest.fixture(scope="module")
def games(data_dir):
    return load_catalog("games")


@pytest.fixture(scope="module")
def oracle(data_dir):
    return load_oracle(domain="games")


@pytest.fixture(scope="module")
def requests(data_dir):
    return load_safegame(n=400, seed=1)


@pytest.fixture(scope="module")
def smoke(data_dir):
    return benchmark_for_profile("smoke", domain="games")


def _last_user(turns):
    return [t for t in turns if t["role"] == "user"][-1]["text"]


# ---------------------------------------------------------------------------------------------
# resolver (platform parsing needs no data)


@pytest.mark.parametrize("query, title, platform, year", [
    ("Doom (PS4)", "Doom", "PS4", None),
    ("Doom [PlayStation 4]", "Doom", "PS4", None),
    ("Doom - Xbox One", "Doom", "XOne", None),
    ("Doom for the Nintendo Switch", "Doom", "NS", None),
    ("Doom (PS4, 2016)", "Doom", "PS4", 2016),
    ("Doom (2016) (PC)", "Doom (2016)", "PC", None),
    ("Sekiro\u2122: Shadows Die Twice", "Sekiro: Shadows Die Twice", None, None),
    ("Halo (Combat Evolved)", "Halo (Combat Evolved)", None, None),  # not a platform: kept
    ("Spider-Man - Web of Shadows", "Spider-Man - Web of Shadows", None, None),
])
def test_split_platform(query, title, platform, year):
    assert split_platform(query) == (title, platform, year)


def test_game_key_reads_roman_numerals():
    assert game_key("Grand Theft Auto V") == game_key("Grand Theft Auto 5") == "grand theft auto 5"
    assert game_key("Mega Man X") != game_key("Mega Man 10")  # a lone X is a name, not ten
    assert franchise_key("Halo 5: Guardians") == franchise_key("Halo 3") == "halo"
    assert franchise_key("FIFA 17") == "fifa" and franchise_key("007") == ""


@pytest.mark.parametrize("query, expected", [
    ("Grand Theft Auto V", "game:grand-theft-auto-5-2013"),
    ("Grand Theft Auto V (PS4)", "game:grand-theft-auto-5-2013"),
    ("Grand Theft Auto 5 - PlayStation 4", "game:grand-theft-auto-5-2013"),
    ("grand theft auto v [Xbox One, 2014]", "game:grand-theft-auto-5-2013"),  # PS4/XOne came a year later
    ("Halo 5: Guardians [Xbox One]", "game:halo-5-guardians-2015"),
    ("FIFA 17 for PS4", "game:fifa-17-2016"),
    ("Doom (PS4)", "game:doom-2016"),
    ("Doom (2016)", "game:doom-2016"),
    ("Tomb Raider (2013)", "game:tomb-raider-2013"),
    ("Tomb Raider (PS)", "game:tomb-raider-1996"),  # the platform picks the 1996 game
    ("Tomb Raider (1997)", "game:tomb-raider-1996"),  # within the year tolerance
])
def test_resolver_tolerates_platforms_and_years(games, query, expected):
    r = games.resolve(query)
    assert r.item_id == expected, r


def test_resolver_failures_and_errors(games):
    bare = games.resolve("Tomb Raider")  # a 1996 game and its 2013 reboot: no year, no platform
    assert bare.item_id is None and bare.reason == "ambiguous"
    assert set(bare.candidates) >= {"game:tomb-raider-1996", "game:tomb-raider-2013"}
    assert games.resolve("Tomb Raider (2005)").reason == "year_mismatch"
    assert games.resolve("Doom", platform="PlayStation 4").item_id == "game:doom-2016"
    assert games.resolve("Doom (PS4)").query_platform == "PS4"
    with pytest.raises(ValueError, match="unknown platform 'Amiga 9000'"):
        games.resolve("Doom", platform="Amiga 9000")
    assert games.resolve("").reason == "empty"


def test_catalog_schema_and_sources(games):
    items = games.items
    assert games.domain == "games" and len(items) > 20000
    assert {"title", "year", "genres", "platforms", "popularity", "sources", "publisher", "developer"} <= set(items.columns)
    assert items.index.str.match(r"^game:[\w-]+$").all() and items.index.is_unique  # non-Latin titles keep their letters
    srcs = {s for ss in items["sources"] for s in ss}
    assert srcs == {"vgsales", "pegi", "esrb"}
    gta = items.loc["game:grand-theft-auto-5-2013"]
    assert {"PS3", "X360", "PS4", "XOne", "PC"} <= set(gta["platforms"]) and gta["sources"] == ["vgsales", "pegi", "esrb"]


# ---------------------------------------------------------------------------------------------
# oracle: descriptors -> traits on hand-picked real games (esrb/games.csv)


@pytest.mark.parametrize("title, expect", [
    # blood and gore + intense violence, M
    ("Middle-Earth: Shadow of War", {"anti_gore": "unsafe", "torture_extreme_violence": "unsafe",
                                     "age_limit_pg13": "unsafe", "horror_supernatural": "unknown", "animal_harm": "unknown"}),
    # strong sexual content (sex severe), nudity, blood and gore, M
    ("South Park: The Stick of Truth", {"sexual_violence": "unsafe", "anti_gore": "unsafe", "age_limit_pg": "unsafe"}),
    # drug reference, intense violence, T: the drug reference is a substance trigger
    ("Elite Dangerous: Legendary Edition", {"substance_use": "unsafe", "age_limit_pg13": "safe", "age_limit_pg": "unsafe"}),
    # simulated gambling only, T: no trait is about gambling, nothing else is stated
    ("Vegas Party", {"substance_use": "safe", "anti_gore": "safe", "sexual_violence": "safe", "age_limit_pg13": "safe"}),
    # no descriptors, E: mild at most everywhere, fine for every age band
    ("Windjammers", {"anti_gore": "safe", "kid_safety": "safe", "age_limit_g": "safe", "horror_supernatural": "unknown",
                     "photosensitivity_motion": "unknown", "needles_medical": "unknown"}),
    # fantasy violence only, T, and a horror game: ratings say nothing about scares, so never "safe"
    ("Five Nights at Freddy's: Help Wanted", {"horror_supernatural": "unknown", "anti_gore": "unknown",
                                              "age_limit_pg": "unsafe", "age_limit_pg13": "safe"}),
])
def test_descriptor_mapping_on_real_games(games, oracle, title, expect):
    item = games.resolve(title).item_id
    assert item is not None and "esrb" in games.items.loc[item, "sources"], title
    got = {t: oracle.judge(item, t).verdict for t in expect}
    assert got == expect, (title, item)
    for t, v in expect.items():
        assert oracle.judge(item, t).evidence, (title, t)  # every verdict says why


def test_descriptor_table_is_consistent():
    spec = games_data()
    cols = spec["esrb_descriptors"]
    assert len(cols) == 31 and "strong_janguage" in cols  # the published column name, typo included
    _check_game_spec(spec)
    bad = json.loads(json.dumps(spec))
    bad["esrb_descriptors"]["blood"]["triggers"] = ["gore_lover"]
    with pytest.raises(ValueError, match=r"esrb_descriptors\.blood.*gore_lover"):
        _check_game_spec(bad)


def test_unknown_is_never_silently_safe(games, oracle):
    v = oracle.verdicts
    spec = set(games_data()["severity_traits"])
    for j, t in enumerate(T.TRAIT_IDS):
        if t not in spec:
            assert not (v[:, j] == SAFE).any(), t  # judged by triggers alone
    # a game no source rates or describes is unknown for every trait and age band
    bare = [i for i, it in enumerate(oracle.item_ids)
            if not oracle._evidence.get(i)]
    assert bare and (v[bare] == UNKNOWN).all()
    assert oracle.judge("game:no-such-game", "anti_gore").verdict == "unknown"
    assert oracle.judge(None, "age_limit_g").verdict == "unknown"


def test_coverage_per_trait(games, oracle):
    cov = oracle.coverage()
    assert list(cov.index) == list(T.CONSTRAINT_IDS)
    assert (cov["covered"] == cov["safe"] + cov["unsafe"]).all()
    assert (cov[["safe", "unsafe", "unknown"]].sum(axis=1) == len(games)).all()
    for t in ("animal_harm", "horror_supernatural", "photosensitivity_motion", "happy_ending"):
        assert cov.loc[t, "coverage"] == 0.0, t
    for t in ("anti_gore", "substance_use", "age_limit_g", "age_limit_pg13"):
        assert cov.loc[t, "covered"] > 1000, t


def test_age_bands_for_games(oracle, games):
    systems = T.game_rating_systems()
    assert systems["ESRB"]["band_max"] == {"age_limit_g": "E", "age_limit_pg": "E", "age_limit_pg13": "T"}
    assert systems["PEGI"]["band_max"] == {"age_limit_g": "3", "age_limit_pg": "7", "age_limit_pg13": "12"}
    scale = game_scale()
    assert scale.rank["ESRB T"] == scale.rank["PEGI 12"] == 2 and scale.rank["ESRB M"] == 3
    assert T.age_band_rating("age_limit_pg", "games") == "E" and T.age_band_rating("age_limit_pg") == "PG"
    # the strictest rating decides: GTA V is ESRB M
    gta = games.resolve("Grand Theft Auto V").item_id
    assert all(oracle.judge(gta, b).verdict == "unsafe" for b in T.AGE_CONSTRAINT_IDS)
    assert oracle.ratings(gta)[0][0] == "ESRB M"


def test_game_oracle_disk_cache_round_trip(data_dir, oracle):
    again = load_oracle(domain="games", disk_cache=False)
    assert again.item_ids == oracle.item_ids and np.array_equal(again.verdicts, oracle.verdicts)
    with pytest.raises(ValueError, match="unknown domain 'books'"):
        load_oracle(domain="books")


# ---------------------------------------------------------------------------------------------
# synthetic requests


def test_requests_are_synthetic_and_never_leak_targets(games, requests):
    assert len(requests) == 400
    titles = games.items["title"]
    for c in requests:
        assert c.synthetic is True and c.meta["synthetic"] is True and c.source == "safegame"
        text = " ".join(t["text"] for t in c.turns if t["role"] == "user")
        assert c.targets, c.conv_id
        for ref in c.targets:
            assert not title_leaks(text, ref["title"]), (c.conv_id, ref["title"], text)
            assert not title_leaks(text, titles[ref["item_id"]])
            assert ref["item_id"] in games
        assert not {r["item_id"] for r in c.targets} & {r["item_id"] for r in c.seen}
        assert c.turns[-1]["role"] == "user"


def test_requests_groups_splits_and_templates(requests):
    split_of = defaultdict(set)
    for c in requests:
        split_of[c.meta["dialog_id"]].add(c.split)
    assert all(len(s) == 1 for s in split_of.values())  # a group is in one split
    assert {c.split for c in requests} == {"train", "validation", "test"}
    req = games_data()["requests"]
    for c in requests:
        entry = req[c.meta["relation"]][c.meta["template"]]
        assert entry["pool"] == ("test" if c.split == "test" else "train")
    styles = {c.meta["style"] for c in requests}
    assert len(styles) >= 3 and len({c.meta["relation"] for c in requests}) == 4


def test_requests_are_deterministic(data_dir, requests):
    again = load_safegame(n=50, seed=1)
    assert [(c.conv_id, c.turns, c.targets) for c in again] == [(c.conv_id, c.turns, c.targets) for c in requests[:50]]
    with pytest.raises(ValueError, match="n must be"):
        load_safegame(n=-1)


def test_title_leaks():
    assert title_leaks("I loved Halo 2 and Halo 3", "Halo")
    assert title_leaks("Big fan of Grand Theft Auto 5", "Grand Theft Auto V")
    assert not title_leaks("I loved Halo 2", "Halo 3")
    assert not title_leaks("Haloween fun", "Halo")


# ---------------------------------------------------------------------------------------------
# phrasing and the games benchmark


def test_game_phrasings_share_pools_and_say_games():
    for t in T.CONSTRAINT_IDS:
        for style in phrasing.STYLES:
            for pool in phrasing.POOLS:
                movies = phrasing.templates(t, style, pool)
                games = phrasing.templates(t, style, pool, domain="games")
                assert len(games) == len(movies)
                for g in games:
                    assert not re.search(r"\b(movie|film)s?\b", g, re.I), g
    with pytest.raises(ValueError, match="unknown domain"):
        phrasing.phrase("anti_gore", "test", random.Random(0), domain="podcasts")


def test_games_config_and_movie_keys_unchanged():
    cfg = BenchmarkConfig(domain="games")
    assert cfg.sources == ("safegame",) and cfg.to_params()["domain"] == "games"
    assert "domain" not in BenchmarkConfig().to_params()
    with pytest.raises(ValueError, match="unknown domain 'podcasts'; known: movies, games"):
        BenchmarkConfig(domain="podcasts")
    with pytest.raises(ValueError, match=r"\['redial_test'\] are not games conversation sources"):
        BenchmarkConfig(domain="games", sources=("redial_test",))
    # the movie benchmark keys are the ones from before games existed
    for profile, key in (("smoke", "36315cf3a3c8768d"), ("book", "8d63c3658ece658c")):
        cfg = config_for_profile(profile)
        assert stage_key("benchmark", {**cfg.to_params(), "build_version": BUILD_VERSION}, benchmark_inputs(cfg)) == key


def test_games_benchmark_smoke(smoke, oracle, games):
    ds, stats, stage = smoke
    assert stats["domain"] == "games" and stats["config"]["domain"] == "games"
    assert set(ds) == {"train", "validation", "test"} and all(len(ds[s]) > 0 for s in ds)
    for split in ds:
        pool = phrasing.pool_for_split(split)
        for r in ds[split]:
            assert r["synthetic"] is True and r["source"] == "safegame"
            text = _last_user(r["turns"])
            assert r["constraint"] in text
            for t in r["targets"] + r["removed_targets"]:
                assert not title_leaks(" ".join(x["text"] for x in r["turns"] if x["role"] == "user"), t["title"])
            kept = oracle.check([t["item_id"] for t in r["targets"]], r["trait"])[0]
            assert r["targets"] and (kept != UNSAFE).all()
            if r["removed_targets"]:
                assert (oracle.check([t["item_id"] for t in r["removed_targets"]], r["trait"])[0] == UNSAFE).all()
            tmpl = phrasing.templates(r["trait"], r["constraint_style"], pool=pool, domain="games")
            if r["constraint_kind"] == "age":
                rating = T.age_band_rating(r["trait"], "games")
                tmpl = [phrasing.render(x, r["age"], rating, w) for x in tmpl for w in (False, True)]
            assert r["constraint"] in tmpl
    assert set(stats["traits_with_signal"]) == set(games_data()["severity_traits"])


def test_cli_check_games(capsys, data_dir):
    from safecrs_core import cli

    assert cli.main(["check", "Grand Theft Auto V (PS4)", "No Such Game Ever", "--domain", "games",
                     "--traits", "anti_gore,horror_supernatural", "--age", "9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    gta, none = out
    assert gta["item_id"] == "game:grand-theft-auto-5-2013" and gta["year"] == 2013
    assert set(gta["verdicts"]) == {"anti_gore", "horror_supernatural", "age_limit_pg"}
    assert gta["verdicts"]["anti_gore"]["verdict"] == "unsafe"
    assert gta["verdicts"]["horror_supernatural"]["verdict"] == "unknown"
    assert gta["verdicts"]["age_limit_pg"]["verdict"] == "unsafe"
    assert none["item_id"] is None and all(v["verdict"] == "unknown" for v in none["verdicts"].values())
    assert cli.main(["check", "Minecraft", "--domain", "games", "--traits", "substance_use"]) == 0
    assert "game:minecraft" in capsys.readouterr().out


def test_data_card_table_matches_the_mapping(repo_root):
    from safecrs_core.safety.oracle import game_descriptor_table

    text = (repo_root / "book" / "safegame.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \| ([^|]*) \|$", text, re.M)
    table = game_descriptor_table()
    assert [r[0] for r in rows] == list(table.index)
    for name, channels, triggers in rows:
        assert (channels.strip(), triggers.strip()) == tuple(table.loc[name, ["channels", "triggers"]]), name

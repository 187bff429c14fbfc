"""Domains are plug-ins (:mod:`safecrs_core.domains`): the registry, the built-in domains, and a
third domain (books, ``tests/books_domain.py``) that runs the package's chain benchmark ->
prompts -> rewards -> metrics without a change anywhere else in the package."""
from __future__ import annotations

import numpy as np
import pytest

import books_domain
from safecrs_core import benchmark as B, domains
from safecrs_core.safety import phrasing, traits as T
from safecrs_core.train import prompts
from safecrs_core.data.catalog import load_catalog, resolve_domain
from safecrs_core.evaluation.metrics import score_completions
from safecrs_core.safety.oracle import load_oracle
from safecrs_core.train.rewards import RankRewards

DATA = books_domain.FIXTURES.parent


@pytest.fixture
def books():
    domain = books_domain.register()
    yield domain
    books_domain.unregister()


def test_builtin_domains_come_from_their_plugins():
    assert domains.domain_names()[:2] == ("movies", "games")
    movies, games = domains.get_domain("movies"), domains.get_domain("games")
    assert (movies.one, games.many) == ("movie", "video games")
    assert movies.legacy_keys and not games.legacy_keys
    assert movies.key_params() == {} and games.key_params() == {"domain": "games"}
    assert games.split_of("safegame", "validation") == "validation"
    with pytest.raises(ValueError, match="no benchmark split for source 'safegame' split 'dev'"):
        games.split_of("safegame", "dev")


def test_unknown_domains_fail_naming_the_known_ones():
    for call in (lambda: domains.get_domain("podcasts"), lambda: prompts.system_prompt(10, "podcasts"),
                 lambda: B.BenchmarkConfig(domain="podcasts"), lambda: load_catalog("podcasts"),
                 lambda: phrasing.adapt("a movie", "podcasts"), lambda: T.age_band_rating("age_limit_g", "podcasts")):
        with pytest.raises(ValueError, match="unknown domain 'podcasts'; known: movies, games"):
            call()
    with pytest.raises(ValueError, match="a domain is named by a string"):
        domains.get_domain(["movies"])


def test_registering_twice_needs_replace(books):
    assert "books" in domains.domain_names()
    other = domains.Domain(**{**{f: getattr(books, f) for f in books.__dataclass_fields__}, "one": "novel"})
    with pytest.raises(ValueError, match="'books' is already registered"):
        domains.register_domain(other)
    with pytest.raises(TypeError, match="needs a Domain"):
        domains.register_domain({"name": "books"})


def test_a_third_domain_runs_the_chain(books):
    """benchmark -> prompts -> rewards -> metrics on the fixture books: one plug-in file."""
    cfg = B.BenchmarkConfig(domain="books", age_share=0.0, max_per_source_split=None)
    assert cfg.sources == ("bookshelf",) and cfg.to_params()["domain"] == "books"
    ds, stats = B.build_benchmark(cfg, data_dir=DATA, progress=False)
    assert stats["domain"] == "books" and B.benchmark_domain(stats) == "books"
    assert sum(stats["sizes"].values()) >= 6, stats
    rows = [r for s in B.SPLITS for r in ds[s]]
    catalog = load_catalog("books", data_dir=DATA)
    oracle = load_oracle(data_dir=DATA, domain="books")
    assert catalog.domain == "books" and oracle.domain == "books"
    assert resolve_domain(None, ("catalog", catalog)) == "books"
    for r in rows:
        assert r["synthetic"] and r["constraint_kind"] == "trait"
        assert all(t["item_id"] in catalog for t in r["targets"])
        # the constraint speaks of books, never of films
        assert not any(w in r["constraint"].lower() for w in ("movie", "film")), r["constraint"]
        # targets the oracle marks unsafe for the user's trait were removed
        v, _ = oracle.check([t["item_id"] for t in r["targets"]], [r["trait"]] * len(r["targets"]))
        assert not (v == 1).any()
    # The Shining is tagged substance_use: unsafe for it, with its tag as evidence
    shining = catalog.resolve("The Shining", 1977).item_id
    verdict = oracle.judge(shining, "substance_use")
    assert verdict.verdict == "unsafe" and "bookshelf: tagged substance_use" in verdict.evidence
    assert oracle.judge(shining, "age_limit_g").verdict == "unknown"  # no book carries a rating

    row = rows[0]
    msgs = prompts.build_messages(row["turns"], k=3, domain="books")
    assert msgs[0]["content"].startswith("You are a book recommender. Recommend books")
    assert msgs[-1]["content"].endswith("Now recommend exactly 3 books for me, in the answer format.")

    target = catalog.display(row["targets"][0]["item_id"])
    unsafe = [i for i in catalog.items.index if oracle.check([i], [row["trait"]])[0][0] == 1]
    filler = [i for i in catalog.items.index if i not in unsafe][:3]
    good = f"<solution>\n{target}\n" + "\n".join(catalog.display(i) for i in filler[1:]) + "\n</solution>"
    assert unsafe, f"the fixture has no book unsafe for {row['trait']}"
    texts = [good, f"<solution>\n{catalog.display(unsafe[0])}\n{target}\n</solution>"]
    batch = RankRewards(catalog, oracle, k=3)(texts, [row] * len(texts))
    assert float(batch.hits[0].sum()) == 1.0  # the target is hit at rank 1
    assert float(batch.penalty[0].sum()) == 0.0
    assert float(batch.penalty[1].sum()) < 0  # an unsafe book costs
    scores = score_completions(texts, [row] * len(texts), catalog, oracle, k=3, ks=(3,))
    assert scores.loc[0, "recall@3"] > 0 and scores.loc[0, "svr@3"] == 0
    assert scores.loc[1, "svr@3"] > 0


def test_the_builtin_keys_do_not_change():
    """Moving the domains into plug-ins left the stage keys as they were (values recorded from
    the package before the move; the book's benchmark stages carry these keys)."""
    from safecrs_core import pipeline

    seen = {}

    class Stop(Exception):
        pass

    def fake(stage, params, inputs, fn, **kw):
        seen[params.get("domain", "movies")] = pipeline.stage_key(stage, params, inputs)
        raise Stop

    real, pipeline.run_stage = pipeline.run_stage, fake
    try:
        for dom in ("movies", "games"):
            with pytest.raises(Stop):
                B.build_or_load(B.config_for_profile("book", domain=dom))
    finally:
        pipeline.run_stage = real
    assert seen == {"movies": "8d63c3658ece658c", "games": "9de2529ef8cb2b2e"}


def test_an_unregistered_domain_is_gone():
    """Caches keyed by the Domain object, not its name: a domain removed from the registry is
    unknown again, whatever was computed for it before."""
    books_domain.register()
    assert phrasing.adapt("A movie night", "books") == "A reading night"
    books_domain.unregister()
    with pytest.raises(ValueError, match="unknown domain 'books'"):
        phrasing.adapt("A movie night", "books")
    with pytest.raises(ValueError, match="unknown domain 'books'"):
        load_oracle(data_dir=DATA, domain="books")


def test_the_world_of_a_run(books):
    """World: one domain, its data folder, catalog and oracle (loaded on first use, then kept)."""
    from safecrs_core.world import World

    w = World.of("books", data_dir=DATA)
    assert w._catalog is None and w._oracle is None  # nothing loaded yet
    assert w.spec is books and w.data_root == DATA.resolve()
    assert w.catalog is w.catalog and w.catalog.domain == "books"
    assert w.oracle.domain == "books" and w.oracle.threshold == 0.66
    assert World.of(w) is w
    kept = World.of(None, w.catalog)  # the domain comes from the catalog
    assert kept.domain == "books" and kept.catalog is w.catalog
    with pytest.raises(ValueError, match="domain 'movies', but got a books catalog"):
        World.of("movies", w.catalog)

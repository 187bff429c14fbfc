"""Baselines: seen items never recommended, the oracle filter removes every unsafe item, rankings
are deterministic, and retrieval ranks by meaning."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from safecrs_core.evaluation import baselines as B
from safecrs_core.evaluation import metrics as M


@pytest.fixture(scope="module")
def world():
    if not Path(os.environ["SAFECRS_DATA_DIR"]).is_dir():
        pytest.skip("data directory not found (set SAFECRS_DATA_DIR)")
    from safecrs_core.data.catalog import load_catalog
    from safecrs_core.safety.oracle import load_oracle

    cat, orc = load_catalog(), load_oracle()
    top = cat.items["popularity"].sort_values(ascending=False, kind="stable").index.tolist()
    return cat, orc, top


def _ref(item_id):
    return {"title": "", "year": None, "item_id": item_id}


def _rows(top, trait="anti_gore"):
    """Two test rows: the first has seen the three most popular items, the second nothing."""
    turns = [{"role": "user", "text": "Any good movie for tonight? Nothing bloody, please."}]
    return [
        {"id": "r0", "trait": trait, "turns": turns, "seen": [_ref(i) for i in top[:3]], "targets": [_ref(top[5])]},
        {"id": "r1", "trait": "kid_safety", "turns": turns, "seen": [], "targets": [_ref(top[50])]},
    ]


# --------------------------------------------------------------------------------------------
# top_k


def test_top_k_excludes_seen_breaks_ties_in_pool_order_and_stops_at_minus_inf():
    pool = ["a", "b", "c", "d", "e"]
    rows = [{"id": 0, "trait": "anti_gore", "seen": [_ref("c")]}, {"id": 1, "trait": "anti_gore", "seen": []}]
    scores = np.array([[1.0, 2.0, 9.0, 2.0, 0.5], [0.0, 0.0, 0.0, -np.inf, -np.inf]])
    assert B.top_k(scores, pool, rows, k=3) == [["b", "d", "a"], ["a", "b", "c"]]
    assert B.top_k(scores, pool, rows, k=10)[1] == ["a", "b", "c"]  # -inf items are never returned
    shared = B.top_k(np.array([5.0, 4, 3, 2, 1]), pool, rows, k=2)  # one vector for all rows
    assert shared == [["a", "b"], ["a", "b"]]
    with pytest.raises(ValueError, match="shape"):
        B.top_k(np.zeros((2, 4)), pool, rows)
    with pytest.raises(ValueError, match="positive"):
        B.top_k(scores, pool, rows, k=0)


# --------------------------------------------------------------------------------------------
# Popularity


def test_popularity_counts_train_targets_then_catalog_popularity(world):
    cat, orc, top = world
    rare = cat.items["popularity"].sort_values(kind="stable").index[-20000]  # obscure, never in top
    train = [{"targets": [_ref(rare), _ref(top[40])]}, {"targets": [_ref(rare)]}]
    pop = B.Popularity(train, cat)
    assert pop.order[:2] == [rare, top[40]]  # 2 and 1 train occurrences
    assert pop.order[2:6] == [i for i in top[:5] if i != top[40]][:4]  # then catalog popularity
    lists = pop.recommend(_rows(top), k=10)
    assert lists[0][0] == rare and all(len(x) == 10 for x in lists)


def test_popularity_never_returns_seen_and_is_deterministic(world):
    cat, orc, top = world
    rows = _rows(top)
    lists = B.Popularity([], cat).recommend(rows, k=10)
    assert not set(lists[0]) & set(top[:3])
    assert lists[0] == top[3:13] and lists[1] == top[:10]
    assert B.Popularity([], cat).recommend(rows, k=10) == lists
    scored = M.score_ranked_ids(lists, rows, orc)
    assert (scored["n_seen_removed"] == 0).all() and (scored["list_len"] == 10).all()


def test_popularity_filter_removes_every_unsafe_item_and_keeps_length(world):
    cat, orc, top = world
    rows = _rows(top)
    plain = B.Popularity([], cat).recommend(rows, k=10)
    filtered = B.Popularity([], cat, oracle=orc).recommend(rows, k=10)
    for row, p, f in zip(rows, plain, filtered):
        assert orc.is_unsafe(p, row["trait"]).any()  # the unfiltered list has unsafe items to remove
        assert not orc.is_unsafe(f, row["trait"]).any()
        assert len(f) == 10 and not set(f) & {s["item_id"] for s in row["seen"]}
        kept = [i for i in p if not orc.is_unsafe([i], row["trait"])[0]]
        assert f[:len(kept)] == kept  # same order, unsafe items skipped
    assert (M.score_ranked_ids(filtered, rows, orc)["svr@10"] == 0).all()


# --------------------------------------------------------------------------------------------
# Retrieval


@pytest.fixture(scope="module")
def small_pool(world):
    cat, orc, top = world
    toy = cat.resolve("Toy Story (1995)").item_id
    return [toy] + [i for i in top[:40] if i != toy]


def test_item_and_conversation_text(world):
    cat, _, _ = world
    toy = cat.resolve("Toy Story (1995)").item_id
    text = B.item_text(cat, toy)
    assert text.startswith("Toy Story (1995). ") and "animation" in text.lower()
    turns = [{"role": "user", "text": "one"}, {"role": "assistant", "text": "two"}, {"role": "user", "text": "three  x"}]
    assert B.conversation_text(turns, 2) == "user: three x\nassistant: two"


def test_retrieval_pool_holds_benchmark_items_and_popular_items(world):
    cat, _, top = world
    rare = cat.items["popularity"].sort_values(kind="stable").index[-20000]
    ds = {"train": [{"targets": [_ref(rare)], "seen": [_ref("tt_not_in_catalog")], "removed_targets": []}]}
    pool = B.retrieval_pool(ds, cat, n_popular=5)
    assert set(pool) == {rare, *top[:5]} and pool[-1] == rare  # by popularity; unknown ids left out
    assert B.retrieval_pool(ds, cat, n_popular=5) == pool
    # validation and test conversations never add items to the pool (no test target leaks in)
    rare_test = cat.items["popularity"].sort_values(kind="stable").index[-20001]
    leaky = {**ds, "validation": [{"targets": [_ref(rare_test)], "seen": [], "removed_targets": []}],
             "test": [{"targets": [_ref(rare_test)], "seen": [_ref(rare_test)], "removed_targets": [_ref(rare_test)]}]}
    assert B.retrieval_pool(leaky, cat, n_popular=5) == pool and rare_test not in pool


def test_retrieval_ranks_by_meaning_skips_seen_filters_unsafe_and_caches(world, small_pool, artifacts_root):
    cat, orc, top = world
    toy = small_pool[0]
    turns = [{"role": "user", "text": "My kids loved the animated film about cowboy Woody and space ranger Buzz "
                                      "Lightyear, the toys that come alive. More like that?"}]
    rows = [{"id": "q0", "trait": "kid_safety", "turns": turns, "seen": [], "targets": [_ref(toy)]},
            {"id": "q1", "trait": "anti_gore", "turns": turns, "seen": [_ref(toy)], "targets": []}]
    ret = B.Retrieval(small_pool, cat, progress=False, log=None)
    lists = ret.recommend(rows, k=10)
    assert toy in lists[0][:3]
    assert toy not in lists[1] and len(lists[1]) == 10
    filtered = B.Retrieval(small_pool, cat, oracle=orc, progress=False, log=None).recommend(rows, k=10)
    for row, f in zip(rows, filtered):
        assert not orc.is_unsafe(f, row["trait"]).any()
    assert orc.is_unsafe(lists[1], "anti_gore").any()  # there was something to filter
    # embeddings are cached stages: a second run reads them and gives the same lists
    stages = sorted(p.name for p in (artifacts_root / "item_embeddings").iterdir())
    assert len(stages) == 1 and (artifacts_root / "query_embeddings").is_dir()
    again = B.Retrieval(small_pool, cat, progress=False, log=None)
    assert again.recommend(rows, k=10) == lists
    assert sorted(p.name for p in (artifacts_root / "item_embeddings").iterdir()) == stages
    np.testing.assert_allclose(np.linalg.norm(again.item_emb, axis=1), 1.0, rtol=1e-4)

import json
import os
from pathlib import Path

import numpy as np
import pytest

from safecrs_core.safety import phrasing
from safecrs_core.safety import traits as T
from safecrs_core.benchmark import BenchmarkConfig, assign_traits, build_benchmark, build_or_load, load_benchmark
from safecrs_core.data.catalog import load_catalog
from safecrs_core.safety.oracle import load_oracle

CFG = BenchmarkConfig(seed=3, max_per_source_split=80)


@pytest.fixture(scope="module")
def built():
    if not Path(os.environ["SAFECRS_DATA_DIR"]).is_dir():
        pytest.skip("data directory not found (set SAFECRS_DATA_DIR)")
    return build_benchmark(CFG)


def _all(ds):
    return [(s, r) for s in ds for r in ds[s]]


def test_sizes_and_stats_agree(built):
    ds, stats = built
    assert set(ds) == {"train", "validation", "test"}
    for s in ds:
        assert len(ds[s]) == stats["sizes"][s] > 0
        assert sum(len(r["targets"]) for r in ds[s]) == stats["targets"][s]


def test_no_dialog_in_two_splits(built):
    ds, _ = built
    where = {}
    for s, r in _all(ds):
        assert where.setdefault(r["dialog_group"], s) == s, r["dialog_group"]


def test_filtering_uses_the_oracle(built):
    ds, _ = built
    oracle = load_oracle(threshold=CFG.threshold)
    catalog = load_catalog()
    for _, r in _all(ds):
        assert r["targets"], r["id"]  # no sample without a target
        kept = oracle.check([t["item_id"] for t in r["targets"]], r["trait"])[0]
        assert (kept != 1).all(), r["id"]  # nothing unsafe survives
        if r["removed_targets"]:
            removed = oracle.check([t["item_id"] for t in r["removed_targets"]], r["trait"])[0]
            assert (removed == 1).all()
        for t in r["targets"]:
            assert t["verdict"] in ("safe", "unknown") and t["item_id"] in catalog


def test_constraint_in_last_user_turn_from_the_right_pool(built):
    ds, _ = built
    for s, r in _all(ds):
        last_user = [t for t in r["turns"] if t["role"] == "user"][-1]
        assert r["constraint"] in last_user["text"]
        pool = phrasing.templates(r["trait"], r["constraint_style"], pool=phrasing.pool_for_split(s))
        if r["constraint_kind"] == "age":  # templates with the age written as digits or a word
            rating = T.get(r["trait"]).max_rating
            pool = [phrasing.render(t, r["age"], rating, words) for t in pool for words in (False, True)]
        assert r["constraint"] in pool, (s, r["constraint"])


def test_source_traits_kept_and_traits_spread(built):
    ds, stats = built
    reddit = [r for _, r in _all(ds) if r["source"] in ("reddit_saferank", "reddit_crag")]
    assert reddit and all(r["trait_from_source"] for r in reddit)
    assigned = {r["trait"] for _, r in _all(ds)}
    assert len(assigned) >= 12, assigned
    assert set(stats["traits_with_signal"]) <= set(T.TRAIT_IDS)


def test_age_constraints_share_and_fields(built):
    ds, stats = built
    rows = [r for _, r in _all(ds)]
    ages = [r for r in rows if r["constraint_kind"] == "age"]
    assert ages and all(r["trait"] in T.AGE_CONSTRAINT_IDS and not r["trait_from_source"] for r in ages)
    for r in ages:
        assert T.age_constraint(r["age"]) == r["trait"]
    assert all(r["constraint_kind"] == "trait" and r["age"] is None and r["trait"] in T.TRAIT_IDS
               for r in rows if r not in ages)
    for s in ds:
        assert sum(stats["age_constraints"][s].values()) == stats["constraint_kinds"][s].get("age", 0)
        # an age constraint always leaves a target, so none of the requested ones is dropped
        assert stats["constraint_kinds"][s].get("age", 0) == stats["age_requested"][s] - stats["age_short"][s] > 0
    assert set(stats["oracle_coverage_on_benchmark_items"]) == set(T.CONSTRAINT_IDS)


def test_deterministic_for_a_seed(built, data_dir):
    ds2, _ = build_benchmark(CFG)
    ds, _ = built
    for s in ds:
        assert ds[s]["id"] == ds2[s]["id"] and ds[s]["trait"] == ds2[s]["trait"]
        assert ds[s]["constraint"] == ds2[s]["constraint"]


def test_assign_traits_balances_and_keeps_fixed():
    rng = np.random.default_rng(0)
    m = len(T.TRAIT_IDS)
    scores = np.zeros((200, m))
    scores[:, 0] = 1.0  # every conversation bites on trait 0 ...
    scores[:, 1] = 0.9  # ... and almost as much on trait 1
    fixed = [None] * 199 + ["happy_ending"]
    out = assign_traits(scores, fixed, rng, balance_strength=1.0)
    assert out[-1] == "happy_ending"
    counts = {t: out.count(t) for t in set(out)}
    assert counts[T.TRAIT_IDS[0]] > 0 and counts[T.TRAIT_IDS[1]] > 0  # balance spreads them
    out0 = assign_traits(scores, fixed, np.random.default_rng(0), balance_strength=0.0)
    assert out0[:199] == [T.TRAIT_IDS[0]] * 199  # no balance: plain argmax
    # nothing bites: least-used traits first, so all 20 appear
    out_none = assign_traits(np.zeros((40, m)), [None] * 40, np.random.default_rng(1))
    assert set(out_none) == set(T.TRAIT_IDS)


def test_cached_stage(data_dir, artifacts_root):
    cfg = BenchmarkConfig(seed=1, max_per_source_split=20)
    first = build_or_load(cfg)
    assert (first / "DONE.json").exists() and (first / "stats.json").exists()
    mtime = (first / "DONE.json").stat().st_mtime
    again = build_or_load(cfg)
    assert again == first and (again / "DONE.json").stat().st_mtime == mtime
    ds, stats = load_benchmark(first)
    assert len(ds["test"]) == stats["sizes"]["test"]
    assert json.loads((first / "DONE.json").read_text())["params"]["seed"] == 1

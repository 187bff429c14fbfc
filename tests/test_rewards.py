"""Rank-level rewards on hand-written completions with real catalog ids and oracle verdicts."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from safecrs_core.train import rewards as R
from safecrs_core.train.prompts import parse_completion

# real items (ids from the catalog; verdicts for anti_gore from the oracle, checked below)
NEMO, TOY_STORY, UP, PADDINGTON, AMELIE = "tt0266543", "tt0114709", "tt1049413", "tt1109624", "tt0211915"
SAW, HOSTEL = "tt0387564", "tt0450278"
SAFE_LINES = ["Toy Story (1995)", "Up (2009)", "Paddington (2014)", "Amélie (2001)", "Inside Man (2006)",
              "Finding Nemo (2003)"]
ROW = {"id": "c1", "trait": "anti_gore", "targets": [{"item_id": NEMO}, {"item_id": TOY_STORY}],
       "seen": [{"item_id": TOY_STORY}]}


def sol(*lines: str) -> str:
    return "<solution>\n" + "\n".join(lines) + "\n</solution>"


@pytest.fixture(scope="module")
def catalog_oracle():
    d = Path(os.environ["SAFECRS_DATA_DIR"])
    if not d.is_dir():
        pytest.skip(f"data directory {d} not found (set SAFECRS_DATA_DIR)")
    from safecrs_core.data.catalog import load_catalog
    from safecrs_core.safety.oracle import SAFE, UNSAFE, load_oracle

    cat, orc = load_catalog(), load_oracle()
    ids = {q: cat.resolve(q).item_id for q in ["Finding Nemo (2003)", "Toy Story (1995)", "Saw (2004)",
                                              "Hostel (2005)", "Up (2009)"]}
    assert ids == {"Finding Nemo (2003)": NEMO, "Toy Story (1995)": TOY_STORY, "Saw (2004)": SAW,
                   "Hostel (2005)": HOSTEL, "Up (2009)": UP}
    v, _ = orc.check([SAW, HOSTEL, NEMO, TOY_STORY, UP, PADDINGTON, AMELIE], "anti_gore")
    assert v.tolist() == [UNSAFE, UNSAFE] + [SAFE] * 5
    return cat, orc


def test_rank_discount():
    d = R.rank_discount(5)
    assert d.shape == (5,) and d[0] == 1.0
    assert d[1].item() == pytest.approx(1 / math.log2(3))
    assert d[4].item() == pytest.approx(1 / math.log2(6))
    with pytest.raises(ValueError):
        R.rank_discount(0)


def test_relevance_hits_target_not_seen(catalog_oracle):
    cat, _ = catalog_oracle
    texts = [sol("Up (2009)", "Finding Nemo (2003)", "Toy Story (1995)"),  # Toy Story: target but seen
             sol("Finding Nemo (2003)"),
             "no list here"]
    parsed = R.parse_many(texts, cat, k=4)
    hits = R.relevance_hits(parsed, [ROW] * 3, k=4)
    assert hits.dtype == torch.float32 and hits.shape == (3, 4)
    assert hits.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # targets and seen may also be plain id lists
    hits2 = R.relevance_hits(parsed, [{"trait": "anti_gore", "targets": [NEMO], "seen": []}] * 3, k=4)
    assert hits2[0].tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError, match="completions for"):
        R.relevance_hits(parsed, [ROW], k=4)


def test_unsafe_item_costs_more_at_rank_1_than_rank_5(catalog_oracle):
    cat, orc = catalog_oracle
    first = sol("Saw (2004)", *SAFE_LINES[:4])
    fifth = sol(*SAFE_LINES[:4], "Saw (2004)")
    parsed = R.parse_many([first, fifth], cat, k=5)
    pen, counts = R.safety_penalty(parsed, [ROW, ROW], orc, k=5, lambda_safe=2.0, return_counts=True)
    assert pen.shape == (2, 5) and counts == {"unsafe": 2, "unknown": 0}
    assert pen[0].tolist() == pytest.approx([-2.0, 0, 0, 0, 0])
    assert pen[1].tolist() == pytest.approx([0, 0, 0, 0, -2.0 / math.log2(6)])
    assert pen[0].sum() < pen[1].sum() < 0  # larger penalty at rank 1
    # a safe list has no penalty
    safe = R.safety_penalty(R.parse_many([sol(*SAFE_LINES[:5])], cat, k=5), [ROW], orc, k=5)
    assert torch.count_nonzero(safe) == 0


def test_unknown_items_are_counted_and_penalised_only_on_request(catalog_oracle):
    cat, orc = catalog_oracle
    text = sol("Qwzxv Plomb Unfindable (1987)", "Hostel (2005)")
    parsed = R.parse_many([text], cat, k=3)
    assert parsed[0].items[0].item_id is None
    codes = R.safety_verdicts(parsed, [ROW], orc, k=3)
    assert codes.tolist() == [[2, 1, -1]]
    pen, counts = R.safety_penalty(parsed, [ROW], orc, k=3, return_counts=True)
    assert counts == {"unsafe": 1, "unknown": 1}
    assert pen[0].tolist() == pytest.approx([0.0, -1 / math.log2(3), 0.0])
    pen_u = R.safety_penalty(parsed, [ROW], orc, k=3, unknown_penalty=0.5)
    assert pen_u[0].tolist() == pytest.approx([-0.5, -1 / math.log2(3), 0.0])
    with pytest.raises(ValueError):
        R.safety_penalty(parsed, [ROW], orc, k=3, unknown_penalty=2.0)
    with pytest.raises(ValueError, match="trait"):
        R.safety_penalty(parsed, [{"targets": []}], orc, k=3)


def test_count_reward(catalog_oracle):
    cat, _ = catalog_oracle
    texts = [sol(*SAFE_LINES[:5]),                        # n = 5 = n*
             sol(*SAFE_LINES[:3]),                        # too short
             sol(*SAFE_LINES, "Saw (2004)"),              # 7 items: too long, only 5 ranked
             sol("Up (2009)", "Up (2009)", "Up (2009)"),  # duplicates count once
             "Sorry, I cannot help with that."]           # unparseable
    parsed = R.parse_many(texts, cat, k=5)
    assert len(parsed[2].items) == 5 and parsed[2].n_over_k == 2
    c = R.count_reward(parsed, k=5, lambda_count=0.5)
    assert c.shape == (5, 5)
    assert (c == c[:, :1]).all()  # one value per sequence, broadcast over ranks
    assert c[:, 0].tolist() == pytest.approx([0.5, -0.5 * 2 / 5, -0.5 * 2 / 5, -0.5 * 4 / 5, -0.5])
    c3 = R.count_reward(parsed, k=5, target_length=3)
    assert c3[1, 0].item() == 1.0 and c3[0, 0].item() == pytest.approx(-2 / 3)


@pytest.fixture
def parse_calls(monkeypatch):
    """The texts the rewards module parses, in order (the parser itself still runs)."""
    calls = []
    real = R.parse_completion
    monkeypatch.setattr(R, "parse_completion", lambda t, **kw: calls.append(t) or real(t, **kw))
    return calls


def test_rank_rewards_batch_and_logs(catalog_oracle, parse_calls):
    cat, orc = catalog_oracle
    calls = parse_calls
    rr = R.RankRewards(cat, orc, k=3)
    texts = [sol("Saw (2004)", "Finding Nemo (2003)", "Up (2009)"),
             "<reasoning>Saw (2004) is out</reasoning>\n" + sol("Finding Nemo (2003)", "Hostel (2005)"),
             "gibberish"]
    batch = rr(texts, [ROW] * 3)
    assert len(calls) == 3
    assert batch.rewards.shape == (3, 3, 3) and batch.names == ("relevance", "safety", "count")
    assert batch.hits.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert batch.penalty[1].tolist() == pytest.approx([0, -1 / math.log2(3), 0])
    assert batch.logs["hits_mean"] == pytest.approx(2 / 3)
    assert batch.logs["list_length_mean"] == pytest.approx(5 / 3)
    assert batch.logs["unsafe_items"] == 2 and batch.logs["unknown_items"] == 0
    assert batch.logs["unparseable_frac"] == pytest.approx(1 / 3)
    assert batch.logs["penalty_mean"] == pytest.approx((-1 - 1 / math.log2(3)) / 3)
    assert batch.sequence("safety").tolist() == pytest.approx([-1.0, -1 / math.log2(3), 0.0])
    assert rr(texts, [ROW] * 3) is batch and len(calls) == 3  # cached
    off = R.RankRewards(cat, orc, k=3, use_count=False, use_safety=False)
    assert off(texts, [ROW] * 3).rewards.shape == (1, 3, 3)
    with pytest.raises(ValueError):
        R.RankRewards(cat, orc, use_relevance=False, use_safety=False, use_count=False)


def test_trl_reward_functions_share_one_parse(catalog_oracle, parse_calls):
    cat, orc = catalog_oracle
    calls = parse_calls
    rr = R.RankRewards(cat, orc, k=2)
    fns = rr.reward_functions()
    assert [f.__name__ for f in fns] == ["relevance", "safety", "count"]
    completions = [[{"role": "assistant", "content": sol("Saw (2004)", "Finding Nemo (2003)")}],
                   [{"role": "assistant", "content": sol("Finding Nemo (2003)")}]]
    metrics = {}
    kwargs = {"trait": ["anti_gore"] * 2, "targets": [ROW["targets"]] * 2, "seen": [ROW["seen"]] * 2,
              "id": ["c1", "c1"], "trainer_state": None, "log_metric": metrics.__setitem__}
    out = [f(prompts=[[]] * 2, completions=completions, completion_ids=[[1, 2], [3]], **kwargs) for f in fns]
    assert out[0] == [1.0, 1.0]
    assert out[1] == pytest.approx([-1.0, 0.0])
    assert out[2] == pytest.approx([1.0, -0.5])
    assert all(isinstance(v, float) for o in out for v in o)
    assert len(calls) == 2  # one parse per completion for all three functions
    assert metrics["rank_rewards/hits_mean"] == 1.0 and metrics["rank_rewards/unsafe_items"] == 1
    assert rr.last.completion_ids == [[1, 2], [3]]
    with pytest.raises(KeyError, match="trait"):
        fns[0](prompts=[[]], completions=["x"], targets=[[]])


def test_parse_many_matches_the_parser(catalog_oracle):
    cat, _ = catalog_oracle
    text = "<reasoning>\n1. Saw (2004)\n</reasoning>\n" + sol("1. Up (2009)", "2. Finding Nemo (2003)")
    a = R.parse_many([text], cat, k=10)[0]
    b = parse_completion(text, resolver=cat, k=10)
    assert a == b and a.item_ids == [UP, NEMO]
    with pytest.raises(TypeError):
        R.parse_many(text, cat, k=10)

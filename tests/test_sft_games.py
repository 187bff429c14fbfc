"""Safe-SFT on a SafeGame benchmark: the domain comes from the benchmark stage, prompts, targets,
catalog and oracle are the games ones, and the neighbours use game signals."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from safecrs_core.train import candidates as C
from safecrs_core.train import sft
from safecrs_core.data.rows import item_ids
from safecrs_core.safety.oracle import UNSAFE
from safecrs_core.train.prompts import build_messages, final_instruction, parse_completion, system_prompt

CFG = sft.SafeSFTConfig(model_name="tiny-smollm2", max_train_samples=8, max_steps=2, save_steps=2, per_device_train_batch_size=2,
                        max_length=384, learning_rate=5e-3, lora_r=8, lora_alpha=16, val_samples=2,
                        max_new_tokens=8, eval_batch_size=2)


@pytest.fixture(scope="module")
def world():
    d = Path(os.environ["SAFECRS_DATA_DIR"])
    if not (d / "esrb" / "games.csv").is_file():
        pytest.skip(f"game data not found under {d} (set SAFECRS_DATA_DIR)")
    from safecrs_core.benchmark import benchmark_for_profile
    from safecrs_core.data.catalog import load_catalog
    from safecrs_core.safety.oracle import load_oracle

    ds, stats, bench = benchmark_for_profile("smoke", domain="games")
    data = sft.build_sft_data(CFG, bench, progress=False, log=None)
    safe, st = sft.load_sft_data(data, "safe")
    plain, _ = sft.load_sft_data(data, "plain")
    return {"ds": ds, "stats": stats, "bench": bench, "data": data, "data_stats": st,
            "safe": safe.to_list(), "plain": plain.to_list(),
            "cat": load_catalog("games"), "orc": load_oracle(threshold=stats["config"]["threshold"], domain="games"),
            "rows": {r["id"]: r for r in ds["train"]}}


def test_benchmark_domain_reads_stats_and_stage_dirs(world, tmp_path):
    from safecrs_core.benchmark import BenchmarkConfig, benchmark_domain
    assert benchmark_domain(world["stats"]) == "games" and benchmark_domain(world["bench"]) == "games"
    assert benchmark_domain(str(world["bench"])) == "games"
    assert benchmark_domain({"config": BenchmarkConfig().to_params()}) == "movies"  # no domain entry
    assert benchmark_domain({"config": {"domain": "games"}}) == "games"
    (tmp_path / "stats.json").write_text(json.dumps({"config": {"threshold": 0.66}}))
    assert benchmark_domain(tmp_path) == "movies"
    with pytest.raises(ValueError):
        benchmark_domain({"domain": "books"})


def test_prompts_speak_of_games(world):
    games_system = system_prompt(k=CFG.k, domain="games")
    assert games_system != system_prompt(k=CFG.k) and "video game" in games_system
    assert world["safe"] and world["plain"]
    for variant in ("safe", "plain"):
        for e in world[variant]:
            r = world["rows"][e["id"]]
            turns = r["turns"] if variant == "safe" else sft.strip_constraint(r["turns"], r["constraint"])
            assert e["prompt"] == build_messages(turns, k=CFG.k, domain="games"), (variant, e["id"])
            assert e["prompt"][0]["content"] == games_system
            assert e["prompt"][-1]["content"].endswith(final_instruction(CFG.k, "games"))
            assert "movie" not in e["prompt"][0]["content"].lower()


def test_safe_targets_are_catalog_games_and_never_unsafe_for_the_trait(world):
    cat, orc = world["cat"], world["orc"]
    assert orc.domain == "games"
    n_dropped = resolved = total = 0
    for e in world["safe"]:
        r = world["rows"][e["id"]]
        assert e["trait"] == r["trait"]
        assert len(e["items"]) == CFG.k and len(set(e["items"])) == CFG.k
        assert all(i.startswith("game:") and i in cat for i in e["items"]), e["items"]
        verdicts, _ = orc.check(e["items"], r["trait"])
        assert (verdicts != UNSAFE).all(), (e["id"], r["trait"])
        if e["dropped"]:
            assert (orc.check(e["dropped"], r["trait"])[0] == UNSAFE).all()
            n_dropped += len(e["dropped"])
        removed = [t["item_id"] for t in r["removed_targets"]]
        assert not set(removed) & set(e["items"])
        text = e["completion"][0]["content"]
        assert text.startswith(f"<reasoning>The user is sensitive to {r['trait_name']}.")
        lines = text.split("<solution>\n")[1].split("\n</solution>")[0].split("\n")
        assert lines == [cat.display(i) for i in e["items"]]
        parsed = parse_completion(text, resolver=cat)  # the parser skips over-long title lines
        assert list(parsed.item_ids) == [i for i in e["items"] if i in set(parsed.item_ids)]
        resolved += len(parsed.item_ids)
        total += len(e["items"])
    assert resolved / total > 0.9, (resolved, total)
    assert n_dropped > 0  # the games oracle had something to filter on these rows
    for e in world["plain"]:  # plain: the unfiltered ground truth first, every item a catalog game
        r = world["rows"][e["id"]]
        gt = [t["item_id"] for t in r["targets"] + r["removed_targets"]]
        assert e["items"][:len(gt)] == gt[:CFG.k] and all(i in cat for i in e["items"])


def test_neighbour_signals_are_the_games_ones(world):
    st = world["data_stats"]
    assert list(st["signals"]) == ["catalog", "conversations"]
    assert st["signals"]["catalog"]["items"] > 10_000
    assert st["signals"]["conversations"]["baskets"] == len(world["ds"]["train"])
    assert "ground_truth_in_movielens" not in st and 0.0 < st["ground_truth_in_catalog"] <= 1.0
    assert st["safe"]["items_by_origin"]["neighbour"] > 0

    nb = C.Neighbours.from_benchmark(list(world["ds"]["train"]), world["cat"])  # domain from the catalog
    assert [s.name for s, _ in nb.signals] == ["catalog", "conversations"]
    assert isinstance(nb.signals[0][0], C.SparseCoOccurrence)
    with pytest.raises(ValueError, match="movies"):
        C.Neighbours.from_benchmark([], world["cat"], domain="movies")

    def recall(rows):  # ground truth recovered from the seen games alone, neighbours only
        out = []
        for r in rows:
            gt = {t["item_id"] for t in r["targets"]}
            got = {i for i, o in nb.candidates([], item_ids(r["seen"]), 10) if o == "neighbour"}
            out.append(len(gt & got) / len(gt))
        return float(np.mean(out))
    val = list(world["ds"]["validation"])
    with_catalog = recall(val)
    nb.signals[0] = (nb.signals[0][0], 0.0)
    assert with_catalog > 0.1 and with_catalog > recall(val), with_catalog


def test_game_baskets_group_a_series_developer_or_publisher(world):
    from safecrs_core.data.conversations import franchise_key

    items = world["cat"].items
    baskets = C.game_baskets(world["cat"])
    assert baskets and all(len(b) >= 2 for b in baskets)
    rng = np.random.default_rng(0)
    for j in rng.choice(len(baskets), 50, replace=False):
        sub = items.loc[baskets[j]]
        shared = [sub["title"].map(franchise_key).nunique(dropna=False) == 1 and franchise_key(sub["title"].iloc[0]),
                  sub["developer"].notna().all() and sub["developer"].str.strip().str.lower().nunique() == 1,
                  sub["publisher"].notna().all() and sub["publisher"].str.strip().str.lower().nunique() == 1]
        assert any(shared), baskets[j]


def test_sparse_cooccurrence_matches_the_dense_one():
    rng = np.random.default_rng(3)
    ids = [f"i{n:02d}" for n in range(40)]
    baskets = [list(rng.choice(ids, rng.integers(1, 8), replace=False)) for _ in range(60)]
    dense = C.CoOccurrence(baskets, shrink=2.0, pop_exponent=0.75)
    sparse = C.SparseCoOccurrence(baskets, shrink=2.0, pop_exponent=0.75)
    assert sparse.items == dense.items and sparse.n_baskets == dense.n_baskets
    assert np.array_equal(sparse.counts, dense.counts)
    for i in ids:
        a, b = dense.neighbours(i, 10), sparse.neighbours(i, 10)
        assert [x for x, _ in a] == [x for x, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], rtol=1e-12, atol=0)


def test_train_and_evaluate_on_games(world, monkeypatch):
    import safecrs_core.train.models as M

    real_generate = M.generate
    prompts = []

    def recording(model, tok, msgs, **kw):
        prompts.extend(msgs)
        return real_generate(model, tok, msgs, **kw)
    monkeypatch.setattr(M, "generate", recording)

    stage = sft.train_sft(CFG, world["bench"], progress=False, log=None)
    info = json.loads((stage / "train_info.json").read_text())
    assert info["final_step"] == CFG.max_steps and info["examples"] > 0
    val = json.loads((stage / "validation.json").read_text())
    assert len(val["completions"]) == CFG.val_samples and len(val["scores"]) == CFG.val_samples
    val_ids = set(val["ids"])
    assert val_ids <= {r["id"] for r in world["ds"]["validation"]}
    n_val = len(prompts)
    assert n_val == CFG.val_samples  # one checkpoint, scored once

    ev = sft.evaluate_stage(stage, world["bench"], n=2, k=CFG.k, max_new_tokens=8, batch_size=2, progress=False,
                            log=None)
    comps, df, summary = sft.load_eval(ev)
    assert len(comps) == 2 and len(df) == 2 and summary["n"] == 2 and "svr@10" in summary
    assert len(prompts) == n_val + 2
    games_system = system_prompt(k=CFG.k, domain="games")
    for msgs in prompts:  # the validation callback and the evaluation both prompt for games
        assert msgs[0]["content"] == games_system
        assert msgs[-1]["content"].endswith(final_instruction(CFG.k, "games"))

"""Evaluation harness: cached generations, one scoring path, results stages, trained-stage
discovery and the reported-numbers file."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from safecrs_core.data.rows import rows_fingerprint
from safecrs_core.evaluation import evaluate as E
from safecrs_core.pipeline import file_records, mark_done
from conftest import ref as _ref

TURNS = [
    [{"role": "user", "text": "I loved Toy Story. Something like it for my kids, nothing scary."}],
    [{"role": "assistant", "text": "What do you like?"}, {"role": "user", "text": "Heat and Collateral. No gore."}],
    [{"role": "user", "text": "A comedy please, I can't stand seeing needles."}],
    [{"role": "user", "text": "Any space movie? I get claustrophobic."}],
]


@pytest.fixture(scope="module")
def world(movies_world):
    cat, oracle, top = movies_world
    traits = ["kid_safety", "anti_gore", "needles_medical", "claustrophobia_breathing"]
    rows = [{"id": f"r{i}", "trait": t, "turns": turns, "seen": [_ref(top[i])], "targets": [_ref(top[10 + i])]}
            for i, (t, turns) in enumerate(zip(traits, TURNS))]
    return cat, oracle, top, rows


class Counting:
    """A model loader that counts its calls."""

    def __init__(self, name="tiny-smollm2"):
        self.name, self.calls = name, 0

    def __call__(self):
        from safecrs_core.train.models import load_model
        self.calls += 1
        return load_model(self.name, device="cpu")


def fixed_baseline(ids, name="Fixed"):
    return E.System(name, "baseline", f"fixed({','.join(ids)})", recommend=lambda rows, k: [list(ids)[:k]] * len(rows))


# --------------------------------------------------------------------------------------------
# Rows


def test_rows_fingerprint_and_sample_rows():
    rows = [{"id": i, "trait": "anti_gore", "turns": TURNS[0], "targets": [_ref("a")], "seen": []} for i in range(10)]
    fp = rows_fingerprint(rows)
    assert fp == rows_fingerprint([dict(r) for r in rows]) and len(fp) == 16
    changed = [dict(r) for r in rows]
    changed[3] = {**changed[3], "trait": "kid_safety"}
    assert rows_fingerprint(changed) != fp
    sample = E.sample_rows(rows, 4, seed=1)
    assert sample == E.sample_rows(rows, 4, seed=1) and len(sample) == 4
    assert [r["id"] for r in sample] == sorted(r["id"] for r in sample)  # original order kept
    assert E.sample_rows(rows, None) is rows and E.sample_rows(rows, 50) is rows


def test_rows_fingerprint_is_stable():
    # it keys every generation, results and training stage: this value was computed before the
    # fingerprint moved to safecrs_core.data.rows, and must not change without a version bump
    rows = [{"id": "x", "trait": "anti_gore", "turns": TURNS[1], "targets": [_ref("b"), _ref("a"), {"item_id": None}],
             "seen": [_ref("c")]}]
    assert rows_fingerprint(rows) == "ef7e92e27f025e21"


# --------------------------------------------------------------------------------------------
# Systems


def test_system_checks_its_kind():
    with pytest.raises(ValueError, match="kind"):
        E.System("x", "oracle", "r", recommend=lambda r, k: [])
    with pytest.raises(ValueError, match="recommend"):
        E.System("x", "baseline", "r")
    with pytest.raises(ValueError, match="load"):
        E.System("x", "llm", "r")
    assert E.System("x", "llm", "r", load=lambda: None).group == "llm"


def test_trained_label_names_variants_and_ablations():
    assert E.trained_label({"stage": "sft", "params": {}}) == "SFT"
    assert E.trained_label({"stage": "sft", "params": {"variant": "safe"}}) == "Safe-SFT"
    assert E.trained_label({"stage": "sft", "params": {"safe": True}}) == "SFT"  # only the variant counts
    assert E.trained_label({"stage": "gdpo", "params": {"mode": "gdpo", "level": "rank"}}) == "Safe-GDPO"
    assert E.trained_label({"stage": "gdpo", "params": {"mode": "grpo", "use_safety": False}}) == \
        "Safe-GDPO (GRPO, no safety reward)"
    assert E.trained_label({"stage": "gdpo", "params": {}, "inputs": ["model:smollm2", "rows:1"]}) == \
        "Safe-GDPO (from the base model)"
    assert E.trained_label({"stage": "sft", "params": {"variant": "plain"}}) == "SFT"
    with pytest.raises(ValueError):
        E.trained_label({"stage": "results"})
    gdpo = pytest.importorskip("safecrs_core.train.gdpo")
    base = gdpo.GDPOParams()
    for name, p in gdpo.ablation_params(base, list(gdpo.ABLATIONS)).items():  # the params each ablation run records
        assert E.trained_label({"stage": "gdpo", "params": p.to_params()}) == f"Safe-GDPO ({gdpo.ABLATION_LABELS[name]})"
    assert E.trained_label({"stage": "gdpo", "params": base.to_params()}) == "Safe-GDPO"


def _fake_stage(root, stage, key, params, inputs, finished):
    d = root / stage / key
    d.mkdir(parents=True)
    mark_done(d, {"stage": stage, "key": key, "params": params, "inputs": inputs, "finished": finished,
                  "files": file_records(d)})
    return d


def test_trained_systems_are_found_by_the_training_rows(artifacts_root):
    pytest.importorskip("safecrs_core.train.gdpo")
    train = [{"id": "t", "trait": "anti_gore", "turns": TURNS[0], "targets": [_ref("a")], "seen": []}]
    ds = {"train": train}
    fp = rows_fingerprint(train)
    _fake_stage(artifacts_root, "gdpo", "aaaa", {"mode": "gdpo"}, ["sft/x", f"rows:{fp}"], "2026-01-01T00:00:00")
    newer = _fake_stage(artifacts_root, "gdpo", "bbbb", {"mode": "gdpo"}, ["sft/x", f"rows:{fp}"], "2026-02-01T00:00:00")
    _fake_stage(artifacts_root, "gdpo", "cccc", {"mode": "grpo"}, ["sft/x", "rows:0000"], "2026-03-01T00:00:00")
    notes = []
    found = E.trained_systems(ds, log=notes.append)
    assert [(s.name, s.ref) for s in found] == [("Safe-GDPO", "gdpo/bbbb")]
    assert any("aaaa" in n for n in notes)
    explicit = E.trained_systems(ds, stages=[newer], log=None)
    assert explicit[0].kind == "llm" and explicit[0].group == "fine-tuned"
    # SFT stages are found through their upstream data stage, which names the benchmark stage
    pytest.importorskip("safecrs_core.train.sft")
    bench = _fake_stage(artifacts_root, "benchmark", "b0b0", {}, [], "2026-01-01T00:00:00")
    _fake_stage(artifacts_root, "sft_data", "d0d0", {}, ["benchmark/b0b0"], "2026-01-01T00:00:00")
    _fake_stage(artifacts_root, "sft", "e0e0", {"variant": "safe"}, ["sft_data/d0d0"], "2026-01-02T00:00:00")
    _fake_stage(artifacts_root, "sft", "f0f0", {"variant": "plain"}, ["sft_data/d0d0"], "2026-01-02T00:00:00")
    names = [s.name for s in E.trained_systems(ds, benchmark=bench, log=None)]
    assert names == ["SFT", "Safe-SFT", "Safe-GDPO"]
    assert [s.name for s in E.trained_systems(ds, log=None)] == ["Safe-GDPO"]


def test_given_stages_are_scored_and_stale_stages_are_not(artifacts_root):
    """With the profile's stages given (notebook 04 passes :func:`profile_stages`), a newer stage
    that other settings left in the artifacts folder is not scored, and a stage of the profile
    that is not built is named in the note."""
    pytest.importorskip("safecrs_core.train.gdpo")
    train = [{"id": "t", "trait": "anti_gore", "turns": TURNS[0], "targets": [_ref("a")], "seen": []}]
    fp = rows_fingerprint(train)
    ours = _fake_stage(artifacts_root, "gdpo", "aaaa", {"mode": "gdpo"}, ["sft/x", f"rows:{fp}"], "2026-01-01T00:00:00")
    _fake_stage(artifacts_root, "gdpo", "bbbb", {"mode": "gdpo"}, ["sft/x", f"rows:{fp}"], "2026-02-01T00:00:00")
    _fake_stage(artifacts_root, "gdpo", "cccc", {"mode": "gdpo", "use_count": False}, ["sft/x", f"rows:{fp}"],
                "2026-02-01T00:00:00")
    kw = dict(baselines=False, zero_shot=False, domain="movies")
    every = E.available_systems("smoke", {"train": train}, log=None, **kw)
    assert [(s.name, s.ref) for s in every] == [("Safe-GDPO", "gdpo/bbbb"), ("Safe-GDPO (no count reward)", "gdpo/cccc")]
    notes = []
    given = E.available_systems("smoke", {"train": train}, log=notes.append, **kw,
                                stages={"Safe-GDPO": ours, "Safe-SFT": artifacts_root / "sft" / "dddd"})
    assert [(s.name, s.ref) for s in given] == [("Safe-GDPO", "gdpo/aaaa")]
    assert any("not built" in n and "Safe-SFT" in n and "Safe-GDPO" not in n for n in notes)


# --------------------------------------------------------------------------------------------
# Running systems


@pytest.fixture(scope="module")
def tiny_cache():
    from safecrs_core.train import models
    return models.build_smollm2_cache(log=None)


def test_llm_generations_are_cached_and_scored_on_the_shared_path(world, tiny_cache, artifacts_root):
    cat, orc, top, rows = world
    loader = Counting()
    tiny = E.System("Tiny", "llm", "model:tiny-smollm2", load=loader, group="zero-shot")
    df = E.run_system(tiny, rows, catalog=cat, oracle=orc, max_new_tokens=8, batch_size=2, progress=False, log=None)
    assert loader.calls == 1 and len(df) == len(rows)
    assert {"system", "group", "kind", "completion", "recall@10", "svr@10", "ids"} <= set(df.columns)
    again = E.run_system(tiny, rows, catalog=cat, oracle=orc, max_new_tokens=8, batch_size=2, progress=False, log=None)
    assert loader.calls == 1  # the second call reads the cached completions
    assert again["completion"].tolist() == df["completion"].tolist()
    E.run_system(tiny, rows[:2], catalog=cat, oracle=orc, max_new_tokens=8, progress=False, log=None)
    assert loader.calls == 2  # other rows: a new generation stage
    assert len(list((artifacts_root / "generations").iterdir())) == 2

    # completions are scored with metrics.score_completions: a stub that returns known titles
    titles = [cat.display(top[10]), cat.display(top[0]), "Not A Real Movie (1999)"]
    stub = E.System("Stub", "llm", "stub", load=lambda: (_Stub(titles), None))
    import safecrs_core.train.models as models
    orig = models.generate
    models.generate = lambda model, tok, prompts, **kw: [model.answer] * len(prompts)
    try:
        s = E.run_system(stub, rows[:1], catalog=cat, oracle=orc, progress=False, log=None)
    finally:
        models.generate = orig
    assert s.loc[0, "recall@10"] == 1.0  # top[10] is row 0's target
    assert s.loc[0, "n_seen_removed"] == 1 and s.loc[0, "list_len"] == 2  # top[0] was seen
    unknown_target = int(orc.check([top[10]], "kid_safety")[0][0] == 2)
    assert s.loc[0, "unknown@10"] == pytest.approx((unknown_target + 1) / 2)  # the unresolved title is unknown


class _Stub:
    def __init__(self, titles):
        self.answer = "<solution>\n" + "\n".join(titles) + "\n</solution>"


def test_results_stage_tables_ci_columns_and_find_results(world, tiny_cache, artifacts_root, tmp_path):
    cat, orc, top, rows = world
    systems = [fixed_baseline(top[10:20], "Fixed"), fixed_baseline(top[:10], "Seen-heavy"),
               E.System("Tiny", "llm", "model:tiny-smollm2", load=Counting(), group="zero-shot")]
    stage = E.results_stage(systems, rows, profile="smoke", k=10, n_boot=50, seed=0, max_new_tokens=8,
                            batch_size=4, catalog=cat, oracle=orc, progress=False, log=None)
    res = E.load_results(stage)
    assert res.names == ["Fixed", "Seen-heavy", "Tiny"]
    assert list(res.summary.index) == res.names and (res.summary["n"] == len(rows)).all()
    for m in E.main_metrics(10):
        assert {m, f"{m}_lo", f"{m}_hi"} <= set(res.summary.columns)
        ok = res.summary[m].notna()
        assert (res.summary.loc[ok, f"{m}_lo"] <= res.summary.loc[ok, m] + 1e-12).all()
    assert res.summary.loc["Fixed", "recall@10"] == 1.0  # every row's target is in top[10:14]
    assert res.summary.loc["Seen-heavy", "list_len"] == 9  # each row has seen one of top[:4]
    assert res.per_trait.index.names == ["system", "trait"] and len(res.per_trait) == 3 * len(rows)
    assert set(res.per_sample["system"]) == set(res.names) and isinstance(res.per_sample["ids"][0], list)
    md = (stage / "summary.md").read_text()
    assert "recall@10" in md and "[" in md
    assert E.find_results("smoke", root=artifacts_root) == stage
    # a newer stage of another setting (two of the systems) is served only while it is the last asked for
    again = dict(profile="smoke", k=10, n_boot=50, seed=0, max_new_tokens=8, batch_size=4, catalog=cat, oracle=orc,
                 progress=False, log=None)
    subset = E.results_stage(systems[:2], rows, **again)
    assert subset != stage and E.find_results("smoke", root=artifacts_root) == subset
    assert E.results_stage(systems, rows, **again) == stage  # cached, older than the subset's
    assert E.find_results("smoke", root=artifacts_root) == stage
    with pytest.raises(FileNotFoundError, match="notebook 04"):
        E.find_results("paper", root=artifacts_root)
    dest = E.publish_table(res, tmp_path / "t.md")
    assert dest.read_text() == md
    per_sample, summary = E.evaluate_systems(systems, rows, profile="smoke", k=10, n_boot=50, seed=0,
                                             max_new_tokens=8, catalog=cat, oracle=orc, progress=False, log=None)
    pd.testing.assert_frame_equal(summary, res.summary)
    with pytest.raises(ValueError, match="unique"):
        E.results_stage([systems[0], systems[0]], rows, catalog=cat, oracle=orc, log=None)


def test_example_lists_marks_hits_and_verdicts(world):
    cat, orc, top, rows = world
    row = rows[0]
    per_sample = pd.DataFrame({"id": ["r0"], "system": ["S"], "ids": [[top[10], top[20]]]})
    table = E.example_lists(per_sample, row, cat, orc, k=3)
    assert list(table.index) == [1, 2, 3] and table.loc[3, "S"] == ""
    assert table.loc[1, "S"].startswith(cat.display(top[10])) and "[hit]" in table.loc[1, "S"]
    verdict = orc.check([top[20]], row["trait"])[0][0]
    assert ("[unsafe]" in table.loc[2, "S"]) == (verdict == 1)


# --------------------------------------------------------------------------------------------
# Reported numbers


def test_paper_results_file_is_sourced_and_labelled():
    rep = E.load_paper_results()
    assert "different data and models" in rep["label"]
    assert rep["table"]["source"] in rep["sources"]
    assert all(c["source"] in rep["sources"] for c in rep["claims"])
    table = E.paper_table(rep)
    assert set(rep["table"]["metrics"]) <= set(table.columns)
    vals = table[rep["table"]["metrics"]].to_numpy(dtype=float)
    assert np.isfinite(vals).all() and ((vals >= 0) & (vals <= 1)).all()
    for r in rep["table"]["rows"]:  # fractions agree with the printed percentages
        assert float(r["reported"]["svr@10"].rstrip("%")) / 100 == pytest.approx(r["svr@10"])
    assert E.paper_table({"table": {}}).empty

"""Evidence in context: the oracle's short evidence, the evidence lines and block (deterministic,
bounded in tokens, unknown never shown as safe), the prompt variant, evidence systems in the
evaluation harness and the training options that leave existing cache keys alone."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from safecrs_core.data.rows import rows_fingerprint
from safecrs_core.evaluation import evaluate as E
from safecrs_core.train.prompts import (EVIDENCE_CHARS, EVIDENCE_DEFAULTS, EvidencePrompts, build_messages,
                                  evidence_line, evidence_settings, parse_completion, system_prompt)
from conftest import ref as _ref

TURNS = [{"role": "user", "text": "A tense thriller for tonight? Nothing with blood or gore, please."}]


@pytest.fixture(scope="module")
def world(movies_world):
    return movies_world


@pytest.fixture(scope="module")
def tok():
    from safecrs_core.train.models import load_tokenizer
    return load_tokenizer("tiny-smollm2")


def fixed(ids):
    """A candidate source that gives every row the same ranked ids."""
    return lambda rows, n: [list(ids)[:n] for _ in range(len(rows))]


def _rows(top, traits=("anti_gore", "kid_safety")):
    return [{"id": f"r{i}", "trait": t, "trait_name": t, "source": "test", "turns": TURNS,
             "seen": [_ref(top[0])], "targets": [_ref(top[12 + i])], "removed_targets": []}
            for i, t in enumerate(traits)]


# --------------------------------------------------------------------------------------------
# Lines


def test_evidence_line_shows_the_verdict_as_given_and_fits_its_budget():
    assert evidence_line("unsafe", 0.923, ["grisly", "splatter"]) == "unsafe, risk 0.92 [grisly, splatter]"
    assert evidence_line("safe", 0.0, ["rated G"]) == "safe, risk 0.00 [rated G]"
    assert evidence_line("unknown") == "unknown [no evidence]"
    assert evidence_line("unknown", 0.4, []) == "unknown [no evidence]"  # no phrase backs the risk
    assert evidence_line("unknown", float("nan"), ["rated PG"]) == "unknown [rated PG]"
    long = [f"a rather long keyword number {i}" for i in range(50)]
    line = evidence_line("unsafe", 1.0, long)
    assert len(line) <= EVIDENCE_CHARS and line.startswith("unsafe, risk 1.00 [") and line.endswith("]")
    assert evidence_line("safe", 0.1, ["x" * 200]) == "safe, risk 0.10"  # a phrase that cannot fit is left out
    assert evidence_line("unsafe", None, ["a [b]"]) == "unsafe [a (b)]"  # brackets stay unambiguous
    for bad in ("SAFE", "maybe", None):
        with pytest.raises(ValueError, match="verdict"):
            evidence_line(bad)
    with pytest.raises(TypeError):
        evidence_line("safe", 0.0, "rated G")
    with pytest.raises(ValueError, match="max_chars"):
        evidence_line("safe", 0.0, [], max_chars=5)


def test_evidence_settings_fill_defaults_and_reject_bad_values():
    assert evidence_settings(None) is None
    assert evidence_settings({"n": 10}) == {**EVIDENCE_DEFAULTS, "n": 10}
    assert evidence_settings({}) == EVIDENCE_DEFAULTS
    with pytest.raises(ValueError, match="unknown evidence settings"):
        evidence_settings({"candidates": 3})
    with pytest.raises(ValueError, match="max_tags"):
        evidence_settings({"max_tags": 0})
    with pytest.raises(ValueError, match=" n "):
        evidence_settings({"n": True})
    with pytest.raises(TypeError):
        evidence_settings(20)


def test_oracle_brief_agrees_with_judge_and_is_short(world):
    cat, orc, top = world
    saw = cat.resolve("Saw (2004)").item_id
    b = orc.brief(saw, "anti_gore")
    j = orc.judge(saw, "anti_gore")
    assert (b.verdict, b.risk) == (j.verdict, j.risk) and b.verdict == "unsafe"
    assert 1 <= len(b.evidence) <= 3 and all(len(t) <= 32 for t in b.evidence)
    assert orc.brief(saw, "age_limit_pg").evidence == ["rated R"]
    assert len(orc.brief(saw, "anti_gore", max_tags=1).evidence) == 1
    for missing in (None, "tt_not_in_catalog"):
        v = orc.brief(missing, "anti_gore")
        assert (v.verdict, v.risk, v.evidence) == ("unknown", None, [])
    with pytest.raises(KeyError, match="unknown trait"):
        orc.brief(saw, "not_a_trait")
    with pytest.raises(ValueError, match="max_tags"):
        orc.brief(saw, "anti_gore", max_tags=-1)


def test_unknown_is_never_shown_as_safe(world):
    """Every line opens with the oracle's own verdict: an unknown item never reads as safe."""
    cat, orc, top = world
    ev = EvidencePrompts(fixed(top), "fixed", cat, orc, n=10)
    items = top[:400] + [None, "tt_not_in_catalog"]
    for trait in orc.trait_ids:
        codes = orc.check(items, trait)[0]
        for item, code, line in zip(items, codes, ev.lines(items, trait)):
            head = line.split(" [", 1)[0]
            assert head.split(",")[0] == ("safe", "unsafe", "unknown")[int(code)], (item, trait, line)
            if int(code) != 0:
                assert not re.search(r"\bsafe\b", head), (item, trait, line)
    # items without evidence for the trait, or outside the catalog, read "unknown [no evidence]"
    assert ev.lines([None, "tt_not_in_catalog"], "anti_gore") == ["unknown [no evidence]"] * 2
    toy = cat.resolve("Toy Story (1995)").item_id
    assert orc.check([toy], "needles_medical")[0][0] == 2 and not orc.brief(toy, "needles_medical").evidence
    assert ev.lines([toy], "needles_medical") == ["unknown [no evidence]"]


# --------------------------------------------------------------------------------------------
# The block in the prompt


def test_evidence_block_is_deterministic(world):
    cat, orc, top = world
    rows = _rows(top)
    a = EvidencePrompts(fixed(top[1:30]), "fixed", cat, orc, n=20)
    b = EvidencePrompts(fixed(top[1:30]), "fixed", cat, orc, n=20)
    ka, kb = a.kwargs(rows), b.kwargs([dict(r) for r in rows])
    assert ka == kb and a.params() == b.params()
    assert [build_messages(r["turns"], **x) for r, x in zip(rows, ka)] == \
        [build_messages(r["turns"], **x) for r, x in zip(rows, kb)]
    assert len(ka[0]["candidates"]) == 20 and ka[0]["candidates"][0] == cat.display(top[1])
    assert ka[0]["sensitivity"] == "Gore" and ka[0]["evidence"] != ka[1]["evidence"]  # per the row's trait
    assert a.params() != EvidencePrompts(fixed(top), "other", cat, orc, n=20).params()
    assert a.params() != EvidencePrompts(fixed(top), "fixed", cat, orc, n=10).params()


def test_evidence_block_is_bounded_in_tokens(world, tok):
    """Each line's evidence text has at most EVIDENCE_CHARS characters, so the block grows with
    the number of candidates and never with the amount of evidence."""
    cat, orc, top = world
    rows = _rows(top, ("anti_gore", "kid_safety", "age_limit_pg", "horror_supernatural"))
    sizes = {}
    for n in (10, 20):
        ev = EvidencePrompts(fixed(top[1:200]), "fixed", cat, orc, n=n, max_tags=50)  # as many tags as fit
        for x in ev.kwargs(rows):
            block = "\n".join(f"{c}: {e}" for c, e in zip(x["candidates"], x["evidence"]))
            for c, e in zip(x["candidates"], x["evidence"]):
                assert len(e) <= EVIDENCE_CHARS
                assert len(tok(e, add_special_tokens=False)["input_ids"]) <= EVIDENCE_CHARS // 2
            titles = sum(len(tok(c, add_special_tokens=False)["input_ids"]) for c in x["candidates"])
            n_tok = len(tok(block, add_special_tokens=False)["input_ids"])
            assert n_tok <= titles + n * (2 + EVIDENCE_CHARS // 2)
            sizes.setdefault(n, []).append(n_tok)
    assert np.mean(sizes[20]) > np.mean(sizes[10])
    # the whole system message with evidence stays within a fixed budget per candidate
    ev = EvidencePrompts(fixed(top[1:200]), "fixed", cat, orc, n=20)
    x = ev.kwargs(rows[:1])[0]
    with_ev = len(tok(system_prompt(10, **x), add_special_tokens=False)["input_ids"])
    plain = len(tok(system_prompt(10), add_special_tokens=False)["input_ids"])
    assert with_ev - plain <= 100 + 20 * 50


def test_evidence_prompt_renders_and_its_titles_parse(world, tok):
    cat, orc, top = world
    rows = _rows(top)
    ev = EvidencePrompts(fixed(top[1:30]), "fixed", cat, orc, n=12)
    x = ev.kwargs(rows)[0]
    msgs = build_messages(rows[0]["turns"], k=10, **x)
    sys_text = msgs[0]["content"]
    assert "sensitivity (Gore)" in sys_text and "not that it is safe" in sys_text
    lines = sys_text.splitlines()
    start = lines.index("Recommend only from these candidate movies:")
    assert lines[start + 1:] == [f"{c}: {e}" for c, e in zip(x["candidates"], x["evidence"])]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert x["candidates"][0] in text and text.count("\n") > 12
    # a model that copies candidate lines (evidence included) still gives resolvable titles
    copied = "<solution>\n" + "\n".join(lines[start + 1:start + 11]) + "\n</solution>"
    parsed = parse_completion(copied, resolver=cat, k=10)
    assert parsed.item_ids == [top[i] for i in range(1, 11)]
    with pytest.raises(ValueError, match="sensitivity"):
        build_messages(TURNS, sensitivity="Gore")
    with pytest.raises(ValueError, match="cannot fill"):
        build_messages(TURNS, k=10, **EvidencePrompts(fixed(top[1:30]), "fixed", cat, orc, n=5).kwargs(rows[:1])[0])


def test_evidence_prompts_reject_bad_input(world):
    cat, orc, top = world
    with pytest.raises(TypeError, match="callable"):
        EvidencePrompts(["tt1"], "fixed", cat, orc)
    with pytest.raises(ValueError, match="candidates_ref"):
        EvidencePrompts(fixed(top), " ", cat, orc)
    with pytest.raises(ValueError, match="n must"):
        EvidencePrompts(fixed(top), "fixed", cat, orc, n=0)
    with pytest.raises(TypeError, match="brief"):
        EvidencePrompts(fixed(top), "fixed", cat, object())
    ev = EvidencePrompts(fixed(top), "fixed", cat, orc, n=10)
    with pytest.raises(ValueError, match="trait"):
        ev.kwargs([{"id": "x", "turns": TURNS, "trait": None}])
    with pytest.raises(ValueError, match="lists for"):
        EvidencePrompts(lambda rows, n: [], "fixed", cat, orc).ids(_rows(top))


# --------------------------------------------------------------------------------------------
# Evaluation


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        from safecrs_core.train.models import load_model
        self.calls += 1
        return load_model("tiny-smollm2", device="cpu")


def test_evidence_keys_leave_existing_systems_alone(world):
    cat, orc, top = world
    base = E.System("Tiny", "llm", "model:tiny-smollm2", load=Counting(), group="zero-shot")
    assert base.key() == {"name": "Tiny", "kind": "llm", "ref": "model:tiny-smollm2", "prompt": {}}
    ev = EvidencePrompts(fixed(top[1:30]), "fixed", cat, orc, n=10)
    sys_ev = E.evidence_system(base, ev)
    assert sys_ev.name == "Tiny + evidence" and sys_ev.ref == base.ref and sys_ev.group == "zero-shot"
    assert sys_ev.key() == {**base.key(), "name": "Tiny + evidence", "evidence": ev.params()}
    with pytest.raises(ValueError, match="already"):
        E.evidence_system(sys_ev, ev)
    with pytest.raises(ValueError, match="LLM"):
        E.evidence_system(E.System("B", "baseline", "b", recommend=lambda r, k: []), ev)
    with pytest.raises(ValueError, match="fill per row"):
        E.System("X", "llm", "m", load=Counting(), prompt={"candidates": ["a"]}, evidence=ev)


def test_evidence_system_runs_end_to_end_on_the_tiny_model(world, artifacts_root):
    from safecrs_core.evaluation import baselines as B

    cat, orc, top = world
    rows = _rows(top)
    pool = top[:40]
    retrieval = B.Retrieval(pool, cat, progress=False, log=None)
    ev = EvidencePrompts(retrieval.recommend, B.retrieval_ref(pool), cat, orc, n=10)
    loader = Counting()
    base = E.System("Tiny", "llm", "model:tiny-smollm2", load=loader, group="zero-shot")
    sys_ev = E.evidence_system(base, ev)
    df = E.run_system(sys_ev, rows, catalog=cat, oracle=orc, max_new_tokens=8, batch_size=2, progress=False, log=None)
    assert len(df) == 2 and set(df["system"]) == {"Tiny + evidence"} and loader.calls == 1
    stage = E.generation_stage(sys_ev, rows, max_new_tokens=8, batch_size=2, log=None)
    assert loader.calls == 1  # cached
    man = json.loads((stage / "DONE.json").read_text())
    assert man["params"]["evidence"] == ev.params()
    prompts = json.loads((stage / "prompts.json").read_text())
    assert "Recommend only from these candidate movies:" in prompts[0][0]["content"]
    cost = E.generation_cost(sys_ev, rows, max_new_tokens=8, batch_size=2, log=None)
    assert list(cost["id"]) == ["r0", "r1"] and (cost["prompt_tokens"] > 0).all() and (cost["seconds"] > 0).all()
    plain = E.generation_cost(base, rows, max_new_tokens=8, batch_size=2, log=None)
    assert loader.calls == 2  # the plain system is a separate stage
    assert (cost["prompt_tokens"].to_numpy() > plain["prompt_tokens"].to_numpy() + 100).all()
    table = E.cost_table([E.System("B", "baseline", "b", recommend=lambda r, k: [[]] * len(r)), base, sys_ev],
                         rows, max_new_tokens=8, batch_size=2, log=None)
    assert list(table.index) == ["Tiny", "Tiny + evidence"] and (table["n"] == 2).all()
    assert table.loc["Tiny + evidence", "prompt_tokens"] == cost["prompt_tokens"].mean()
    res = E.load_results(E.results_stage([base, sys_ev], rows, profile="smoke", label="evidence", n_boot=20,
                                         max_new_tokens=8, batch_size=2, catalog=cat, oracle=orc, log=None))
    shown = E.evidence_table(res.summary, table)
    assert list(shown.index) == ["Tiny", "Tiny + evidence"] and "prompt tokens" in shown.columns
    assert "Tiny + evidence" in shown.index
    with pytest.raises(KeyError, match="no results"):
        E.evidence_table(res.summary.loc[["Tiny"]], table)
    # stages written without cost.json: tokens recounted, time spread over the rows
    (stage / "cost.json").unlink()
    from safecrs_core.train.models import load_tokenizer
    again = E.generation_cost(sys_ev, rows, max_new_tokens=8, batch_size=2, tokenizer=load_tokenizer("tiny-smollm2"),
                              log=None)
    assert again["prompt_tokens"].tolist() == cost["prompt_tokens"].tolist()
    assert np.allclose(again["seconds"], again["seconds"].iloc[0])


def test_available_systems_add_evidence_systems_only_when_asked(world, artifacts_root):
    cat, orc, top = world
    rows = _rows(top)
    ds = {"train": rows, "test": rows}
    kw = dict(base_model="tiny-smollm2", baselines=False, trained=False, catalog=cat, oracle=orc, n_popular=30,
              log=None)
    plain = E.available_systems("smoke", ds, **kw)
    assert [s.name for s in plain] == ["Zero-shot tiny model (random weights)"]
    both = E.available_systems("smoke", ds, evidence_n=12, **kw)
    assert [s.name for s in both] == [plain[0].name, plain[0].name + " + evidence"]
    assert both[0].key() == plain[0].key()
    p = both[1].evidence.params()
    assert p["n"] == 12 and p["candidates"].startswith("retrieval(") and both[1].evidence.settings["n_popular"] == 30


def test_trained_stages_with_evidence_are_labelled_and_left_out_unless_asked(world, artifacts_root):
    pytest.importorskip("safecrs_core.train.gdpo")
    from safecrs_core.pipeline import mark_done

    cat, orc, top = world
    assert E.trained_label({"stage": "sft", "params": {"variant": "safe", "evidence": {"n": 20}}}) == \
        "Safe-SFT + evidence"
    assert E.trained_label({"stage": "gdpo", "params": {"mode": "grpo", "evidence": {"n": 20}}}) == \
        "Safe-GDPO + evidence (GRPO)"
    assert E.trained_label({"stage": "sft", "params": {"variant": "safe", "evidence": None}}) == "Safe-SFT"
    rows = _rows(top)
    fp = rows_fingerprint(rows)
    for key, params, when in (("a0", {"mode": "gdpo"}, "2026-01-01"),
                              ("b0", {"mode": "gdpo", "evidence": dict(EVIDENCE_DEFAULTS, n=10)}, "2026-02-01")):
        d = artifacts_root / "gdpo" / key
        d.mkdir(parents=True)
        mark_done(d, {"stage": "gdpo", "key": key, "params": params, "inputs": [f"rows:{fp}"], "finished": when,
                      "files": []})
    notes = []
    assert [s.name for s in E.trained_systems({"train": rows}, log=notes.append)] == ["Safe-GDPO"]
    assert any("evidence" in n for n in notes)
    asked = []
    factory = lambda settings: asked.append(settings) or EvidencePrompts(fixed(top), "fixed", cat, orc, n=settings["n"])
    found = E.trained_systems({"train": rows}, log=None, evidence=factory)
    assert [s.name for s in found] == ["Safe-GDPO", "Safe-GDPO + evidence"]
    assert found[0].evidence is None and found[1].evidence.n == 10 and asked == [dict(EVIDENCE_DEFAULTS, n=10)]
    with pytest.raises(ValueError, match="evidence"):
        E.trained_systems({"train": rows}, stages=[artifacts_root / "gdpo" / "b0"], log=None)


# --------------------------------------------------------------------------------------------
# Training options


def test_sft_config_evidence_keys_only_when_set():
    sft = pytest.importorskip("safecrs_core.train.sft")
    c = sft.SafeSFTConfig()
    assert c.evidence is None and "evidence" not in c.to_params() and "evidence" not in c.data_params()
    on = sft.SafeSFTConfig(evidence={"n": 10})
    assert on.to_params()["evidence"] == on.data_params()["evidence"] == {**EVIDENCE_DEFAULTS, "n": 10}
    assert {k: v for k, v in on.to_params().items() if k != "evidence"} == c.to_params()
    with pytest.raises(ValueError, match="safe variant"):
        sft.SafeSFTConfig(variant="plain", evidence={"n": 10})
    with pytest.raises(ValueError, match="cannot fill"):
        sft.SafeSFTConfig(evidence={"n": 5})


def test_gdpo_params_evidence_keys_only_when_set(world):
    gdpo = pytest.importorskip("safecrs_core.train.gdpo")
    cat, orc, top = world
    p = gdpo.GDPOParams()
    assert "evidence" not in p.to_params()
    on = gdpo.GDPOParams(evidence={"n": 12})
    assert on.to_params()["evidence"] == {**EVIDENCE_DEFAULTS, "n": 12}
    with pytest.raises(ValueError, match="params.evidence is set"):
        gdpo._check_evidence(on, None)
    ev = EvidencePrompts(fixed(top[1:30]), "fixed", cat, orc, n=12)
    with pytest.raises(ValueError, match="built with"):
        gdpo._check_evidence(on, ev)
    with pytest.raises(ValueError, match="params.evidence is None"):
        gdpo._check_evidence(p, ev)
    ev.settings = dict(on.evidence)
    gdpo._check_evidence(on, ev)
    data = gdpo.build_dataset(_rows(top), k=10, evidence=ev)
    assert "Recommend only from these candidate movies:" in data[0]["prompt"][0]["content"]


def test_safe_sft_targets_with_evidence_come_from_the_candidates(world):
    sft = pytest.importorskip("safecrs_core.train.sft")
    cat, orc, top = world
    rows = _rows(top)
    cands = top[1:40]
    ev = EvidencePrompts(fixed(cands), "fixed", cat, orc, n=20)
    ex = sft.build_targets(rows, "safe", k=10, catalog=cat, oracle=orc, evidence=ev)
    assert len(ex) == 2
    for row, e in zip(rows, ex):
        assert set(e["items"]) <= set(cands[:20]) and len(e["items"]) <= 10
        assert not orc.is_unsafe(e["items"], row["trait"]).any()
        assert set(e["dropped"]) <= set(cands[:20]) and orc.is_unsafe(e["dropped"], row["trait"]).all()
        gt = row["targets"][0]["item_id"]
        if gt in e["items"]:
            assert e["items"][0] == gt and e["origins"][0] == "ground_truth"
        assert "Recommend only from these candidate movies:" in e["prompt"][0]["content"]
        assert e["completion"][0]["content"].startswith("<reasoning>The user is sensitive to")
    assert ex == sft.build_targets(rows, "safe", k=10, catalog=cat, oracle=orc, evidence=ev)  # deterministic
    with pytest.raises(ValueError, match="safe variant"):
        sft.build_targets(rows, "plain", k=10, catalog=cat, oracle=orc, evidence=ev)

"""Candidates in context without oracle verdicts: settings and keys, the leak-free neighbour
source, SFT targets drawn from the candidates (plain and safe), grounded Safe-GDPO rollouts
restricted to each row's candidates, results on row subsets and the paths pages show."""
from __future__ import annotations

import copy

import pytest

from conftest import ref
from safecrs_core.evaluation import evaluate as E
from safecrs_core.train.candidates import neighbour_prompts
from safecrs_core.data.rows import column
from safecrs_core.train.prompts import (CANDIDATE_DEFAULTS, EvidencePrompts, build_messages, candidate_settings,
                                  parse_completion)

TURNS = [{"role": "user", "text": "Something fun for the weekend. Nothing with blood or gore, please."}]
CONSTRAINT = "Nothing with blood or gore, please."


def fixed(ids):
    return lambda rows, n: [list(ids)[:n] for _ in range(len(rows))]


def test_candidate_settings_validate_and_key_only_when_set():
    from safecrs_core.train.gdpo import GDPOParams
    from safecrs_core.train.sft import SafeSFTConfig

    assert candidate_settings(None) is None
    assert candidate_settings({}) == CANDIDATE_DEFAULTS
    assert candidate_settings({"n": 12}) == {"n": 12, "source": "neighbours"}
    for bad, match in (({"n": 0}, "n must"), ({"n": True}, "n must"), ({"source": "oracle"}, "source"),
                       ({"top": 3}, "unknown")):
        with pytest.raises(ValueError, match=match):
            candidate_settings(bad)
    with pytest.raises(TypeError):
        candidate_settings([("n", 3)])
    assert "candidates" not in SafeSFTConfig().to_params() and "candidates" not in SafeSFTConfig().data_params()
    cfg = SafeSFTConfig(candidates={"n": 20}, grounding={"mode": "candidates"})
    assert cfg.to_params()["candidates"] == cfg.data_params()["candidates"] == {"n": 20, "source": "neighbours"}
    assert SafeSFTConfig(variant="plain", candidates={}).candidates == CANDIDATE_DEFAULTS  # plain SFT may use them
    with pytest.raises(ValueError, match="not both"):
        SafeSFTConfig(candidates={}, evidence={})
    with pytest.raises(ValueError, match="cannot fill"):
        SafeSFTConfig(candidates={"n": 5})
    with pytest.raises(ValueError, match="candidates grounding"):
        SafeSFTConfig(grounding={"mode": "candidates"})
    assert "candidates" not in GDPOParams().to_params()
    assert GDPOParams(candidates={"n": 20}).to_params()["candidates"]["n"] == 20
    with pytest.raises(ValueError, match="candidates grounding"):
        GDPOParams(grounding={"mode": "candidates"})
    with pytest.raises(ValueError, match="not both"):
        GDPOParams(candidates={}, evidence={})


def test_neighbour_candidates_come_from_seen_items_and_train_data_only(movies_world):
    cat, _, top = movies_world
    train = [{"id": f"t{i}", "turns": TURNS, "trait": "anti_gore", "seen": [ref(top[i])],
              "targets": [ref(top[i + 1])], "removed_targets": []} for i in range(30)]
    prompts = neighbour_prompts({"train": train}, cat, n=15)
    assert not prompts.verdicts and prompts.params()["verdicts"] is False
    assert prompts.settings == {"n": 15, "source": "neighbours"}
    row = {"id": "x", "turns": TURNS, "trait": "anti_gore", "seen": [ref(top[3]), ref(top[40])],
           "targets": [ref(top[4])], "removed_targets": []}
    other_targets = dict(row, targets=[ref(top[200])])  # same conversation, other answers
    a, b = prompts.ids([row, other_targets])
    assert a == b, "candidates must not depend on the row's targets"
    assert len(a) == 15 and len(set(a)) == 15 and not {top[3], top[40]} & set(a)
    assert prompts.ids([dict(row, seen=list(reversed(row["seen"])))])[0] == a  # order of mentions is irrelevant
    # the prompt lists the candidates and no verdicts
    kw = prompts.kwargs([row])[0]
    assert set(kw) == {"candidates"} and kw["candidates"] == [cat.display(i) for i in a]
    system = build_messages(row["turns"], **kw)[0]["content"]
    assert "Recommend only from these candidate movies:" in system
    assert "risk" not in system and "unsafe" not in system
    # a different train split gives a different source reference (it keys every cache)
    other = neighbour_prompts({"train": train[:10]}, cat, n=15)
    assert other.candidates_ref != prompts.candidates_ref


def test_train_folds_keep_a_training_rows_own_targets_out_of_its_candidates(movies_world):
    cat, _, top = movies_world
    assert candidate_settings({"train_folds": 0}) == CANDIDATE_DEFAULTS  # off: the same settings (and keys)
    assert candidate_settings({"train_folds": 4}) == {**CANDIDATE_DEFAULTS, "train_folds": 4}
    for bad in (1, -2, 2.5, True, "4"):
        with pytest.raises(ValueError, match="train_folds must be 0"):
            candidate_settings({"train_folds": bad})
    # each training conversation mentions one film and answers with a rare one: co-mention
    # within the train split would put that answer among its own candidates
    train = [{"id": f"t{i}", "turns": TURNS, "trait": "anti_gore", "seen": [ref(top[i])],
              "targets": [ref(top[300 + i])], "removed_targets": []} for i in range(20)]
    leaky = neighbour_prompts({"train": train}, cat, n=15)
    folded = neighbour_prompts({"train": train}, cat, n=15, train_folds=4)
    assert folded.settings == {**CANDIDATE_DEFAULTS, "n": 15, "train_folds": 4}
    assert folded.candidates_ref != leaky.candidates_ref  # it keys the prompts' caches
    own = [r["targets"][0]["item_id"] for r in train]
    hits_leaky = sum(t in c for t, c in zip(own, leaky.ids(train)))
    hits_folded = sum(t in c for t, c in zip(own, folded.ids(train)))
    assert hits_leaky == len(train) and hits_folded == 0
    # the turns of one conversation (a dialog group) share items: they share a fold, so a
    # sibling's answers do not leak in either
    groups = [dict(r, dialog_group=f"g{i // 2}", seen=[ref(top[i // 2])]) for i, r in enumerate(train)]
    sibling = {f"t{i}": own[i ^ 1] for i in range(len(train))}  # the other turn's answer

    def sibling_hits(rows):
        p = neighbour_prompts({"train": rows}, cat, n=15, train_folds=4)
        return sum(sibling[r["id"]] in c or r["targets"][0]["item_id"] in c for r, c in zip(rows, p.ids(rows)))

    assert sibling_hits(groups) == 0
    assert sibling_hits([dict(r, dialog_group=None) for r in groups]) > 0  # folds of single rows would leak
    from safecrs_core.train.candidates import _folds
    folds = _folds([r["id"] for r in groups], [r["dialog_group"] for r in groups], 4)
    assert all(folds[f"t{2 * g}"] == folds[f"t{2 * g + 1}"] == g % 4 for g in range(10))
    assert _folds(["a", "b"], [None, None], 0) == {}
    # rows outside the train split get the same candidates either way
    row = {"id": "x", "turns": TURNS, "trait": "anti_gore", "seen": [ref(top[3])], "targets": [], "removed_targets": []}
    assert folded.ids([row]) == leaky.ids([row])


def test_sft_targets_from_candidates_plain_and_safe(movies_world):
    from safecrs_core.safety.oracle import UNSAFE
    from safecrs_core.train.sft import build_targets

    cat, orc, top = movies_world
    cands = top[:20]
    prompts = EvidencePrompts(fixed(cands), "fixed", cat, None, n=20, verdicts=False)
    row = {"id": "r0", "trait": "anti_gore", "trait_name": "Gore", "source": "test", "turns": TURNS,
           "constraint": CONSTRAINT, "seen": [], "targets": [ref(cands[7])], "removed_targets": []}
    plain = build_targets([row], "plain", k=10, catalog=cat, oracle=orc, evidence=prompts)[0]
    safe = build_targets([row], "safe", k=10, catalog=cat, oracle=orc, evidence=prompts)[0]
    assert plain["reasoning"] is None and plain["dropped"] == []
    assert plain["items"][0] == cands[7] and plain["items"][1:] == [c for c in cands if c != cands[7]][:9]
    assert CONSTRAINT not in plain["prompt"][-1]["content"]  # plain SFT does not see the sensitivity
    assert CONSTRAINT in safe["prompt"][-1]["content"]
    for ex in (plain, safe):
        assert set(ex["items"]) <= set(cands)
        assert "Recommend only from these candidate movies:" in ex["prompt"][0]["content"]
    verdicts, _ = orc.check(safe["items"], "anti_gore")
    assert (verdicts != UNSAFE).all()
    dropped_v, _ = orc.check(safe["dropped"], "anti_gore") if safe["dropped"] else ([], [])
    assert all(int(v) == UNSAFE for v in dropped_v)
    assert safe["reasoning"].startswith("The user is sensitive to Gore.")
    parsed = parse_completion(safe["completion"][0]["content"], resolver=cat)
    assert [p.item_id for p in parsed] == safe["items"]
    # evidence prompts (with verdicts) stay a safe-variant option
    with_verdicts = EvidencePrompts(fixed(cands), "fixed", cat, orc, n=20)
    with pytest.raises(ValueError, match="safe variant"):
        build_targets([row], "plain", k=10, catalog=cat, oracle=orc, evidence=with_verdicts)


def test_gdpo_rollouts_in_candidates_mode_stay_in_each_rows_candidates(movies_world, tmp_path):
    from safecrs_core.train.gdpo import GDPOParams, build_trainer
    from safecrs_core.train.models import load_model

    cat, orc, top = movies_world
    model, tok = load_model("tiny-smollm2", device="cpu")
    per_row = {"c0": top[:6], "c1": top[10:16]}

    def source(rows, n):
        return [list(per_row["c0" if any(s["item_id"] == top[50] for s in seen) else "c1"])[:n]
                for seen in column(rows, "seen")]

    rows = [{"id": f"c{i}", "turns": TURNS, "trait": "anti_gore", "targets": [ref(top[i])],
             "seen": [ref(top[50 + i])], "removed_targets": []} for i in range(2)]
    settings = {"n": 6, "source": "neighbours"}
    prompts = EvidencePrompts(source, "fixed-test", cat, None, n=6, settings=settings, verdicts=False)
    params = GDPOParams(k=3, num_generations=2, per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3,
                        max_completion_length=72, lora=False, save_steps=1000, seed=0, candidates=settings,
                        grounding={"mode": "candidates", "min_items": 3})
    with pytest.raises(ValueError, match="params.candidates is set"):
        build_trainer(params, copy.deepcopy(model), tok, rows, cat, orc, tmp_path / "a")
    trainer = build_trainer(params, model, tok, rows, cat, orc, tmp_path / "out", evidence=prompts)
    trainer.train()
    rr = trainer.rank_rewards.last
    assert len(rr.parsed) == 4
    assert all(len(p) == 3 for p in rr.parsed)  # every rollout is a grounded list of k items
    allowed = set(per_row["c0"]) | set(per_row["c1"])
    assert all(it.item_id in allowed for p in rr.parsed for it in p)
    # each rollout's items belong to one row's candidates
    assert all({it.item_id for it in p} <= set(per_row["c0"]) or {it.item_id for it in p} <= set(per_row["c1"])
               for p in rr.parsed)


def test_results_on_row_subsets_and_candidate_baselines(movies_world, artifacts_root):
    cat, orc, top = movies_world
    rows = [{"id": f"r{i}", "turns": TURNS, "trait": "anti_gore", "seen": [], "targets": [ref(top[i])],
             "removed_targets": [], "source": "test"} for i in range(6)]
    prompts = EvidencePrompts(fixed(top[:12]), "fixed", cat, None, n=12, verdicts=False)
    base = E.candidate_baselines(prompts, orc)
    assert [s.name for s in base] == ["Candidates", "Candidates + filter"]
    lists = base[1].recommend(rows, 10)
    verdicts, _ = orc.check(lists[0], "anti_gore")
    from safecrs_core.safety.oracle import UNSAFE
    assert (verdicts != UNSAFE).all() and base[0].recommend(rows, 10)[0] == top[:10]
    stage = E.results_stage(base, rows, label="subset-test", n_boot=50, catalog=cat, oracle=orc,
                            subsets={"Candidates + filter": 4}, progress=False, log=None)
    res = E.load_results(stage)
    counts = res.per_sample.groupby("system").size().to_dict()
    assert counts == {"Candidates": 6, "Candidates + filter": 4}
    with pytest.raises(ValueError, match="not evaluated"):
        E.results_stage(base, rows, label="x", catalog=cat, oracle=orc, subsets={"Nope": 2}, log=None)
    assert E.results_stage(base, rows, label="subset-test", n_boot=50, catalog=cat, oracle=orc,
                           log=None) != stage  # subsets key the stage


def test_candidate_systems_keep_their_names_and_key_apart(movies_world):
    cat, orc, top = movies_world
    prompts = EvidencePrompts(fixed(top[:12]), "fixed", cat, None, n=12, verdicts=False)
    zs = E.zero_shot_system("tiny-smollm2")
    cs = E.candidates_system(zs, prompts)
    assert cs.name == zs.name and cs.key() != zs.key() and cs.key()["evidence"]["verdicts"] is False
    g = E.grounded_system(cs, {"mode": "candidates", "min_items": 10})
    assert g.decoder(cat, __import__("safecrs_core.train.models", fromlist=["x"]).load_tokenizer("tiny-smollm2")) is not None
    with pytest.raises(ValueError, match="without verdicts"):
        E.candidates_system(zs, EvidencePrompts(fixed(top[:12]), "fixed", cat, orc, n=12))


def test_pages_show_paths_relative_to_the_repository(tmp_path, monkeypatch):
    from safecrs_core.pipeline import repo_root, shown_path

    assert shown_path(repo_root() / "artifacts" / "sft" / "abc") == "artifacts/sft/abc"
    monkeypatch.setenv("SAFECRS_ARTIFACTS", str(tmp_path / "arts"))
    assert shown_path(tmp_path / "arts" / "gdpo" / "k1") == "$SAFECRS_ARTIFACTS/gdpo/k1"
    assert str(tmp_path) not in shown_path(tmp_path / "elsewhere" / "x")


def test_candidate_genres_show_catalog_genres_and_key_only_when_on(movies_world):
    cat = movies_world[0]
    assert candidate_settings({"genres": False}) == CANDIDATE_DEFAULTS  # off: the same settings (and keys) as before
    assert candidate_settings({"genres": True}) == {**CANDIDATE_DEFAULTS, "genres": True}
    with pytest.raises(ValueError, match="genres must be true or false"):
        candidate_settings({"genres": "yes"})
    top = list(cat.items.sort_values("popularity", ascending=False).index[:12])
    plain = EvidencePrompts(fixed(top), "fixed", cat, None, n=12, verdicts=False)
    shown = EvidencePrompts(fixed(top), "fixed", cat, None, n=12, verdicts=False, genres=True)
    assert "genres" not in plain.params() and shown.params() == {**plain.params(), "genres": True}
    rows = [{"id": "r", "trait": "anti_gore", "turns": TURNS, "seen": []}]
    kw = shown.kwargs(rows)[0]
    assert "evidence" not in plain.kwargs(rows)[0] and len(kw["evidence"]) == 12
    first = cat.items.at[top[0], "genres"]
    assert kw["evidence"][0] == ", ".join(list(first)[:5]) and kw["evidence"][0]
    system = build_messages(TURNS, k=10, **kw)[0]["content"]
    assert f"{cat.display(top[0])}: {kw['evidence'][0]}" in system
    assert "unsafe" not in system and "risk" not in system  # metadata, never a verdict

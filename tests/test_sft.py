"""Safe-SFT: target building on real SafeRec rows, and training with the tiny model."""
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from safecrs_core.train import candidates as C
from safecrs_core.train import sft
from safecrs_core.safety.oracle import UNSAFE
from safecrs_core.train.prompts import parse_completion
from safecrs_core.data.rows import item_ids

# two sources keep the build small; Reddit-v2 samples carry many oracle-removed targets
BENCH = dict(sources=("reddit_saferank", "redial_kepler"), max_per_source_split=30, seed=0)


@pytest.fixture(scope="module")
def world():
    if not Path(os.environ["SAFECRS_DATA_DIR"]).is_dir():
        pytest.skip("data directory not found (set SAFECRS_DATA_DIR)")
    from safecrs_core.benchmark import BenchmarkConfig, build_benchmark
    from safecrs_core.data.catalog import load_catalog
    from safecrs_core.safety.oracle import load_oracle

    cfg = BenchmarkConfig(**BENCH)
    ds, stats = build_benchmark(cfg)
    cat, orc = load_catalog(), load_oracle(threshold=cfg.threshold)
    rows = [r for s in ds for r in ds[s]]
    nb = C.Neighbours.from_benchmark(list(ds["train"]), cat)
    return {"ds": ds, "stats": stats, "cfg": cfg, "cat": cat, "orc": orc, "rows": rows, "nb": nb,
            "safe": sft.build_targets(rows, "safe", neighbours=nb, catalog=cat, oracle=orc),
            "plain": sft.build_targets(rows, "plain", neighbours=nb, catalog=cat, oracle=orc)}


def _by_id(examples):
    return {e["id"]: e for e in examples}


def test_safe_targets_never_hold_an_oracle_unsafe_item(world):
    orc, rows = world["orc"], world["rows"]
    safe = _by_id(world["safe"])
    assert len(safe) == len(rows)
    n_dropped = 0
    for r in rows:
        e = safe[r["id"]]
        assert len(e["items"]) == 10 and len(set(e["items"])) == 10
        v, _ = orc.check(e["items"], r["trait"])
        assert (v != UNSAFE).all(), (r["id"], r["trait"])
        if e["dropped"]:
            assert (orc.check(e["dropped"], r["trait"])[0] == UNSAFE).all()
            n_dropped += len(e["dropped"])
    assert n_dropped > 0  # the filter had something to do on these rows


def test_plain_targets_keep_removed_ground_truth_and_drop_the_constraint(world):
    plain, safe = _by_id(world["plain"]), _by_id(world["safe"])
    with_removed = [r for r in world["rows"] if r["removed_targets"]]
    assert with_removed
    orc = world["orc"]
    for r in with_removed:
        removed = [t["item_id"] for t in r["removed_targets"]]
        gt = [t["item_id"] for t in r["targets"]] + removed
        p = plain[r["id"]]
        assert p["items"][:len(gt)] == gt[:10]  # ground truth first, unfiltered
        assert orc.check(removed, r["trait"])[0].tolist() == [UNSAFE] * len(removed)
        assert not set(removed) & set(safe[r["id"]]["items"])
        assert set(removed) <= set(safe[r["id"]]["dropped"])
    for r in world["rows"]:  # the sentence sits in the last user turn, not always the last message
        text_plain = "\n".join(m["content"] for m in plain[r["id"]]["prompt"])
        text_safe = "\n".join(m["content"] for m in safe[r["id"]]["prompt"])
        assert r["constraint"] not in text_plain and r["constraint"] in text_safe
        assert plain[r["id"]]["reasoning"] is None and "<reasoning>" not in plain[r["id"]]["completion"][0]["content"]


def test_targets_never_include_seen_items(world):
    for variant in ("safe", "plain"):
        ex = _by_id(world[variant])
        for r in world["rows"]:
            seen = {t["item_id"] for t in r["seen"] if t["item_id"]}
            assert not seen & set(ex[r["id"]]["items"]), (variant, r["id"])


def test_completion_format_and_reasoning_name_the_trait(world):
    cat = world["cat"]
    rows = {r["id"]: r for r in world["rows"]}
    resolved = total = 0
    for e in world["safe"]:
        r = rows[e["id"]]
        text = e["completion"][0]["content"]
        assert text.startswith("<reasoning>The user is sensitive to " + r["trait_name"] + ".")
        if e["dropped"]:
            first = cat.display(e["dropped"][0])
            assert f"{first} — {r['trait']} risk" in e["reasoning"]
        else:
            assert "None of the candidates" in e["reasoning"]
        parsed = parse_completion(text, resolver=cat)
        assert parsed.has_reasoning and len(parsed) == len(e["items"])
        resolved += sum(a == b for a, b in zip(parsed.item_ids, e["items"]))
        total += len(e["items"])
        assert e["prompt"][0]["role"] == "system" and e["completion"][0]["role"] == "assistant"
    assert resolved / total > 0.97, (resolved, total)  # the parser maps the target lines back to the items


def test_reasoning_text_names_at_most_five():
    drops = [(f"Film {i} (2000)", 0.9) for i in range(7)]
    text = sft.reasoning_text("Gore", "anti_gore", drops)
    assert text.startswith("The user is sensitive to Gore. Leaving out: Film 0 (2000) — anti_gore risk 0.90;")
    assert "Film 4 (2000)" in text and "Film 5 (2000)" not in text and "(and 2 more)" in text
    assert sft.reasoning_text("Gore", "anti_gore", []) == "The user is sensitive to Gore. None of the candidates conflicts with it."


def test_parse_reasoning_reads_back_what_reasoning_text_writes():
    drops = [("Saw (2004)", 0.93), ("Se7en (1995)", None), ("Alien; Resurrection (1997)", 0.7)]
    text = sft.reasoning_text("Gore", "anti_gore", drops, max_named=2)
    assert sft.parse_reasoning(text) == ("Gore", ["Saw (2004)", "Se7en (1995)"])
    assert sft.parse_reasoning(sft.reasoning_text("Gore", "anti_gore", drops)) == (
        "Gore", ["Saw (2004)", "Se7en (1995)", "Alien; Resurrection (1997)"])
    assert sft.parse_reasoning(sft.reasoning_text("Sexual violence", "x", [])) == ("Sexual violence", [])
    assert sft.parse_reasoning("I think the user likes action.") == (None, [])
    assert sft.parse_reasoning(None) == (None, [])


def test_reasoning_frame_scores_the_targets_as_perfect_and_a_wrong_trait_as_wrong(world):
    """The Safe-SFT targets name the row's own trait and leave out only unsafe titles; the same
    text with another trait's name is counted wrong; plain SFT targets have no reasoning."""
    cat, orc, rows = world["cat"], world["orc"], world["rows"]
    safe = _by_id(world["safe"])
    texts = [safe[r["id"]]["completion"][0]["content"] for r in rows]
    df = sft.reasoning_frame(texts, rows, cat, orc, candidates=[safe[r["id"]]["items"] for r in rows])
    assert df["sensitivity_correct"].all()
    named = df["n_named"].sum()
    assert named > 0 and df["n_named_unsafe"].sum() == named
    assert (df["n_named"] == [min(len(safe[r["id"]]["dropped"]), sft.MAX_NAMED_DROPS) for r in rows]).all()
    assert (df["candidate_unsafe_rate"] == 0).all()  # the targets' own items are never unsafe
    other = {r["id"]: next(n for n in ("Gore", "Sexual violence") if n != r["trait_name"]) for r in rows}
    wrong = [t.replace(f"sensitive to {r['trait_name']}.", f"sensitive to {other[r['id']]}.", 1)
             for t, r in zip(texts, rows)]
    assert not sft.reasoning_frame(wrong, rows, cat, orc)["sensitivity_correct"].any()
    plain_by_id = _by_id(world["plain"])
    plain = [plain_by_id[r["id"]]["completion"][0]["content"] for r in rows]
    summ = sft.reasoning_summary({"plain": sft.reasoning_frame(plain, rows, cat, orc),
                                  "safe": df}).loc[:, ["reasoning in format", "names the user's sensitivity",
                                                       "left out that are unsafe"]]
    assert summ.loc["safe"].tolist() == [1.0, 1.0, 1.0]
    assert summ.loc["plain", "reasoning in format"] == 0.0
    with pytest.raises(ValueError, match="3 completions for"):
        sft.reasoning_frame(texts[:3], rows, cat, orc)


def test_targets_are_deterministic_and_the_seed_picks_the_subset(world):
    rows, cat, orc = world["rows"], world["cat"], world["orc"]
    nb2 = C.Neighbours.from_benchmark(list(world["ds"]["train"]), cat)
    again = sft.build_targets(rows, "safe", neighbours=nb2, catalog=cat, oracle=orc)
    assert json.dumps(again) == json.dumps(world["safe"])
    train = world["ds"]["train"]
    ids = lambda seed: [r["id"] for r in sft._train_subset(train, 5, seed)]  # noqa: E731
    assert ids(0) == ids(0) and ids(0) != ids(1)


def test_strip_constraint_and_fit_prompt(world):
    turns = [{"role": "user", "text": "Hi."}, {"role": "assistant", "text": "Hello!"},
             {"role": "user", "text": "Something funny. No gore please."}]
    assert sft.strip_constraint(turns, "No gore please.")[-1]["text"] == "Something funny."
    assert turns[-1]["text"].endswith("No gore please.")  # not mutated
    from safecrs_core.train.models import load_tokenizer
    from safecrs_core.train.prompts import build_messages
    tok = load_tokenizer("tiny-smollm2")
    long = [{"role": "user", "text": "word " * 300}, {"role": "assistant", "text": "ok"}] + turns
    msgs = build_messages(long)
    fitted = sft.fit_prompt(msgs, tok, 200)
    assert fitted[0] == msgs[0] and fitted[-1] == msgs[-1] and fitted[1]["role"] == "user"
    assert len(fitted) < len(msgs) and sft._n_tokens(tok, fitted, True) <= 200
    assert sft.fit_prompt(msgs, tok, 20) is None


def test_select_best_prefers_recall_then_lower_svr_then_later_step():
    s = {2: {"recall@10": 0.1, "svr@10": 0.2}, 4: {"recall@10": 0.3, "svr@10": 0.5},
         6: {"recall@10": 0.3, "svr@10": 0.1}, 8: {"recall@10": 0.3, "svr@10": 0.1}}
    assert sft.select_best(s) == 8
    assert sft.select_best({2: {"recall@10": float("nan")}, 4: {"recall@10": 0.0}}) == 4


def test_fit_examples_names_the_examples_it_drops(world):
    from datasets import Dataset

    from safecrs_core.train.models import load_tokenizer
    tok = load_tokenizer("tiny-smollm2")
    examples = list(world["safe"])[:6]
    sizes = [sft._n_tokens(tok, list(e["prompt"]) + list(e["completion"]), False) for e in examples]
    limit = sorted(sizes)[len(sizes) // 2]  # about half of them are longer
    dropped: list[int] = []
    data, n_trim, n_drop = sft.fit_examples(Dataset.from_list(examples), tok, limit, dropped_rows=dropped)
    assert n_drop >= 1 and n_drop == len(dropped) and len(data) + n_drop == len(examples)
    assert all(sizes[i] > limit for i in dropped)  # only examples longer than the limit go
    assert all(sft._n_tokens(tok, list(p) + list(c), False) <= limit for p, c in zip(data["prompt"], data["completion"]))


# ---- training (tiny model) ------------------------------------------------------------------

TINY = dict(model_name="tiny-smollm2", max_train_samples=4, per_device_train_batch_size=2, max_length=384, learning_rate=5e-3,
            lora_r=8, lora_alpha=16, val_samples=2, max_new_tokens=8, eval_batch_size=2)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(world, tmp_path):
    from datasets import Dataset

    from safecrs_core.train.models import load_model
    model, tok = load_model("tiny-smollm2", device="cpu")
    short = sorted(world["safe"], key=lambda e: len(json.dumps(e["prompt"] + e["completion"])))[:2]
    data, _, _ = sft.fit_examples(Dataset.from_list(short), tok, 384)
    assert len(data) == 2
    cfg = sft.SafeSFTConfig(**{**TINY, "max_steps": 6, "save_steps": 1000, "learning_rate": 1e-2, "warmup_ratio": 0.0})
    trainer = sft.make_trainer(cfg, data, tmp_path / "out", model, tok, progress=False)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    labels = batch["labels"]
    assert (labels != -100).sum() < (batch["input_ids"] != tok.pad_token_id).sum()  # prompt masked

    def loss():
        trainer.model.eval()
        with torch.no_grad():
            return trainer.model(**batch).loss.item()
    before = loss()
    trainer.train()
    after = loss()
    assert trainer.state.global_step == 6
    assert after < before - 0.05, (before, after)


class Interrupted(RuntimeError):
    pass


def _benchmark_stage(world):
    """The fixture benchmark as a completed stage under the current artifacts root."""
    from safecrs_core.pipeline import run_stage

    def save(tmp):
        world["ds"].save_to_disk(str(tmp / "dataset"))
        (tmp / "stats.json").write_text(json.dumps(world["stats"]))
    return run_stage("benchmark", {"test": "sft"}, [], save, log=None)


def _stop_after_checkpoint_2(monkeypatch):
    """Make training raise :class:`Interrupted` once checkpoint 2 is saved and scored; returns
    the real ``on_save`` to put back."""
    real_on_save = sft.CheckpointScorer.on_save

    def on_save_then_stop(self, args, state, control, **kw):
        real_on_save(self, args, state, control, **kw)
        if state.global_step == 2:
            raise Interrupted
    monkeypatch.setattr(sft.CheckpointScorer, "on_save", on_save_then_stop)
    return real_on_save


def test_train_sft_resumes_after_an_interruption_and_is_cached(world, artifacts_root, monkeypatch):
    from safecrs_core.pipeline import is_done
    bench = _benchmark_stage(world)
    cfg = sft.SafeSFTConfig(**TINY, max_steps=4, save_steps=2)

    real_on_save = _stop_after_checkpoint_2(monkeypatch)
    with pytest.raises(Interrupted):
        sft.train_sft(cfg, bench, progress=False, log=None)
    work = next((artifacts_root / "sft").glob(f".*{sft.RESUME_SUFFIX}"))
    assert sft.last_checkpoint(work).name == "checkpoint-2"
    assert not [p for p in (artifacts_root / "sft").iterdir() if is_done(p)]

    monkeypatch.setattr(sft.CheckpointScorer, "on_save", real_on_save)
    stage = sft.train_sft(cfg, bench, progress=False, log=None)
    assert sft.sft_stage_dir(cfg, bench) == stage  # found without building
    info = json.loads((stage / "train_info.json").read_text())
    assert info["resumed_from"] == "checkpoint-2" and info["final_step"] == 4
    steps = [h["step"] for h in json.loads((stage / "log_history.json").read_text()) if "loss" in h]
    assert steps == [1, 2, 3, 4]  # the history carries on from the checkpoint
    ck = json.loads((stage / "checkpoints.json").read_text())
    assert set(ck["scores"]) == {"2", "4"} and ck["best_step"] in (2, 4)
    assert (stage / "model" / "adapter_model.safetensors").is_file() and not work.exists()
    assert len(json.loads((stage / "validation.json").read_text())["completions"]) == 2

    def no_training(*a, **k):
        raise AssertionError("a cached stage must not train again")
    monkeypatch.setattr(sft, "make_trainer", no_training)
    assert sft.train_sft(cfg, bench, progress=False, log=None) == stage
    model, tok = sft.load_sft_model(stage, device="cpu")
    assert not hasattr(model, "peft_config") and not model.training
    assert sft.loss_history(stage)["step"].tolist() == [1, 2, 3, 4]


def test_an_interrupted_sft_run_resumes_to_the_uninterrupted_result(world, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    cfg = sft.SafeSFTConfig(**TINY, max_steps=4, save_steps=2)

    def run(root):
        monkeypatch.setenv("SAFECRS_ARTIFACTS", str(root))
        return sft.train_sft(cfg, _benchmark_stage(world), progress=False, log=None)

    whole = run(tmp_path / "a")
    real_on_save = _stop_after_checkpoint_2(monkeypatch)
    with pytest.raises(Interrupted):
        run(tmp_path / "b")
    monkeypatch.setattr(sft.CheckpointScorer, "on_save", real_on_save)
    resumed = run(tmp_path / "b")
    assert json.loads((resumed / "train_info.json").read_text())["resumed_from"] == "checkpoint-2"
    a = json.loads((whole / "checkpoints.json").read_text())
    b = json.loads((resumed / "checkpoints.json").read_text())
    drop_time = lambda sc: {step: {m: v for m, v in x.items() if m != "seconds"} for step, x in sc.items()}  # noqa: E731
    assert a["best_step"] == b["best_step"] and drop_time(a["scores"]) == drop_time(b["scores"])
    wa = load_file(whole / "model" / "adapter_model.safetensors")
    wb = load_file(resumed / "model" / "adapter_model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def _keys_only_the_safe_stage(base, on, name, value):
    """An option off leaves the stage key as it was; on, it keys the safe stage with ``value``
    and leaves the plain stage's key alone."""
    assert name not in base.to_params()
    assert on.to_params()[name] == value
    assert on.replace(variant="plain").to_params() == base.replace(variant="plain").to_params()


def test_sensitivity_examples_are_short_name_the_trait_and_key_only_the_safe_stage(world, artifacts_root):
    from safecrs_core.train.models import load_tokenizer
    rows = list(world["ds"]["train"])[:6]
    ex = sft.sensitivity_examples(rows)
    assert len(ex) == 6
    tok = load_tokenizer("tiny-smollm2")
    for e, r in zip(ex, rows):
        assert e["completion"][0]["content"] == f"<reasoning>The user is sensitive to {r['trait_name']}."
        assert [m["role"] for m in e["prompt"]] == ["system", "user"]
        assert r["constraint"] in e["prompt"][1]["content"]  # the phrased sensitivity is in the last user turn
        assert "candidate" not in e["prompt"][0]["content"]
        assert sft._n_tokens(tok, e["prompt"] + e["completion"], False) < 250
    with pytest.raises(ValueError, match="sensitivity_examples"):
        sft.SafeSFTConfig(sensitivity_examples=-1)
    base = sft.SafeSFTConfig(**{**TINY, "val_samples": 0}, max_steps=2, save_steps=2)
    with_sens = base.replace(sensitivity_examples=3)
    _keys_only_the_safe_stage(base, with_sens, "sensitivity_examples", 3)
    stage = sft.train_sft(with_sens, _benchmark_stage(world), progress=False, log=None)
    info = json.loads((stage / "train_info.json").read_text())
    assert info["sensitivity_examples"] == 3 and info["examples"] >= 1


def test_knowledge_examples_name_only_unsafe_frequent_candidates(world):
    from collections import Counter
    cat, orc = world["cat"], world["orc"]
    rows = list(world["ds"]["train"])
    cands = [[i for i, _ in world["nb"].candidates([], sorted(set(item_ids(r["seen"]))), 20)] for r in rows]
    counts = Counter(i for c in cands for i in c)
    top = {i for i, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:40]}
    ex = sft.knowledge_examples(rows, cands, cat, orc, n_items=40, examples=12, seed=0)
    assert 0 < len(ex) <= 12
    assert ex == sft.knowledge_examples(rows, cands, cat, orc, n_items=40, examples=12, seed=0)  # deterministic
    by_constraint = {r["constraint"]: r for r in rows if r.get("constraint")}
    n_named = 0
    for e in ex:
        assert [m["role"] for m in e["prompt"]] == ["system", "user"]
        assert "candidate" not in e["prompt"][0]["content"]
        text = e["completion"][0]["content"]
        assert text.startswith("<reasoning>") and text.endswith("</reasoning>")
        name, titles = sft.parse_reasoning(text[len("<reasoning>"):-len("</reasoning>")])
        row = next(r for c, r in by_constraint.items() if c in e["prompt"][1]["content"])
        assert name == row["trait_name"] and 1 <= len(titles) <= sft.MAX_NAMED_DROPS
        ids = [cat.resolve(t).item_id for t in titles]
        assert None not in ids and set(ids) <= top  # only the most frequent training candidates
        assert (orc.check(ids, [row["trait"]] * len(ids))[0] == UNSAFE).all()  # every named item is unsafe
        n_named += len(ids)
    assert n_named > len(ex)  # groups, not single titles
    with pytest.raises(ValueError, match="candidate lists"):
        sft.knowledge_examples(rows, cands[:-1], cat, orc, n_items=40, examples=12)
    for bad in ({"n_items": 0}, {"examples": True}, {"items": 3}, 5):
        with pytest.raises((ValueError, TypeError), match="item_knowledge"):
            sft.knowledge_settings(bad)
    assert sft.knowledge_settings({"n_items": 7}) == {**sft.KNOWLEDGE_DEFAULTS, "n_items": 7}


def test_item_knowledge_keys_only_the_safe_stage_and_trains(world, artifacts_root):
    base = sft.SafeSFTConfig(**{**TINY, "val_samples": 0, "max_length": 768}, max_steps=2, save_steps=2,
                             candidates={"n": 20, "source": "neighbours"})  # candidates make prompts long
    with pytest.raises(ValueError, match="item_knowledge needs candidates"):
        sft.SafeSFTConfig(item_knowledge={"n_items": 10})
    know = base.replace(item_knowledge={"n_items": 30, "examples": 4})
    _keys_only_the_safe_stage(base, know, "item_knowledge", {"n_items": 30, "examples": 4})
    stage = sft.train_sft(know, _benchmark_stage(world), progress=False, log=None)
    info = json.loads((stage / "train_info.json").read_text())
    assert 1 <= info["knowledge_examples"] <= 4 and info["examples"] >= 1


def test_screen_examples_train_only_the_sensitivity_and_the_verdicts(world, artifacts_root):
    """A screen example is the last user turn, the sensitivity sentence and the screen block of
    the row's candidates with the oracle's verdicts; tokenized, exactly its sensitivity sentence
    and its verdict tokens carry the loss, while a full example's loss covers its whole
    completion as trl's own tokenization has it. The option keys only the safe stage and trains."""
    from safecrs_core.train.models import load_tokenizer
    from safecrs_core.train.prompts import SCREEN_CLOSE, screen_line

    cat, orc, tok = world["cat"], world["orc"], load_tokenizer("tiny-smollm2")
    rows = list(world["ds"]["train"])[:6]
    prompts = C.neighbour_prompts(world["ds"], cat, n=12, screen=True)
    ex = sft.screen_examples(rows, prompts.ids(rows), cat, orc)
    assert len(ex) == 6
    full = sft.build_targets(rows[:2], "safe", catalog=cat, oracle=orc, evidence=prompts)
    data = sft.fit_examples(full + ex, tok, 2048)[0]
    assert data["loss"] == [sft.FULL_LOSS] * len(full) + [sft.SCREEN_LOSS] * 6
    tokenized = sft.tokenize_examples(data, tok)
    n_yes = 0
    for e, r, cands, t in zip(ex, rows, prompts.ids(rows), tokenized.select(range(len(full), len(data)))):
        text = e["completion"][0]["content"]
        assert e["prompt"] == sft.last_turn_prompt(r) and text.endswith(SCREEN_CLOSE)
        verdicts = orc.check(cands, r["trait"])[0] == UNSAFE
        assert [line for line in text.split("\n")[2:-1]] == [
            screen_line(cat, c) + (" yes" if v else " no") for c, v in zip(cands, verdicts)]
        trained = [i for i, m in zip(t["input_ids"], t["completion_mask"]) if m]
        head = "<reasoning>" + sft.reasoning_head(r["trait_name"]) + "</reasoning>"
        verdict_text = "".join(" yes" if v else " no" for v in verdicts)
        assert tok.decode(trained) == head + verdict_text  # the titles and genres are context only
        n_yes += int(verdicts.sum())
    assert n_yes > 0
    for e, t in zip(full, tokenized):  # a full example: the whole completion and the end of turn
        trained = tok.decode([i for i, m in zip(t["input_ids"], t["completion_mask"]) if m])
        assert trained.startswith(e["completion"][0]["content"]) and trained.strip().endswith("<|im_end|>")
    with pytest.raises(ValueError, match="loss must be"):
        sft.loss_spans("x", "verdicts")
    with pytest.raises(ValueError, match="screen_examples teach the screen block"):
        sft.SafeSFTConfig(candidates={"n": 20}, screen_examples=3)
    cands = {"n": 12, "source": "neighbours", "screen": True}
    base = sft.SafeSFTConfig(**{**TINY, "val_samples": 0, "max_length": 1024}, max_steps=2, save_steps=2,
                             candidates=cands)
    screened = base.replace(screen_examples=3)
    _keys_only_the_safe_stage(base, screened, "screen_examples", 3)
    stage = sft.train_sft(screened, _benchmark_stage(world), progress=False, log=None)
    info = json.loads((stage / "train_info.json").read_text())
    assert info["screen_examples"] == 3 and info["examples"] >= 1


def test_tokenized_examples_are_what_trl_builds_from_prompt_completion_rows(world, tmp_path):
    """Training on :func:`sft.tokenize_examples` is training on what trl's ``SFTTrainer`` makes
    of the same prompt-completion rows: the same token ids and the same loss labels."""
    from safecrs_core.train.models import load_model

    model, tok = load_model("tiny-smollm2")
    rows = list(world["ds"]["train"])[:3]
    data = sft.fit_examples(sft.build_targets(rows, "safe", neighbours=world["nb"], catalog=world["cat"], oracle=world["orc"])
                            + sft.sensitivity_examples(rows), tok, 512)[0]
    cfg = sft.SafeSFTConfig(**{**TINY, "val_samples": 0}, max_steps=1)
    ours = sft.make_trainer(cfg, sft.tokenize_examples(data, tok), tmp_path / "a", model, tok, progress=False)
    trls = sft.make_trainer(cfg, data.remove_columns("loss"), tmp_path / "b", load_model("tiny-smollm2")[0], tok,
                            progress=False)
    assert ours.train_dataset["input_ids"] == trls.train_dataset["input_ids"]
    assert ours.train_dataset["labels"] == trls.train_dataset["labels"]


def test_batch_settings_share_gdpo_names_and_keep_their_stored_keys():
    """SafeSFTConfig names its batch settings as GDPOParams and transformers do; the stage keys
    store them under the names the first stages were keyed with, and a manifest's params give
    the same config back."""
    from safecrs_core.train.gdpo import GDPOParams

    names = {f.name for f in dataclasses.fields(sft.SafeSFTConfig)}
    gdpo_names = {f.name for f in dataclasses.fields(GDPOParams)}
    assert {"per_device_train_batch_size", "gradient_accumulation_steps"} <= names & gdpo_names
    assert not {"batch_size", "grad_accum"} & names
    cfg = sft.SafeSFTConfig(per_device_train_batch_size=3, gradient_accumulation_steps=2)
    params = cfg.to_params()
    assert (params["batch_size"], params["grad_accum"]) == (3, 2)
    assert "per_device_train_batch_size" not in params
    assert sft.SafeSFTConfig.from_params(params) == cfg
    with pytest.raises(ValueError, match="per_device_train_batch_size must be a positive integer"):
        sft.SafeSFTConfig(per_device_train_batch_size=0)


def test_screen_targets_give_every_candidate_its_oracle_verdict_and_need_the_screen_grammar(world):
    """With the candidate setting ``screen`` each Safe-SFT target holds a screen block: every
    prompt candidate in order, ``yes`` exactly where the oracle marks it unsafe for the row's
    trait; the plain variant has none; the config asks for the grounding to decode it."""
    from safecrs_core.train.prompts import SCREEN_CLOSE, SCREEN_OPEN, screen_line

    rows = list(world["ds"]["train"])[:12]
    prompts = C.neighbour_prompts(world["ds"], world["cat"], n=12, screen=True)
    assert prompts.params()["screen"] is True
    assert "screen" not in C.neighbour_prompts(world["ds"], world["cat"], n=12).params()
    safe = sft.build_targets(rows, "safe", catalog=world["cat"], oracle=world["orc"], evidence=prompts)
    plain = sft.build_targets(rows, "plain", catalog=world["cat"], oracle=world["orc"], evidence=prompts)
    assert safe and all(SCREEN_OPEN not in e["completion"][0]["content"] for e in plain)
    n_yes, ex_row = 0, {r["id"]: r for r in rows}
    for ex, cands in zip(safe, prompts.ids([r for r in rows if r["id"] in {e["id"] for e in safe}])):
        text = ex["completion"][0]["content"]
        block = text[text.index(SCREEN_OPEN) + len(SCREEN_OPEN):text.index(SCREEN_CLOSE)].strip().split("\n")
        verdicts, _ = world["orc"].check(cands, ex["trait"])
        assert block == [screen_line(world["cat"], c) + (" yes" if int(v) == UNSAFE else " no")
                         for c, v in zip(cands, verdicts)]
        assert text.index("</reasoning>") < text.index(SCREEN_OPEN) < text.index("<solution>")
        assert ex["reasoning"] == sft.reasoning_head(ex_row[ex["id"]]["trait_name"])  # the screen names what is left out
        n_yes += sum(int(v) == UNSAFE for v in verdicts)
        assert parse_completion(text).has_solution_tags and len(parse_completion(text).items) == len(ex["items"])
    assert n_yes > 0
    cands = {"n": 20, "source": "neighbours", "screen": True}
    grounding = {"mode": "candidates", "reasoning_tokens": 96}
    with pytest.raises(ValueError, match="switch both on"):
        sft.SafeSFTConfig(candidates=cands, grounding=grounding)
    with pytest.raises(ValueError, match="switch both on"):
        sft.SafeSFTConfig(candidates={"n": 20}, grounding={**grounding, "screen": True})
    ok = sft.SafeSFTConfig(candidates=cands, grounding={**grounding, "screen": True})
    assert ok.data_params()["candidates"]["screen"] is True
    plain = ok.replace(variant="plain")  # plain SFT is not taught the screen block, so it decodes without one
    assert "screen" not in plain.grounding and plain.candidates["screen"] is True
    assert "screen" in ok.grounding

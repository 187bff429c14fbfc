"""Decoupled advantages, token-to-rank alignment and the Safe-GDPO trainer on the tiny model."""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from safecrs_core.train.gdpo import (EPS, GDPOParams, SafeGDPOTrainer, build_trainer, decoupled_advantages,
                               load_gdpo_model, sequence_advantages, token_advantages, token_char_offsets,
                               token_ranks, train_gdpo)
from safecrs_core.train.prompts import parse_completion

S2 = math.sqrt(0.5)  # unbiased std of (0, 1)


# --------------------------------------------------------------------------------------------
# decoupled_advantages


def test_gdpo_paper_example_grpo_collapses_gdpo_keeps_apart():
    # two prompts x two rollouts; two binary rewards. Prompt A: totals (0, 1); prompt B: (0, 2).
    r1 = torch.tensor([0.0, 1.0, 0.0, 1.0])
    r2 = torch.tensor([0.0, 0.0, 0.0, 1.0])
    rewards = torch.stack([r1, r2]).unsqueeze(-1)  # (2 rewards, 4 completions, 1 rank)
    grpo = decoupled_advantages(rewards, 2, mode="grpo")[:, 0]
    a = 0.5 / (S2 + EPS)  # (total - mean) / (std + eps): group A
    b = 1.0 / (math.sqrt(2) + EPS)  # group B, the same but for eps
    assert grpo.tolist() == pytest.approx([-a, a, -b, b], abs=1e-6)
    assert torch.allclose(grpo[:2], grpo[2:], atol=1e-4)  # collapsed
    gdpo = decoupled_advantages(rewards, 2, mode="gdpo")[:, 0]
    # per reward: A has (-a, a) from r1 and (0, 0) from r2; B has (-a, a) from both
    pre = torch.tensor([-a, a, -2 * a, 2 * a])
    expected = (pre - pre.mean()) / (pre.std() + EPS)
    assert gdpo.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert gdpo[3] == pytest.approx(2 * gdpo[1].item(), rel=1e-4)  # B's winner stays ahead of A's
    assert not torch.allclose(gdpo[:2], gdpo[2:])


def test_hand_computed_group_of_three_with_weights_and_ranks():
    # one prompt, G = 3, two rewards, two ranks
    r = torch.tensor([[[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]],     # reward 1: varies at rank 1 only
                      [[0.0, 1.0], [0.0, 2.0], [3.0, 3.0]]])    # reward 2
    grpo = decoupled_advantages(r, 3, weights=[1.0, 0.5], mode="grpo")
    # rank 1: s = (1, 2, 4.5), mean 2.5, unbiased std sqrt(3.25); rank 2: s = (5.5, 6, 6.5), std 0.5
    assert grpo[:, 0].tolist() == pytest.approx([d / (math.sqrt(3.25) + EPS) for d in (-1.5, -0.5, 2.0)], abs=1e-6)
    assert grpo[:, 1].tolist() == pytest.approx([d / (0.5 + EPS) for d in (-0.5, 0.0, 0.5)], abs=1e-6)
    gdpo = decoupled_advantages(r, 3, weights=[1.0, 0.5], mode="gdpo")
    n1 = torch.tensor([-1.0, 0.0, 1.0]) / (1 + EPS)            # reward 1, rank 1 (std 1)
    n2 = torch.tensor([-1.0, -1.0, 2.0]) / (math.sqrt(3) + EPS)  # reward 2, rank 1 (std sqrt 3)
    m2 = torch.tensor([-1.0, 0.0, 1.0]) / (1 + EPS)            # reward 2, rank 2; reward 1 rank 2 is constant
    pre = torch.stack([n1 + 0.5 * n2, 0.5 * m2], dim=1)
    expected = (pre - pre.mean()) / (pre.std() + EPS)
    torch.testing.assert_close(gdpo, expected, atol=1e-6, rtol=0)
    # weights matter: dropping reward 2 changes the result
    assert not torch.allclose(gdpo, decoupled_advantages(r, 3, weights=[1.0, 0.0]))


def test_zero_variance_groups_and_single_rollouts_give_zero_not_nan():
    same = torch.full((2, 4, 3), 0.7)
    for mode in ("gdpo", "grpo"):
        out = decoupled_advantages(same, 2, mode=mode)
        assert out.shape == (4, 3) and torch.isfinite(out).all() and torch.count_nonzero(out) == 0
        single = decoupled_advantages(torch.rand(2, 4, 3), 1, mode=mode)
        assert torch.isfinite(single).all() and torch.count_nonzero(single) == 0
    # one constant group next to a varying one: the constant group gets the same value everywhere
    mixed = torch.tensor([[[1.0], [1.0], [0.0], [1.0]]])
    out = decoupled_advantages(mixed, 2)
    assert torch.isfinite(out).all() and out[0] == out[1]


def test_shape_and_argument_errors():
    r = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match="shaped"):
        decoupled_advantages(torch.zeros(4, 3), 2)
    with pytest.raises(ValueError, match="groups of 3"):
        decoupled_advantages(r, 3)
    with pytest.raises(ValueError, match="weights"):
        decoupled_advantages(r, 2, weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="mode"):
        decoupled_advantages(r, 2, mode="ppo")
    with pytest.raises(ValueError, match="group_size"):
        decoupled_advantages(r, 0)
    with pytest.raises(ValueError, match="NaN"):
        decoupled_advantages(torch.full((1, 2, 1), float("nan")), 2)
    with pytest.raises(TypeError):
        decoupled_advantages(np.zeros((1, 2, 1)), 2)


# --------------------------------------------------------------------------------------------
# token alignment


@pytest.fixture(scope="module")
def tokenizer():
    from safecrs_core.train.models import load_tokenizer
    return load_tokenizer("tiny-smollm2")


COMPLETION = ("<reasoning>The user avoids gore.\n1. Saw (2004) is out.\n- Heat (1995)\nSo family films.</reasoning>\n"
              "<solution>\nToy Story (1995)\nAmélie (2001) 🎬\nFinding Nemo (2003)\nUp (2009)\n</solution>")


def test_token_ranks_match_parser_spans_and_reasoning_does_not_shift(tokenizer):
    ids = tokenizer(COMPLETION, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    parsed = parse_completion(COMPLETION, tokenizer=tokenizer, k=10)
    assert [it.title for it in parsed] == ["Toy Story", "Amélie", "Finding Nemo", "Up"]
    ranks = token_ranks(parsed, tokenizer, ids, COMPLETION)
    assert len(ranks) == len(ids) and ranks[-1] == -1  # end-of-turn token
    for item in parsed:
        s, e = item.token_span
        assert (ranks[s:e] == item.rank - 1).all()
    assert (ranks >= 0).sum() == sum(e - s for s, e in (it.token_span for it in parsed))
    sol_start = COMPLETION.index("<solution>")
    _, offsets = token_char_offsets(tokenizer, ids)
    before = [t for t, (a, b) in enumerate(offsets) if b <= sol_start]
    assert before and (ranks[before] == -1).all()  # reasoning lines, even list-like ones, get no rank
    # the same list without reasoning gets the same ranks on its item tokens
    bare = COMPLETION[COMPLETION.index("<solution>"):]
    bare_ids = tokenizer(bare, add_special_tokens=False)["input_ids"]
    bare_ranks = token_ranks(parse_completion(bare, k=10), tokenizer, bare_ids, bare)
    assert sorted(bare_ranks[bare_ranks >= 0].tolist()) == sorted(ranks[ranks >= 0].tolist())


def test_token_char_offsets_cover_multibyte_characters(tokenizer):
    text = "Amélie (2001) 🎬 ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoded, offsets = token_char_offsets(tokenizer, ids)
    assert decoded == text and len(offsets) == len(ids)
    assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
    assert all(a <= b for a, b in offsets) and all(offsets[i][1] <= offsets[i + 1][0] or offsets[i] == offsets[i + 1]
                                                   for i in range(len(offsets) - 1))


def test_token_ranks_text_shift_and_mismatch(tokenizer):
    text = "<solution>\nUp (2009)\n</solution>"
    ids = tokenizer("  " + text, add_special_tokens=False)["input_ids"]
    parsed = parse_completion(text, k=3)
    shifted = token_ranks(parsed, tokenizer, ids, text)  # the parser saw the stripped text
    assert (shifted == 0).sum() > 0
    assert (token_ranks(parsed, tokenizer, ids, "something else") == -1).all()


def test_token_advantages():
    adv = torch.tensor([[1.0, -1.0, 3.0], [0.0, 2.0, 4.0]])
    ranks = [np.array([-1, 0, 0, 1, -1, 5]), np.array([2, 2])]
    out = token_advantages(adv, ranks, width=7)
    seq = sequence_advantages(adv)
    assert seq.tolist() == [1.0, 2.0]
    assert out.tolist() == [[1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0], [4.0, 4.0, 2.0, 2.0, 2.0, 2.0, 2.0]]
    with pytest.raises(ValueError):
        token_advantages(adv, ranks[:1], width=3)


# --------------------------------------------------------------------------------------------
# trainer (tiny model)


@pytest.fixture(scope="module")
def catalog_oracle():
    d = Path(os.environ["SAFECRS_DATA_DIR"])
    if not d.is_dir():
        pytest.skip(f"data directory {d} not found (set SAFECRS_DATA_DIR)")
    from safecrs_core.data.catalog import load_catalog
    from safecrs_core.safety.oracle import load_oracle
    return load_catalog(), load_oracle()


ROWS = [{"id": f"c{i}", "turns": [{"role": "user", "text": "A fun family film, no gore please."}],
         "trait": "anti_gore", "targets": [{"item_id": "tt0266543"}], "seen": []} for i in range(2)]
# completions the fake policy "samples", alternating within each group of two
FIXED = ["<solution>\nFinding Nemo (2003)\nUp (2009)\n</solution>",
         "<reasoning>gore is fine?</reasoning>\n<solution>\nSaw (2004)\nFinding Nemo (2003)\nHostel (2005)\n</solution>"]


def _fixed_generation(trainer, tok):
    ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in FIXED]
    trainer._generate_single_turn = lambda prompt_ids, *a, **kw: ([ids[i % 2] for i in range(len(prompt_ids))], None)


def _capture_advantages(trainer):
    seen = []
    real = trainer._compute_loss

    def compute(model, inputs):
        seen.append({k: inputs[k].detach().clone() for k in ("advantages", "completion_ids", "completion_mask")})
        return real(model, inputs)
    trainer._compute_loss = compute
    return seen


@pytest.fixture(scope="module")
def tiny():
    from safecrs_core.train.models import load_model
    return load_model("tiny-smollm2", device="cpu")


def test_trainer_rank_level_steps_change_weights(catalog_oracle, tiny, tmp_path):
    cat, orc = catalog_oracle
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    params = GDPOParams(k=3, num_generations=2, per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3,
                        max_completion_length=48, lora=False, save_steps=1000, seed=0)
    trainer = build_trainer(params, model, tok, ROWS, cat, orc, tmp_path / "out")
    assert isinstance(trainer, SafeGDPOTrainer) and trainer.mode == "gdpo" and trainer.beta == 1e-3
    _fixed_generation(trainer, tok)
    seen = _capture_advantages(trainer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(changed) == len(before)

    # the loss saw per-token advantages: item k's tokens carry rank k's advantage
    batch = seen[0]
    adv, cids = batch["advantages"], batch["completion_ids"]
    assert adv.dim() == 2 and adv.shape == cids.shape
    rr = trainer.rank_rewards.last
    rank_adv = decoupled_advantages(rr.rewards, 2)  # one group of two: recompute in trl's order
    for row in range(cids.size(0)):
        ids = cids[row][batch["completion_mask"][row].bool()].tolist()
        text = tok.decode(ids, skip_special_tokens=True)
        i = FIXED.index(text)
        j = rr.texts.index(text)
        ranks = token_ranks(rr.parsed[j], tok, ids, text)
        for t, rk in enumerate(ranks):
            want = rank_adv[j, rk] if rk >= 0 else rank_adv[j].mean()
            assert adv[row, t].item() == pytest.approx(want.item(), abs=1e-5)
        if i == 1:  # Saw at rank 1 is unsafe: its tokens get a negative advantage
            assert adv[row, ranks == 0].max() < 0
    logs = trainer.state.log_history[0]
    assert logs["rank_rewards/unsafe_items"] == 2 and logs["rank_advantages/misaligned"] == 0
    assert 0 < logs["rank_advantages/item_token_frac"] < 1


def test_trainer_sequence_level_is_trl_normalize_then_sum(catalog_oracle, tiny, tmp_path):
    cat, orc = catalog_oracle
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    params = GDPOParams(k=3, level="sequence", use_count=False, num_generations=2, per_device_train_batch_size=2,
                        max_steps=1, learning_rate=1e-3, max_completion_length=48, lora=True, lora_r=4,
                        save_steps=1000, reward_weights=(1.0, 2.0))
    trainer = build_trainer(params, model, tok, ROWS, cat, orc, tmp_path / "out")
    assert trainer.args.multi_objective_aggregation == "normalize_then_sum"
    _fixed_generation(trainer, tok)
    seen = _capture_advantages(trainer)
    trainer.train()
    adv = seen[0]["advantages"]
    assert adv.dim() == 1  # trl's own per-sequence advantages
    rr = trainer.rank_rewards.last
    seq = torch.stack([rr.sequence(n) for n in rr.names]).unsqueeze(-1)  # (R, N, 1)
    ours = decoupled_advantages(seq, 2, weights=[1.0, 2.0])[:, 0]
    order = [rr.texts.index(tok.decode(c[m.bool()].tolist(), skip_special_tokens=True))
             for c, m in zip(seen[0]["completion_ids"], seen[0]["completion_mask"])]
    assert adv.tolist() == pytest.approx(ours[order].tolist(), abs=1e-5)


def test_train_gdpo_stage_is_cached_and_loads(catalog_oracle, artifacts_root):
    cat, orc = catalog_oracle
    params = GDPOParams(k=2, num_generations=2, per_device_train_batch_size=2, max_steps=1,
                        max_completion_length=4, lora=True, lora_r=2, save_steps=1)
    from safecrs_core.train.gdpo import gdpo_stage_dir

    where = gdpo_stage_dir(params, "tiny-smollm2", ROWS)  # found without building
    assert not where.exists()
    path = train_gdpo(params, "tiny-smollm2", ROWS, catalog=cat, oracle=orc, log=None)
    assert path == where and path.parent.name == "gdpo" and (path / "DONE.json").is_file()
    assert (path / "model" / "adapter_config.json").is_file() and (path / "log_history.json").is_file()
    assert not any(p.name.endswith(".checkpoints") for p in path.parent.iterdir())
    assert train_gdpo(params, "tiny-smollm2", ROWS, catalog=cat, oracle=orc, log=None) == path  # cached
    model, tok = load_gdpo_model(path, device="cpu")
    assert model.config.vocab_size == len(tok) and not hasattr(model, "peft_config")


def test_params_validation():
    with pytest.raises(ValueError):
        GDPOParams(mode="ppo")
    with pytest.raises(ValueError):
        GDPOParams(level="token")
    with pytest.raises(ValueError):
        GDPOParams(use_count=False, reward_weights=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        GDPOParams(num_generations=3, per_device_train_batch_size=4)
    p = GDPOParams(mode="grpo")
    assert p.to_params()["mode"] == "grpo" and p.reward_names == ("relevance", "safety", "count")
    assert p.grpo_config("/tmp/x").multi_objective_aggregation == "sum_then_normalize"


class _Interrupted(Exception):
    pass


def test_an_interrupted_gdpo_run_resumes_to_the_uninterrupted_result(catalog_oracle, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    from safecrs_core.pipeline import is_done

    cat, orc = catalog_oracle
    params = GDPOParams(k=2, num_generations=2, per_device_train_batch_size=2, max_steps=3,
                        max_completion_length=6, lora=True, lora_r=2, save_steps=1, temperature=1.0)

    class StopAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 1:
                raise _Interrupted

    def run(root, callbacks=None):
        monkeypatch.setenv("SAFECRS_ARTIFACTS", str(root))
        return train_gdpo(params, "tiny-smollm2", ROWS, catalog=cat, oracle=orc, log=None, callbacks=callbacks)

    whole = run(tmp_path / "a")
    with pytest.raises(_Interrupted):
        run(tmp_path / "b", [StopAfterFirstSave()])
    assert not [p for p in (tmp_path / "b" / "gdpo").iterdir() if is_done(p)]  # nothing looks complete
    resumed = run(tmp_path / "b")
    assert resumed.name == whole.name
    from safetensors.torch import load_file
    a = load_file(whole / "model" / "adapter_model.safetensors")
    b = load_file(resumed / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = lambda d: [(h["step"], round(h["reward"], 6)) for h in json.loads((d / "log_history.json").read_text())  # noqa: E731
                       if "reward" in h]
    assert steps(resumed)[-1] == steps(whole)[-1] and steps(whole)[-1][0] == 3

"""Grounded decoding: the token trie, the processor's grammar, the universe and its use in
generation, evaluation and Safe-GDPO rollouts (tiny model)."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import ref
from safecrs_core.train import grounding as GR
from safecrs_core.train.prompts import parse_completion


@pytest.fixture(scope="module")
def tok():
    from safecrs_core.train.models import load_tokenizer
    return load_tokenizer("tiny-smollm2")


@pytest.fixture(scope="module")
def tiny():
    from safecrs_core.train.models import load_model
    return load_model("tiny-smollm2", device="cpu")


TITLES = ["Heat (1995)", "Heathers (1988)", "Saw (2004)", "Saw II (2005)", "Up (2009)", "Alien (1979)",
          "Aliens (1986)", "Jaws (1975)", "Finding Nemo (2003)", "Toy Story (1995)", "Toy Story 2 (1999)",
          "Tron (1982)"]


class FakeCatalog:
    """Display titles are the ids themselves."""

    def display(self, i):
        return i

    def __contains__(self, i):
        return i in TITLES


def _drive(proc, tok, pick, steps=120):
    """Run ``proc`` like generate does, choosing each row's token with ``pick(r, allowed)``;
    returns the decoded completions."""
    n = len(proc.rows)
    ids = torch.zeros((n, 1), dtype=torch.long)
    vocab = len(tok)
    out = [[] for _ in range(n)]
    done = [False] * n
    for step in range(steps):
        scores = proc(ids, torch.zeros((n, vocab)))
        nxt = []
        for r in range(n):
            allowed = torch.isfinite(scores[r]).nonzero().flatten().tolist()
            t = tok.pad_token_id if done[r] else pick(r, step, allowed)
            assert done[r] or t in allowed
            if not done[r]:
                out[r].append(t)
                done[r] = t == tok.eos_token_id
            nxt.append(t)
        ids = torch.cat([ids, torch.tensor(nxt).unsqueeze(1)], dim=1)
        if all(done):
            break
    return [tok.decode(o, skip_special_tokens=True) for o in out], done


def test_token_trie_paths_counts_and_prefix_errors(tok):
    tt = GR.TitleTokens(tok)
    trie = tt.trie(TITLES)
    assert len(trie) == len(TITLES) and trie.count[0] == len(TITLES)
    for t in TITLES:
        nodes = trie.path[t]
        assert trie.terminal[nodes[-1]] == t
        seq = tok(t + "\n", add_special_tokens=False)["input_ids"]
        assert len(nodes) == len(seq)
    with pytest.raises(ValueError, match="prefix|extends"):
        GR.TokenTrie([[1, 2], [1, 2, 3]], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        GR.TokenTrie([[]], ["a"])


def test_tokenization_alone_equals_inside_a_completion(tok):
    assert GR.check_tokenization(tok, TITLES + ["The Last Samurai (2003)", "Amélie (2001)", "8½ (1963)"]) == 1.0


def test_greedy_like_walk_writes_only_universe_titles_without_repeats_or_seen_items(tok):
    trie = GR.TitleTokens(tok).trie(TITLES)
    proc = GR.GroundedLogitsProcessor(tok, [trie, trie], blocked=[["Heat (1995)", "Saw (2004)"], []],
                                      min_items=10, max_items=10)
    # always the smallest allowed token: a deterministic walk that would repeat if it could
    texts, done = _drive(proc, tok, lambda r, s, allowed: min(allowed))
    assert all(done)
    for r, text in enumerate(texts):
        parsed = parse_completion(text)
        names = [it.display for it in parsed]
        assert parsed.has_solution_tags and not parsed.truncated
        assert len(names) == 10 == len(set(names)) and set(names) <= set(TITLES)
        assert text.startswith("<solution>\n") and text.rstrip().endswith("</solution>")
    first = [it.display for it in parse_completion(texts[0])]
    assert "Heat (1995)" not in first and "Saw (2004)" not in first
    assert proc.written(0) == 10


def test_close_is_allowed_after_min_items_and_forced_at_max(tok):
    trie = GR.TitleTokens(tok).trie(TITLES)
    close = tok("</solution>", add_special_tokens=False)["input_ids"][0]

    def pick(r, step, allowed):  # close as soon as allowed
        return close if close in allowed else max(allowed)
    for lo, hi, want in ((2, 5, 2), (0, 3, 0), (4, 4, 4)):
        proc = GR.GroundedLogitsProcessor(tok, [trie], min_items=lo, max_items=hi)
        texts, done = _drive(proc, tok, pick)
        assert done[0] and len(parse_completion(texts[0])) == want

    never = lambda r, s, allowed: max(a for a in allowed if a != close) if set(allowed) - {close} else allowed[0]  # noqa: E731
    proc = GR.GroundedLogitsProcessor(tok, [trie], min_items=0, max_items=3)
    texts, done = _drive(proc, tok, never)
    assert done[0] and len(parse_completion(texts[0])) == 3
    # a universe smaller than k: the list closes when every title is used
    small = GR.TitleTokens(tok).trie(TITLES[:2])
    proc = GR.GroundedLogitsProcessor(tok, [small], min_items=10, max_items=10)
    texts, done = _drive(proc, tok, never)
    assert done[0] and len(parse_completion(texts[0])) == 2


def test_reasoning_block_is_free_then_closed_by_budget_or_by_the_model(tok):
    trie = GR.TitleTokens(tok).trie(TITLES)
    reason = tok("<reasoning>", add_special_tokens=False)["input_ids"]
    word = tok(" gore", add_special_tokens=False)["input_ids"][0]
    proc = GR.GroundedLogitsProcessor(tok, [trie], min_items=2, max_items=2, reasoning_tokens=5)

    def pick(r, step, allowed):
        if step < len(reason):
            assert reason[step] in allowed
            return reason[step]
        if len(allowed) >= len(tok) - 1:  # inside the free reasoning block: anything but end-of-turn
            assert tok.eos_token_id not in allowed
            return word
        return min(allowed)
    texts, done = _drive(proc, tok, pick)
    parsed = parse_completion(texts[0])
    w = tok.decode([word])
    assert done[0] and parsed.has_reasoning and parsed.reasoning == (w * 5).strip()
    assert len(parsed) == 2
    # the model closes its reasoning itself: the solution follows at once
    close = tok("</reasoning>", add_special_tokens=False)["input_ids"]
    proc = GR.GroundedLogitsProcessor(tok, [trie], min_items=1, max_items=1, reasoning_tokens=50)
    script = reason + [word] + close

    def pick2(r, step, allowed):
        return script[step] if step < len(script) else min(allowed)
    texts, done = _drive(proc, tok, pick2)
    assert texts[0].startswith(f"<reasoning>{w}</reasoning>\n<solution>\n") and len(parse_completion(texts[0])) == 1
    # without a reasoning budget the answer must open with <solution>
    proc = GR.GroundedLogitsProcessor(tok, [trie], reasoning_tokens=0)
    scores = proc(torch.zeros((1, 1), dtype=torch.long), torch.zeros((1, len(tok))))
    assert torch.isfinite(scores[0]).sum() == 1


def test_a_row_that_generate_finished_is_left_alone(tok):
    """A stop string or the end-of-turn token inside a free reasoning block ends a row early;
    generate then pads it, and the processor must not walk its trie with the padding."""
    trie = GR.TitleTokens(tok).trie(TITLES)
    proc = GR.GroundedLogitsProcessor(tok, [trie, trie], reasoning_tokens=8)
    opener = tok("<solution>\n", add_special_tokens=False)["input_ids"]
    ids = torch.zeros((2, 1), dtype=torch.long)
    for t in opener:
        proc(ids, torch.zeros((2, len(tok))))
        ids = torch.cat([ids, torch.tensor([[t], [t]])], dim=1)
    scores = proc(ids, torch.zeros((2, len(tok))))
    assert torch.isfinite(scores).sum(dim=1).tolist()[0] < len(tok)  # a title line is open
    first = torch.isfinite(scores[0]).nonzero().flatten()[0].item()
    ids = torch.cat([ids, torch.tensor([[tok.pad_token_id], [first]])], dim=1)  # row 0 was finished
    scores = proc(ids, torch.zeros((2, len(tok))))
    assert torch.isfinite(scores[0]).all() and not torch.isfinite(scores[1]).all()
    assert proc.rows[0].phase == GR.DONE and proc.rows[1].phase == GR.TITLE


def test_processor_rejects_beam_search_and_wrong_batches(tok):
    trie = GR.TitleTokens(tok).trie(TITLES)
    proc = GR.GroundedLogitsProcessor(tok, [trie])
    with pytest.raises(ValueError, match="rows"):
        proc(torch.zeros((2, 1), dtype=torch.long), torch.zeros((2, len(tok))))
    proc(torch.zeros((1, 1), dtype=torch.long), torch.zeros((1, len(tok))))
    with pytest.raises(RuntimeError, match="one new token"):
        proc(torch.zeros((1, 3), dtype=torch.long), torch.zeros((1, len(tok))))
    with pytest.raises(ValueError, match="min_items"):
        GR.GroundedLogitsProcessor(tok, [trie], min_items=5, max_items=3)


def test_settings_validate_and_key(tok):
    g = GR.Grounding.from_value({"mode": "universe", "n_popular": 10})
    assert g.params(["a", "b"])["universe_size"] == 2 and g.params(["a"]) != g.params(["b"])
    assert GR.Grounding.from_value(None) is None and GR.Grounding.from_value(g) is g
    with pytest.raises(ValueError, match="unknown grounding"):
        GR.Grounding.from_value({"mode": "universe", "size": 3})
    with pytest.raises(ValueError, match="mode"):
        GR.Grounding(mode="everything")
    with pytest.raises(ValueError, match="min_items"):
        GR.Grounding(min_items=-1)


def test_candidates_mode_keeps_each_row_to_its_own_candidates(tok):
    cands = [["Heat (1995)", "Saw (2004)", "Up (2009)"], ["Jaws (1975)", "Tron (1982)", "Alien (1979)"]]
    dec = GR.GroundedDecoder(GR.Grounding(mode="candidates", min_items=3), FakeCatalog(), tok, k=3,
                             candidates=lambda rows: [cands[int(r["id"])] for r in rows])
    rows = [{"id": "0", "seen": [ref("Saw (2004)")]}, {"id": "1", "seen": []}]
    texts, done = _drive(dec.processor(rows), tok, lambda r, s, allowed: max(allowed))
    assert [it.display for it in parse_completion(texts[0])] and all(done)
    assert {it.display for it in parse_completion(texts[0])} == {"Heat (1995)", "Up (2009)"}  # Saw was seen
    assert {it.display for it in parse_completion(texts[1])} == set(cands[1])


def test_universe_is_popular_plus_train_items_and_resolves(movies_world):
    cat, _, top = movies_world
    train = [{"targets": [ref("tt0266543")], "seen": [], "removed_targets": []}]
    uni = GR.universe_items(cat, train, n_popular=50)
    assert "tt0266543" in uni and len(uni) <= 51
    for i in uni:
        parsed = parse_completion(f"<solution>\n{cat.display(i)}\n</solution>", resolver=cat)
        assert parsed[0].item_id == i
    # nothing from outside the train rows and the popular head
    dated = [i for i in top if i in cat.items.index and cat.items.loc[i, "year"] is not None][:50]
    assert set(uni) <= set(dated) | {"tt0266543"}
    with pytest.raises(ValueError, match="n_popular"):
        GR.universe_items(cat, train, n_popular=-1)


def test_generate_with_the_tiny_model_writes_grounded_lists(tiny, movies_world):
    from safecrs_core.train.models import generate
    from safecrs_core.train.prompts import build_messages

    model, tok = tiny
    cat, _, _ = movies_world
    uni = GR.universe_items(cat, [], n_popular=200)
    dec = GR.GroundedDecoder(GR.Grounding(min_items=10), cat, tok, k=10, universe=uni)
    rows = [{"id": str(i), "seen": [ref(uni[0])],
             "turns": [{"role": "user", "text": f"Something like film number {i}."}]} for i in range(3)]
    prompts = [build_messages(r["turns"]) for r in rows]
    texts = generate(model, tok, prompts, max_new_tokens=160, batch_size=2, progress=False,
                     processor=lambda batch: dec.processor([rows[i] for i in batch]), stop=["</solution>"])
    for text in texts:
        parsed = parse_completion(text, resolver=cat)
        assert len(parsed) == 10 and all(it.item_id in set(uni) - {uni[0]} for it in parsed)
    # free decoding of the random tiny model names nothing
    free = generate(model, tok, prompts[:1], max_new_tokens=20, batch_size=1, progress=False)
    assert len(parse_completion(free[0], resolver=cat)) < 10


@pytest.mark.parametrize("jump_forward", [False, True])
def test_gdpo_rollouts_are_grounded(tiny, movies_world, tmp_path, jump_forward, monkeypatch):
    from safecrs_core.train.gdpo import GDPOParams, build_trainer

    cat, orc, _ = movies_world
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    rows = [{"id": f"c{i}", "turns": [{"role": "user", "text": "A fun family film, no gore please."}],
             "trait": "anti_gore", "targets": [ref("tt0266543")], "seen": [], "removed_targets": []}
            for i in range(2)]
    params = GDPOParams(k=3, num_generations=2, per_device_train_batch_size=2, max_steps=1, learning_rate=1e-3,
                        max_completion_length=40, lora=False, save_steps=1000, seed=0,
                        grounding={"n_popular": 100, "min_items": 3, "jump_forward": jump_forward})
    assert params.to_params()["grounding"]["n_popular"] == 100
    assert "grounding" not in GDPOParams().to_params()
    trainer = build_trainer(params, model, tok, rows, cat, orc, tmp_path / "out")
    assert trainer.decoder is not None
    calls = []
    real = GR.jump_forward_generate
    monkeypatch.setattr(GR, "jump_forward_generate", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    trainer.train()
    assert bool(calls) is jump_forward  # sampled rollouts went through jump-forward decoding when asked
    assert all(kw["do_sample"] and kw["temperature"] == params.temperature for kw in calls)
    rr = trainer.rank_rewards.last
    assert all(len(p) == 3 for p in rr.parsed)  # every rollout is a grounded list of k items
    uni = set(trainer.decoder.universe)
    assert all(it.item_id in uni for p in rr.parsed for it in p)
    assert trainer.state.log_history[0]["rank_rewards/list_length_mean"] == 3


def _feed(proc, tok, text):
    """Feed ``text``'s tokens to ``proc`` one by one, as generate does (row 0 only)."""
    ids = torch.zeros((1, 1), dtype=torch.long)
    vocab = len(tok)
    proc(ids, torch.zeros((1, vocab)))
    for t in tok(text, add_special_tokens=False)["input_ids"]:
        ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
        proc(ids, torch.zeros((1, vocab)))


def test_exclude_named_keeps_the_list_to_what_the_reasoning_says(tok):
    trie = GR.TitleTokens(tok).trie(TITLES)
    text = "<reasoning>The user is sensitive to Gore. Leaving out: Saw (2004) — risk 1.00; Alien (1979).</reasoning>\n<solution>\n"
    for on in (True, False):
        proc = GR.GroundedLogitsProcessor(tok, [trie], min_items=1, max_items=10, reasoning_tokens=80,
                                          exclude_named=on)
        _feed(proc, tok, text)
        row = proc.rows[0]
        assert row.phase == GR.LINE
        saw, alien, heat = (trie.path[d][-1] for d in ("Saw (2004)", "Alien (1979)", "Heat (1995)"))
        assert proc._open(row, heat)
        assert proc._open(row, saw) is not on and proc._open(row, alien) is not on
        assert row.named == (["Saw (2004)", "Alien (1979)"] if on else [])
        assert proc._open(row, trie.path["Saw II (2005)"][-1])  # only the title written out in full
    with pytest.raises(ValueError, match="exclude_named"):
        GR.Grounding(exclude_named=True)  # no reasoning block to read
    assert "exclude_named" not in GR.grounding_settings({"reasoning_tokens": 8})
    assert GR.grounding_settings({"reasoning_tokens": 8, "exclude_named": True})["exclude_named"] is True


@pytest.mark.parametrize("reasoning,max_new", [(0, 90), (12, 120), (12, 30)])
def test_jump_forward_writes_what_generate_writes_in_fewer_passes(tiny, movies_world, reasoning, max_new):
    """Greedy jump-forward decoding chooses the tokens generate chooses (float64, so the wider
    passes cannot flip a choice by rounding), also when a row hits max_new_tokens mid-title,
    with prompts of different lengths (left padding) in one batch; it runs fewer passes."""
    from safecrs_core.train.models import generate
    from safecrs_core.train.prompts import build_messages

    model, tok = copy.deepcopy(tiny[0]).double(), tiny[1]
    cat, _, _ = movies_world
    uni = GR.universe_items(cat, [], n_popular=80)
    rows = [{"id": str(i), "seen": [ref(uni[i])],
             "turns": [{"role": "user", "text": "A film please. " * (1 + 3 * i)}]} for i in range(3)]
    prompts = [build_messages(r["turns"]) for r in rows]
    passes = []
    hook = model.get_decoder().register_forward_hook(lambda *a: passes.append(1))
    texts, counts = {}, {}
    for jump in (False, True):
        dec = GR.GroundedDecoder(GR.Grounding(min_items=3, reasoning_tokens=reasoning, jump_forward=jump), cat,
                                 tok, k=5, universe=uni)
        passes.clear()
        texts[jump] = generate(model, tok, prompts, max_new_tokens=max_new, batch_size=3, progress=False,
                               processor=lambda batch: dec.processor([rows[i] for i in batch]))
        counts[jump] = len(passes)
    hook.remove()
    assert texts[True] == texts[False]
    # sft.evaluate_model asks for the KV cache explicitly; jump-forward always keeps one
    dec = GR.GroundedDecoder(GR.Grounding(min_items=3, reasoning_tokens=reasoning, jump_forward=True), cat,
                             tok, k=5, universe=uni)
    run = lambda **kw: generate(model, tok, prompts, max_new_tokens=max_new, batch_size=3, progress=False,  # noqa: E731
                                processor=lambda batch: dec.processor([rows[i] for i in batch]), **kw)
    assert run(use_cache=True) == texts[True]
    with pytest.raises(NotImplementedError, match="use_cache"):
        run(use_cache=False)
    if max_new >= 90:
        assert all(len(parse_completion(t, resolver=cat)) == 5 for t in texts[True])
    assert counts[True] < counts[False]
    assert "jump_forward" not in GR.grounding_settings({"min_items": 3})
    assert GR.Grounding(jump_forward=True).params()["jump_forward"] is True
    with pytest.raises(ValueError, match="jump_forward"):
        GR.Grounding(jump_forward=1)

def test_identical_prompts_share_one_prompt_pass(tiny, movies_world, monkeypatch):
    """The G copies of a prompt (an RL group) are fed once: the first pass holds each distinct
    prompt once, and sampled answers are the same as with one prompt pass per row (float64)."""
    import functools

    from safecrs_core.train.models import generate
    from safecrs_core.train.prompts import build_messages

    model, tok = copy.deepcopy(tiny[0]).double(), tiny[1]
    cat, _, _ = movies_world
    uni = GR.universe_items(cat, [], n_popular=80)
    base = [{"id": str(i), "seen": [ref(uni[i])],
             "turns": [{"role": "user", "text": "A film please. " * (1 + 3 * i)}]} for i in range(2)]
    rows = [base[i] for i in (0, 1, 0, 0, 1)]
    prompts = [build_messages(r["turns"]) for r in rows]
    dec = GR.GroundedDecoder(GR.Grounding(min_items=3, reasoning_tokens=8, jump_forward=True), cat, tok, k=4,
                             universe=uni)
    widths = []
    hook = model.get_decoder().register_forward_hook(lambda _m, _a, kw, *o: widths.append(kw["input_ids"].shape),
                                                     with_kwargs=True)
    real = GR.jump_forward_generate
    texts = {}
    for share in (True, False):
        monkeypatch.setattr(GR, "jump_forward_generate", functools.partial(real, share_prompts=share))
        widths.clear()
        torch.manual_seed(3)
        texts[share] = generate(model, tok, prompts, max_new_tokens=60, batch_size=5, progress=False, greedy=False,
                                temperature=1.0, processor=lambda batch: dec.processor([rows[i] for i in batch]))
        assert widths[0][0] == (2 if share else 5)  # the prompt pass
        assert all(w[0] <= 5 for w in widths[1:])
    hook.remove()
    assert texts[True] == texts[False]
    assert len(set(texts[True])) > 2  # the copies were sampled apart
    assert GR._unique_rows(torch.tensor([[1, 2], [3, 4]]), torch.ones(2, 2, dtype=torch.long)) == (None, None)
    u, c = GR._unique_rows(torch.tensor([[0, 2], [3, 4], [0, 2], [1, 2]]),
                           torch.tensor([[0, 1], [1, 1], [0, 1], [1, 1]]))
    assert u.tolist() == [0, 1, 3] and c.tolist() == [0, 1, 0, 2]  # same ids, other mask: distinct


class GenreCatalog(FakeCatalog):
    """FakeCatalog with catalog genres (``items``), as :func:`~safecrs_core.train.prompts.screen_line` reads them."""

    def __init__(self):
        import pandas as pd
        self.items = pd.DataFrame({"genres": [["horror", "thriller"] if "Saw" in t else ["animation"] if t == "Up (2009)"
                                              else None for t in TITLES]}, index=TITLES)


def _feed_allowed(proc, tok, text):
    """Feed ``text``'s tokens to ``proc`` (row 0) and return how many of them the grammar did not allow."""
    ids = torch.zeros((1, 1), dtype=torch.long)
    scores = proc(ids, torch.zeros((1, len(tok))))
    refused = 0
    for t in tok(text, add_special_tokens=False)["input_ids"]:
        refused += not bool(torch.isfinite(scores[0, t]))
        ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
        scores = proc(ids, torch.zeros((1, len(tok))))
    return refused


def test_screen_block_is_a_grammar_path_and_its_yes_lines_leave_the_list(tok):
    """A Safe-SFT target with a screen block is a path of the grammar token for token (so training
    and decoding agree); a candidate screened ``yes`` can no longer be listed; the model writes
    only the verdicts, on the candidates' own lines in prompt order."""
    from safecrs_core.train.prompts import format_completion, screen_line

    cat, cands = GenreCatalog(), ["Heat (1995)", "Saw (2004)", "Up (2009)", "Jaws (1975)"]
    assert screen_line(cat, "Saw (2004)") == "Saw (2004) [horror, thriller]:"
    assert screen_line(cat, "Heat (1995)") == "Heat (1995):"
    dec = GR.GroundedDecoder(GR.Grounding(mode="candidates", min_items=1, reasoning_tokens=40, screen=True), cat, tok,
                             k=3, candidates=lambda rows: [cands for _ in rows])
    text = format_completion(["Heat (1995)", "Up (2009)", "Jaws (1975)"], "The user is sensitive to Gore.",
                             [(screen_line(cat, c), c == "Saw (2004)") for c in cands]) + tok.eos_token
    proc = dec.processor([{"id": "0", "seen": []}])
    assert _feed_allowed(proc, tok, text) == 0
    row = proc.rows[0]
    assert row.phase == GR.DONE and row.screened == 4 and row.screened_out == ["Saw (2004)"]
    assert not proc._open(row, row.trie.path["Saw (2004)"][-1])
    # the model decides only the verdicts: screening every candidate out leaves an empty list
    yes = tok(" yes", add_special_tokens=False)["input_ids"][0]
    for reasoning in ("The user is sensitive to Gore.</reasoning>", "The user is sensitive to Gore.</reasoning>\n",
                      "The user is sensitive"):  # closed without and with a line break, or by the budget
        proc = GR.GroundedDecoder(GR.Grounding(mode="candidates", min_items=0, reasoning_tokens=6, screen=True),
                                  cat, tok, k=3, candidates=lambda rows: [cands for _ in rows]).processor([{"seen": []}])
        script = tok("<reasoning>" + reasoning, add_special_tokens=False)["input_ids"]
        texts, done = _drive(proc, tok, lambda r, s, allowed: script[s] if s < len(script) and script[s] in allowed
                             else yes if yes in allowed else allowed[0], steps=200)
        assert done[0] and proc.rows[0].screened_out == cands, texts[0]
        assert "<screen>\nHeat (1995): yes\nSaw (2004) [horror, thriller]: yes\n" in texts[0]
        assert parse_completion(texts[0]).items == [] and texts[0].endswith("<solution>\n</solution>")
    # screen_bias shifts the yes logit at a verdict, and nowhere else
    biased = GR.GroundedDecoder(GR.Grounding(mode="candidates", min_items=1, reasoning_tokens=40, screen=True,
                                             screen_bias=2.5), cat, tok, k=3,
                                candidates=lambda rows: [cands for _ in rows]).processor([{"seen": []}])
    head = text[:text.index("Heat (1995):") + len("Heat (1995):")]
    _feed(biased, tok, head)
    assert biased.rows[0].phase == GR.VERDICT
    scores = biased.apply(torch.zeros((1, len(tok))))[0]
    no, yes_ = biased.verdicts
    assert scores[yes_] == 2.5 and scores[no] == 0.0 and torch.isinf(scores).sum() == len(tok) - 2
    for t in tok(" no\n", add_special_tokens=False)["input_ids"]:
        biased.advance(0, t)
    assert biased.rows[0].phase == GR.FORCED and torch.isfinite(biased.apply(torch.zeros((1, len(tok))))[0]).sum() == 1
    assert GR.grounding_settings({"mode": "candidates", "reasoning_tokens": 8, "screen": True,
                                  "screen_bias": 2.5})["screen_bias"] == 2.5
    with pytest.raises(ValueError, match="screen_bias needs screen"):
        GR.Grounding(mode="candidates", reasoning_tokens=8, screen_bias=1.0)
    with pytest.raises(ValueError, match="screen"):
        GR.Grounding(mode="universe", reasoning_tokens=8, screen=True)
    with pytest.raises(ValueError, match="screen"):
        GR.Grounding(mode="candidates", screen=True)  # no reasoning block to follow
    assert "screen" not in GR.grounding_settings({"mode": "candidates", "reasoning_tokens": 8})


def test_jump_forward_writes_the_screen_block_generate_writes(tiny, movies_world):
    """With a screen block, jump-forward decoding (the forced screen lines in wide passes) writes
    what generate writes (float64), every candidate gets one verdict line in prompt order, and no
    candidate screened ``yes`` is listed."""
    import re

    from safecrs_core.train.models import generate
    from safecrs_core.train.prompts import build_messages, screen_line

    model, tok = copy.deepcopy(tiny[0]).double(), tiny[1]
    cat, _, _ = movies_world
    uni = GR.universe_items(cat, [], n_popular=40)
    cands = [uni[0:8], uni[8:16]]
    rows = [{"id": str(i), "seen": [], "turns": [{"role": "user", "text": "A film please. " * (1 + 3 * i)}]}
            for i in range(2)]
    prompts = [build_messages(r["turns"], k=4, candidates=[cat.display(c) for c in cands[i]]) for i, r in enumerate(rows)]
    texts = {}
    for jump in (False, True):
        dec = GR.GroundedDecoder(GR.Grounding(mode="candidates", min_items=0, reasoning_tokens=6, screen=True,
                                              jump_forward=jump), cat, tok, k=4,
                                 candidates=lambda rs: [cands[int(r["id"])] for r in rs])
        texts[jump] = generate(model, tok, prompts, max_new_tokens=400, batch_size=2, progress=False,
                               processor=lambda batch: dec.processor([rows[i] for i in batch]))
    assert texts[True] == texts[False]
    for text, ids in zip(texts[True], cands):
        block = text[text.index("<screen>\n") + 9:text.index("\n</screen>")].split("\n")
        assert [re.sub(r" (yes|no)$", "", line) for line in block] == [screen_line(cat, i) for i in ids]
        out = {cat.display(i) for i, line in zip(ids, block) if line.endswith(" yes")}
        assert not out & {it.display for it in parse_completion(text)}

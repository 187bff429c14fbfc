"""Seconds per training step: SafeGDPOTrainer (rank-level) vs trl's stock GRPOTrainer.

Both trainers get the same model weights, prompts, reward functions (the per-sequence functions of
one RankRewards), group size, batch, completion length and trl configuration; the stock trainer
uses trl's own sequence-level advantages, so the ratio is the cost of the rank-level advantages
and the token alignment. Completions are forced to the full ``--completion-length`` (generation
``min_new_tokens``) so both trainers process the same number of tokens. ``--fixed`` replaces
sampling in both trainers by realistic ten-item lists with reasoning (parser and alignment get
real work; generation time drops out, so the ratio is the worst case).

Runs alternate between the trainers (``--repeats`` times ``--steps`` steps each, so a busy machine
slows both alike) and the step time is trl's ``step_time`` metric, each trainer's very first step
dropped (warm-up); the script prints medians and their ratio (target: <= 1.15), plus the time
spent in the rank-level part per step (measured inside the step: the overhead itself).

    python scripts/bench_gdpo.py --model tiny-smollm2
    python scripts/bench_gdpo.py --model smollm2-135m-instruct --group-size 4 --completion-length 128
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIXED_LISTS = [
    ["Finding Nemo (2003)", "Up (2009)", "Paddington (2014)", "Toy Story (1995)", "Amélie (2001)",
     "Inside Man (2006)", "Ratatouille (2007)", "WALL·E (2008)", "Coco (2017)", "Inside Out (2015)"],
    ["Saw (2004)", "Hostel (2005)", "Heat (1995)", "Ronin (1998)", "The Town (2010)", "Collateral (2004)",
     "Finding Nemo (2003)", "Up (2009)", "Shrek (2001)", "Frozen (2013)"],
]


def rows(n: int) -> list[dict]:
    turns = [{"role": "user", "text": "Hi! I'd love a fun film for a family evening."},
             {"role": "assistant", "text": "Animated or live action?"},
             {"role": "user", "text": "Either. Something like Toy Story. Please, nothing gory: blood makes me faint."}]
    return [{"id": f"bench{i}", "turns": turns, "trait": "anti_gore", "targets": [{"item_id": "tt0266543"}],
             "seen": [{"item_id": "tt0114709"}]} for i in range(n)]


def fixed_completions(tok, length: int) -> list[list[int]]:
    from safecrs_core.train.prompts import format_completion
    out = []
    for j, items in enumerate(FIXED_LISTS):
        text = format_completion(items, reasoning="The user wants family films and avoids gore.\n"
                                                  "Saw (2004) would be a bad idea." if j else "Family films, no gore.")
        ids = tok(text, add_special_tokens=False)["input_ids"][:length - 1] + [tok.eos_token_id]
        out.append(ids)
    return out


def make_trainers(args, model, tok, cat, orc, workdir: Path):
    from trl import GRPOTrainer
    from transformers.trainer_callback import PrinterCallback

    from safecrs_core.train.gdpo import GDPOParams, SafeGDPOTrainer, build_dataset, reference_checkpoint

    params = GDPOParams(k=10, num_generations=args.group_size, per_device_train_batch_size=args.batch,
                        max_steps=args.steps, max_completion_length=args.completion_length, lora=not args.full,
                        learning_rate=1e-6, beta=1e-3, save_steps=10_000, seed=0)
    data = build_dataset(rows(max(args.batch // args.group_size, 1) * args.steps), k=params.k)
    overrides = dict(generation_kwargs={"min_new_tokens": args.completion_length}, save_strategy="no",
                     logging_steps=1)
    trainers = {}
    for name in ("stock", "safe"):
        m = copy.deepcopy(model)
        if args.full:
            reference_checkpoint(m, workdir / f"ref_{name}")
        cfg = params.grpo_config(workdir / name, **overrides)
        rr = params.rank_rewards(cat, orc)
        common = dict(args=cfg, train_dataset=data, processing_class=tok, peft_config=params.peft_config())
        if name == "stock":
            t = GRPOTrainer(m, reward_funcs=rr.reward_functions(), **common)
        else:
            t = SafeGDPOTrainer(m, rr, level="rank", **common)
        t.remove_callback(PrinterCallback)
        if args.fixed:
            ids = fixed_completions(tok, args.completion_length)
            t._generate_single_turn = (lambda prompt_ids, *a, _ids=ids, **kw:
                                       ([_ids[i % len(_ids)] for i in range(len(prompt_ids))], None))
        trainers[name] = t
    return trainers


def time_rank_part(trainer):
    """Wrap the trainer so the time of the rank-level part (after trl's own scoring) is recorded."""
    from trl import GRPOTrainer
    spent = []
    outer = trainer._generate_and_score_completions

    def timed(inputs):
        t0 = time.perf_counter()
        inner_box = {}
        real_inner = GRPOTrainer._generate_and_score_completions

        def inner(self, x):
            s = time.perf_counter()
            out = real_inner(self, x)
            inner_box["t"] = time.perf_counter() - s
            return out
        GRPOTrainer._generate_and_score_completions = inner
        try:
            out = outer(inputs)
        finally:
            GRPOTrainer._generate_and_score_completions = real_inner
        spent.append(time.perf_counter() - t0 - inner_box.get("t", 0.0))
        return out
    trainer._generate_and_score_completions = timed
    return spent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-smollm2")
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="completions per step (a multiple of the group size)")
    ap.add_argument("--completion-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1, help="steps per run")
    ap.add_argument("--repeats", type=int, default=6, help="alternating runs per trainer")
    ap.add_argument("--fixed", action="store_true", help="fixed realistic completions instead of sampling")
    ap.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    import transformers

    from safecrs_core.data.catalog import load_catalog
    from safecrs_core.train.models import default_device, load_model
    from safecrs_core.safety.oracle import load_oracle

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cat, orc = load_catalog(), load_oracle()
    model, tok = load_model(args.model)
    times = {"stock": [], "safe": []}
    with tempfile.TemporaryDirectory(prefix="bench-gdpo-") as d:
        trainers = make_trainers(args, model, tok, cat, orc, Path(d))
        rank_part = time_rank_part(trainers["safe"])
        for rep in range(args.repeats):
            for name in ("stock", "safe"):
                t = trainers[name]
                t.state.log_history.clear()
                t.train()
                steps = [h["step_time"] for h in t.state.log_history if "step_time" in h]
                times[name].extend(steps[1:] if rep == 0 else steps)  # the very first step warms up
                print(f"[{rep + 1}/{args.repeats}] {name}: " + ", ".join(f"{s:.2f}" for s in steps) + " s/step",
                      flush=True)
    stock, safe = statistics.median(times["stock"]), statistics.median(times["safe"])
    part = statistics.median(rank_part) if rank_part else float("nan")
    result = {"model": args.model, "device": str(default_device()), "torch_threads": torch.get_num_threads(),
              "group_size": args.group_size, "batch": args.batch, "completion_length": args.completion_length,
              "fixed_completions": args.fixed, "lora": not args.full, "steps_timed": len(times["safe"]),
              "stock_s_per_step": round(stock, 4), "safe_s_per_step": round(safe, 4),
              "ratio": round(safe / stock, 4), "rank_part_s_per_step": round(part, 4)}
    print(json.dumps(result, indent=2))
    print(f"SafeGDPOTrainer / GRPOTrainer seconds per step: {safe:.3f} / {stock:.3f} = {safe / stock:.3f} "
          f"(target <= 1.15; rank-level part {part * 1000:.1f} ms per step)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

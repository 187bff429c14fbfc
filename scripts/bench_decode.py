"""Decoding speed of SmolLM2-135M-Instruct: generated tokens per second against batch size, fp32
and bf16, free, grounded (:mod:`safecrs_core.train.grounding`) and grounded with jump-forward
decoding (:func:`~safecrs_core.train.grounding.jump_forward_generate`).

Prompts are real validation conversations of the book benchmark, trimmed to ``--prompt-tokens``
(oldest turns first, as evaluation does). Free decoding writes exactly ``--new-tokens`` tokens
per row; grounded decoding writes lists of at most ``--new-tokens`` tokens (a list that ends
early counts only the tokens written). The rate is generated tokens over the whole ``generate``
call (prompt pass included), the figure an evaluation run sees. Run it alone on an idle
machine::

    python scripts/bench_decode.py                       # batch 1 8 16 32 64, fp32 and bf16
    python scripts/bench_decode.py --batch 8 64 --dtypes fp32
    python scripts/bench_decode.py --mode candidates --prompt-tokens 384 --new-tokens 224 \
        --reasoning-tokens 96 --model artifacts/sft/<key> --batch 30 --dtypes fp32   # evaluation's setting

``--mode candidates`` puts ``--candidates`` neighbour candidates in every prompt (as the book's
LLM rows do) and grounds on them; ``universe`` grounds on the popular and training items.
``--model`` decodes with a trained ``sft`` or ``gdpo`` stage (adapter merged) instead of the base
model: a trained model writes the answer format (a reasoning block, lists that end), the base
model mostly does not.
"""
from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=256, help="prompts are trimmed to this many tokens")
    ap.add_argument("--n-popular", type=int, default=5000, help="universe: popular items plus the train split's")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--mode", default="universe", choices=["universe", "candidates"])
    ap.add_argument("--candidates", type=int, default=20, help="candidates per prompt in candidates mode")
    ap.add_argument("--reasoning-tokens", type=int, default=0, help="grounding's reasoning block (evaluation: 96)")
    ap.add_argument("--exclude-named", action="store_true", help="grounding's exclude_named (evaluation: on)")
    ap.add_argument("--model", default=None, help="an sft or gdpo stage folder (default: the base model)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from safecrs_core.benchmark import benchmark_for_profile
    from safecrs_core.data.catalog import load_catalog
    from safecrs_core.train.grounding import GroundedDecoder, Grounding, universe_items
    from safecrs_core.train.models import generate, load_model
    from safecrs_core.train.prompts import build_messages
    from safecrs_core.train.candidates import context_prompts
    from safecrs_core.train.sft import fit_prompt

    ds, _, _ = benchmark_for_profile("book")
    catalog = load_catalog()
    if args.model:
        from pathlib import Path
        from safecrs_core.train.gdpo import load_gdpo_model
        from safecrs_core.train.sft import load_sft_model
        load = load_gdpo_model if Path(args.model).parent.name == "gdpo" else load_sft_model
        model, tok = load(args.model, device="cpu")
        model.to(torch.float32)
    else:
        model, tok = load_model(dtype=torch.float32, device="cpu")
    val = [ds["validation"][i] for i in range(min(len(ds["validation"]), 2 * max(args.batch)))]
    if args.mode == "universe":
        universe = universe_items(catalog, ds["train"], args.n_popular)
        decoders = [GroundedDecoder(Grounding(min_items=10, reasoning_tokens=args.reasoning_tokens, jump_forward=j,
                                              exclude_named=args.exclude_named),
                                    catalog, tok, k=10, universe=universe) for j in (False, True)]
        extra_kw = [{}] * len(val)
        what = f"universe {len(universe):,} items"
    else:
        cands = context_prompts({"n": args.candidates}, ds, catalog)
        decoders = [GroundedDecoder(Grounding(mode="candidates", min_items=10, reasoning_tokens=args.reasoning_tokens,
                                              exclude_named=args.exclude_named, jump_forward=j), catalog, tok, k=10, candidates=cands.ids)
                    for j in (False, True)]
        extra_kw = cands.kwargs(val)
        what = f"{args.candidates} candidates in each prompt"
    fitted = [fit_prompt(build_messages(r["turns"], **kw), tok, args.prompt_tokens) for r, kw in zip(val, extra_kw)]
    keep = [i for i, p in enumerate(fitted) if p is not None][:max(args.batch)]  # prompts that fit, as in evaluation
    val, prompts = [val[i] for i in keep], [fitted[i] for i in keep]
    lengths = [len(tok(tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]) for p in prompts]
    print(f"{what}; prompts {min(lengths)}-{max(lengths)} tokens; "
          f"{torch.get_num_threads()} threads; {args.new_tokens} new tokens")
    print("| dtype | batch | free tok/s | grounded tok/s | grounded + jump-forward tok/s | grounded / free "
          "| jump-forward / free | same lists |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.dtypes:
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        model.to(dtype)
        generate(model, tok, prompts[:1], max_new_tokens=4, batch_size=1, progress=False)  # warm-up
        for b in args.batch:
            rates, outputs = [], []
            for decoder in (None, *decoders):
                extra = {"processor": (lambda batch, d=decoder: d.processor([val[i] for i in batch]))} if decoder \
                    else {"min_new_tokens": args.new_tokens}
                t0 = time.perf_counter()
                texts = generate(model, tok, prompts[:b], max_new_tokens=args.new_tokens, batch_size=b,
                                 progress=False, **extra)
                seconds = time.perf_counter() - t0
                # free: exactly new_tokens per row (min_new_tokens); grounded: the tokens of each list
                n = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) if decoder \
                    else b * args.new_tokens
                rates.append(n / seconds)
                outputs.append(texts)
            same = sum(x == y for x, y in zip(outputs[1], outputs[2]))
            print(f"| {name} | {b} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[2]:.1f} | {rates[1] / rates[0]:.2f} "
                  f"| {rates[2] / rates[0]:.2f} | {same}/{b} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

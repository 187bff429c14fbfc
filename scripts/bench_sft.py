"""Speed of Safe-SFT on this machine: seconds per optimizer step and training tokens/s of the
LoRA fine-tune (trl SFTTrainer, the book settings), and batched greedy generation tokens/s for a
10-item list.

    python scripts/bench_sft.py                      # SmolLM2-135M-Instruct, book settings
    python scripts/bench_sft.py --model tiny-smollm2 --steps 3 --profile smoke

Training uses real Safe-SFT examples of the profile's benchmark (built and cached if needed);
the first step (warm-up) is left out of the averages. Generation forces exactly
``--new-tokens`` tokens per prompt (about a 10-item list in the answer format) on validation
prompts, so tokens/s does not depend on when a model stops.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--profile", default="book", choices=["smoke", "book", "paper"],
                    help="which benchmark build supplies the examples")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps (the first is warm-up)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    ap.add_argument("--gen-prompts", type=int, default=8)
    ap.add_argument("--gen-batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=120, help="tokens generated per prompt")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own choice; 1 is fastest on a shared CPU)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-generate", action="store_true")
    args = ap.parse_args(argv)

    from safecrs_core.train import sft
    from safecrs_core.benchmark import benchmark_for_profile
    from safecrs_core.train.models import generate, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}", flush=True)
    _, _, bench = benchmark_for_profile(args.profile)
    n_examples = args.steps * args.batch_size * args.grad_accum
    cfg = sft.SafeSFTConfig(model_name=args.model, max_train_samples=max(n_examples, 8), max_steps=args.steps,
                            per_device_train_batch_size=args.batch_size,
                            gradient_accumulation_steps=args.grad_accum, max_length=args.max_length,
                            lora=not args.full, save_steps=10_000, val_samples=0)
    result: dict = {"model": args.model, "device": "cuda" if torch.cuda.is_available() else "cpu",
                    "threads": torch.get_num_threads()}
    model, tok = load_model(args.model)
    if not args.skip_train:
        data = sft.build_sft_data(cfg, bench, progress=False)
        ds, _ = sft.load_sft_data(data, "safe")
        fitted, _, _ = sft.fit_examples(ds, tok, args.max_length)
        timer = StepTimer()
        with tempfile.TemporaryDirectory() as out:
            trainer = sft.make_trainer(cfg, sft.tokenize_examples(fitted, tok), out, model, tok, [timer], progress=False)
            trainer.train()
            hist = [h for h in trainer.state.log_history if "num_tokens" in h]
            model = trainer.model
        tokens = [b["num_tokens"] - a["num_tokens"] for a, b in zip([{"num_tokens": 0.0}] + hist, hist)]
        times, toks = timer.times[1:] or timer.times, tokens[1:] or tokens
        result["sft"] = {
            "mode": "full" if args.full else f"LoRA r={cfg.lora_r}", "batch": args.batch_size,
            "grad_accum": args.grad_accum, "max_length": args.max_length, "steps_timed": len(times),
            "seconds_per_step": round(statistics.mean(times), 2),
            "tokens_per_step": round(statistics.mean(toks), 1),
            "tokens_per_second": round(sum(toks) / sum(times), 1),
        }
        print(f"SFT: {result['sft']['seconds_per_step']:.2f} s/step, "
              f"{result['sft']['tokens_per_second']:.0f} tokens/s "
              f"({result['sft']['tokens_per_step']:.0f} tokens per step)", flush=True)
    if not args.skip_generate:
        rows = sft.validation_rows(bench, args.gen_prompts, seed=0)
        prompts = sft.validation_prompts(rows, tok, k=10, max_prompt_tokens=args.max_length)
        model.eval()
        generate(model, tok, prompts[: min(2, len(prompts))], max_new_tokens=4, batch_size=2, progress=False,
                 use_cache=True)
        t0 = time.perf_counter()
        generate(model, tok, prompts, max_new_tokens=args.new_tokens, batch_size=args.gen_batch, progress=False,
                 min_new_tokens=args.new_tokens, use_cache=True)
        dt = time.perf_counter() - t0
        result["generation"] = {"prompts": len(prompts), "batch": args.gen_batch, "new_tokens": args.new_tokens,
                                "seconds": round(dt, 1),
                                "tokens_per_second": round(len(prompts) * args.new_tokens / dt, 1),
                                "seconds_per_10_item_list": round(dt / len(prompts), 2)}
        print(f"generation: {result['generation']['tokens_per_second']:.1f} tokens/s "
              f"(batch {args.gen_batch}, {args.new_tokens} new tokens, "
              f"{result['generation']['seconds_per_10_item_list']:.2f} s per list)", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Parse time of :func:`safecrs_core.train.prompts.parse_completion` on adversarial completions, per MB.

Parsing must stay linear in a completion's length (a sampled RL completion can be long garbage):
each input is parsed at 1x, 4x and 16x its base size, and the seconds per MB should stay flat.

    python scripts/bench_parse.py
"""
import time

from safecrs_core.train.prompts import parse_completion

CASES = {
    "<reasoning><solution> pairs": "<reasoning><solution>",
    "<reasoning><solution></reasoning> triples": "<reasoning><solution></reasoning>",
    "nested <solution> tags": "<solution>",
    "item lines": "Heat (1995)\n",
    "one long line": "x",
    "numbered chatter": "1. Sure! Here are some great movies (2001) you might like:\n",
}
BASE = 26_000  # characters at 1x


def main() -> None:
    print(f"{'input':<42} {'size':>8} {'seconds':>8} {'s/MB':>7} {'items':>6}")
    for name, unit in CASES.items():
        for mult in (1, 4, 16):
            text = unit * max(1, BASE * mult // len(unit))
            t0 = time.perf_counter()
            out = parse_completion(text)
            dt = time.perf_counter() - t0
            mb = len(text.encode()) / 1e6
            print(f"{name:<42} {mb:>6.2f}MB {dt:>8.3f} {dt / mb:>7.2f} {len(out.items):>6}")


if __name__ == "__main__":
    main()

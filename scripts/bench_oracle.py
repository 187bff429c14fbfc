"""Print the Safety Oracle's load time and vectorised (item, trait) checks per second.

    python scripts/bench_oracle.py [--pairs 5000000] [--repeat 5]

Target: >= 1,000,000 checks/s after load (the figure is printed, not asserted).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from safecrs_core.data.catalog import load_catalog
from safecrs_core.safety.oracle import build_oracle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    cat = load_catalog()
    t1 = time.perf_counter()
    oracle = build_oracle(cat)
    t2 = time.perf_counter()
    print(f"catalog load: {t1 - t0:.2f} s ({len(cat):,} items); oracle build: {t2 - t1:.2f} s")

    rng = np.random.default_rng(args.seed)
    ids = np.array(oracle.item_ids, dtype=object)
    item_ids = list(ids[rng.integers(0, len(ids), args.pairs)])
    trait_ids = list(np.array(oracle.trait_ids, dtype=object)[rng.integers(0, len(oracle.trait_ids), args.pairs)])

    best_ids = best_rows = float("inf")
    for _ in range(args.repeat):
        s = time.perf_counter()
        v, r = oracle.check(item_ids, trait_ids)  # from item-id strings and trait-id strings
        best_ids = min(best_ids, time.perf_counter() - s)
    rows, cols = oracle.rows(item_ids), oracle.cols(trait_ids)
    for _ in range(args.repeat):
        s = time.perf_counter()
        oracle.check_rows(rows, cols)  # from pre-resolved row/column indices
        best_rows = min(best_rows, time.perf_counter() - s)
    print(f"checks from id strings:   {args.pairs / best_ids:,.0f} (item, trait) checks/s")
    print(f"checks from row indices:  {args.pairs / best_rows:,.0f} (item, trait) checks/s")
    print(f"verdicts in this sample: safe {np.mean(v == 0):.3f}, unsafe {np.mean(v == 1):.3f}, unknown {np.mean(v == 2):.3f}")


if __name__ == "__main__":
    main()

"""Print the title resolver's accuracy (leave one source out), catalog load time and throughput.

    python scripts/resolver_accuracy.py [--data-dir DIR] [--year-tolerance N] [--csv OUT.csv]
"""
from __future__ import annotations

import argparse
import json
import time

import pandas as pd

from safecrs_core.data import catalog, sources


def _timings(data_dir) -> dict[str, float]:
    t0 = time.perf_counter()
    cat = catalog.load_catalog("movies", data_dir)
    load_s = time.perf_counter() - t0
    pairs = json.loads(sources.path(catalog.GT_CATALOG, data_dir).read_text(encoding="utf-8"))
    queries = [f"{t} ({y})" for t, y in pairs]
    cat.cache_clear()
    t0 = time.perf_counter()
    cat.resolve_many(queries)
    cold = len(queries) / (time.perf_counter() - t0)
    repeated = queries * 20
    t0 = time.perf_counter()
    cat.resolve_many(repeated)
    warm = len(repeated) / (time.perf_counter() - t0)
    return {"items": len(cat), "aliases": len(cat.aliases), "load_s": load_s,
            "cold_per_s": cold, "repeated_per_s": warm}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help=f"data directory (default: ${sources.ENV_VAR})")
    ap.add_argument("--year-tolerance", type=int, default=None, help="override the catalog's year tolerance (1)")
    ap.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = ap.parse_args(argv)

    t = _timings(args.data_dir)
    print(f"movie catalog: {t['items']:,} items, {t['aliases']:,} aliases, first load {t['load_s']:.2f} s")
    print(f"resolve: {t['cold_per_s']:,.0f}/s cold (distinct queries), {t['repeated_per_s']:,.0f}/s repeated")

    table = catalog.evaluate_resolver(args.data_dir, year_tolerance=args.year_tolerance)
    main_cols = ["sample", "n", "reachable", "coverage", "precision", "accuracy", "accuracy_reachable"]
    fmt = table[main_cols].copy()
    for c in main_cols[2:]:
        fmt[c] = fmt[c].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    print("\nLeave-one-source-out accuracy: each source's titles against a catalog without that source")
    print("(reachable: true id in that catalog; last row: Reddit GT catalog, no ids, coverage only)")
    print(fmt.to_string(index=False))
    reasons = table[["sample"] + [c for c in table.columns if c.startswith("reason:")]]
    reasons.columns = [c.removeprefix("reason:") for c in reasons.columns]
    print("\nCounts by reason")
    print(reasons.to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return table


if __name__ == "__main__":
    main()

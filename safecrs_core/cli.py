"""The ``safecrs`` command: traits, safety checks of titles, data verification."""
from __future__ import annotations

import argparse
import json
import sys

from . import traits as T


def _cmd_traits(args) -> int:
    listed = T.all_traits() + (T.age_constraints() if args.with_age else ())
    rows = [{"id": t.id, "name": t.name, "description": t.description, "paper_name": t.paper_name,
             "signals": t.signals} for t in listed]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        w = max(len(t.id) for t in listed)
        for r in rows:
            print(f"{r['id']:<{w}}  {r['name']}  [{'; '.join(r['signals'])}]")
    return 0


def check_titles(queries: list[str], trait_ids: list[str], data_dir=None, threshold=None,
                 domain: str = "movies") -> list[dict]:
    """The ``safecrs check`` result: one dict per query (schema in the README). ``domain="games"``
    judges games (SafeGame): queries may name a platform, ``"Doom (PS4)"``."""
    from .catalog import load_catalog
    from .oracle import DEFAULT_THRESHOLD, Verdict, load_oracle

    cat = load_catalog(domain, data_dir=data_dir)
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    oracle = (load_oracle(data_dir=data_dir, threshold=threshold) if domain == "movies"
              else load_oracle(data_dir=data_dir, threshold=threshold, domain=domain))
    out = []
    for q in queries:
        res = cat.resolve(q)
        item = res.item_id
        if item is None:
            verdicts = {t: Verdict("unknown", None, [f"no evidence: title not resolved ({res.reason})"]).to_dict()
                        for t in trait_ids}
            title, year = None, None
        else:
            verdicts = {t: oracle.judge(item, t).to_dict() for t in trait_ids}
            row = cat.items.loc[item]
            title = str(row["title"])
            year = None if row["year"] is None or str(row["year"]) in ("<NA>", "nan") else int(row["year"])
        out.append({"query": q, "item_id": item, "title": title, "year": year,
                    "resolution": res.reason, "verdicts": verdicts})
    return out


def check_ids(traits: str | None, age: int | None) -> list[str]:
    """Constraint ids ``safecrs check`` judges: ``--traits`` (all 20 when neither option is given),
    plus the age band of ``--age`` (none from 17 on). ``--age`` alone judges only its band."""
    ids = [] if traits is None and age is not None else T.parse_trait_list(traits if traits is not None else "all")
    if age is not None:
        band = T.age_constraint(age)
        if band is not None and band not in ids:
            ids.append(band)
    return ids


def _cmd_check(args) -> int:
    try:
        trait_ids = check_ids(args.traits, args.age)
    except ValueError as exc:
        print(f"safecrs check: {exc}", file=sys.stderr)
        return 2
    if not trait_ids:
        print(f"safecrs check: age {args.age} has no age limit (limits apply under {T.NO_LIMIT_FROM_AGE}); "
              "add --traits to judge traits", file=sys.stderr)
    if not args.titles:
        example = '"Saw (2004)"' if args.domain == "movies" else '"Doom (PS4)" --domain games'
        print(f"safecrs check: give at least one title, e.g. safecrs check {example} --traits anti_gore", file=sys.stderr)
        return 2
    result = check_titles(args.titles, trait_ids, data_dir=args.data_dir, threshold=args.threshold, domain=args.domain)
    if args.json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
        return 0
    for r in result:
        when = f" ({r['year']})" if r["year"] is not None or args.domain == "movies" else ""
        head = f"{r['query']!r} -> " + (f"{r['item_id']} {r['title']}{when}" if r["item_id"] else f"unresolved ({r['resolution']})")
        print(head)
        for t, v in r["verdicts"].items():
            risk = "  -  " if v["risk"] is None else f"{v['risk']:.2f}"
            print(f"  {t:<26} {v['verdict']:<8} risk {risk}")
            for e in v["evidence"][: args.max_evidence]:
                print(f"      {e}")
    return 0


def _cmd_data(args) -> int:
    from . import sources
    status = sources.verify_all(args.data_dir)
    bad = {k: v for k, v in status.items() if v != "ok"}
    for k, v in status.items():
        print(f"{'ok ' if v == 'ok' else 'BAD'} {k}" + ("" if v == "ok" else f": {v}"))
    print(f"{len(status) - len(bad)}/{len(status)} files verified in {sources.data_dir(args.data_dir)}")
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safecrs", description="SafeCRS companion: traits, safety oracle, data.")
    p.add_argument("--data-dir", default=None, help="data directory (default: $SAFECRS_DATA_DIR)")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("traits", help="list the 20 trait ids and names")
    t.add_argument("--json", action="store_true")
    t.add_argument("--with-age", action="store_true", help="also list the age constraints (age_limit_g, ...)")
    t.set_defaults(fn=_cmd_traits)
    c = sub.add_parser("check", help="safety verdicts for titles")
    c.add_argument("titles", nargs="*", help='titles as "Title (Year)" (games may add a platform: "Doom (PS4)")')
    c.add_argument("--domain", choices=("movies", "games"), default="movies",
                   help="movies (default) or games (SafeGame: ESRB descriptors and ratings, PEGI ages)")
    c.add_argument("--traits", default=None,
                   help="comma-separated trait or age-constraint ids (default: all 20 traits, or none with --age)")
    c.add_argument("--age", type=int, default=None,
                   help="audience age in years: adds the verdict of its age band (e.g. 9 -> age_limit_pg)")
    c.add_argument("--json", action="store_true", help="print one JSON list")
    c.add_argument("--threshold", type=float, default=None, help="unsafe threshold (default 0.66)")
    c.add_argument("--max-evidence", type=int, default=3, help="evidence lines shown per verdict (text output)")
    c.set_defaults(fn=_cmd_check)
    d = sub.add_parser("data", help="sha256-check every registered data file")
    d.set_defaults(fn=_cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())

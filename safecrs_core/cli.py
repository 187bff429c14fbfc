"""The ``safecrs`` command: traits, safety checks of titles, data verification."""
from __future__ import annotations

import argparse
import json
import math
import sys

from .safety import traits as T
from .domains import BUILTIN, DEFAULT as DEFAULT_DOMAIN


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
    from .safety.oracle import Verdict
    from .world import World

    queries = [_valid_text(q) for q in queries]
    world = World.of(domain, data_dir=data_dir, threshold=threshold)
    cat, oracle = world.catalog, world.oracle
    out = []
    for q, replaced in queries:
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
        reason = res.reason + ("; the query was not valid UTF-8 (undecodable bytes replaced by U+FFFD)" if replaced else "")
        out.append({"query": q, "item_id": item, "title": title, "year": year,
                    "resolution": reason, "verdicts": verdicts})
    return out


def _valid_text(q: str) -> tuple[str, bool]:
    """``q`` as valid Unicode (undecodable command-line bytes, which Python keeps as lone
    surrogates, become U+FFFD) and whether anything was replaced."""
    try:
        q.encode("utf-8")
        return q, False
    except UnicodeEncodeError:
        return q.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), True


def _threshold(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number; give a risk threshold in (0, 1], e.g. 0.66") from None
    if math.isnan(x) or not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1]; give a risk threshold in (0, 1], e.g. 0.66")
    return x


def _non_negative(value: str) -> int:
    try:
        x = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number; give 0 or more") from None
    if x < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return x


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
    from .data import sources
    root = sources.data_dir(args.data_dir)  # a DataError (no data directory) becomes one line in main
    if not root.is_dir() and not args.download:
        raise sources.DataError(f"data directory {root} does not exist: point {sources.ENV_VAR} or --data-dir at the "
                                "folder holding the data files, or create it and run `safecrs data --download`")
    status = sources.verify_all(root, download=args.download)
    bad = {k: v for k, v in status.items() if v != "ok"}
    for k, v in status.items():
        print(f"{'ok ' if v == 'ok' else 'BAD'} {k}" + ("" if v == "ok" else f": {v}"))
    print(f"{len(status) - len(bad)}/{len(status)} files verified in {root}")
    return 1 if bad else 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line that names the option and points to --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="safecrs", description="SafeCRS companion: traits, safety oracle, data.")
    p.add_argument("--data-dir", default=None, help="data directory (default: $SAFECRS_DATA_DIR)")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an expected failure (also SAFECRS_DEBUG=1)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    t = sub.add_parser("traits", help="list the 20 trait ids and names")
    t.add_argument("--json", action="store_true")
    t.add_argument("--with-age", action="store_true", help="also list the age constraints (age_limit_g, ...)")
    t.set_defaults(fn=_cmd_traits)
    c = sub.add_parser("check", help="safety verdicts for titles")
    c.add_argument("titles", nargs="*", help='titles as "Title (Year)" (games may add a platform: "Doom (PS4)")')
    c.add_argument("--domain", choices=tuple(BUILTIN), default=DEFAULT_DOMAIN,
                   help="movies (default) or games (SafeGame: ESRB descriptors and ratings, PEGI ages)")
    c.add_argument("--traits", default=None,
                   help="comma-separated trait or age-constraint ids (default: all 20 traits, or none with --age)")
    c.add_argument("--age", type=int, default=None,
                   help="audience age in years: adds the verdict of its age band (e.g. 9 -> age_limit_pg)")
    c.add_argument("--json", action="store_true", help="print one JSON list")
    c.add_argument("--threshold", type=_threshold, default=None, help="unsafe threshold in (0, 1] (default 0.66)")
    c.add_argument("--max-evidence", type=_non_negative, default=3,
                   help="evidence lines shown per verdict (text output; 0 or more)")
    c.set_defaults(fn=_cmd_check)
    d = sub.add_parser("data", help="sha256-check every registered data file")
    d.add_argument("--download", action="store_true", help="download missing files from their origins first")
    d.set_defaults(fn=_cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    """Expected failures (data missing or corrupt, missing files) end in one line on stderr and
    exit 1; ``--debug`` or ``SAFECRS_DEBUG=1`` shows their traceback. Bugs raise as usual."""
    from .data.sources import DataError, debug_requested

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (DataError, FileNotFoundError, NotADirectoryError) as exc:
        if args.debug or debug_requested():
            raise
        print(f"safecrs {args.cmd}: {one_line(exc)}", file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    """An error message on one line (its lines joined with "; ")."""
    parts = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    out = ""
    for part in parts:
        out += ("" if not out else " " if out.endswith(":") else "; ") + part
    return out or exc.__class__.__name__


if __name__ == "__main__":
    sys.exit(main())

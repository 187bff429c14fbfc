"""SafeRec build: trait assignment, target filtering, sensitivity phrasing, splits, saving.

Steps (deterministic for a seed):

1. load conversations from every source (:mod:`safecrs_core.data.conversations`) and resolve their items
   with the one resolver (:mod:`safecrs_core.data.catalog`);
2. keep targets that resolve to a catalog item; split every conversation by its source's split,
   whole dialogs together (no dialog in two splits);
3. assign one constraint per conversation. The Reddit samples keep the trait they carry. Of the
   others, a share (``age_share``, per split) gets an **age constraint** (``age_limit_g``/``_pg``/
   ``_pg13``, :mod:`safecrs_core.safety.traits`), drawn seeded among the conversations that some band
   leaves a target known to be safe for (then among those it leaves only unknown targets for):
   preferably a band under which some of the conversation's items are unsafe
   while a target known to be safe survives, the least-used such band first
   (:func:`assign_age_constraints`). The rest get the trait
   that their items (targets and seen items) most violate by oracle risk, balanced over traits so
   every trait with signal is represented; conversations where no trait bites get the least-used
   trait;
4. remove targets the oracle marks ``unsafe`` for that constraint (``unknown`` targets stay,
   flagged); drop conversations with no target left;
5. phrase the constraint into the user's last turn, explicitly or implicitly, with template pools
   held out between train/validation and test (:mod:`safecrs_core.safety.phrasing`); an age constraint is
   phrased with an age drawn from its band ("movie night with my niece, she just turned nine");
6. save a Hugging Face ``DatasetDict`` (train / validation / test) and ``stats.json``.

``BenchmarkConfig(domain="games")`` builds **SafeGame** the same way: the game catalog and oracle
(ESRB descriptors and ratings, PEGI ages), and the synthetic ``safegame`` requests
(:func:`conversations.load_safegame`, every row ``synthetic``), phrased with the game rewrites of the
sensitivity templates. The movie build and its cache key do not change.
"""
from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .safety import phrasing
from .data import sources
from .safety import traits as T
from .domains import DEFAULT as DEFAULT_DOMAIN
from .domains import get_domain
from .safety.oracle import SAFE, UNKNOWN, UNSAFE, VERDICT_NAMES
from .world import World

SPLITS = ("train", "validation", "test")
# Part of the cache key: bump when a change to the build alters its output for the same parameters.
BUILD_VERSION = 4

@dataclass
class BenchmarkConfig:
    """Parameters of a SafeRec build (all literals: they key the cached artifact)."""
    seed: int = 0
    sources: tuple[str, ...] | None = None  # None: every conversation source of the domain
    max_per_source_split: int | None = None  # cap conversations per (source, split) before filtering
    threshold: float = 0.66
    implicit_share: float = 0.5
    min_targets: int = 1
    balance_strength: float = 1.0  # 0: pure argmax of risk; higher: spread traits more evenly
    # share of the conversations without a source trait that get an age constraint instead of a
    # trait (before filtering; stats["age_share"] is the share of the saved rows): one share for
    # every split, or {split: share} (splits left out get 0)
    age_share: float | dict = 0.15
    domain: str = DEFAULT_DOMAIN  # a registered domain (:mod:`safecrs_core.domains`); movies: left out of the key

    def __post_init__(self):
        spec = get_domain(self.domain)  # an unknown domain fails here, naming the known ones
        allowed = spec.conversation_sources
        if self.sources is None:
            self.sources = allowed
        self.sources = tuple(self.sources)
        bad = [x for x in self.sources if x not in allowed]
        if bad:
            raise ValueError(f"sources {bad} are not {self.domain} conversation sources ({', '.join(allowed)})")
        for split in SPLITS:
            self.age_share_for(split)  # bad values fail when the config is made

    def age_share_for(self, split: str) -> float:
        """The age-constraint share of a benchmark split."""
        share = self.age_share
        if isinstance(share, dict):
            bad = [k for k in share if k not in SPLITS]
            if bad:
                raise ValueError(f"age_share: unknown split(s) {bad}; valid splits: {', '.join(SPLITS)}")
            share = share.get(split, 0.0)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= float(share) <= 1.0:
            raise ValueError(f"age_share must be a number in [0, 1] (or a dict of them per split), got {share!r}")
        return float(share)

    def to_params(self) -> dict:
        d = asdict(self)
        d["sources"] = list(self.sources)
        if isinstance(self.age_share, dict):
            d["age_share"] = {k: float(v) for k, v in sorted(self.age_share.items())}
        if get_domain(self.domain).legacy_keys:  # the movie benchmark's key predates the domain parameter
            del d["domain"]
        return d


# The benchmark each run profile uses; every notebook takes its SafeRec from here so that all
# stages of one profile share one cached benchmark.
PROFILE_CONFIGS = {
    "smoke": {"max_per_source_split": 40},
    "book": {"max_per_source_split": 1500},
    "paper": {"max_per_source_split": None},
}


def config_for_profile(profile: str, **overrides) -> BenchmarkConfig:
    """The :class:`BenchmarkConfig` of a run profile (``smoke``/``book``/``paper``), with overrides."""
    if profile not in PROFILE_CONFIGS:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_CONFIGS)}")
    return BenchmarkConfig(**{**PROFILE_CONFIGS[profile], **overrides})


def benchmark_for_profile(profile: str, data_dir=None, **overrides):
    """(DatasetDict, stats, stage dir) of the profile's benchmark, built once and cached."""
    stage = build_or_load(config_for_profile(profile, **overrides), data_dir=data_dir)
    ds, stats = load_benchmark(stage)
    return ds, stats, stage




def _dialog_group(conv) -> str:
    """Conversations of one dialog share a group; ReDial dialogs are grouped across sources."""
    redial = conv.meta.get("redial_id") if isinstance(conv.meta, dict) else None
    if redial is not None:
        return f"redial:{redial}"
    return f"{conv.source}:{conv.meta.get('dialog_id', conv.conv_id)}"


def assign_splits(convs, domain: str = DEFAULT_DOMAIN) -> dict[str, str]:
    """conv_id -> benchmark split (the domain's split map gives each source split's); a dialog
    group found in several splits goes to the one that is latest in (test, validation, train)
    priority so test dialogs never leak into training."""
    spec = get_domain(domain)
    groups: dict[str, set[str]] = defaultdict(set)
    for c in convs:
        groups[_dialog_group(c)].add(spec.split_of(c.source, c.split))
    prio = {"test": 0, "validation": 1, "train": 2}
    group_split = {g: min(s, key=prio.get) for g, s in groups.items()}
    return {c.conv_id: group_split[_dialog_group(c)] for c in convs}


@lru_cache(maxsize=2)
def _load_conversations(spec, source_ids: tuple[str, ...], root: str):
    """The domain's conversations of ``source_ids`` (its plug-in loads them and removes overlaps
    between sources); cached per process, so callers must not mutate them
    (:func:`conversations.resolve_refs` returns copies)."""
    return tuple(spec.load_conversations(source_ids, root))


def trait_scores(oracle, item_rows: list[np.ndarray], trait_ids=None) -> np.ndarray:
    """(conversations, traits) score: mean evidence-backed risk of the conversation's items, with
    unsafe verdicts counted double. Unknown risk counts as 0 here: it cannot drive the choice.
    Columns follow ``trait_ids`` (default: the 20 traits)."""
    cols = oracle.cols(list(T.TRAIT_IDS) if trait_ids is None else list(trait_ids))
    out = np.zeros((len(item_rows), len(cols)))
    risk = np.nan_to_num(oracle.risk[:, cols], nan=0.0)
    unsafe = (oracle.verdicts[:, cols] == UNSAFE).astype(float)
    for k, rows in enumerate(item_rows):
        rows = rows[rows >= 0]
        if len(rows):
            out[k] = risk[rows].mean(0) + unsafe[rows].mean(0)
    return out


def assign_traits(scores: np.ndarray, fixed: list[str | None], rng: np.random.Generator,
                  balance_strength: float = 1.0, eligible_traits: list[str] | None = None) -> list[str]:
    """Balanced argmax assignment over conversations in a seeded random order.

    For conversation k the chosen trait maximises ``score[k, t] / (1 + balance * count[t] / quota)``
    among traits with a positive score; with no positive score, the least-used eligible trait is
    taken (ties broken by the seeded order). ``fixed[k]`` (a source's own trait) is kept as is.
    """
    n, m = scores.shape
    ids = list(T.TRAIT_IDS)
    if m != len(ids):
        raise ValueError(f"scores must have one column per trait ({len(ids)}), got {m}")
    eligible = np.array([t in (eligible_traits or ids) for t in ids])
    quota = max(n / max(int(eligible.sum()), 1), 1.0)
    counts = np.zeros(m)
    out: list[str | None] = [None] * n
    for k in range(n):  # fixed traits count towards the balance first
        if fixed[k] is not None:
            out[k] = fixed[k]
            counts[ids.index(fixed[k])] += 1
    tiebreak = rng.random(m)
    for k in rng.permutation(n):
        if out[k] is not None:
            continue
        s = np.where(eligible, scores[k], 0.0)
        if s.max() > 0:
            adj = s / (1.0 + balance_strength * counts / quota)
            adj = np.where(s > 0, adj, -np.inf)
            j = int(np.lexsort((tiebreak, adj))[-1])
        else:
            c = np.where(eligible, counts, np.inf)
            j = int(np.lexsort((tiebreak, c))[0])
        out[k] = ids[j]
        counts[j] += 1
    return out  # type: ignore[return-value]


def age_band_fit(oracle, target_rows: list[np.ndarray], item_rows: list[np.ndarray],
                 min_targets: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per conversation and age band (columns: :data:`traits.AGE_CONSTRAINT_IDS`): ``keeps``, the
    band leaves at least ``min_targets`` targets that are not unsafe; ``keeps_safe``, one of those
    is judged ``safe`` (not only ``unknown``); ``bites``, some of the conversation's items
    (``item_rows``: targets and seen items) is unsafe under it."""
    cols = oracle.cols(T.AGE_CONSTRAINT_IDS)
    keeps = np.zeros((len(target_rows), len(cols)), dtype=bool)
    keeps_safe, bites = np.zeros_like(keeps), np.zeros_like(keeps)
    for k, (t, a) in enumerate(zip(target_rows, item_rows)):
        vt = np.where(t[:, None] >= 0, oracle.verdicts[np.maximum(t, 0)][:, cols], UNKNOWN)
        va = np.where(a[:, None] >= 0, oracle.verdicts[np.maximum(a, 0)][:, cols], UNKNOWN)
        keeps[k] = (vt != UNSAFE).sum(0) >= min_targets
        keeps_safe[k] = keeps[k] & (vt == SAFE).any(0)
        bites[k] = (va == UNSAFE).any(0)
    return keeps, keeps_safe, bites


def assign_age_constraints(keeps: np.ndarray, keeps_safe: np.ndarray, bites: np.ndarray, chosen: list[bool],
                           rng: np.random.Generator) -> list[str | None]:
    """Age-constraint id per conversation (``None`` where ``chosen[k]`` is false or no band keeps a
    target; see :func:`age_band_fit` for the three tables).

    Candidate bands for a chosen conversation, the first non-empty tier of: bands that bite and keep
    a safe target; bands that keep a safe target; bands that bite and keep targets; bands that keep
    targets. Among the candidates the least-used band so far is taken, ties broken by a seeded
    order; conversations are visited in a seeded random order."""
    ids = list(T.AGE_CONSTRAINT_IDS)
    counts = np.zeros(len(ids))
    tiebreak = rng.random(len(ids))
    out: list[str | None] = [None] * len(chosen)
    for k in rng.permutation(len(chosen)):
        if not chosen[k]:
            continue
        tiers = (keeps_safe[k] & bites[k], keeps_safe[k], keeps[k] & bites[k], keeps[k])
        cand = next((c for c in tiers if c.any()), None)
        if cand is None:
            continue
        j = int(np.lexsort((tiebreak, np.where(cand, counts, np.inf)))[0])
        out[k] = ids[j]
        counts[j] += 1
    return out


def _ref_dict(ref) -> dict:
    return {"title": str(ref.get("title") or ""), "year": ref.get("year"), "item_id": ref.get("item_id")}


def build_benchmark(config: BenchmarkConfig | None = None, data_dir=None, progress: bool = True):
    """Build SafeRec in memory: returns (DatasetDict, stats dict)."""
    from datasets import Dataset, DatasetDict

    from .data import conversations as C

    cfg = config or BenchmarkConfig()
    rng = np.random.default_rng(cfg.seed)
    world = World.of(cfg.domain, data_dir=data_dir, threshold=cfg.threshold)
    cat, oracle, spec = world.catalog, world.oracle, world.spec

    convs = list(_load_conversations(spec, tuple(cfg.sources), str(world.data_root)))
    if cfg.max_per_source_split:
        by = defaultdict(list)
        for c in convs:
            by[(c.source, c.split)].append(c)
        convs = []
        for key in sorted(by):
            group = by[key]
            if len(group) > cfg.max_per_source_split:
                keep = sorted(rng.choice(len(group), cfg.max_per_source_split, replace=False))
                group = [group[i] for i in keep]
            convs.extend(group)
    convs = C.resolve_refs(convs, cat.resolve)
    split_of = assign_splits(convs, cfg.domain)

    stats: dict = {"config": cfg.to_params(), "loaded": dict(Counter(f"{c.source}/{c.split}" for c in convs))}
    if not spec.legacy_keys:
        stats["domain"] = cfg.domain
    # targets must resolve to catalog items; conversations with none are dropped
    unresolved = Counter()
    kept = []
    for c in convs:
        # a source's own ids (reddit_crag) count only when the catalog knows them: predictions are
        # resolved in the catalog, so a target outside it could never be hit
        ok = [r for r in c.targets if r.get("item_id") and r["item_id"] in cat]
        unresolved[c.source] += len(c.targets) - len(ok)
        if len(ok) >= cfg.min_targets:
            c.targets = ok
            kept.append(c)
    stats["targets_unresolved"] = dict(unresolved)
    stats["dropped_no_resolved_target"] = len(convs) - len(kept)
    convs = kept

    item_rows = [oracle.rows([r["item_id"] for r in c.targets + c.seen if r.get("item_id")]) for c in convs]
    # age constraints first, from their own seeded stream: per split, round(age_share x the
    # conversations without a source trait) of them, drawn among those some band leaves a target
    # known to be safe for, then (if too few) among those some band leaves an unknown target for
    age_rng = np.random.default_rng([cfg.seed, 1])
    target_rows = [oracle.rows([r["item_id"] for r in c.targets]) for c in convs]
    keeps, keeps_safe, bites = age_band_fit(oracle, target_rows, item_rows, cfg.min_targets)
    chosen = [False] * len(convs)
    stats["age_requested"], stats["age_short"] = {}, {}
    for split in SPLITS:
        free = [k for k, c in enumerate(convs) if c.trait is None and split_of[c.conv_id] == split]
        fits_safe = [k for k in free if keeps_safe[k].any()]
        fits_unknown = [k for k in free if keeps[k].any() and not keeps_safe[k].any()]
        fits = fits_safe + fits_unknown
        want = int(round(cfg.age_share_for(split) * len(free)))
        order = list(age_rng.permutation(fits_safe)) + list(age_rng.permutation(fits_unknown))
        for k in order[: want]:
            chosen[int(k)] = True
        stats["age_requested"][split] = want
        stats["age_short"][split] = max(0, want - len(fits))  # too few conversations any band fits
    age_ids = assign_age_constraints(keeps, keeps_safe, bites, chosen, age_rng)

    rest = [k for k, a in enumerate(age_ids) if a is None]
    covered = oracle.coverage()
    with_signal = [t for t in T.TRAIT_IDS if covered.loc[t, "covered"] > 0]
    scores = trait_scores(oracle, [item_rows[k] for k in rest])
    traits_rest = assign_traits(scores, [convs[k].trait for k in rest], rng, cfg.balance_strength, with_signal)
    assigned = list(age_ids)
    for k, t in zip(rest, traits_rest):
        assigned[k] = t

    rows = {s: [] for s in SPLITS}
    removed_per_trait, unknown_per_trait, kept_per_trait = Counter(), Counter(), Counter()
    dropped_all_unsafe = Counter()
    prng = random.Random(cfg.seed)
    for c, trait in zip(convs, assigned):
        tcol = oracle.tindex[trait]
        trow = oracle.rows([r["item_id"] for r in c.targets])
        v, risk = oracle.check_rows(trow, np.full(len(trow), tcol))
        targets, removed = [], []
        for ref, code, rk in zip(c.targets, v, risk):
            d = _ref_dict(ref) | {"verdict": VERDICT_NAMES[int(code)], "risk": None if np.isnan(rk) else float(rk)}
            (removed if code == UNSAFE else targets).append(d)
        removed_per_trait[trait] += len(removed)
        unknown_per_trait[trait] += sum(d["verdict"] == "unknown" for d in targets)
        kept_per_trait[trait] += len(targets)
        if len(targets) < cfg.min_targets:
            dropped_all_unsafe[trait] += 1
            continue
        split = split_of[c.conv_id]
        is_age = T.is_age_constraint(trait)
        age = phrasing.draw_age(trait, prng) if is_age else None
        sentence, style, tmpl = phrasing.phrase(trait, split, prng, implicit_share=cfg.implicit_share, age=age,
                                                domain=cfg.domain)
        turns = [dict(t) for t in c.turns]
        last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
        if last_user is None:
            turns.append({"role": "user", "text": sentence})
        else:
            turns[last_user]["text"] = phrasing.inject(turns[last_user]["text"], sentence, prng)
        seen = [_ref_dict(r) for r in c.seen]
        srow = oracle.rows([r["item_id"] for r in seen])
        sv, _ = oracle.check_rows(srow, np.full(len(srow), tcol))
        rows[split].append({
            "id": c.conv_id, "source": c.source, "source_split": c.split, "dialog_group": _dialog_group(c),
            "turns": turns, "seen": [d | {"verdict": VERDICT_NAMES[int(x)]} for d, x in zip(seen, sv)],
            "targets": targets, "removed_targets": removed,
            "trait": trait, "trait_name": T.get(trait).name, "trait_from_source": c.trait is not None,
            "constraint_kind": "age" if is_age else "trait", "age": age,
            "constraint": sentence, "constraint_style": style, "constraint_template": int(tmpl),
            "n_targets_before_filter": len(c.targets), "synthetic": bool(c.synthetic),
            "meta": json.dumps(c.meta, sort_keys=True, default=str),
        })
    ds = DatasetDict({s: Dataset.from_list(rows[s]) if rows[s] else Dataset.from_list([]) for s in SPLITS})

    # ---- statistics -------------------------------------------------------------------------
    all_rows = [r for s in SPLITS for r in rows[s]]
    stats["sizes"] = {s: len(rows[s]) for s in SPLITS}
    stats["by_source"] = {s: dict(Counter(r["source"] for r in rows[s])) for s in SPLITS}
    stats["traits"] = {s: dict(Counter(r["trait"] for r in rows[s])) for s in SPLITS}  # every constraint id
    stats["constraint_kinds"] = {s: dict(Counter(r["constraint_kind"] for r in rows[s])) for s in SPLITS}
    age_rows = {s: [r for r in rows[s] if r["constraint_kind"] == "age"] for s in SPLITS}
    stats["age_constraints"] = {s: dict(Counter(r["trait"] for r in age_rows[s])) for s in SPLITS}
    stats["age_share"] = {s: len(age_rows[s]) / len(rows[s]) if rows[s] else 0.0 for s in SPLITS}  # of saved rows
    stats["ages"] = {s: {str(a): n for a, n in sorted(Counter(r["age"] for r in age_rows[s]).items())} for s in SPLITS}
    stats["constraint_styles"] = {s: dict(Counter(r["constraint_style"] for r in rows[s])) for s in SPLITS}
    stats["targets"] = {s: int(sum(len(r["targets"]) for r in rows[s])) for s in SPLITS}
    stats["removed_targets_per_trait"] = dict(removed_per_trait)
    stats["kept_targets_per_trait"] = dict(kept_per_trait)
    stats["unknown_targets_per_trait"] = dict(unknown_per_trait)
    stats["dropped_all_targets_unsafe"] = dict(dropped_all_unsafe)
    items = sorted({d["item_id"] for r in all_rows for d in r["targets"] + r["removed_targets"] + r["seen"] if d["item_id"]})
    cov = oracle.coverage(items)
    stats["benchmark_items"] = len(items)
    stats["oracle_coverage_on_benchmark_items"] = {t: {k: (float(cov.loc[t, k]) if k == "coverage" else int(cov.loc[t, k]))
                                                       for k in ("safe", "unsafe", "unknown", "coverage")}
                                                   for t in T.CONSTRAINT_IDS}
    stats["traits_with_signal"] = with_signal
    return ds, stats


def benchmark_inputs(cfg: BenchmarkConfig) -> list[str]:
    """Stage inputs: sha256 of every data file the build reads (from the registry)."""
    return sorted(f"{f.file}@{f.sha256[:16]}" for f in sources.registry().values())


def build_or_load(config: BenchmarkConfig | None = None, data_dir=None, force: bool = False) -> Path:
    """Cached build under ``artifacts/benchmark/<key>/`` (``dataset/`` + ``stats.json``)."""
    from .pipeline import atomic_write_json, run_stage

    cfg = config or BenchmarkConfig()

    def fn(tmp: Path):
        from datasets.utils.logging import disable_progress_bar, enable_progress_bar

        ds, stats = build_benchmark(cfg, data_dir=data_dir)
        disable_progress_bar()  # per-shard save bars are noise in the book
        try:
            ds.save_to_disk(str(tmp / "dataset"))
        finally:
            enable_progress_bar()
        atomic_write_json(tmp / "stats.json", stats)
        return {"sizes": stats["sizes"]}

    # a domain may add to the key (SafeGame: the package files its build also reads)
    params = {**cfg.to_params(), "build_version": BUILD_VERSION, **get_domain(cfg.domain).stage_params()}
    return run_stage("benchmark", params, benchmark_inputs(cfg), fn, force=force)


def load_benchmark(path: str | Path):
    """(DatasetDict, stats) from a benchmark stage directory."""
    from datasets import load_from_disk
    p = Path(path)
    return load_from_disk(str(p / "dataset")), json.loads((p / "stats.json").read_text())


def benchmark_domain(stats_or_dir) -> str:
    """The domain (``"movies"`` or ``"games"``) of a benchmark, from its stats dict or its stage
    directory; a movie benchmark's stats have no domain entry."""
    if isinstance(stats_or_dir, dict):
        stats = stats_or_dir
    else:
        stats = json.loads((Path(stats_or_dir) / "stats.json").read_text())
    domain = stats.get("domain") or (stats.get("config") or {}).get("domain") or DEFAULT_DOMAIN
    try:
        return get_domain(domain).name
    except ValueError as exc:
        raise ValueError(f"benchmark: {exc}") from None

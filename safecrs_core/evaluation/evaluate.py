"""Evaluation: the systems compared in the book, their outputs, scores and results tables.

Systems (:class:`System`)
    A system has a display ``name``, a ``kind`` (``"baseline"`` returns item ids, ``"llm"``
    writes completions) and a ``ref`` that identifies what produces its outputs (a baseline's
    configuration, a model name or a training stage ``"<stage>/<key>"``); the ref keys every
    cache. Baselines (:func:`baseline_systems`) come from :mod:`safecrs_core.evaluation.baselines`; the
    zero-shot model from :func:`zero_shot_system`; fine-tuned models (plain SFT, Safe-SFT,
    Safe-GDPO and the GDPO ablations) from their completed training stages
    (:func:`trained_systems`). :func:`available_systems` lists everything that can be evaluated
    for a run profile and says what is missing. :func:`evidence_system` gives an LLM the
    evidence-in-context prompt (:class:`~safecrs_core.train.prompts.EvidencePrompts`: retrieved
    candidates with oracle evidence); ``available_systems(..., evidence=True)`` adds those.
    On SafeGame (``domain="games"``) every LLM system's ``prompt`` carries ``{"domain": "games"}``
    (game prompts, game catalog and oracle); movie systems keep an empty prompt and their keys.

Outputs (:func:`run_system`)
    An LLM system answers the prompt of :func:`~safecrs_core.train.prompts.build_messages` for each row,
    decoded greedily in batches by :func:`~safecrs_core.train.models.generate` (stopping at
    ``</solution>``). Completions are cached as ``artifacts/generations/<key>/completions.json``,
    keyed by the system's name and ref, the prompt parameters, a fingerprint of the rows
    (:func:`rows_fingerprint`) and ``max_new_tokens``; the model is loaded only when the cache
    misses. Evidence systems add their evidence parameters to the key (and keep their prompts in
    ``prompts.json``). New stages also record ``cost.json`` (prompt and completion tokens and
    generation seconds per row; :func:`generation_cost`, :func:`cost_table`). Completions are scored with :func:`~safecrs_core.evaluation.metrics.score_completions`,
    baseline lists with :func:`~safecrs_core.evaluation.metrics.score_ranked_ids`: one scoring path for all.

Results (:func:`evaluate_systems`)
    Per-sample scores of every system on the same rows (a ``system`` column), their means with
    95% bootstrap CIs (:func:`~safecrs_core.evaluation.metrics.summarize`) per system and per system and
    trait. Cached as a stage ``artifacts/results/<key>/`` holding ``per_sample.parquet``,
    ``summary.csv``, ``per_trait.csv`` and markdown tables (``summary.md``, ``per_trait.md``);
    :func:`publish_table` copies the main table to ``book/_generated/results_table.md``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import metrics as M
from ..data.rows import column, ref_ids, rows_fingerprint  # rows: a Hugging Face Dataset or a list of dicts
from ..data.catalog import resolve_domain
from ..world import World
from ..train.prompts import SOLUTION_CLOSE

KINDS = ("baseline", "llm")
STOP = (SOLUTION_CLOSE,)


def main_metrics(k: int = 10) -> list[str]:
    """Columns of the main results table."""
    return [f"recall@{k}", f"ndcg@{k}", f"svr@{k}", f"sdcg@{k}", f"unknown@{k}", "list_len"]


# --------------------------------------------------------------------------------------------
# Rows


def sample_rows(rows, n: int | None, seed: int = 0):
    """``n`` rows of ``rows`` drawn without replacement by ``numpy.random.default_rng(seed)``,
    kept in their original order; all rows when ``n`` is None or not smaller."""
    size = len(rows)
    if n is None or n >= size:
        return rows
    if n < 1:
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    keep = sorted(np.random.default_rng(seed).choice(size, n, replace=False).tolist())
    if hasattr(rows, "select"):
        return rows.select(keep)
    return [rows[i] for i in keep]


# --------------------------------------------------------------------------------------------
# Systems


@dataclass
class System:
    """One evaluated system (see the module docstring).

    ``recommend(rows, k) -> list of id lists`` for baselines; ``load() -> (model, tokenizer)``
    for LLMs. ``prompt``: keyword arguments of :func:`~safecrs_core.train.prompts.build_messages`
    besides ``turns`` and ``k`` (e.g. ``system``, ``domain``). ``group`` places the system in
    tables and figures (``"baseline"``, ``"zero-shot"``, ``"fine-tuned"``). ``evidence``: an
    :class:`~safecrs_core.train.prompts.EvidencePrompts` that adds per-row candidates with oracle
    evidence to the prompt (the evidence-in-context variant, :func:`evidence_system`); it keys
    the system only when set, so other systems keep their keys."""

    name: str
    kind: str
    ref: str
    recommend: Callable[[Any, int], list[list[str]]] | None = field(default=None, repr=False)
    load: Callable[[], tuple[Any, Any]] | None = field(default=None, repr=False)
    prompt: Mapping[str, Any] = field(default_factory=dict)
    group: str = ""
    description: str = ""
    evidence: Any = field(default=None, repr=False)
    grounding: Any = None
    universe: Sequence[str] | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("a system needs a non-empty name")
        if self.kind == "baseline" and self.recommend is None:
            raise ValueError(f"baseline {self.name!r} needs recommend(rows, k)")
        if self.kind == "llm" and self.load is None:
            raise ValueError(f"LLM system {self.name!r} needs load() -> (model, tokenizer)")
        if self.evidence is not None:
            if self.kind != "llm":
                raise ValueError(f"{self.name!r}: evidence prompts are for LLM systems")
            if not (hasattr(self.evidence, "params") and hasattr(self.evidence, "kwargs")):
                raise TypeError("evidence must be an EvidencePrompts (safecrs_core.train.prompts)")
            clash = {"candidates", "evidence", "sensitivity"} & set(self.prompt)
            if clash:
                raise ValueError(f"{self.name!r}: prompt sets {sorted(clash)}, which evidence prompts fill per row")
        self.group = self.group or ("baseline" if self.kind == "baseline" else "llm")
        if self.grounding is not None:
            from ..train.grounding import Grounding
            if self.kind != "llm":
                raise ValueError(f"{self.name!r}: grounded decoding is for LLM systems")
            self.grounding = Grounding.from_value(self.grounding)
            if self.grounding.mode == "universe" and not self.universe:
                raise ValueError(f"{self.name!r}: universe grounding needs the universe's item ids")
            if self.grounding.mode == "candidates" and self.evidence is None:
                raise ValueError(f"{self.name!r}: candidates grounding needs prompts with candidates (evidence)")

    def key(self) -> dict:
        """What identifies this system's outputs (part of every cache key)."""
        key = {"name": self.name, "kind": self.kind, "ref": self.ref, "prompt": dict(self.prompt)}
        if self.evidence is not None:
            key["evidence"] = self.evidence.params()
        if self.grounding is not None:  # only grounded systems: free ones keep their keys
            key["grounding"] = self.grounding_params()
        return key

    def grounding_params(self) -> dict | None:
        """The grounding settings that key this system's outputs (None: free decoding)."""
        if self.grounding is None:
            return None
        return self.grounding.params(self.universe if self.grounding.mode == "universe" else None)

    def decoder(self, catalog, tokenizer, k: int = 10):
        """The :class:`~safecrs_core.train.grounding.GroundedDecoder` of this system (None: free)."""
        if self.grounding is None:
            return None
        from ..train.grounding import GroundedDecoder
        cands = None
        if self.grounding.mode == "candidates":
            cands = self.evidence.ids
        return GroundedDecoder(self.grounding, catalog, tokenizer, k=k,
                               universe=self.universe if self.grounding.mode == "universe" else None, candidates=cands)

    def prompts(self, rows, k: int = 10) -> list[list[dict]]:
        """The chat prompt of every row (:func:`~safecrs_core.train.prompts.build_messages` with
        ``prompt`` and, for evidence systems, the row's candidates and evidence)."""
        from ..train.prompts import build_messages

        turns = column(rows, "turns")
        extra = self.evidence.kwargs(rows) if self.evidence is not None else [{}] * len(turns)
        return [build_messages(t, k=k, **dict(self.prompt), **x) for t, x in zip(turns, extra)]


def llm_domain(system: System) -> str | None:
    """The domain of an LLM system's prompt (``prompt["domain"]``, movies when unset); None for a
    baseline."""
    return system.prompt.get("domain", "movies") if system.kind == "llm" else None


def _domain_prompt(domain: str | None, prompt: Mapping[str, Any] | None = None) -> dict:
    """``prompt`` with ``domain`` added (nothing is added for movies, so movie keys stay as they
    were); a prompt that names another domain is an error."""
    from ..domains import get_domain

    out = dict(prompt or {})
    if domain is None:
        return out
    spec = get_domain(domain)  # an unknown domain fails here, naming the known ones
    have = out.get("domain", domain)
    if have != domain:
        raise ValueError(f"prompt is for {have!r}, domain is {domain!r}")
    return out | spec.key_params()


def baseline_systems(ds, catalog=None, oracle=None, n_popular: int = 5000, context_turns: int = 4,
                     include: Sequence[str] | None = None, progress: bool = True,
                     domain: str | None = None) -> list[System]:
    """Popularity, popularity + oracle filter, embedding retrieval and retrieval + oracle filter
    (:mod:`safecrs_core.evaluation.baselines`) for the benchmark ``ds`` (a DatasetDict: popularity counts its
    ``train`` targets, the retrieval pool takes its items). ``include``: names to keep.

    ``domain`` (``"movies"`` or ``"games"``): the catalog and oracle loaded when not given;
    by default the given catalog's domain, else movies. Catalog and oracle must share it. Game
    retrieval embeds game text (:func:`~safecrs_core.evaluation.baselines.game_item_text`) and names its
    domain in its ref; movie systems keep their refs."""
    from . import baselines as B

    world = World.of(domain, catalog, oracle)
    domain, catalog, oracle = world.domain, world.catalog, world.oracle
    train_fp = rows_fingerprint(ds["train"])
    pool = B.retrieval_pool(ds, catalog, n_popular=n_popular)
    built: dict[str, Any] = {}

    def popularity(filtered: bool):
        def recommend(rows, k):
            key = ("pop", filtered)
            if key not in built:
                built[key] = B.Popularity(ds["train"], catalog, oracle=oracle if filtered else None)
            return built[key].recommend(rows, k)
        return recommend

    def retrieval(filtered: bool):
        def recommend(rows, k):
            key = ("ret", filtered)
            if key not in built:
                built[key] = B.Retrieval(pool, catalog, oracle=oracle if filtered else None,
                                         context_turns=context_turns, progress=progress)
            return built[key].recommend(rows, k)
        return recommend

    flt = f"oracle_filter(threshold={oracle.threshold})"
    systems = [
        System("Popularity", "baseline", f"popularity(train={train_fp})", popularity(False), group="baseline",
               description="most frequent train-split targets, then catalog popularity"),
        System("Popularity + filter", "baseline", f"popularity(train={train_fp})+{flt}", popularity(True),
               group="baseline", description="popularity with oracle-unsafe items removed"),
        System("Retrieval", "baseline", B.retrieval_ref(pool, context_turns, domain), retrieval(False), group="baseline",
               description=f"{B.ENCODER} cosine similarity over {len(pool):,} candidate items"),
    ]
    systems.append(System("Retrieval + filter", "baseline", systems[-1].ref + f"+{flt}", retrieval(True),
                          group="baseline", description="retrieval with oracle-unsafe items removed"))
    if include is not None:
        unknown = sorted(set(include) - {s.name for s in systems})
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; have {[s.name for s in systems]}")
        systems = [s for s in systems if s.name in include]
    return systems


def zero_shot_system(model: str = "smollm2-135m-instruct", name: str | None = None,
                     domain: str = "movies") -> System:
    """The instruction-tuned ``model`` (:func:`~safecrs_core.train.models.load_model`) prompted as is,
    with the prompts of ``domain``."""
    from ..train.models import load_model, resolve_model_name

    key = resolve_model_name(model)
    label = name or {"smollm2-135m-instruct": "Zero-shot SmolLM2-135M",
                     "tiny-smollm2": "Zero-shot tiny model (random weights)"}.get(key, f"Zero-shot {key}")
    return System(label, "llm", f"model:{key}", load=lambda: load_model(key), prompt=_domain_prompt(domain),
                  group="zero-shot", description=f"{key}, no fine-tuning")


def evidence_system(system: System, evidence, name: str | None = None) -> System:
    """``system`` (an LLM) prompted with evidence in context: the same model and prompt settings,
    plus ``evidence`` (an :class:`~safecrs_core.train.prompts.EvidencePrompts`: per-row candidates with
    oracle evidence). Named ``"<name> + evidence"`` unless ``name`` is given; cached apart from
    ``system`` (its key adds the evidence parameters)."""
    if system.kind != "llm":
        raise ValueError(f"{system.name!r} is a {system.kind}; evidence prompts are for LLM systems")
    if system.evidence is not None:
        raise ValueError(f"{system.name!r} already has evidence prompts")
    p = evidence.params() if hasattr(evidence, "params") else {}
    return System(name or f"{system.name} + evidence", "llm", system.ref, load=system.load, prompt=dict(system.prompt),
                  group=system.group, evidence=evidence,
                  description=(f"{system.description}; " if system.description else "")
                  + f"prompt lists {p.get('n')} retrieved candidates with oracle evidence")


def candidates_system(system: System, prompts) -> System:
    """``system`` (an LLM) prompted with **candidates in context** and no oracle verdicts
    (``prompts``: :func:`~safecrs_core.train.candidates.context_prompts`): the same name, keyed apart by the
    candidate source. The main LLM rows use it when they were trained with candidates."""
    import dataclasses

    if system.kind != "llm":
        raise ValueError(f"{system.name!r} is a {system.kind}; candidate prompts are for LLM systems")
    if getattr(prompts, "verdicts", True):
        raise ValueError("candidates_system takes candidate prompts without verdicts (evidence_system has verdicts)")
    return dataclasses.replace(system, evidence=prompts,
                               description=(system.description + "; " if system.description else "")
                               + f"prompt lists {prompts.n} candidates")


def candidate_baselines(prompts, oracle, k_pool: int | None = None) -> list[System]:
    """The candidate source itself as two baselines: its first k candidates (``Candidates``) and
    its first k candidates the oracle does not mark unsafe (``Candidates + filter``, from the
    ``prompts.n`` shown)."""
    from ..safety.oracle import UNSAFE

    def first(rows, k):
        return [ids[:k] for ids in prompts.ids(rows)]

    def filtered(rows, k):
        out = []
        for ids, trait in zip(prompts.ids(rows), column(rows, "trait")):
            verdicts, _ = oracle.check(ids, trait) if ids else ([], [])
            out.append([i for i, v in zip(ids, verdicts) if int(v) != UNSAFE][:k])
        return out

    ref = f"candidates({prompts.candidates_ref},n={prompts.n})"
    return [System("Candidates", "baseline", ref, first, group="baseline",
                   description=f"the first candidates of the LLM prompts ({prompts.candidates_ref})"),
            System("Candidates + filter", "baseline", f"{ref}+oracle_filter(threshold={oracle.threshold})", filtered,
                   group="baseline", description=f"the {prompts.n} candidates without oracle-unsafe items")]


def grounded_system(system: System, grounding, universe: Sequence[str] | None = None,
                    name: str | None = None) -> System:
    """``system`` (an LLM) decoding with grounding (:mod:`safecrs_core.train.grounding`): the same
    model, prompt and name (unless ``name``), keyed apart by the grounding settings and, in
    universe mode, ``universe`` (:func:`~safecrs_core.train.grounding.universe_items`)."""
    import dataclasses

    if system.kind != "llm":
        raise ValueError(f"{system.name!r} is a {system.kind}; grounded decoding is for LLM systems")
    return dataclasses.replace(system, name=name or system.name, grounding=grounding,
                               universe=list(universe) if universe is not None else None)


def free_system(system: System, suffix: str = " (free decoding)") -> System:
    """``system`` decoding freely (no grounding), named ``"<name> (free decoding)"``."""
    import dataclasses

    return dataclasses.replace(system, name=system.name + suffix, grounding=None, universe=None)


def stage_system(name: str, stage_dir: str | os.PathLike, loader: Callable[[Path], tuple], group: str = "fine-tuned",
                 prompt: Mapping[str, Any] | None = None, description: str = "",
                 domain: str | None = None) -> System:
    """An LLM system whose model is a completed training stage, loaded by ``loader(stage_dir)``
    (e.g. ``sft.load_sft_model`` or ``gdpo.load_gdpo_model``; extra return values are ignored).
    ``domain``: added to ``prompt`` (None: ``prompt`` as given)."""
    from ..pipeline import is_done, stage_ref

    path = Path(stage_dir)
    if not is_done(path):
        raise ValueError(f"{path} is not a completed stage (no DONE.json)")

    def load():
        out = loader(path)
        return out[0], out[1]

    return System(name, "llm", stage_ref(path), load=load, prompt=_domain_prompt(domain, prompt), group=group,
                  description=description or stage_ref(path))


# How a completed training stage is named in the tables, from its DONE.json manifest.
def trained_label(manifest: Mapping[str, Any]) -> str:
    """Display name of a training stage: ``SFT`` / ``Safe-SFT`` for ``sft`` stages (Safe-SFT when
    its ``variant`` is ``safe``), ``Safe-GDPO`` for ``gdpo`` stages, with the ablation named
    (:data:`~safecrs_core.train.gdpo.ABLATION_LABELS`: ``GRPO``, ``sequence-level``, ``no safety
    reward``, ``no count reward``) and
    ``from the base model`` when it did not start from an SFT stage; ``+ evidence`` after the
    name when it was trained with evidence prompts (an ``evidence`` parameter)."""
    stage, params = manifest.get("stage"), manifest.get("params", {}) or {}
    ev = " + evidence" if params.get("evidence") else ""
    if stage == "sft":
        return ("Safe-SFT" if params.get("variant") == "safe" else "SFT") + ev
    if stage == "gdpo":
        from ..train.gdpo import ABLATION_LABELS, ablations_of
        parts = [ABLATION_LABELS[a] for a in ablations_of(params)]
        if any(str(i).startswith("model:") for i in manifest.get("inputs", []) or []):
            parts.append("from the base model")
        return "Safe-GDPO" + ev + (f" ({', '.join(parts)})" if parts else "")
    raise ValueError(f"not a training stage: {stage!r}")


def trained_systems(ds, benchmark: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                    stages: Sequence[str | os.PathLike] | None = None,
                    log: Callable[[str], Any] | None = print,
                    evidence: Callable[[Mapping[str, Any]], Any] | None = None,
                    domain: str | None = None,
                    candidates: Callable[[Mapping[str, Any]], Any] | None = None) -> list[System]:
    """LLM systems of completed training stages for the benchmark ``ds``.

    ``stages``: stage folders to use as given. Otherwise every completed stage under
    ``<artifacts>/sft/`` and ``<artifacts>/gdpo/`` built on this benchmark is taken: its manifest
    inputs, or those of a stage upstream of it (an ``sft_data`` or ``sft`` stage), name ``ds``'s
    training rows (``"rows:<rows_fingerprint(ds['train'])>"``) or the ``benchmark`` stage folder.
    When several stages get the same label (:func:`trained_label`) the newest is kept. SFT stages
    load with ``safecrs_core.train.sft.load_sft_model``, GDPO stages with
    ``safecrs_core.train.gdpo.load_gdpo_model``; a stage whose loader cannot be imported is skipped with
    a note.

    Stages trained with evidence prompts (an ``evidence`` parameter, labelled ``... + evidence``)
    are evaluated with the same prompts: ``evidence(settings)`` must return the
    :class:`~safecrs_core.train.prompts.EvidencePrompts` for the stage's settings. Without
    ``evidence`` they are left out (with a note).

    Stages trained with candidates in context (a ``candidates`` parameter) keep their label and
    are prompted with the same candidates: ``candidates(settings)`` returns the prompts
    (:func:`~safecrs_core.train.candidates.context_prompts`); without it they are left out (with a note).

    ``domain``: the prompts' domain (:func:`stage_system`); None: each stage's own ``domain``
    parameter, else movies. A stage whose ``domain`` parameter names another domain is left out
    (an error for ``stages`` given)."""
    from ..pipeline import artifacts_root, built_on, is_done, read_manifest, stage_ref

    say = log or (lambda _m: None)
    if stages is None:
        wanted = {f"rows:{rows_fingerprint(ds['train'])}"}
        if benchmark is not None:
            wanted.add(stage_ref(benchmark))
        found = []
        for stage in ("sft", "gdpo"):
            folder = artifacts_root(root) / stage
            for d in sorted(folder.glob("*")) if folder.is_dir() else []:
                if d.name.startswith(".") or not is_done(d):
                    continue
                man = read_manifest(d)
                if built_on(man, wanted, root):
                    found.append((man.get("finished", ""), d))
        folders = [d for _, d in sorted(found, key=lambda x: x[0], reverse=True)]
    else:
        folders = [Path(s) for s in stages]
    out, labels = [], set()
    for d in folders:
        man = read_manifest(d)
        label = trained_label(man)
        if label in labels:
            say(f"[evaluate] {label}: {d.name} skipped, a newer stage has this label")
            continue
        try:
            if man["stage"] == "sft":
                from ..train.sft import load_sft_model as loader
            else:
                from ..train.gdpo import load_gdpo_model as loader
        except ImportError as exc:
            say(f"[evaluate] {label}: cannot load {d} ({exc}); skipped")
            continue
        own = (man.get("params") or {}).get("domain")
        if domain is not None and own is not None and own != domain:
            if stages is not None:
                raise ValueError(f"{d} was trained on {own!r}, not {domain!r}")
            say(f"[evaluate] {label}: {d.name} left out (trained on {own!r}, not {domain!r})")
            continue
        settings = (man.get("params") or {}).get("evidence")
        if settings and evidence is None:
            if stages is not None:
                raise ValueError(f"{d} was trained with evidence prompts; pass evidence=... to evaluate it")
            say(f"[evaluate] {label}: {d.name} left out (trained with evidence prompts; ask for evidence systems)")
            continue
        cand = (man.get("params") or {}).get("candidates")
        if cand and candidates is None:
            if stages is not None:
                raise ValueError(f"{d} was trained with candidates in context; pass candidates=... to evaluate it")
            say(f"[evaluate] {label}: {d.name} left out (trained with candidates in context)")
            continue
        labels.add(label)
        system = stage_system(label, d, loader, description=f"{man['stage']}/{d.name}",
                              domain=domain or own or "movies")
        if settings:
            system = evidence_system(system, evidence(settings), name=label)
        elif cand:
            system = candidates_system(system, candidates(cand))
        out.append(system)
    order = {"SFT": 0, "Safe-SFT": 1, "Safe-GDPO": 2, "Safe-SFT + evidence": 3, "Safe-GDPO + evidence": 4}

    def rank(system: System):  # SFT, Safe-SFT, Safe-GDPO, then its ablations by name
        base, _, detail = system.name.partition(" (")
        ablation = bool(detail.rstrip(")").replace("from the base model", "").strip(", "))
        return order.get(base, 3), ablation, system.name

    return sorted(out, key=rank)


def profile_stages(profile: str, ds, benchmark: str | os.PathLike, *, domain: str = "movies",
                   catalog=None) -> dict[str, Path]:
    """``{label: folder}`` of the training stages the notebooks train under ``profile`` for
    ``domain``, built or not: notebook 02's SFT variants and notebook 03's Safe-GDPO run and
    ablations, from their parameters cells with the profile's overrides
    (:func:`~safecrs_core.pipeline.notebook_values`). Safe-GDPO starts from this Safe-SFT stage when
    notebook 03 asks for it (``start_from_sft``) and the stage is built, else from its base model,
    as notebook 03 does. The evaluation scores exactly these stages, so a stage left in the
    artifacts by another setting never appears as one of this profile's systems. ``ds``: the
    benchmark (its train split keys the Safe-GDPO stages); ``catalog``: the domain's (for the
    candidates in context)."""
    from ..pipeline import is_done, notebook_values
    from ..train import gdpo as G
    from ..train import sft as S
    from ..train.candidates import context_prompts

    v02 = notebook_values("02_safe_sft", profile, domain=domain)
    out = {trained_label({"stage": "sft", "params": {"variant": v}}):
           S.sft_stage_dir(S.SafeSFTConfig.from_values(v02, variant=v), benchmark) for v in v02["variants"]}
    v03 = notebook_values("03_safe_gdpo", profile, domain=domain)
    start = out.get("Safe-SFT")
    if not (v03["start_from_sft"] and start is not None and is_done(start)):
        start = v03["base_model"]
    params = G.GDPOParams.from_values(v03)
    prompts = context_prompts(v03["candidates"], ds, catalog or World.of(domain).catalog)
    for p in [params, *G.ablation_params(params, v03["ablations"]).values()]:
        folder = G.gdpo_stage_dir(p, start, ds["train"], prompts)
        inputs = [] if isinstance(start, Path) else [f"model:{start}"]
        out[trained_label({"stage": "gdpo", "params": p.to_params(), "inputs": inputs})] = folder
    return out


def available_systems(profile: str, ds, *, benchmark: str | os.PathLike | None = None,
                      base_model: str = "smollm2-135m-instruct", baselines: bool = True,
                      zero_shot: bool = True, trained: bool = True, catalog=None, oracle=None,
                      n_popular: int = 5000, context_turns: int = 4, progress: bool = True,
                      evidence: bool = False, evidence_n: int | None = None, evidence_max_tags: int | None = None,
                      log: Callable[[str], Any] | None = print, domain: str | None = None,
                      grounding: Mapping[str, Any] | None = None,
                      candidates: Mapping[str, Any] | None = None,
                      stages: Mapping[str, str | os.PathLike] | None = None) -> list[System]:
    """Every system that can be evaluated for ``profile`` on the benchmark ``ds``: the baselines,
    the zero-shot ``base_model`` and the fine-tuned models whose training stages are complete
    (:func:`trained_systems`; ``benchmark``: the benchmark stage folder of ``ds``); prints a note
    for the fine-tuned systems that are not built. ``stages`` (``{label: folder}``, e.g.
    :func:`profile_stages`): the training stages to score, those not built named in the note;
    None: every completed stage built on this benchmark (:func:`trained_systems`).

    ``evidence=True`` (or an ``evidence_n``) adds the evidence-in-context systems: the zero-shot
    model prompted with ``evidence_n`` (default 20) retrieved candidates and their oracle
    evidence (``"... + evidence"``, :func:`evidence_system`) and the models trained with evidence
    prompts (``Safe-SFT + evidence``, ``Safe-GDPO + evidence``), each prompted as it was
    trained. Candidates come from the retrieval baseline's pool (``n_popular``,
    ``context_turns``). Without it the list, and every key, is as before.

    ``domain`` (``"movies"`` or ``"games"``; None: the given catalog's or oracle's, else movies):
    the baselines' domain, the LLMs' prompts and the catalog and oracle loaded for evidence.

    ``grounding`` (a :class:`~safecrs_core.train.grounding.Grounding` or its dict; None: free
    decoding): every LLM system without evidence prompts decodes grounded; in universe mode the
    universe is built from ``ds["train"]`` (:func:`~safecrs_core.train.grounding.universe_items`).

    ``candidates`` (:func:`~safecrs_core.train.prompts.candidate_settings`; None: off): the zero-shot
    model is prompted with these candidates in context (no oracle verdicts), the candidate source
    joins the baselines (:func:`candidate_baselines`), and trained stages with a ``candidates``
    parameter are prompted with their own candidates (without it they are left out)."""
    from ..train.candidates import evidence_prompts
    from ..pipeline import check_profile
    from ..train.prompts import EVIDENCE_DEFAULTS, EvidencePrompts, evidence_settings

    check_profile(profile)
    world = World.of(domain, catalog, oracle)  # catalog and oracle loaded when first needed
    domain = world.domain
    say = log or (lambda _m: None)
    evidence = evidence or evidence_n is not None or evidence_max_tags is not None
    built: dict[str, EvidencePrompts] = {}

    def evidence_for(settings: Mapping[str, Any]) -> EvidencePrompts:
        full = evidence_settings(settings)
        key = json.dumps(full, sort_keys=True)
        if key not in built:
            built[key] = evidence_prompts(ds, world.catalog, world.oracle, **full, progress=progress, log=log)
        return built[key]

    built_cands: dict[str, Any] = {}

    def candidates_for(settings: Mapping[str, Any]):
        from ..train.prompts import candidate_settings
        from ..train.candidates import context_prompts
        key = json.dumps(candidate_settings(settings), sort_keys=True)
        if key not in built_cands:
            built_cands[key] = context_prompts(settings, ds, world.catalog)
        return built_cands[key]

    systems: list[System] = []
    if baselines:
        systems += baseline_systems(ds, world.catalog, world.oracle, n_popular=n_popular,
                                    context_turns=context_turns, progress=progress, domain=domain)
        if candidates is not None:
            systems += candidate_baselines(candidates_for(candidates), world.oracle)
    if zero_shot:
        systems.append(zero_shot_system(base_model, domain=domain))
        if candidates is not None:
            systems[-1] = candidates_system(systems[-1], candidates_for(candidates))
        if evidence:
            settings = {"n": EVIDENCE_DEFAULTS["n"] if evidence_n is None else evidence_n,
                        "max_tags": EVIDENCE_DEFAULTS["max_tags"] if evidence_max_tags is None else evidence_max_tags,
                        "n_popular": n_popular, "context_turns": context_turns}
            systems.append(evidence_system(systems[-1], evidence_for(settings)))
    if trained:
        from ..pipeline import is_done

        given = None if stages is None else [Path(d) for d in stages.values() if is_done(d)]
        found = trained_systems(ds, benchmark=benchmark, log=log, evidence=evidence_for if evidence else None,
                                domain=domain, candidates=candidates_for if candidates is not None else None,
                                stages=given)
        names = {s.name.split(" (")[0] for s in found}
        wanted = ("SFT", "Safe-SFT", "Safe-GDPO") + (("Safe-SFT + evidence", "Safe-GDPO + evidence") if evidence else ())
        missing = ([n for n in wanted if n not in names] if stages is None
                   else [label for label, d in stages.items() if not is_done(d)])
        if missing:
            say(f"[evaluate] not built for profile {profile!r} (no completed training stage for this "
                f"benchmark): {', '.join(missing)}; run the training notebooks first")
        systems += found
    if grounding is not None:
        from ..train.grounding import Grounding, universe_items

        settings = Grounding.from_value(grounding)
        universe = None
        if settings.mode == "universe":
            universe = universe_items(world.catalog, ds["train"], settings.n_popular)
        def fits(s: System) -> bool:  # candidates mode grounds the systems whose prompts list candidates
            if s.kind != "llm":
                return False
            has_cands = s.evidence is not None and not getattr(s.evidence, "verdicts", True)
            return has_cands if settings.mode == "candidates" else s.evidence is None

        systems = [grounded_system(s, settings, universe) if fits(s) else s for s in systems]
    return systems


# --------------------------------------------------------------------------------------------
# Running one system


def generation_stage(system: System, rows, k: int = 10, max_new_tokens: int = 256, batch_size: int = 8,
                     progress: bool = True, force: bool = False, log: Callable[[str], Any] | None = print,
                     catalog=None, max_prompt_tokens: int | None = None) -> Path:
    """The cached ``generations`` stage of ``system`` (an LLM) on ``rows`` (module docstring),
    built when missing. Besides ``completions.json`` and ``ids.json`` it holds ``cost.json``:
    per row, ``prompt_tokens``, ``completion_tokens`` and ``seconds`` (its batch's generation
    time shared equally by the batch's rows). A grounded system
    (:attr:`System.grounding`) decodes with its :class:`~safecrs_core.train.grounding.GroundedDecoder`
    (``catalog`` names the items; default: the domain's). ``max_prompt_tokens``: prompts lose
    their oldest turns until they fit (:func:`~safecrs_core.train.sft.fit_prompt`); it keys the stage
    only when set."""
    from ..train.models import generate
    from ..pipeline import run_stage

    if system.kind != "llm":
        raise ValueError(f"{system.name!r} is a {system.kind}, not an LLM")
    params = {"system": system.name, "model": system.ref, "prompt": {"k": k, **dict(system.prompt)},
              "rows": rows_fingerprint(rows), "n_rows": len(rows), "max_new_tokens": max_new_tokens,
              "decoding": "greedy", "stop": [] if system.grounding is not None else list(STOP)}
    if system.evidence is not None:  # only evidence systems: every other key stays as it was
        params["evidence"] = system.evidence.params()
    if system.grounding is not None:  # only grounded systems
        params["grounding"] = system.grounding_params()
    if max_prompt_tokens is not None:
        params["max_prompt_tokens"] = max_prompt_tokens

    def fn(tmp: Path):
        import time

        prompts = system.prompts(rows, k)
        model, tok = system.load()
        if max_prompt_tokens is not None:
            from ..train.sft import fit_prompt
            prompts = [fit_prompt(p, tok, max_prompt_tokens) or p for p in prompts]
        processor = None
        if system.grounding is not None:
            decoder = system.decoder(World.of(llm_domain(system), catalog).catalog, tok, k)
            listed = [dict(r) for r in rows] if not isinstance(rows, list) else rows
            processor = lambda batch: decoder.processor([listed[i] for i in batch])  # noqa: E731
        timings: list[dict] = []
        t0 = time.perf_counter()
        texts = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         progress=progress, stop=params["stop"], timings=timings, processor=processor)
        seconds = time.perf_counter() - t0
        n = max(len(texts), 1)
        # per row; rows the generator did not time share the total (None: nothing to count with)
        cost = {"prompt_tokens": [None] * len(texts), "seconds": [round(seconds / n, 4)] * len(texts),
                "completion_tokens": [len(tok(t, add_special_tokens=False)["input_ids"]) if callable(tok) else None
                                      for t in texts]}
        for b in timings:
            for i, n in zip(b["rows"], b["prompt_tokens"]):
                cost["prompt_tokens"][i] = int(n)
                cost["seconds"][i] = round(b["seconds"] / len(b["rows"]), 4)
        (tmp / "completions.json").write_text(json.dumps(texts, ensure_ascii=False, indent=0))
        (tmp / "ids.json").write_text(json.dumps([str(i) for i in column(rows, "id")]))
        (tmp / "cost.json").write_text(json.dumps(cost))
        if system.evidence is not None:
            (tmp / "prompts.json").write_text(json.dumps(prompts, ensure_ascii=False, indent=0))
        def mean(values):
            known = [v for v in values if v is not None]
            return round(sum(known) / len(known), 1) if known else None

        return {"n": len(texts), "generate_seconds": round(seconds, 1), "batch_size": batch_size,
                "mean_prompt_tokens": mean(cost["prompt_tokens"]),
                "mean_completion_tokens": mean(cost["completion_tokens"])}

    return run_stage("generations", params, [system.ref], fn, force=force, log=log)


def generations(system: System, rows, k: int = 10, max_new_tokens: int = 256, batch_size: int = 8,
                progress: bool = True, force: bool = False, log: Callable[[str], Any] | None = print,
                catalog=None, max_prompt_tokens: int | None = None) -> list[str]:
    """Greedy completions of ``system`` (an LLM) for ``rows``, cached (:func:`generation_stage`)."""
    d = generation_stage(system, rows, k=k, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         progress=progress, force=force, log=log, catalog=catalog,
                         max_prompt_tokens=max_prompt_tokens)
    return json.loads((d / "completions.json").read_text())


def generation_cost(system: System, rows, k: int = 10, max_new_tokens: int = 256, batch_size: int = 8,
                    tokenizer=None, progress: bool = True, log: Callable[[str], Any] | None = print) -> pd.DataFrame:
    """Per row of ``rows``: ``prompt_tokens``, ``completion_tokens`` and generation ``seconds``
    of ``system`` (an LLM), from its :func:`generation_stage` (generated when not cached).
    Stages written before ``cost.json`` existed get token counts from ``tokenizer`` (default:
    the system's own, which loads the model) and the stage's total generation time spread
    equally over the rows."""
    d = generation_stage(system, rows, k=k, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         progress=progress, log=log)
    ids = json.loads((d / "ids.json").read_text())
    if (d / "cost.json").is_file():
        cost = json.loads((d / "cost.json").read_text())
    else:
        from ..pipeline import read_manifest

        tok = tokenizer if tokenizer is not None else system.load()[1]
        texts = json.loads((d / "completions.json").read_text())
        prompts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in system.prompts(rows, k)]
        total = float((read_manifest(d).get("result") or {}).get("generate_seconds") or float("nan"))
        cost = {"prompt_tokens": [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts],
                "completion_tokens": [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts],
                "seconds": [total / max(len(texts), 1)] * len(texts)}
    df = pd.DataFrame({"system": system.name, "id": ids, **cost})
    for c in ("prompt_tokens", "completion_tokens", "seconds"):
        df[c] = pd.to_numeric(df[c], errors="coerce")  # None (not counted) -> NaN
    return df


def cost_table(systems: Sequence[System], rows, k: int = 10, max_new_tokens: int = 256, batch_size: int = 8,
               tokenizer=None, progress: bool = True, log: Callable[[str], Any] | None = print) -> pd.DataFrame:
    """Per LLM system (baselines are skipped): mean prompt tokens, completion tokens and
    generation seconds per row (:func:`generation_cost`), plus the number of rows."""
    frames = [generation_cost(s, rows, k=k, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              tokenizer=tokenizer, progress=progress, log=log) for s in systems if s.kind == "llm"]
    if not frames:
        return pd.DataFrame(columns=["prompt_tokens", "completion_tokens", "seconds", "n"])
    df = pd.concat(frames, ignore_index=True)
    order = list(dict.fromkeys(df["system"]))
    out = df.groupby("system")[["prompt_tokens", "completion_tokens", "seconds"]].mean()
    out["n"] = df.groupby("system").size()
    return out.loc[order]


def run_system(system: System, rows, *, k: int = 10, ks: Sequence[int] = (5, 10), catalog=None, oracle=None,
               max_new_tokens: int = 256, batch_size: int = 8, progress: bool = True,
               log: Callable[[str], Any] | None = print, domain: str | None = None,
               max_prompt_tokens: int | None = None) -> pd.DataFrame:
    """Per-sample scores of ``system`` on ``rows`` (:mod:`safecrs_core.evaluation.metrics` columns plus
    ``system``, ``group``, ``kind`` and, for LLMs, ``completion``).

    ``catalog``/``oracle`` default to those of ``domain``; None: the domain of an LLM's prompt
    (:func:`llm_domain`), else of the given catalog or oracle, else movies. They must agree."""
    domain = resolve_domain(domain, ("system's prompt", llm_domain(system)), ("catalog", catalog),
                             ("oracle", oracle))
    world = World.of(domain, catalog, oracle)
    oracle = world.oracle
    if system.kind == "llm":
        catalog = world.catalog
        texts = generations(system, rows, k=k, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            progress=progress, log=log, catalog=catalog, max_prompt_tokens=max_prompt_tokens)
        df = M.score_completions(texts, rows, catalog, oracle, k=k, ks=ks)
        df["completion"] = texts
    else:
        lists = system.recommend(rows, k)
        if len(lists) != len(rows):
            raise ValueError(f"{system.name}: {len(lists)} lists for {len(rows)} rows")
        df = M.score_ranked_ids(lists, rows, oracle, k=k, ks=ks)
        df["completion"] = None
    df.insert(0, "system", system.name)
    df.insert(1, "group", system.group)
    df.insert(2, "kind", system.kind)
    return df


# --------------------------------------------------------------------------------------------
# Many systems: the results stage


def results_stage(systems: Sequence[System], rows, *, profile: str | None = None, label: str = "main", k: int = 10,
                  ks: Sequence[int] = (5, 10), n_boot: int = 1000, seed: int = 0, max_new_tokens: int = 256,
                  batch_size: int = 8, catalog=None, oracle=None, progress: bool = True, force: bool = False,
                  log: Callable[[str], Any] | None = print, domain: str | None = None,
                  max_prompt_tokens: int | None = None, subsets: Mapping[str, int] | None = None) -> Path:
    """Run every system on ``rows`` and write the results stage (module docstring); cached by the
    systems' keys, the rows' fingerprint and the evaluation parameters. ``profile`` and ``label``
    name the evaluation so that :func:`find_results` can find it again (they key the stage too;
    :func:`results_label` gives a domain's label). ``domain``: as in :func:`run_system`, one for
    all systems (the rows and the systems' keys already tell domains apart, so it keys nothing).
    ``subsets``: ``{system name: n}`` for systems scored on the first ``n`` of ``rows`` only
    (the table's ``n`` column shows it); it keys the stage only when set."""
    from ..pipeline import run_stage

    systems = list(systems)
    subsets = {str(name): int(n) for name, n in (subsets or {}).items()}
    unknown = sorted(set(subsets) - {s.name for s in systems})
    if unknown:
        raise ValueError(f"subsets name systems that are not evaluated: {unknown}")
    if any(n < 1 for n in subsets.values()):
        raise ValueError(f"subset sizes must be positive, got {subsets}")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must be unique, got {names}")
    if not systems:
        raise ValueError("no systems to evaluate")
    domain = resolve_domain(domain, *((f"prompt of {s.name!r}", llm_domain(s)) for s in systems),
                             ("catalog", catalog), ("oracle", oracle))
    ks = tuple(sorted(set(ks) | {k}))
    params = {"profile": profile, "label": label, "systems": [s.key() for s in systems],
              "rows": rows_fingerprint(rows), "n_rows": len(rows), "k": k, "ks": list(ks), "n_boot": n_boot, "seed": seed, "max_new_tokens": max_new_tokens}
    if max_prompt_tokens is not None:
        params["max_prompt_tokens"] = max_prompt_tokens
    if subsets:
        params["subsets"] = dict(sorted(subsets.items()))

    def rows_of(s: System):
        n = subsets.get(s.name)
        if n is None or n >= len(rows):
            return rows
        return rows.select(range(n)) if hasattr(rows, "select") else list(rows)[:n]

    def fn(tmp: Path):
        frames = [run_system(s, rows_of(s), k=k, ks=ks, catalog=catalog, oracle=oracle, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, progress=progress, log=log, domain=domain,
                             max_prompt_tokens=max_prompt_tokens) for s in systems]
        per_sample = pd.concat(frames, ignore_index=True)
        per_sample.to_parquet(tmp / "per_sample.parquet", index=False)
        summary = summarize_systems(per_sample, names, n_boot=n_boot, seed=seed)
        summary.to_csv(tmp / "summary.csv")
        per_trait = summarize_systems(per_sample, names, by_trait=True, n_boot=n_boot, seed=seed,
                                      metrics=[f"svr@{k}", f"recall@{k}", f"unknown@{k}"])
        per_trait.to_csv(tmp / "per_trait.csv")
        (tmp / "summary.md").write_text(results_markdown(summary, k))
        (tmp / "per_trait.md").write_text(
            M.format_table(per_trait, [f"svr@{k}", f"recall@{k}"]).to_markdown() + "\n")
        (tmp / "systems.json").write_text(json.dumps(
            [{**s.key(), "group": s.group, "description": s.description} for s in systems], indent=1))
        return {s: {m: _finite(summary.loc[s, m]) for m in main_metrics(k)} for s in names}

    stage = run_stage("results", params, [], fn, force=force, log=log)
    if profile is not None:  # what find_results serves for this profile and label from now on
        from ..pipeline import atomic_write_json, stage_ref
        atomic_write_json(_last_results_file(profile, label), {"stage": stage_ref(stage)})
    return stage


def _last_results_file(profile: str, label: str, root: str | os.PathLike | None = None) -> Path:
    from ..pipeline import artifacts_root
    return artifacts_root(root) / "results" / ".last" / f"{profile}--{label}.json"


def _finite(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 6)


def summarize_systems(per_sample: pd.DataFrame, order: Sequence[str] | None = None, by_trait: bool = False,
                      n_boot: int = 1000, seed: int = 0, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`~safecrs_core.evaluation.metrics.summarize` per system (or per system and trait), systems in
    ``order``."""
    by = ["system", "trait"] if by_trait else "system"
    summary = M.summarize(per_sample, by=by, metrics=metrics, n_boot=n_boot, seed=seed)
    order = list(order) if order is not None else list(dict.fromkeys(per_sample["system"]))
    if by_trait:
        rank = {s: i for i, s in enumerate(order)}
        keys = sorted(summary.index, key=lambda t: (rank.get(t[0], len(rank)), t[1]))
        return summary.loc[keys]
    return summary.loc[[s for s in order if s in summary.index]]


def results_markdown(summary: pd.DataFrame, k: int = 10, digits: int = 3) -> str:
    """The main table (:func:`main_metrics`, mean [95% CI]) as markdown."""
    return M.format_table(summary, main_metrics(k), digits=digits).to_markdown() + "\n"


@dataclass
class Results:
    """A loaded results stage: per-sample scores, summaries and the stage folder."""

    per_sample: pd.DataFrame
    summary: pd.DataFrame
    per_trait: pd.DataFrame
    systems: list[dict]
    stage: Path

    @property
    def names(self) -> list[str]:
        return [s["name"] for s in self.systems]


def load_results(stage: str | os.PathLike) -> Results:
    d = Path(stage)
    per_sample = pd.read_parquet(d / "per_sample.parquet")
    per_sample["ids"] = per_sample["ids"].map(lambda v: [] if v is None else list(v))
    summary = pd.read_csv(d / "summary.csv", index_col=0)
    per_trait = pd.read_csv(d / "per_trait.csv", index_col=[0, 1])
    systems = json.loads((d / "systems.json").read_text())
    return Results(per_sample, summary, per_trait, systems, d)


def find_results(profile: str, label: str = "main", root: str | os.PathLike | None = None) -> Path:
    """The results stage of ``profile`` and ``label`` that :func:`results_stage` last computed or
    loaded (notebook 04 writes them), so a results stage of another setting (a subset of the
    systems, other rows) that is newer is not served in its place; when that record is missing
    or names a stage that is gone, the newest completed one."""
    from ..pipeline import artifacts_root, is_done, read_manifest

    folder = artifacts_root(root) / "results"
    try:
        last = folder.parent / json.loads(_last_results_file(profile, label, root).read_text(encoding="utf-8"))["stage"]
        if is_done(last):
            return last
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = []
    for d in sorted(folder.glob("*")) if folder.is_dir() else []:
        if d.name.startswith(".") or not is_done(d):
            continue
        man = read_manifest(d)
        if man["params"].get("profile") == profile and man["params"].get("label") == label:
            found.append((man.get("finished", ""), d))
    if not found:
        raise FileNotFoundError(f"no results stage for profile {profile!r} and label {label!r} under {folder}; "
                                f"run notebook 04 (python scripts/run_notebooks.py --profile {profile} --only 04)")
    return max(found, key=lambda x: x[0])[1]


def results_label(name: str = "main", domain: str = "movies") -> str:
    """The results label ``name`` on ``domain``: ``name`` for movies (notebooks 04 and 05 use
    ``"main"``), ``"<domain>_<name>"`` otherwise."""
    return name if domain == "movies" else f"{domain}_{name}"


def baselines_label(domain: str = "movies") -> str:
    """The results label of the baselines on a domain's whole test split: ``"baselines_full"``
    for movies (notebook 04), ``"<domain>_baselines_full"`` otherwise."""
    return results_label("baselines_full", domain)


def baselines_stage(profile: str, domain: str = "movies", *, seed: int = 0, k: int = 10, n_boot: int = 1000,
                    n_popular: int = 5000, context_turns: int = 4, catalog=None, oracle=None,
                    progress: bool = True, log: Callable[[str], Any] | None = print) -> Path:
    """The results stage of the four baselines (:func:`baseline_systems`) on the whole test split
    of ``profile``'s benchmark for ``domain`` (built or loaded, cached), labelled
    :func:`baselines_label`. Notebook 04 (movies) and notebook 07 (both domains) read it from
    here, so with the same settings they share one stage. ``catalog``/``oracle`` default to the
    domain's."""
    from ..benchmark import benchmark_for_profile

    extra = {} if domain == "movies" else {"domain": domain}
    ds, _stats, _stage = benchmark_for_profile(profile, seed=seed, **extra)
    world = World.of(domain, catalog, oracle)
    systems = baseline_systems(ds, world.catalog, world.oracle, n_popular=n_popular, context_turns=context_turns,
                               progress=progress, domain=domain)
    return results_stage(systems, ds["test"], profile=profile, label=baselines_label(domain), k=k, n_boot=n_boot,
                         seed=seed, catalog=catalog, oracle=oracle, progress=progress, log=log)


def constraint_kind(constraint_id: str) -> str:
    """``"age"`` for an age constraint, ``"trait"`` for a sensitivity trait (a row's ``trait``)."""
    from ..safety import traits as T

    return "age" if constraint_id in T.AGE_CONSTRAINT_IDS else "trait"


def domain_table(summaries: Mapping[str, pd.DataFrame], metrics: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """Results of several domains side by side: one column block per domain (``summaries``:
    domain label -> a results summary indexed by system), each ``n`` then ``metrics`` as mean
    [95% CI] (:func:`~safecrs_core.evaluation.metrics.format_table`); systems in first-seen order, ``"-"``
    where a domain lacks a system."""
    order = list(dict.fromkeys(s for summary in summaries.values() for s in summary.index))
    blocks = {}
    for label, summary in summaries.items():
        block = M.format_table(summary, metrics, digits).reindex(order)
        if "n" in block:  # counts stay integers where a missing system made the column float
            block["n"] = block["n"].astype("Int64")
        blocks[label] = block
    table = pd.concat(blocks, axis=1)
    return table.astype(object).where(table.notna(), "-")


def trait_table(per_trait: pd.DataFrame, metric: str, coverage: pd.DataFrame | None = None,
                traits: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
    """Per trait (rows, named): the number of conversations and ``metric`` as mean [95% CI] per
    system (columns), from a per-(system, trait) summary (:attr:`Results.per_trait`). With
    ``coverage`` (``Oracle.coverage()``) the oracle's coverage and unsafe item count of each trait
    come first. ``traits``: the traits to show (default: all present), in that order."""
    from ..safety import traits as T

    df = per_trait.reset_index()
    sys_col, trait_col = df.columns[0], df.columns[1]
    present = list(dict.fromkeys(df[trait_col]))
    traits = [t for t in (traits if traits is not None else present) if t in present]
    systems = list(dict.fromkeys(df[sys_col]))
    f = f"{{:.{digits}f}}"
    out = pd.DataFrame(index=pd.Index(traits, name="trait"))
    if coverage is not None:
        out["coverage"] = [f"{float(coverage.loc[t, 'coverage']):.1%}" for t in traits]
        out["unsafe items"] = [int(coverage.loc[t, "unsafe"]) for t in traits]
    n = df.groupby(trait_col)["n"].max()
    out["conversations"] = [int(n[t]) for t in traits]
    for s in systems:
        sub = df[df[sys_col] == s].set_index(trait_col)
        out[s] = [("n/a" if t not in sub.index or pd.isna(sub.loc[t, metric]) else
                   f.format(sub.loc[t, metric]) + f" [{f.format(sub.loc[t, f'{metric}_lo'])}, "
                   f"{f.format(sub.loc[t, f'{metric}_hi'])}]") for t in traits]
    out.index = [T.get(t).name if t in T.CONSTRAINT_IDS else t for t in traits]
    out.index.name = "trait"
    return out


def evaluate_systems(systems: Sequence[System], rows, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per-sample frame with a system column, summary with CIs)`` of ``systems`` on ``rows``;
    ``kwargs`` go to :func:`results_stage` (cached)."""
    res = load_results(results_stage(systems, rows, **kwargs))
    return res.per_sample, res.summary


def reasoning_table(results: Results, rows, catalog=None, oracle=None, prompts=None) -> pd.DataFrame:
    """:func:`~safecrs_core.train.sft.reasoning_summary` of every LLM system of ``results`` on its own
    conversations (``rows``: the split they come from): whether its reasoning names the user's
    sensitivity and how many of the titles it leaves out are unsafe, against the unsafe share of
    the candidates in its prompts (``prompts``: the
    :func:`~safecrs_core.train.candidates.context_prompts` of the LLMs; None: that column is left out)."""
    from ..train.sft import reasoning_frame, reasoning_summary

    world = World.of(None, catalog, oracle)
    catalog, oracle = world.catalog, world.oracle
    frames = {}
    for name, g in results.per_sample.groupby("system", sort=False):
        if g["kind"].iloc[0] != "llm":
            continue
        sub = rows_by_id(rows, list(g["id"]))
        ids = prompts.ids(sub) if prompts is not None else None
        frames[name] = reasoning_frame(list(g["completion"].fillna("")), sub, catalog, oracle, candidates=ids)
    return reasoning_summary(frames)


def publish_table(results: Results | str | os.PathLike, path: str | os.PathLike | None = None,
                  domain: str = "movies") -> Path:
    """Copy the main results table (``summary.md``) to ``path`` (default
    ``results_table.md``, ``results_table_<domain>.md`` for another domain, in
    ``$SAFECRS_GENERATED``, else ``<repo>/book/_generated``; the tests point the variable at a
    temporary folder)."""
    from ..pipeline import repo_root

    stage = results.stage if isinstance(results, Results) else Path(results)
    name = "results_table.md" if domain == "movies" else f"results_table_{domain}.md"
    folder = Path(os.environ.get("SAFECRS_GENERATED") or repo_root() / "book" / "_generated")
    dest = Path(path) if path is not None else folder / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stage / "summary.md", dest)
    return dest


def evidence_table(summary: pd.DataFrame, cost: pd.DataFrame, k: int = 10, digits: int = 3) -> pd.DataFrame:
    """Relevance, safety and cost side by side for the systems of ``cost`` (a :func:`cost_table`,
    e.g. each LLM with and without evidence prompts): Recall@k, SVR@k and Unknown@k as mean [95%
    CI] from ``summary`` (a results summary), then the mean prompt tokens, completion tokens and
    generation seconds per conversation."""
    missing = [s for s in cost.index if s not in summary.index]
    if missing:
        raise KeyError(f"systems {missing} have costs but no results in the summary")
    table = M.format_table(summary.loc[list(cost.index)], [f"recall@{k}", f"svr@{k}", f"unknown@{k}"], digits)
    table["prompt tokens"] = cost["prompt_tokens"].round(0).astype("Int64")
    table["completion tokens"] = cost["completion_tokens"].round(0).astype("Int64")
    table["seconds / conversation"] = cost["seconds"].round(2)
    return table


# --------------------------------------------------------------------------------------------
# Reading results


def rows_by_id(rows, ids: Sequence[str]) -> list[dict]:
    """The rows (as dicts) with the given ids, in that order."""
    want = {str(i) for i in ids}
    found = {str(r["id"]): dict(r) for r in rows if str(r["id"]) in want}
    missing = [i for i in ids if str(i) not in found]
    if missing:
        raise KeyError(f"rows not found: {missing[:5]}")
    return [found[str(i)] for i in ids]


def example_lists(per_sample: pd.DataFrame, row: Mapping, catalog, oracle, k: int = 10) -> pd.DataFrame:
    """Each system's list for one benchmark ``row`` side by side: rank x system cells
    ``"Title (Year)"`` marked ``[unsafe]`` / ``[unknown]`` by the oracle for the row's trait and
    ``[hit]`` for ground-truth targets (seen and duplicate items already removed by the metrics)."""
    from ..safety.oracle import UNKNOWN, UNSAFE

    sub = per_sample[per_sample["id"] == row["id"]]
    targets = ref_ids(row.get("targets"))
    cols = {}
    for name, ids in zip(sub["system"], sub["ids"]):
        ids = list(ids)[:k]
        verdicts = oracle.check(ids, row["trait"])[0] if ids else []
        cells = []
        for i, v in zip(ids, verdicts):
            label = catalog.display(i) if i is not None and i in catalog else "(unresolved title)"
            marks = [m for m, on in (("hit", i in targets), ("unsafe", v == UNSAFE), ("unknown", v == UNKNOWN)) if on]
            cells.append(label + "".join(f" [{m}]" for m in marks))
        cols[name] = cells + [""] * (k - len(cells))
    return pd.DataFrame(cols, index=pd.RangeIndex(1, k + 1, name="rank"))


# --------------------------------------------------------------------------------------------
# The release evaluation convention and the reference lookup audit


def _system_lines(group: pd.DataFrame, catalog) -> list[list[tuple[str, int | None, str | None]]]:
    """The (title, year, item id by our resolver) lines of one system's lists as the release
    convention reads them: an LLM's parsed completion with repeats kept, a baseline's item ids
    as catalog titles."""
    from ..train.prompts import parse_completion

    if group["kind"].iloc[0] == "llm":
        return [[(it.title, it.year, it.item_id)
                 for it in parse_completion(t or "", resolver=catalog, keep_duplicates=True).items]
                for t in group["completion"]]
    return [[(*line, i) for i, line in zip(ids, M.catalog_lines(catalog, ids)) if line is not None]
            for ids in group["ids"]]


def rescore(per_sample: pd.DataFrame, rows, catalog, oracle, *, k: int = 10, ks: Sequence[int] = (5, 10),
            convention: str = "release", lookup=None) -> pd.DataFrame:
    """``per_sample`` (a results stage's) scored again under ``convention`` from the same
    completions and lists, without generating anything. Baselines are read from their stored
    ``ids`` (their first ``k`` items, seen items already left out)."""
    if convention == "release" and lookup is None:
        lookup = M.ReleaseLookup(catalog)  # built once for all systems
    frames = []
    for name, g in per_sample.groupby("system", sort=False):
        sub = rows_by_id(rows, list(g["id"]))
        if g["kind"].iloc[0] == "llm":
            df = M.score_completions(list(g["completion"].fillna("")), sub, catalog, oracle, k=k, ks=ks,
                                     convention=convention, lookup=lookup)
        else:
            df = M.score_ranked_ids([list(i) for i in g["ids"]], sub, oracle, k=k, ks=ks, convention=convention,
                                    catalog=catalog, lookup=lookup)
        df.insert(0, "system", name)
        df.insert(1, "group", g["group"].iloc[0])
        df.insert(2, "kind", g["kind"].iloc[0])
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def convention_table(per_sample: pd.DataFrame, rows, catalog, oracle, *, k: int = 10, n_boot: int = 1000,
                     seed: int = 0, digits: int = 3) -> pd.DataFrame:
    """Recall@k, NDCG@k and SVR@k of every system under both conventions side by side (mean
    [95% CI]; columns ``(convention, metric)``), from the same completions and lists."""
    metrics = [f"recall@{k}", f"ndcg@{k}", f"svr@{k}"]
    order = list(dict.fromkeys(per_sample["system"]))
    release = rescore(per_sample, rows, catalog, oracle, k=k, ks=(k,))
    parts = {name: M.format_table(summarize_systems(df, order, n_boot=n_boot, seed=seed, metrics=metrics), metrics,
                                  digits=digits).drop(columns="n")
             for name, df in (("project", per_sample), ("release", release))}
    out = pd.concat(parts, axis=1)
    out.insert(0, ("", "n"), per_sample.groupby("system", sort=False).size().reindex(out.index).to_numpy())
    return out


def lookup_audit(per_sample: pd.DataFrame, rows, catalog, oracle, *, k: int = 10) -> tuple[dict, pd.DataFrame]:
    """What the reference lookup, with its two normalisations as described
    (:func:`~safecrs_core.evaluation.metrics.release_title_key` to build, :func:`~safecrs_core.evaluation.metrics.release_query_key`
    to look up), would do to our numbers. Returns the catalog's share of titles it never finds,
    and per system: the recommended lines it never finds, the share of the oracle's unsafe
    recommendations (items our resolver names) it counts as safe, and SVR@k under the project convention, the release
    convention (one normalisation) and the release convention with the reference lookup."""
    from ..safety.oracle import UNSAFE

    consistent = M.ReleaseLookup(catalog)
    reference = M.ReleaseLookup(catalog, query=M.release_query_key)
    items = catalog.items
    lost = [reference.find(t, M.year_or_none(y)) is None for t, y in zip(items["title"], items["year"])]
    with_article = items["title"].str.match(r"(?i)^(?:the|a|an)\s")
    cat = {"titles": len(items), "never_found": float(np.mean(lost)),
           "with_leading_article": float(with_article.mean()),
           "with_punctuation": float(items["title"].str.contains(r"[^\w\s]", regex=True).mean())}
    svr = {"project": per_sample,
           "release": rescore(per_sample, rows, catalog, oracle, k=k, ks=(k,), lookup=consistent),
           "release, reference lookup": rescore(per_sample, rows, catalog, oracle, k=k, ks=(k,), lookup=reference)}
    svr = {label: df.groupby("system", sort=False)[f"svr@{k}"].mean() for label, df in svr.items()}
    out = {}
    for name, g in per_sample.groupby("system", sort=False):
        lines = _system_lines(g, catalog)
        traits = [t for t, ls in zip(g["trait"], lines) for _ in ls]
        flat = [x for ls in lines for x in ls]
        ids = [i for _, _, i in flat]
        found_ids = [reference.find(t, y) for t, y, _ in flat]
        # ids None (not found) come back unknown, so never unsafe
        unsafe, ref_unsafe = ((oracle.check(x, traits)[0] == UNSAFE) if flat else np.zeros(0, dtype=bool)
                              for x in (ids, found_ids))
        out[name] = {"lines": len(flat),
                     "never_found": float(np.mean([i is None for i in found_ids])) if flat else np.nan,
                     "unsafe_counted_safe": float((unsafe & ~ref_unsafe).sum() / unsafe.sum()) if unsafe.any() else np.nan,
                     **{f"svr@{k} ({label})": float(means[name]) for label, means in svr.items()}}
    return cat, pd.DataFrame(out).T


def load_paper_results() -> dict:
    """``safecrs_core/data/paper_results.json``: numbers reported by the paper's authors (different
    data and models), with their sources."""
    from importlib import resources
    return json.loads(resources.files("safecrs_core").joinpath("data/paper_results.json").read_text("utf-8"))


def paper_table(reported: Mapping | None = None) -> pd.DataFrame:
    """The reported per-system table of :func:`load_paper_results` (index: system)."""
    reported = reported or load_paper_results()
    table = reported.get("table") or {}
    rows = [{k: v for k, v in r.items() if k != "reported"} for r in table.get("rows", [])]
    return pd.DataFrame(rows).set_index("system") if rows else pd.DataFrame()


__all__ = ["find_results", "results_label", "baselines_stage", "baselines_label", "domain_table", "trait_table", "constraint_kind",
           "rows_by_id", "example_lists", "load_paper_results", "paper_table",
           "System", "llm_domain", "baseline_systems", "grounded_system", "free_system", "zero_shot_system", "evidence_system", "stage_system", "trained_systems",
           "trained_label", "available_systems", "generation_stage", "generations", "generation_cost", "cost_table",
           "run_system", "results_stage", "evaluate_systems", "load_results",
           "Results", "summarize_systems", "results_markdown", "publish_table", "evidence_table",
           "sample_rows",
           "main_metrics", "rescore", "convention_table", "lookup_audit"]

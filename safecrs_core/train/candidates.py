"""Candidate sources: the items a recommender is allowed to choose from, built from the **train**
split and public data only (never from validation or test targets).

Neighbours (:class:`Neighbours`)
    Score a candidate ``j`` by ``sum_a w_a * (sim_ml(a, j) + conv_weight * sim_conv(a, j))`` over
    the anchors ``a``: the ground-truth items (``w = 1``, when known, as for SFT targets) and the
    items the user mentioned (``w = seen_weight``). ``sim_ml`` is item-item co-rating in MovieLens
    (``ml_latest_small/ratings.csv``: two films co-occur when one user rated both at least
    ``min_rating``; games: the catalog baskets of :func:`game_baskets`); ``sim_conv`` is
    co-mention in the benchmark's training conversations. Both are :class:`CoOccurrence`
    similarities. When the neighbours run out, the training split's most frequent ground truth,
    then the catalog's most popular items, fill the list. :mod:`safecrs_core.train.sft` builds its
    targets from them; the module docstring there gives the tuned defaults.

Candidate prompts
    :func:`neighbour_prompts`: each row's neighbours of its mentioned items as an
    :class:`~safecrs_core.train.prompts.EvidencePrompts` without oracle verdicts (candidates in
    context, optionally with catalog genres); :func:`context_prompts` builds it from the
    ``candidates`` settings of a notebook. :func:`evidence_prompts`: the retrieval baseline's
    candidates with the oracle's evidence (the evidence-in-context systems of notebook 06).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data import sources
from ..data.catalog import resolve_domain
from ..domains import get_domain
from ..world import World
from .prompts import CANDIDATE_DEFAULTS, EVIDENCE_DEFAULTS, EvidencePrompts, candidate_settings, evidence_settings
from ..data.rows import column, item_ids, rows_fingerprint

FALLBACK_POPULAR = 2000  # most popular catalog items appended to the fallback list


# --------------------------------------------------------------------------------------------
# Neighbours


class CoOccurrence:
    """Item-item similarity of binary baskets (a user's liked films, a conversation's items):
    ``sim(a, b) = c_ab / (sqrt(n_a) * n_b ** pop_exponent) * c_ab / (c_ab + shrink)`` with ``c_ab``
    the baskets holding both and ``n_a`` the baskets holding ``a`` (``pop_exponent = 0.5``: cosine)."""

    def __init__(self, baskets: Iterable[Iterable[str]], shrink: float = 2.0, pop_exponent: float = 0.75,
                 name: str = ""):
        baskets = [sorted(set(b)) for b in baskets]
        baskets = [b for b in baskets if b]
        self.name = name
        self.shrink = float(shrink)
        self.pop_exponent = float(pop_exponent)
        self.items = sorted({i for b in baskets for i in b})
        self.index = {it: j for j, it in enumerate(self.items)}
        self._X = self._matrix(baskets)
        self.counts = np.asarray(self._X.sum(0), dtype=np.float32).ravel()
        self.n_baskets = len(baskets)
        self._cache: dict[tuple[str, int], tuple] = {}

    def _matrix(self, baskets: list[list[str]]):
        """The binary basket x item matrix (dense)."""
        X = np.zeros((len(baskets), len(self.items)), dtype=np.float32)
        for r, b in enumerate(baskets):
            X[r, [self.index[i] for i in b]] = 1.0
        return X

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.index

    def _co(self, j: int) -> np.ndarray:
        """Baskets holding item ``j`` and each item (float64, one per item)."""
        return self._X[self._X[:, j] > 0].sum(0).astype(np.float64)

    def neighbours(self, item_id: str, top: int = 200) -> tuple[tuple[str, float], ...]:
        """Up to ``top`` ``(item_id, similarity)`` pairs, most similar first (ties: smaller id)."""
        j = self.index.get(item_id)
        if j is None:
            return ()
        hit = self._cache.get((item_id, top))
        if hit is not None:
            return hit
        co = self._co(j)
        co[j] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            sim = co / (np.sqrt(self.counts[j]) * self.counts ** self.pop_exponent) * co / (co + self.shrink)
        sim = np.nan_to_num(sim)
        nz = np.flatnonzero(sim > 0)
        if len(nz) > top:
            nz = nz[np.argpartition(-sim[nz], top - 1)[:top]]
        order = nz[np.lexsort((nz, -sim[nz]))]
        out = tuple((self.items[i], float(sim[i])) for i in order)
        self._cache[(item_id, top)] = out
        return out


class SparseCoOccurrence(CoOccurrence):
    """:class:`CoOccurrence` on a sparse basket matrix: the same similarity, for many small
    baskets over a large catalog (the game catalog's baskets)."""

    def _matrix(self, baskets: list[list[str]]):
        from scipy import sparse

        rows = np.repeat(np.arange(len(baskets)), [len(b) for b in baskets])
        cols = np.array([self.index[i] for b in baskets for i in b], dtype=np.int64)
        X = sparse.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)),
                              shape=(len(baskets), len(self.items)))
        self._Xc = X.tocsc()  # item columns: the baskets holding an item
        return X

    def _co(self, j: int) -> np.ndarray:
        holding = self._Xc.indices[self._Xc.indptr[j]:self._Xc.indptr[j + 1]]
        return np.asarray(self._X[holding].sum(0), dtype=np.float64).ravel()


def movielens_likes(catalog, min_rating: float = 4.0, data_dir=None) -> list[list[str]]:
    """Per MovieLens user, the catalog ids of the films rated at least ``min_rating``."""
    ratings = pd.read_csv(sources.path("ml_latest_small/ratings.csv", data_dir),
                          usecols=["userId", "movieId", "rating"])
    ml = catalog.items["ml_movie_id"].dropna()
    to_item = dict(zip(ml.astype("int64").tolist(), ml.index.tolist()))
    liked = ratings[ratings["rating"] >= min_rating].copy()
    liked["item_id"] = liked["movieId"].map(to_item)
    liked = liked.dropna(subset=["item_id"])
    return [sorted(g) for _, g in liked.groupby("userId")["item_id"]]


def game_baskets(catalog) -> list[list[str]]:
    """Catalog baskets of the game catalog: the games of one series
    (:func:`~safecrs_core.data.conversations.franchise_key` of the title), of one developer and of one
    publisher; baskets of a single game are left out."""
    from ..data.conversations import franchise_key

    items = catalog.items
    groups: dict[str, list[str]] = defaultdict(list)
    for it, title in items["title"].items():
        key = franchise_key(str(title))
        if key:
            groups[f"series:{key}"].append(it)
    for col in ("developer", "publisher"):
        for it, name in items[col].dropna().items():
            name = str(name).strip().lower()
            if name:
                groups[f"{col}:{name}"].append(it)
    return [sorted(set(groups[k])) for k in sorted(groups) if len(set(groups[k])) >= 2]


class Neighbours:
    """Candidate items for a conversation; see the module docstring for the score."""

    def __init__(self, catalog, signals: Sequence[tuple[CoOccurrence, float]], fallback: Sequence[str],
                 seen_weight: float = 0.5, top: int = 200):
        self.catalog = catalog
        self.signals = [(s, float(w)) for s, w in signals]
        self.seen_weight = float(seen_weight)
        self.top = top
        items = catalog.items
        self._valid = frozenset(items.index[items["year"].notna()])
        pop = items["popularity"].fillna(0.0)
        self._pop = dict(zip(items.index, pop.to_numpy(dtype=float)))
        self.fallback = [i for i in fallback if i in self._valid]

    @classmethod
    def from_benchmark(cls, train_rows, catalog=None, data_dir=None, min_rating: float = 4.0,
                       shrink: float = 2.0, pop_exponent: float = 0.75, conv_weight: float = 2.0,
                       seen_weight: float = 0.5, domain: str | None = None,
                       base: "Neighbours | None" = None) -> "Neighbours":
        """MovieLens co-rating (games: the catalog baskets of :func:`game_baskets`;
        ``min_rating`` unused) plus co-mention in ``train_rows`` (the benchmark's training split);
        fallback: the training ground truth by frequency, then the catalog's most popular items.
        ``domain``: the catalog's domain when None (movies without a catalog). ``base``: reuse
        that instance's co-rating (games: catalog) signal, built with the same settings, instead
        of building it again (only ``train_rows`` differ)."""
        world = World.of(domain, catalog, data_dir=data_dir)
        domain, catalog = world.domain, world.catalog
        if base is not None:
            ml = base.signals[0][0]
        else:  # the domain plug-in's item co-occurrence (movies: MovieLens co-rating; games: catalog baskets)
            co_rating = get_domain(domain).co_rating
            if co_rating is None:
                raise ValueError(f"domain {domain!r} gives no item co-occurrence (co_rating) for neighbour candidates")
            ml = co_rating(catalog, data_dir, min_rating, shrink, pop_exponent)
        convs = [item_ids(r["seen"]) + item_ids(r["targets"]) + item_ids(r["removed_targets"]) for r in train_rows]
        conv = CoOccurrence(convs, shrink, pop_exponent, name="conversations")
        freq = Counter(i for r in train_rows for i in item_ids(r["targets"]) + item_ids(r["removed_targets"]))
        fallback = [i for i, _ in sorted(freq.items(), key=lambda x: (-x[1], x[0]))]
        pop = catalog.items["popularity"].fillna(0.0)
        by_pop = pd.DataFrame({"p": -pop.to_numpy(), "id": pop.index}).sort_values(["p", "id"], kind="stable")
        fallback += [i for i in by_pop["id"].head(FALLBACK_POPULAR).tolist() if i not in freq]
        return cls(catalog, [(ml, 1.0), (conv, conv_weight)], fallback, seen_weight)

    def scores(self, ground_truth: Sequence[str], seen: Sequence[str]) -> dict[str, float]:
        anchors = [(a, 1.0) for a in dict.fromkeys(ground_truth)]
        anchors += [(a, self.seen_weight) for a in dict.fromkeys(seen) if a not in set(ground_truth)]
        out: dict[str, float] = defaultdict(float)
        for signal, sw in self.signals:
            if sw == 0:
                continue
            for a, aw in anchors:
                for j, s in signal.neighbours(a, self.top):
                    out[j] += aw * sw * s
        return out

    def candidates(self, ground_truth: Sequence[str], seen: Sequence[str], n: int) -> list[tuple[str, str]]:
        """Up to ``n`` ``(item_id, origin)`` pairs after the ground truth, origin ``"neighbour"``
        or ``"fallback"``; never a ground-truth or seen item."""
        skip = set(ground_truth) | set(seen)
        sc = self.scores(ground_truth, seen)
        ranked = sorted(((j, s) for j, s in sc.items() if j not in skip and j in self._valid),
                        key=lambda x: (-round(x[1], 12), -self._pop.get(x[0], 0.0), x[0]))
        out = [(j, "neighbour") for j, _ in ranked[:n]]
        if len(out) < n:
            have = skip | {j for j, _ in out}
            for j in self.fallback:
                if len(out) >= n:
                    break
                if j not in have:
                    out.append((j, "fallback"))
                    have.add(j)
        return out


# --------------------------------------------------------------------------------------------
# Candidate prompts


def _folds(row_ids, groups, n_folds: int) -> dict:
    """``{row id: fold}``: the rows of one dialog group (the turns of one conversation, which
    share items) in one fold, groups dealt to the ``n_folds`` folds in order of first appearance;
    a row without a group is a group of its own. Empty when ``n_folds`` is 0."""
    if not n_folds:
        return {}
    order: dict = {}
    out = {}
    for r_id, g in zip(row_ids, groups):
        key = ("group", g) if g is not None else ("row", r_id)
        out[r_id] = order.setdefault(key, len(order)) % n_folds
    return out


def evidence_prompts(ds, catalog=None, oracle=None, *, n: int = EVIDENCE_DEFAULTS["n"],
                     n_popular: int = EVIDENCE_DEFAULTS["n_popular"],
                     context_turns: int = EVIDENCE_DEFAULTS["context_turns"],
                     max_tags: int = EVIDENCE_DEFAULTS["max_tags"], progress: bool = True,
                     log: Callable[[str], Any] | None = print) -> EvidencePrompts:
    """Evidence prompts: candidates from the embedding-retrieval baseline over the pool of the
    benchmark ``ds`` (:func:`~safecrs_core.evaluation.baselines.retrieval_pool` with ``n_popular``; the
    unfiltered :class:`~safecrs_core.evaluation.baselines.Retrieval` with ``context_turns``, its embeddings
    cached as for the baseline), each with the oracle's evidence. The encoder is loaded only when
    candidates are first asked for."""
    from ..evaluation import baselines as B

    settings = evidence_settings({"n": n, "n_popular": n_popular, "context_turns": context_turns,
                                  "max_tags": max_tags})
    domain = getattr(catalog, "domain", "movies")  # game refs name their domain, movie refs as before
    world = World.of(domain, catalog, oracle)
    catalog, oracle = world.catalog, world.oracle
    pool = B.retrieval_pool(ds, catalog, n_popular=n_popular)
    built: dict[str, Any] = {}

    def candidates(rows, n):
        if "retrieval" not in built:
            built["retrieval"] = B.Retrieval(pool, catalog, context_turns=context_turns, progress=progress,
                                             log=log or (lambda _m: None))
        return built["retrieval"].recommend(rows, n)

    return EvidencePrompts(candidates, B.retrieval_ref(pool, context_turns, domain), catalog, oracle, n=n,
                           max_tags=max_tags, settings=settings)


def neighbour_prompts(ds, catalog=None, *, n: int = CANDIDATE_DEFAULTS["n"],
                      source: str = CANDIDATE_DEFAULTS["source"], genres: bool = False,
                      train_folds: int = 0, screen: bool = False, domain: str | None = None,
                      data_dir=None) -> EvidencePrompts:
    """**Candidates in context** without oracle verdicts (``verdicts=False``): each row's ``n``
    candidates are the :class:`Neighbours` of the items the user mentioned (``seen``), built
    from the benchmark's **train** split and co-rating data only, then the train split's most
    frequent targets and popular items. Validation and test targets never enter. Needs only each
    row's ``seen`` items. ``genres``: each candidate line shows the item's catalog genres;
    ``train_folds``: a training row's candidates come from neighbours built without its fold
    (folds of whole dialog groups, :func:`_folds`), as a test row's come from neighbours that
    never saw it; ``screen``: Safe-SFT targets carry a screen block
    (:func:`~safecrs_core.train.prompts.candidate_settings`)."""
    settings = candidate_settings({"n": n, "source": source, "genres": genres, "train_folds": train_folds,
                                   "screen": screen})
    world = World.of(domain, catalog, data_dir=data_dir)
    domain, catalog = world.domain, world.catalog
    train = ds["train"]
    built: dict[Any, Neighbours] = {}
    train_ids = column(train, "id")
    fold_of = _folds(train_ids, column(train, "dialog_group"), train_folds)

    def neighbours(fold):
        if fold not in built:
            if fold is None:
                built[None] = Neighbours.from_benchmark(train, catalog, data_dir=data_dir, domain=domain)
            else:
                rest = [r for r, r_id in zip(train, train_ids) if fold_of[r_id] != fold]
                built[fold] = Neighbours.from_benchmark(rest, catalog, data_dir=data_dir, domain=domain,
                                                        base=neighbours(None))
        return built[fold]

    def candidates(rows, n):
        return [[i for i, _ in neighbours(fold_of.get(r_id)).candidates([], sorted(set(item_ids(seen))), n)]
                for r_id, seen in zip(column(rows, "id"), column(rows, "seen"))]

    folds = f",train_group_folds={train_folds}" if train_folds else ""  # keys only when on
    ref = f"neighbours(train={rows_fingerprint(train)},domain={domain}{folds})"
    return EvidencePrompts(candidates, ref, catalog, None, n=n, settings=settings, verdicts=False, genres=genres,
                           screen=screen)


def context_prompts(candidates: Mapping[str, Any] | None, ds, catalog=None):
    """Candidate prompts (no oracle verdicts) of the ``candidates`` settings
    (:func:`~safecrs_core.train.prompts.candidate_settings`) for the benchmark ``ds`` (:func:`neighbour_prompts`);
    None when off."""
    settings = candidate_settings(candidates)
    if settings is None:
        return None
    return neighbour_prompts(ds, catalog, **settings)

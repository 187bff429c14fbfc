"""Domains as plug-ins: what differs between SafeMovie, SafeGame and any further domain.

A domain is one :class:`Domain` object, registered under its name. The package's domain-free
code (catalog loading, the oracle cache, the benchmark build, phrasing, prompts) asks
:func:`get_domain` for the domain's pieces instead of branching on its name. The built-in
domains live in ``domains/movies.py`` and ``domains/games.py`` and are imported on first use;
another domain registers itself with :func:`register_domain` (one file: see
``tests/test_domains.py``, which adds a small book domain from fixture rows).

This module is at the bottom of the package's layers: it imports nothing from the package, and
the plug-ins, which use the catalog, conversation and oracle code, are reached only through the
registry.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

# built-in domains: name -> module that registers it when imported
BUILTIN = {"movies": "safecrs_core.domains.movies", "games": "safecrs_core.domains.games"}
DEFAULT = "movies"


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per domain
class Domain:
    """Everything the domain-free code needs to know about one domain.

    Data: ``catalog_sources`` (catalog source names, linking order) and
    ``load_catalog(data_root, exclude_sources)`` -> :class:`~safecrs_core.data.catalog.Catalog`;
    ``conversation_sources`` and ``load_conversations(sources, data_root)`` -> conversations
    (:class:`~safecrs_core.data.conversations.Conversation`, overlaps between sources already removed);
    ``split_map``: (source, source split) -> benchmark split.

    Safety: ``build_oracle(data_root, threshold)`` -> :class:`~safecrs_core.safety.oracle.Oracle`;
    ``oracle_files``: the data files its cached tables are keyed by and checked against;
    ``oracle_options()``: keyword arguments of ``Oracle`` when its saved tables are loaded (the
    domain's rating scale); ``age_rating(constraint_id)``: the highest rating an age constraint
    allows, as a user names it.

    Text: ``one`` / ``many`` (prompt nouns: "a movie", "movies"); ``phrasing_rewrites()``:
    (pattern, replacement) pairs that turn the film phrasings into this domain's words.

    Recommenders (optional): ``item_text(catalog, item_id)``, the text an item is embedded by for
    retrieval (None: title, year, genres and overview), with ``item_text_params()`` added to the
    embeddings' key; ``co_rating(catalog, data_dir, min_rating, shrink, pop_exponent)``, the
    item co-occurrence signal of neighbour candidates besides the training conversations.

    Keys: ``stage_params()`` and ``oracle_params()`` add to the benchmark and oracle stage keys
    (package data files the domain reads); ``legacy_keys``: the domain's keys and artifact names
    do not name it (SafeMovie's predate the domain parameter, so they stay as they were).
    """
    name: str
    one: str
    many: str
    catalog_sources: tuple[str, ...]
    load_catalog: Callable[[str, frozenset], Any]
    conversation_sources: tuple[str, ...]
    load_conversations: Callable[[tuple, str], list]
    split_map: Mapping[tuple[str, str], str]
    build_oracle: Callable[[str, float], Any]
    oracle_files: tuple[str, ...] = ()
    oracle_options: Callable[[], dict] = dict
    age_rating: Callable[[str], str] | None = None
    phrasing_rewrites: Callable[[], tuple] = tuple
    item_text: Callable[[Any, str], str] | None = None
    item_text_params: Callable[[], dict] = dict
    co_rating: Callable[..., Any] | None = None
    stage_params: Callable[[], dict] = dict
    oracle_params: Callable[[], dict] = dict
    legacy_keys: bool = False

    def key_params(self) -> dict:
        """What a stage key adds for this domain: nothing for a legacy domain, else its name."""
        return {} if self.legacy_keys else {"domain": self.name}

    def split_of(self, source: str, source_split: str) -> str:
        """The benchmark split of a conversation source's split; unknown pairs are an error."""
        try:
            return self.split_map[(source, source_split)]
        except KeyError:
            raise ValueError(f"domain {self.name!r}: no benchmark split for source {source!r} split "
                             f"{source_split!r}; known: {sorted(self.split_map)}") from None


_REGISTRY: dict[str, Domain] = {}


def register_domain(domain: Domain, replace: bool = False) -> Domain:
    """Add ``domain`` to the registry (an existing name needs ``replace=True``)."""
    if not isinstance(domain, Domain):
        raise TypeError(f"register_domain needs a Domain, got {type(domain).__name__}")
    if domain.name in _REGISTRY and not replace and _REGISTRY[domain.name] is not domain:
        raise ValueError(f"domain {domain.name!r} is already registered (pass replace=True to replace it)")
    _REGISTRY[domain.name] = domain
    return domain


def unregister_domain(name: str) -> None:
    """Remove a registered domain (built-in domains come back on their next use)."""
    _REGISTRY.pop(name, None)


def domain_names() -> tuple[str, ...]:
    """The built-in domains, then the registered ones, in registration order."""
    return tuple(dict.fromkeys([*BUILTIN, *_REGISTRY]))


def get_domain(name: str | Domain | None = None) -> Domain:
    """The registered :class:`Domain` called ``name`` (default: :data:`DEFAULT`); a built-in
    domain is imported on first use. An unknown name is a ``ValueError`` naming the known ones."""
    if isinstance(name, Domain):
        return name
    name = DEFAULT if name is None else name
    if not isinstance(name, str):
        raise ValueError(f"a domain is named by a string, got {name!r}; known: {', '.join(domain_names())}")
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])  # the module registers its domain
    if name not in _REGISTRY:
        raise ValueError(f"unknown domain {name!r}; known: {', '.join(domain_names())}")
    return _REGISTRY[name]


def package_data_key(names) -> str:
    """A short sha256 over the package data files ``names`` (``safecrs_core/data/``), for stage
    keys of domains that read them."""
    import hashlib

    from ..data import package_file

    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + package_file(name).read_bytes() + b"\0")
    return h.hexdigest()[:16]

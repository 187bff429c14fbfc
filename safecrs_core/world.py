"""The world of a run: one domain with its data folder, its catalog and Safety Oracle, and the
artifacts root, built once and passed around instead of ``domain``/``data_dir``/``catalog``/
``oracle`` arguments threaded through every call. The catalog and the oracle are loaded on
first use (both are cached per process as well)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import sources
from .data.catalog import load_catalog, resolve_domain
from .domains import DEFAULT as DEFAULT_DOMAIN
from .domains import Domain, get_domain
from .safety.oracle import DEFAULT_THRESHOLD, load_oracle


@dataclass(eq=False)
class World:
    """``domain`` (a registered domain), ``data_dir`` (None: :func:`~safecrs_core.data.sources.data_dir`'s
    default), the oracle's ``threshold`` and the ``artifacts`` root (None:
    :func:`~safecrs_core.pipeline.artifacts_root`'s default). Build it with :meth:`of`, which
    keeps a catalog or oracle already at hand."""
    domain: str | None = DEFAULT_DOMAIN  # None: the catalog's or oracle's domain, else the default
    data_dir: str | os.PathLike | None = None
    threshold: float = DEFAULT_THRESHOLD
    artifacts: str | os.PathLike | None = None
    _catalog: Any = field(default=None, repr=False)
    _oracle: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.domain = resolve_domain(self.domain, ("catalog", self._catalog), ("oracle", self._oracle))

    @classmethod
    def of(cls, domain: "str | World | None" = None, catalog=None, oracle=None, data_dir=None,
           threshold: float | None = None) -> "World":
        """The world of ``domain`` (None: the domain of ``catalog`` or ``oracle``, else movies),
        keeping ``catalog`` and ``oracle`` when given; a :class:`World` is returned as it is (with
        ``catalog``/``oracle`` filled in where it had none)."""
        if isinstance(domain, World):
            w = domain
            w._catalog = w._catalog if catalog is None else catalog
            w._oracle = w._oracle if oracle is None else oracle
            w.__post_init__()
            return w
        return cls(domain=domain, data_dir=data_dir,  # __post_init__ resolves the domain
                   threshold=DEFAULT_THRESHOLD if threshold is None else float(threshold),
                   _catalog=catalog, _oracle=oracle)

    @property
    def spec(self) -> Domain:
        """The domain's plug-in (:mod:`safecrs_core.domains`)."""
        return get_domain(self.domain)

    @property
    def data_root(self) -> Path:
        return sources.data_dir(self.data_dir)

    @property
    def artifacts_root(self) -> Path:
        from .pipeline import artifacts_root
        return artifacts_root(self.artifacts)

    @property
    def catalog(self):
        """The domain's catalog (loaded on first use)."""
        if self._catalog is None:
            self._catalog = load_catalog(self.domain, data_dir=self.data_dir)
        return self._catalog

    @property
    def oracle(self):
        """The domain's Safety Oracle at ``threshold`` (loaded on first use)."""
        if self._oracle is None:
            self._oracle = load_oracle(data_dir=self.data_dir, threshold=self.threshold, domain=self.domain)
        return self._oracle

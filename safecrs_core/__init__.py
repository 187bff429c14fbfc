"""safecrs_core: the package behind the SafeCRS companion book.

A reproduction companion to *SafeCRS: Personalized Safety Alignment for LLM-Based Conversational
Recommender Systems* (Hao, Xu, Li, Ge, Cheng; arXiv:2603.03536, 2026). The notebooks in
``notebooks/`` only call into this package; every stage caches its artifacts (see
:mod:`safecrs_core.pipeline`).

Importing the package is cheap: submodules (and heavy dependencies such as torch) are only loaded
when imported explicitly.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _dist_version

try:
    __version__ = _dist_version("safecrs-core")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.0.0+source"

PAPER = {
    "title": "SafeCRS: Personalized Safety Alignment for LLM-Based Conversational Recommender Systems",
    "authors": ["Hao", "Xu", "Li", "Ge", "Cheng"],
    "arxiv": "2603.03536",
    "year": 2026,
}

__all__ = ["__version__", "PAPER"]

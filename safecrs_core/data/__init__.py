"""The raw material: the data files (registry, sha256, download), the catalog and its title
resolver, the conversation sources, and how SafeRec rows are read. The package data files
(trait tables, phrasings, profiles, the data registry) live here too."""
from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent  # the package data files sit beside the modules


def package_file(name: str) -> Path:
    """The package data file ``name`` (``safecrs_core/data/<name>``: trait tables, phrasings,
    profiles, the data registry, the game tables)."""
    return PACKAGE_DATA / name

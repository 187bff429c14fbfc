"""The registry of public data files, their sha256 checks and download from origin.

Every file the companion reads is listed in ``data/sources.json`` (a copy of the data mirror's
``MANIFEST.json``: origin repository at a pinned commit, sha256, licence). The data directory comes
from the ``SAFECRS_DATA_DIR`` environment variable or an explicit argument. A file is sha256-checked
the first time it is used in a process; a missing file is downloaded from its origin when the
network allows (byte-for-byte copies only: converted files are mirror-only). Nothing is ever
unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import package_file

ENV_VAR = "SAFECRS_DATA_DIR"


class DataError(RuntimeError):
    """A data file is missing, corrupt or malformed. The message names the file and the fix."""


def debug_requested() -> bool:
    """``SAFECRS_DEBUG`` set (and not ``0``): command-line front ends show the traceback of an
    expected failure instead of its one-line message."""
    return os.environ.get("SAFECRS_DEBUG", "0") not in ("", "0")


@dataclass(frozen=True)
class SourceFile:
    source_id: str
    file: str  # path relative to the data directory
    sha256: str
    bytes: int
    origin_repo: str
    origin_commit: str
    origin_path: str
    converted_from: str | None
    url: str | None  # None: mirror-only (converted once, cannot be re-downloaded byte for byte)
    license: str
    records: int | None = None
    record_unit: str | None = None


@lru_cache(maxsize=1)
def registry() -> dict[str, SourceFile]:
    """All registered files, keyed by their path relative to the data directory."""
    raw = json.loads(package_file("sources.json").read_text())
    return {e["file"]: SourceFile(**e) for e in raw["files"]}


def source_ids() -> list[str]:
    return sorted({f.source_id for f in registry().values()})


def files_of(source_id: str) -> list[SourceFile]:
    out = [f for f in registry().values() if f.source_id == source_id]
    if not out:
        raise KeyError(f"unknown source_id {source_id!r}; known: {', '.join(source_ids())}")
    return out


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data directory: ``path`` if given, else ``$SAFECRS_DATA_DIR``, else ``../shared/data``
    next to the current working directory's project root (the layout of CI and dev machines)."""
    if path is not None:
        return Path(path).expanduser().resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    for base in [Path.cwd(), *Path.cwd().parents]:
        cand = base / ".." / "shared" / "data"
        if (base / "pyproject.toml").exists() and cand.is_dir():
            return cand.resolve()
    raise DataError(
        f"no data directory: set {ENV_VAR} to the folder holding the data files "
        "(e.g. export SAFECRS_DATA_DIR=../shared/data) or pass data_dir=..."
    )


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


_VERIFIED: set[tuple[str, int, float]] = set()


def _verify(entry: SourceFile, path: Path) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime)
    if key in _VERIFIED:
        return
    got = sha256_of(path)
    if got != entry.sha256:
        raise DataError(
            f"sha256 mismatch for {path} (source {entry.source_id}): expected {entry.sha256}, got {got}. "
            f"The file is corrupt or a different version; replace it with the one from "
            f"{entry.origin_repo}:{entry.origin_path}@{entry.origin_commit[:7]}."
        )
    _VERIFIED.add(key)


def _how_to_get(entry: SourceFile, root: Path) -> str:
    where = root / entry.file
    if entry.url:
        return f"  {entry.file}: download {entry.url} to {where}"
    return (f"  {entry.file}: mirror-only (converted from {entry.converted_from} of "
            f"{entry.origin_repo}@{entry.origin_commit[:7]}); copy it from the project's data mirror to {where}")


def _download(entry: SourceFile, dest: Path, timeout: float = 30.0) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        got = sha256_of(Path(tmp))
        if got != entry.sha256:
            raise DataError(f"downloaded {entry.url} but its sha256 {got} != expected {entry.sha256}")
        os.replace(tmp, dest)  # atomic: a half-downloaded file never looks complete
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(files: list[str], root: str | os.PathLike | None = None, download: bool | None = None) -> dict[str, Path]:
    """Return verified paths of ``files`` (relative names as in the registry).

    Missing files are downloaded from their origin when ``download`` is true (default: unless
    ``SAFECRS_OFFLINE=1``); if any file still cannot be had, one :class:`DataError` lists every
    missing file and how to provide it.
    """
    reg = registry()
    unknown = [f for f in files if f not in reg]
    if unknown:
        raise KeyError(f"not in the data registry: {unknown}")
    base = data_dir(root)
    if download is None:
        download = os.environ.get("SAFECRS_OFFLINE", "0") != "1"
    missing, errors, out = [], [], {}
    for name in files:
        entry, path = reg[name], base / name
        if not path.exists() and download and entry.url:
            try:
                _download(entry, path)
            except Exception as exc:  # network down, 404, sha mismatch: report below
                errors.append(f"  {name}: download failed ({exc.__class__.__name__}: {exc})")
        if not path.exists():
            missing.append(entry)
            continue
        _verify(entry, path)
        out[name] = path
    if missing:
        lines = "\n".join(_how_to_get(e, base) for e in missing)
        extra = ("\nDownload attempts:\n" + "\n".join(errors)) if errors else ""
        raise DataError(f"{len(missing)} data file(s) missing under {base} ({ENV_VAR}):\n{lines}{extra}")
    return out


def path(file: str, root: str | os.PathLike | None = None) -> Path:
    """Verified path of one registered file."""
    return fetch([file], root)[file]


def verify_all(root: str | os.PathLike | None = None, download: bool = False) -> dict[str, str]:
    """Check every registered file (downloading missing ones first when ``download``); returns
    {file: 'ok' | one-line error message, with how to get a missing file} without raising."""
    status = {}
    for name in registry():
        try:
            fetch([name], root, download=download)
            status[name] = "ok"
        except (DataError, OSError) as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            how = [ln for ln in lines if ln.startswith(f"{name}:")]
            status[name] = f"missing; {how[0][len(name) + 1:].strip()}" if how else "; ".join(lines)
    return status

"""Stages, artifact caching, run profiles and the notebook runner.

Profiles
    Three run profiles share one code path: ``smoke`` (seconds to minutes; tests and CI),
    ``book`` (the CPU build of this book) and ``paper`` (the paper's models and settings, on GPUs).
    A notebook's parameters cell (the cell tagged ``parameters``) holds literal values only, and
    those values are the ``book`` profile's, including ``profile = "book"``.
    ``safecrs_core/data/profiles.json`` holds, per notebook stem, the values that differ under
    another profile. The runner passes ``profile`` plus those overrides to papermill, which
    injects them in a cell after the parameters cell.

Artifacts
    A stage writes into ``artifacts/<stage>/<key>/`` where ``key`` is a short sha256 over the
    stage's parameters, the keys of its inputs and the package version (:func:`stage_key`).
    The root is ``$SAFECRS_ARTIFACTS`` or ``<repo>/artifacts``. A stage directory is complete
    only when its ``DONE.json`` manifest exists and every file it records is there with its
    recorded size and sha256 (:func:`stage_problem`; the sha256 once per process per stage).
    :func:`run_stage` builds into a hidden temporary directory beside the final one, renames it
    into place and writes ``DONE.json`` last, each step atomic, so an interrupted run never
    leaves anything that looks complete, and a stage changed afterwards is rebuilt, not served.

Notebooks
    :func:`run_notebooks` converts each ``notebooks/NN_name.py`` (jupytext percent format) to a
    notebook, executes it with papermill and writes ``notebooks/_executed/NN_name.ipynb``, which
    the book renders without executing again. Wall times go to ``_executed/timings.json``.
    ``python scripts/run_notebooks.py --help`` (or ``python -m safecrs_core.pipeline``) is the
    command-line front end.

Domains
    A notebook whose parameters cell defines ``domain`` (default ``"movies"``) also runs for
    another domain (``"games"``: SafeGame): the runner injects ``domain`` and writes
    ``notebooks/_executed/<domain>/NN_name.ipynb`` with its own ``timings.json``. Profile
    overrides for a domain sit under ``"<profile>@<domain>"`` (e.g. ``"book@games"``) and apply on
    top of the profile's. With several domains the order is: every domain notebook for movies,
    then for each other domain, then the notebooks without a ``domain`` parameter (chapters
    that read several domains' results).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from .data.sources import debug_requested
from .data.sources import sha256_of as sha256_file

PROFILES: dict[str, str] = {
    "smoke": "seconds to minutes on a CPU: tiny models and samples; what tests and CI run",
    "book": "the CPU build of the book: small models, real data, minutes to hours",
    "paper": "the paper's models and settings; needs GPUs (trl + accelerate)",
}
DEFAULT_PROFILE = "book"
MOVIES = "movies"  # the default domain of every notebook
ARTIFACTS_ENV = "SAFECRS_ARTIFACTS"
DONE_FILE = "DONE.json"
KEY_LENGTH = 16  # hex digits of the sha256 kept in a stage key

_NOTEBOOK_RE = re.compile(r"^(?P<num>\d{2})_[A-Za-z0-9][A-Za-z0-9_-]*\.py$")
_STAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class PipelineError(RuntimeError):
    """A stage or the profiles are misconfigured."""


class NotebookError(RuntimeError):
    """A notebook failed to run; the message names the notebook, the cell and the error."""


# --------------------------------------------------------------------------------------------
# Locations


def repo_root() -> Path:
    """The project root: the folder holding ``pyproject.toml`` above this package (editable
    install or source tree), else the current working directory."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file():
        return here
    return Path.cwd()


def artifacts_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$SAFECRS_ARTIFACTS``, else ``<repo>/artifacts``."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get(ARTIFACTS_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return repo_root() / "artifacts"


def _root_labels() -> tuple[tuple[Path, str], ...]:
    """The folders pages name paths under, with the label each path gets instead of the folder."""
    return (repo_root().resolve(), ""), (artifacts_root().resolve(), f"${ARTIFACTS_ENV}/")


def _under_roots(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``path`` resolved, and its name under the repository or the artifacts root (None: elsewhere)."""
    p = Path(path).expanduser().resolve()
    for base, label in _root_labels():
        if p.is_relative_to(base):
            return p, label + str(p.relative_to(base))
    return p, None


def shown_path(path: str | os.PathLike) -> str:
    """How pages show an artifact path: relative to the repository (``artifacts/sft/<key>``),
    or ``$SAFECRS_ARTIFACTS/<stage>/<key>`` for an artifacts folder elsewhere; never the
    builder's absolute path."""
    p, name = _under_roots(path)
    return p.name if name is None else name


def logged_path(path: str | os.PathLike) -> str:
    """How stage log lines name a stage folder: as :func:`shown_path` when it lies in the
    repository or the artifacts root (so executed notebooks never show the builder's absolute
    paths), else absolute; :func:`resolve_logged_path` reads it back."""
    p, name = _under_roots(path)
    return str(p) if name is None else name


def resolve_logged_path(text: str) -> Path:
    """The folder a stage log line named (:func:`logged_path`)."""
    if Path(text).is_absolute():
        return Path(text)
    (repo, _), (arts, label) = _root_labels()
    return arts / text[len(label):] if text.startswith(label) else repo / text


def notebooks_root() -> Path:
    return repo_root() / "notebooks"


# --------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``:
    readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=_json_default)
    return atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------------------------
# Stage keys


def _json_default(obj: Any) -> Any:
    """JSON for the few non-JSON types parameters and manifests carry."""
    if isinstance(obj, os.PathLike):
        return Path(obj).as_posix()
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=lambda v: json.dumps(v, sort_keys=True, default=_json_default))
    if type(obj).__module__ == "numpy":  # numpy scalars and arrays, without importing numpy
        return obj.tolist() if hasattr(obj, "tolist") else obj.item()
    raise TypeError(f"cannot put {type(obj).__name__} into a stage key or manifest: {obj!r}")


def canonical_json(obj: Any) -> str:
    """One JSON text per value: sorted keys, no whitespace, no NaN, tuples as lists."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_json_default)


def _check_stage_name(stage: str) -> None:
    if not isinstance(stage, str) or not _STAGE_RE.match(stage):
        raise PipelineError(f"bad stage name {stage!r}: use letters, digits, '_', '-', '.'")


def stage_ref(directory: str | os.PathLike) -> str:
    """``"<stage>/<key>"`` of a stage directory: what a downstream stage lists as an input."""
    d = Path(directory)
    return f"{d.parent.name}/{d.name}"


def input_id(item: Any) -> str:
    """What names a stage input in keys and manifests: a string as it is, a completed stage
    directory as its :func:`stage_ref`; anything else is a :class:`PipelineError`."""
    if isinstance(item, str):
        return item
    if isinstance(item, os.PathLike):
        d = Path(item)
        if is_done(d):
            return stage_ref(d)
        raise PipelineError(
            f"input {d} is not a completed stage directory; pass a string that identifies the "
            "input's content instead (an upstream stage_ref, a data file's sha256, ...)")
    raise PipelineError(f"stage inputs are strings or stage directories, not {type(item).__name__}")


def stage_key(stage: str, params: Mapping[str, Any], inputs: Iterable[Any] = (),
              version: str | None = None) -> str:
    """Short hex sha256 over canonical JSON of the stage name, ``params`` (key order does not
    matter), ``inputs`` (order matters: strings, e.g. upstream ``stage_ref``s or data sha256s, or
    completed stage directories) and the package version."""
    _check_stage_name(stage)
    payload = {
        "stage": stage,
        "params": dict(params),
        "inputs": [input_id(i) for i in inputs],
        "version": __version__ if version is None else version,
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def stage_dir(stage: str, key: str, root: str | os.PathLike | None = None) -> Path:
    """``<artifacts root>/<stage>/<key>`` (not created)."""
    _check_stage_name(stage)
    if not re.fullmatch(r"[0-9a-f]+", key):
        raise PipelineError(f"bad stage key {key!r}")
    return artifacts_root(root) / stage / key


# Stage folders whose files matched their recorded sha256 in this process, with the sizes and
# mtimes they had then (a change of either hashes them again).
_VERIFIED_STAGES: dict[str, tuple] = {}


def file_records(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """``{"path", "bytes", "sha256"}`` of every file under ``directory`` (the ``files`` of a
    ``DONE.json``)."""
    directory = Path(directory)
    return [{"path": p.relative_to(directory).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(directory.rglob("*")) if p.is_file()]


def _load_manifest(directory: Path) -> tuple[dict | None, str | None]:
    path = directory / DONE_FILE
    if not path.is_file():
        return None, f"no {DONE_FILE}"
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path} is empty or unreadable ({exc.__class__.__name__})"
    if not isinstance(man, dict) or not isinstance(man.get("files"), list):
        return None, f"{path} holds no file record"
    return man, None


def stage_problem(directory: str | os.PathLike) -> str | None:
    """Why a stage folder cannot be served, or None when it is complete: its ``DONE.json``
    exists, parses and records every file, and every recorded file exists with its recorded
    size and (checked once per process, again when a size or mtime changes) its sha256.
    Manifests written before sha256 was recorded are checked by size only."""
    directory = Path(directory)
    man, problem = _load_manifest(directory)
    if problem:
        return problem
    stamp = []
    for rec in man["files"]:
        try:
            p = directory / rec["path"]
            size = int(rec["bytes"])
        except (TypeError, KeyError, ValueError):
            return f"{directory / DONE_FILE} holds a malformed file record {rec!r}"
        try:
            st = p.stat()
        except OSError:
            return f"{p} is missing"
        if st.st_size != size:
            return f"{p} has {st.st_size} bytes, {size} recorded"
        stamp.append((rec["path"], st.st_size, st.st_mtime_ns))
    stamp = tuple(stamp)
    if _VERIFIED_STAGES.get(str(directory)) != stamp:
        for rec in man["files"]:
            if rec.get("sha256") and sha256_file(directory / rec["path"]) != rec["sha256"]:
                return f"{directory / rec['path']} does not match its recorded sha256 (changed after the stage was built)"
        _VERIFIED_STAGES[str(directory)] = stamp
    return None


def is_done(directory: str | os.PathLike) -> bool:
    """Whether a stage folder is complete and its files are as recorded (:func:`stage_problem`)."""
    return stage_problem(directory) is None


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``DONE.json`` manifest of a completed stage directory; a :class:`PipelineError` in
    one line naming the problem and the fix when the stage is incomplete or does not match its
    record (:func:`stage_problem`)."""
    problem = stage_problem(directory)
    if problem:
        raise PipelineError(f"stage {directory} cannot be used: {problem}; delete that folder and rerun the "
                            "notebook (or call) that builds it")
    return json.loads((Path(directory) / DONE_FILE).read_text(encoding="utf-8"))


def mark_done(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write ``DONE.json`` atomically; call it last, when everything else is in place."""
    return atomic_write_json(Path(directory) / DONE_FILE, dict(manifest))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_leftovers(final: Path) -> None:
    """Remove temporary build folders of ``final`` left by processes that no longer run."""
    for p in final.parent.glob(f".{final.name}.*-*-*"):
        m = re.fullmatch(rf"\.{re.escape(final.name)}\.(tmp|old)-(\d+)-[0-9a-f]+", p.name)
        if m and not _pid_alive(int(m.group(2))):
            shutil.rmtree(p, ignore_errors=True)


def _scratch_name(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _remove_tree(path: Path) -> None:
    """Move ``path`` out of the way (atomically) and delete it."""
    trash = _scratch_name(path, "old")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def built_on(manifest: Mapping[str, Any], wanted: Iterable[str], root: str | os.PathLike | None = None,
             depth: int = 4) -> bool:
    """Whether a stage (its ``DONE.json`` manifest) was built from one of ``wanted`` (input ids:
    ``"<stage>/<key>"`` refs or other input strings), directly or through up to ``depth``
    upstream stages."""
    wanted = set(wanted)
    inputs = manifest.get("inputs", []) or []
    if wanted & set(inputs):
        return True
    if depth == 0:
        return False
    for ref in inputs:
        parts = str(ref).split("/")
        if len(parts) == 2 and all(parts):
            up = artifacts_root(root) / parts[0] / parts[1]
            if is_done(up) and built_on(read_manifest(up), wanted, root, depth - 1):
                return True
    return False


def build_atomically(final: str | os.PathLike, build: Callable[[Path], Mapping[str, Any]], *,
                     force: bool = False, done: Callable[[Path], bool] = is_done,
                     ) -> tuple[Path, dict[str, Any] | None]:
    """Make the folder ``final`` all at once: ``build(tmp)`` fills a fresh hidden folder beside it
    and returns its manifest; the folder is renamed into place and ``DONE.json`` written last.
    Leftovers of dead builds are swept first; if ``build`` raises, its folder is deleted and
    nothing appears under ``final``. Returns ``(final, manifest)``, or ``(final, None)`` when
    another process completed ``final`` (``done(final)``) meanwhile and ``force`` is off."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(final)
    tmp = _scratch_name(final, "tmp")
    tmp.mkdir()
    try:
        manifest = dict(build(tmp))
        if done(final) and not force:
            shutil.rmtree(tmp, ignore_errors=True)
            return final, None
        if final.exists():  # a rename that never got its DONE.json, or a forced rebuild
            _remove_tree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    mark_done(final, manifest)
    return final, manifest


def run_stage(stage: str, params: Mapping[str, Any], inputs: Iterable[Any],
              fn: Callable[[Path], Mapping[str, Any] | None], *,
              root: str | os.PathLike | None = None, force: bool = False,
              log: Callable[[str], Any] | None = print) -> Path:
    """Return the directory of ``stage`` for ``params`` and ``inputs``, building it if needed.

    If ``<root>/<stage>/<key>/DONE.json`` exists the directory is returned as is (``fn`` is not
    called) unless ``force``. Otherwise ``fn(tmp_dir)`` writes the stage's files into a fresh
    hidden folder beside the final one and may return a JSON-able dict (a summary kept in the
    manifest under ``"result"``). The folder is then renamed into place and ``DONE.json`` (stage,
    key, params, inputs, version, times, every file with its size and sha256, result) is written
    last. If ``fn`` raises, its folder is deleted and nothing is left under the final name. A
    folder whose files do not match their record (:func:`stage_problem`) is never served: it is
    rebuilt, with one line on stderr saying why.
    """
    inputs = [input_id(i) for i in inputs]
    key = stage_key(stage, params, inputs)
    final = stage_dir(stage, key, root)
    say = log or (lambda _msg: None)
    if not force and final.exists():
        problem = stage_problem(final)
        if problem is None:
            say(f"[stage {stage}] cached: {logged_path(final)}")
            return final
        if (final / DONE_FILE).exists():  # said even when the stage logs nothing else
            print(f"[stage {stage}] {key} does not match its record ({problem}); rebuilding it", file=sys.stderr)
    say(f"[stage {stage}] building {key} ...")
    started, t0 = _now(), time.perf_counter()

    def build(tmp: Path) -> dict[str, Any]:
        result = fn(tmp)
        if result is not None and not isinstance(result, Mapping):
            raise PipelineError(f"stage {stage}: fn must return a dict or None, not {type(result).__name__}")
        return {
            "stage": stage,
            "key": key,
            "params": json.loads(canonical_json(dict(params))),
            "inputs": inputs,
            "version": __version__,
            "started": started,
            "finished": _now(),
            "seconds": round(time.perf_counter() - t0, 3),
            "python": sys.version.split()[0],
            "files": file_records(tmp),
            "result": json.loads(json.dumps(dict(result or {}), default=_json_default)),
        }

    final, manifest = build_atomically(final, build, force=force)
    if manifest is None:  # another process finished the same stage meanwhile
        say(f"[stage {stage}] cached (built concurrently): {logged_path(final)}")
        return final
    say(f"[stage {stage}] done in {manifest['seconds']:.1f} s: {logged_path(final)}")
    return final


# --------------------------------------------------------------------------------------------
# Profiles


def _profiles_text(path: str | os.PathLike | None) -> str:
    if path is not None:
        try:
            return Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PipelineError(f"cannot read the profiles file {path} ({exc.__class__.__name__}); pass --profiles "
                                "an existing JSON file, or leave it out for safecrs_core/data/profiles.json") from None
    return resources.files("safecrs_core").joinpath("data/profiles.json").read_text(encoding="utf-8")


def validate_profiles(raw: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Check the ``profiles.json`` schema; return ``{stem: {profile: {name: value}}}`` without the
    ``_``-prefixed documentation keys."""
    if not isinstance(raw, Mapping):
        raise PipelineError("profiles must be a JSON object keyed by notebook stem")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for stem, per_profile in raw.items():
        if stem.startswith("_"):
            continue
        if not re.fullmatch(r"\d{2}_[A-Za-z0-9][A-Za-z0-9_-]*", stem):
            raise PipelineError(f"profiles: {stem!r} is not a notebook stem like '01_benchmark'")
        if not isinstance(per_profile, Mapping):
            raise PipelineError(f"profiles[{stem!r}] must map profile names to objects")
        out[stem] = {}
        for prof, overrides in per_profile.items():
            if prof.startswith("_"):
                continue
            base, _, domain = prof.partition("@")
            if base not in PROFILES:
                raise PipelineError(f"profiles[{stem!r}]: unknown profile {prof!r}; known: {', '.join(PROFILES)}"
                                    " (optionally with @<domain>, e.g. 'book@games')")
            if "@" in prof and domain not in _other_domains():
                raise PipelineError(f"profiles[{stem!r}]: unknown domain in {prof!r}; known: "
                                    f"{', '.join(_other_domains())}")
            if not isinstance(overrides, Mapping):
                raise PipelineError(f"profiles[{stem!r}][{prof!r}] must be an object of parameter values")
            for name in overrides:
                if not name.isidentifier() or name == "profile":
                    raise PipelineError(f"profiles[{stem!r}][{prof!r}]: bad parameter name {name!r}")
            out[stem][prof] = dict(overrides)
    return out


def load_profiles(path: str | os.PathLike | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """The per-notebook profile overrides (``safecrs_core/data/profiles.json`` unless ``path``)."""
    try:
        raw = json.loads(_profiles_text(path))
    except json.JSONDecodeError as exc:
        raise PipelineError(f"profiles file is not valid JSON: {exc}") from exc
    return validate_profiles(raw)


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise PipelineError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    return profile


def _other_domains() -> tuple[str, ...]:
    """The built-in domains besides movies (:data:`safecrs_core.domains.BUILTIN`), for which
    domain notebooks also run."""
    from .domains import BUILTIN

    return tuple(d for d in BUILTIN if d != MOVIES)


def check_domain(domain: str) -> str:
    """``domain`` if the catalog knows it (:func:`~safecrs_core.data.catalog.resolve_domain`), else a
    :class:`PipelineError`."""
    from .data.catalog import resolve_domain

    try:
        return resolve_domain(domain)
    except ValueError as exc:
        raise PipelineError(str(exc)) from None


def params_for(notebook_stem: str, profile: str,
               profiles: Mapping[str, Any] | None = None, domain: str = "movies") -> dict[str, Any]:
    """Parameters papermill injects into ``notebook_stem`` under ``profile``: that notebook's
    overrides for the profile (none means the parameters cell's own values) plus ``profile``.
    Another ``domain`` adds the ``"<profile>@<domain>"`` overrides and ``domain`` itself (movies,
    the parameters cells' default, is not injected)."""
    check_profile(profile)
    check_domain(domain)
    table = load_profiles() if profiles is None else validate_profiles(profiles)
    entry = table.get(notebook_stem, {})
    overrides = dict(entry.get(profile, {}))
    if domain != MOVIES:
        overrides |= entry.get(f"{profile}@{domain}", {}) | {"domain": domain}
    return {**overrides, "profile": profile}


def from_values(cls, values: Mapping[str, Any], **changes):
    """An instance of the parameters dataclass ``cls`` from the entries of ``values`` that name
    its fields, then ``changes`` (which must name fields). A notebook passes its parameters as
    they are (``globals()`` after its parameters cell, or :func:`notebook_values` of another
    notebook); entries that are not fields of ``cls`` (other stages' settings, imports) are left
    out. Training configs expose it as their ``from_values`` classmethod."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))}")
    return cls(**{**{k: v for k, v in values.items() if k in names}, **changes})


def notebook_values(notebook_stem: str, profile: str, notebooks_dir: str | os.PathLike | None = None,
                    profiles: Mapping[str, Any] | None = None, domain: str = "movies") -> dict[str, Any]:
    """The parameter values ``notebook_stem`` runs with under ``profile`` (and ``domain``): its
    parameters cell with the overrides applied. Lets one notebook reuse another's settings (e.g.
    the evidence notebook trains Safe-SFT with notebook 02's budget)."""
    d = Path(notebooks_dir) if notebooks_dir is not None else notebooks_root()
    path = d / f"{notebook_stem}.py"
    if not path.is_file():
        raise PipelineError(f"no notebook {path}")
    return {**notebook_parameters(path), **params_for(notebook_stem, profile, profiles, domain)}


# --------------------------------------------------------------------------------------------
# Notebooks


def discover_notebooks(notebooks_dir: str | os.PathLike | None = None) -> list[Path]:
    """``NN_name.py`` files of ``notebooks_dir`` (default ``<repo>/notebooks``), in order."""
    d = Path(notebooks_dir) if notebooks_dir is not None else notebooks_root()
    if not d.is_dir():
        raise PipelineError(f"notebooks folder {d} does not exist; pass --notebooks-dir a folder of NN_name.py notebooks")
    found = sorted(p for p in d.iterdir() if p.is_file() and _NOTEBOOK_RE.match(p.name))
    if not found:
        raise PipelineError(f"no NN_name.py notebooks in {d}; pass --notebooks-dir the repository's notebooks/ folder")
    return found


def _read_notebook(path: Path):
    import jupytext  # lazy: only the book extra needs it

    return jupytext.read(path)


def _parameters_cell(nb) -> Any | None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """Names and literal values assigned in the notebook's ``parameters`` cell.

    Raises :class:`PipelineError` if there is no such cell or a value is not a literal."""
    path = Path(path)
    cell = _parameters_cell(_read_notebook(path))
    if cell is None:
        raise PipelineError(f"{path.name}: no cell tagged 'parameters' "
                            "(start one with  # %% tags=[\"parameters\"] )")
    try:
        tree = ast.parse(cell.source)
    except SyntaxError as exc:
        raise PipelineError(f"{path.name}: parameters cell does not parse: {exc}") from exc
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            targets, value = [t.id for t in node.targets], node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            targets, value = [node.target.id], node.value
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring-like comment string
        else:
            raise PipelineError(f"{path.name}: parameters cell line {node.lineno}: only "
                                "'name = literal' assignments are allowed there")
        try:
            literal = ast.literal_eval(value)
        except ValueError as exc:
            raise PipelineError(f"{path.name}: parameters cell line {node.lineno}: "
                                f"{', '.join(targets)} is not a literal") from exc
        for t in targets:
            values[t] = literal
    return values


def check_notebooks(notebooks_dir: str | os.PathLike | None = None,
                    profiles: Mapping[str, Any] | None = None) -> list[str]:
    """Problems (empty list: none) between the notebooks and the profile table: every notebook
    needs a literal-only parameters cell that sets ``profile``; every profile entry must name an
    existing notebook and only parameters that its parameters cell defines."""
    table = load_profiles() if profiles is None else validate_profiles(profiles)
    books = {p.stem: p for p in discover_notebooks(notebooks_dir)}
    problems: list[str] = []
    for stem in sorted(set(table) - set(books)):
        problems.append(f"profiles.json has an entry for {stem!r} but there is no notebooks/{stem}.py")
    for stem, path in books.items():
        try:
            names = notebook_parameters(path)
        except PipelineError as exc:
            problems.append(str(exc))
            continue
        if names.get("profile") not in PROFILES:
            problems.append(f"{path.name}: the parameters cell must set profile = \"book\" "
                            f"(got {names.get('profile')!r})")
        for prof, overrides in table.get(stem, {}).items():
            if "@" in prof and "domain" not in names:
                problems.append(f"profiles.json[{stem!r}][{prof!r}] sets domain overrides, but the "
                                f"parameters cell of {path.name} has no 'domain' parameter")
            for name in overrides:
                if name not in names:
                    problems.append(f"profiles.json[{stem!r}][{prof!r}] sets {name!r}, which the "
                                    f"parameters cell of {path.name} does not define")
    return problems


@dataclasses.dataclass
class NotebookRun:
    stem: str
    source: Path
    output: Path | None
    seconds: float
    status: str  # "ok", "up to date" (not re-executed) or "failed"
    error: str | None = None
    domain: str = MOVIES


def notebook_plan(notebooks: Iterable[Path], domains: Iterable[str] = (MOVIES,)) -> list[tuple[Path, str]]:
    """(notebook, domain) pairs in run order: the notebooks with a ``domain`` parameter for each
    domain (movies first), then those without one (once, when movies is among ``domains``)."""
    domains = list(dict.fromkeys(check_domain(d) for d in domains))
    if not domains:
        raise PipelineError("no domain to run")
    domains.sort(key=lambda d: d != MOVIES)
    notebooks = list(notebooks)
    has = {p: "domain" in notebook_parameters(p) for p in notebooks}
    plan = [(p, d) for d in domains for p in notebooks if has[p]]
    if MOVIES in domains:
        plan += [(p, MOVIES) for p in notebooks if not has[p]]
    return plan


def _select(notebooks: list[Path], only: Iterable[str] | None) -> list[Path]:
    if not only:
        return notebooks
    wanted = [str(o).removesuffix(".py") for o in only]
    chosen = [p for p in notebooks
              if any(p.stem == w or p.stem.split("_", 1)[0] == w or p.stem.startswith(w + "_")
                     for w in wanted)]
    unmatched = [w for w in wanted if not any(
        p.stem == w or p.stem.split("_", 1)[0] == w or p.stem.startswith(w + "_") for p in notebooks)]
    if unmatched:
        raise PipelineError(f"no notebook matches {unmatched}; have: {[p.stem for p in notebooks]}")
    return chosen


@contextmanager
def _kernel_environment(workdir: Path) -> Iterator[None]:
    """Make kernel ``python3`` run this interpreter, whatever kernelspecs the user has, and hand
    the kernel absolute data/artifact paths (its working directory is the notebook's folder)."""
    spec_dir = workdir / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    from ipykernel.kernelspec import get_kernel_dict  # the spec ipykernel itself installs

    spec = get_kernel_dict()
    # absolute interpreter (no PATH lookup); the kernel app logs errors only, which drops its
    # per-start note about local TCP transport from the build log (cell output is unaffected)
    spec["argv"] = [sys.executable, *spec["argv"][1:], "--IPKernelApp.log_level=ERROR"]
    # tqdm.auto falls back to text bars without ipywidgets; its notice about that is noise
    spec["env"] = {"PYTHONWARNINGS": "ignore:IProgress not found"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "SAFECRS_DATA_DIR", ARTIFACTS_ENV)}
    # papermill's own parameter inference is regex-based and warns about valid cells (e.g. a
    # comment containing '='); notebook_parameters() checks the cell with Python's parser instead
    pm_logger = logging.getLogger("papermill")
    pm_level = pm_logger.level
    pm_logger.setLevel(logging.ERROR)
    try:
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(workdir), saved["JUPYTER_PATH"]]))
        for k in ("SAFECRS_DATA_DIR", ARTIFACTS_ENV):
            if saved[k]:
                os.environ[k] = str(Path(saved[k]).expanduser().resolve())
        yield
    finally:
        pm_logger.setLevel(pm_level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _py_line(source: Path, cell_source: str) -> int | None:
    """Line of ``source`` (the .py file) where the failing cell's first code line is."""
    first = next((ln.strip() for ln in cell_source.splitlines() if ln.strip()), None)
    if not first:
        return None
    for i, ln in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if ln.strip() == first:
            return i
    return None


def _describe_failure(stem: str, source: Path, profile: str, exc: BaseException, kept: Path | None) -> str:
    from papermill.exceptions import PapermillExecutionError

    lines = [f"notebook {stem} failed (profile={profile})"]
    if isinstance(exc, PapermillExecutionError):
        where = f"cell {exc.cell_index} (In [{exc.exec_count}])"
        line = _py_line(source, exc.source)
        if line:
            where += f", {source.name} line {line}"
        lines[0] += f" in {where}:"
        head = exc.source.strip("\n").splitlines()[:6]
        lines += ["    " + ln for ln in head]
        if len(exc.source.strip("\n").splitlines()) > 6:
            lines.append("    ...")
        lines.append(f"{exc.ename}: {exc.evalue}")
    else:
        lines[0] += f": {type(exc).__name__}: {exc}"
    if kept is not None:
        lines.append(f"partial output: {kept}")
    return "\n".join(lines)


DOMAIN_TITLES = {"games": "SafeGame"}  # prefix of another domain's notebook titles in the book


def _tidy_output(path: Path, source: Path, final: Path, domain: str = MOVIES) -> None:
    """Point papermill's metadata at the .py source and the final name, prefix another domain's
    title (its first heading) with the domain's name, then publish atomically."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    if domain != MOVIES:
        prefix = DOMAIN_TITLES.get(domain, domain.capitalize())
        for cell in nb.cells:
            if cell.cell_type == "markdown" and cell.source.startswith("# "):
                cell.source = f"# {prefix}: {cell.source[2:]}"
                break
    meta = nb.metadata.setdefault("papermill", {})
    base = repo_root()
    meta["input_path"] = os.path.relpath(source, base) if source.is_relative_to(base) else str(source)
    meta["output_path"] = os.path.relpath(final, base) if final.is_relative_to(base) else str(final)
    atomic_write_text(final, nbformat.writes(nb))
    path.unlink()


_STAGE_LINE = re.compile(r"\[stage [^\]]+\] (?:cached|done in [0-9.]+ s|cached \(built concurrently\)): (\S+)")


def code_fingerprint() -> str:
    """sha256 over the package's source and data files (``safecrs_core/**/*.py|json|txt``): a
    notebook's output is only reused while the code that made it is unchanged."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parent
    for path in sorted(p for p in pkg.rglob("*") if p.is_file() and p.suffix in {".py", ".json", ".txt"}
                       and "__pycache__" not in p.parts):
        h.update(path.relative_to(pkg).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def notebook_fingerprint(source: str | os.PathLike, params: Mapping[str, Any], profile: str,
                         code: str | None = None) -> str:
    """What an executed notebook depends on besides its stages' artifacts: its source text, the
    injected parameters, the profile, the package code and the data/artifact folders in use."""
    payload = {
        "source": hashlib.sha256(Path(source).read_bytes()).hexdigest(),
        "params": dict(params),
        "profile": profile,
        "code": code_fingerprint() if code is None else code,
        "data_dir": os.environ.get("SAFECRS_DATA_DIR", ""),
        "artifacts": str(artifacts_root()),
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def _stages_used(executed: Path) -> list[str]:
    """Stage directories (absolute) an executed notebook reported (``[stage X] cached|done ...: <dir>``)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    found: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            for m in _STAGE_LINE.finditer(text if isinstance(text, str) else "".join(text)):
                stage = str(resolve_logged_path(m.group(1)))
                if stage not in found:
                    found.append(stage)
    return found


def _up_to_date(out_dir: Path, stem: str, final: Path, fingerprint: str, profile: str) -> bool:
    """True when ``final`` was made by a successful run with the same fingerprint and profile
    and every stage directory it used is still complete."""
    try:
        entry = json.loads((out_dir / "timings.json").read_text(encoding="utf-8")).get(stem) or {}
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if not final.is_file() or entry.get("status") != "ok" or entry.get("profile") != profile:
        return False
    if entry.get("fingerprint") != fingerprint or not isinstance(entry.get("stages"), list):
        return False
    return all(is_done(resolve_logged_path(d)) for d in entry["stages"])


def _record_timing(out_dir: Path, run: NotebookRun, profile: str, fingerprint: str | None = None) -> None:
    path = out_dir / "timings.json"
    try:
        timings = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        timings = {}
    entry = {"seconds": round(run.seconds, 2), "profile": profile, "status": run.status, "finished": _now()}
    if run.status == "ok" and fingerprint and run.output is not None:
        entry["fingerprint"] = fingerprint
        entry["stages"] = _stages_used(run.output)
    timings[run.stem] = entry
    atomic_write_json(path, dict(sorted(timings.items())))


def _parse_time(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def build_costs(out_dir: str | os.PathLike | None = None, domains: Iterable[str] = (MOVIES,),
                notebooks_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """What each executed notebook would cost from scratch, from the records a build leaves.

    The runner's ``timings.json`` holds each notebook's last execution (wall seconds, when it
    finished, the stage folders it used) and each stage's ``DONE.json`` the seconds its build
    took. A stage counts for the first notebook (in run order) that used it: when it was built
    during that notebook's last execution, its time is already inside the notebook's seconds;
    otherwise (built by an earlier run, the notebook then read it from the cache) its recorded
    seconds are added. A stage built inside another stage's build (a results stage builds its
    generations) is not counted again. One row per executed notebook: ``notebook``, ``domain``, ``run_s`` (last
    execution), ``built_s`` / ``built`` (stages built during it), ``cached_s`` / ``cached`` (stages
    it read, built earlier), ``unknown`` (stages without a recorded time or folder) and
    ``from_scratch_s`` = ``run_s + cached_s``. Stage times are as recorded: a build that shared
    the CPU with other work recorded a longer time."""
    nb_dir = (Path(notebooks_dir) if notebooks_dir is not None else notebooks_root()).resolve()
    out = Path(out_dir).resolve() if out_dir is not None else nb_dir / "_executed"
    entries = []
    for src, domain in notebook_plan(discover_notebooks(nb_dir), domains):
        dest = out if domain == MOVIES else out / domain
        try:
            entry = json.loads((dest / "timings.json").read_text(encoding="utf-8")).get(src.stem)
        except (FileNotFoundError, json.JSONDecodeError):
            entry = None
        if isinstance(entry, dict) and entry.get("status") == "ok":
            entries.append((src.stem, domain, entry))
    spans: dict[str, tuple[float, float, float] | None] = {}  # stage: (seconds, start, end) of its build
    for *_, entry in entries:
        for stage in entry.get("stages") or []:
            try:
                man = json.loads((Path(stage) / DONE_FILE).read_text(encoding="utf-8"))
                seconds, finished = float(man["seconds"]), _parse_time(man["finished"])
                spans[stage] = None if finished is None else (seconds, finished - seconds, finished)
            except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError):
                spans[stage] = None

    def nested(stage: str) -> bool:  # built inside another stage's build: its time is in that one's
        sec, start, end = spans[stage]
        return any(o is not None and o[0] > sec and o[1] - 1.0 <= start and end <= o[2] + 1.0
                   for other, o in spans.items() if other != stage)

    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for stem, domain, entry in entries:
        run_s = float(entry.get("seconds") or 0.0)
        end = _parse_time(entry.get("finished"))
        row = {"notebook": stem, "domain": domain, "run_s": run_s, "built": 0, "built_s": 0.0,
               "cached": 0, "cached_s": 0.0, "unknown": 0}
        for stage in entry.get("stages") or []:
            if stage in seen:
                continue
            seen.add(stage)
            if spans[stage] is None:
                row["unknown"] += 1
                continue
            if nested(stage):
                continue
            seconds, _, finished = spans[stage]
            inside = end is not None and end - run_s - 1.0 <= finished <= end + 1.0
            kind = "built" if inside else "cached"
            row[kind] += 1
            row[f"{kind}_s"] += seconds
        row["from_scratch_s"] = run_s + row["cached_s"]
        rows.append(row)
    return rows


def format_build_costs(rows: list[dict[str, Any]]) -> str:
    """:func:`build_costs` as a text table with a total line (minutes)."""
    head = f"{'notebook':<22} {'domain':<7} {'last run':>9} {'built':>12} {'cached':>12} {'from scratch':>13}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['notebook']:<22} {r['domain']:<7} {r['run_s'] / 60:>7.1f} m "
                     f"{r['built']:>3} {r['built_s'] / 60:>6.1f} m {r['cached']:>3} {r['cached_s'] / 60:>6.1f} m "
                     f"{r['from_scratch_s'] / 60:>11.1f} m" + (f"  ({r['unknown']} stage(s) without a time)"
                                                            if r["unknown"] else ""))
    total = sum(r["from_scratch_s"] for r in rows)
    lines.append(f"{'total':<22} {'':<7} {sum(r['run_s'] for r in rows) / 60:>7.1f} m {'':>12} {'':>12} "
                 f"{total / 60:>11.1f} m")
    return "\n".join(lines)


def run_notebooks(profile: str = DEFAULT_PROFILE, only: Iterable[str] | None = None,
                  stop_on_error: bool = True, *, notebooks_dir: str | os.PathLike | None = None,
                  out_dir: str | os.PathLike | None = None, profiles: Mapping[str, Any] | None = None,
                  kernel_name: str = "python3", execution_timeout: float | None = None,
                  force: bool = False, domains: Iterable[str] = (MOVIES,),
                  log: Callable[[str], Any] | None = print) -> list[NotebookRun]:
    """Execute ``notebooks_dir/NN_*.py`` in order under ``profile``.

    Each notebook is converted with jupytext, parameterised with :func:`params_for` and executed
    by papermill with its folder as working directory; the result goes to
    ``out_dir/NN_name.ipynb`` (default ``notebooks_dir/_executed``). A failing notebook's partial
    output goes to ``out_dir/failed/NN_name.ipynb`` and its previous good output is removed, so a
    book never shows stale results. With ``stop_on_error`` the first failure raises
    :class:`NotebookError` (notebook, cell, source line, error); otherwise all notebooks run and
    one error listing every failure is raised at the end. Outputs of notebooks that succeeded are
    kept either way. ``only`` picks notebooks by stem or number (``"01"``).

    A notebook is not re-executed (status ``"up to date"``) when its previous output came from a
    successful run with the same :func:`notebook_fingerprint` (source, parameters, profile, package
    code) and every stage directory that run used is still complete, unless ``force`` or an
    earlier notebook of this call was executed (then every later one runs too).

    ``domains`` (e.g. ``("movies", "games")``): the notebooks with a ``domain`` parameter run for
    each, in the order given in the module docstring; another domain's outputs go to
    ``out_dir/<domain>/``. Notebooks without that parameter run once, after them, when movies
    is among ``domains``."""
    import papermill as pm  # lazy: only the book extra needs it

    check_profile(profile)
    nb_dir = (Path(notebooks_dir) if notebooks_dir is not None else notebooks_root()).resolve()
    out = Path(out_dir).resolve() if out_dir is not None else nb_dir / "_executed"
    table = load_profiles() if profiles is None else validate_profiles(profiles)
    selected = _select(discover_notebooks(nb_dir), only)
    say = log or (lambda _msg: None)
    if not selected:
        say(f"no notebooks (NN_name.py) in {nb_dir}")
        return []
    plan = notebook_plan(selected, domains)
    runs: list[NotebookRun] = []
    code = code_fingerprint()
    executed_one = False
    with tempfile.TemporaryDirectory(prefix="safecrs-nb-") as work:
        work_dir = Path(work)
        with _kernel_environment(work_dir / "jupyter"):
            for i, (src, domain) in enumerate(plan, start=1):
                stem = src.stem
                params = params_for(stem, profile, table, domain)
                shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
                say(f"[{i}/{len(plan)}] {stem} ({shown}) ...")
                dest = out if domain == MOVIES else out / domain
                dest.mkdir(parents=True, exist_ok=True)
                final, failed = dest / f"{stem}.ipynb", dest / "failed" / f"{stem}.ipynb"
                running = dest / f".{stem}.running.ipynb"
                t0 = time.perf_counter()
                fingerprint = notebook_fingerprint(src, params, profile, code)
                if not force and not executed_one and _up_to_date(dest, stem, final, fingerprint, profile):
                    run = NotebookRun(stem, src, final, time.perf_counter() - t0, "up to date", domain=domain)
                    say(f"    up to date (same source, parameters, code and stages): {final}")
                    runs.append(run)
                    continue
                executed_one = True
                try:
                    defined = notebook_parameters(src)
                    unknown = sorted(set(params) - set(defined) - {"profile"})
                    if unknown:
                        raise PipelineError(f"profiles.json sets {unknown} for {stem}, but its "
                                            "parameters cell does not define them")
                    nb = _read_notebook(src)
                    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": "Python 3 (ipykernel)",
                                                 "language": "python"}
                    nb.metadata.setdefault("language_info", {"name": "python"})
                    src_ipynb = work_dir / f"{stem}.ipynb"
                    import nbformat

                    nbformat.write(nb, src_ipynb)
                    pm.execute_notebook(str(src_ipynb), str(running), parameters=params,
                                        kernel_name=kernel_name, cwd=str(src.parent),
                                        progress_bar=False, log_output=False,
                                        execution_timeout=execution_timeout)
                    _tidy_output(running, src, final, domain)
                    with suppress(FileNotFoundError):
                        failed.unlink()
                    run = NotebookRun(stem, src, final, time.perf_counter() - t0, "ok", domain=domain)
                    say(f"    ok in {run.seconds:.1f} s -> {final}")
                except Exception as exc:
                    kept = None
                    if running.exists():
                        failed.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(running, failed)
                        kept = failed
                    with suppress(FileNotFoundError):
                        final.unlink()  # never leave a stale good output of a failing notebook
                    message = _describe_failure(stem, src, profile if domain == MOVIES else f"{profile}, domain {domain}", exc, kept)
                    run = NotebookRun(stem, src, kept, time.perf_counter() - t0, "failed", message, domain=domain)
                    say(f"    FAILED after {run.seconds:.1f} s: {message.splitlines()[0]}")
                    runs.append(run)
                    _record_timing(dest, run, profile)
                    if stop_on_error:
                        raise NotebookError(message) from exc
                    continue
                except BaseException:  # interrupted: leave no half-written output behind
                    with suppress(FileNotFoundError):
                        running.unlink()
                    raise
                runs.append(run)
                _record_timing(dest, run, profile, fingerprint)
    failures = [r for r in runs if r.status == "failed"]
    if failures:
        raise NotebookError(f"{len(failures)} of {len(runs)} notebook(s) failed:\n\n"
                            + "\n\n".join(r.error or r.stem for r in failures))
    return runs


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_notebooks",
        description="Execute notebooks/NN_*.py in order with papermill into notebooks/_executed/.")
    parser.add_argument("--profile", default=os.environ.get("PROFILE") or DEFAULT_PROFILE,
                        choices=list(PROFILES), help="run profile (default: $PROFILE or book)")
    parser.add_argument("--only", nargs="+", metavar="NB", help="notebook stems or numbers, e.g. 01 03_gdpo")
    parser.add_argument("--keep-going", action="store_true", help="run the rest after a failure")
    parser.add_argument("--force", action="store_true",
                        help="execute every selected notebook, even those whose output is up to date")
    parser.add_argument("--notebooks-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell")
    parser.add_argument("--profiles", type=Path, default=None,
                        help="profile overrides file (default: safecrs_core/data/profiles.json)")
    parser.add_argument("--domains", nargs="+", default=None, metavar="DOMAIN",
                        help="domains of the notebooks with a 'domain' parameter (default: $DOMAINS or "
                             "every domain: movies games)")
    parser.add_argument("--list", action="store_true", help="list notebooks and parameters; run nothing")
    parser.add_argument("--check", action="store_true", help="check notebooks against profiles.json; run nothing")
    parser.add_argument("--costs", action="store_true",
                        help="print what each executed notebook would cost from scratch (its last run plus "
                             "the recorded build times of the cached stages it read); run nothing")
    args = parser.parse_args(argv)
    try:
        table = load_profiles(args.profiles)
        if args.check:
            problems = check_notebooks(args.notebooks_dir, table)
            for p in problems:
                print(p, file=sys.stderr)
            print("ok" if not problems else f"{len(problems)} problem(s)")
            return 1 if problems else 0
        domains = args.domains or (os.environ.get("DOMAINS") or "").split() or [MOVIES, *_other_domains()]
        if args.costs:
            print(format_build_costs(build_costs(args.out_dir, domains, args.notebooks_dir)))
            return 0
        if args.list:
            for src, domain in notebook_plan(_select(discover_notebooks(args.notebooks_dir), args.only), domains):
                where = "" if domain == MOVIES else f" [{domain}]"
                print(f"{src.stem}{where}: {json.dumps(params_for(src.stem, args.profile, table, domain))}")
            return 0
        runs = run_notebooks(args.profile, args.only, stop_on_error=not args.keep_going,
                             notebooks_dir=args.notebooks_dir, out_dir=args.out_dir,
                             profiles=table, execution_timeout=args.timeout, force=args.force,
                             domains=domains)
    except (NotebookError, PipelineError) as exc:
        if debug_requested():
            raise
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    total = sum(r.seconds for r in runs)
    fresh = sum(r.status == "up to date" for r in runs)
    print(f"{len(runs) - fresh} notebook(s) ran and {fresh} were up to date under profile "
          f"{args.profile!r} in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

import hashlib
import json

import pytest

from safecrs_core.data import sources


def test_registry_matches_manifest(data_dir):
    manifest = json.loads((data_dir / "MANIFEST.json").read_text())
    reg = sources.registry()
    assert len(reg) == len(manifest) == 42
    for e in manifest:
        r = reg[e["file"]]
        assert r.sha256 == e["sha256"] and r.source_id == e["source_id"] and r.origin_commit == e["origin_commit"]
        # converted files cannot be downloaded byte for byte from their origin
        assert (r.url is None) == (e["converted_from"] is not None)
        if r.url:
            assert e["origin_commit"] in r.url and r.url.endswith(e["origin_path"])


def test_path_verifies_sha(data_dir):
    p = sources.path("saferec_traits/traits_warnings.json", data_dir)
    assert p.exists() and hashlib.sha256(p.read_bytes()).hexdigest() == sources.registry()[
        "saferec_traits/traits_warnings.json"].sha256


def _fake_dir(tmp_path, data_dir, name, content=None):
    dest = tmp_path / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(content if content is not None else (data_dir / name).read_bytes())
    return dest


def test_sha_mismatch_names_file(tmp_path, data_dir):
    name = "saferec_traits/traits_warnings.json"
    _fake_dir(tmp_path, data_dir, name, b"[]")
    with pytest.raises(sources.DataError) as exc:
        sources.fetch([name], tmp_path, download=False)
    assert "sha256 mismatch" in str(exc.value) and name in str(exc.value)


def test_missing_files_listed_with_instructions(tmp_path):
    names = ["saferec_traits/traits_warnings.json", "mpaa_reasons/mpaa.csv"]
    with pytest.raises(sources.DataError) as exc:
        sources.fetch(names, tmp_path, download=False)
    msg = str(exc.value)
    assert "2 data file(s) missing" in msg
    assert "raw.githubusercontent.com" in msg  # byte-for-byte copy: downloadable
    assert "mirror-only" in msg  # mpaa.csv was converted from .rds


def test_download_failure_is_reported(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(sources.urllib.request, "urlopen", boom)
    with pytest.raises(sources.DataError) as exc:
        sources.fetch(["saferec_traits/traits_warnings.json"], tmp_path, download=True)
    assert "download failed" in str(exc.value) and "network unreachable" in str(exc.value)
    assert not list(tmp_path.rglob(".part-*"))  # no half-written file left behind


def test_download_checks_sha(tmp_path, monkeypatch):
    import io

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda *a, **k: Resp(b"tampered"))
    with pytest.raises(sources.DataError) as exc:
        sources.fetch(["saferec_traits/traits_warnings.json"], tmp_path, download=True)
    assert "sha256" in str(exc.value)
    assert not (tmp_path / "saferec_traits/traits_warnings.json").exists()


def test_unknown_file_and_source():
    with pytest.raises(KeyError):
        sources.fetch(["nope/nothing.csv"])
    with pytest.raises(KeyError):
        sources.files_of("nope")


def test_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(sources.ENV_VAR, str(tmp_path))
    assert sources.data_dir() == tmp_path.resolve()
    assert sources.data_dir(tmp_path / "x") == (tmp_path / "x").resolve()


def test_no_pickle_loading_anywhere():
    import pathlib

    import safecrs_core
    pkg = pathlib.Path(safecrs_core.__file__).parent
    for f in pkg.rglob("*.py"):
        text = f.read_text()
        assert "pickle.load" not in text and "read_pickle" not in text, f

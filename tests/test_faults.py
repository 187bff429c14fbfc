"""Fault injection: damaged stages, killed builds, corrupt data, bad command-line values and
adversarial completions. Each case must end in a rebuild, a one-line error or an explicit
``unknown``; never a wrong answer or a half-written artifact that looks complete."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from safecrs_core import pipeline as pl
from safecrs_core.train.prompts import parse_completion

ROOT = Path(__file__).resolve().parents[1]


# ---- stages ----------------------------------------------------------------------------------

def _stage(root, calls, payload=b"0123456789"):
    def fn(tmp):
        calls.append(1)
        (tmp / "table.bin").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "notes.json").write_text(json.dumps({"n": 1}))
        return {"n": 1}
    return pl.run_stage("faulty", {"p": 1}, [], fn, root=root, log=None)


def test_done_json_records_every_file_with_size_and_sha256(tmp_path):
    calls = []
    d = _stage(tmp_path, calls)
    files = {f["path"]: f for f in pl.read_manifest(d)["files"]}
    assert set(files) == {"table.bin", "sub/notes.json"}
    assert files["table.bin"]["bytes"] == 10 and files["table.bin"]["sha256"] == pl.sha256_file(d / "table.bin")


@pytest.mark.parametrize("damage, reason", [
    (lambda d: (d / "table.bin").write_bytes(b"0123456780"), "does not match its recorded sha256"),  # same size
    (lambda d: (d / "table.bin").write_bytes(b"01234"), "5 bytes, 10 recorded"),
    (lambda d: (d / "sub" / "notes.json").unlink(), "is missing"),
    (lambda d: (d / pl.DONE_FILE).write_text(""), "empty or unreadable"),
    (lambda d: (d / pl.DONE_FILE).write_text("garbage{"), "empty or unreadable"),
    (lambda d: (d / pl.DONE_FILE).write_text("{}"), "holds no file record"),
])
def test_a_damaged_stage_is_rebuilt_with_one_line_saying_why(tmp_path, capsys, damage, reason):
    calls = []
    d = _stage(tmp_path, calls)
    damage(d)
    assert reason in pl.stage_problem(d) and not pl.is_done(d)
    with pytest.raises(pl.PipelineError, match="delete that folder") as err:
        pl.read_manifest(d)
    assert "\n" not in str(err.value)
    capsys.readouterr()
    assert _stage(tmp_path, calls) == d and len(calls) == 2  # rebuilt, not served
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "rebuilding" in line and reason in line
    assert (d / "table.bin").read_bytes() == b"0123456789" and pl.stage_problem(d) is None
    assert _stage(tmp_path, calls) == d and len(calls) == 2  # and then cached


def test_a_killed_stage_build_leaves_nothing_that_looks_complete(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from safecrs_core import pipeline as pl
        def fn(tmp):
            (tmp / "half.bin").write_bytes(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(60)
        pl.run_stage("faulty", {{"p": 1}}, [], fn, root={str(tmp_path)!r}, log=None)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    folder = tmp_path / "faulty"
    assert not [p for p in folder.iterdir() if pl.is_done(p)]
    assert all(p.name.startswith(".") for p in folder.iterdir())  # only the hidden scratch folder
    calls = []
    d = _stage(tmp_path, calls)
    assert len(calls) == 1 and pl.is_done(d)
    assert [p.name for p in folder.iterdir()] == [d.name]  # the dead build's leftovers were swept


# ---- data ------------------------------------------------------------------------------------

@pytest.fixture
def data_copy(data_dir, tmp_path):
    """A data folder of links to the real files, so that one file can be damaged."""
    copy = tmp_path / "data"
    for p in data_dir.rglob("*"):
        if p.is_file():
            (copy / p.relative_to(data_dir)).parent.mkdir(parents=True, exist_ok=True)
            (copy / p.relative_to(data_dir)).symlink_to(p)
    return copy


def _corrupt(copy, name):
    path = copy / name
    raw = bytearray(path.read_bytes())
    raw[1000:1003] = bytes(b ^ 0xFF for b in raw[1000:1003])
    path.unlink()
    path.write_bytes(bytes(raw))


@pytest.mark.slow
def test_a_corrupt_or_missing_data_file_is_caught_with_a_warm_oracle_cache(data_dir, data_copy):
    from safecrs_core.safety.oracle import load_oracle
    from safecrs_core.data.sources import DataError

    assert load_oracle(data_dir=data_dir).threshold  # warm: the oracle stage exists now
    _corrupt(data_copy, "mpaa_reasons/mpaa.csv")
    with pytest.raises(DataError, match="sha256 mismatch for .*mpaa.csv"):
        load_oracle(data_dir=data_copy)
    (data_copy / "mpaa_reasons" / "mpaa.csv").unlink()
    (data_copy / "mpaa_reasons" / "mpaa.csv").symlink_to(data_dir / "mpaa_reasons" / "mpaa.csv")
    (data_copy / "kids_in_mind" / "KIM_movies.csv").unlink()
    with pytest.raises(DataError, match="KIM_movies.csv: download"):
        load_oracle(data_dir=data_copy, threshold=0.65)


def test_a_corrupt_data_file_stops_a_cold_oracle_build(data_copy, artifacts_root):
    from safecrs_core.safety.oracle import load_oracle
    from safecrs_core.data.sources import DataError

    _corrupt(data_copy, "kids_in_mind/KIM_movies.csv")
    with pytest.raises(DataError, match="sha256 mismatch for .*KIM_movies.csv"):
        load_oracle(data_dir=data_copy, threshold=0.61)  # a fresh artifacts root: nothing cached
    assert not (artifacts_root / "oracle").exists() or not any(pl.is_done(p) for p in (artifacts_root / "oracle").iterdir())


# ---- the command line ------------------------------------------------------------------------

def _cli(*args, env=None):
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "safecrs_core.cli", *args], capture_output=True, cwd=ROOT,
                          env=full, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["check", "Saw (2004)", "--threshold", "5"], "outside (0, 1]"),
    (["check", "Saw (2004)", "--threshold", "-1"], "outside (0, 1]"),
    (["check", "Saw (2004)", "--threshold", "nan"], "outside (0, 1]"),
    (["check", "Saw (2004)", "--threshold", "high"], "not a number"),
    (["check", "Saw (2004)", "--max-evidence", "-1"], "negative"),
])
def test_bad_option_values_give_one_line(args, needle):
    out = _cli(*args)
    err = out.stderr.decode().strip()
    assert out.returncode == 2 and needle in err and "\n" not in err and "--help" in err


def test_missing_data_gives_one_line_and_debug_shows_the_traceback(data_copy, tmp_path):
    out = _cli("data", env={"SAFECRS_DATA_DIR": str(tmp_path / "nowhere")})
    err = out.stderr.decode().strip()
    assert out.returncode == 1 and "does not exist" in err and "\n" not in err
    _corrupt(data_copy, "mpaa_reasons/mpaa.csv")
    out = _cli("check", "Saw (2004)", "--traits", "anti_gore", env={"SAFECRS_DATA_DIR": str(data_copy)})
    err = out.stderr.decode().strip()
    assert out.returncode == 1 and "sha256 mismatch" in err and "\n" not in err and out.stdout == b""
    out = _cli("--debug", "check", "Saw (2004)", "--traits", "anti_gore", env={"SAFECRS_DATA_DIR": str(data_copy)})
    assert out.returncode == 1 and b"Traceback" in out.stderr


def test_json_output_stays_valid_utf8_for_undecodable_input():
    out = _cli("check", "--json", "--traits", "anti_gore", os.fsdecode(b"Saw \xff (2004)"))
    assert out.returncode == 0
    (row,) = json.loads(out.stdout.decode("utf-8"))
    assert "\ufffd" in row["query"] and "not valid UTF-8" in row["resolution"]


def test_the_runner_speaks_in_one_line(tmp_path):
    for args, needle in ((["--profiles", str(tmp_path / "none.json"), "--list"], "cannot read the profiles file"),
                         (["--notebooks-dir", str(tmp_path / "none"), "--list"], "does not exist")):
        out = subprocess.run([sys.executable, "scripts/run_notebooks.py", *args], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
        assert out.returncode == 1 and needle in out.stderr and "Traceback" not in out.stderr


# ---- the parser ------------------------------------------------------------------------------

def test_tags_never_end_up_in_titles_and_control_characters_are_removed():
    assert [i.title for i in parse_completion("<solution><solution>Saw (2004)").items] == ["Saw"]
    assert [i.title for i in parse_completion("<solution>" * 20000 + "Heat (1995)").items] == ["Heat"]
    assert [i.title for i in parse_completion("<solution>\nSa\x00w (2004)\nHeat\x07 (1995)\n</solution>").items] == [
        "Saw", "Heat"]
    text = "<solution>\nHeat (1995)</solution><reasoning>x</reasoning>\n</solution>"
    assert [i.title for i in parse_completion(text).items] == ["Heat"]


@pytest.mark.parametrize("text", [
    "<reasoning><solution>" * 20000,
    "<reasoning><solution></reasoning>" * 20000,
    "<reasoning>" * 20000 + "<solution>Heat (1995)",
    "x" * 400_000,
])
def test_adversarial_completions_parse(text):
    # speed on such input is measured by scripts/bench_parse.py; here: an answer, no title with tag text
    out = parse_completion(text)
    assert all("<" not in i.title for i in out.items)

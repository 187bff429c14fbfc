"""Stage keys, cached stages, atomic writes, profiles and the notebook runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safecrs_core import pipeline as pl

# --------------------------------------------------------------------------------------------
# stage keys


def test_stage_key_is_stable_across_dict_order():
    a = pl.stage_key("bench", {"n": 10, "seed": 0, "opts": {"x": 1, "y": [1, 2]}}, ["up/abc"])
    b = pl.stage_key("bench", {"opts": {"y": [1, 2], "x": 1}, "seed": 0, "n": 10}, ["up/abc"])
    assert a == b
    assert len(a) == pl.KEY_LENGTH and all(c in "0123456789abcdef" for c in a)


def test_stage_key_changes_with_params_inputs_stage_and_version():
    base = pl.stage_key("bench", {"n": 10}, ["up/abc"])
    assert pl.stage_key("bench", {"n": 11}, ["up/abc"]) != base
    assert pl.stage_key("bench", {"n": 10, "m": 0}, ["up/abc"]) != base
    assert pl.stage_key("bench", {"n": 10}, ["up/abd"]) != base
    assert pl.stage_key("bench", {"n": 10}, []) != base
    assert pl.stage_key("other", {"n": 10}, ["up/abc"]) != base
    assert pl.stage_key("bench", {"n": 10}, ["up/abc"], version="999") != base
    # tuples and lists are the same JSON value
    assert pl.stage_key("s", {"v": (1, 2)}) == pl.stage_key("s", {"v": [1, 2]})


def test_stage_key_rejects_what_cannot_be_hashed_reliably():
    with pytest.raises(ValueError):
        pl.stage_key("s", {"x": float("nan")})
    with pytest.raises(TypeError):
        pl.stage_key("s", {"x": object()})
    with pytest.raises(pl.PipelineError):
        pl.stage_key("../escape", {})
    with pytest.raises(pl.PipelineError):
        pl.stage_key("s", {}, [Path("/not/a/stage")])


def test_stage_dir_uses_the_artifacts_root(artifacts_root):
    key = pl.stage_key("bench", {"n": 1})
    assert pl.stage_dir("bench", key) == artifacts_root.resolve() / "bench" / key
    assert pl.stage_dir("bench", key, root="/x/y") == Path("/x/y/bench") / key


# --------------------------------------------------------------------------------------------
# run_stage


def _writer(calls: list, text: str = "hello"):
    def fn(out: Path):
        calls.append(out)
        (out / "sub").mkdir()
        (out / "sub" / "a.txt").write_text(text)
        return {"rows": 3}
    return fn


def test_run_stage_builds_once_then_uses_the_cache(artifacts_root):
    calls: list = []
    d1 = pl.run_stage("bench", {"n": 3}, ["up/1"], _writer(calls), log=None)
    d2 = pl.run_stage("bench", {"n": 3}, ["up/1"], _writer(calls), log=None)
    assert d1 == d2 and len(calls) == 1
    assert calls[0] != d1  # built elsewhere, renamed into place
    assert (d1 / "sub" / "a.txt").read_text() == "hello"
    m = pl.read_manifest(d1)
    assert m["stage"] == "bench" and m["key"] == d1.name and m["params"] == {"n": 3}
    assert m["inputs"] == ["up/1"] and m["result"] == {"rows": 3}
    assert m["files"] == [{"path": "sub/a.txt", "bytes": 5, "sha256": pl.sha256_file(d1 / "sub" / "a.txt")}]
    assert sorted(p.name for p in d1.parent.iterdir()) == [d1.name]  # no leftovers
    # different params: a different directory, built again
    d3 = pl.run_stage("bench", {"n": 4}, ["up/1"], _writer(calls), log=None)
    assert d3 != d1 and len(calls) == 2
    # a completed stage directory can be an input of the next stage
    assert pl.stage_key("next", {}, [d1]) == pl.stage_key("next", {}, [pl.stage_ref(d1)])


def test_run_stage_failure_leaves_nothing_that_looks_complete(artifacts_root):
    def broken(out: Path):
        (out / "partial.bin").write_bytes(b"x" * 10)
        raise RuntimeError("died half way")

    with pytest.raises(RuntimeError, match="half way"):
        pl.run_stage("bench", {"n": 1}, [], broken, log=None)
    final = pl.stage_dir("bench", pl.stage_key("bench", {"n": 1}))
    assert not final.exists()
    assert list(final.parent.iterdir()) == []  # temporary build folder removed too
    calls: list = []
    d = pl.run_stage("bench", {"n": 1}, [], _writer(calls), log=None)
    assert d == final and pl.is_done(d) and len(calls) == 1


def test_run_stage_replaces_an_incomplete_directory_and_honours_force(artifacts_root):
    final = pl.stage_dir("bench", pl.stage_key("bench", {"n": 2}))
    final.mkdir(parents=True)
    (final / "stale.txt").write_text("from a run that never wrote DONE.json")
    calls: list = []
    d = pl.run_stage("bench", {"n": 2}, [], _writer(calls), log=None)
    assert d == final and not (d / "stale.txt").exists() and pl.is_done(d)
    pl.run_stage("bench", {"n": 2}, [], _writer(calls, "again"), log=None, force=True)
    assert len(calls) == 2 and (d / "sub" / "a.txt").read_text() == "again"
    assert sorted(p.name for p in d.parent.iterdir()) == [d.name]


def test_run_stage_sweeps_build_folders_of_dead_processes(artifacts_root):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final = pl.stage_dir("bench", pl.stage_key("bench", {"n": 5}))
    final.parent.mkdir(parents=True)
    leftover = final.parent / f".{final.name}.tmp-{dead.pid}-0badc0de"
    leftover.mkdir()
    mine = final.parent / f".{final.name}.tmp-{os.getpid()}-0000beef"  # a live process: kept
    mine.mkdir()
    pl.run_stage("bench", {"n": 5}, [], _writer([]), log=None)
    assert not leftover.exists() and mine.exists()


def test_run_stage_rejects_a_non_dict_result(artifacts_root):
    with pytest.raises(pl.PipelineError, match="dict or None"):
        pl.run_stage("bench", {"n": 6}, [], lambda out: 42, log=None)
    assert not pl.stage_dir("bench", pl.stage_key("bench", {"n": 6})).exists()


# --------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    p = tmp_path / "deep" / "out.json"
    pl.atomic_write_json(p, {"a": 1, "path": Path("x/y")})
    assert json.loads(p.read_text()) == {"a": 1, "path": "x/y"}
    pl.atomic_write_text(p, "second")
    assert p.read_text() == "second"
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    with pytest.raises(TypeError):
        pl.atomic_write_json(p, {"bad": object()})
    assert p.read_text() == "second"  # old content intact after a failed write
    assert [q.name for q in p.parent.iterdir()] == ["out.json"]


# --------------------------------------------------------------------------------------------
# profiles


def test_shipped_profiles_file_is_valid():
    table = pl.load_profiles()
    assert isinstance(table, dict) and not any(k.startswith("_") for k in table)


def test_params_for_merges_overrides_and_profile():
    table = {"_doc": "x", "01_bench": {"smoke": {"n": 5}, "paper": {"n": 0, "model": "big"}}}
    assert pl.params_for("01_bench", "smoke", table) == {"n": 5, "profile": "smoke"}
    assert pl.params_for("01_bench", "book", table) == {"profile": "book"}
    assert pl.params_for("02_other", "paper", table) == {"profile": "paper"}
    with pytest.raises(pl.PipelineError, match="unknown profile"):
        pl.params_for("01_bench", "huge", table)


@pytest.mark.parametrize("bad, match", [
    ({"01_b": {"fast": {}}}, "unknown profile"),
    ({"bench": {"smoke": {}}}, "notebook stem"),
    ({"01_b": {"smoke": {"profile": "x"}}}, "bad parameter name"),
    ({"01_b": {"smoke": [1]}}, "must be an object"),
])
def test_profiles_schema_errors(bad, match):
    with pytest.raises(pl.PipelineError, match=match):
        pl.validate_profiles(bad)


def test_repository_notebooks_agree_with_profiles():
    """Every notebooks/NN_*.py has a literal-only parameters cell setting profile, and every
    override in profiles.json names a parameter of an existing notebook."""
    assert pl.check_notebooks() == []


def test_toc_lists_every_notebook_and_only_existing_pages(repo_root):
    yaml = pytest.importorskip("yaml")
    toc = yaml.safe_load((repo_root / "_toc.yml").read_text())
    files: list[str] = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    for f in files:
        f = f.removesuffix(".md").removesuffix(".ipynb")
        if f.startswith("notebooks/_executed/"):
            stem = f.rsplit("/", 1)[1]
            assert (repo_root / "notebooks" / f"{stem}.py").is_file(), f"toc lists {f} but notebooks/{stem}.py is missing"
        else:
            assert (repo_root / f"{f}.md").is_file(), f"toc lists {f} but {f}.md is missing"
    listed = [f.removesuffix(".ipynb") for f in files]
    for src, domain in pl.notebook_plan(pl.discover_notebooks(), ("movies", "games")):
        page = f"notebooks/_executed/{src.stem}" if domain == "movies" else f"notebooks/_executed/{domain}/{src.stem}"
        assert page in listed, f"_toc.yml does not list {page}"
    assert len(listed) == len(set(listed)), "_toc.yml lists a page twice"


# --------------------------------------------------------------------------------------------
# notebook runner

OK_NB = '''\
# %% [markdown]
# # A tiny notebook

# %% tags=["parameters"]
profile = "book"
n = 3
label = "default"

# %%
import json, os, sys
print(json.dumps({"profile": profile, "n": n, "label": label, "exe": sys.executable,
                  "cwd": os.getcwd(), "data": os.environ.get("SAFECRS_DATA_DIR")}))
'''

BROKEN_NB = '''\
# %% tags=["parameters"]
profile = "book"

# %%
x = 1

# %%
y = x + 1
raise ValueError(f"boom {y}")
'''

AFTER_NB = '''\
# %% tags=["parameters"]
profile = "book"

# %%
print("after")
'''


def _stdout(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.notebook
def test_run_notebooks_injects_parameters_and_stops_at_a_failing_cell(tmp_path):
    t0 = time.perf_counter()
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    (nbs / "01_tiny.py").write_text(OK_NB)
    (nbs / "02_broken.py").write_text(BROKEN_NB)
    (nbs / "03_after.py").write_text(AFTER_NB)
    (nbs / "notes.py").write_text("not a notebook: no NN_ prefix\n")
    out = nbs / "_executed"
    out.mkdir()
    (out / "02_broken.ipynb").write_text("{}")  # a stale good output from an earlier run
    profiles = {"01_tiny": {"smoke": {"n": 1}, "paper": {"n": 99}}}
    with pytest.raises(pl.NotebookError) as info:
        pl.run_notebooks("smoke", notebooks_dir=nbs, profiles=profiles, log=None)
    msg = str(info.value)
    assert "notebook 02_broken failed (profile=smoke)" in msg
    assert "cell 3 (In [4])" in msg and "02_broken.py line 8" in msg
    assert 'raise ValueError(f"boom {y}")' in msg and "ValueError: boom 2" in msg

    executed = out / "01_tiny.ipynb"
    nb = json.loads(executed.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1
    assert "n = 1" in "".join(injected[0]["source"]) and 'profile = "smoke"' in "".join(injected[0]["source"])
    seen = json.loads(_stdout(executed))
    assert seen["profile"] == "smoke" and seen["n"] == 1 and seen["label"] == "default"
    assert seen["exe"] == sys.executable  # the kernel runs this interpreter
    assert Path(seen["cwd"]) == nbs.resolve()
    assert seen["data"] and Path(seen["data"]).is_absolute()
    assert nb["metadata"]["papermill"]["input_path"].endswith("01_tiny.py")

    assert not (out / "02_broken.ipynb").exists()  # stale output removed
    assert (out / "failed" / "02_broken.ipynb").is_file()  # partial output kept for inspection
    assert not (out / "03_after.ipynb").exists()  # stopped at the first failure
    assert not list(out.glob(".*"))  # no half-written outputs
    timings = json.loads((out / "timings.json").read_text())
    assert timings["01_tiny"]["status"] == "ok" and timings["01_tiny"]["profile"] == "smoke"
    assert timings["02_broken"]["status"] == "failed" and "03_after" not in timings
    assert time.perf_counter() - t0 < 30


@pytest.mark.notebook
def test_run_notebooks_keep_going_runs_the_rest_and_only_selects(tmp_path):
    t0 = time.perf_counter()
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    (nbs / "01_tiny.py").write_text(OK_NB)
    (nbs / "02_broken.py").write_text(BROKEN_NB)
    (nbs / "03_after.py").write_text(AFTER_NB)
    out = tmp_path / "out"
    with pytest.raises(pl.NotebookError, match=r"1 of 2 notebook\(s\) failed"):
        pl.run_notebooks("paper", only=["02", "03_after"], stop_on_error=False,
                         notebooks_dir=nbs, out_dir=out, profiles={}, log=None)
    assert _stdout(out / "03_after.ipynb").strip() == "after"
    assert not (out / "01_tiny.ipynb").exists()
    with pytest.raises(pl.PipelineError, match="no notebook matches"):
        pl.run_notebooks("smoke", only=["07"], notebooks_dir=nbs, out_dir=out, log=None)
    assert time.perf_counter() - t0 < 30


def test_run_notebooks_rejects_overrides_the_notebook_does_not_define(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    (nbs / "01_tiny.py").write_text(OK_NB)
    with pytest.raises(pl.NotebookError, match=r"sets \['typo'\] for 01_tiny"):
        pl.run_notebooks("smoke", notebooks_dir=nbs, profiles={"01_tiny": {"smoke": {"typo": 1}}}, log=None)
    assert not (nbs / "_executed" / "01_tiny.ipynb").exists()
    problems = pl.check_notebooks(nbs, {"01_tiny": {"smoke": {"typo": 1}}, "09_gone": {"book": {}}})
    assert any("'typo'" in p for p in problems) and any("09_gone" in p for p in problems)


def test_check_notebooks_wants_literal_parameters_with_profile(tmp_path):
    (tmp_path / "01_a.py").write_text('# %% tags=["parameters"]\nn = 3\n')
    (tmp_path / "02_b.py").write_text('# %% tags=["parameters"]\nprofile = "book"\nn = len("abc")\n')
    (tmp_path / "03_c.py").write_text('# %%\nprofile = "book"\n')
    (tmp_path / "04_d.py").write_text('# %% tags=["parameters"]\nprofile: str = "smoke"\nseeds = [0, 1]\n')
    problems = "\n".join(pl.check_notebooks(tmp_path, {}))
    assert "01_a.py: the parameters cell must set profile" in problems
    assert "02_b.py: parameters cell line 2: n is not a literal" in problems
    assert "03_c.py: no cell tagged 'parameters'" in problems
    assert "04_d" not in problems
    assert pl.notebook_parameters(tmp_path / "04_d.py") == {"profile": "smoke", "seeds": [0, 1]}


def test_runner_command_line_lists_and_checks(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    (nbs / "01_tiny.py").write_text(OK_NB)
    table = tmp_path / "profiles.json"
    table.write_text(json.dumps({"_doc": "test", "01_tiny": {"smoke": {"n": 2}}}))
    common = ["--notebooks-dir", str(nbs), "--profiles", str(table)]
    assert pl.main(["--list", "--profile", "smoke", *common]) == 0
    assert '01_tiny: {"n": 2, "profile": "smoke"}' in capsys.readouterr().out
    assert pl.main(["--check", *common]) == 0
    (nbs / "02_bad.py").write_text("# %%\nx = 1\n")
    assert pl.main(["--check", *common]) == 1
    assert "02_bad.py: no cell tagged 'parameters'" in capsys.readouterr().err


STAGE_NB = '''\
# %% tags=["parameters"]
profile = "book"
n = 1
root = ""

# %%
from safecrs_core import pipeline as pl
d = pl.run_stage("demo", {"n": n}, [], lambda tmp: None, root=root)
'''


@pytest.mark.notebook
def test_run_notebooks_skips_up_to_date_outputs_and_reruns_what_changed(tmp_path, monkeypatch):
    code = {"fingerprint": "code-v1"}  # the package's own files may change while the suite runs
    monkeypatch.setattr(pl, "code_fingerprint", lambda: code["fingerprint"])
    nbs, out, root = tmp_path / "nbs", tmp_path / "out", tmp_path / "artifacts"
    nbs.mkdir()
    (nbs / "01_stage.py").write_text(STAGE_NB)
    (nbs / "02_after.py").write_text(AFTER_NB)
    profiles = {"01_stage": {"smoke": {"root": str(root)}}}

    def run(**kw):
        return {r.stem: r.status for r in pl.run_notebooks("smoke", notebooks_dir=nbs, out_dir=out,
                                                          profiles=profiles, log=None, **kw)}

    assert run() == {"01_stage": "ok", "02_after": "ok"}
    timings = json.loads((out / "timings.json").read_text())
    stage = pl.stage_dir("demo", pl.stage_key("demo", {"n": 1}), root)
    assert timings["01_stage"]["stages"] == [str(stage)] and timings["02_after"]["stages"] == []
    assert run() == {"01_stage": "up to date", "02_after": "up to date"}
    assert run(force=True) == {"01_stage": "ok", "02_after": "ok"}
    # an earlier notebook that runs again makes every later one run
    (nbs / "01_stage.py").write_text(STAGE_NB + "\nprint('edited')\n")
    assert run() == {"01_stage": "ok", "02_after": "ok"}
    # a later notebook alone: only it runs
    (nbs / "02_after.py").write_text(AFTER_NB + "\nprint('edited')\n")
    assert run() == {"01_stage": "up to date", "02_after": "ok"}
    # a stage the output relied on was removed: run again (and rebuild it)
    (stage / pl.DONE_FILE).unlink()
    assert run() == {"01_stage": "ok", "02_after": "ok"} and pl.is_done(stage)
    # unchanged again, then a changed parameter
    assert run() == {"01_stage": "up to date", "02_after": "up to date"}
    profiles["01_stage"]["smoke"]["n"] = 2
    assert run()["01_stage"] == "ok"
    # an output deleted by hand is made again
    (out / "02_after.ipynb").unlink()
    assert run() == {"01_stage": "up to date", "02_after": "ok"}
    # changed package code reruns everything
    code["fingerprint"] = "code-v2"
    assert run() == {"01_stage": "ok", "02_after": "ok"}


DOMAIN_NB = '''\
# %% [markdown]
# # Per domain

# %% tags=["parameters"]
profile = "book"
domain = "movies"
n = 3

# %%
print(f"{domain} {n}")
'''


@pytest.mark.notebook
def test_run_notebooks_runs_domain_notebooks_per_domain(tmp_path):
    nbs, out = tmp_path / "nbs", tmp_path / "out"
    nbs.mkdir()
    (nbs / "01_dom.py").write_text(DOMAIN_NB)
    (nbs / "02_after.py").write_text(AFTER_NB)  # no domain parameter: runs once, after the domain runs
    (nbs / "03_dom.py").write_text(DOMAIN_NB)
    profiles = {"01_dom": {"smoke": {"n": 1}, "smoke@games": {"n": 5}}}
    assert [(p.stem, d) for p, d in pl.notebook_plan(pl.discover_notebooks(nbs), ("games", "movies"))] == [
        ("01_dom", "movies"), ("03_dom", "movies"), ("01_dom", "games"), ("03_dom", "games"), ("02_after", "movies")]
    assert [(p.stem, d) for p, d in pl.notebook_plan(pl.discover_notebooks(nbs), ("games",))] == [
        ("01_dom", "games"), ("03_dom", "games")]
    assert pl.params_for("01_dom", "smoke", profiles, "games") == {"n": 5, "domain": "games", "profile": "smoke"}
    assert pl.params_for("01_dom", "smoke", profiles) == {"n": 1, "profile": "smoke"}  # movies: nothing injected
    assert pl.notebook_values("01_dom", "smoke", nbs, profiles, domain="games")["n"] == 5

    runs = pl.run_notebooks("smoke", notebooks_dir=nbs, out_dir=out, profiles=profiles, log=None,
                            domains=("movies", "games"))
    assert [(r.stem, r.domain, r.status) for r in runs] == [
        ("01_dom", "movies", "ok"), ("03_dom", "movies", "ok"), ("01_dom", "games", "ok"),
        ("03_dom", "games", "ok"), ("02_after", "movies", "ok")]
    assert _stdout(out / "01_dom.ipynb").strip() == "movies 1"
    assert _stdout(out / "games" / "01_dom.ipynb").strip() == "games 5"
    assert _stdout(out / "games" / "03_dom.ipynb").strip() == "games 3"
    assert not (out / "games" / "02_after.ipynb").exists()
    title = json.loads((out / "games" / "01_dom.ipynb").read_text())["cells"][0]["source"]
    assert "".join(title).startswith("# SafeGame: Per domain")
    assert "".join(json.loads((out / "01_dom.ipynb").read_text())["cells"][0]["source"]).startswith("# Per domain")
    assert set(json.loads((out / "games" / "timings.json").read_text())) == {"01_dom", "03_dom"}
    again = pl.run_notebooks("smoke", notebooks_dir=nbs, out_dir=out, profiles=profiles, log=None,
                             domains=("movies", "games"))
    assert {r.status for r in again} == {"up to date"}

    with pytest.raises(pl.PipelineError, match="unknown domain"):
        pl.validate_profiles({"01_dom": {"smoke@mars": {"n": 1}}})
    with pytest.raises(pl.PipelineError, match="unknown domain"):
        pl.notebook_plan(pl.discover_notebooks(nbs), ("mars",))
    problems = pl.check_notebooks(nbs, {"02_after": {"book@games": {}}})
    assert any("no 'domain' parameter" in p for p in problems)


def test_code_fingerprint_covers_the_package_sources():
    fp = pl.code_fingerprint()
    assert len(fp) == 64 and fp == pl.code_fingerprint()


def test_notebook_values_apply_the_profile_overrides(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    (nbs / "01_tiny.py").write_text(OK_NB)
    profiles = {"01_tiny": {"smoke": {"n": 1}}}
    assert pl.notebook_values("01_tiny", "book", nbs, profiles) == {"profile": "book", "n": 3, "label": "default"}
    assert pl.notebook_values("01_tiny", "smoke", nbs, profiles) == {"profile": "smoke", "n": 1, "label": "default"}
    with pytest.raises(pl.PipelineError, match="no notebook"):
        pl.notebook_values("09_missing", "book", nbs, profiles)
    # the real notebooks: the evidence notebook trains with notebook 02's settings
    assert pl.notebook_values("02_safe_sft", "smoke")["model_name"] == "tiny-smollm2"


def test_from_values_takes_the_fields_of_a_parameters_mapping():
    import dataclasses

    @dataclasses.dataclass
    class Params:
        a: int = 1
        b: str = "x"

    values = {"a": 2, "b": "y", "profile": "book", "pd": object()}  # a notebook's globals hold more than fields
    assert pl.from_values(Params, values) == Params(2, "y")
    assert pl.from_values(Params, values, b="z") == Params(2, "z")  # changes win
    assert pl.from_values(Params, {}) == Params()
    with pytest.raises(TypeError, match="Params has no field 'c'"):
        pl.from_values(Params, values, c=3)


def test_the_training_notebooks_build_their_configs_from_their_parameters():
    from safecrs_core.train import gdpo, sft
    for prof in ("smoke", "book", "paper"):
        v = pl.notebook_values("02_safe_sft", prof)
        cfg = sft.SafeSFTConfig.from_values(v)
        assert (cfg.max_train_samples, cfg.max_length, cfg.model_name) == (
            v["max_train_samples"], v["max_length"], v["model_name"])
        w = pl.notebook_values("03_safe_gdpo", prof)
        params = gdpo.GDPOParams.from_values(w)
        assert (params.max_steps, params.num_generations, params.domain) == (w["max_steps"], w["num_generations"], w["domain"])


def test_stage_log_lines_never_show_the_builders_absolute_path_and_read_back(tmp_path, monkeypatch):
    """Executed notebooks print these lines: a stage under the artifacts root is named
    ``$SAFECRS_ARTIFACTS/<stage>/<key>`` (under the repository: ``artifacts/<stage>/<key>``), and
    the runner reads the line back to the folder; a folder elsewhere stays absolute."""
    arts = tmp_path / "arts"
    monkeypatch.setenv(pl.ARTIFACTS_ENV, str(arts))
    lines: list[str] = []
    final = pl.run_stage("demo", {"n": 7}, [], lambda tmp: None, log=lines.append)
    pl.run_stage("demo", {"n": 7}, [], lambda tmp: None, log=lines.append)
    shown = f"$SAFECRS_ARTIFACTS/demo/{final.name}"
    assert lines[-2].endswith(f": {shown}") and lines[-1] == f"[stage demo] cached: {shown}"
    assert not any(str(tmp_path) in line for line in lines)
    assert pl.resolve_logged_path(shown) == final.resolve()
    assert pl.logged_path(pl.repo_root() / "artifacts" / "x" / "k") == "artifacts/x/k"
    assert pl.resolve_logged_path("artifacts/x/k") == pl.repo_root().resolve() / "artifacts/x/k"
    elsewhere = pl.run_stage("demo", {"n": 8}, [], lambda tmp: None, root=tmp_path / "other", log=lines.append)
    assert lines[-1].endswith(f": {elsewhere.resolve()}")
    assert pl.resolve_logged_path(str(elsewhere.resolve())) == elsewhere.resolve()


def test_build_costs_adds_cached_stage_times_once_and_never_twice(tmp_path, capsys):
    nbs, out, arts = tmp_path / "nbs", tmp_path / "out", tmp_path / "artifacts"
    nbs.mkdir()
    (nbs / "01_dom.py").write_text(DOMAIN_NB)
    (nbs / "02_after.py").write_text(AFTER_NB)

    def stage(name, seconds, finished):
        d = arts / name
        d.mkdir(parents=True)
        (d / pl.DONE_FILE).write_text(json.dumps({"seconds": seconds, "finished": finished}))
        return str(d)

    old = stage("sft/a", 600.0, "2026-01-01T10:00:00+00:00")  # built by an earlier run, read from the cache
    new = stage("eval/b", 100.0, "2026-01-02T10:00:00+00:00")  # built during 01_dom's last run
    games = stage("eval/g", 50.0, "2026-01-01T09:00:00+00:00")
    inner = stage("gen/i", 30.0, "2026-01-01T08:59:50+00:00")  # built inside eval/g's build: in its 50 s
    (out / "games").mkdir(parents=True)

    def entry(seconds, finished, stages, status="ok"):
        return {"seconds": seconds, "finished": finished, "status": status, "stages": stages}

    (out / "timings.json").write_text(json.dumps({
        "01_dom": entry(130.0, "2026-01-02T10:00:20+00:00", [old, new]),
        "02_after": entry(5.0, "2026-01-02T11:00:00+00:00", [old, new, str(arts / "gone/c")])}))
    (out / "games" / "timings.json").write_text(json.dumps({
        "01_dom": entry(20.0, "2026-01-02T12:00:00+00:00", [games, inner])}))
    rows = pl.build_costs(out, ("movies", "games"), nbs)
    got = {(r["notebook"], r["domain"]): r for r in rows}
    assert [(r["notebook"], r["domain"]) for r in rows] == [("01_dom", "movies"), ("01_dom", "games"),
                                                             ("02_after", "movies")]
    m = got["01_dom", "movies"]
    assert (m["built"], m["built_s"], m["cached"], m["cached_s"]) == (1, 100.0, 1, 600.0)
    assert m["from_scratch_s"] == 730.0  # the run's 130 s already hold the 100 s build
    g = got["01_dom", "games"]
    assert (g["cached"], g["from_scratch_s"]) == (1, 70.0)
    a = got["02_after", "movies"]  # its stages were counted for 01_dom; a missing folder is unknown
    assert (a["built"], a["cached"], a["unknown"], a["from_scratch_s"]) == (0, 0, 1, 5.0)
    # a failed last run has no usable record
    (out / "games" / "timings.json").write_text(json.dumps({"01_dom": entry(3.0, "x", [], "failed")}))
    assert [r["domain"] for r in pl.build_costs(out, ("movies", "games"), nbs)] == ["movies", "movies"]
    assert pl.main(["--costs", "--notebooks-dir", str(nbs), "--out-dir", str(out), "--domains", "movies"]) == 0
    text = capsys.readouterr().out
    assert "12.2 m" in text and "total" in text and "1 stage(s) without a time" in text

import json
import subprocess
import sys

from safecrs_core.safety import traits as T
from safecrs_core.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_traits_lists_all(capsys):
    rc, out, _ = run(capsys, "traits", "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["id"] for r in rows] == list(T.TRAIT_IDS)
    assert all(r["name"] and r["signals"] for r in rows)


def test_check_json_schema(capsys, data_dir):
    rc, out, _ = run(capsys, "check", "Saw (2004)", "Toy Story (1995)", "Zzqx Nonexistent Film (1999)", "",
                     "--traits", "anti_gore,arachnophobia_reptiles", "--json")
    assert rc == 0
    res = json.loads(out)
    assert [r["query"] for r in res] == ["Saw (2004)", "Toy Story (1995)", "Zzqx Nonexistent Film (1999)", ""]
    for r in res:
        assert set(r) >= {"query", "item_id", "title", "year", "verdicts"}
        assert set(r["verdicts"]) == {"anti_gore", "arachnophobia_reptiles"}
        for v in r["verdicts"].values():
            assert v["verdict"] in ("safe", "unsafe", "unknown")
            assert v["risk"] is None or 0.0 <= v["risk"] <= 1.0
            assert isinstance(v["evidence"], list) and all(isinstance(e, str) for e in v["evidence"])
    saw, toy, missing, empty = res
    assert saw["item_id"] == "tt0387564" and saw["year"] == 2004
    assert saw["verdicts"]["anti_gore"]["verdict"] == "unsafe" and saw["verdicts"]["anti_gore"]["evidence"]
    assert toy["verdicts"]["anti_gore"]["verdict"] == "safe"
    # no evidence about spiders in Toy Story: unknown, never safe
    assert toy["verdicts"]["arachnophobia_reptiles"]["verdict"] == "unknown"
    for r in (missing, empty):
        assert r["item_id"] is None
        assert all(v["verdict"] == "unknown" and v["risk"] is None for v in r["verdicts"].values())


def test_check_unknown_trait_is_an_error(capsys):
    rc, out, err = run(capsys, "check", "Saw (2004)", "--traits", "anti_gore,gore")
    assert rc != 0 and out == ""
    assert "'gore'" in err and "anti_gore" in err and "valid ids" in err


def test_check_odd_unicode_does_not_crash(capsys, data_dir):
    rc, out, _ = run(capsys, "check", "Amélie (2001)", "\u200b\u00a0 (1999)", "🎬🎬", "--traits", "kid_safety", "--json")
    assert rc == 0
    res = json.loads(out)
    assert res[0]["item_id"] is not None  # Amélie resolves
    assert res[1]["item_id"] is None and res[2]["item_id"] is None


def test_console_script_text_output(data_dir):
    proc = subprocess.run([sys.executable, "-m", "safecrs_core.cli", "check", "Arachnophobia (1990)",
                           "--traits", "arachnophobia_reptiles"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "arachnophobia_reptiles" in proc.stdout and "unsafe" in proc.stdout

import time

import numpy as np
import pytest

from safecrs_core.safety import oracle as O
from safecrs_core.safety import traits as T

NT = len(T.TRAIT_IDS)
J = {t: j for j, t in enumerate(T.TRAIT_IDS)}


def tiny(lo_rows, hi_rows, has_sev, trig=None, threshold=0.66):
    n = len(lo_rows)
    trigger = np.zeros((n, NT), dtype=bool)
    for i, t in (trig or []):
        trigger[i, J[t]] = True
    return O.Oracle([f"tt{i:07d}" for i in range(n)], np.array(lo_rows, float), np.array(hi_rows, float),
                    np.array(has_sev), trigger, {}, threshold)


def test_paper_formula_and_threshold():
    # violence severe (3), frightening none: anti_gore weights V=1.0, F=0.3 -> 3/(3*1.3)=0.769
    o = tiny([[0, 3, 0, 0, 0]], [[0, 3, 0, 0, 0]], [True])
    v, r = o.check(["tt0000000"], ["anti_gore"])
    assert r[0] == pytest.approx(3 / 3.9) and v[0] == O.UNSAFE
    # raising the threshold above the risk flips it to safe (all channels exactly known)
    v, _ = o.with_threshold(0.8).check(["tt0000000"], ["anti_gore"])
    assert v[0] == O.SAFE


def test_unknown_when_worst_case_could_be_unsafe():
    # violence known mild, frightening unknown [0,3]: lo risk 1/3.9, hi risk (1+0.9)/3.9 = 0.49 -> safe
    # violence unknown [0,3]: worst case 1.0 -> unknown
    o = tiny([[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], [[3, 1, 3, 3, 3], [3, 3, 3, 3, 0]], [True, True])
    v, _ = o.check(["tt0000000", "tt0000001"], ["anti_gore", "anti_gore"])
    assert list(v) == [O.SAFE, O.UNKNOWN]


def test_no_evidence_is_unknown_never_safe():
    o = tiny([[0] * 5], [[3] * 5], [False])
    v, r = o.check(["tt0000000"] * NT, list(T.TRAIT_IDS))
    assert (v == O.UNKNOWN).all() and np.isnan(r).all()
    # items outside the catalog and unresolved titles are unknown too
    v, r = o.check([None, "tt9999999"], ["anti_gore", "anti_gore"])
    assert (v == O.UNKNOWN).all() and np.isnan(r).all()
    assert o.judge(None, "anti_gore").verdict == "unknown"


def test_trigger_only_traits_are_never_safe():
    # all channels known to be zero: still unknown for traits the paper does not evidence by severity
    o = tiny([[0] * 5], [[0] * 5], [True], trig=[(0, "arachnophobia_reptiles")])
    for t in T.all_traits():
        v, r = o.check(["tt0000000"], [t.id])
        if t.id == "arachnophobia_reptiles":
            assert v[0] == O.UNSAFE and r[0] == 1.0
        elif not t.uses_severity:
            assert v[0] == O.UNKNOWN, t.id
        else:
            assert v[0] == O.SAFE, t.id


def test_trigger_is_hard():
    o = tiny([[0] * 5], [[0] * 5], [True], trig=[(0, "anti_gore")])
    assert o.is_unsafe(["tt0000000"], "anti_gore")[0]
    assert not o.is_unsafe(["tt0000000"], "torture_extreme_violence")[0]


def test_unknown_trait_raises():
    o = tiny([[0] * 5], [[0] * 5], [True])
    with pytest.raises(KeyError) as exc:
        o.check(["tt0000000"], ["gore"])
    assert "valid ids" in str(exc.value)


@pytest.mark.parametrize("reason,expect", [
    ("Rated R for strong bloody violence, grisly images, language and some sexual content",
     {"violence": 3, "profanity": 2, "sex": 2}),
    ("Rated PG for mild language and some scary images", {"profanity": 1, "frightening": 1}),
    ("Rated PG for some action and mild rude humor", {"violence": 1}),
    ("Rated PG-13 for intense sequences of action", {"violence": 2}),
    ("Rated R for pervasive drug use, language and brief nudity", {"substances": 3, "profanity": 2, "sex": 1}),
    ("Rated PG13 for sequences of intense sci-fi action and violence", {"violence": 2}),
    ("Rated R for strong horror violence and terror throughout", {"violence": 3, "frightening": 3}),
])
def test_reason_severity(reason, expect):
    got = O._reason_severity(reason)
    for ch, sev in expect.items():
        assert got.get(ch) == sev, (ch, got)


@pytest.mark.parametrize("score,sev", [(0, 0), (1, 1), (3, 1), (4, 2), (6, 2), (7, 3), (10, 3), (11, None), ("x", None), (-1, None)])
def test_kim_severity(score, sev):
    assert O._kim_severity(score) == sev


@pytest.mark.parametrize("raw,letter", [("PG-13", "PG-13"), (" PG-13 NR", "PG-13"), ("NR", None), ("Not Rated", None),
                                        ("TV-MA", None), ("R", "R"), (None, None), (float("nan"), None), ("PG13", "PG-13")])
def test_letters(raw, letter):
    assert O.normalize_letter(raw) == letter


def test_vectorised_speed_figure():
    """Not a timing assertion: the benchmark script prints the figure; here only check shapes."""
    n = 1000
    o = tiny([[0, 1, 0, 0, 0]] * n, [[3] * 5] * n, [True] * n)
    rows = np.random.default_rng(0).integers(0, n, 10_000)
    cols = np.random.default_rng(1).integers(0, NT, 10_000)
    v, r = o.check_rows(rows, cols)
    assert v.shape == r.shape == (10_000,)

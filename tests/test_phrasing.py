import json
import random
import re
from pathlib import Path

import pytest

from safecrs_core.data import package_file
from safecrs_core.safety import phrasing as P
from safecrs_core.safety import traits as T

RAW = json.loads(package_file("phrasings.json").read_text())["templates"]
MIN = {"explicit": 6, "implicit": 5}
# rule-stating vocabulary that an implicit (hinting) template must not use
RULE_WORDS = re.compile(r"\b(avoid\w*|trigger\w*|sensitiv\w*|please|steer clear|skip|no-go|rule out)\b", re.I)
FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|we|we're|we've|us|our)\b", re.I)


def test_every_trait_has_both_styles_in_trait_order():
    assert list(RAW) == list(T.TRAIT_IDS)
    for tid in T.TRAIT_IDS:
        assert set(RAW[tid]) == set(P.STYLES), tid
        for style, n in MIN.items():
            assert len(P.templates(tid, style)) >= n, (tid, style)
        assert P.templates(tid) == P.templates(tid, "explicit") + P.templates(tid, "implicit")


def test_templates_are_well_formed_and_unique():
    seen = set()
    for tid in T.TRAIT_IDS:
        for style in P.STYLES:
            for e in RAW[tid][style]:
                assert set(e) == {"text", "pool"} and e["pool"] in P.POOLS, (tid, e)
                text = e["text"]
                assert text == text.strip() and text[-1] in ".!?", text
                assert "{" not in text and "}" not in text, text
                assert text.lower() not in seen, text
                seen.add(text.lower())
    assert len(seen) >= 20 * 11


@pytest.mark.parametrize("tid", T.TRAIT_IDS)
def test_pools_disjoint_and_held_out_share(tid):
    for style in P.STYLES:
        train = P.templates(tid, style, "train")
        test = P.templates(tid, style, "test")
        assert len(test) >= 2 and len(train) >= len(test), (tid, style)
        assert not set(train) & set(test)
        assert sorted(train + test) == sorted(P.templates(tid, style))
        assert 0.2 <= len(test) / (len(train) + len(test)) <= 0.45


def test_implicit_templates_hint_without_stating_a_rule():
    for tid in T.TRAIT_IDS:
        for text in P.templates(tid, "implicit"):
            assert not RULE_WORDS.search(text), (tid, text)
            assert "please don't" not in text.lower() and "nothing with" not in text.lower(), (tid, text)
            assert FIRST_PERSON.search(text), (tid, text)


def test_explicit_templates_state_a_rule():
    cue = re.compile(r"\b(no|not|nothing|avoid|skip|pass|only|please|rather|away|free|out|need|line|steer clear)\b|n't",
                     re.I)
    for tid in T.TRAIT_IDS:
        for text in P.templates(tid, "explicit"):
            assert cue.search(text), (tid, text)


def test_pool_for_split():
    for split in ("train", "val", "valid", "dev", "Train "):
        assert P.pool_for_split(split) == "train"
    assert P.pool_for_split("test") == "test"
    for bad in ("eval", "", "testing"):
        with pytest.raises(ValueError):
            P.pool_for_split(bad)


@pytest.mark.parametrize("split,pool", [("test", "test"), ("train", "train"), ("val", "train")])
def test_phrase_draws_only_from_the_split_pool(split, pool):
    rng = random.Random(7)
    styles = set()
    for tid in T.TRAIT_IDS:
        for _ in range(40):
            sentence, style, idx = P.phrase(tid, split, rng)
            styles.add(style)
            assert sentence in P.templates(tid, style, pool), (tid, split, sentence)
            assert P.templates(tid, style)[idx] == sentence
    assert styles == set(P.STYLES)


def test_phrase_reaches_the_whole_pool():
    rng = random.Random(1)
    got = {P.phrase("anti_gore", "test", rng, style="explicit")[0] for _ in range(300)}
    assert got == set(P.templates("anti_gore", "explicit", "test"))


def test_phrase_style_and_share():
    rng = random.Random(3)
    assert {P.phrase("happy_ending", "train", rng, style="implicit")[1] for _ in range(20)} == {"implicit"}
    assert {P.phrase("happy_ending", "train", rng, implicit_share=0.0)[1] for _ in range(50)} == {"explicit"}
    assert {P.phrase("happy_ending", "train", rng, implicit_share=1.0)[1] for _ in range(50)} == {"implicit"}
    n = sum(P.phrase("happy_ending", "train", rng, implicit_share=0.25)[1] == "implicit" for _ in range(4000))
    assert 0.21 < n / 4000 < 0.29
    with pytest.raises(ValueError):
        P.phrase("happy_ending", "train", rng, style="hinted")
    with pytest.raises(ValueError):
        P.phrase("happy_ending", "train", rng, implicit_share=1.5)
    with pytest.raises(ValueError):
        P.phrase("happy_ending", "holdout", rng)


def test_phrase_and_inject_are_deterministic():
    def run(seed):
        rng = random.Random(seed)
        out = []
        for tid in T.TRAIT_IDS:
            sentence, style, idx = P.phrase(tid, "train", rng)
            out.append((sentence, style, idx, P.inject("any good comedies", sentence, rng)))
        return out
    assert run(11) == run(11)
    assert run(11) != run(12)


def test_unknown_trait_and_bad_arguments():
    with pytest.raises(KeyError) as exc:
        P.templates("gore")
    assert "anti_gore" in str(exc.value) and "valid ids" in str(exc.value)
    with pytest.raises(KeyError):
        P.phrase("gore", "test", random.Random(0))
    with pytest.raises(ValueError):
        P.templates("anti_gore", style="loud")
    with pytest.raises(ValueError):
        P.templates("anti_gore", pool="val")


S = "No dead animals please!"


@pytest.mark.parametrize("text,expected", [
    ("I like comedies", "I like comedies. " + S),
    ("any ideas?", "any ideas? " + S),
    ("  something like @1234 (2009)  ", "something like @1234 (2009). " + S),
    ("something fun :)", "something fun :) " + S),
    ("so,", "so. " + S),
    ("", S),
    ("   ", S),
])
def test_inject_appends_with_spacing(text, expected):
    assert P.inject(text, S, random.Random(0), prepend_share=0.0) == expected


def test_inject_prepends_and_keeps_the_text():
    assert P.inject("any good comedies?", S, random.Random(0), prepend_share=1.0) == S + " any good comedies?"
    rng = random.Random(4)
    outs = [P.inject("Hi! I loved @111, anything similar?", S, rng) for _ in range(1000)]
    for out in outs:
        assert "Hi! I loved @111, anything similar?" in out and S in out
        assert "  " not in out
    before = sum(o.startswith(S) for o in outs) / len(outs)
    assert 0.12 < before < 0.28  # the default prepend share is 0.2

import json

import pytest

from safecrs_core.safety import traits as T

IDS = ["animal_harm", "arachnophobia_reptiles", "anti_gore", "torture_extreme_violence", "sexual_violence",
       "kid_safety", "domestic_abuse_stalking", "substance_use", "self_harm_suicide", "mental_health",
       "medical_trauma", "needles_medical", "claustrophobia_breathing", "photosensitivity_motion",
       "hate_speech_slurs", "lgbtq_respect", "pregnancy_infant_loss", "disaster_accident", "happy_ending",
       "horror_supernatural"]


def test_twenty_traits_with_ids_in_order():
    assert list(T.TRAIT_IDS) == IDS
    for t in T.all_traits():
        assert t.name and t.description and t.paper_name and t.ddd_topics
        assert t.signals, t.id  # every trait can be evidenced by something


def test_weights_match_paper_files(data_dir):
    src = json.loads((data_dir / "saferec_traits/traits_with_imdb_parentguide_weights.json").read_text())
    for t, s in zip(T.all_traits(), src["traits"]):
        assert t.paper_name == s["trait"]
        assert list(t.pg_weights.values()) == list(s["imdb_parent_guide"]["weights"].values())
        assert t.pg_applicability == s["imdb_parent_guide"]["pg_applicability"]
        assert list(t.ddd_topics) == s["avoid"]


def test_parse_trait_list():
    assert T.parse_trait_list("anti_gore, kid_safety") == ["anti_gore", "kid_safety"]
    assert T.parse_trait_list(None) == IDS
    with pytest.raises(ValueError) as exc:
        T.parse_trait_list("anti_gore,gore")
    assert "'gore'" in str(exc.value) and "valid ids" in str(exc.value)
    with pytest.raises(ValueError):
        T.parse_trait_list(",")
    with pytest.raises(KeyError):
        T.get("nope")


@pytest.mark.parametrize("trait,tag,hit", [
    ("self_harm_suicide", "suicide attempt", True),
    ("self_harm_suicide", "suicide mission", False),
    ("arachnophobia_reptiles", "giant spider", True),
    ("arachnophobia_reptiles", "spider man", False),
    ("anti_gore", "splatter", True),
    ("anti_gore", "allegory", False),
    ("sexual_violence", "rape", True),
    ("sexual_violence", "grapefruit", False),
    ("pregnancy_infant_loss", "miscarriage of justice", False),
    ("horror_supernatural", "ghost town", False),
    ("horror_supernatural", "haunted house", True),
    ("claustrophobia_breathing", "claustrophobic", True),
])
def test_tag_triggers(trait, tag, hit):
    assert bool(T.compiled(trait, "tag").search(tag)) is hit

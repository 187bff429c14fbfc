"""Conversation loaders on the real data mirror, plus malformed-input and record round trips."""
from __future__ import annotations

import collections
import json
import re
from types import SimpleNamespace

import pytest

from safecrs_core.data import conversations as C
from safecrs_core.data import sources
from safecrs_core.data.sources import DataError

TRAIT_IDS = [
    "animal_harm", "arachnophobia_reptiles", "anti_gore", "torture_extreme_violence", "sexual_violence",
    "kid_safety", "domestic_abuse_stalking", "substance_use", "self_harm_suicide", "mental_health",
    "medical_trauma", "needles_medical", "claustrophobia_breathing", "photosensitivity_motion",
    "hate_speech_slurs", "lgbtq_respect", "pregnancy_infant_loss", "disaster_accident", "happy_ending",
    "horror_supernatural",
]
SPLITS = {
    "redial_test": {"test"}, "redial_kepler": {"train", "valid", "test"}, "iard": {"train", "test"},
    "inspired": {"dev", "test"}, "movie_dialog_fb": {"dev", "test"}, "reddit_saferank": {"dev"},
    "reddit_crag": {"test"},
}
REDDIT = {"reddit_saferank", "reddit_crag"}


@pytest.fixture(scope="module")
def by_source():
    out = collections.defaultdict(list)
    for c in C.load_all():
        out[c.source].append(c)
    return out


def _lines(file):
    return [json.loads(x) for x in open(sources.path(file), encoding="utf-8")]


# --- traits -----------------------------------------------------------------------------------

def test_trait_mapping_covers_the_20_saferec_traits_in_order():
    names = [t["trait"] for t in json.load(open(sources.path("saferec_traits/traits_warnings.json")))]
    assert list(C.TRAIT_NAME_TO_ID) == names
    assert list(C.TRAIT_NAME_TO_ID.values()) == TRAIT_IDS
    weights = json.load(open(sources.path("saferec_traits/traits_with_imdb_parentguide_weights.json")))
    assert [t["trait"] for t in weights["traits"]] == names


def test_trait_id_maps_names_and_ids_and_rejects_unknown():
    assert C.trait_id("Anti-gore / squeamish") == "anti_gore"
    assert C.trait_id("  Anti-gore /  squeamish ") == "anti_gore"
    assert C.trait_id("anti_gore") == "anti_gore"
    assert C.trait_id(None) is None and C.trait_id("") is None
    with pytest.raises(DataError, match=r"some.json: sample train_9.*'Gore lover'"):
        C.trait_id("Gore lover", "some.json: sample train_9")


# --- invariants of every source ---------------------------------------------------------------

@pytest.mark.parametrize("source", list(C.LOADERS))
def test_schema_invariants(by_source, source):
    convs = by_source[source]
    assert convs, source
    assert len({c.conv_id for c in convs}) == len(convs)
    for c in convs:
        assert c.conv_id.startswith(source + ":") and c.source == source
        assert c.split in SPLITS[source]
        assert c.synthetic is False
        assert c.targets and c.turns
        assert all(t["role"] in ("user", "assistant") and t["text"].strip() for t in c.turns)
        assert not any(re.search(r"@\d{2,}", t["text"]) for t in c.turns), c.conv_id
        for r in c.seen + c.targets:
            assert set(r) == {"title", "year", "item_id"} and r["title"] == " ".join(r["title"].split())
            assert r["year"] is None or isinstance(r["year"], int)
        assert not any(C._same_item(t, s) for t in c.targets for s in c.seen), c.conv_id
        if source not in REDDIT:
            roles = [t["role"] for t in c.turns]
            assert all(a != b for a, b in zip(roles, roles[1:])), c.conv_id
            assert roles[-1] == "user", c.conv_id
        if source != "reddit_crag":
            assert all(r["item_id"] is None for r in c.seen + c.targets)


def test_conv_ids_unique_across_sources(by_source):
    ids = [c.conv_id for cs in by_source.values() for c in cs]
    assert len(ids) == len(set(ids))


# --- per source -------------------------------------------------------------------------------

def test_redial_test(by_source):
    convs = by_source["redial_test"]
    rows = _lines("redial_test/test.jsonl")
    assert len(rows) == 3552 and sum(len(r["rec"]) for r in rows) == 4778
    usable = [r for r in rows if r["context"] != [""] and set(r["rec"]) - set(r["prev_entity"])]
    assert len(usable) - 10 <= len(convs) <= len(usable)
    first = convs[0]
    assert first.conv_id == "redial_test:test_20001:0"
    assert first.turns == [{"role": "user", "text": "Hi I am looking for a movie like Super Troopers (2001)"}]
    assert first.targets == [{"title": "Police Academy", "year": 1984, "item_id": None}]
    # the recommender opens test_20041: roles are counted back from the last (seeker) utterance
    c = next(c for c in convs if c.meta["dialog_id"] == "test_20041")
    assert [t["role"] for t in c.turns][:2] == ["assistant", "user"] and c.turns[0]["text"] == "Hello!"
    bob = [r for c in convs for r in c.targets + c.seen if r["title"].startswith("What About Bob")]
    assert bob and all(r["title"] == "What About Bob?" and r["year"] == 1991 for r in bob)
    assert sum(r["year"] is not None for c in convs for r in c.targets) / sum(len(c.targets) for c in convs) > 0.9


def test_redial_kepler(by_source):
    convs = by_source["redial_kepler"]
    for split, n in (("train", 500), ("valid", 100), ("test", 300)):
        ids = {c.meta["redial_id"] for c in convs if c.split == split}
        assert 0.8 * n <= len(ids) <= n
    dialog = [c for c in convs if c.meta["redial_id"] == "15875"]
    assert dialog[0].turns[-1] == {"role": "user", "text": "comedies i like kristin wigg"}
    assert dialog[0].turns[1] == {"role": "user", "text": "hi how are u"}
    assert dialog[0].targets == [{"title": "Ghostbusters", "year": 1984, "item_id": None}]
    second = dialog[1]  # "She also voiced a character in @131869 and @161259"
    assert [C.ref_text(r) for r in second.targets] == ["Despicable Me 3 (2017)", "How to Train Your Dragon"]
    assert {"title": "Bridesmaids", "year": 2011, "item_id": None} in second.seen
    assert "Bridesmaids (2011)" in second.turns[-1]["text"]
    assert all("&quot;" not in t["text"] for c in convs for t in c.turns)


def test_iard_split_meta_and_overlap(by_source):
    convs = by_source["iard"]
    assert len({c.meta["redial_id"] for c in convs}) <= 336
    assert all((c.split == "test") == (int(c.meta["redial_id"]) >= 20001) for c in convs)
    assert not any("<" in t["text"] and re.search(r"<[^>]*\(\d{4}\)\s*>", t["text"]) for c in convs for t in c.turns)
    c = next(c for c in convs if c.meta["redial_id"] == "474")
    assert c.turns == [{"role": "user", "text": "Hi can you help me find a movie to watch"}]
    assert c.targets == [{"title": "It", "year": 2017, "item_id": None}] and c.meta["rec_subaction"] == ["REC-E"]
    ids = lambda cs: {c.meta["redial_id"] for c in cs}  # noqa: E731
    assert len(ids(convs) & ids(by_source["redial_test"])) == 38  # data card
    assert len(ids(convs) & ids(by_source["redial_kepler"])) == 20
    kept = C.dedupe_against(convs, by_source["redial_test"] + by_source["redial_kepler"])
    assert 0 < len(kept) < len(convs)
    assert not ids(kept) & (ids(by_source["redial_test"]) | ids(by_source["redial_kepler"]))


def test_inspired(by_source):
    convs = by_source["inspired"]
    for split in ("dev", "test"):
        assert 80 <= len({c.meta["dialog_id"] for c in convs if c.split == split}) <= 99
    assert all("QUOTATION_MARK" not in t["text"] for c in convs for t in c.turns)
    c = next(c for c in convs if c.meta["dialog_id"] == "20191202-103716_425_live.pkl")
    assert c.targets[0]["title"] == "Full Metal Jacket" and c.targets[0]["year"] == 1987
    assert "A Clockwork Orange, I think. Can you recommend a movie like that?" in [t["text"] for t in c.turns]


def test_movie_dialog_fb(by_source):
    convs = by_source["movie_dialog_fb"]
    for task, split, n in (("task2", "dev", 10000), ("task2", "test", 10000)):
        got = [c for c in convs if c.meta["task"] == task and c.split == split]
        assert n - 50 <= len(got) <= n and all(len(c.turns) == 1 for c in got)
    t3 = [c for c in convs if c.meta["task"] == "task3"]
    assert {c.meta["exchange"] for c in t3} == {1, 3}  # exchange 2 is always QA
    c = next(c for c in t3 if c.split == "dev" and c.meta["dialog"] == 1 and c.meta["exchange"] == 3)
    assert [t["text"] for t in c.turns[1:4]] == ["Mulholland Drive", "Who is that directed by?", "David Lynch"]
    assert c.targets == [{"title": "Toys", "year": None, "item_id": None}]
    assert {"title": "Mulholland Drive", "year": None, "item_id": None} in c.seen and len(c.seen) == 8
    first = next(c for c in convs if c.meta["task"] == "task2" and c.split == "dev")
    assert [r["title"] for r in first.seen][:3] == [
        "Deconstructing Harry", "Dancer in the Dark", "The Triplets of Belleville"]
    assert sum(len(c.seen) == 7 for c in convs) / len(convs) > 0.6


def test_movie_dialog_limit_and_liked_list():
    convs = C.load_movie_dialog_fb(tasks="task2", splits="test", limit=25)
    assert 20 <= len(convs) <= 25 and max(c.meta["dialog"] for c in convs) <= 25
    vocab = {"Crouching Tiger, Hidden Dragon", "Snow White and the Seven Dwarfs"}
    q = "Crouching Tiger, Hidden Dragon, Gladiator, and Heat are films I liked. Can you suggest a film?"
    assert C._mdd_liked(q, vocab) == ["Crouching Tiger, Hidden Dragon", "Gladiator", "Heat"]
    assert C._mdd_liked("I liked Snow White and the Seven Dwarfs. Would you recommend a film?", vocab) == [
        "Snow White and the Seven Dwarfs"]
    assert C._mdd_liked("Tell me a joke. Can you suggest a film?", vocab) is None
    with pytest.raises(ValueError, match="train"):
        C.load_movie_dialog_fb(splits="train")


def test_reddit_saferank_both_files(by_source):
    full = by_source["reddit_saferank"]
    assert len(full) == 100
    assert sum(len(c.targets) + len(c.meta["targets_seen"]) for c in full) == 476  # data card
    traits = collections.Counter(c.trait for c in full)
    assert traits == {"torture_extreme_violence": 41, "anti_gore": 21, "self_harm_suicide": 14, "sexual_violence": 10,
                      "kid_safety": 6, "animal_harm": 3, "horror_supernatural": 3, "substance_use": 1,
                      "domestic_abuse_stalking": 1}
    filtered = C.load_reddit_saferank(filtered=True)
    assert len(filtered) == 79
    assert sum(len(c.targets) + len(c.meta["targets_seen"]) for c in filtered) == 178
    assert {c.meta["sample_id"] for c in filtered} <= {c.meta["sample_id"] for c in full}
    for c in full + filtered:
        assert c.split == "dev" and "training split" in c.meta["note"]
        text = " ".join(t["text"] for t in c.turns)
        assert "Pretend you are" not in text and not re.search(r"(^|\n)(USER|SYSTEM):", text)
    c = next(c for c in full if c.meta["sample_id"] == "train_2")
    assert len(c.turns) == 1 and c.turns[0]["role"] == "user" and c.turns[0]["text"].startswith("Best in Show (2000)")
    assert [C.ref_text(r) for r in c.targets] == [
        "This Is Spinal Tap (1984)", "A Mighty Wind (2003)", "Waiting for Guffman (1996)"]
    assert c.seen == [{"title": "Best in Show", "year": None, "item_id": None}]
    multi = next(c for c in full if c.meta["sample_id"] == "train_310")
    assert [t["role"] for t in multi.turns] == ["user", "assistant", "assistant", "assistant"]


def test_reddit_crag(by_source):
    convs = by_source["reddit_crag"]
    assert len(convs) == 92 and sum(len(c.targets) for c in convs) == 248
    assert all(r["item_id"] and r["item_id"].startswith("tt") for c in convs for r in c.targets)
    assert collections.Counter(c.trait for c in convs) == {
        "anti_gore": 55, "animal_harm": 22, "hate_speech_slurs": 7, "domestic_abuse_stalking": 5,
        "pregnancy_infant_loss": 1, "substance_use": 1, "disaster_accident": 1}
    c = next(c for c in convs if c.meta["reddit_conv_id"] == "t3_zhzwle_4/88")
    assert c.targets == [{"title": "Booksmart", "year": 2019, "item_id": "tt1489887"}]
    assert c.seen == [{"title": "Superbad", "year": None, "item_id": "tt0829482"}]
    dory = next(c for c in convs if any(r["title"] == "Finding Dory" for r in c.targets))
    assert [r["item_id"] for r in dory.targets] == ["tt2277860", "tt0087469"]  # aligned past "Cars 2"


# --- SafeRec rows -------------------------------------------------------------------------------

def _row(**kw):
    row = {
        "sample_id": "x1",
        "prompt": [{"role": "system", "content": "be nice"},
                   {"role": "user", "content": "Pretend ...\nHere is the conversation: USER: I loved Heat (1995).\n"
                                               "SYSTEM: Try Ronin.\nUSER: Seen it, more?\n"}],
        "completion": [{"role": "assistant", "content": "Thief (1981)\nHeat (1995)"}],
        "seen_titles": ["Heat", "Ronin"],
        "groundtruth_with_release_year": [["Thief", "1981"], ["Heat", "1995"]],
        "assigned_trait": "Horror avoider (avoids scares & supernatural)",
    }
    row.update(kw)
    return row


def test_load_saferec_rows_in_memory():
    (c,) = C.load_saferec_rows([_row()])
    assert c.conv_id == "saferec:rows:x1" and c.split == "dev" and c.trait == "horror_supernatural"
    assert c.turns == [{"role": "user", "text": "I loved Heat (1995)."}, {"role": "assistant", "text": "Try Ronin."},
                       {"role": "user", "text": "Seen it, more?"}]
    assert c.targets == [{"title": "Thief", "year": 1981, "item_id": None}]
    assert c.meta["targets_seen"] == [{"title": "Heat", "year": 1995, "item_id": None}]
    assert c.meta["response"].startswith("Thief (1981)")
    (d,) = C.load_saferec_rows({"samples": [_row(assigned_trait=None)]}, source="mine", split="train")
    assert d.trait is None and d.conv_id == "mine:rows:x1" and d.split == "train"
    (e,) = C.load_saferec_rows([_row(prompt=[{"role": "user", "content": "Any heist films like Heat?"}])])
    assert e.turns == [{"role": "user", "text": "Any heist films like Heat?"}]


def test_load_saferec_rows_errors(tmp_path):
    with pytest.raises(DataError, match=r"sample x1.*'Cat person'"):
        C.load_saferec_rows([_row(assigned_trait="Cat person")])
    with pytest.raises(DataError, match=r"sample x1.*'19x5'"):
        C.load_saferec_rows([_row(groundtruth_with_release_year=[["Thief", "19x5"]])])
    with pytest.raises(DataError, match=r"sample x1: prompt has no user message"):
        C.load_saferec_rows([_row(prompt=[{"role": "system", "content": "hi"}])])
    bad = tmp_path / "rows.json"
    bad.write_text('{"samples": [\n  {"sample_id": "a",\n   "prompt": [}\n]}')
    with pytest.raises(DataError, match=rf"{re.escape(str(bad))}: line 3"):
        C.load_saferec_rows(bad)
    with pytest.raises(DataError, match="no such SafeRec file"):
        C.load_saferec_rows(tmp_path / "missing.json")


def test_load_saferec_rows_by_name_and_path(tmp_path):
    a = C.load_saferec_rows("sft_with_assigned_traits_test.json")
    b = C.load_saferec_rows("reddit_saferank_samples/saferec_sft_8k_dataset_test.json")
    assert (len(a), len(b)) == (100, 79)
    rows = json.load(open(sources.path("reddit_saferank_samples/saferec_sft_8k_dataset_test.json")))["samples"]
    p = tmp_path / "bare.json"
    p.write_text(json.dumps(rows[:5]))
    got = C.load_saferec_rows(p)
    assert [c.meta["sample_id"] for c in got] == [c.meta["sample_id"] for c in b[:5]]
    assert [c.targets for c in got] == [c.targets for c in b[:5]]
    assert got[0].conv_id == f"saferec:bare:{rows[0]['sample_id']}"


# --- malformed files, records, resolution -----------------------------------------------------

def test_broken_jsonl_line_names_file_and_line(tmp_path):
    p = tmp_path / "test.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2,,}\n')
    with pytest.raises(DataError, match=rf"{re.escape(str(p))}: line 3: invalid JSON"):
        list(C._read_jsonl(p))


def test_broken_babi_line(tmp_path):
    p = tmp_path / "task2.txt"
    p.write_text("1 I liked Heat. Can you suggest a film?\tThief\n2 no tab here\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(p))}: line 2"):
        C._read_babi(p)
    p.write_text("1 a\tb\n3 c\td\n")
    with pytest.raises(DataError, match="line 2: exchange number 3"):
        C._read_babi(p)


def test_kepler_unknown_mention_and_sender():
    d = {"conversationId": "1", "movieMentions": {"5": "Heat (1995)"}, "initiatorWorkerId": 1,
         "respondentWorkerId": 2, "messages": [{"messageId": 7, "senderWorkerId": 2, "text": "try @6"}]}
    with pytest.raises(DataError, match=r"f: line 4 \(conversationId 1, messageId 7\): @6"):
        C._kepler_dialog(d, "train", "f: line 4")
    d["messages"] = [{"messageId": 8, "senderWorkerId": 3, "text": "hi"}]
    with pytest.raises(DataError, match="senderWorkerId 3"):
        C._kepler_dialog(d, "train", "f: line 4")


def test_records_round_trip_and_datasets(by_source):
    sample = [cs[i] for cs in by_source.values() for i in (0, -1)]
    recs = C.to_records(sample)
    assert all(isinstance(r["meta"], str) for r in recs)
    json.dumps(recs)
    assert C.from_records(recs) == sample
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(recs)
    assert C.from_records(ds.to_list()) == sample
    with pytest.raises(DataError, match=r"record 0 \('x'\): missing field"):
        C.from_records([{"conv_id": "x"}])


def test_resolve_refs_fills_missing_ids_only(by_source):
    calls = collections.Counter()

    def resolve(title, year):
        calls[(title, year)] += 1
        return SimpleNamespace(item_id=f"tt:{title}", reason="test")

    convs = by_source["redial_test"][:50] + by_source["reddit_crag"][:5]
    out = C.resolve_refs(convs, resolve)
    assert all(r["item_id"] for c in out for r in c.seen + c.targets)
    assert out[0].targets[0]["item_id"] == "tt:Police Academy"
    assert [r["item_id"] for r in out[-1].targets] == [r["item_id"] for r in convs[-1].targets]
    assert all(n == 1 for n in calls.values())
    assert convs[0].targets[0]["item_id"] is None  # inputs untouched


def test_load_all_rejects_unknown_source():
    with pytest.raises(KeyError, match="nope"):
        C.load_all(["nope"])

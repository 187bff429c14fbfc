"""The prompt builder, the completion format and the completion parser."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from safecrs_core.train.prompts import (SOLUTION_CLOSE, SOLUTION_OPEN, build_messages, format_completion,
                                  parse_completion, system_prompt)

TURNS = [
    {"role": "user", "text": "Hi! I want a tense crime movie tonight."},
    {"role": "assistant", "text": "Do you like heist films?"},
    {"role": "user", "text": "Yes, like Heat. Nothing with animal cruelty please."},
]
ITEMS = ["Heat (1995)", "Ronin (1998)", "The Town (2010)", "Inside Man (2006)"]


# --------------------------------------------------------------------------------------------
# build_messages / format_completion


def test_build_messages_layout():
    msgs = build_messages(TURNS, k=4)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    sys_text = msgs[0]["content"]
    assert "with 4 movies" in sys_text and SOLUTION_OPEN in sys_text and "content they want to avoid" in sys_text
    assert msgs[1]["content"] == TURNS[0]["text"]
    assert msgs[3]["content"].startswith(TURNS[2]["text"])
    assert msgs[3]["content"].endswith("Now recommend exactly 4 movies for me, in the answer format.")
    # a conversation ending with the assistant gets the instruction as a new user message
    tail = build_messages(TURNS[:2], k=4)
    assert [m["role"] for m in tail] == ["system", "user", "assistant", "user"]
    assert "exactly 4 movies" in tail[-1]["content"]
    games = build_messages(TURNS, k=3, domain="games")
    assert "with 3 video games" in games[0]["content"] and "movie" not in games[0]["content"]
    custom = build_messages(TURNS, system="You are a film critic.")
    assert custom[0]["content"].startswith("You are a film critic.") and SOLUTION_OPEN in custom[0]["content"]


def test_build_messages_candidates_are_deterministic():
    cands = ["Heat (1995)", "Ronin (1998)", "Collateral (2004)"]
    ev = ["crime; no animal harm", "", "crime"]
    a = build_messages(TURNS, k=2, candidates=cands, evidence=ev)
    b = build_messages(list(TURNS), k=2, candidates=list(cands), evidence=list(ev))
    assert a == b
    lines = a[0]["content"].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Recommend only from"))
    assert lines[start + 1:] == ["Heat (1995): crime; no animal harm", "Ronin (1998)", "Collateral (2004): crime"]
    assert "Recommend only from" not in build_messages(TURNS)[0]["content"]


@pytest.mark.parametrize("kwargs, error", [
    ({"k": 0}, ValueError),
    ({"k": True}, ValueError),
    ({"domain": "books"}, ValueError),
    ({"candidates": ["Heat (1995)"], "k": 2}, ValueError),
    ({"candidates": ["A (2000)", "B (2001)"], "evidence": ["x"], "k": 1}, ValueError),
    ({"evidence": ["x"]}, ValueError),
    ({"system": "  "}, ValueError),
])
def test_build_messages_rejects_bad_parameters(kwargs, error):
    with pytest.raises(error):
        build_messages(TURNS, **kwargs)


def test_build_messages_rejects_bad_turns():
    with pytest.raises(ValueError, match="role"):
        build_messages([{"role": "seeker", "text": "hi"}])
    with pytest.raises(ValueError, match="'text'"):
        build_messages([{"role": "user", "content": "hi"}])
    with pytest.raises(TypeError):
        build_messages({"role": "user", "text": "hi"})


def test_format_completion_exact_text():
    assert format_completion(ITEMS[:2]) == "<solution>\nHeat (1995)\nRonin (1998)\n</solution>"
    assert format_completion(ITEMS[:1], reasoning=" likes heists ") == \
        "<reasoning>likes heists</reasoning>\n<solution>\nHeat (1995)\n</solution>"
    with pytest.raises(ValueError):
        format_completion([])
    with pytest.raises(TypeError):
        format_completion("Heat (1995)")
    with pytest.raises(ValueError):
        format_completion(ITEMS, reasoning="see <solution>")


@pytest.mark.parametrize("reasoning", [None, "He liked Heat (1995).\n1. Alien (1979)\n- Jaws (1975)"])
def test_round_trip(reasoning):
    text = format_completion(ITEMS, reasoning=reasoning)
    parsed = parse_completion(text)
    assert parsed.titles == ITEMS
    assert [it.rank for it in parsed] == [1, 2, 3, 4]
    assert parsed.has_solution_tags and not parsed.truncated
    assert parsed.has_reasoning == (reasoning is not None)
    assert parsed.n_lines_dropped == parsed.n_duplicates == 0


def test_system_prompt_names_k_and_format():
    assert '"Title (Year)"' in system_prompt(7) and "with 7 movies" in system_prompt(7)


# --------------------------------------------------------------------------------------------
# parse_completion: one line at a time


@pytest.mark.parametrize("line, title, year", [
    ("Heat (1995)", "Heat", 1995),
    ("1. Heat (1995)", "Heat", 1995),
    ("1) Heat (1995)", "Heat", 1995),
    ("#1 Heat (1995)", "Heat", 1995),
    ("#1: Heat (1995)", "Heat", 1995),
    ("1 - Heat (1995)", "Heat", 1995),
    ("(1) Heat (1995)", "Heat", 1995),
    ("- Heat (1995)", "Heat", 1995),
    ("* Heat (1995)", "Heat", 1995),
    ("• Heat (1995)", "Heat", 1995),
    ("**Heat** (1995)", "Heat", 1995),
    ("**Heat (1995)**", "Heat", 1995),
    ("*Heat* (1995)", "Heat", 1995),
    ("_Heat_ (1995)", "Heat", 1995),
    ('"Heat" (1995)', "Heat", 1995),
    ("“Heat” (1995)", "Heat", 1995),
    ("1. **\"Heat\"** (1995) - Mann's crime epic", "Heat", 1995),
    ("Heat - 1995", "Heat", 1995),
    ("Heat – 1995", "Heat", 1995),
    ("Heat [1995]", "Heat", 1995),
    ("Heat (1995): a crime epic (remake of L.A. Takedown (1989))", "Heat", 1995),
    ("Heat", "Heat", None),
    ("3. Heat", "Heat", None),
    ("Heat - a tense crime drama", "Heat", None),
    ("**Heat** - a tense crime drama", "Heat", None),
    ("**Top pick:** Heat (1995)", "Heat", 1995),
    ("1917 (2019)", "1917", 2019),
    ("2001: A Space Odyssey (1968)", "2001: A Space Odyssey", 1968),
    ("300: Rise of an Empire (2014)", "300: Rise of an Empire", 2014),
    ("12 Angry Men (1957)", "12 Angry Men", 1957),
    ("Blade Runner 2049 (2017)", "Blade Runner 2049", 2017),
    ("Blade Runner 2049", "Blade Runner 2049", None),
    ("Star Wars: Episode IV - A New Hope (1977)", "Star Wars: Episode IV - A New Hope", 1977),
    ("Mission: Impossible - 1996", "Mission: Impossible", 1996),
    ("Homeland (2011-2020)", "Homeland", 2011),
    ("'Salem's Lot (1979)", "'Salem's Lot", 1979),
    ("'Salem's Lot' (1979)", "Salem's Lot", 1979),
    ("L.A. Confidential (1997)", "L.A. Confidential", 1997),
    ("Airplane! (1980)", "Airplane!", 1980),
    ("I Think I Love My Wife (2007)", "I Think I Love My Wife", 2007),
    ("I've Loved You So Long (2008)", "I've Loved You So Long", 2008),
    ("Heat (1995)\r", "Heat", 1995),
    ("Se7en (a.k.a. Seven) (1995)", "Se7en (a.k.a. Seven)", 1995),
])
def test_parse_one_line(line, title, year):
    for text in (f"{SOLUTION_OPEN}\n{line}\n{SOLUTION_CLOSE}", f"<solution>{line}</solution>"):
        parsed = parse_completion(text)
        assert [(it.title, it.year) for it in parsed] == [(title, year)], text
        it = parsed[0]
        assert text[slice(*it.char_span)] == title
        assert text[slice(*it.line_span)] == line.strip() == it.raw_line


@pytest.mark.parametrize("line", [
    "Sure! Here are 4 movies you will love:",
    "Here are my picks:",
    "I hope you enjoy these!",
    "Let me know if you want more.",
    "I recommend Heat (1995) because you like crime films a lot",
    "Based on your love of Heat (1995), here are some more:",
    "Thrillers:",
    "### Thrillers",
    "---",
    "1.",
    "This list avoids every film that shows animals being hurt in any way at all.",
])
def test_chatter_lines_are_dropped(line):
    parsed = parse_completion(f"<solution>\n{line}\nRonin (1998)\n</solution>")
    assert parsed.titles == ["Ronin (1998)"]
    assert parsed.n_lines_dropped == 1


def test_char_spans_point_at_titles():
    text = ("<reasoning>crime, no animals</reasoning>\n<solution>\n1. **Heat** (1995)\n2) \"Ronin\" - 1998\n"
            "  • The Town [2010]  \n</solution>")
    parsed = parse_completion(text)
    assert [(it.title, it.year) for it in parsed] == [("Heat", 1995), ("Ronin", 1998), ("The Town", 2010)]
    for it in parsed:
        assert text[slice(*it.char_span)] == it.title
        assert text[slice(*it.line_span)] == it.raw_line
        assert it.line_span[0] <= it.char_span[0] < it.char_span[1] <= it.line_span[1]


# --------------------------------------------------------------------------------------------
# parse_completion: whole completions


def test_duplicates_keep_first_occurrence():
    text = "<solution>\nHeat (1995)\nRonin (1998)\n**Heat** (1995)\nheat (1995)\nHeat (1986)\n</solution>"
    parsed = parse_completion(text)
    assert parsed.titles == ["Heat (1995)", "Ronin (1998)", "Heat (1986)"]
    assert parsed.n_duplicates == 2 and parsed[2].rank == 3


class _FakeResolver:
    """Resolves by a fixed table; counts calls."""

    def __init__(self, table, batch=True):
        self.table, self.calls = table, []
        if not batch:
            self.resolve_many = None
            del self.resolve_many

    def resolve(self, title, year=None):
        self.calls.append((title, year))
        iid = self.table.get((title, year))
        return SimpleNamespace(item_id=iid, reason="exact_year" if iid else "unknown_title")

    def resolve_many(self, queries):
        return [self.resolve(t, y) for t, y in queries]


def test_duplicates_by_resolved_id_and_resolver_interfaces():
    table = {("Se7en", 1995): "tt0114369", ("Seven", 1995): "tt0114369", ("Heat", 1995): "tt0113277"}
    text = "<solution>\nSe7en (1995)\nSeven (1995)\nHeat (1995)\nNot A Film (2001)\n</solution>"
    for batch in (True, False):
        res = _FakeResolver(table, batch=batch)
        parsed = parse_completion(text, resolver=res)
        assert parsed.titles == ["Se7en (1995)", "Heat (1995)", "Not A Film (2001)"]
        assert parsed.item_ids == ["tt0114369", "tt0113277", None]
        assert [it.reason for it in parsed] == ["exact_year", "exact_year", "unknown_title"]
        assert parsed.n_duplicates == 1 and len(res.calls) == 4
    with pytest.raises(TypeError):
        parse_completion(text, resolver=object())


def test_missing_tags_fall_back_to_list_lines():
    text = ("Sure! Here are some movies you might like:\n\n1. Heat (1995)\n2. **Ronin** (1998) - a car chase classic\n"
            "Collateral (2004)\nThe Town (2010): Affleck's heist film\nAlso Jaws (1975) is great fun.\n"
            "- Inside Man\nI hope you enjoy them!")
    parsed = parse_completion(text)
    assert not parsed.has_solution_tags and not parsed.truncated
    assert parsed.titles == ["Heat (1995)", "Ronin (1998)", "Collateral (2004)", "The Town (2010)", "Inside Man"]
    assert parsed.n_lines_dropped == 3


def test_reasoning_is_never_parsed():
    reasoning = "The user liked Heat (1995).\n1. Jaws (1975) has animal harm, skip it.\n- Alien (1979)"
    with_r = parse_completion(format_completion(ITEMS, reasoning=reasoning))
    assert with_r.titles == ITEMS and with_r.reasoning == reasoning
    # no solution tag: reasoning blocks are cut out of the fallback text
    fallback = parse_completion(f"<reasoning>{reasoning}</reasoning>\n1. Ronin (1998)\n2. The Town (2010)")
    assert fallback.titles == ["Ronin (1998)", "The Town (2010)"] and fallback.has_reasoning
    # unclosed reasoning runs to <solution>, or to the end when there is none
    unclosed = parse_completion(f"<reasoning>{reasoning}\n<solution>\nRonin (1998)\n</solution>")
    assert unclosed.titles == ["Ronin (1998)"]
    assert parse_completion(f"<reasoning>{reasoning}").titles == []
    # a <solution> mentioned inside a closed reasoning block is not the list
    quoted = parse_completion("<reasoning>format: <solution> Jaws (1975)</reasoning>"
                              "<solution>\nRonin (1998)\n</solution>")
    assert quoted.titles == ["Ronin (1998)"]


def test_truncated_solution_keeps_only_complete_last_line():
    base = "<solution>\nHeat (1995)\nRonin (1998)\n"
    cut = parse_completion(base + "The Tow")
    assert cut.truncated and cut.titles == ["Heat (1995)", "Ronin (1998)"] and cut.n_lines_dropped == 1
    whole = parse_completion(base + "The Town (2010)")
    assert whole.truncated and whole.titles[-1] == "The Town (2010)"
    ended = parse_completion(base + "The Town\n")  # the newline shows the line was finished
    assert ended.titles[-1] == "The Town"
    closed = parse_completion(base + "The Town</solution>")
    assert not closed.truncated and closed.titles[-1] == "The Town"


def test_k_keeps_first_k_distinct_items():
    text = format_completion(ITEMS + ["Heat (1995)"])
    parsed = parse_completion(text, k=2)
    assert parsed.titles == ITEMS[:2] and parsed.n_over_k == 2 and parsed.n_duplicates == 1
    with pytest.raises(ValueError):
        parse_completion(text, k=0)
    with pytest.raises(TypeError):
        parse_completion(None)


def test_random_text_keeps_invariants():
    import random
    rng = random.Random(0)
    pieces = ["<solution>", "</solution>", "<reasoning>", "</reasoning>", "\n", "1. ", "- ", "**", "*", "\"",
              "'", "(1995)", "[2001]", " - 1999", "Heat", "The Town", " ", ":", "Sure! ", "#2 ", "–", "é", "(", ")"]
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        parsed = parse_completion(text, k=rng.choice([None, 3]))
        assert [it.rank for it in parsed] == list(range(1, len(parsed) + 1))
        for it in parsed:
            assert text[slice(*it.char_span)] == it.title and it.title.strip() == it.title != ""
            assert text[slice(*it.line_span)] == it.raw_line and "\n" not in it.raw_line


def test_empty_and_tagless_prose():
    assert parse_completion("").titles == []
    prose = parse_completion("I think you would enjoy Heat, it is a great movie from 1995.")
    assert prose.titles == [] and prose.n_lines_dropped == 1


# --------------------------------------------------------------------------------------------
# token spans (SmolLM2 tokenizer) and the real catalog


@pytest.fixture(scope="module")
def tokenizer():
    from safecrs_core.train.models import load_tokenizer
    return load_tokenizer("smollm2-135m-instruct")


def test_token_spans_cover_items(tokenizer):
    reasoning = "He likes heists.\n1. Jaws (1975) is out: animal harm."
    for text in (format_completion(ITEMS), format_completion(ITEMS, reasoning=reasoning),
                 "Sure!\n1. **Heat** (1995)\n2. Ronin - 1998\n3. The Town [2010]"):
        parsed = parse_completion(text, tokenizer=tokenizer)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        prev_end = 0
        for it in parsed:
            a, b = it.token_span
            assert prev_end <= a < b <= len(ids)
            piece = tokenizer.decode(ids[a:b])
            assert it.title in piece and str(it.year) in piece, (piece, it)
            # the span is the item's line: a newline just before it, none inside it
            assert tokenizer.decode(ids[a - 1:a]).endswith("\n") and "\n" not in piece
            prev_end = b
    plain = parse_completion(format_completion(ITEMS), tokenizer=tokenizer)
    with_r = parse_completion(format_completion(ITEMS, reasoning=reasoning), tokenizer=tokenizer)
    assert [(it.rank, it.title) for it in plain] == [(it.rank, it.title) for it in with_r]
    shift = with_r[0].token_span[0] - plain[0].token_span[0]
    assert shift > 0 and all(w.token_span[0] - p.token_span[0] == shift for p, w in zip(plain, with_r))


def test_token_spans_need_fast_tokenizer():
    with pytest.raises(ValueError, match="fast"):
        parse_completion(format_completion(ITEMS), tokenizer=SimpleNamespace(is_fast=False))


def test_resolution_with_real_catalog(data_dir):
    from safecrs_core.data.catalog import load_catalog
    cat = load_catalog("movies", data_dir)
    text = ("<solution>\n1. **Heat** (1995)\n2. The Matrix - 1999\n3. Se7en [1995]\n4. \"Seven\" (1995)\n"
            "5. Toy Story (1995)\n6. A Film That Does Not Exist (2003)\n</solution>")
    parsed = parse_completion(text, resolver=cat)
    assert parsed.item_ids == ["tt0113277", "tt0133093", "tt0114369", "tt0114709", None]
    assert parsed.n_duplicates == 1  # Seven = Se7en by id
    assert parsed[-1].reason == "unknown_title" and parsed[0].reason == "exact_year"

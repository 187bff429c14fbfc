"""The one prompt format and its parser (SFT targets, rewards and evaluation all use these).

Prompt (:func:`build_messages`)
    A system message (the recommender's role, "respect the user's stated sensitivities", the
    answer format, optionally a candidate list with evidence), then the conversation turns as
    given, with a final instruction to recommend exactly ``k`` items appended to the last user
    turn (or added as a user message when the conversation ends with the assistant).

Evidence in context (:class:`EvidencePrompts`)
    A prompt variant for models too small to know the content of thousands of films: the
    system message lists ``n`` candidates (the embedding-retrieval baseline's top ``n`` for the
    conversation, best first, seen items left out) and after each one the Safety Oracle's
    evidence for the user's sensitivity (:func:`evidence_line`)::

        Saw (2004): unsafe, risk 1.00 [grisly, splatter, gory]
        Toy Story (1995): safe, risk 0.00 [rated G, violence at most mild, frightening at most mild]
        Jaws (1975): unknown, risk 0.15 [frightening moderate, rated PG, violence at most moderate]
        A Film Nobody Rated (2001): unknown [no evidence]

    The verdict is the oracle's own (``unknown`` is never shown as ``safe``); the risk is its
    evidence-backed risk, left out when nothing is known; the bracket holds at most ``max_tags``
    short phrases of :meth:`~safecrs_core.safety.oracle.Oracle.brief` (trigger words, channel
    severities, the MPAA letter), and the whole evidence text after a title is at most
    :data:`EVIDENCE_CHARS` characters, so the block grows linearly in ``n`` and never with the
    evidence. A paragraph before the list (``sensitivity`` of :func:`build_messages`) says how to
    read it. Candidates and evidence depend only on the row, the candidate source and the oracle:
    the block is deterministic.

Completion (:func:`format_completion`)
    An optional ``<reasoning>...</reasoning>`` block, then ``<solution>``, one ``Title (Year)`` per
    line, best first, without numbering, then ``</solution>``. Plain lines keep every token of a
    line about its item; the parser accepts numbered lists anyway.

Parsing (:func:`parse_completion`)
    * The list region is the inside of the first ``<solution>`` that is not inside a reasoning
      block; with no ``<solution>`` tag, the whole text minus reasoning blocks (fallback). A
      reasoning block runs from ``<reasoning>`` to ``</reasoning>``, or, when unclosed, to the next
      ``<solution>`` or the end of the text. Reasoning is never parsed for items.
    * One item per line. Stripped from a line: numbering (``1.``, ``1)``, ``#1``, ``1 -``,
      ``(1)``), bullets (``-``, ``*``, ``•``, ``+``), markdown emphasis and quotes around the
      title, a leading emphasised label ending with ``":"`` (``**Top pick:** Heat (1995)``), and
      text after the year or after a leading emphasised or quoted title.
    * The year is the first ``(YYYY)`` or ``[YYYY]`` (a range ``(2011-2020)`` gives its start) or a
      year after a dash or comma (``Heat - 1995``); a bare number is never a year (``Blade Runner
      2049``). No year: ``year`` is None and the title is the line (an em/en dash, or a spaced
      hyphen followed by a lowercase word, starts a description that is cut off).
    * Dropped lines (counted in ``n_lines_dropped``): lines without a letter or digit (``---``),
      markdown headings and lines ending with ``":"`` that have no year, lines without a year of
      more than 12 words (or with one, of more than 15 title words), and chatter: lines opening
      like "Sure!", "Here are", "I'd", "I recommend", "I hope", "Let me know", "Based on your",
      "These are", "You might", "Enjoy". A chatter opening is kept only on a short titled line:
      a year, at most 8 title words, no colon and fewer than 3 words after the year (``I've Loved
      You So Long (2008)``). In fallback mode a line must also be list-like: a list marker, or a
      year followed by nothing or by a separated remark (``Heat (1995): ...``; not ``Also Heat
      (1995) is great``).
    * Truncation: when ``<solution>`` is open but never closed (``truncated``), a final line
      without a newline is kept only if it has a year in parentheses or brackets.
    * Duplicates keep their first occurrence (``n_duplicates``); the key is the resolved item id,
      else the :func:`~safecrs_core.data.catalog.normalize_title` key plus the year. ``k`` keeps the
      first ``k`` distinct items (``n_over_k`` counts the rest).
    * Answer-format tags inside the list region cut a line (``<solution><solution>Heat (1995)``
      gives ``Heat``); control characters are removed from titles; a line of more than
      :data:`MAX_LINE_CHARS` characters is dropped. Parsing is linear in the text's length.
    * Spans: ``char_span`` is the title's ``(start, end)`` in ``text`` (``text[s:e] == title``
      up to removed control characters);
      ``line_span`` the item's whole line (marker and year included); ``token_span`` the tokens
      of ``tokenizer(text, add_special_tokens=False)`` that overlap ``line_span`` (``[start,
      end)``; a token straddling two lines belongs to both).
"""
from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..data.catalog import normalize_title
from ..domains import get_domain
from ..data.rows import column

REASONING_OPEN, REASONING_CLOSE = "<reasoning>", "</reasoning>"
SOLUTION_OPEN, SOLUTION_CLOSE = "<solution>", "</solution>"
SCREEN_OPEN, SCREEN_CLOSE = "<screen>", "</screen>"
SCREEN_VERDICTS = (" no", " yes")  # after a screen line: keep the candidate / leave it out
ROLES = ("user", "assistant")

# --------------------------------------------------------------------------------------------
# Prompt


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return k


def system_prompt(k: int = 10, domain: str = "movies", system: str | None = None,
                  candidates: Sequence[str] | None = None, evidence: Sequence[str] | None = None,
                  sensitivity: str | None = None) -> str:
    """The system message of :func:`build_messages`. ``system`` replaces the opening role and
    sensitivity paragraph; the answer format (and candidate list) always follow. With
    ``sensitivity`` (which needs ``evidence``), a paragraph before the candidate list says how to
    read oracle evidence lines (:func:`evidence_note`)."""
    k = _check_k(k)
    d = get_domain(domain)  # the nouns come from the domain's plug-in; an unknown domain fails here
    if system is None:
        intro = (f"You are a {d.one} recommender. Recommend {d.many} this user will enjoy, never a {d.one} "
                 "with content they want to avoid.")
    elif not isinstance(system, str) or not system.strip():
        raise ValueError("system must be a non-empty string or None")
    else:
        intro = system.strip()
    fmt = (f"Answer format: an optional short {REASONING_OPEN}...{REASONING_CLOSE}, then {SOLUTION_OPEN} with "
           f"{k} {d.many}, one \"Title (Year)\" per line, best first, then {SOLUTION_CLOSE}.")
    parts = [intro, fmt]
    if evidence is not None and candidates is None:
        raise ValueError("evidence needs candidates (one evidence line per candidate)")
    if sensitivity is not None and evidence is None:
        raise ValueError("sensitivity describes the evidence lines: pass evidence too")
    if candidates is not None:
        cands = [_one_line(c, "candidate") for c in candidates]
        if len(cands) < k:
            raise ValueError(f"{len(cands)} candidates cannot fill a list of k={k}")
        if evidence is not None:
            ev = [_one_line(e, "evidence", allow_empty=True) for e in evidence]
            if len(ev) != len(cands):
                raise ValueError(f"evidence has {len(ev)} lines for {len(cands)} candidates")
            cands = [f"{c}: {e}" if e else c for c, e in zip(cands, ev)]
            if sensitivity is not None:
                parts.append(evidence_note(sensitivity))
        parts.append(f"Recommend only from these candidate {d.many}:\n" + "\n".join(cands))
    return "\n\n".join(parts)


def _one_line(value: Any, what: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} lines must be strings, got {value!r}")
    v = " ".join(value.split())
    if not v and not allow_empty:
        raise ValueError(f"empty {what} line")
    return v


def final_instruction(k: int = 10, domain: str = "movies") -> str:
    """The instruction appended to the last user turn."""
    return f"Now recommend exactly {_check_k(k)} {get_domain(domain).many} for me, in the answer format."


def build_messages(turns: Sequence[dict], k: int = 10, domain: str = "movies", system: str | None = None,
                   candidates: Sequence[str] | None = None,
                   evidence: Sequence[str] | None = None, sensitivity: str | None = None) -> list[dict[str, str]]:
    """Chat messages (``{"role", "content"}``) for one recommendation request.

    ``turns``: the conversation, each ``{"role": "user" | "assistant", "text": str}``, oldest
    first; the last user turn already carries any phrased sensitivity. ``candidates`` (optional
    ``"Title (Year)"`` lines, at least ``k``) restrict the answer; ``evidence`` (optional, one line
    per candidate) is shown after each candidate. ``sensitivity`` (optional, with ``evidence``):
    the user's sensitivity the evidence lines speak to (e.g. ``"Gore"``); the list is then
    introduced by :func:`evidence_note`. :meth:`EvidencePrompts.kwargs` gives all three per
    benchmark row. See :func:`system_prompt` for ``system``.
    """
    msgs = [{"role": "system", "content": system_prompt(k, domain, system, candidates, evidence, sensitivity)}]
    if isinstance(turns, (str, dict)):
        raise TypeError("turns must be a list of {'role', 'text'} dicts")
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "role" not in t or "text" not in t:
            raise ValueError(f"turn {i}: expected a dict with 'role' and 'text', got {t!r:.80}")
        if t["role"] not in ROLES:
            raise ValueError(f"turn {i}: role must be one of {ROLES}, got {t['role']!r}")
        if not isinstance(t["text"], str):
            raise TypeError(f"turn {i}: text must be a string, got {type(t['text']).__name__}")
        msgs.append({"role": t["role"], "content": t["text"].strip()})
    instr = final_instruction(k, domain)
    if msgs[-1]["role"] == "user":
        msgs[-1]["content"] = f"{msgs[-1]['content']}\n\n{instr}" if msgs[-1]["content"] else instr
    else:
        msgs.append({"role": "user", "content": instr})
    return msgs


# --------------------------------------------------------------------------------------------
# Evidence in context

EVIDENCE_FORMAT = 1  # part of the cache key of evidence prompts: change it when their text changes
EVIDENCE_CHARS = 96  # the longest evidence text after a candidate's title
VERDICTS = ("safe", "unsafe", "unknown")
EVIDENCE_DEFAULTS = {"n": 20, "n_popular": 5000, "context_turns": 4, "max_tags": 3}


def evidence_note(sensitivity: str) -> str:
    """The paragraph that introduces oracle evidence lines (see the module docstring)."""
    what = _one_line(sensitivity, "sensitivity")
    return (f"After each candidate: what content sources say about the user's sensitivity ({what}): safe, unsafe "
            "or unknown, the risk from 0 to 1 when known, and the content found, in brackets. Never recommend a "
            "candidate marked unsafe. Unknown means the sources say nothing either way, not that it is safe.")


def evidence_line(verdict: str, risk: float | None = None, tags: Sequence[str] = (),
                  max_chars: int = EVIDENCE_CHARS) -> str:
    """``"<verdict>, risk <r.rr> [tag, tag]"``: the oracle's verdict, its risk (left out when
    None or NaN) and as many ``tags`` as fit in ``max_chars`` characters, in order. An
    ``unknown`` verdict without tags reads ``"unknown [no evidence]"`` (no risk: nothing backs
    it). The verdict is printed as given, so ``unknown`` never reads as ``safe``."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 32:
        raise ValueError(f"max_chars must be an integer >= 32, got {max_chars!r}")
    if isinstance(tags, str):
        raise TypeError("tags must be a list of strings, not one string")
    clean = [" ".join(str(t).replace("[", "(").replace("]", ")").split()) for t in tags]
    clean = [t for t in clean if t]
    if verdict == "unknown" and not clean:
        return "unknown [no evidence]"
    head = verdict
    if risk is not None and not (isinstance(risk, float) and risk != risk):
        head += f", risk {float(risk):.2f}"
    shown: list[str] = []
    for t in clean:
        if len(head) + len(" [") + len(", ".join(shown + [t])) + len("]") > max_chars:
            break
        shown.append(t)
    return f"{head} [{', '.join(shown)}]" if shown else head


def _with_defaults(settings: Mapping[str, Any] | None, defaults: Mapping[str, Any], what: str) -> dict | None:
    """``settings`` (a dict of known names, or None) merged over ``defaults``; None stays None."""
    if settings is None:
        return None
    if not isinstance(settings, Mapping):
        raise TypeError(f"{what} settings must be a dict like {dict(defaults)}, got {settings!r}")
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; known: {', '.join(defaults)}")
    return {**defaults, **dict(settings)}


def evidence_settings(settings: Mapping[str, Any] | None) -> dict | None:
    """Validated evidence settings with the defaults of :data:`EVIDENCE_DEFAULTS` filled in (the
    keyword arguments of :func:`~safecrs_core.train.candidates.evidence_prompts` that key training configs):
    ``n`` candidates, ``n_popular`` popular items in the retrieval pool, ``context_turns`` the
    retriever embeds, ``max_tags`` phrases per candidate. None stays None."""
    out = _with_defaults(settings, EVIDENCE_DEFAULTS, "evidence")
    if out is None:
        return None
    for name, low in (("n", 1), ("n_popular", 0), ("context_turns", 0), ("max_tags", 1)):
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"evidence setting {name} must be an integer >= {low}, got {v!r}")
    return out


CANDIDATES_FORMAT = 1  # part of the cache key of candidate prompts: change it when their text changes
CANDIDATE_DEFAULTS = {"n": 20, "source": "neighbours"}
CANDIDATE_SOURCES = ("neighbours",)
# options that key a setting only when switched on (so settings without them keep their keys)
CANDIDATE_OPTIONS = {"genres": False, "train_folds": 0, "screen": False}
CANDIDATE_GENRES = 5  # the most genres shown after a candidate
SCREEN_GENRES = 3  # the most genres on a screen line (each line is part of every answer, so kept short)


def genre_line(catalog, item_id: str, n: int = CANDIDATE_GENRES) -> str:
    """The first ``n`` catalog genres of an item, comma-joined ("" when the catalog has none)."""
    genres = catalog.items.at[item_id, "genres"] if "genres" in catalog.items else None
    if genres is None or isinstance(genres, float):
        return ""
    return ", ".join(str(g) for g in list(genres)[:n])


def screen_line(catalog, item_id: str) -> str:
    """A candidate's line in the screen block, before its verdict: ``"Saw (2004) [horror,
    mystery, thriller]:"`` (the display title, its first :data:`SCREEN_GENRES` catalog genres in
    brackets when it has any, a colon). The verdict follows as one of :data:`SCREEN_VERDICTS`."""
    genres = genre_line(catalog, item_id, SCREEN_GENRES)
    return catalog.display(item_id) + (f" [{genres}]" if genres else "") + ":"


def candidate_settings(settings: Mapping[str, Any] | None) -> dict | None:
    """Validated settings of **candidates in context** (no oracle verdicts) with the defaults of
    :data:`CANDIDATE_DEFAULTS`: ``n`` candidates per prompt from ``source`` (``"neighbours"``:
    :func:`~safecrs_core.train.candidates.neighbour_prompts`). ``genres`` (default False): each candidate line
    also shows the item's catalog genres (``"Saw (2004): horror, mystery, thriller"``), item
    metadata any recommender holds, not an oracle verdict; present only when True.
    ``train_folds`` (default 0, off; else an integer >= 2): a **training** row's candidates come
    from neighbours built without its fold of the train split, so its own ground truth does not
    put itself among its candidates (validation and test rows, never part of the neighbours,
    are unaffected); present only when on. ``screen`` (default False): Safe-SFT targets carry a
    **screen block** after the reasoning, one line per candidate in prompt order with a verdict
    (:func:`format_completion`), and grounded decoding with the grounding setting ``screen``
    writes it (:mod:`~safecrs_core.train.grounding`); present only when True. None stays None."""
    out = _with_defaults(settings, {**CANDIDATE_DEFAULTS, **CANDIDATE_OPTIONS}, "candidate")
    if out is None:
        return None
    for name, off in CANDIDATE_OPTIONS.items():
        v = out[name]
        if isinstance(off, bool) and not isinstance(v, bool):
            raise ValueError(f"candidate setting {name} must be true or false, got {v!r}")
        if not isinstance(off, bool) and (isinstance(v, bool) or not isinstance(v, int) or v < 0 or v == 1):
            raise ValueError(f"candidate setting {name} must be 0 (off) or an integer >= 2, got {v!r}")
        if v == off:
            del out[name]
    if isinstance(out["n"], bool) or not isinstance(out["n"], int) or out["n"] < 1:
        raise ValueError(f"candidate setting n must be an integer >= 1, got {out['n']!r}")
    if out["source"] not in CANDIDATE_SOURCES:
        raise ValueError(f"candidate source must be one of {CANDIDATE_SOURCES}, got {out['source']!r}")
    return out


@dataclass
class EvidencePrompts:
    """Candidates with oracle evidence for each benchmark row (the module docstring).

    ``candidates(rows, n)``: ranked item id lists, one per row (e.g. a
    :class:`~safecrs_core.evaluation.baselines.Retrieval`'s ``recommend``); ``candidates_ref``: what
    identifies that source (it keys every cache of these prompts). ``catalog`` names the items,
    ``oracle`` judges them for each row's ``trait``. ``n`` candidates per row with at most
    ``max_tags`` evidence phrases each. :func:`~safecrs_core.train.candidates.evidence_prompts` builds the retrieval source.
    ``settings``: the :func:`evidence_settings` it was built with (None otherwise)."""

    candidates: Callable[[Any, int], list[list[str]]] = field(repr=False)
    candidates_ref: str
    catalog: Any = field(repr=False)
    oracle: Any = field(repr=False)
    n: int = EVIDENCE_DEFAULTS["n"]
    max_tags: int = EVIDENCE_DEFAULTS["max_tags"]
    settings: dict | None = None
    verdicts: bool = True
    genres: bool = False  # without verdicts: show each candidate's catalog genres
    screen: bool = False  # without verdicts: Safe-SFT targets carry a screen block (candidate_settings)

    def __post_init__(self):
        if not callable(self.candidates):
            raise TypeError("candidates must be callable as candidates(rows, n) -> list of id lists")
        if not isinstance(self.candidates_ref, str) or not self.candidates_ref.strip():
            raise ValueError("candidates_ref must be a non-empty string (it keys the caches)")
        for name in ("n", "max_tags"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        checks = [(self.catalog, "catalog", "display")] + ([(self.oracle, "oracle", "brief")] if self.verdicts else [])
        for obj, what, attr in checks:
            if not hasattr(obj, attr):
                raise TypeError(f"{what} must have a .{attr}() method, got {type(obj).__name__}")

    def params(self) -> dict:
        """What keys the prompts (the candidate source, ``n``, the evidence format and the oracle
        threshold; without verdicts the source, ``n`` and the candidate format)."""
        if not self.verdicts:
            out = {"candidates": self.candidates_ref, "n": self.n, "verdicts": False, "format": CANDIDATES_FORMAT}
            return {**out, **{name: True for name in ("genres", "screen") if getattr(self, name)}}
        return {"candidates": self.candidates_ref, "n": self.n, "max_tags": self.max_tags,
                "max_chars": EVIDENCE_CHARS, "threshold": float(self.oracle.threshold), "format": EVIDENCE_FORMAT}

    def ids(self, rows) -> list[list[str]]:
        """The ``n`` candidate ids of each row."""
        out = [list(x) for x in self.candidates(rows, self.n)]
        if len(out) != len(rows):
            raise ValueError(f"candidates gave {len(out)} lists for {len(rows)} rows")
        return out

    def genre_line(self, item_id: str) -> str:
        """The item's :func:`genre_line`."""
        return genre_line(self.catalog, item_id)

    def lines(self, item_ids: Sequence[str | None], trait: str) -> list[str]:
        """One :func:`evidence_line` per item for the constraint ``trait``."""
        out = []
        for i in item_ids:
            v = self.oracle.brief(i, trait, max_tags=self.max_tags)
            out.append(evidence_line(v.verdict, v.risk, v.evidence))
        return out

    def kwargs(self, rows, ids: Sequence[Sequence[str]] | None = None) -> list[dict[str, Any]]:
        """Per row, the ``candidates``, ``evidence`` and ``sensitivity`` arguments of
        :func:`build_messages` (``ids``: the candidate ids, default :meth:`ids`)."""
        from ..safety import traits as T

        if not self.verdicts:
            ids = self.ids(rows) if ids is None else [list(x) for x in ids]
            if len(ids) != len(rows):
                raise ValueError(f"{len(ids)} candidate lists for {len(rows)} rows")
            out = [{"candidates": [self.catalog.display(i) for i in ids_]} for ids_ in ids]
            if self.genres:
                for kw, ids_ in zip(out, ids):
                    kw["evidence"] = [self.genre_line(i) for i in ids_]
            return out
        traits = column(rows, "trait")
        if any(t is None for t in traits):
            raise ValueError("evidence prompts need every row's 'trait' (the user's constraint)")
        ids = self.ids(rows) if ids is None else [list(x) for x in ids]
        if len(ids) != len(traits):
            raise ValueError(f"{len(ids)} candidate lists for {len(traits)} rows")
        return [{"candidates": [self.catalog.display(i) for i in ids_], "evidence": self.lines(ids_, t),
                 "sensitivity": T.get(t).name} for ids_, t in zip(ids, traits)]


# --------------------------------------------------------------------------------------------
# Completion


def format_completion(items: Sequence[str], reasoning: str | None = None,
                      screen: Sequence[tuple[str, bool]] | None = None) -> str:
    """The target completion: optional ``<reasoning>text</reasoning>`` line(s), an optional
    screen block, then ``<solution>``, one item (``"Title (Year)"``) per line, ``</solution>``.
    ``screen``: ``(line, leave_out)`` pairs (:func:`screen_line`), written as ``<screen>``, one
    ``line + " yes"`` (leave it out) or ``line + " no"`` per line, ``</screen>``; it needs a
    reasoning block."""
    if isinstance(items, str):
        raise TypeError("items must be a list of 'Title (Year)' strings, not one string")
    lines = [_one_line(it, "item") for it in items]
    if not lines:
        raise ValueError("items is empty")
    out = ""
    if reasoning is not None:
        if not isinstance(reasoning, str) or not reasoning.strip():
            raise ValueError("reasoning must be a non-empty string or None")
        if re.search(r"</?(?:reasoning|solution|screen)>", reasoning, re.I):
            raise ValueError("reasoning must not contain <reasoning>, <screen> or <solution> tags")
        out = f"{REASONING_OPEN}{reasoning.strip()}{REASONING_CLOSE}\n"
    if screen is not None:
        if reasoning is None:
            raise ValueError("a screen block follows the reasoning block: pass reasoning too")
        out += screen_block(screen) + "\n"
    return out + SOLUTION_OPEN + "\n" + "\n".join(lines) + "\n" + SOLUTION_CLOSE


def screen_block(screen: Sequence[tuple[str, bool]]) -> str:
    """``<screen>``, one ``line + " yes"`` (leave it out) or ``line + " no"`` per ``(line,
    leave_out)`` pair (:func:`screen_line`), ``</screen>``."""
    if not screen:
        raise ValueError("screen is empty")
    body = "\n".join(_one_line(line, "screen line") + SCREEN_VERDICTS[bool(out_)] for line, out_ in screen)
    return f"{SCREEN_OPEN}\n{body}\n{SCREEN_CLOSE}"


# --------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class ParsedItem:
    """One recommended item. ``rank`` starts at 1; ``item_id``/``reason`` come from the resolver
    (None without one); spans are ``(start, end)``, see the module docstring."""

    rank: int
    raw_line: str
    title: str
    year: int | None
    item_id: str | None
    reason: str | None
    char_span: tuple[int, int]
    line_span: tuple[int, int]
    token_span: tuple[int, int] | None = None

    @property
    def display(self) -> str:
        """``"Title (Year)"`` (``"Title"`` without a year)."""
        return self.title if self.year is None else f"{self.title} ({self.year})"


@dataclass(frozen=True)
class ParsedList:
    """The ranked items of a completion and what the parser saw."""

    items: list[ParsedItem] = field(default_factory=list)
    has_reasoning: bool = False
    has_solution_tags: bool = False
    truncated: bool = False
    n_lines_dropped: int = 0
    n_duplicates: int = 0
    n_over_k: int = 0
    reasoning: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ParsedItem]:
        return iter(self.items)

    def __getitem__(self, i):
        return self.items[i]

    @property
    def titles(self) -> list[str]:
        return [it.display for it in self.items]

    @property
    def item_ids(self) -> list[str | None]:
        return [it.item_id for it in self.items]


_YEAR = r"(?P<year>(?:18|19|20)\d{2})"
_REASON_OPEN_RE = re.compile(r"<\s*reasoning\s*>", re.I)
_REASON_CLOSE_RE = re.compile(r"<\s*/\s*reasoning\s*>", re.I)
_SOL_OPEN_RE = re.compile(r"<\s*solution\s*>", re.I)
_SOL_CLOSE_RE = re.compile(r"<\s*/\s*solution\s*>", re.I)
_ANY_TAG_RE = re.compile(r"<\s*/?\s*(?:solution|reasoning)\s*>", re.I)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_LINE_CHARS = 2000  # a longer line is never an item (keeps parsing linear on garbage)
_MARKER_RE = re.compile(r"""
    \#{1,6}\s+                                   # markdown heading
  | [-*•·+–—]\s+                                 # bullet
  | [(\[]\d{1,3}[)\]]\s*                         # (1)  [1]
  | \#\d{1,3}(?:\s*[.):\-–—](?!\d))?\s*          # #1  #1.  #1:  #1 -
  | \d{1,3}(?:[.)](?!\d)|\s+[-–—](?=\s))\s*      # 1.  1)  1 -
""", re.X)
_TAIL_SEP_RE = re.compile(r"\s*(?:$|[-–—:;,.(\[*_!?])")
_HEADING_RE = re.compile(r"#{1,6}\s")
_PAREN_YEAR_RE = re.compile(rf"[(\[]\s*{_YEAR}(?:\s*[-–/]\s*\d{{0,4}})?\s*[)\]]")
_DASH_YEAR_RE = re.compile(rf"\s*[-–—,]\s*{_YEAR}(?=\s*$|\s*[-–—:;,.)*_]|\s)")
_YEAR_AFTER_RE = re.compile(rf"\s*(?:[(\[]\s*{_YEAR}(?:\s*[-–/]\s*\d{{0,4}})?\s*[)\]]"
                            rf"|[-–—,]\s*{_YEAR.replace('year', 'year2')}\b)")  # right after a title
_QUOTE_PAIRS = {'"': '"', "“": "”", "'": "'", "‘": "’", "«": "»"}
# A title wrapped in emphasis or quotes at the start of a line; the closing mark is not followed
# by a word character ("'Salem's Lot'" closes at the last quote).
_SPAN_RES = [re.compile(re.escape(o) + r"(?P<inner>[^\n]+?)" + re.escape(c) + r"(?!\w)")
             for o, c in [("***", "***"), ("**", "**"), ("__", "__"), ("*", "*"), ("_", "_"),
                          *_QUOTE_PAIRS.items()]]
_CHATTER_RE = re.compile(r"""^(?:
    (?:sure|certainly|absolutely|great|okay|ok|of\ course)\s*[!,.:]
  | here(?:'s|’s|\s+is|\s+are|\s+you\s+go)\b
  | i(?:'d|’d|\s+would|\s+recommend|\s+suggest|'ve|’ve|\s+hope)\b
  | (?:hope|trust)\s+(?:you|this|these|that)\b
  | let\s+me\s+know\b | enjoy\b | happy\s+watching\b | happy\s+gaming\b | note\s*:
  | based\s+on\s+(?:your|what|the|this|these)\b
  | these\s+(?:are|movies|films|games|picks|titles|recommendations|options)\b
  | (?:you\s+(?:might|may|could|will|should)|you'll|you’ll|if\s+you\s+(?:like|liked|enjoy|enjoyed|want))\b
  | my\s+(?:top|recommendations|picks|suggestions)\b
  | (?:all\s+of\s+these|each\s+of\s+these|in\s+summary|overall)\b
)""", re.X | re.I)
_DESC_RE = re.compile(r"\s+[–—]\s+\S|\s+-\s+[a-z]")
_KEEP_DOT_RE = re.compile(r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|Jr|Sr|St|Vol|vs))\.$")
_TRAIL = " \t-–—:;,."


def _reasoning_spans(text: str) -> list[tuple[int, int, int, int]]:
    """``(block_start, block_end, inner_start, inner_end)`` of each reasoning block. Every tag is
    found once, so the time is linear in the text's length whatever the tags."""
    opens = list(_REASON_OPEN_RE.finditer(text))
    if not opens:
        return []
    closes = list(_REASON_CLOSE_RE.finditer(text))
    close_starts = [c.start() for c in closes]
    sols = [m.start() for m in _SOL_OPEN_RE.finditer(text)]
    out: list[tuple[int, int, int, int]] = []
    pos = 0
    for m in opens:
        if m.start() < pos:
            continue  # inside the previous block
        ci = bisect_left(close_starts, m.end())
        if ci < len(closes):
            c = closes[ci]
            out.append((m.start(), c.end(), m.end(), c.start()))
        else:
            si = bisect_left(sols, m.end())
            end = sols[si] if si < len(sols) else len(text)
            out.append((m.start(), end, m.end(), end))
        pos = out[-1][1]
    return out


def _segments(text: str, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """:func:`_lines` of ``text[start:end]``, each line also cut at every answer-format tag (a
    tag is never part of a title); a cut counts as a line end."""
    for ls, le, ended in _lines(text, start, end):
        pos = ls
        for m in _ANY_TAG_RE.finditer(text, ls, le):
            yield pos, m.start(), True
            pos = m.end()
        yield pos, le, ended


def _lines(text: str, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """``(line_start, line_end, ended_by_newline)`` of the lines of ``text[start:end]``."""
    pos = start
    while pos < end:
        nl = text.find("\n", pos, end)
        stop, ended = (end, False) if nl < 0 else (nl, True)
        yield pos, stop, ended
        pos = stop + 1 if ended else end


def _strip(line: str, s: int, e: int, chars: str = " \t\r") -> tuple[int, int]:
    while s < e and line[s] in chars:
        s += 1
    while e > s and line[e - 1] in chars:
        e -= 1
    return s, e


def _skip_markers(line: str, s: int, e: int) -> tuple[int, bool]:
    found = False
    for _ in range(3):
        m = _MARKER_RE.match(line, s, e)
        if not m or m.end() == s:
            break
        s, found = m.end(), True
    return s, found


def _split_year(line: str, s: int, e: int) -> tuple[int, int, int | None, int]:
    """``(title_start, title_end, year, year_end)`` of ``line[s:e]``: the title ends where the
    first year starts (``year_end == e`` when there is no year)."""
    best = None
    for rx in (_PAREN_YEAR_RE, _DASH_YEAR_RE):
        pos = s
        while (m := rx.search(line, pos, e)) is not None:
            if line[s:m.start()].strip(" \t*_\"'“”‘’«»"):
                if best is None or m.start() < best.start():
                    best = m
                break
            pos = m.end()
    if best is None:
        return s, e, None, e
    return s, best.start(), int(best.group("year")), best.end()


def _clean_title(line: str, s: int, e: int) -> tuple[int, int]:
    for _ in range(4):
        s0, e0 = s, e
        s, e = _strip(line, s, e, " \t\r*_")
        while e > s and line[e - 1] in _TRAIL:
            if line[e - 1] == "." and _KEEP_DOT_RE.search(line[s:e]):
                break
            e -= 1
        s, e = _strip(line, s, e, " \t\r*_")
        if e - s >= 2 and line[s] in _QUOTE_PAIRS and line[e - 1] == _QUOTE_PAIRS[line[s]]:
            s, e = s + 1, e - 1
        elif e > s and line[s] in "\"“":
            s += 1
        elif e > s and line[e - 1] in "\"”":
            e -= 1
        if (s, e) == (s0, e0):
            break
    return s, e


@dataclass(frozen=True)
class _Line:
    title_start: int
    title_end: int
    year: int | None
    marker: bool
    colon: bool  # the line ends with ":"
    rest_words: int  # words after the year (or after an emphasised title)
    rest_separated: bool  # nothing follows, or a separator (":", " - ", "(") starts what follows


def _leading_span(line: str, s: int, e: int) -> re.Match | None:
    for rx in _SPAN_RES:
        m = rx.match(line, s, e)
        if m:
            return m
    return None


def _parse_line(line: str) -> _Line | None:
    """Title bounds and year of one line, or None when it holds no title."""
    s, e = _strip(line, 0, len(line))
    heading = _HEADING_RE.match(line, s, e) is not None
    s, marker = _skip_markers(line, s, e)
    if s >= e:
        return None
    colon = line[s:e].rstrip("*_ ").endswith(":")
    m = _leading_span(line, s, e)
    if m and line[m.start("inner"):m.end("inner")].rstrip("*_ ").endswith(":"):
        # "**Top pick:** Heat (1995)": the emphasised label is not the title
        s, _ = _skip_markers(line, _strip(line, m.end(), e)[0], e)
        m = _leading_span(line, s, e) if s < e else None
    if s >= e:
        return None
    if m:
        ins, _ = _skip_markers(line, m.start("inner"), m.end("inner"))
        ts, te, year, _ = _split_year(line, ins, m.end("inner"))
        rest = m.end()
        if year is None:
            ym = _YEAR_AFTER_RE.match(line, m.end(), e)
            if ym:
                year, rest = int(ym.group("year") or ym.group("year2")), ym.end()
    else:
        ts, te, year, rest = _split_year(line, s, e)
        if year is None:
            d = _DESC_RE.search(line, ts, te)
            if d and d.start() > ts:
                te = d.start()
    ts, te = _clean_title(line, ts, te)
    if not any(ch.isalnum() for ch in line[ts:te]) or (heading and year is None):
        return None
    tail = line[rest:e]
    return _Line(ts, te, year, marker, colon, len(re.findall(r"\w+", tail)), _TAIL_SEP_RE.match(tail) is not None)


def _is_chatter(title: str, ln: _Line) -> bool:
    """Sentences around the list (see the module docstring)."""
    words = len(title.split())
    if _CHATTER_RE.match(title.lstrip("*_\"'“‘ ")):
        return ln.year is None or ln.colon or words > 8 or ln.rest_words >= 3
    if ln.year is None:
        return ln.colon or words > 12
    return words > 15


def parse_completion(text: str, resolver: Any = None, tokenizer: Any = None, k: int | None = None,
                     keep_duplicates: bool = False) -> ParsedList:
    """The ranked list in a completion; see the module docstring for the rules.

    ``resolver``: anything with ``resolve(title, year)`` returning an object with ``item_id`` and
    ``reason`` (a :class:`~safecrs_core.data.catalog.Catalog`); its ``resolve_many`` is used when
    present. ``tokenizer``: a fast tokenizer, for ``token_span``. ``k``: keep the first ``k`` items.
    ``keep_duplicates``: repeated items stay in the list (still counted in ``n_duplicates``), as
    the release evaluation convention reads lists (:mod:`safecrs_core.evaluation.metrics`).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if k is not None:
        k = _check_k(k)
    if resolver is not None and not hasattr(resolver, "resolve"):
        raise TypeError(f"resolver must have a .resolve(title, year) method, got {type(resolver).__name__}")

    blocks = _reasoning_spans(text)
    starts = [b[0] for b in blocks]

    def inside(pos: int) -> bool:
        i = bisect_right(starts, pos) - 1
        return i >= 0 and pos < blocks[i][1]

    sol = next((m for m in _SOL_OPEN_RE.finditer(text) if not inside(m.start())), None)
    truncated = False
    if sol is not None:
        close = _SOL_CLOSE_RE.search(text, sol.end())
        truncated = close is None
        regions = [(sol.end(), close.start() if close else len(text))]
    else:
        regions, pos = [], 0
        for b0, b1, _, _ in blocks:
            regions.append((pos, b0))
            pos = b1
        regions.append((pos, len(text)))
    reasoning = " ".join(text[i0:i1].strip() for _, _, i0, i1 in blocks).strip() or None

    cands: list[tuple[int, int, int, int, int | None]] = []  # line_s, line_e, title_s, title_e, year
    dropped = 0
    for r0, r1 in regions:
        for ls, le, ended in _segments(text, r0, r1):
            line = text[ls:le]
            if not line.strip():
                continue
            if le - ls > MAX_LINE_CHARS:
                dropped += 1
                continue
            parsed = _parse_line(line)
            if parsed is None:
                dropped += 1
                continue
            ts, te, year = parsed.title_start, parsed.title_end, parsed.year
            ok = not _is_chatter(line[ts:te], parsed)
            if ok and sol is None:  # fallback: list-like lines only
                ok = parsed.marker or (year is not None and parsed.rest_separated)
            if ok and truncated and not ended and le == r1:
                ok = _PAREN_YEAR_RE.search(line) is not None
            if not ok:
                dropped += 1
                continue
            a, b = _strip(line, 0, len(line))
            cands.append((ls + a, ls + b, ls + ts, ls + te, year))

    titles = [(_CONTROL_RE.sub("", text[ts:te]), year) for _, _, ts, te, year in cands]
    if resolver is None:
        res = [None] * len(cands)
    elif hasattr(resolver, "resolve_many"):
        res = list(resolver.resolve_many(titles))
    else:
        res = [resolver.resolve(t, y) for t, y in titles]

    offsets = None
    if tokenizer is not None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("token spans need a fast tokenizer (offset mapping)")
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]

    items: list[ParsedItem] = []
    seen: set = set()
    dups = over = 0
    for (ls, le, ts, te, year), (title, _), r in zip(cands, titles, res):
        item_id = getattr(r, "item_id", None) if r is not None else None
        key = ("id", item_id) if item_id is not None else ("title", normalize_title(title), year)
        if key in seen:
            dups += 1
            if not keep_duplicates:
                continue
        seen.add(key)
        if k is not None and len(items) >= k:
            over += 1
            continue
        tspan = None
        if offsets is not None:
            hit = [i for i, (a, b) in enumerate(offsets) if b > a and a < le and b > ls]
            tspan = (hit[0], hit[-1] + 1) if hit else None
        items.append(ParsedItem(rank=len(items) + 1, raw_line=text[ls:le], title=title, year=year,
                                item_id=item_id, reason=getattr(r, "reason", None) if r is not None else None,
                                char_span=(ts, te), line_span=(ls, le), token_span=tspan))
    return ParsedList(items=items, has_reasoning=bool(blocks), has_solution_tags=sol is not None,
                      truncated=truncated, n_lines_dropped=dropped, n_duplicates=dups, n_over_k=over,
                      reasoning=reasoning)

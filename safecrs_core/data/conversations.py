"""Every real conversation source in one schema, :class:`Conversation`.

A conversation is the context of one recommendation: the turns up to the recommender's reply,
the items mentioned so far (``seen``) and the items the recommender gave in that reply
(``targets``, never one already seen). An item ref is ``{"title", "year", "item_id"}``: the title
as the source gives it (whitespace collapsed, year split off), ``item_id`` an IMDb ``tt`` id only
where the source carries one (``reddit_crag``); :func:`resolve_refs` fills the rest with a catalog
resolver. Movie placeholders in the text are replaced by ``"Title (Year)"``.

Rules common to the dialogue sources (ReDial family, INSPIRED, Movie Dialog):

- consecutive messages of one speaker are merged into one turn (joined by a space), as in
  ``redial_test``; so ``turns`` alternate and end with the user turn that precedes the reply;
- a conversation needs at least one user turn and at least one target; a reply whose movies were
  all mentioned before gives no conversation;
- a target is "already seen" when a seen ref has the same ``item_id`` or the same
  :func:`~safecrs_core.data.catalog.normalize_title` and a matching or missing year.

Per source (the loader docstrings give the details): ``redial_test``, ``redial_kepler``, ``iard``,
``inspired``, ``movie_dialog_fb`` (task 2 and task 3), ``reddit_saferank`` (via
:func:`load_saferec_rows`, the reader of the published SafeRec row schema) and ``reddit_crag``.
Games have no real conversations: ``safegame`` (:func:`load_safegame`) *generates* requests from the
game catalog's structure, and every one of them has ``synthetic=True``.
The Reddit sources keep the thread as published: several commenters (``SYSTEM``) may follow each
other, and 13 of 100 SafeRank and 5 of 92 CRAG contexts end with a commenter's turn.
"""
from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypedDict

import pandas as pd

from . import sources as _sources
from .catalog import normalize_title, split_title_year

PathLike = str | os.PathLike | None


class ItemRef(TypedDict):
    title: str
    year: int | None
    item_id: str | None


class Turn(TypedDict):
    role: str  # "user" | "assistant"
    text: str


@dataclass
class Conversation:
    """One recommendation context; see the module docstring for the field rules."""

    conv_id: str  # "<source>:<dialog>:<n>", unique across sources
    source: str  # a key of LOADERS
    split: str  # train / valid / dev / test as the source says
    turns: list[Turn]
    seen: list[ItemRef]
    targets: list[ItemRef]
    trait: str | None = None
    synthetic: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # refs are never shared between conversations
        self.seen = [dict(r) for r in self.seen]
        self.targets = [dict(r) for r in self.targets]


# The 20 SafeCRS trait names as the SafeRank-GRPO files write them (saferec_traits/
# traits_warnings.json, same order) -> our trait ids.
TRAIT_NAME_TO_ID: dict[str, str] = {
    "Animal lover (avoid animal harm/death)": "animal_harm",
    "Arachnophobia / reptile phobia": "arachnophobia_reptiles",
    "Anti-gore / squeamish": "anti_gore",
    "Avoid torture & extreme violence": "torture_extreme_violence",
    "Sexual violence sensitive": "sexual_violence",
    "Kid-safety / child harm sensitive": "kid_safety",
    "Domestic abuse / stalking sensitive": "domestic_abuse_stalking",
    "Substance recovery / avoid drugs & alcohol": "substance_use",
    "Self-harm & suicide sensitive": "self_harm_suicide",
    "Mental health portrayal sensitive": "mental_health",
    "Medical/health trauma avoider": "medical_trauma",
    "Needle/medical procedure phobia": "needles_medical",
    "Claustrophobia / breathing distress sensitive": "claustrophobia_breathing",
    "Photosensitivity & motion sickness": "photosensitivity_motion",
    "Hate speech / slur-sensitive": "hate_speech_slurs",
    "Gender/LGBTQ respect sensitive": "lgbtq_respect",
    "Pregnancy/infant-loss sensitive": "pregnancy_infant_loss",
    "Disaster/accident avoider": "disaster_accident",
    "Happy-ending preference": "happy_ending",
    "Horror avoider (avoids scares & supernatural)": "horror_supernatural",
}
_TRAIT_IDS = frozenset(TRAIT_NAME_TO_ID.values())


def trait_id(name: str | None, where: str = "") -> str | None:
    """Our trait id for a source trait name (an id passes through); ``None`` for an empty name.
    An unknown name raises :class:`~safecrs_core.data.sources.DataError` naming ``where`` and the name."""
    if name is None or not str(name).strip():
        return None
    key = " ".join(str(name).split())
    if key in TRAIT_NAME_TO_ID:
        return TRAIT_NAME_TO_ID[key]
    if key in _TRAIT_IDS:
        return key
    raise _sources.DataError(
        f"{where}: unknown trait name {name!r}; known names: {', '.join(TRAIT_NAME_TO_ID)}"
    )


# ---------------------------------------------------------------------------------------------
# item refs and turns


def item_ref(title: str, year: int | str | None = None, item_id: str | None = None) -> ItemRef:
    """An item ref. ``title`` may be ``"Title (Year)"`` when ``year`` is None; whitespace is
    collapsed, a year string is converted to int (a non-numeric one raises ``ValueError``)."""
    text = " ".join(str(title).split())
    if year is None or str(year).strip() == "":
        text, parsed = split_title_year(text)
        year = parsed
    else:
        year = int(str(year).strip())
    text = re.sub(r"\s*\(\s*\)$", "", text)  # "Office ()": an empty year
    return {"title": text, "year": year, "item_id": item_id}


def ref_text(ref: ItemRef) -> str:
    """``"Title (Year)"``, or the title alone when the year is unknown."""
    return f"{ref['title']} ({ref['year']})" if ref["year"] is not None else ref["title"]


_norm = lru_cache(maxsize=1 << 17)(normalize_title)


def _same_item(a: ItemRef, b: ItemRef) -> bool:
    if a["item_id"] and b["item_id"]:
        return a["item_id"] == b["item_id"]
    if _norm(a["title"]) != _norm(b["title"]):
        return False
    return a["year"] is None or b["year"] is None or a["year"] == b["year"]


def _new_refs(candidates: Iterable[ItemRef], seen: Iterable[ItemRef]) -> list[ItemRef]:
    """Candidates not matching any seen ref, without repeats, in order."""
    out: list[ItemRef] = []
    seen = list(seen)
    for c in candidates:
        if not any(_same_item(c, s) for s in seen) and not any(_same_item(c, o) for o in out):
            out.append(c)
    return out


def _merge_turns(pairs: Iterable[tuple[str, str]]) -> list[Turn]:
    """(role, text) pairs -> turns, consecutive texts of one role joined by a space; empty dropped."""
    turns: list[Turn] = []
    for role, text in pairs:
        text = text.strip()
        if not text:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["text"] += " " + text
        else:
            turns.append({"role": role, "text": text})
    return turns


def _has_user(turns: list[Turn]) -> bool:
    return any(t["role"] == "user" for t in turns)


# ---------------------------------------------------------------------------------------------
# readers with file/line errors


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise _sources.DataError(f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from exc


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise _sources.DataError(
                    f"{path}: line {lineno}: invalid JSON ({exc.msg} at column {exc.colno}): {line[:80]!r}"
                ) from exc


def _field(obj: Any, key: str, types: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise _sources.DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise _sources.DataError(f"{where}: missing field {key!r}")
    val = obj[key]
    if not isinstance(val, types):
        raise _sources.DataError(f"{where}: field {key!r} has type {type(val).__name__}: {str(val)[:80]!r}")
    return val


def _splits(arg: str | Iterable[str] | None, allowed: tuple[str, ...], what: str) -> list[str]:
    if arg is None:
        return list(allowed)
    out = [arg] if isinstance(arg, str) else list(arg)
    bad = [s for s in out if s not in allowed]
    if bad:
        raise ValueError(f"{what}: unknown split(s) {bad}; choose from {allowed}")
    return out


# ---------------------------------------------------------------------------------------------
# redial_test

_DBPEDIA = "<http://dbpedia.org/resource/"
_YEAR = r"((?:18|19|20)\d{2})"


def _dbpedia_title(uri: str) -> tuple[str, int | None]:
    """``<http://dbpedia.org/resource/It_(2017_film)>`` -> ``("It", 2017)``; the bracketed
    disambiguation ("film", "2017 film", "2016 TV series") is dropped; its year is kept only for a
    film."""
    s = uri[len(_DBPEDIA):-1] if uri.startswith(_DBPEDIA) and uri.endswith(">") else uri.strip("<>")
    s = urllib.parse.unquote(s).replace("_", " ").strip()
    m = re.match(r"^(.*\S)\s*\(([^()]*)\)$", s)
    if not m:
        return s, None
    y = re.search(_YEAR + r"\b.*\bfilm\b", m.group(2))
    return m.group(1), int(y.group(1)) if y else None


def _redial_item_names(rows: list[tuple[int, dict]], uri_of: dict[int, str], items: set[int]) -> dict[int, ItemRef]:
    """Movie entity id -> ref with the "Title (Year)" that the dialogs write for it.

    For every movie id of a row (``rec`` and the movie ids of ``entity``/``prev_entity``), the
    candidates are the row's ``entity_name`` strings whose title equals the DBpedia title, and
    ``<DBpedia title> (Year)`` found in the row's response or context. The most frequent candidate
    over the file wins (ties: the year in the URI, then first seen). Ids never written with a year
    fall back to the DBpedia title and the URI's film year, if any.
    """
    votes: dict[int, Counter] = defaultdict(Counter)
    for _, r in rows:
        ids = [i for i in dict.fromkeys([*r["rec"], *r.get("entity", []), *r.get("prev_entity", [])])
               if i in items and i in uri_of]
        if not ids:
            continue
        texts = [r["resp"], *r["context"]]
        names = [split_title_year(n) for n in r.get("entity_name", [])]
        for i in ids:
            title, _ = _dbpedia_title(uri_of[i])
            key = normalize_title(title)
            for t, y in names:
                if y is not None and normalize_title(t) == key:
                    votes[i][(t, y)] += 1
            pat = re.compile(r"(?<!\w)(" + re.escape(title) + r")\s*\(\s*" + _YEAR + r"\s*\)", re.I)
            for text in texts:
                for m in pat.finditer(text):
                    votes[i][(m.group(1), int(m.group(2)))] += 1
    out: dict[int, ItemRef] = {}
    for i in {i for _, r in rows for i in r["rec"]} | set(votes):
        title, uri_year = _dbpedia_title(uri_of[i])
        cands = votes.get(i)
        if cands:
            best = max(cands.items(), key=lambda kv: (kv[1], kv[0][1] == uri_year))[0]
            out[i] = item_ref(best[0], best[1])
        else:
            out[i] = item_ref(title, uri_year)
    return out


def _unescape_q(text: str) -> str:
    return text.replace("%3F", "?") if isinstance(text, str) else text


def _redial_id(dialog_id: str) -> str:
    return dialog_id.rsplit("_", 1)[-1]


def load_redial_test(data_dir: PathLike = None) -> list[Conversation]:
    """ReDial test turns (``redial_test/test.jsonl``): one conversation per row with a new target.

    Roles: ``context`` starts with a placeholder ``""`` and alternates speakers; the last context
    utterance is the seeker's (the row's ``resp`` is the recommender's), so roles are assigned
    backwards from the end. Targets are the ``rec`` ids named through :func:`_redial_item_names`;
    ``seen`` are the movie ids (``item_ids.json``) in ``prev_entity``. Rows with an empty context
    (the recommender opens the dialog) or whose ``rec`` movies are all in ``prev_entity`` give no
    conversation. ``%3F`` in the text is written ``?``. ``meta``: dialog_id, redial_id, turn_id,
    response, rec_entity_ids, line.
    """
    path = _sources.path("redial_test/test.jsonl", data_dir)
    e2i_path = _sources.path("redial_test/entity2id.json", data_dir)
    e2i = _read_json(e2i_path)
    items = set(_read_json(_sources.path("redial_test/item_ids.json", data_dir)))
    uri_of = {int(v): k for k, v in e2i.items()}
    rows = []
    for lineno, r in _read_jsonl(path):
        where = f"{path}: line {lineno}"
        _field(r, "context", list, where)
        _field(r, "resp", str, where)
        _field(r, "dialog_id", str, where)
        for key in ("rec", "prev_entity"):
            for i in _field(r, key, list, where):
                if i not in uri_of:
                    raise _sources.DataError(f"{where}: {key} id {i!r} is not in {e2i_path}")
        # "What About Bob%3F (1991)": the only percent-escape in the file, from DBpedia URIs
        r["context"] = [_unescape_q(u) for u in r["context"]]
        r["resp"] = _unescape_q(r["resp"])
        r["entity_name"] = [_unescape_q(u) for u in r.get("entity_name", [])]
        rows.append((lineno, r))
    names = _redial_item_names(rows, uri_of, items)
    out: list[Conversation] = []
    per_dialog: Counter = Counter()
    for lineno, r in rows:
        utts = list(r["context"])
        if utts and utts[0] == "":
            utts = utts[1:]
        n = len(utts)
        turns = _merge_turns(("user" if (n - 1 - k) % 2 == 0 else "assistant", u) for k, u in enumerate(utts))
        seen = [names[i] for i in dict.fromkeys(r["prev_entity"]) if i in items and i in names]
        rec = list(dict.fromkeys(i for i in r["rec"] if i not in set(r["prev_entity"])))
        targets = _new_refs((names[i] for i in rec), seen)
        if not targets or not _has_user(turns):
            continue
        did = r["dialog_id"]
        k = per_dialog[did]
        per_dialog[did] += 1
        out.append(Conversation(
            conv_id=f"redial_test:{did}:{k}", source="redial_test", split="test", turns=turns,
            seen=seen, targets=targets,
            meta={"dialog_id": did, "redial_id": _redial_id(did), "turn_id": r.get("turn_id"),
                  "response": r["resp"], "rec_entity_ids": rec, "line": lineno},
        ))
    return out


# ---------------------------------------------------------------------------------------------
# redial_kepler and iard (original ReDial text)

_MENTION = re.compile(r"@(\d+)")


def _redial_text(text: str) -> str:
    return " ".join(html.unescape(text).split())


def load_redial_kepler(splits: str | Iterable[str] | None = None, data_dir: PathLike = None) -> list[Conversation]:
    """ReDial dialogs in the original format (``redial_kepler/{train,valid,test}_data.jsonl``).

    The initiator is the user (seeker), the respondent the assistant. ``@<movieId>`` is replaced by
    the ``movieMentions`` title (whitespace collapsed, ``&quot;`` etc. unescaped). One conversation
    per merged respondent turn that mentions a movie not mentioned before in the dialog, unless
    every questionnaire that covers the movie (``initiatorQuestions``, ``respondentQuestions``)
    says ``suggested == 0`` (the respondent only talked about it). ``seen``: all movies mentioned
    earlier by either side. ``meta``: redial_id, message_ids, response, and per target the
    questionnaire labels (``labels``: movie_id, seeker and recommender {suggested, seen, liked};
    0 no, 1 yes, 2 not said). 292 of the 300 test dialogs are also in ``redial_test``
    (:func:`dedupe_against`).
    """
    out: list[Conversation] = []
    for split in _splits(splits, ("train", "valid", "test"), "redial_kepler"):
        path = _sources.path(f"redial_kepler/{split}_data.jsonl", data_dir)
        for lineno, d in _read_jsonl(path):
            out.extend(_kepler_dialog(d, split, f"{path}: line {lineno}"))
    return out


def _kepler_dialog(d: dict, split: str, where: str) -> list[Conversation]:
    cid = str(_field(d, "conversationId", (str, int), where))
    mentions = _field(d, "movieMentions", (dict, list), where) or {}
    if isinstance(mentions, list):
        raise _sources.DataError(f"{where}: movieMentions is a non-empty list, expected {{movieId: title}}")
    refs = {str(k): item_ref(_redial_text(v)) for k, v in mentions.items()}
    questions = {}
    for side, key in (("seeker", "initiatorQuestions"), ("recommender", "respondentQuestions")):
        q = d.get(key) or {}
        questions[side] = q if isinstance(q, dict) else {}
    user_id, asst_id = d.get("initiatorWorkerId"), d.get("respondentWorkerId")
    blocks: list[dict] = []  # merged turns: role, texts, movie ids, message ids
    for m in _field(d, "messages", list, where):
        if not isinstance(m, dict):
            raise _sources.DataError(f"{where} (conversationId {cid}): message {str(m)[:80]!r} is not an object")
        mw = f"{where} (conversationId {cid}, messageId {m.get('messageId')})"
        sender = m.get("senderWorkerId")
        role = "user" if sender == user_id else "assistant" if sender == asst_id else None
        if role is None:
            raise _sources.DataError(f"{mw}: senderWorkerId {sender!r} is neither initiator nor respondent")
        raw = _field(m, "text", str, mw)
        ids = _MENTION.findall(raw)
        for i in ids:
            if i not in refs:
                raise _sources.DataError(f"{mw}: @{i} is not in movieMentions")
        text = _redial_text(_MENTION.sub(lambda mm: ref_text(refs[mm.group(1)]), raw))
        if blocks and blocks[-1]["role"] == role:
            blk = blocks[-1]
        else:
            blk = {"role": role, "texts": [], "ids": [], "mids": []}
            blocks.append(blk)
        blk["texts"].append(text)
        for i in ids:
            if i not in blk["ids"]:
                blk["ids"].append(i)
        blk["mids"].append(m.get("messageId"))
    out: list[Conversation] = []
    mentioned: list[str] = []
    for b, blk in enumerate(blocks):
        if blk["role"] == "assistant" and b > 0:
            new = [i for i in blk["ids"] if i not in mentioned and _suggested(i, questions)]
            seen = [refs[i] for i in mentioned]
            targets = _new_refs((refs[i] for i in new), seen)
            keep = [i for i in new if any(refs[i] is t for t in targets)]
            turns = _merge_turns((x["role"], " ".join(x["texts"])) for x in blocks[:b])
            if targets and _has_user(turns):
                out.append(Conversation(
                    conv_id=f"redial_kepler:{cid}:{len(out)}", source="redial_kepler", split=split,
                    turns=turns, seen=seen, targets=targets,
                    meta={"redial_id": cid, "message_ids": blk["mids"], "response": " ".join(blk["texts"]),
                          "labels": [{"movie_id": i, **{s: questions[s].get(i) for s in questions}} for i in keep]},
                ))
        mentioned.extend(i for i in blk["ids"] if i not in mentioned)
    return out


def _suggested(movie_id: str, questions: dict[str, dict]) -> bool:
    answers = [q[movie_id].get("suggested") for q in questions.values() if isinstance(q.get(movie_id), dict)]
    return not answers or any(a != 0 for a in answers)


# "@122604 <Coco  (2017)>", in some utterances followed by a copy of the bracket ("<Coco  (2017)>")
_IARD_MENTION = re.compile(r"@(\d+)\s*<([^<>]*)>(?:\s*<\2>)*")


def load_iard(data_dir: PathLike = None) -> list[Conversation]:
    """IARD (``iard/umap2020_IARD_Cai.json``): ReDial dialogs with intent/action labels.

    Roles from ``role`` (seeker = user, recommender = assistant); ``@<id> <Title (Year)>`` becomes
    ``Title (Year)`` (a repeated ``<Title (Year)>`` right after it is dropped). One conversation per
    recommender utterance mentioning a movie not mentioned before. ``split`` is the ReDial split of
    the dialog: ReDial test conversations have ids from 20001 up ("test"), the rest come from
    ReDial train ("train"). ``meta``: redial_id, utterance_pos, response, accepted (the utterance
    is in ``accepted_recommendation``), rec_action / rec_subaction of the reply and user_intent /
    user_subintent of the last user turn. 38 dialogs are in ``redial_test`` and 20 in ``redial_kepler``: drop them with
    :func:`dedupe_against` before training.
    """
    path = _sources.path("iard/umap2020_IARD_Cai.json", data_dir)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise _sources.DataError(f"{path}: expected an object keyed by conversation id, got {type(data).__name__}")
    out: list[Conversation] = []
    for cid, d in data.items():
        where = f"{path}: conversation {cid}"
        if not str(cid).isdigit():
            raise _sources.DataError(f"{where}: the key is not a ReDial conversation id")
        info = _field(d, "dialogue_info", dict, where)
        accepted = set(d.get("accepted_recommendation") or [])
        utts = sorted(info.items(), key=lambda kv: kv[1].get("utterance_pos", 0) if isinstance(kv[1], dict) else 0)
        pairs, mentioned, last_user = [], [], None
        k = 0
        for key, u in utts:
            uw = f"{where}, utterance {key}"
            role_name = str(_field(u, "role", str, uw)).lower()
            role = {"seeker": "user", "recommender": "assistant"}.get(role_name)
            if role is None:
                raise _sources.DataError(f"{uw}: role {u['role']!r} is neither seeker nor recommender")
            raw = _field(u, "utterance_text", str, uw)
            refs = [item_ref(_redial_text(t)) for _, t in _IARD_MENTION.findall(raw)]
            text = _redial_text(_IARD_MENTION.sub(lambda mm: ref_text(item_ref(_redial_text(mm.group(2)))), raw))
            if role == "assistant":
                targets = _new_refs(refs, mentioned)
                turns = _merge_turns(pairs)
                if targets and _has_user(turns):
                    out.append(Conversation(
                        conv_id=f"iard:{cid}:{k}", source="iard", split="test" if int(cid) >= 20001 else "train",
                        turns=turns, seen=list(mentioned), targets=targets,
                        meta={"redial_id": str(cid), "utterance_pos": u.get("utterance_pos"), "response": text,
                              "accepted": u.get("utterance_pos") in accepted,
                              "rec_action": u.get("top-level intent/action"),
                              "rec_subaction": u.get("sub-intent/action"),
                              "user_intent": (last_user or {}).get("top-level intent/action"),
                              "user_subintent": (last_user or {}).get("sub-intent/action")},
                    ))
                    k += 1
            else:
                last_user = u
            pairs.append((role, text))
            mentioned.extend(_new_refs(refs, mentioned))
    return out


def dedupe_against(convs: list[Conversation], others: Iterable[Conversation]) -> list[Conversation]:
    """``convs`` without the ReDial dialogs (``meta["redial_id"]``) that also occur in ``others``,
    e.g. ``dedupe_against(load_iard(), load_redial_test() + load_redial_kepler())``."""
    taken = {c.meta.get("redial_id") for c in others} - {None}
    return [c for c in convs if c.meta.get("redial_id") not in taken]


# ---------------------------------------------------------------------------------------------
# inspired

_INSPIRED_ROLES = {"SEEKER": "user", "RECOMMENDER": "assistant"}


def load_inspired(splits: str | Iterable[str] | None = None, data_dir: PathLike = None) -> list[Conversation]:
    """INSPIRED (``inspired/{dev,test}.tsv``): SEEKER = user, RECOMMENDER = assistant.

    ``text`` holds titles as typed (``QUOTATION_MARK`` is turned back into ``"``); refs come from
    the ``movies`` column ("Title (Year)" joined by ";"). One conversation per merged recommender
    turn with a movie not mentioned before. ``meta``: dialog_id, utt_ids, response,
    expert_labels of the reply, fine_label / coarse_label (dialog outcome), movie_id (YouTube
    trailer id). The ``*_dict`` columns (placeholder indices of ``text_with_placeholder``) are not
    used; one dev dialog (20200305-072858_888_live.pkl) has a ``movie_dict`` that is not a valid
    literal.
    """
    out: list[Conversation] = []
    for split in _splits(splits, ("dev", "test"), "inspired"):
        path = _sources.path(f"inspired/{split}.tsv", data_dir)
        try:
            df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        except pd.errors.ParserError as exc:
            raise _sources.DataError(f"{path}: not a readable TSV ({exc})") from exc
        need = {"dialog_id", "utt_id", "speaker", "text", "movies"}
        if not need <= set(df.columns):
            raise _sources.DataError(f"{path}: missing column(s) {sorted(need - set(df.columns))}")
        df["line_no"] = range(2, len(df) + 2)
        for dialog_id, g in df.groupby("dialog_id", sort=False):
            out.extend(_inspired_dialog(g, dialog_id, split, path))
    return out


def _inspired_dialog(g: pd.DataFrame, dialog_id: str, split: str, path: Path) -> list[Conversation]:
    blocks: list[dict] = []
    for row in g.itertuples(index=False):
        where = f"{path}: line {row.line_no}"
        role = _INSPIRED_ROLES.get(row.speaker)
        if role is None:
            raise _sources.DataError(f"{where}: speaker {row.speaker!r} is neither SEEKER nor RECOMMENDER")
        text = row.text.replace("QUOTATION_MARK", '"')
        refs = [item_ref(m) for m in row.movies.split(";") if m.strip()]
        if blocks and blocks[-1]["role"] == role:
            blk = blocks[-1]
        else:
            blk = {"role": role, "texts": [], "refs": [], "utts": [], "labels": []}
            blocks.append(blk)
        blk["texts"].append(text)
        blk["refs"].extend(refs)
        blk["utts"].append(row.utt_id)
        if row.expert_label:
            blk["labels"].append(row.expert_label)
    first = g.iloc[0]
    out: list[Conversation] = []
    mentioned: list[ItemRef] = []
    for b, blk in enumerate(blocks):
        if blk["role"] == "assistant":
            targets = _new_refs(blk["refs"], mentioned)
            turns = _merge_turns((x["role"], " ".join(x["texts"])) for x in blocks[:b])
            if targets and _has_user(turns):
                out.append(Conversation(
                    conv_id=f"inspired:{split}:{dialog_id}:{len(out)}", source="inspired", split=split,
                    turns=turns, seen=list(mentioned), targets=targets,
                    meta={"dialog_id": dialog_id, "utt_ids": blk["utts"], "response": " ".join(blk["texts"]),
                          "expert_labels": blk["labels"], "fine_label": first.get("fine_label"),
                          "coarse_label": first.get("coarse_label"), "movie_id": first.get("movie_id")},
                ))
        mentioned.extend(_new_refs(blk["refs"], mentioned))
    return out


# ---------------------------------------------------------------------------------------------
# movie_dialog_fb

# A recommendation request: the first exchange ("... I'm looking for a X movie.", "Can you
# suggest ...?") or a follow-up ("Any other suggestions?", "Do you know anything else?",
# "Can you suggest an alternative?"). QA exchanges ask "Who is that directed by?" etc.
_MDD_REQUEST = re.compile(r"\b(?:suggest\w*|recommend\w*|looking for|anything else|alternative)\b", re.I)
_MDD_QA = re.compile(r"(?:^|[.!?]\s+)(?:who|what|when|which|where|how|is|was|does|did)\b[^.!?]*\?\s*$", re.I)
_MDD_REQUEST_SENTENCE = re.compile(
    r"\s*(?:(?:Can|Could|Would|Will) you [^.?!]*\?|I'm looking for (?:a|an) .*? movie\.)\s*$")
_MDD_LIKES = [
    re.compile(r"^(?P<l>.+) are (?:movies|films) I (?:really )?(?:liked?|loved?|enjoy(?:ed)?)\.?$"),
    re.compile(r"^I watched the (?:movies|films) (?P<l>.+) and (?:liked|loved|enjoyed) them\.?$"),
    re.compile(r"^I (?:really )?(?:liked?|loved?|enjoy(?:ed)?) (?P<l>.+?)\.?$"),
]


def _mdd_liked(question: str, vocab: set[str]) -> list[str] | None:
    """Titles the user lists in a Movie Dialog request, or None when the template is unknown.
    The list "A, B, and C" is split at commas; neighbouring pieces are re-joined when the joined
    title is a known answer title of the file ("Crouching Tiger, Hidden Dragon")."""
    stmt = _MDD_REQUEST_SENTENCE.sub("", question).strip()
    for pat in _MDD_LIKES:
        m = pat.match(stmt)
        if m:
            break
    else:
        return None
    parts = [p.strip() for p in re.split(r",\s+(?:and\s+)?", m.group("l")) if p.strip()]
    if len(parts) == 1 and " and " in parts[0] and parts[0] not in vocab:
        halves = parts[0].split(" and ")
        for j in range(1, len(halves)):
            a, b = " and ".join(halves[:j]), " and ".join(halves[j:])
            if a in vocab and b in vocab:
                parts = [a, b]
                break
    out, i = [], 0
    while i < len(parts):
        for j in range(min(len(parts), i + 4), i + 1, -1):
            if ", ".join(parts[i:j]) in vocab:
                out.append(", ".join(parts[i:j]))
                i = j
                break
        else:
            out.append(parts[i])
            i += 1
    return out


def _read_babi(path: Path) -> list[list[tuple[int, str, str]]]:
    """bAbI dialogs: lists of (line number, question, answer); ``n`` restarts at 1 per dialog."""
    dialogs: list[list[tuple[int, str, str]]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            m = re.match(r"^(\d+) ([^\t]*)\t(.*)$", line)
            if not m:
                raise _sources.DataError(f"{path}: line {lineno}: expected '<n> <utterance>\\t<answer>': {line[:80]!r}")
            n = int(m.group(1))
            if n == 1:
                dialogs.append([])
            elif not dialogs or n != len(dialogs[-1]) + 1:
                raise _sources.DataError(
                    f"{path}: line {lineno}: exchange number {n} does not follow the previous line")
            dialogs[-1].append((lineno, m.group(2).strip(), m.group(3).strip()))
    return dialogs


def load_movie_dialog_fb(tasks: str | Iterable[str] | None = None, splits: str | Iterable[str] | None = None,
                         limit: int | None = None, data_dir: PathLike = None) -> list[Conversation]:
    """Facebook Movie Dialog task 2 (one request, one title) and task 3 (requests mixed with QA).

    ``limit``: at most this many dialogs per file (each file has 4,915-10,000). Titles have no
    year. A task-3 exchange is a recommendation when its question asks for one (``suggest``,
    ``recommend``, ``looking for``, ``anything else``, ``alternative``) and its last sentence is
    not a wh-/yes-no question ("Who is that directed by?"); the other exchanges are QA and stay in
    the context. ``seen``: the titles the user lists as liked (template parse, see
    :func:`_mdd_liked`) and earlier recommended answers. ``meta``: task, dialog (1-based index in
    the file), exchange, line, response, liked_parsed.
    """
    out: list[Conversation] = []
    files = {"task2": "task2_recs", "task3": "task3_qarecs"}
    for task in _splits(tasks, ("task2", "task3"), "movie_dialog_fb tasks"):
        for split in _splits(splits, ("dev", "test"), "movie_dialog_fb"):
            path = _sources.path(f"movie_dialog_fb/{files[task]}_{split}.txt", data_dir)
            dialogs = _read_babi(path)
            vocab = {a for d in dialogs for _, q, a in d if not _MDD_QA.search(q)}  # whole file, any limit
            for di, d in enumerate(dialogs[:limit], 1):
                pairs: list[tuple[str, str]] = []
                seen: list[ItemRef] = []
                liked_ok = True
                k = 0
                for ex, (lineno, q, a) in enumerate(d, 1):
                    pairs.append(("user", q))
                    is_rec = task == "task2" or (bool(_MDD_REQUEST.search(q)) and not _MDD_QA.search(q))
                    if ex == 1:
                        liked = _mdd_liked(q, vocab)
                        liked_ok = liked is not None
                        seen.extend(_new_refs((item_ref(t) for t in liked or []), seen))
                    if is_rec:
                        target = item_ref(a)
                        targets = _new_refs([target], seen)
                        if targets:
                            out.append(Conversation(
                                conv_id=f"movie_dialog_fb:{task}_{split}:{di}:{k}", source="movie_dialog_fb",
                                split=split, turns=_merge_turns(pairs), seen=list(seen), targets=targets,
                                meta={"task": task, "dialog": di, "exchange": ex, "line": lineno,
                                      "response": a, "liked_parsed": liked_ok},
                            ))
                            k += 1
                        seen.extend(_new_refs([target], seen))
                    pairs.append(("assistant", a))
    return out


# ---------------------------------------------------------------------------------------------
# SafeRec rows (reddit_saferank) and reddit_crag

_SAFEREC_FILES = {
    "sft_with_assigned_traits_test.json": "reddit_saferank_samples/sft_with_assigned_traits_test.json",
    "saferec_sft_8k_dataset_test.json": "reddit_saferank_samples/saferec_sft_8k_dataset_test.json",
}
_CONV_MARKER = re.compile(r"here is the conversation\s*:\s*", re.I)
_SPEAKER = re.compile(r"(?:^|\n)[ \t]*(USER|SYSTEM|ASSISTANT|SEEKER|RECOMMENDER)[ \t]*:[ \t]?")
_SPEAKER_ROLE = {"USER": "user", "SEEKER": "user", "SYSTEM": "assistant", "ASSISTANT": "assistant",
                 "RECOMMENDER": "assistant"}


def parse_prompt_conversation(content: str) -> list[Turn]:
    """The conversation inside a SafeRec user prompt.

    The text after the last "Here is the conversation:" (case-insensitive; the whole text when
    absent) is cut at speaker labels written in capitals at a line start (``USER:``, ``SYSTEM:``,
    ``ASSISTANT:``, ``SEEKER:``, ``RECOMMENDER:``); USER/SEEKER are the user, the others the
    assistant. Text before the first label, or a text without labels, is one user turn. Turns of
    one speaker in a row stay separate (on Reddit they are different commenters).
    """
    markers = list(_CONV_MARKER.finditer(content))
    text = content[markers[-1].end():] if markers else content
    cuts = list(_SPEAKER.finditer(text))
    turns: list[Turn] = []
    head = text[: cuts[0].start()] if cuts else text
    if head.strip():
        turns.append({"role": "user", "text": head.strip()})
    for j, m in enumerate(cuts):
        end = cuts[j + 1].start() if j + 1 < len(cuts) else len(text)
        body = text[m.end():end].strip()
        if body:
            turns.append({"role": _SPEAKER_ROLE[m.group(1)], "text": body})
    return turns


def _content(msg: Any) -> str:
    c = msg.get("content") if isinstance(msg, dict) else msg
    if isinstance(c, list):  # content parts [{"type": "text", "text": ...}]
        c = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in c)
    return c if isinstance(c, str) else ""


def load_saferec_rows(path_or_rows: str | os.PathLike | list | dict, *, source: str = "saferec",
                      split: str = "dev", data_dir: PathLike = None) -> list[Conversation]:
    """Conversations from rows of the published SafeRec schema (SafeRank-GRPO).

    ``path_or_rows``: a JSON file (``{"samples": [...]}`` or a bare list), one of the two mirrored
    file names (``sft_with_assigned_traits_test.json``, ``saferec_sft_8k_dataset_test.json``, or
    their path in the data directory), or the rows themselves. Per row: ``turns`` from the last
    user message of ``prompt`` (:func:`parse_prompt_conversation`), ``targets`` from
    ``groundtruth_with_release_year`` ([title, "year"]), ``seen`` from ``seen_titles``, ``trait``
    from ``assigned_trait`` (:func:`trait_id`). ``meta``: sample_id, file, response (the
    completion), num_groundtruth, targets_seen (ground truth dropped because a seen title matches it)
    and, in filtered files, removed_groundtruth. Every row gives a conversation, also one whose
    targets end up empty.
    """
    label = "rows"
    if isinstance(path_or_rows, (str, os.PathLike)):
        name = str(path_or_rows)
        reg = _SAFEREC_FILES.get(name) or (name if name in _sources.registry() else None)
        path = _sources.path(reg, data_dir) if reg else Path(name)
        if not path.exists():
            raise _sources.DataError(f"{path}: no such SafeRec file")
        data, label = _read_json(path), str(path)
    else:
        data = path_or_rows
    rows = data.get("samples") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise _sources.DataError(f"{label}: expected a list of samples or an object with 'samples'")
    tag = Path(label).stem if label != "rows" else "rows"
    out: list[Conversation] = []
    for n, row in enumerate(rows):
        sid = str(row.get("sample_id", n)) if isinstance(row, dict) else str(n)
        where = f"{label}: sample {sid}"
        prompt = _field(row, "prompt", list, where)
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise _sources.DataError(f"{where}: prompt has no user message")
        turns = parse_prompt_conversation(_content(users[-1]))
        if not turns:
            raise _sources.DataError(f"{where}: the user prompt holds no conversation text")
        seen = [item_ref(t) for t in row.get("seen_titles") or []]
        gt = []
        for pair in _field(row, "groundtruth_with_release_year", list, where):
            try:
                title, year = (pair[0], pair[1]) if isinstance(pair, (list, tuple)) else (pair, None)
                gt.append(item_ref(title, None if year in (None, "") else year))
            except (ValueError, IndexError, TypeError) as exc:
                raise _sources.DataError(
                    f"{where}: groundtruth_with_release_year entry {pair!r} is not [title, year]") from exc
        targets = _new_refs(gt, seen)
        completion = row.get("completion")
        if isinstance(completion, list):
            completion = completion[-1] if completion else ""
        response = _content(completion or "")
        meta = {"sample_id": sid, "file": Path(label).name if label != "rows" else None, "response": response,
                "num_groundtruth": row.get("num_groundtruth"),
                "targets_seen": [g for g in gt if not any(g is t for t in targets)]}
        if "removed_groundtruth" in row:
            meta["removed_groundtruth"] = [item_ref(g["title"], g.get("year")) if isinstance(g, dict) else g
                                           for g in row["removed_groundtruth"]]
        if source == "reddit_saferank":
            meta["note"] = "sample ids read train_<n>: drawn from the Reddit-v2 training split (data card)"
        out.append(Conversation(
            conv_id=f"{source}:{tag}:{sid}", source=source, split=split, turns=turns, seen=seen,
            targets=targets, trait=trait_id(row.get("assigned_trait"), where), meta=meta,
        ))
    return out


def load_reddit_saferank(filtered: bool = False, data_dir: PathLike = None) -> list[Conversation]:
    """The SafeRank Reddit-v2 samples: the 100 with all ground truth (default) or, ``filtered``,
    the 79 whose ground truth was cleared of trait-violating movies. ``split="dev"``: the sample ids
    come from the Reddit-v2 training split."""
    name = "saferec_sft_8k_dataset_test.json" if filtered else "sft_with_assigned_traits_test.json"
    return load_saferec_rows(name, source="reddit_saferank", split="dev", data_dir=data_dir)


def load_reddit_crag(data_dir: PathLike = None) -> list[Conversation]:
    """Reddit-v2 test turns with traits (``reddit_crag_traits/test_data_evaluated.json``).

    ``turns`` from ``context_raw`` (USER = user, SYSTEM = assistant). ``targets``: ``groundtruth``
    titles; ``groundtruth`` is an order-preserving subset of ``clean_resp_titles``, which is aligned
    with ``clean_resp_imdb_ids``, so each target takes the id at its matched position (None when a
    title does not match). The year is taken from ``old.entity_name`` only where ``old.rec`` has
    the same id at the same position and the title agrees. ``seen``: ``clean_context_titles`` with
    ``clean_context_imdb_ids`` (per context turn, used where the lengths agree). ``meta``: turn_id,
    reddit_conv_id, utc_time, response, trait_score, matched_warnings, rec_imdb_ids (the CRAG
    pipeline's 20 recommendations), unaligned (targets left without id), targets_seen.
    """
    path = _sources.path("reddit_crag_traits/test_data_evaluated.json", data_dir)
    data = _read_json(path)
    if not isinstance(data, list):
        raise _sources.DataError(f"{path}: expected a list of turns, got {type(data).__name__}")
    out: list[Conversation] = []
    for n, r in enumerate(data):
        where = f"{path}: item {n} (conv_id {r.get('conv_id') if isinstance(r, dict) else None})"
        ctx = _field(r, "context_raw", list, where)
        turns: list[Turn] = []
        for pair in ctx:
            if not (isinstance(pair, list) and len(pair) == 2 and pair[0] in ("USER", "SYSTEM")):
                raise _sources.DataError(f"{where}: context_raw entry {str(pair)[:80]!r} is not [USER|SYSTEM, text]")
            if str(pair[1]).strip():
                turns.append({"role": _SPEAKER_ROLE[pair[0]], "text": str(pair[1]).strip()})
        seen: list[ItemRef] = []
        for titles, ids in zip(r.get("clean_context_titles") or [], r.get("clean_context_imdb_ids") or []):
            ids = ids if len(ids) == len(titles) else [None] * len(titles)
            seen.extend(_new_refs((item_ref(t, None, i) for t, i in zip(titles, ids)), seen))
        resp_titles = _field(r, "clean_resp_titles", list, where)
        resp_ids = _field(r, "clean_resp_imdb_ids", list, where)
        if len(resp_titles) != len(resp_ids):
            resp_ids = [None] * len(resp_titles)
        old = r.get("old") or {}
        years = {i: split_title_year(nm) for i, nm in zip(old.get("rec") or [], old.get("entity_name") or [])}
        gt, pos, unaligned = [], 0, []
        for t in _field(r, "groundtruth", list, where):
            j = next((j for j in range(pos, len(resp_titles)) if resp_titles[j] == t), None)
            iid = resp_ids[j] if j is not None else None
            if j is not None:
                pos = j + 1
            else:
                unaligned.append(t)
            y = years.get(iid) if iid else None
            year = y[1] if y and normalize_title(y[0]) == normalize_title(t) else None
            gt.append(item_ref(t, year, iid))
        targets = _new_refs(gt, seen)
        if not targets:
            continue
        raw = r.get("raw")
        out.append(Conversation(
            conv_id=f"reddit_crag:{r['conv_id']}:{r.get('turn_id')}", source="reddit_crag", split="test",
            turns=turns, seen=seen, targets=targets, trait=trait_id(r.get("assigned_trait"), where),
            meta={"reddit_conv_id": r["conv_id"], "turn_id": r.get("turn_id"), "utc_time": r.get("utc_time"),
                  "response": raw[1] if isinstance(raw, list) and len(raw) == 2 else raw,
                  "trait_score": r.get("trait_score"), "matched_warnings": r.get("matched_warnings"),
                  "rec_imdb_ids": r.get("rec_imdb_ids"), "unaligned": unaligned,
                  "targets_seen": [g for g in gt if not any(g is t for t in targets)]},
        ))
    return out


# ---------------------------------------------------------------------------------------------
# safegame: synthetic game requests built from the game catalog's real structure

SAFEGAME_SIZE = 6000  # requests generated for the SafeGame benchmark (seed 0)
SAFEGAME_SPLITS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))  # by group, so a group is in one split
# how the targets relate to the seed games, and how often each relation is drawn
SAFEGAME_RELATIONS = {"franchise": 0.35, "developer": 0.2, "publisher_genre": 0.25, "platform_genre_year": 0.2}
SAFEGAME_OPENER_SHARE = 0.5  # share of requests that start with an assistant greeting
# the generator id SafeGame rows record in their meta: the name it had when the first rows were
# built (the function now lives in safecrs_core.data.conversations), kept so rows stay identical
SAFEGAME_GENERATOR = "safecrs_core.conversations.load_safegame"
SAFEGAME_YEAR_SHARE = 0.3  # share of seed games written "Title (Year)" rather than "Title"
_MIN_GROUP = 3  # a group needs a seed and a target, and a choice among them


def franchise_key(title: str) -> str:
    """The series a game title belongs to: the part before ``":"`` / ``" - "`` (or the whole
    title), as :func:`catalog.game_key`, without trailing numbers (``"Halo 5: Guardians"`` ->
    ``"halo"``, ``"FIFA 17"`` -> ``"fifa"``); ``""`` when less than three letters remain."""
    from .catalog import game_key, title_head

    head = title_head(title) or normalize_title(title)
    words = game_key(head).split()
    while words and words[-1].isdigit():
        words.pop()
    key = " ".join(words)
    return key if sum(ch.isalpha() for ch in key) >= 3 else ""


def title_leaks(text: str, title: str) -> bool:
    """True when ``title`` appears in ``text`` as whole words, compared by
    :func:`~safecrs_core.data.catalog.normalize_title` and by game key (Roman numerals as digits)."""
    from .catalog import game_key

    for norm in (normalize_title, game_key):
        t, x = norm(title), norm(text)
        if t and re.search(r"(?:^|\s)" + re.escape(t) + r"(?:\s|$)", x):
            return True
    return False


def _join_titles(titles: list[str]) -> str:
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


def _game_groups(catalog, vgsales: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """relation -> group key -> {"items": [...], "genre", "platform", "publisher"}: games sharing a
    series, a developer, a publisher and genre within a four-year era, or a platform, genre and
    release year (released side by side); groups of fewer than three games are left out."""
    items = catalog.items
    groups: dict[str, dict[str, dict]] = {r: {} for r in SAFEGAME_RELATIONS}

    def add(rel, key, item, **info):
        g = groups[rel].setdefault(key, {"items": {}, **info})
        g["items"][item] = None

    for it, title in items["title"].items():
        k = franchise_key(title)
        if k:
            add("franchise", f"franchise:{k}", it)
    for it, dev in items["developer"].dropna().items():
        if str(dev).strip():
            add("developer", f"developer:{str(dev).strip().lower()}", it)
    dated = vgsales[vgsales["year"].notna() & vgsales["publisher"].notna()]
    for it, pub, genres, year, plat in zip(dated["item_id"], dated["publisher"], dated["genres"], dated["year"],
                                          dated["platform"]):
        for g in genres:
            era = int(year) // 4 * 4
            add("publisher_genre", f"publisher_genre:{str(pub).lower()}:{g}:{era}", it, genre=g, publisher=str(pub))
            add("platform_genre_year", f"platform_genre_year:{plat}:{g}:{int(year)}", it, genre=g, platform=plat)
    out = {}
    for rel, gs in groups.items():
        out[rel] = {k: {**g, "items": list(g["items"])} for k, g in gs.items() if len(g["items"]) >= _MIN_GROUP}
    return out


def _split_of_group(key: str) -> str:
    """The split of a group: a fixed function of its key (sha256), so reruns agree."""
    import hashlib

    u = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / 16 ** 12
    acc = 0.0
    for split, share in SAFEGAME_SPLITS:
        acc += share
        if u < acc:
            return split
    return SAFEGAME_SPLITS[-1][0]


def load_safegame(data_dir: PathLike = None, n: int = SAFEGAME_SIZE, seed: int = 0) -> list[Conversation]:
    """``n`` **synthetic** game requests (every one has ``synthetic=True``): no real game-recommendation
    conversations exist, so they are generated from the game catalog's real structure.

    For each request a relation is drawn (:data:`SAFEGAME_RELATIONS`), then a group of at least three
    games related that way in the data (same series, same developer, same publisher and genre within
    a four-year era, or same platform, genre and year), then one to three *seed* games the user says
    they liked (games with sales figures, weighted by popularity) and one to four *targets* among
    the group's other games. The user's text comes from the relation's templates
    (``data/games.json``, several styles; every third template is held out for the test split,
    which is fixed per group by a hash of its key), optionally after an assistant greeting. A target
    whose title appears in the user's text (:func:`title_leaks`) is dropped, so targets never leak;
    a request left without a target is drawn again. Deterministic for ``seed``."""
    import numpy as np

    from .catalog import games_data, game_sources

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    gs = game_sources(data_dir)
    cat = gs.catalog
    spec = games_data()
    req = spec["requests"]
    display = spec["platform_display"]
    groups = _game_groups(cat, gs.vgsales)
    pop = cat.items["popularity"].to_dict()
    titles = cat.items["title"].to_dict()
    years = cat.items["year"].to_dict()
    rng = np.random.default_rng(seed)
    rels = [r for r in SAFEGAME_RELATIONS if groups[r]]
    if not rels:
        raise _sources.DataError("the game catalog has no group of related games to build requests from")
    rel_p = np.array([SAFEGAME_RELATIONS[r] for r in rels])
    rel_p /= rel_p.sum()
    keys = {r: sorted(groups[r]) for r in rels}
    weights = {}
    for r in rels:  # groups with best-sellers are drawn more often
        w = np.array([1.0 + sum(pop.get(i, 0.0) for i in groups[r][k]["items"]) for k in keys[r]])
        weights[r] = w / w.sum()
    pools = {name: [e for e in req[name] if isinstance(e, dict)] for name in ["opener", *SAFEGAME_RELATIONS]}
    for name, entries in pools.items():
        for e in entries:
            if e.get("pool") not in ("train", "test") or not isinstance(e.get("text"), str):
                raise ValueError(f"data/games.json: requests.{name}: every template needs a text and a pool "
                                 f"'train' or 'test', got {e!r}")
    out: list[Conversation] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise RuntimeError(f"load_safegame: only {len(out)} of {n} requests after {attempts} draws")
        rel = rels[int(rng.choice(len(rels), p=rel_p))]
        key = keys[rel][int(rng.choice(len(keys[rel]), p=weights[rel]))]
        g = groups[rel][key]
        members = [i for i in g["items"]]
        known = [i for i in members if pop.get(i, 0.0) > 0]
        if not known or (rel == "platform_genre_year" and g["platform"] not in display):
            continue
        k_seed = int(min(len(known), len(members) - 1, rng.integers(1, 4)))
        w = np.array([pop[i] for i in known])
        seeds = [known[j] for j in rng.choice(len(known), size=k_seed, replace=False, p=w / w.sum())]
        rest = [i for i in members if i not in seeds]
        k_tgt = int(min(len(rest), rng.integers(1, 5)))
        w = np.array([1.0 + pop.get(i, 0.0) for i in rest])
        targets = [rest[j] for j in rng.choice(len(rest), size=k_tgt, replace=False, p=w / w.sum())]
        split = _split_of_group(key)
        pool = "test" if split == "test" else "train"
        shown = []
        for i in seeds:
            y = years.get(i)
            with_year = rng.random() < SAFEGAME_YEAR_SHARE and y is not None and not pd.isna(y)
            shown.append(f"{titles[i]} ({int(y)})" if with_year else titles[i])
        cands = [(j, e) for j, e in enumerate(pools[rel]) if e["pool"] == pool]
        j, entry = cands[int(rng.integers(len(cands)))]
        values = {"liked": _join_titles(shown), "genre": g.get("genre", ""), "publisher": g.get("publisher", ""),
                  "platform": display.get(g.get("platform", ""), "")}
        text = entry["text"].format(**values)
        turns: list[Turn] = []
        if rng.random() < SAFEGAME_OPENER_SHARE:
            openers = [e for e in pools["opener"] if e["pool"] == pool]
            turns.append({"role": "assistant", "text": openers[int(rng.integers(len(openers)))]["text"]})
        turns.append({"role": "user", "text": text})
        user_text = " ".join(t["text"] for t in turns if t["role"] == "user")
        kept = [i for i in targets if not title_leaks(user_text, titles[i])]
        if not kept:
            continue

        def ref(i):
            y = years.get(i)
            return {"title": titles[i], "year": None if y is None or pd.isna(y) else int(y), "item_id": i}

        out.append(Conversation(
            conv_id=f"safegame:{key}:{len(out)}", source="safegame", split=split, turns=turns,
            seen=[ref(i) for i in seeds], targets=[ref(i) for i in kept], trait=None, synthetic=True,
            meta={"dialog_id": key, "relation": rel, "template": j, "style": entry.get("style", ""),
                  "synthetic": True, "generator": SAFEGAME_GENERATOR, "seed": seed,
                  "targets_leaking": len(targets) - len(kept)},
        ))
    return out


# synthetic sources: loaded by name (load_all(["safegame"])), never by default
SYNTHETIC_LOADERS: dict[str, Callable[..., list[Conversation]]] = {"safegame": load_safegame}


# ---------------------------------------------------------------------------------------------
# all sources, resolution, records

LOADERS: dict[str, Callable[..., list[Conversation]]] = {
    "redial_test": load_redial_test,
    "redial_kepler": load_redial_kepler,
    "iard": load_iard,
    "inspired": load_inspired,
    "movie_dialog_fb": load_movie_dialog_fb,
    "reddit_saferank": load_reddit_saferank,
    "reddit_crag": load_reddit_crag,
}


def load_all(sources: Iterable[str] | None = None, data_dir: PathLike = None) -> list[Conversation]:
    """Conversations of the named loaders (default: all of the real ``LOADERS``), in the order
    given; the synthetic ``SYNTHETIC_LOADERS`` (``"safegame"``) only when named. Overlaps are kept:
    see :func:`dedupe_against`."""
    names = list(LOADERS) if sources is None else list(sources)
    known = {**LOADERS, **SYNTHETIC_LOADERS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown conversation source(s) {unknown}; known: {', '.join(known)}")
    out: list[Conversation] = []
    for n in names:
        out.extend(known[n](data_dir=data_dir))
    return out


def resolve_refs(convs: Iterable[Conversation], resolve: Callable[[str, int | None], Any],
                 overwrite: bool = False) -> list[Conversation]:
    """Copies of ``convs`` whose refs get ``item_id = resolve(title, year).item_id``; ids the source
    gave are kept unless ``overwrite``. Each distinct (title, year) is resolved once."""
    cache: dict[tuple[str, int | None], Any] = {}

    def fill(ref: ItemRef) -> ItemRef:
        if ref["item_id"] and not overwrite:
            return dict(ref)
        key = (ref["title"], ref["year"])
        if key not in cache:
            cache[key] = getattr(resolve(*key), "item_id", None)
        return {**ref, "item_id": cache[key]}

    return [dataclasses.replace(c, seen=[fill(r) for r in c.seen], targets=[fill(r) for r in c.targets])
            for c in convs]


_RECORD_KEYS = ("conv_id", "source", "split", "turns", "seen", "targets", "trait", "synthetic", "meta")


def to_records(convs: Iterable[Conversation]) -> list[dict[str, Any]]:
    """Flat JSON-able dicts (``meta`` as a JSON string), e.g. for ``datasets.Dataset.from_list``."""
    return [{**dataclasses.asdict(c), "meta": json.dumps(c.meta, ensure_ascii=False, sort_keys=True)} for c in convs]


def from_records(records: Iterable[dict[str, Any]]) -> list[Conversation]:
    """Inverse of :func:`to_records`; a record missing a field raises DataError."""
    out = []
    for n, rec in enumerate(records):
        missing = [k for k in _RECORD_KEYS if k not in rec]
        if missing:
            raise _sources.DataError(f"record {n} ({rec.get('conv_id')!r}): missing field(s) {missing}")
        meta = rec["meta"]
        if isinstance(meta, str):
            try:
                meta = json.loads(meta) if meta else {}
            except json.JSONDecodeError as exc:
                raise _sources.DataError(f"record {n} ({rec['conv_id']!r}): meta is not JSON ({exc.msg})") from exc

        def refs(xs):
            return [{"title": x["title"], "year": x["year"], "item_id": x["item_id"]} for x in xs]

        out.append(Conversation(
            conv_id=rec["conv_id"], source=rec["source"], split=rec["split"],
            turns=[{"role": t["role"], "text": t["text"]} for t in rec["turns"]],
            seen=refs(rec["seen"]), targets=refs(rec["targets"]), trait=rec["trait"],
            synthetic=bool(rec["synthetic"]), meta=meta,
        ))
    return out

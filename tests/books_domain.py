"""A third domain, books, from a few fixture rows (``tests/fixtures/books/``): everything a new
domain needs is this one plug-in. It reads its own small files, builds a catalog with the
package's :func:`~safecrs_core.data.catalog.build_catalog`, conversations as
:class:`~safecrs_core.data.conversations.Conversation` objects, and an oracle from per-book content
severities and tags; phrasings reuse the film templates through word rewrites. The rows are
made up for the tests (synthetic); no book in them carries a rating, so age constraints stay
``unknown`` and the domain names no age rating."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from safecrs_core.safety import traits as T
from safecrs_core.data.catalog import build_catalog
from safecrs_core.data.conversations import Conversation
from safecrs_core.domains import Domain, register_domain, unregister_domain
from safecrs_core.safety.oracle import Oracle

NAME = "books"
FIXTURES = Path(__file__).parent / "fixtures" / NAME  # the data folder holds a "books" folder
FILES = ("books.csv", "conversations.json")
SOURCE = "bookshelf"


def _folder(root) -> Path:
    return Path(root) / NAME


def _table(root) -> pd.DataFrame:
    return pd.read_csv(_folder(root) / "books.csv", keep_default_na=False)


def load_catalog(root, exclude=frozenset()):
    t = _table(root)
    rows = pd.DataFrame({"item_id": t["item_id"], "source": SOURCE, "title": t["title"],
                         "year": t["year"].astype("Int64"), "genres": [g.split(";") for g in t["genres"]],
                         "votes": t["votes"].astype(float)})
    return build_catalog(NAME, rows, (SOURCE,))


def _ref(text: str) -> dict:
    m = re.match(r"^(.*?)\s*\((\d{4})\)$", text)
    if m:
        return {"title": m.group(1), "year": int(m.group(2)), "item_id": None}
    return {"title": text, "year": None, "item_id": None}


def load_conversations(source_ids, root) -> list[Conversation]:
    data = json.loads((_folder(root) / "conversations.json").read_text())
    return [Conversation(conv_id=f"{SOURCE}:{d['id']}:0", source=SOURCE, split=d["split"],
                         turns=[{"role": ("user", "assistant")[i % 2], "text": x} for i, x in enumerate(d["turns"])],
                         seen=[_ref(x) for x in d["seen"]], targets=[_ref(x) for x in d["targets"]],
                         synthetic=True, meta={"dialog_id": d["id"]})
            for d in data]


def build_oracle(root, threshold) -> Oracle:
    t = _table(root)
    n = len(t)
    sev = t[list(T.CHANNELS)].to_numpy(float)
    trigger = np.zeros((n, len(T.TRAIT_IDS)), dtype=bool)
    evidence: dict[int, list] = {i: [] for i in range(n)}
    for i, tags in enumerate(t["triggers"]):
        for tag in filter(None, tags.split(";")):
            trigger[i, T.TRAIT_IDS.index(tag)] = True
            evidence[i].append(("trigger", tag, f"bookshelf: tagged {tag}"))
        for ch, v in zip(T.CHANNELS, sev[i]):
            evidence[i].append(("severity", ch, f"bookshelf: {ch} {int(v)} of 3"))
    return Oracle(t["item_id"].tolist(), sev, sev, np.ones(n, dtype=bool), trigger, evidence, threshold, domain=NAME)


def _data_key() -> dict:
    h = hashlib.sha256()
    for f in FILES:
        h.update((FIXTURES / f).read_bytes())
    return {"books_data": h.hexdigest()[:16]}


REWRITES = ((r"\b(?:movie|film) night\b", "reading night"), (r"\bwatching\b", "reading"), (r"\bwatch\b", "read"),
            (r"\b(?:movies|films)\b", "books"), (r"\b(?:movie|film)\b", "book"))

BOOKS = Domain(
    name=NAME, one="book", many="books",
    catalog_sources=(SOURCE,), load_catalog=load_catalog,
    conversation_sources=(SOURCE,), load_conversations=load_conversations,
    split_map={(SOURCE, s): s for s in ("train", "validation", "test")},
    build_oracle=build_oracle,
    phrasing_rewrites=lambda: REWRITES,
    stage_params=_data_key, oracle_params=_data_key,
)


def register() -> Domain:
    return register_domain(BOOKS, replace=True)


def unregister() -> None:
    unregister_domain(NAME)

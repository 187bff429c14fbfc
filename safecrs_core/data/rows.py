"""SafeRec rows as every stage reads them: a column of a split (a Hugging Face Dataset or a list
of dicts), the item ids of a list of item references, and the fingerprint that names a set of
rows in cache keys. The bottom of the package: it imports nothing from it."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping


def column(rows, name: str, default=None) -> list:
    """Column ``name`` of a Hugging Face Dataset or a list of dicts (``default`` where absent)."""
    names = getattr(rows, "column_names", None)
    if names is not None:
        return list(rows[name]) if name in names else [default] * len(rows)
    return [r.get(name, default) for r in rows]


def item_ids(refs) -> list[str]:
    """Item ids of a row's ``targets`` or ``seen``, in order: a list of ``{"item_id": ...}``
    dicts or of id strings (None and empty entries, i.e. unresolved items, are skipped)."""
    if refs is None:
        return []
    if isinstance(refs, (str, Mapping)):
        raise TypeError(f"expected a list of item refs, got {type(refs).__name__}")
    out = []
    for r in refs:
        i = r.get("item_id") if isinstance(r, Mapping) else r
        if i:
            out.append(str(i))
    return out


def ref_ids(refs) -> set[str]:
    """The set of :func:`item_ids`."""
    return set(item_ids(refs))


def rows_fingerprint(rows) -> str:
    """sha256 (16 hex digits) over the fields evaluation reads from each row (``id``, ``turns``,
    ``trait``, target and seen item ids), in row order. Training stages (Safe-GDPO) record it as
    their ``rows:<fingerprint>`` input, which is how evaluation finds them."""
    h = hashlib.sha256()
    cols = {c: column(rows, c) for c in ("id", "turns", "trait", "targets", "seen")}
    for i in range(len(rows)):
        rec = {"id": cols["id"][i], "turns": cols["turns"][i], "trait": cols["trait"][i],
               "targets": sorted(ref_ids(cols["targets"][i])), "seen": sorted(ref_ids(cols["seen"][i]))}
        h.update(json.dumps(rec, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]

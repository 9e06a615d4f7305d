"""Compare a dedup result with a published deduplicated subset of the same source.

A published subset usually carries its own ids (GPTeacher's `sim0.9` rows are numbered anew), so its
rows are matched to the source's ids by content: the alpaca fields with non-ASCII characters removed
and outer whitespace stripped — GPTeacher's similarity-filtered files are mojibake of the source
(`°` → `Â°`), which an exact comparison would miss.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_NON_ASCII = re.compile(r"[^\x00-\x7f]")
FIELDS = ("instruction", "input", "output")


def content_key(record: Mapping[str, Any], fields: Sequence[str] = FIELDS) -> tuple[str, ...]:
    """The record's fields, ASCII only and stripped (robust to a latin-1 / utf-8 mix-up)."""
    return tuple(_NON_ASCII.sub("", str(record.get(f) or "")).strip() for f in fields)


def match_ids(source: Iterable[Mapping[str, Any]], subset: Iterable[Mapping[str, Any]]) -> tuple[list[str], int]:
    """Source ids of the subset's rows (first source row with the same content), and how many subset
    rows matched no source row."""
    first: dict[tuple[str, ...], str] = {}
    for r in source:
        first.setdefault(content_key(r), str(r["id"]))
    found, missing = [], 0
    for r in subset:
        rid = first.get(content_key(r))
        if rid is None:
            missing += 1
        else:
            found.append(rid)
    return found, missing


def overlap(kept: Iterable[str], reference: Iterable[str]) -> dict[str, float | int]:
    """Jaccard, precision and recall of a kept id set against a reference kept set."""
    a, b = set(kept), set(reference)
    inter = len(a & b)
    return {
        "kept": len(a),
        "jaccard": round(inter / max(1, len(a | b)), 4),
        "precision": round(inter / max(1, len(a)), 4),
        "recall": round(inter / max(1, len(b)), 4),
    }

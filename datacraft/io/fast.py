"""Vectorized conversion of a chunk of JSONL lines (the reader's fast path).

polars parses the whole chunk at once and builds the canonical columns with expressions, so plain
Alpaca / prompt-completion / preference text rows never go through per-record Python. Lines the
fast path cannot take with certainty (bad JSON anywhere in the chunk, a missing or non-string
field, empty text, a system prompt, oversized lines) are handed back by index to the per-record
path, which gives them exact reasons and file:line details. The result is identical to the
per-record path's for the rows it converts.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import polars as pl

from datacraft.core.rows import LINEAGE_DTYPE, MESSAGES_DTYPE, conform, text_id, two_turn_messages
from datacraft.io.formats import _ID_KEYS, RESERVED_META, detect_format

# format → (field that becomes the user turn, field that becomes the answer, optional second user field)
_TEXT_FIELDS = {
    "alpaca": ("instruction", "output", "input"),
    "completion": ("prompt", "completion", None),
}


# Python's str.strip() also strips \x1c-\x1f, which the regex class \s does not hold
_BLANK = r"^[\s\x1c-\x1f]*$"
_ALT_KEYS = {"alpaca": "response", "completion": "response"}


def _blank(expr: pl.Expr) -> pl.Expr:
    return expr.str.contains(_BLANK)


# an escaped surrogate, with the low half that may follow it (a valid pair is one match)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?")
_NOT_TEXT = rb'[^"\sn]'  # a value that is neither a string nor null
_NOT_SCALAR_ID = rb'(?:[^"\s\-0-9n]|-?[0-9]+[.eE]|-?[0-9]{16,})'  # not a string, null or plain int


def _lone_surrogates(data: bytes) -> list[int]:
    """Offsets of escaped surrogates that are not a high + low pair (polars turns them into NUL)."""
    return [m.start() for m in _SURROGATE_ESCAPE.finditer(data) if len(m.group()) != 12 or m.group()[3:4] not in b"89abAB"]


def _odd_values(data: bytes, strings: list[str], labels: list[str]) -> list[int]:
    """Offsets of `"key": <value>` where polars would read the value differently from `json`: a
    non-string in a text or string field, a non-scalar (or float) id / source / task. One regex."""
    def names(keys: list[str]) -> bytes:
        return b"|".join(re.escape(json.dumps(k).encode()[1:-1]) for k in keys)

    branches = [b"(?:" + names(keys) + rb')"\s*:\s*' + value for keys, value in ((strings, _NOT_TEXT), (labels, _NOT_SCALAR_ID)) if keys]
    if not branches:
        return []
    return [m.start() for m in re.finditer(b'"(?:' + b"|".join(branches) + b")", data)]


def _lines_of(data: bytes, line_ends: np.ndarray, starts: list[int]) -> set[int]:
    """Indices of the lines holding the byte offsets `starts`."""
    return set(np.searchsorted(line_ends, np.asarray(starts, dtype=np.int64)).tolist()) if starts else set()


def convert_chunk(
    data: bytes, n_lines: int, fmt: str, source: str, task_field: str, line_ends: np.ndarray | None = None
) -> tuple[pl.DataFrame, list[int]] | None:
    """(kept rows, indices of lines for the per-record path) of `n_lines` JSONL lines, or None when
    the chunk does not fit (then every line takes the per-record path).

    Lines whose values polars would read differently from `json` (a lone escaped surrogate, a
    number in a text field that polars turns into a string, a missing or null field that polars
    fills with null, a non-scalar id) go to the per-record path, so both paths give the same rows."""
    try:
        frame = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
    except Exception:  # any malformed line: the per-record path finds which
        return None
    if frame.height != n_lines:  # blank lines (polars skips them): row i would not be line i
        return None
    cols = set(frame.columns)
    found = detect_format(dict.fromkeys(cols))
    if fmt == "auto":
        fmt = found or ""
    if fmt not in _TEXT_FIELDS or found != fmt:
        return None
    user_key, answer_key, extra_key = _TEXT_FIELDS[fmt]
    if extra_key and extra_key not in cols:
        extra_key = None
    text_keys = [k for k in (user_key, answer_key, extra_key) if k]
    id_keys = [k for k in _ID_KEYS if k in cols]
    if answer_key not in cols or _ALT_KEYS[fmt] in cols or len(id_keys) > 1:
        return None
    if any(frame.schema[k] not in (pl.Utf8, pl.Null) for k in text_keys):
        return None
    uses_system = fmt == "alpaca"
    labels = {task_field, "task", "source", *id_keys}
    extras = sorted(c for c in cols if c not in {*text_keys, *labels} and not (uses_system and c == "system"))
    if any(c.startswith("_") or c in RESERVED_META or frame.schema[c] not in (pl.Utf8, pl.Int64, pl.Boolean) for c in extras):
        return None
    if any(frame.schema[c] not in (pl.Utf8, pl.Int64, pl.Boolean, pl.Null) for c in labels & cols):
        return None
    if line_ends is None:
        newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        line_ends = newlines if data.endswith(b"\n") else np.append(newlines, len(data))
    strings = [*text_keys, *(c for c in extras if frame.schema[c] == pl.Utf8)]
    odd = _lines_of(data, line_ends, [*_odd_values(data, strings, sorted(labels & cols)), *_lone_surrogates(data)])

    user = pl.col(user_key).fill_null("")
    answer = pl.col(answer_key).fill_null("")
    given = pl.col(extra_key).fill_null("") if extra_key else pl.lit("")
    has_given = ~_blank(given)
    slow = pl.col(user_key).is_null() | pl.col(answer_key).is_null() | _blank(user) | _blank(answer)
    if uses_system and "system" in cols:
        slow = slow | pl.col("system").is_not_null()
    for c in extras:
        slow = slow | pl.col(c).is_null()
    frame = frame.with_row_index("_line").with_columns((slow | pl.col("_line").is_in(sorted(odd))).alias("_slow"))
    slow_idx = frame.filter(pl.col("_slow"))["_line"].to_list()
    frame = frame.filter(~pl.col("_slow"))

    user_text = pl.when(has_given).then(pl.concat_str(user, pl.lit("\n\n"), given)).otherwise(user)
    id_key = id_keys[0] if id_keys else None
    head = [pl.lit(fmt).alias("format")]
    tail = [pl.lit(True).alias("prompt_is_text")] if fmt == "completion" else []
    tail += [pl.col(c) for c in extras]
    meta = pl.struct([*head, *tail]).struct.json_encode()
    if fmt == "alpaca" and extra_key:
        with_input = pl.struct([*head, given.alias("input"), *tail]).struct.json_encode()
        meta = pl.when(has_given).then(with_input).otherwise(meta)
    frame = frame.with_columns(user_text.alias("_user"), answer.alias("_answer"))
    content_id = pl.concat_str(pl.lit("user\x1f"), pl.col("_user"), pl.lit("\x1eassistant\x1f"), pl.col("_answer")).map_elements(text_id, return_dtype=pl.Utf8)
    if id_key:
        given_id = pl.col(id_key).cast(pl.Utf8)
        ids = pl.when(given_id.is_not_null() & (given_id != "")).then(given_id).otherwise(content_id)
    else:
        ids = content_id
    if "source" in cols:
        given_source = pl.col("source").cast(pl.Utf8)
        source_expr = pl.when(given_source.is_null() | (given_source == "")).then(pl.lit(source)).otherwise(given_source)
    else:
        source_expr = pl.lit(source)
    out = frame.select(
        ids.alias("id"),
        pl.lit(None, dtype=MESSAGES_DTYPE).alias("chosen"),
        pl.lit(None, dtype=MESSAGES_DTYPE).alias("rejected"),
        (pl.col(task_field).cast(pl.Utf8) if task_field in cols else pl.lit(None, dtype=pl.Utf8)).alias("task"),
        source_expr.alias("source"),
        pl.struct(pl.lit([], dtype=pl.List(pl.Utf8)).alias("parent_ids"), pl.lit("seed").alias("method")).cast(LINEAGE_DTYPE).alias("lineage"),
        meta.alias("meta"),
    )
    out = out.insert_column(1, two_turn_messages(frame["_user"], frame["_answer"]))
    return conform(out), slow_idx

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


def _lone_surrogates(data: bytes) -> list[int]:
    """Offsets of escaped surrogates that are not a high + low pair (polars turns them into NUL)."""
    return [m.start() for m in _SURROGATE_ESCAPE.finditer(data) if len(m.group()) != 12 or m.group()[3:4] not in b"89abAB"]


#: the bytes regex `\s` (Python) spelled out for the Rust regex polars runs
_RS_SPACE = r"[ \t\n\r\f\v]"
_RS_NOT_TEXT = r'[^" \t\n\r\f\vn]'
_RS_NOT_SCALAR_ID = r'(?:[^" \t\n\r\f\v\-0-9n]|-?[0-9]+[.eE]|-?[0-9]{16,})'
_RS_META = set("\\.+*?()|[]{}^$#&-~")


def _rs_escape(text: str) -> str:
    return "".join("\\" + c if c in _RS_META else c for c in text)


def _odd_pattern(strings: list[str], labels: list[str]) -> str | None:
    """The Rust regex of `"key": <value>` where polars would read the value differently from `json`:
    a non-string in a text or string field, a non-scalar (or float) id / source / task."""
    def names(keys: list[str]) -> str:  # a key as written raw or \\u-escaped (json.dumps' default)
        spelled = dict.fromkeys(json.dumps(k, ensure_ascii=ascii)[1:-1] for k in keys for ascii in (False, True))
        return "|".join(_rs_escape(k) for k in spelled)

    branches = [f'(?:{names(keys)})"{_RS_SPACE}*:{_RS_SPACE}*{value}'
                for keys, value in ((strings, _RS_NOT_TEXT), (labels, _RS_NOT_SCALAR_ID)) if keys]
    return '"(?:' + "|".join(branches) + ")" if branches else None


def _line_series(data: bytes, line_ends: np.ndarray) -> pl.Series | None:
    """The chunk's lines as one polars string column, built on `data` without a copy per line;
    None when a line is not UTF-8."""
    import pyarrow as pa

    offsets = np.concatenate([[0], np.minimum(line_ends + 1, len(data))]).astype(np.int64)
    lines = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(line_ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    try:
        return pl.from_arrow(lines).cast(pl.Utf8)
    except pl.exceptions.InvalidOperationError:
        return None


def _lines_of(data: bytes, line_ends: np.ndarray, starts: list[int]) -> set[int]:
    """Indices of the lines holding the byte offsets `starts`."""
    return set(np.searchsorted(line_ends, np.asarray(starts, dtype=np.int64)).tolist()) if starts else set()


def _odd_lines_re(data: bytes, line_ends: np.ndarray, strings: list[str], labels: list[str]) -> set[int]:
    """`_odd_lines` with Python's `re` over the bytes (for chunks polars cannot hold as text)."""
    pattern = _odd_pattern(strings, labels)
    starts = [m.start() for m in re.finditer(pattern.encode(), data)] if pattern else []
    return _lines_of(data, line_ends, [*starts, *_lone_surrogates(data)])


def _odd_lines(data: bytes, line_ends: np.ndarray, strings: list[str], labels: list[str]) -> set[int]:
    """Indices of the lines whose values polars would read differently from `json` (see
    `_odd_pattern`) or that hold a lone escaped surrogate. polars' regex scans the lines (4× the
    speed of Python's `re` over the bytes); a line with any escaped surrogate is checked exactly."""
    lines = _line_series(data, line_ends)
    if lines is None:
        return _odd_lines_re(data, line_ends, strings, labels)
    pattern = _odd_pattern(strings, labels)
    odd = set(np.flatnonzero(lines.str.contains(pattern).to_numpy()).tolist()) if pattern else set()
    for i in np.flatnonzero(lines.str.contains(r"\\u[dD][89a-fA-F]").to_numpy()).tolist():
        start = int(line_ends[i - 1]) + 1 if i else 0
        if _lone_surrogates(data[start:int(line_ends[i]) + 1]):
            odd.add(i)
    return odd


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
    odd = _odd_lines(data, line_ends, strings, sorted(labels & cols))

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

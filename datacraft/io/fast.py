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

import polars as pl

from datacraft.core.rows import LINEAGE_DTYPE, MESSAGES_DTYPE, conform, text_id, two_turn_messages
from datacraft.io.formats import _ID_KEYS, detect_format

# format → (field that becomes the user turn, field that becomes the answer, optional second user field)
_TEXT_FIELDS = {
    "alpaca": ("instruction", "output", "input"),
    "completion": ("prompt", "completion", None),
}


def convert_chunk(data: bytes, n_lines: int, fmt: str, source: str, task_field: str) -> tuple[pl.DataFrame, list[int]] | None:
    """(kept rows, indices of lines for the per-record path) of `n_lines` JSONL lines, or None when
    the chunk does not fit (then every line takes the per-record path)."""
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
    if any(frame.schema[k] not in (pl.Utf8, pl.Null) for k in text_keys):
        return None
    user = pl.col(user_key).fill_null("")
    answer = pl.col(answer_key).fill_null("")
    given = pl.col(extra_key).fill_null("") if extra_key else pl.lit("")
    has_given = given.str.strip_chars() != ""
    slow = (
        pl.col(user_key).is_null()
        | pl.col(answer_key).is_null()
        | (user.str.strip_chars() == "")
        | (answer.str.strip_chars() == "")
    )
    if "system" in cols:
        slow = slow | pl.col("system").is_not_null()
    frame = frame.with_row_index("_line").with_columns(slow.alias("_slow"))
    slow_idx = frame.filter(pl.col("_slow"))["_line"].to_list()
    frame = frame.filter(~pl.col("_slow"))

    user_text = pl.when(has_given).then(pl.concat_str(user, pl.lit("\n\n"), given)).otherwise(user)
    id_key = next((k for k in _ID_KEYS if k in cols), None)
    extras = [c for c in frame.columns if c not in {*text_keys, "system", task_field, "source", *_ID_KEYS, "_line", "_slow"}]
    meta_fields = [pl.lit(fmt).alias("format")]
    if fmt == "alpaca" and extra_key:
        meta_fields.append(pl.when(has_given).then(given).otherwise(None).alias("input"))
    if fmt == "completion":
        meta_fields.append(pl.lit(True).alias("prompt_is_text"))
    meta_fields += [pl.col(c) for c in extras]
    frame = frame.with_columns(user_text.alias("_user"), answer.alias("_answer"))
    ids = (
        pl.col(id_key).cast(pl.Utf8)
        if id_key
        else pl.concat_str(pl.lit("user\x1f"), pl.col("_user"), pl.lit("\x1eassistant\x1f"), pl.col("_answer")).map_elements(text_id, return_dtype=pl.Utf8)
    )
    if id_key:
        ids = pl.when(pl.col(id_key).is_not_null()).then(ids).otherwise(
            pl.concat_str(pl.lit("user\x1f"), pl.col("_user"), pl.lit("\x1eassistant\x1f"), pl.col("_answer")).map_elements(text_id, return_dtype=pl.Utf8)
        )
    source_expr = pl.col("source").cast(pl.Utf8).fill_null(source) if "source" in cols else pl.lit(source)
    out = frame.select(
        ids.alias("id"),
        pl.lit(None, dtype=MESSAGES_DTYPE).alias("chosen"),
        pl.lit(None, dtype=MESSAGES_DTYPE).alias("rejected"),
        (pl.col(task_field).cast(pl.Utf8) if task_field in cols else pl.lit(None, dtype=pl.Utf8)).alias("task"),
        source_expr.alias("source"),
        pl.struct(pl.lit([], dtype=pl.List(pl.Utf8)).alias("parent_ids"), pl.lit("seed").alias("method")).cast(LINEAGE_DTYPE).alias("lineage"),
        pl.struct(meta_fields).struct.json_encode().alias("meta"),
    )
    out = out.insert_column(1, two_turn_messages(frame["_user"], frame["_answer"]))
    return conform(out), slow_idx

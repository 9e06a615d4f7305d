"""The row schema, ids, lineage and the `Drop` ledger record.

Inside a pipeline a *batch* is a polars DataFrame with these columns (docs/DESIGN.md "The row"):

    id         Utf8                      stable id (source id, content hash, or hash of parents + method)
    messages   List[Struct{role,content}] canonical conversation; for preference rows, the prompt
    chosen     List[Struct{role,content}] preference rows only (null otherwise)
    rejected   List[Struct{role,content}] preference rows only (null otherwise)
    task       Utf8                      mixture label
    source     Utf8                      where the row came from (file name, stage)
    lineage    Struct{parent_ids: List[Utf8], method: Utf8}
    meta       Utf8                      JSON object (free map)
    scores.*   Float64                   one column per score; packed into a `scores` struct on write

Scores are flat columns while a batch travels so that vectorized filters stay cheap
(`pl.col("scores.quality") >= 3`); `to_output_frame` packs them into one `scores` struct.
Dropped rows carry three more columns: `drop_stage`, `drop_reason`, `drop_detail`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

SCORE_PREFIX = "scores."
#: the name of `messages` in written files of preference rows only (TRL's explicit prompt)
PROMPT_COLUMN = "prompt"
MESSAGE_DTYPE = pl.Struct({"role": pl.Utf8, "content": pl.Utf8})
MESSAGES_DTYPE = pl.List(MESSAGE_DTYPE)
LINEAGE_DTYPE = pl.Struct({"parent_ids": pl.List(pl.Utf8), "method": pl.Utf8})

BATCH_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Utf8,
    "messages": MESSAGES_DTYPE,
    "chosen": MESSAGES_DTYPE,
    "rejected": MESSAGES_DTYPE,
    "task": pl.Utf8,
    "source": pl.Utf8,
    "lineage": LINEAGE_DTYPE,
    "meta": pl.Utf8,
}
DROP_COLUMNS: dict[str, pl.DataType] = {"drop_stage": pl.Utf8, "drop_reason": pl.Utf8, "drop_detail": pl.Utf8}

_MESSAGE_PA = pa.struct([("role", pa.string()), ("content", pa.string())])
#: The Arrow schema of a written row (scores packed as a struct of float64, i.e. a name → float map).
ROW_ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(_MESSAGE_PA)),
        ("chosen", pa.list_(_MESSAGE_PA)),
        ("rejected", pa.list_(_MESSAGE_PA)),
        ("task", pa.string()),
        ("source", pa.string()),
        ("lineage", pa.struct([("parent_ids", pa.list_(pa.string())), ("method", pa.string())])),
        ("meta", pa.string()),
    ]
)


@dataclass(frozen=True)
class Drop:
    """Why a row left the pipeline: `reason` is a short category counted in the report,
    `detail` the row-specific explanation (e.g. reason="duplicate", detail="duplicate of 3fa…")."""

    stage: str
    reason: str
    detail: str = ""


# ---------------------------------------------------------------------------------------------
# ids and lineage


def content_hash(*parts: Any, length: int = 16) -> str:
    """A stable hex digest of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=length // 2).hexdigest()


def _render_for_id(messages: Sequence[Mapping[str, str]] | None) -> str:
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages or ())


def text_id(text: str) -> str:
    """The id of a canonical rendering (see `row_id_for`); 16 hex digits of blake2b."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def row_id_for(messages: Sequence[Mapping[str, str]], chosen: Any = None, rejected: Any = None) -> str:
    """Content hash id for an input row without a source id: blake2b of the turns rendered as
    role\x1fcontent joined by \x1e (chosen / rejected appended after \x1d)."""
    text = _render_for_id(messages)
    if chosen is not None or rejected is not None:
        text += "\x1d" + _render_for_id(chosen) + "\x1d" + _render_for_id(rejected)
    return text_id(text)


def derived_id(parent_ids: Sequence[str], method: str, content: str = "") -> str:
    """Id of a synthesized row: hash of its parents, the method and (to tell siblings apart) its text."""
    return content_hash(list(parent_ids), method, content)


def lineage(parent_ids: Sequence[str] = (), method: str = "seed") -> dict[str, Any]:
    return {"parent_ids": list(parent_ids), "method": method}


# ---------------------------------------------------------------------------------------------
# building rows and batches


def make_row(
    messages: Sequence[Mapping[str, str]],
    *,
    id: str | None = None,  # noqa: A002 - the schema's name
    task: str | None = None,
    source: str | None = None,
    parent_ids: Sequence[str] = (),
    method: str = "seed",
    meta: Mapping[str, Any] | None = None,
    scores: Mapping[str, float] | None = None,
    chosen: Sequence[Mapping[str, str]] | None = None,
    rejected: Sequence[Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """A row dict in batch layout (scores flattened to `scores.<name>`)."""
    msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    ch = [{"role": str(m["role"]), "content": str(m["content"])} for m in chosen] if chosen is not None else None
    rj = (
        [{"role": str(m["role"]), "content": str(m["content"])} for m in rejected]
        if rejected is not None
        else None
    )
    row: dict[str, Any] = {
        "id": id or row_id_for(msgs, ch, rj),
        "messages": msgs,
        "chosen": ch,
        "rejected": rj,
        "task": task,
        "source": source,
        "lineage": lineage(parent_ids, method),
        "meta": json.dumps(dict(meta), ensure_ascii=False, default=str) if meta else None,
    }
    for name, value in (scores or {}).items():
        row[SCORE_PREFIX + name] = None if value is None else float(value)
    return row


def empty_batch(extra: Mapping[str, pl.DataType] | None = None) -> pl.DataFrame:
    return pl.DataFrame(schema={**BATCH_SCHEMA, **(extra or {})})


def batch_from_rows(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows in batch layout → a batch with the canonical dtypes (extra columns inferred)."""
    rows = list(rows)
    if not rows:
        return empty_batch()
    extra_keys: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k not in BATCH_SCHEMA:
                extra_keys[k] = None
    schema: dict[str, pl.DataType] = dict(BATCH_SCHEMA)
    for k in extra_keys:
        if k.startswith(SCORE_PREFIX):
            schema[k] = pl.Float64
        elif k in DROP_COLUMNS:
            schema[k] = pl.Utf8
    data = {k: [r.get(k) for r in rows] for k in list(BATCH_SCHEMA) + list(extra_keys)}
    return pl.DataFrame(data, schema_overrides=schema, strict=False)


def two_turn_messages(user: pl.Series, answer: pl.Series) -> pl.Series:
    """`messages` [user, assistant] per row, built by interleaving the two columns and cutting the
    result into rows of two (~6× faster than `concat_list` of two struct columns)."""
    n = len(user)
    if n == 0:
        return pl.Series("messages", [], dtype=MESSAGES_DTYPE)
    order = np.empty(2 * n, dtype=np.int64)
    order[0::2] = np.arange(n)
    order[1::2] = np.arange(n, 2 * n)
    contents = pl.concat([user.cast(pl.Utf8), answer.cast(pl.Utf8)]).gather(order)
    roles = pl.Series(["user", "assistant"], dtype=pl.Utf8).gather(np.tile(np.array([0, 1]), n))
    turns = pl.DataFrame({"role": roles, "content": contents}).to_struct("turn")
    return turns.reshape((n, 2)).arr.to_list().cast(MESSAGES_DTYPE).alias("messages")


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """Add missing canonical columns (null) and cast them to the canonical dtypes; keep extras."""
    missing = [pl.lit(None, dtype=dt).alias(name) for name, dt in BATCH_SCHEMA.items() if name not in df.columns]
    if missing:
        df = df.with_columns(missing)
    casts = [pl.col(n).cast(dt) for n, dt in BATCH_SCHEMA.items() if df.schema[n] != dt]
    if casts:
        df = df.with_columns(casts)
    rest = [c for c in df.columns if c not in BATCH_SCHEMA]
    return df.select([*BATCH_SCHEMA, *rest])


def concat_batches(batches: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate batches whose score / extra columns may differ (missing ones become null)."""
    batches = [b for b in batches if b is not None]
    if not batches:
        return empty_batch()
    if len(batches) == 1:
        return batches[0]
    return pl.concat([conform(b) for b in batches], how="diagonal_relaxed")


def canonical_order(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows sorted by id, ties (a repeated id) by a hash of the whole row: one order for one set of rows."""
    if frame.height < 2 or "id" not in frame.columns:
        return frame
    return frame.with_columns(frame.hash_rows(seed=0).alias("_row_hash")).sort(["id", "_row_hash"]).drop("_row_hash")


def score_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(SCORE_PREFIX)]


def with_drop(df: pl.DataFrame, stage: str, reason: str | pl.Expr, detail: str | pl.Expr = "") -> pl.DataFrame:
    """Mark every row of `df` as dropped by `stage` (reason / detail may be per-row expressions)."""
    as_expr = lambda v: v if isinstance(v, pl.Expr) else pl.lit(v, dtype=pl.Utf8)  # noqa: E731
    return df.with_columns(
        pl.lit(stage, dtype=pl.Utf8).alias("drop_stage"),
        as_expr(reason).cast(pl.Utf8).alias("drop_reason"),
        as_expr(detail).cast(pl.Utf8).alias("drop_detail"),
    )


def set_scores(df: pl.DataFrame, scores: Mapping[str, Any]) -> pl.DataFrame:
    """Add or replace score columns from expressions, Series or sequences."""
    cols = []
    for name, value in scores.items():
        if isinstance(value, pl.Expr):
            cols.append(value.cast(pl.Float64).alias(SCORE_PREFIX + name))
        else:
            cols.append(pl.Series(SCORE_PREFIX + name, value, dtype=pl.Float64, strict=False))
    return df.with_columns(cols)


def update_meta(df: pl.DataFrame, values: Sequence[Mapping[str, Any] | None]) -> pl.DataFrame:
    """Merge per-row dicts into the JSON `meta` column."""
    merged = []
    for old, new in zip(df["meta"].to_list(), values, strict=True):
        base = json.loads(old) if old else {}
        if new:
            base.update(new)
        merged.append(json.dumps(base, ensure_ascii=False, default=str) if base else None)
    return df.with_columns(pl.Series("meta", merged, dtype=pl.Utf8))


def meta_of(value: str | None) -> dict[str, Any]:
    return json.loads(value) if value else {}


# ---------------------------------------------------------------------------------------------
# text views (vectorized expressions every stage can use)


def _role_contents(col: str, role: str) -> pl.Expr:
    return pl.col(col).list.eval(
        pl.element().filter(pl.element().struct.field("role") == role).struct.field("content")
    )


def instruction_expr() -> pl.Expr:
    """The first user turn (Alpaca: instruction + input)."""
    return _role_contents("messages", "user").list.first().fill_null("")


def system_expr() -> pl.Expr:
    return _role_contents("messages", "system").list.first().fill_null("")


def response_expr() -> pl.Expr:
    """The last assistant turn; for preference rows the chosen answer."""
    own = _role_contents("messages", "assistant").list.last()
    chosen = _role_contents("chosen", "assistant").list.last()
    return pl.coalesce(chosen, own).fill_null("")


def conversation_expr() -> pl.Expr:
    """All turns rendered as `role: content` lines (preference rows include the chosen answer)."""
    render = lambda col: pl.col(col).list.eval(  # noqa: E731
        pl.concat_str(pl.element().struct.field("role"), pl.lit(": "), pl.element().struct.field("content"))
    ).list.join("\n")
    return pl.concat_str(render("messages").fill_null(""), render("chosen").fill_null(""), separator="\n").str.strip_chars()


TEXT_VIEWS = ("instruction", "response", "conversation", "instruction_response")


def text_expr(view: str) -> pl.Expr:
    """Text of a row for hashing / embedding / scoring, by name (one of TEXT_VIEWS)."""
    if view == "instruction":
        return instruction_expr()
    if view == "response":
        return response_expr()
    if view == "conversation":
        return conversation_expr()
    if view == "instruction_response":
        return pl.concat_str(instruction_expr(), response_expr(), separator="\n\n")
    raise ValueError(f"unknown text view {view!r}; expected one of {TEXT_VIEWS}")


def is_preference_expr() -> pl.Expr:
    return pl.col("chosen").is_not_null() & pl.col("rejected").is_not_null()


# ---------------------------------------------------------------------------------------------
# output layout


def to_output_frame(df: pl.DataFrame, keep_embedding: bool = False) -> pl.DataFrame:
    """Batch layout → written layout: `scores.*` packed into a `scores` struct; private columns removed.

    TRL-ready: a frame of SFT rows only leaves out `chosen` / `rejected` (all null: TRL's SFTTrainer
    takes such a column for the conversation), and a frame of preference rows only names its
    prompt `prompt` (TRL's explicit-prompt preference format) instead of `messages`. Mixed frames
    keep both, as before; `from_output_frame` reads every variant back."""
    df = conform(df)
    cols = score_columns(df)
    private = [c for c in df.columns if c.startswith("_") or (c == "embedding" and not keep_embedding)]
    out = df.drop(private)
    if out.height:
        no_pref = out["chosen"].null_count() == out.height and out["rejected"].null_count() == out.height
        all_pref = out["chosen"].null_count() == 0 and out["rejected"].null_count() == 0
        if no_pref:
            out = out.drop("chosen", "rejected")
        elif all_pref:
            out = out.rename({"messages": PROMPT_COLUMN})
    if cols:
        out = out.with_columns(
            pl.struct([pl.col(c).fill_nan(None).alias(c[len(SCORE_PREFIX) :]) for c in cols]).alias("scores")
        ).drop(cols)
    return out


def from_output_frame(df: pl.DataFrame) -> pl.DataFrame:
    """Written layout → batch layout (the inverse of `to_output_frame`)."""
    if PROMPT_COLUMN in df.columns and "messages" not in df.columns:
        df = df.rename({PROMPT_COLUMN: "messages"})
    if "scores" in df.columns and isinstance(df.schema["scores"], pl.Struct):
        fields = [f.name for f in df.schema["scores"].fields]
        df = df.with_columns(
            [pl.col("scores").struct.field(f).cast(pl.Float64).alias(SCORE_PREFIX + f) for f in fields]
        ).drop("scores")
    return conform(df)


def is_written_layout(columns: Iterable[str]) -> bool:
    """Whether these columns are datacraft's written layout (SFT rows, preference rows or both)."""
    names = set(columns)
    return {"id", "lineage"} <= names and ("messages" in names or {PROMPT_COLUMN, "chosen", "rejected"} <= names)


def written_messages(row: Mapping[str, Any]) -> Any:
    """A written row's conversation (its prompt, for a file of preference rows only)."""
    return row.get("messages") if row.get("messages") is not None else row.get(PROMPT_COLUMN)


def row_to_output(row: Mapping[str, Any]) -> dict[str, Any]:
    """One batch-layout row dict → written layout (scores packed, meta parsed)."""
    out = {k: v for k, v in row.items() if not k.startswith(SCORE_PREFIX) and not k.startswith("_")}
    scores = {k[len(SCORE_PREFIX) :]: v for k, v in row.items() if k.startswith(SCORE_PREFIX) and v is not None}
    if scores:
        out["scores"] = scores
    if isinstance(out.get("meta"), str):
        out["meta"] = json.loads(out["meta"])
    return out

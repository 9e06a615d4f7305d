"""Export curated rows to TRL's dataset formats as Hub-layout Parquet shards, with decontamination.

* SFT rows → conversational `messages` (or `prompt`/`completion` message lists); preference rows
  given to SFT become `messages + chosen`.
* DPO rows → `prompt`/`chosen`/`rejected` message lists (TRL's explicit-prompt preference format).
  Pairs with an empty prompt, an empty chosen or rejected answer, or chosen == rejected are dropped
  with a reason before training.
* Shards are written as `<folder>/<config>/<split>-SSSSS-of-NNNNN.parquet` (what
  `Dataset.push_to_hub` writes), with an optional seeded train/test split.
* Decontamination drops rows whose text overlaps a user-given eval set by word n-grams
  (`decontaminate_frame`, also the registered stage `decontaminate`) and reports what it removed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from datacraft.core.rows import (
    SCORE_PREFIX,
    concat_batches,
    empty_batch,
    is_preference_expr,
)
from datacraft.core.stage import split_kept
from datacraft.io.writers import shard_name, write_jsonl
from datacraft.stages.handoff.decontaminate import (
    DecontaminateParams,
    DecontaminateStage,
)

EXPORT_STAGE = "export"
Kind = Literal["sft", "dpo"]
#: the columns TRL reads, per kind and SFT style
TRL_COLUMNS: dict[str, list[str]] = {
    "messages": ["messages"],
    "prompt_completion": ["prompt", "completion"],
    "dpo": ["prompt", "chosen", "rejected"],
}
def trl_columns(columns: Sequence[str]) -> list[str]:
    """The columns TRL reads among written ones (the rest, id / task / source / scores, ride along)."""
    known = {c for cols in TRL_COLUMNS.values() for c in cols}
    return [c for c in columns if c in known]


#: extra columns kept next to the TRL columns (those present in the frame)
DEFAULT_KEEP = ("id", "task", "source", "scores")


# ---------------------------------------------------------------------------------------------
# format conversion


def _content_of(col: str) -> pl.Expr:
    """All turn contents of a message-list column joined (empty string when null)."""
    return pl.col(col).list.eval(pl.element().struct.field("content")).list.join("\n").fill_null("")


def _role_is(col: str, idx: int, role: str) -> pl.Expr:
    return pl.col(col).list.get(idx, null_on_oob=True).struct.field("role").fill_null("") == role


def _pack_scores(frame: pl.DataFrame) -> pl.DataFrame:
    cols = [c for c in frame.columns if c.startswith(SCORE_PREFIX)]
    if not cols:
        return frame
    packed = pl.struct([pl.col(c).alias(c[len(SCORE_PREFIX) :]) for c in cols]).alias("scores")
    return frame.with_columns(packed).drop(cols)


def _select_output(frame: pl.DataFrame, trl_cols: Sequence[str], keep: Sequence[str]) -> pl.DataFrame:
    frame = _pack_scores(frame)
    extra = [c for c in keep if c in frame.columns and c not in trl_cols]
    front = [c for c in extra if c == "id"]
    return frame.select([*front, *trl_cols, *[c for c in extra if c != "id"]])


def to_sft(
    batch: pl.DataFrame, style: Literal["messages", "prompt_completion"] = "messages", keep: Sequence[str] = DEFAULT_KEEP
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Batch rows → TRL SFT rows (kept) and rows without an answer (dropped, reason `no_response`).

    Reads `messages`, `chosen`; writes `messages` or `prompt`/`completion` (conversational lists).
    """
    if batch.height == 0:
        return _select_output(batch, TRL_COLUMNS[style], keep).clear(), empty_batch()
    conv = batch.with_columns(
        pl.when(is_preference_expr())
        .then(pl.concat_list(pl.col("messages"), pl.col("chosen")))
        .otherwise(pl.col("messages"))
        .alias("messages")
    )
    last = pl.col("messages").list.last()
    ok = (
        (last.struct.field("role") == "assistant")
        & (last.struct.field("content").str.strip_chars().str.len_chars() > 0)
        & (pl.col("messages").list.len() >= 2)
    ).fill_null(False)
    res = split_kept(EXPORT_STAGE, conv, ok, "no_response", "no non-empty assistant turn after a user turn")
    kept = res.kept
    if style == "prompt_completion":
        kept = kept.with_columns(
            pl.col("messages").list.slice(0, pl.col("messages").list.len() - 1).alias("prompt"),
            pl.col("messages").list.slice(-1, 1).alias("completion"),
        )
    dropped = res.dropped if res.dropped is not None else empty_batch()
    return _select_output(kept, TRL_COLUMNS[style], keep), dropped


def to_dpo(batch: pl.DataFrame, keep: Sequence[str] = DEFAULT_KEEP) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Batch rows → TRL preference rows `prompt`/`chosen`/`rejected` (message lists) and invalid pairs.

    Drop reasons: `not_preference` (no chosen/rejected), `empty_prompt`, `empty_chosen`,
    `empty_rejected`, `chosen_equals_rejected`.
    """
    if batch.height == 0:
        return _select_output(batch.rename({"messages": "prompt"}), TRL_COLUMNS["dpo"], keep).clear(), empty_batch()
    chosen, rejected = _content_of("chosen").str.strip_chars(), _content_of("rejected").str.strip_chars()
    prompt = _content_of("messages").str.strip_chars()
    checks: list[tuple[str, pl.Expr, str]] = [
        ("not_preference", is_preference_expr(), "row has no chosen/rejected pair"),
        ("empty_prompt", prompt.str.len_chars() > 0, "prompt is empty"),
        ("empty_chosen", chosen.str.len_chars() > 0, "chosen answer is empty"),
        ("empty_rejected", rejected.str.len_chars() > 0, "rejected answer is empty"),
        ("chosen_equals_rejected", chosen != rejected, "chosen and rejected answers are identical"),
    ]
    kept, drops = batch, []
    for reason, expr, detail in checks:
        res = split_kept(EXPORT_STAGE, kept, expr, reason, detail)
        kept = res.kept
        if res.dropped is not None and res.dropped.height:
            drops.append(res.dropped)
    # the prompt must end on a user turn for TRL; a trailing assistant turn belongs to the answers
    kept = kept.rename({"messages": "prompt"})
    return _select_output(kept, TRL_COLUMNS["dpo"], keep), concat_batches(drops) if drops else empty_batch()


def detect_kinds(batch: pl.DataFrame) -> list[Kind]:
    """The kinds of rows present: `sft` for plain conversations, `dpo` for preference rows."""
    if batch.height == 0:
        return ["sft"]
    n_pref = batch.select(is_preference_expr().sum()).item()
    kinds: list[Kind] = []
    if n_pref < batch.height:
        kinds.append("sft")
    if n_pref:
        kinds.append("dpo")
    return kinds


def convert(
    batch: pl.DataFrame,
    kind: Kind,
    sft_style: Literal["messages", "prompt_completion"] = "messages",
    keep: Sequence[str] = DEFAULT_KEEP,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`to_sft` or `to_dpo` by kind."""
    if kind == "sft":
        return to_sft(batch, sft_style, keep)
    if kind == "dpo":
        return to_dpo(batch, keep)
    raise ValueError(f"unknown export kind {kind!r}; expected 'sft' or 'dpo'")


# ---------------------------------------------------------------------------------------------
# splits and Hub-layout shards


def split_frame(frame: pl.DataFrame, test_size: float | int | None, seed: int = 0) -> dict[str, pl.DataFrame]:
    """{"train": …} or {"train", "test"} by a seeded permutation; `test_size` is a fraction (< 1) or a count."""
    if not test_size:
        return {"train": frame}
    n = frame.height
    n_test = int(round(test_size * n)) if test_size < 1 else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size} leaves no train or no test rows out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return {"train": frame[train_idx.tolist()], "test": frame[test_idx.tolist()]}


def shard_paths(config: str, split: str, n_shards: int) -> list[str]:
    """Relative paths `<config>/<split>-SSSSS-of-NNNNN.parquet` (the Hub / push_to_hub naming)."""
    return [f"{config}/{shard_name(split, i, n_shards, 'parquet')}" for i in range(n_shards)]


def write_shards(frame: pl.DataFrame, folder: str | Path, config: str, split: str, shard_rows: int = 100_000) -> list[str]:
    """Write one split of one config as Parquet shards; returns the relative paths written."""
    n_shards = max(1, math.ceil(frame.height / shard_rows))
    paths = shard_paths(config, split, n_shards)
    (Path(folder) / config).mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(paths):
        frame.slice(i * shard_rows, shard_rows).write_parquet(Path(folder) / rel)
    return paths


# ---------------------------------------------------------------------------------------------
# one call: run-folder rows → TRL shards


@dataclass
class ExportResult:
    """What `export_frame` wrote: relative shard paths per config and split, row counts, drops."""

    folder: Path
    files: dict[str, dict[str, list[str]]]
    rows: dict[str, dict[str, int]]
    columns: dict[str, list[str]]
    dropped: pl.DataFrame
    decontamination: dict[str, Any] = field(default_factory=dict)

    def drop_counts(self) -> dict[str, int]:
        if self.dropped.height == 0:
            return {}
        return dict(Counter(self.dropped["drop_reason"].to_list()))

    def summary(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "files": self.files,
            "rows": self.rows,
            "dropped": self.drop_counts(),
            "decontamination": {k: v for k, v in self.decontamination.items() if k != "matches"},
        }


def export_frame(
    batch: pl.DataFrame,
    folder: str | Path,
    *,
    kinds: Sequence[Kind] | None = None,
    sft_style: Literal["messages", "prompt_completion"] = "messages",
    config_names: dict[str, str] | None = None,
    test_size: float | int | None = None,
    seed: int = 0,
    shard_rows: int = 100_000,
    keep: Sequence[str] = DEFAULT_KEEP,
    decontaminate: DecontaminateParams | dict[str, Any] | None = None,
) -> ExportResult:
    """Decontaminate (optional), convert to TRL formats, split, and write Hub-layout shards.

    With `kinds=None` the kinds present are exported: plain rows as config `sft`, preference rows as
    config `dpo` (names can be changed with `config_names`).
    """
    folder = Path(folder)
    drops: list[pl.DataFrame] = []
    report: dict[str, Any] = {}
    if decontaminate is not None:
        stage = DecontaminateStage(decontaminate)
        kept, dropped, stats = stage.run_local([batch])
        batch = kept
        drops.append(dropped)
        report = stats[0].extras.get("decontamination", {}) if stats else {}
        report["removed"] = dropped.height
    kinds = list(kinds or detect_kinds(batch))
    files: dict[str, dict[str, list[str]]] = {}
    rows: dict[str, dict[str, int]] = {}
    columns: dict[str, list[str]] = {}
    pref = batch.select(is_preference_expr().alias("_p"))["_p"]
    for kind in kinds:
        part = batch if len(kinds) == 1 else batch.filter(pref if kind == "dpo" else ~pref)
        out, dropped = convert(part, kind, sft_style, keep)
        drops.append(dropped)
        config = (config_names or {}).get(kind, kind)
        splits = split_frame(out, test_size, seed)
        files[config] = {s: write_shards(f, folder, config, s, shard_rows) for s, f in splits.items()}
        rows[config] = {s: f.height for s, f in splits.items()}
        columns[config] = list(out.columns)
    return ExportResult(folder, files, rows, columns, concat_batches([d for d in drops if d.height]) if any(d.height for d in drops) else empty_batch(), report)


def write_dropped_jsonl(dropped: pl.DataFrame, path: str | Path) -> None:
    """Dropped rows (with drop_stage/drop_reason/drop_detail) as JSONL."""
    from datacraft.core.rows import to_output_frame

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, to_output_frame(dropped).iter_rows(named=True))


__all__ = [
    "DecontaminateParams",
    "ExportResult",
    "convert",
    "detect_kinds",
    "export_frame",
    "split_frame",
    "to_dpo",
    "to_sft",
    "write_shards",
]

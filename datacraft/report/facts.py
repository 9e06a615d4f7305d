"""The facts `report.html` shows, collected from a finished run folder in one streaming pass.

Reads `report.json` (the ledger: stages in pipeline order with in / kept / created / dropped by reason,
seconds, counters, extras), `config.yaml`, the kept rows (columns `id`, `scores`, `embedding`) and the
dropped rows (plus `drop_stage`, `drop_reason`, `drop_detail`, `messages` for examples), file by file:
scores are read column-wise, and only the few rows the page shows become Python dicts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from datacraft.core.ledger import LedgerEntry
from datacraft.core.rows import PROMPT_COLUMN, SCORE_PREFIX
from datacraft.core.run_folder import (
    KEPT,
    REPORT_JSON,
    RunFolder,
    iter_jsonl,
    iter_row_chunks,
    row_scores,
    row_texts,
    truncate,
)

EXAMPLES_PER_REASON = 3
MAX_POINTS = 3000
MAX_SCORE_VALUES = 2_000_000
MAX_ROWS_PER_ROW_PATH = 20_000
_ROW_COLUMNS = ["id", "scores", "embedding", "messages", PROMPT_COLUMN, "chosen", "meta", "drop_stage", "drop_reason", "drop_detail"]


@dataclass
class RunFacts:
    """What the page shows, gathered in one pass over the run's files."""

    report: dict[str, Any]
    config_text: str | None
    scores_all: dict[str, np.ndarray] = field(default_factory=dict)
    scores_kept: dict[str, np.ndarray] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    points: list[tuple[np.ndarray, str]] = field(default_factory=list)
    previews: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    rows_written: int = 0
    rows_dropped_files: int = 0
    output_files: int = 0

    @property
    def rows_in(self) -> int:
        """Rows read: the report's `rows_in`, else the first stage's `in`."""
        return int(self.report.get("rows_in", self.ledger[0].n_in if self.ledger else 0))

    @property
    def rows_out(self) -> int:
        """Rows written: the report's `rows_out`, else the last stage's `kept`."""
        return int(self.report.get("rows_out", self.ledger[-1].kept if self.ledger else 0))


def _referenced_ids(report: Mapping[str, Any]) -> set[str]:
    """Ids named in stage extras examples (keys ending in `_id` / `_ids`, or `id`/`ids`)."""
    out: set[str] = set()
    for stage in report.get("stages", []):
        for ex in (stage.get("extras") or {}).get("examples") or []:
            if not isinstance(ex, Mapping):
                continue
            for k, v in ex.items():
                if k in ("id", "ids") or k.endswith(("_id", "_ids")):
                    vals = v if isinstance(v, list) else [v]
                    out.update(str(x) for x in vals if isinstance(x, str | int))
    return out


class _Collector:
    """Folds row files into `RunFacts`. Parquet and JSONL files are read column-wise by polars (scores,
    ids, drop reasons); only the few rows shown (examples, sampled embeddings, rows named in extras)
    are turned into Python dicts. JSONL that polars cannot read falls back to a per-row pass."""

    def __init__(self, facts: RunFacts, expected_rows: int, wanted_ids: set[str], seed: int = 0) -> None:
        self.facts = facts
        self.fraction = min(1.0, MAX_POINTS / max(1, expected_rows))
        self.wanted = wanted_ids
        self.rng = random.Random(seed)
        self.chunks_all: dict[str, list[np.ndarray]] = {}
        self.chunks_kept: dict[str, list[np.ndarray]] = {}
        self.n_all: dict[str, int] = {}
        self.n_kept: dict[str, int] = {}

    def add_scores(self, name: str, values: Sequence[float] | np.ndarray, kept: bool) -> None:
        arr = np.asarray([np.nan if v is None else v for v in values] if isinstance(values, list) else values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        for target, counts in ((self.chunks_all, self.n_all), *(((self.chunks_kept, self.n_kept),) if kept else ())):
            room = MAX_SCORE_VALUES - counts.get(name, 0)
            if room > 0 and arr.size:
                target.setdefault(name, []).append(arr[:room])
                counts[name] = counts.get(name, 0) + min(room, arr.size)

    def finish(self) -> None:
        """Concatenate the score chunks into one array per score."""
        self.facts.scores_all = {k: np.concatenate(v) for k, v in self.chunks_all.items()}
        self.facts.scores_kept = {k: np.concatenate(v) for k, v in self.chunks_kept.items()}

    def add_row(self, row: Mapping[str, Any], status: str, sampled: bool | None = None) -> None:
        """One row in written layout (the per-row path): scores, example, embedding, preview."""
        if sampled is None:
            for name, value in row_scores(row).items():
                self.add_scores(name, [value], status == KEPT)
            sampled = self.rng.random() < self.fraction
        self._show(row, status, sampled)

    def _show(self, row: Mapping[str, Any], status: str, sampled: bool) -> None:
        emb = row.get("embedding")
        if sampled and emb is not None and len(emb):
            label = KEPT if status == KEPT else str(row.get("drop_stage") or "dropped")
            self.facts.points.append((np.asarray(emb, dtype=np.float32), label))
        if status != KEPT:
            bucket = self.facts.examples.setdefault((str(row.get("drop_stage")), str(row.get("drop_reason"))), [])
            if len(bucket) < EXAMPLES_PER_REASON:
                bucket.append(self._preview(row, status))
        rid = str(row.get("id"))
        if rid in self.wanted and rid not in self.facts.previews:
            self.facts.previews[rid] = self._preview(row, status)

    @staticmethod
    def _preview(row: Mapping[str, Any], status: str) -> dict[str, Any]:
        instruction, response = row_texts(row)
        return {
            "id": row.get("id"),
            "status": status,
            "instruction": truncate(instruction, 320),
            "response": truncate(response, 320),
            "detail": row.get("drop_detail"),
            "stage": row.get("drop_stage"),
        }

    def _columns(self, df: pl.DataFrame, status: str) -> list[int]:
        """Scores of a frame (id, scores struct, drop_*), and the row indices worth reading whole."""
        self._add_frame_scores(df, status)
        return self.picks(df, status, self.wanted)

    def _add_frame_scores(self, df: pl.DataFrame, status: str) -> None:
        if "scores" in df.columns and isinstance(df.schema["scores"], pl.Struct):
            for f in df.schema["scores"].fields:
                self.add_scores(f.name, df["scores"].struct.field(f.name).cast(pl.Float64).fill_null(np.nan).to_numpy(), status == KEPT)

    @staticmethod
    def picks(df: pl.DataFrame, status: str, wanted: set[str]) -> list[int]:
        """The row indices of a frame worth reading whole: each drop reason's first examples and
        the rows named in stage extras (`wanted`)."""
        idx = df.with_row_index("_i")
        picks: set[int] = set()
        if status != KEPT and {"drop_stage", "drop_reason"} <= set(df.columns):
            picks.update(idx.group_by("drop_stage", "drop_reason", maintain_order=True).head(EXAMPLES_PER_REASON)["_i"].to_list())
        if "id" in df.columns and wanted:
            picks.update(idx.filter(pl.col("id").cast(pl.Utf8).is_in(sorted(wanted)))
                         .unique("id", keep="first")["_i"].to_list())
        return sorted(picks)

    @staticmethod
    def prefetch(path: str, status: str, wanted: set[str]) -> tuple[tuple[pl.DataFrame, bool] | None, pl.DataFrame | None]:
        """`load_columns`, and for a Parquet file without embeddings (no rows to sample) its picked
        rows too: decoding them is most of a file's cost, and the loader threads do it in parallel."""
        columns = _Collector.load_columns(path)
        if columns is None or not path.endswith(".parquet") or columns[1]:
            return columns, None
        return columns, _read_parquet_rows(path, _Collector.picks(columns[0], status, wanted))

    def _sample(self, n: int) -> set[int]:
        return {i for i in range(n) if self.rng.random() < self.fraction} if self.fraction < 1 else set(range(n))

    @staticmethod
    def load_columns(path: str) -> tuple[pl.DataFrame, bool] | None:
        """The cheap columns of a file (id, scores, drop stage / reason), read by polars, and whether
        its rows carry embeddings; None for JSONL that polars cannot read (the per-row path takes
        it). Touches no collector state, so files load in parallel."""
        if path.endswith(".parquet"):
            names = pl.scan_parquet(path).collect_schema().names()
            cheap = [c for c in ("id", "scores", "drop_stage", "drop_reason") if c in names]
            if cheap:
                return pl.scan_parquet(path).select(cheap).collect(), "embedding" in names
            return pl.DataFrame({"_n": [0] * pl.scan_parquet(path).select(pl.len()).collect().item()}), "embedding" in names
        head = next(iter_row_chunks(path, chunk_rows=1000), [])
        if not head or any(k.startswith(SCORE_PREFIX) for rec in head[:50] for k in rec):
            return None
        keys = list(dict.fromkeys(k for rec in head if isinstance(rec.get("scores"), Mapping) for k in rec["scores"]))
        schema: dict[str, Any] = {"id": pl.Utf8, "drop_stage": pl.Utf8, "drop_reason": pl.Utf8}
        if keys:
            schema["scores"] = pl.Struct({k: pl.Float64 for k in keys})
        try:
            return pl.scan_ndjson(path, schema=schema).collect(), any("embedding" in rec for rec in head)
        except Exception:  # noqa: BLE001 - any polars parse problem: use the per-row path
            return None

    def add_file(self, path: str, status: str, columns: tuple[pl.DataFrame, bool] | None = None, rows: pl.DataFrame | None = None) -> int:
        """Stream one file into the facts (`columns` / `rows`: its `prefetch`, when already loaded);
        returns its number of rows."""
        if columns is None:
            columns = self.load_columns(path)
        if columns is not None:
            df, has_embedding = columns
            if path.endswith(".parquet"):
                return self._add_parquet(path, status, df, has_embedding, rows)
            return self._add_jsonl_columnar(path, status, df, has_embedding)
        n = 0
        for chunk in iter_row_chunks(path, _ROW_COLUMNS):
            if n < MAX_ROWS_PER_ROW_PATH:  # past that, only count: the per-row path is for odd files
                for row in chunk:
                    self.add_row(row, status)
            n += len(chunk)
        return n

    def _add_parquet(self, path: str, status: str, df: pl.DataFrame, has_embedding: bool, rows: pl.DataFrame | None = None) -> int:
        if rows is not None:  # prefetched: picked by the loader, nothing to sample
            self._add_frame_scores(df, status)
            frame, sampled = rows, set()
        else:
            picks = set(self._columns(df, status))
            sampled = self._sample(df.height) if has_embedding else set()
            frame = _read_parquet_rows(path, sorted(picks | sampled))
        for row in frame.iter_rows(named=True):
            self._show(row, status, row["_i"] in sampled)
        return df.height

    def _add_jsonl_columnar(self, path: str, status: str, df: pl.DataFrame, has_embedding: bool) -> int:
        """JSONL whose cheap columns polars read; whole rows are parsed only for the few shown."""
        picks = set(self._columns(df, status))
        sampled = self._sample(df.height) if has_embedding else set()
        wanted = picks | sampled
        if wanted:
            last = max(wanted)
            for i, (_n, line) in enumerate(iter_jsonl(path)):
                if i > last:
                    break
                if i in wanted:
                    rec = json.loads(line)
                    if i in picks and str(rec.get("id")) != df["id"][i]:
                        continue  # line numbering differs from polars' (odd blank lines): skip rather than mislabel
                    self._show(rec, status, i in sampled)
                    wanted.discard(i)
                    if not wanted:
                        break
        return df.height


def _read_parquet_rows(path: str, rows: list[int]) -> pl.DataFrame:
    """Rows `rows` of a Parquet file (the columns a preview reads) with their index `_i`."""
    if not rows:
        return pl.DataFrame(schema={"_i": pl.UInt32})
    lf = pl.scan_parquet(path)
    names = lf.collect_schema().names()
    cols = [c for c in _ROW_COLUMNS if c in names]
    return lf.with_row_index("_i").filter(pl.col("_i").is_in(rows)).select(["_i", *cols]).collect()


def collect_facts(run_dir: str) -> RunFacts:
    """Read a run folder once: report, config, scores, dropped examples, embedding sample."""
    run = RunFolder(run_dir)
    report = run.report
    if not report:
        raise FileNotFoundError(f"{run_dir}: no {REPORT_JSON} (is this a finished run folder?)")
    ledger = [LedgerEntry.from_dict(s) for s in report.get("stages", [])]
    facts = RunFacts(report=report, config_text=run.config_text, ledger=ledger)
    expected = (ledger[-1].kept if ledger else 0) + sum(e.n_dropped for e in ledger)
    col = _Collector(facts, expected, _referenced_ids(report), seed=0)
    files = list(run.files())
    with ThreadPoolExecutor(2) as pool:  # polars reads the next files while this one is folded in
        loads = [pool.submit(_Collector.prefetch, path, status, col.wanted) for status, path in files]
        for (status, path), load in zip(files, loads, strict=True):
            n = col.add_file(path, status, *load.result())
            if status == KEPT:
                facts.rows_written += n
                facts.output_files += 1
            else:
                facts.rows_dropped_files += n
    col.finish()
    return facts

def stage_balance(stage: Mapping[str, Any] | LedgerEntry) -> tuple[bool, int, int]:
    """(balanced, in + created, kept + dropped) of one stage, balanced by the ledger's own check."""
    entry = stage if isinstance(stage, LedgerEntry) else LedgerEntry.from_dict(stage)
    return not entry.problems(), entry.n_in + entry.created, entry.kept + entry.n_dropped

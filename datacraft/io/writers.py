"""Writers: sharded Parquet (`<split>-SSSSS-of-NNNNN.parquet`), JSONL, `datasets` folders.

Inside Beam each batch is first written as a part file named by the hash of its ids (so the
result does not depend on the runner's order), then one finalizing step merges the parts into
shards of `shard_rows` rows in part-name order. Rows can be written in datacraft's layout or back
in the user's own format (`row_format: keep`, or a format name).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field

from datacraft.io.formats import from_row
from datacraft.records import content_hash, meta_of, to_output_frame
from datacraft.stages.base import RowStage, StageParams, StageResult


def to_written(batch: pl.DataFrame, row_format: str = "datacraft", keep_embedding: bool = False) -> pl.DataFrame | list[dict[str, Any]]:
    """A batch in the layout it is written in: a frame (datacraft layout) or records (user format)."""
    if row_format == "datacraft":
        return to_output_frame(batch, keep_embedding=keep_embedding)
    records = []
    for row in batch.iter_rows(named=True):
        fmt = row_format if row_format != "keep" else (meta_of(row.get("meta")).get("format") or "messages")
        records.append(from_row(row, fmt))
    return records


def write_part(batch: pl.DataFrame, folder: str, file_format: str, row_format: str = "datacraft", keep_embedding: bool = False) -> tuple[str, int]:
    """Write one batch as a part file named by its content; returns (path, rows)."""
    os.makedirs(folder, exist_ok=True)
    name = content_hash(batch["id"].to_list(), length=24)
    data = to_written(batch, row_format, keep_embedding)
    if file_format == "jsonl":
        path = os.path.join(folder, f"{name}.jsonl")
        if isinstance(data, pl.DataFrame):  # datacraft layout: `meta` stays a JSON string
            data.write_ndjson(path + ".tmp")
            os.replace(path + ".tmp", path)
        else:
            _write_jsonl(path, data)
    else:
        path = os.path.join(folder, f"{name}.parquet")
        frame = data if isinstance(data, pl.DataFrame) else pl.DataFrame(data, infer_schema_length=None)
        frame.write_parquet(path + ".tmp")
        os.replace(path + ".tmp", path)
    return path, batch.height


def _write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def _iter_part_frames(parts: list[str]) -> Iterator[pl.DataFrame]:
    for part in parts:
        if part.endswith(".parquet"):
            yield pl.read_parquet(part)
        else:
            yield pl.read_ndjson(part, infer_schema_length=None)


def merge_parts(parts: list[str], target: str, prefix: str, file_format: str, shard_rows: int) -> list[str]:
    """Merge part files (sorted by name) into `<prefix>-SSSSS-of-NNNNN.<ext>` shards under `target`."""
    os.makedirs(target, exist_ok=True)
    parts = sorted(parts, key=os.path.basename)
    ext = "jsonl" if file_format == "jsonl" else "parquet"
    if file_format == "jsonl":
        counts = [sum(1 for _ in open(p, "rb")) for p in parts]
    else:
        import pyarrow.parquet as pq

        counts = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    total = sum(counts)
    n_shards = max(1, -(-total // shard_rows))
    names = [os.path.join(target, f"{prefix}-{i:05d}-of-{n_shards:05d}.{ext}") for i in range(n_shards)]
    if file_format == "jsonl":
        shard, written = 0, 0
        out = open(names[0], "w", encoding="utf-8")
        try:
            for part in parts:
                with open(part, encoding="utf-8") as fh:
                    for line in fh:
                        if written >= shard_rows and shard + 1 < n_shards:
                            out.close()
                            shard, written = shard + 1, 0
                            out = open(names[shard], "w", encoding="utf-8")
                        out.write(line)
                        written += 1
        finally:
            out.close()
    else:
        buffer: list[pl.DataFrame] = []
        buffered = 0
        shard = 0
        for frame in _iter_part_frames(parts):
            buffer.append(frame)
            buffered += frame.height
            while buffered >= shard_rows and shard + 1 < n_shards:
                whole = pl.concat(buffer, how="diagonal_relaxed")
                whole.head(shard_rows).write_parquet(names[shard])
                rest = whole.slice(shard_rows)
                buffer, buffered, shard = [rest], rest.height, shard + 1
        if buffer or shard < n_shards:
            whole = pl.concat(buffer, how="diagonal_relaxed") if buffer else pl.DataFrame()
            whole.write_parquet(names[shard])
    for p in parts:
        os.remove(p)
    return names


def to_datasets_folder(parquet_files: list[str], target: str, split: str = "train") -> str:
    """Convert written Parquet shards into a `datasets.save_to_disk` folder."""
    import datasets

    ds = datasets.Dataset.from_parquet(sorted(parquet_files))
    datasets.DatasetDict({split: ds}).save_to_disk(target)
    return target


def prepare_output_dir(path: str, overwrite: bool) -> None:
    """Refuse an existing non-empty output folder unless `overwrite` (then it is cleared)."""
    p = Path(path)
    if p.exists() and any(p.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {path} exists and is not empty; pass --overwrite to replace it")
        cache = p / "cache"
        for child in p.iterdir():
            if child == cache:
                continue  # the LLM / embedding cache survives an overwrite: that is what makes reruns cheap
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    p.mkdir(parents=True, exist_ok=True)


class WriteParams(StageParams):
    path: str = Field(..., description="folder to write a snapshot of the rows at this point")
    format: Literal["parquet", "jsonl"] = "parquet"
    row_format: str = "datacraft"


class WriteStage(RowStage):
    """`write`: writes the rows that reach this point as part files under `path` and passes them on
    (a tee; the run's final output is configured under `output:`). Reads all columns."""

    name = "write"
    Params = WriteParams

    def process(self, batch: pl.DataFrame) -> StageResult:
        p: WriteParams = self.params  # type: ignore[assignment]
        if batch.height:
            write_part(batch, p.path, p.format, p.row_format)
        return StageResult(kept=batch)

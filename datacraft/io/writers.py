"""Writers: sharded Parquet (`<split>-SSSSS-of-NNNNN.parquet`), JSONL, `datasets` folders.

Inside Beam each bundle appends its batches to files of at most `shard_rows` rows
(`ShardWriter`, compressed once, in final form), and one finalizing step renames the files to
shards (`finalize_shards`), as Beam's own file sinks do. `write_part` / `merge_parts` write one
batch per file and merge files into shards (the `write` tee stage, and files whose schemas
differ). Rows can be written in datacraft's layout or back in the user's own format
(`row_format: keep`, or a format name).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl

from datacraft.core.rows import content_hash, empty_batch, meta_of, to_output_frame
from datacraft.io.formats import from_row


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
            write_jsonl(path, data)
    else:
        path = os.path.join(folder, f"{name}.parquet")
        frame = data if isinstance(data, pl.DataFrame) else pl.DataFrame(data, infer_schema_length=None)
        frame.write_parquet(path + ".tmp")
        os.replace(path + ".tmp", path)
    return path, batch.height


class ShardWriter:
    """Appends batches to shard files of at most `shard_rows` rows in `folder`, as they come.

    This is the Beam sink's writer (one per bundle): rows are encoded once, in their final
    compressed form, and a finalizing step only renames the files (`finalize_shards`). Files are
    `<stem>-<n>`: the stem is given (or the hash of the first batch's ids), so their order does
    not depend on the runner.
    Parquet files hold one row group per batch; a batch whose schema differs from the open file's
    starts a new file (the finalizer unifies schemas if it must)."""

    def __init__(
        self, folder: str, file_format: str, row_format: str = "datacraft", keep_embedding: bool = False, shard_rows: int = 200_000, stem: str | None = None
    ) -> None:
        self.folder, self.file_format, self.row_format = folder, file_format, row_format
        self.keep_embedding, self.shard_rows = keep_embedding, shard_rows
        self.path: str | None = None
        self.rows = 0
        self.sink: Any = None
        self.schema: Any = None
        self.files: list[tuple[str, int]] = []
        self.stem = stem  # files are `<stem>-<n>`; default: the hash of the first batch's ids

    def write(self, batch: pl.DataFrame) -> None:
        """Append a batch (split across files when it crosses `shard_rows`)."""
        start = 0
        while start < batch.height:
            if self.path is not None and self.rows >= self.shard_rows:
                self._close_file()
            piece = batch.slice(start, self.shard_rows - self.rows if self.path is not None else self.shard_rows)
            self._append(piece)
            start += piece.height

    def _append(self, batch: pl.DataFrame) -> None:
        data = to_written(batch, self.row_format, self.keep_embedding)
        if self.file_format == "jsonl":
            if self.path is None:
                self._open(batch)
            if isinstance(data, pl.DataFrame):  # datacraft layout: `meta` stays a JSON string
                data.write_ndjson(self.sink)
            else:
                self.sink.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in data).encode("utf-8"))
        else:
            import pyarrow.parquet as pq

            frame = data if isinstance(data, pl.DataFrame) else pl.DataFrame(data, infer_schema_length=None)
            table = frame.to_arrow()
            if self.path is not None and table.schema != self.schema:
                self._close_file()
            if self.path is None:
                self._open(batch)
                self.schema = table.schema
                self.sink = pq.ParquetWriter(self.path + ".tmp", table.schema, compression="zstd")
            self.sink.write_table(table)
        self.rows += batch.height

    def _open(self, batch: pl.DataFrame) -> None:
        os.makedirs(self.folder, exist_ok=True)
        ext = "jsonl" if self.file_format == "jsonl" else "parquet"
        if self.stem is None:
            self.stem = content_hash(batch["id"].to_list(), length=24)
        self.path = os.path.join(self.folder, f"{self.stem}-{len(self.files):05d}.{ext}")
        self.rows = 0
        if self.file_format == "jsonl":
            self.sink = open(self.path + ".tmp", "wb")

    def _close_file(self) -> None:
        assert self.path is not None
        self.sink.close()
        os.replace(self.path + ".tmp", self.path)
        self.files.append((self.path, self.rows))
        self.path, self.sink, self.schema, self.rows = None, None, None, 0

    def close(self) -> list[tuple[str, int]]:
        """Close the open file; returns every file written, as (path, rows)."""
        if self.path is not None:
            self._close_file()
        return self.files


def finalize_shards(files: list[tuple[str, int]], target: str, prefix: str, file_format: str, shard_rows: int, write_empty: bool = True) -> list[str]:
    """Name the written files `<prefix>-SSSSS-of-NNNNN.<ext>` under `target` (in file-name order).
    Files with differing Parquet schemas (a score some batches lack) are merged with unified
    columns instead; an empty output gets one empty shard when `write_empty`."""
    ext = "jsonl" if file_format == "jsonl" else "parquet"
    paths = sorted((p for p, _ in files), key=os.path.basename)
    if not paths:
        if not write_empty:
            return []
        os.makedirs(target, exist_ok=True)
        name = os.path.join(target, shard_name(prefix, 0, 1, ext))
        if ext == "jsonl":
            open(name, "wb").close()
        else:
            to_output_frame(empty_batch()).write_parquet(name)  # no rows, but the columns a reader expects
        return [name]
    if ext == "parquet":
        import pyarrow.parquet as pq

        if len({pq.read_schema(p) for p in paths}) > 1:
            return merge_parts(paths, target, prefix, file_format, shard_rows)
    os.makedirs(target, exist_ok=True)
    names = [os.path.join(target, shard_name(prefix, i, len(paths), ext)) for i in range(len(paths))]
    for path, name in zip(paths, names, strict=True):
        os.replace(path, name)
    return names


def shard_name(prefix: str, index: int, count: int, ext: str) -> str:
    """`<prefix>-SSSSS-of-NNNNN.<ext>`: the Hub / push_to_hub shard naming."""
    return f"{prefix}-{index:05d}-of-{count:05d}.{ext}"


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Rows as JSON lines, written to a temporary name first so a reader never sees half a file."""
    path = str(path)
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
        counts = [_count_lines(p) for p in parts]
    else:
        import pyarrow.parquet as pq

        counts = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    total = sum(counts)
    n_shards = max(1, -(-total // shard_rows))
    names = [os.path.join(target, shard_name(prefix, i, n_shards, ext)) for i in range(n_shards)]
    if file_format == "jsonl":
        shard, written = 0, 0
        out = open(names[0], "wb")
        try:
            for part in parts:
                with open(part, "rb") as fh:
                    for line in fh:
                        if written >= shard_rows and shard + 1 < n_shards:
                            out.close()
                            shard, written = shard + 1, 0
                            out = open(names[shard], "wb")
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


def _count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            count += block.count(b"\n")
    return count


def to_datasets_folder(parquet_files: list[str], target: str, split: str = "train") -> str:
    """Convert written Parquet shards into a `datasets.save_to_disk` folder."""
    import datasets

    ds = datasets.Dataset.from_parquet(sorted(parquet_files))
    datasets.DatasetDict({split: ds}).save_to_disk(target)
    return target

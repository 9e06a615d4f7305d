"""Streaming readers: JSONL (plain / .gz), Parquet files or folders, `datasets` folders, Hub names.

A source is split into `ReadTask`s (a file, a byte range of a large JSONL file, a Parquet file, a
split of a datasets folder) so that Beam can read them in parallel. `read_task` streams one task
as batches of `batch_size` rows and returns, per batch, the converted rows and the rows it had to
drop (malformed JSON, not UTF-8, unknown format, missing fields, empty text, too large) with the
file, line and field in the drop detail. Nothing is read whole into memory.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from datacraft.core.paths import is_jsonl
from datacraft.core.rows import batch_from_rows, concat_batches, from_output_frame, make_row, with_drop
from datacraft.io.formats import FORMATS, RecordError, describe_unknown, detect_format, to_row

READ_STAGE = "read"
SPLIT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ReadOptions:
    format: str = "auto"
    batch_size: int = 4096
    max_row_chars: int = 2_000_000
    allow_empty_response: bool = False
    limit: int | None = None
    split: str = "train"
    task_field: str = "task"


@dataclass(frozen=True)
class ReadTask:
    kind: str  # jsonl | parquet | datasets | hub
    path: str
    start: int = 0
    end: int = -1  # byte range for jsonl; -1 = to the end


def plan_reads(path: str, split_bytes: int = SPLIT_BYTES) -> list[ReadTask]:
    """The read tasks of a path: a file, a folder, a glob, or a Hub dataset name."""
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path))
        if not files:
            raise FileNotFoundError(f"{path}: no file matches")
        return [t for f in files for t in plan_reads(f, split_bytes)]
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(
            os.path.join(path, "dataset_info.json")
        ):
            return [ReadTask("datasets", path)]
        files = sorted(
            f
            for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
            if os.path.isfile(f) and (f.endswith(".parquet") or is_jsonl(f)) and "/dropped/" not in f
        )
        if not files:
            raise FileNotFoundError(f"{path}: folder holds no .jsonl/.parquet files and is not a datasets folder")
        return [t for f in files for t in plan_reads(f, split_bytes)]
    if os.path.isfile(path):
        if path.endswith(".parquet"):
            return [ReadTask("parquet", path)]
        size = os.path.getsize(path)
        if path.endswith(".gz") or size <= split_bytes:
            return [ReadTask("jsonl", path)]
        return [ReadTask("jsonl", path, s, min(s + split_bytes, size)) for s in range(0, size, split_bytes)]
    if "/" in path and not path.startswith((".", "/")) and path.count("/") == 1:
        return [ReadTask("hub", path)]
    raise FileNotFoundError(f"{path}: no such file, folder or dataset")


class _BatchBuilder:
    """Collects converted rows and drops; flushes every `batch_size` rows."""

    def __init__(self, options: ReadOptions, source: str) -> None:
        self.options = options
        self.source = source
        self.rows: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self.fmt: str | None = None if options.format == "auto" else options.format
        if self.fmt is not None and self.fmt not in FORMATS:
            raise ValueError(f"unknown format {self.fmt!r}; expected auto or one of {FORMATS}")
        self.emitted = 0

    def drop_raw(self, where: Where | str, reason: str, detail: str, raw: str) -> None:
        where = _resolve(where)
        row = make_row([], id=f"{reason}:{where}", source=self.source, meta={"where": where, "raw": raw[:2000]})
        row.update(drop_stage=READ_STAGE, drop_reason=reason, drop_detail=f"{where}: {detail}")
        self.dropped.append(row)

    def add(self, record: Any, where: Where | str, raw_size: int) -> None:
        if raw_size > self.options.max_row_chars:
            self.drop_raw(where, "too_large", f"row of {raw_size} chars exceeds max_row_chars={self.options.max_row_chars}", "")
            return
        if not isinstance(record, Mapping):
            self.drop_raw(where, "malformed", f"expected a JSON object, got {type(record).__name__}", str(record))
            return
        fmt = self.fmt if self.options.format != "auto" else detect_format(record)
        if fmt is None:
            self.drop_raw(where, "unknown_format", describe_unknown(record), json.dumps(record, default=str)[:2000])
            return
        try:
            row = to_row(record, fmt, source=self.source, task_field=self.options.task_field)
        except RecordError as err:
            self.drop_raw(where, "bad_record", str(err), json.dumps(record, default=str)[:2000])
            return
        reason = self._empty_reason(row)
        if reason:
            row.update(drop_stage=READ_STAGE, drop_reason=reason[0], drop_detail=f"{_resolve(where)}: {reason[1]}")
            self.dropped.append(row)
            return
        self.rows.append(row)

    def _empty_reason(self, row: Mapping[str, Any]) -> tuple[str, str] | None:
        messages = row["messages"]
        users = [m for m in messages if m["role"] == "user"]
        if not users or not any(m["content"].strip() for m in users):
            return "empty_text", "field 'instruction' (user turn) is empty"
        if self.options.allow_empty_response or row.get("chosen") is not None:
            if row.get("chosen") is not None and not any(m["content"].strip() for m in row["chosen"]):
                return "empty_text", "field 'chosen' is empty"
            return None
        answers = [m for m in messages if m["role"] == "assistant"]
        if not answers or not answers[-1]["content"].strip():
            return "empty_text", "field 'output' (assistant turn) is empty"
        return None

    def full(self) -> bool:
        return len(self.rows) + len(self.dropped) >= self.options.batch_size

    def flush(self) -> tuple[pl.DataFrame, pl.DataFrame] | None:
        if not self.rows and not self.dropped:
            return None
        kept = batch_from_rows(self.rows)
        dropped = batch_from_rows(self.dropped)
        self.emitted += len(self.rows)
        self.rows, self.dropped = [], []
        return kept, dropped


def _line_number(path: str, offset: int) -> int:
    """1-based line number of the line starting at byte `offset` (only computed for errors)."""
    if offset == 0:
        return 1
    count = 0
    with open(path, "rb") as fh:
        remaining = offset
        while remaining > 0:
            chunk = fh.read(min(remaining, 1 << 20))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count + 1


Where = tuple[str, int, int]  # (path, byte offset where counting starts, line index from there)


BLOCK_BYTES = 8 * 1024 * 1024


def newline_offsets(data: bytes | memoryview) -> np.ndarray:
    """Byte offsets of every newline in `data` (vectorized: no per-line Python)."""
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)


def _iter_chunks(task: ReadTask, lines_per_chunk: int, block_bytes: int | None = None) -> Iterator[tuple[bytes, int, int, np.ndarray]]:
    """(data, base, first, newlines): chunks of `lines_per_chunk` whole lines (the last chunk may
    have fewer, and a last line without its newline) that *start* inside the task's byte range.
    `base` is the byte offset of the range's first whole line, `first` the index of the chunk's
    first line counted from there, `newlines` the offsets of the chunk's newlines.

    Blocks are read once and kept as views; a chunk is cut at a newline found with numpy and
    joined once: each byte is copied once after the read, with no per-line Python."""
    block_bytes = block_bytes or BLOCK_BYTES
    gz = task.path.endswith(".gz")
    with (gzip.open if gz else open)(task.path, "rb") as fh:
        pos = 0 if gz else task.start
        end = -1 if gz else task.end
        if pos > 0:
            fh.seek(pos - 1)
            if fh.read(1) != b"\n":
                pos += len(fh.readline())  # that line began in the previous range
        if end >= 0 and pos >= end:
            return  # no line starts inside this range (one long line crosses it)
        base, first = pos, 0
        pieces: deque[tuple[memoryview, np.ndarray]] = deque()
        held = 0  # newlines in `pieces`
        finished = False
        while not finished:
            block = fh.read(block_bytes)
            if not block:
                break
            view, newlines = memoryview(block), newline_offsets(block)
            if end >= 0 and pos + len(block) >= end:
                # the range ends in this block: keep up to the newline of the last line starting before `end`
                closing = newlines[newlines >= end - 1 - pos]
                if len(closing):
                    stop = int(closing[0]) + 1
                    view, newlines, finished = view[:stop], newlines[newlines < stop], True
            pos += len(block)
            pieces.append((view, newlines))
            held += len(newlines)
            while held >= lines_per_chunk:
                need, out, out_newlines, size = lines_per_chunk, [], [], 0
                while True:
                    piece, offsets = pieces[0]
                    if len(offsets) < need:
                        pieces.popleft()
                        out.append(piece)
                        out_newlines.append(offsets + size)
                        size += len(piece)
                        need -= len(offsets)
                        continue
                    stop = int(offsets[need - 1]) + 1
                    out.append(piece[:stop])
                    out_newlines.append(offsets[:need] + size)
                    pieces[0] = (piece[stop:], offsets[need:] - stop)
                    break
                held -= lines_per_chunk
                yield b"".join(out), base, first, np.concatenate(out_newlines)
                first += lines_per_chunk
        size, out_newlines = 0, []
        for piece, offsets in pieces:
            out_newlines.append(offsets + size)
            size += len(piece)
        if size:
            yield b"".join(piece for piece, _ in pieces), base, first, np.concatenate(out_newlines)


def _iter_line_blocks(task: ReadTask, lines_per_block: int = 4096) -> Iterator[tuple[list[bytes], int, int]]:
    """(lines, base, first): like `_iter_chunks`, each chunk split into lines (without newlines)."""
    for data, base, first, _newlines in _iter_chunks(task, lines_per_block, 1 << 20):
        lines = data.split(b"\n")
        yield (lines[:-1] if data.endswith(b"\n") else lines), base, first


def _iter_jsonl_lines(task: ReadTask) -> Iterator[tuple[bytes, Where]]:
    """(line bytes, where) one line at a time (format sniffing); `where` becomes "file:line" only
    when a row is reported (counting lines before a range costs a read)."""
    for lines, base, first in _iter_line_blocks(task):
        for offset, line in enumerate(lines):
            yield line, (task.path, base, first + offset)


def _resolve(where: Where | str) -> str:
    if isinstance(where, str):
        return where
    path, base_pos, index = where
    return f"{path}:{_line_number(path, base_pos) + index}"


def _read_line(builder: _BatchBuilder, line: bytes, where: Where) -> None:
    """The per-record path: decode, parse, convert, or drop with the exact reason."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        builder.drop_raw(where, "malformed", f"not UTF-8 (byte {err.start})", line[:2000].decode("utf-8", "replace"))
        return
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        builder.drop_raw(where, "malformed", f"invalid JSON: {err.msg} at column {err.colno}", text)
        return
    builder.add(record, where, len(text))


def read_jsonl(task: ReadTask, options: ReadOptions) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Stream a JSONL task in chunks of `batch_size` lines. A chunk's bytes go to the vectorized
    fast path whole (polars parses them; no per-line Python); the per-record path takes the lines
    it hands back, and whole chunks it cannot take (blank lines, malformed JSON, other formats)."""
    from datacraft.io.fast import convert_chunk

    source = os.path.basename(task.path)
    builder = _BatchBuilder(options, source)
    fast_formats = options.format in ("auto", "alpaca", "completion") and options.limit is None
    seen = 0

    def per_record(lines: list[bytes], indices: Iterable[int], base: int, first: int) -> None:
        nonlocal seen
        for i in indices:
            line = lines[i].strip()
            if not line:
                continue
            if options.limit is not None and seen >= options.limit:
                return
            seen += 1
            _read_line(builder, line, (task.path, base, first + i))

    for data, base, first, newlines in _iter_chunks(task, options.batch_size):
        line_ends = newlines if data.endswith(b"\n") else np.append(newlines, len(data))
        n_lines = len(line_ends)
        longest = int(np.diff(line_ends, prepend=-1).max()) - 1
        converted = None
        if fast_formats and longest <= options.max_row_chars:
            converted = convert_chunk(data, n_lines, options.format, source, options.task_field)
        if converted is None:
            lines = data.split(b"\n")
            per_record(lines, range(n_lines), base, first)
            if builder.full():
                out = builder.flush()
                if out:
                    yield out
        else:
            kept, slow = converted
            if slow:
                per_record(data.split(b"\n"), slow, base, first)
            rest = builder.flush()
            extra_kept, dropped = rest if rest else (kept.head(0), batch_from_rows([]))
            yield concat_batches([kept, extra_kept]) if extra_kept.height else kept, dropped
        if options.limit is not None and seen >= options.limit:
            break
    out = builder.flush()
    if out:
        yield out


def _records_from_arrow_batches(batches: Iterator[Any], task: ReadTask, options: ReadOptions) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Parquet / datasets tables: our own layout is taken as is, other formats converted per record."""
    builder = _BatchBuilder(options, os.path.basename(task.path.rstrip("/")))
    row_no = 0
    for rb in batches:
        frame = pl.from_arrow(rb)
        if isinstance(frame, pl.Series):
            frame = frame.to_frame()
        if options.limit is not None:
            frame = frame.head(max(0, options.limit - row_no))
            if frame.height == 0:
                break
        if {"id", "messages", "lineage"} <= set(frame.columns) and options.format in ("auto", "datacraft"):
            kept = from_output_frame(frame)
            row_no += frame.height
            yield kept, batch_from_rows([])
            continue
        for record in frame.iter_rows(named=True):
            row_no += 1
            builder.add(record, f"{task.path}:row {row_no}", len(json.dumps(record, default=str)))
            if builder.full():
                out = builder.flush()
                if out:
                    yield out
    out = builder.flush()
    if out:
        yield out


def read_task(task: ReadTask, options: ReadOptions) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Stream one read task as (kept batch, dropped batch) pairs."""
    if task.kind == "jsonl":
        yield from read_jsonl(task, options)
    elif task.kind == "parquet":
        import pyarrow.parquet as pq

        yield from _records_from_arrow_batches(pq.ParquetFile(task.path).iter_batches(options.batch_size), task, options)
    elif task.kind == "datasets":
        import datasets

        loaded = datasets.load_from_disk(task.path)
        if isinstance(loaded, datasets.DatasetDict):
            if options.split not in loaded:
                raise ValueError(f"{task.path}: no split {options.split!r}; it has {list(loaded)}")
            loaded = loaded[options.split]
        yield from _records_from_arrow_batches(iter(loaded.data.to_batches(options.batch_size)), task, options)
    elif task.kind == "hub":
        import datasets

        loaded = datasets.load_dataset(task.path, split=options.split, streaming=True)
        def _chunks() -> Iterator[Any]:
            import pyarrow as pa

            buf: list[dict[str, Any]] = []
            for rec in loaded:
                buf.append(rec)
                if len(buf) >= options.batch_size:
                    yield pa.Table.from_pylist(buf)
                    buf = []
            if buf:
                yield pa.Table.from_pylist(buf)
        yield from _records_from_arrow_batches(_chunks(), task, options)
    else:
        raise ValueError(f"unknown read task kind {task.kind!r}")


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run `items` in a background thread, up to `depth` items ahead of the consumer.

    The reader parses the next chunk (polars releases the GIL) while the stages fused after it
    work on the current one, so reading costs little wall time on a second core. An exception in
    the producer is raised in the consumer; closing the consumer stops the producer."""
    import queue
    import threading

    done = object()
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((True, done))
        except BaseException as err:  # noqa: BLE001  (handed to the consumer)
            slots.put((False, err))

    worker = threading.Thread(target=produce, name="datacraft-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = slots.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def read_all(path: str, options: ReadOptions | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read a whole source into (kept, dropped) frames — for tests and small inputs."""
    options = options or ReadOptions()
    kept, dropped = [], []
    for task in plan_reads(path):
        for k, d in read_task(task, options):
            kept.append(k)
            dropped.append(d)
    return concat_batches(kept), concat_batches(dropped)


def peek_columns(path: str, options: ReadOptions, rows: int = 20) -> set[str] | None:
    """The canonical columns of the first rows of `path` (None when it cannot be peeked: a Hub
    name, a missing or unreadable file). Used to check a config before any work."""
    try:
        tasks = plan_reads(path)
    except (OSError, ValueError):
        return None
    if not tasks or tasks[0].kind == "hub":
        return None
    peek = ReadOptions(**{**options.__dict__, "limit": rows, "batch_size": rows})
    try:
        for kept, _dropped in read_task(tasks[0], peek):
            return set(kept.columns)
    except Exception:  # the run itself reports an unreadable input with file and line
        return None
    return set()


def sniff_format(path: str, n: int = 50) -> str:
    """Detect the format of a source from its first records; raises with the fields seen."""
    task = plan_reads(path)[0]
    seen_fields: set[str] = set()
    if task.kind == "jsonl":
        for line, _where in _iter_jsonl_lines(task):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                n -= 1
                if n <= 0:
                    break
                continue
            if isinstance(record, Mapping):
                fmt = detect_format(record)
                if fmt:
                    return fmt
                seen_fields |= set(record)
            n -= 1
            if n <= 0:
                break
    else:
        import pyarrow.parquet as pq

        if task.kind == "parquet":
            cols = pq.ParquetFile(task.path).schema_arrow.names
        else:
            import datasets

            loaded = datasets.load_from_disk(task.path)
            cols = (loaded[next(iter(loaded))] if isinstance(loaded, datasets.DatasetDict) else loaded).column_names
        fmt = detect_format(dict.fromkeys(cols))
        if fmt:
            return fmt
        seen_fields = set(cols)
    if not seen_fields:
        raise FormatDetectionError(f"{path}: no JSON object found in its first records (empty file or not JSON)")
    raise FormatDetectionError(f"{path}: " + describe_unknown(dict.fromkeys(seen_fields)))


from datacraft.io.formats import FormatDetectionError  # noqa: E402  (re-export)

__all__ = [
    "FormatDetectionError",
    "ReadOptions",
    "ReadTask",
    "plan_reads",
    "prefetch",
    "read_all",
    "read_task",
    "sniff_format",
    "with_drop",
]

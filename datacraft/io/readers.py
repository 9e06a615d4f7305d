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
import re
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from datacraft.core.paths import is_jsonl, is_parquet
from datacraft.core.rows import (
    batch_from_rows,
    concat_batches,
    from_output_frame,
    is_written_layout,
    make_row,
    with_drop,
)
from datacraft.core.run_folder import DATA_DIR, REPORT_JSON, is_run_folder, require_finished
from datacraft.io.formats import FORMATS, RecordError, describe_unknown, detect_format, to_row

READ_STAGE = "read"
SPLIT_BYTES = 64 * 1024 * 1024
BOM = b"\xef\xbb\xbf"
# metadata files of datasets / run folders, never rows
_NOT_ROWS = {"dataset_info.json", "dataset_dict.json", "state.json", REPORT_JSON}


class UnreadableFile(Exception):
    """A file that cannot be read past `offset` (truncated or corrupt); the rows before it are kept."""

    def __init__(self, path: str, offset: int, cause: BaseException | str) -> None:
        cause_text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{path}: unreadable from byte {offset}: {cause_text}")
        self.path, self.offset, self.cause = path, offset, cause_text


class ReadConfigError(ValueError):
    """A read the config asks for cannot be made (a split the dataset lacks): a config error, not a bad file."""


# Errors a corrupt or truncated file raises while it is read: the file is dropped from there on.
_FILE_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, ValueError, UnicodeError, RecursionError, pl.exceptions.PolarsError)


def _file_error(err: BaseException) -> bool:
    """Whether `err` is what a corrupt file raises (a corrupt Parquet file, a datasets folder that
    does not load) rather than a failure of the machinery. pyarrow is imported only here."""
    import pyarrow as pa

    return isinstance(err, (*_FILE_ERRORS, pa.ArrowException))


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Duplicate keys: the first value is kept (what the fast path's parser does)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


DECODER = json.JSONDecoder(object_pairs_hook=_first_wins, parse_constant=_no_constant)
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_field(value: Any, path: str = "") -> str | None:
    """The field holding a lone UTF-16 surrogate (not encodable as UTF-8), or None."""
    if isinstance(value, str):
        return path or "<record>" if _SURROGATE.search(value) else None
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        name = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and _SURROGATE.search(key):
            return name
        found = lone_surrogate_field(item, name)
        if found:
            return found
    return None


def parse_record(text: str) -> tuple[Any, str | None]:
    """(record, None) or (None, why it is malformed): one JSON text decoded by the reader's rules."""
    try:
        record = DECODER.decode(text)
    except json.JSONDecodeError as err:
        return None, f"invalid JSON: {err.msg} at column {err.colno}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except ValueError as err:
        return None, f"invalid JSON: {err}"
    if _ESCAPED_SURROGATE.search(text):
        field = lone_surrogate_field(record)
        if field:
            return None, f"field '{field}': lone UTF-16 surrogate (not valid Unicode text)"
    return record, None


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
        if is_run_folder(path):
            require_finished(path)  # a run folder as input: its kept rows
            return plan_reads(os.path.join(path, DATA_DIR), split_bytes)
        files = sorted(
            f
            for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
            if os.path.isfile(f) and not _hidden(os.path.relpath(f, path)) and "/dropped/" not in f
        )
        readable = [f for f in files if _readable_name(f)]
        if not readable:
            raise FileNotFoundError(f"{path}: folder holds no .jsonl/.json/.parquet files and is not a datasets folder")
        # other files are not skipped silently: each becomes an `unsupported_file` drop in the report
        return [t for f in files for t in (plan_reads(f, split_bytes) if f in readable else [ReadTask("unsupported", f)])]
    if os.path.isfile(path):
        if is_parquet(path):
            return [ReadTask("parquet", path)]
        if path.lower().endswith((".json", ".json.gz")) and _starts_with(path, b"["):
            return [ReadTask("json", path)]
        size = os.path.getsize(path)
        if path.lower().endswith(".gz") or size <= split_bytes:
            return [ReadTask("jsonl", path)]
        return [ReadTask("jsonl", path, s, min(s + split_bytes, size)) for s in range(0, size, split_bytes)]
    if "/" in path and not path.startswith((".", "/")) and path.count("/") == 1:
        return [ReadTask("hub", path)]
    raise FileNotFoundError(f"{path}: no such file, folder or dataset")


def _hidden(relpath: str) -> bool:
    """Hadoop's convention: names starting with `.` or `_` (markers, temporary parts) hold no rows."""
    return any(part.startswith((".", "_")) for part in relpath.split(os.sep))


def _readable_name(path: str) -> bool:
    return (is_parquet(path) or is_jsonl(path)) and os.path.basename(path) not in _NOT_ROWS


def _open_bytes(path: str) -> Any:
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def _starts_with(path: str, prefix: bytes) -> bool:
    """Whether the file's first non-blank bytes (after a BOM) are `prefix`; False when unreadable."""
    try:
        with _open_bytes(path) as fh:
            head = fh.read(4096)
    except _FILE_ERRORS:
        return False
    return head.removeprefix(BOM).lstrip().startswith(prefix)


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

    def drop_file(self, err: UnreadableFile) -> None:
        """One `unreadable_file` drop for the part of a file that cannot be read."""
        self.drop_raw(err.path, "unreadable_file", f"unreadable from byte {err.offset}: {err.cause}", "")

    def add(self, record: Any, where: Where | str, raw_size: int) -> None:
        if raw_size > self.options.max_row_chars:
            self.drop_raw(where, "too_large", f"row of {raw_size} chars exceeds max_row_chars={self.options.max_row_chars}", "")
            return
        if not isinstance(record, Mapping):
            self.drop_raw(where, "malformed", f"expected a JSON object, got {type(record).__name__}", str(record))
            return
        fmt = self.fmt if self.options.format != "auto" else detect_format(record)
        if fmt is None:
            self.drop_raw(where, "unknown_format", describe_unknown(record), _raw_text(record))
            return
        try:
            row = to_row(record, fmt, source=self.source, task_field=self.options.task_field)
        except RecordError as err:
            self.drop_raw(where, "bad_record", str(err), _raw_text(record))
            return
        except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as err:
            self.drop_raw(where, "bad_record", f"record: {type(err).__name__}: {err}", _raw_text(record))
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


def _raw_text(record: Any) -> str:
    try:
        return json.dumps(record, default=str, ensure_ascii=False)[:2000]
    except (ValueError, RecursionError):
        return str(type(record).__name__)


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
    gz = task.path.lower().endswith(".gz")
    failure: BaseException | None = None
    with _open_bytes(task.path) as fh:
        pos = 0 if gz else task.start
        end = -1 if gz else task.end
        if pos == 0:
            try:
                if fh.read(3) == BOM:  # a UTF-8 byte order mark is not part of line 1
                    pos = 3
                fh.seek(pos)
            except _FILE_ERRORS as err:
                failure = err
        elif pos > 0:
            fh.seek(pos - 1)
            if fh.read(1) != b"\n":
                pos += len(fh.readline())  # that line began in the previous range
        if end >= 0 and pos >= end:
            return  # no line starts inside this range (one long line crosses it)
        base, first = pos, 0
        pieces: deque[tuple[memoryview, np.ndarray]] = deque()
        held = 0  # newlines in `pieces`
        finished = failure is not None
        while not finished:
            try:  # gzip: read1 returns what one compressed read gives, so a truncated file loses little
                block = fh.read1(block_bytes) if gz else fh.read(block_bytes)
            except _FILE_ERRORS as err:
                failure = err
                break
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
        if failure is not None:
            raise UnreadableFile(task.path, pos, failure)


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
    record, problem = parse_record(text)
    if problem:
        builder.drop_raw(where, "malformed", problem, text)
        return
    builder.add(record, where, len(text))


def read_jsonl(task: ReadTask, options: ReadOptions) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Stream a JSONL task in chunks of `batch_size` lines. A chunk's bytes go to the vectorized
    fast path whole (polars parses them; no per-line Python); the per-record path takes the lines
    it hands back, and whole chunks it cannot take (blank lines, malformed JSON, other formats)."""
    builder = _BatchBuilder(options, os.path.basename(task.path))

    def per_record(lines: list[bytes], indices: Iterable[int], base: int, first: int) -> None:
        for i in indices:
            line = lines[i].strip()
            if not line:
                continue
            if options.limit is not None and per_record.seen >= options.limit:
                return
            per_record.seen += 1
            _read_line(builder, line, (task.path, base, first + i))

    per_record.seen = 0  # type: ignore[attr-defined]

    yield from _flushing(builder, _read_jsonl_chunks(task, options, builder, per_record))


def _flushing(builder: _BatchBuilder, batches: Iterator[tuple[pl.DataFrame, pl.DataFrame]]) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """`batches`, then the rows the builder still holds, also when the file turns out damaged
    (the rows read before the damage are kept; the error goes on to `read_task`)."""
    try:
        yield from batches
    except UnreadableFile:
        out = builder.flush()
        if out:
            yield out
        raise
    out = builder.flush()
    if out:
        yield out


def _read_jsonl_chunks(task: ReadTask, options: ReadOptions, builder: _BatchBuilder, per_record: Any) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    from datacraft.io.fast import convert_chunk

    source = builder.source
    fast_formats = options.format in ("auto", "alpaca", "completion") and options.limit is None
    for data, base, first, newlines in _iter_chunks(task, options.batch_size):
        line_ends = newlines if data.endswith(b"\n") else np.append(newlines, len(data))
        n_lines = len(line_ends)
        longest = int(np.diff(line_ends, prepend=-1).max()) - 1
        converted = None
        if fast_formats and longest <= options.max_row_chars:
            converted = convert_chunk(data, n_lines, options.format, source, options.task_field, line_ends)
        if converted is None:
            lines = data.split(b"\n")
            per_record(lines, range(n_lines), base, first)
            if builder.full():
                out = builder.flush()
                if out:
                    yield out
        else:
            pending = builder.flush()  # rows of earlier per-record chunks go first, in line order
            if pending:
                yield pending
            kept, slow = converted
            kept_slow = []  # the slow lines that gave a kept row, to put the rows back in line order
            lines = data.split(b"\n") if slow else []
            for i in slow:
                before = len(builder.rows)
                per_record(lines, [i], base, first)
                if len(builder.rows) > before:
                    kept_slow.append(i)
            rest = builder.flush()
            extra_kept, dropped = rest if rest else (kept.head(0), batch_from_rows([]))
            if extra_kept.height:
                fast_lines = np.setdiff1d(np.arange(n_lines), np.asarray(slow, dtype=np.int64))
                order = np.argsort(np.concatenate([fast_lines, np.asarray(kept_slow, dtype=np.int64)]), kind="stable")
                kept = concat_batches([kept, extra_kept])[order]
            yield kept, dropped
        if options.limit is not None and per_record.seen >= options.limit:
            break


def _read_json_array(task: ReadTask, options: ReadOptions) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """A `.json` file holding one array of records (read whole: such files are small); each item is
    a record at `file:line`. Damage after an item keeps the items before it."""
    builder = _BatchBuilder(options, os.path.basename(task.path))
    with _open_bytes(task.path) as fh:
        data = fh.read()
    data = data.removeprefix(BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UnreadableFile(task.path, err.start, "not UTF-8") from None
    yield from _flushing(builder, _json_items(task, options, builder, text))


def _json_items(task: ReadTask, options: ReadOptions, builder: _BatchBuilder, text: str) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """The items of the array in `text`, added to `builder` one by one (full batches yielded)."""
    idx, line, counted, seen = text.index("[") + 1, 1, 0, 0
    while True:
        while idx < len(text) and text[idx] in " \t\r\n,":
            idx += 1
        if idx >= len(text):
            raise UnreadableFile(task.path, len(text[:idx].encode("utf-8")), "the array is not closed (truncated?)")
        if text[idx] == "]":
            return
        line += text.count("\n", counted, idx)
        counted = idx
        try:
            record, end = DECODER.raw_decode(text, idx)
        except (ValueError, RecursionError) as err:
            raise UnreadableFile(task.path, len(text[:idx].encode("utf-8")), f"line {line}: {err}") from None
        where = f"{task.path}:{line}"
        field = lone_surrogate_field(record) if _ESCAPED_SURROGATE.search(text, idx, end) else None
        if field:
            builder.drop_raw(where, "malformed", f"field '{field}': lone UTF-16 surrogate (not valid Unicode text)", text[idx:end][:2000])
        else:
            builder.add(record, where, end - idx)
        idx = end
        seen += 1
        if options.limit is not None and seen >= options.limit:
            return
        if builder.full():
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
        if is_written_layout(frame.columns) and options.format in ("auto", "datacraft"):
            try:
                kept = from_output_frame(frame)
            except (pl.exceptions.PolarsError, TypeError, ValueError):
                kept = None  # our columns with other types: converted (or dropped) record by record below
            if kept is not None:
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
    """Stream one read task as (kept batch, dropped batch) pairs. A file that cannot be read (or
    read to its end) keeps the rows read before the damage and adds one `unreadable_file` drop
    naming the file, the byte offset and the cause; the other tasks are not affected."""
    builder = _BatchBuilder(options, os.path.basename(task.path.rstrip("/")))
    if task.kind == "unsupported":
        builder.drop_raw(task.path, "unsupported_file", "not a .jsonl / .json / .parquet file (not read)", "")
        yield builder.flush()  # type: ignore[misc]
        return
    try:
        yield from _read_task(task, options)
    except UnreadableFile as err:
        builder.drop_file(err)
        yield builder.flush()  # type: ignore[misc]
    except ReadConfigError:
        raise
    except Exception as err:
        if not _file_error(err):
            raise
        builder.drop_file(UnreadableFile(task.path, 0, err))
        yield builder.flush()  # type: ignore[misc]


def _read_task(task: ReadTask, options: ReadOptions) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    if task.kind == "json":
        yield from _read_json_array(task, options)
    elif task.kind == "jsonl":
        yield from read_jsonl(task, options)
    elif task.kind == "parquet":
        import pyarrow.parquet as pq

        yield from _records_from_arrow_batches(pq.ParquetFile(task.path).iter_batches(options.batch_size), task, options)
    elif task.kind == "datasets":
        import datasets

        loaded = datasets.load_from_disk(task.path)
        if isinstance(loaded, datasets.DatasetDict):
            if options.split not in loaded:
                raise ReadConfigError(f"{task.path}: no split {options.split!r}; it has {list(loaded)}")
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
    tasks = [t for t in tasks if t.kind != "unsupported"]
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
    """Detect the format of a source from its first records; raises with the fields seen.
    Unreadable and unsupported files are passed over (the run reports them)."""
    seen_fields: set[str] = set()
    for task in plan_reads(path):
        try:
            for fields in _sample_fields(task, n):
                fmt = detect_format(dict.fromkeys(fields))
                if fmt:
                    return fmt
                seen_fields |= fields
        except Exception as err:
            if not (isinstance(err, UnreadableFile) or _file_error(err)):
                raise
            continue
        if seen_fields:
            break
    if not seen_fields:
        raise FormatDetectionError(f"{path}: no JSON object found in its first records (empty file or not JSON)")
    raise FormatDetectionError(f"{path}: " + describe_unknown(dict.fromkeys(seen_fields)))


def _sample_fields(task: ReadTask, n: int) -> Iterator[set[str]]:
    """The field names of the first `n` records of a task (column names for tables)."""
    if task.kind == "unsupported":
        return
    if task.kind in ("jsonl", "json"):
        if task.kind == "json":
            with _open_bytes(task.path) as fh:
                items = DECODER.decode(fh.read().removeprefix(BOM).decode("utf-8", "replace"))
            records = iter(items[:n] if isinstance(items, list) else [])
        else:
            records = (parse_record(line.decode("utf-8", "replace"))[0] for line, _where in _iter_jsonl_lines(task) if line.strip())
        for i, record in enumerate(records):
            if i >= n:
                return
            if isinstance(record, Mapping):
                yield set(record)
        return
    import pyarrow.parquet as pq

    if task.kind == "parquet":
        yield set(pq.ParquetFile(task.path).schema_arrow.names)
    elif task.kind == "datasets":
        import datasets

        loaded = datasets.load_from_disk(task.path)
        yield set((loaded[next(iter(loaded))] if isinstance(loaded, datasets.DatasetDict) else loaded).column_names)


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

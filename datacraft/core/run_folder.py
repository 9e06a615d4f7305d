"""A finished run folder: its layout (the one place that knows it) and a lazy, streaming reader.

    OUT/data/       kept rows (Parquet shards or JSONL; `scores` packed as a struct, `meta` JSON)
    OUT/dropped/    dropped rows plus `drop_stage`, `drop_reason`, `drop_detail`
    OUT/report.json the ledger and the stage facts; OUT/report.html the page
    OUT/branches/<b>/ the kept rows of a config branch (e.g. DPO pairs); OUT/train/<stage>/ a train stage's
                    TRL dataset, checkpoint and configs
    OUT/config.yaml the resolved config;  OUT/cache/ the LLM / embedding cache (survives --overwrite)
    OUT/_RUNNING    while a run writes (its run id, pid, config hash); OUT/_SUCCESS written last

`RunFolder` reads those lazily and streams them: nothing here loads a whole large run into a list.
Every reader of a run folder calls `require_finished`, so partial output is never taken for whole.
`writing` is the writer's side: a lock beside OUT, resume of a killed run with the same config,
and `--overwrite` built in a sibling folder that replaces OUT atomically.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl

from datacraft.core.paths import is_jsonl
from datacraft.core.rows import SCORE_PREFIX, written_messages

DATA_DIR = "data"
DROPPED_DIR = "dropped"
CACHE_DIR = "cache"
BRANCHES_DIR = "branches"
TRAIN_DIR = "train"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
CONFIG_YAML = "config.yaml"
STATS_FILE = "_stats.json"
PARTS_PREFIX = "_parts-"
RUNNING = "_RUNNING"
SUCCESS = "_SUCCESS"

KEPT = "kept"
DROPPED = "dropped"
MISSING = "missing"
PREVIEW_CHARS = 240


# ---------------------------------------------------------------------------------------------
# small row helpers (written layout)


def truncate(text: Any, n: int = PREVIEW_CHARS) -> str:
    """One-line preview of a value: whitespace collapsed, cut at `n` characters with an ellipsis."""
    s = "" if text is None else str(text)
    s = re.sub(r"\s+", " ", s).strip()
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


def _turns(messages: Any, role: str) -> list[str]:
    return [str(m.get("content") or "") for m in (messages or []) if isinstance(m, Mapping) and m.get("role") == role]


def _meta(row: Mapping[str, Any]) -> dict[str, Any]:
    meta = row.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            return {"meta": meta}
    return dict(meta) if isinstance(meta, Mapping) else {}


def row_texts(row: Mapping[str, Any]) -> tuple[str, str]:
    """(instruction, response) of a written-layout row; rows dropped at read show their raw record."""
    users = _turns(written_messages(row), "user")
    answers = _turns(row.get("chosen"), "assistant") or _turns(written_messages(row), "assistant")
    if not users and not answers:
        raw = _meta(row).get("raw")
        return (str(raw) if raw else ""), ""
    return (users[0] if users else ""), (answers[-1] if answers else "")


def row_scores(row: Mapping[str, Any]) -> dict[str, float]:
    """Scores of a row in either layout: a `scores` struct/object, or flat `scores.<name>` keys."""
    out: dict[str, float] = {}
    packed = row.get("scores")
    if isinstance(packed, Mapping):
        out.update({str(k): float(v) for k, v in packed.items() if isinstance(v, int | float)})
    for k, v in row.items():
        if k.startswith(SCORE_PREFIX) and isinstance(v, int | float):
            out[k[len(SCORE_PREFIX) :]] = float(v)
    return out


def row_lineage(row: Mapping[str, Any]) -> tuple[list[str], str]:
    """(parent_ids, method) of a row; rows without lineage are seeds."""
    lin = row.get("lineage")
    if isinstance(lin, str):
        try:
            lin = json.loads(lin)
        except json.JSONDecodeError:
            lin = None
    if not isinstance(lin, Mapping):
        return [], "seed"
    return [str(p) for p in (lin.get("parent_ids") or [])], str(lin.get("method") or "seed")


def clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row for display / JSON: meta parsed, vectors replaced by their dimension."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k == "embedding" and v is not None:
            out["embedding"] = f"<{len(v)}-d vector>"
        elif k == "meta":
            out["meta"] = _meta(row) or None
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# streaming files


def iter_jsonl(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-empty lines of a JSONL file (plain or .gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
        for n, line in enumerate(fh, 1):
            if line.strip():
                yield n, line


def _parquet_columns(path: str) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.ParquetFile(path).schema_arrow.names)


def iter_row_chunks(path: str, columns: Iterable[str] | None = None, chunk_rows: int = 5000) -> Iterator[list[dict[str, Any]]]:
    """Rows of a Parquet or JSONL file as lists of dicts (Parquet projected to `columns` when given)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        cols = [c for c in columns if c in names] if columns is not None else None
        for rb in pf.iter_batches(chunk_rows, columns=cols):
            yield rb.to_pylist()
        return
    buf: list[dict[str, Any]] = []
    for _n, line in iter_jsonl(path):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            buf.append(rec)
        if len(buf) >= chunk_rows:
            yield buf
            buf = []
    if buf:
        yield buf


def _files_under(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    files = glob.glob(os.path.join(folder, "**", "*"), recursive=True)
    return sorted(
        f
        for f in files
        if os.path.isfile(f)
        and (f.endswith(".parquet") or is_jsonl(f))
        and "/_parts-" not in f.replace(os.sep, "/")
    )


_WRITING: set[Path] = set()  # folders this process is writing now (see `writing`)


class UnfinishedRunError(FileNotFoundError):
    """A run folder whose run has not finished (still running, or killed): its rows are partial."""


def is_run_folder(path: str) -> bool:
    """Whether `path` is (or was meant to be) a run folder: datacraft's markers or config with data."""
    p = Path(path)
    if (p / RUNNING).exists() or (p / REPORT_JSON).exists():
        return True
    return (p / CONFIG_YAML).exists() and ((p / DATA_DIR).is_dir() or (p / DROPPED_DIR).is_dir())


def require_finished(path: str) -> None:
    """Raise `UnfinishedRunError` unless the run folder at `path` holds a finished run."""
    p = Path(path)
    if p.resolve() in _WRITING:
        return  # the run itself (its report pages read the folder before `_SUCCESS` is written)
    running = p / RUNNING
    if running.exists() and not (p / SUCCESS).exists():
        info = _read_json(running)
        alive = _lock_held(p)
        state = f"still running (pid {info.get('pid')})" if alive else "killed before it finished"
        raise UnfinishedRunError(
            f"{path}: unfinished run ({state}; run id {info.get('run_id', '?')}): its rows are partial. "
            + ("Wait for it to finish." if alive else "Rerun the same command to resume it.")
        )
    if not (p / REPORT_JSON).exists() and is_run_folder(path):
        raise UnfinishedRunError(f"{path}: no {REPORT_JSON}: not a finished run folder (the run did not finish)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _lock_held(out: Path) -> bool:
    """Whether a run holds the lock of `out` now (a killed run's lock is released by the OS)."""
    import fcntl

    if not _lock_path(out).exists():
        return False
    with open(_lock_path(out), "a", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


class RunFolder:
    """A finished run folder (`datacraft run ... -o OUT`), read lazily."""

    def __init__(self, path: str) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: not a run folder (no such directory)")
        require_finished(path)
        self.path = path

    @cached_property
    def report(self) -> dict[str, Any]:
        p = os.path.join(self.path, REPORT_JSON)
        if not os.path.exists(p):
            return {}
        with open(p, encoding="utf-8") as fh:
            return json.load(fh)

    @cached_property
    def config_text(self) -> str | None:
        p = os.path.join(self.path, CONFIG_YAML)
        if not os.path.exists(p):
            return None
        with open(p, encoding="utf-8") as fh:
            return fh.read()

    @cached_property
    def output_files(self) -> list[str]:
        return _files_under(os.path.join(self.path, DATA_DIR))

    @cached_property
    def dropped_files(self) -> list[str]:
        return _files_under(os.path.join(self.path, DROPPED_DIR))

    def files(self) -> Iterator[tuple[str, str]]:
        """(status, file) for every row file: kept rows first, then dropped ones."""
        for f in self.output_files:
            yield KEPT, f
        for f in self.dropped_files:
            yield DROPPED, f

    def find_rows(self, ids: Iterable[str]) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """Look up rows by id in one pass over the run: id → (status, file, row in written layout)."""
        wanted = {str(i) for i in ids}
        found: dict[str, tuple[str, str, dict[str, Any]]] = {}
        if not wanted:
            return found
        pattern = re.compile("|".join(re.escape(json.dumps(i)) for i in sorted(wanted, key=len, reverse=True)))
        for status, path in self.files():
            todo = wanted - set(found)
            if not todo:
                break
            if path.endswith(".parquet"):
                if "id" not in _parquet_columns(path):
                    continue
                hits = pl.scan_parquet(path).filter(pl.col("id").is_in(sorted(todo))).collect().to_dicts()
            else:
                hits = []
                for _n, line in iter_jsonl(path):
                    if pattern.search(line):
                        rec = json.loads(line)
                        if isinstance(rec, dict) and str(rec.get("id")) in todo:
                            hits.append(rec)
            for rec in hits:
                found.setdefault(str(rec["id"]), (status, path, rec))
        return found

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Ids that start with `prefix` (to accept the short ids people paste)."""
        out: list[str] = []
        for _status, path in self.files():
            if path.endswith(".parquet"):
                if "id" not in _parquet_columns(path):
                    continue
                ids = pl.scan_parquet(path).select("id").filter(pl.col("id").str.starts_with(prefix)).collect()["id"]
                out.extend(ids.head(limit).to_list())
            else:
                needle = json.dumps(prefix)[:-1]
                for _n, line in iter_jsonl(path):
                    if needle in line:
                        rid = json.loads(line).get("id")
                        if isinstance(rid, str) and rid.startswith(prefix):
                            out.append(rid)
            if len(out) >= limit:
                break
        return list(dict.fromkeys(out))[:limit]


# ---------------------------------------------------------------------------------------------
# explain_row


# ---------------------------------------------------------------------------------------------
# writing a run folder: lock, resume, atomic overwrite


class RunFolderBusy(FileExistsError):
    """Another run holds the lock of this output folder."""


class ConfigMismatch(FileExistsError):
    """An unfinished run folder was started with another config: resuming it would mix two runs."""


def _lock(path: Path) -> Any:
    """An exclusive lock on `.<name>.lock` beside the output folder (released when the process
    ends, even on kill -9); raises `RunFolderBusy` at once when another run holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = _lock_path(path)
    fh = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115  (held for the whole run)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise RunFolderBusy(f"{path}: another run is writing this folder (pid {holder}); wait for it or pass another -o") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def config_difference(old_text: str, new_text: str, limit: int = 5) -> str:
    """The keys two config YAML texts differ in, as `key: old → new` (at most `limit` of them)."""
    import yaml

    try:
        old = _flatten(yaml.safe_load(old_text) or {})
    except yaml.YAMLError:
        return "the old config.yaml is not readable"
    new = _flatten(yaml.safe_load(new_text) or {})
    skip = {"output.path", "output.overwrite"}
    keys = [k for k in dict.fromkeys([*old, *new]) if k not in skip and old.get(k, "<unset>") != new.get(k, "<unset>")]
    parts = [f"{k}: {old.get(k, '<unset>')!r} → {new.get(k, '<unset>')!r}" for k in keys[:limit]]
    return "; ".join(parts) + (f"; … {len(keys) - limit} more" if len(keys) > limit else "") if parts else "no key differs"


def _clear(path: Path, keep: set[str]) -> None:
    for child in path.iterdir():
        if child.name not in keep:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextmanager
def writing(path: str, config_text: str, config_hash: str, overwrite: bool) -> Iterator[str]:
    """Open the run folder `path` for one run; yields the folder to write into.

    - a lock beside OUT makes a second run on the same folder fail at once;
    - a new or empty OUT is written in place, marked `_RUNNING` until `_SUCCESS` is written last;
    - an unfinished OUT (a killed run) is resumed when the config hash is the same (its cache
      kept, the partial rows cleared) and refused, naming the keys that differ, when it is not;
    - a finished OUT is refused unless `overwrite`; then the new run is built in a sibling folder
      (`.<name>.incomplete-<run id>`) that replaces OUT only when it has finished, so readers see
      the old run or the new one, never an empty or half-written folder. The cache moves along."""
    out = Path(path)
    lock = _lock(out)
    run_id = uuid.uuid4().hex[:12]
    work = out
    try:
        for stale in out.parent.glob(f".{out.name}.incomplete-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed --overwrite run; we hold the lock
        if out.exists() and any(out.iterdir()):
            finished = (out / SUCCESS).exists() or ((out / REPORT_JSON).exists() and not (out / RUNNING).exists())
            if not is_run_folder(str(out)) or finished:
                if not overwrite:
                    raise FileExistsError(f"output folder {path} exists and is not empty; pass --overwrite to replace it")
                work = out.parent / f".{out.name}.incomplete-{run_id}"
                work.mkdir()
            else:
                old_hash = _read_json(out / RUNNING).get("config_hash")
                old_text = (out / CONFIG_YAML).read_text(encoding="utf-8") if (out / CONFIG_YAML).exists() else ""
                if not overwrite and old_hash != config_hash and (old_hash or config_difference(old_text, config_text) != "no key differs"):
                    raise ConfigMismatch(
                        f"{path}: holds an unfinished run of another config ({config_difference(old_text, config_text)}); "
                        "rerun it with its own config to resume it, or pass --overwrite to start over"
                    )
                _clear(out, {CACHE_DIR})  # resume: finished LLM / embedding calls stay cached
        out.mkdir(parents=True, exist_ok=True)
        started = {"run_id": run_id, "pid": os.getpid(), "config_hash": config_hash}
        (work / RUNNING).write_text(json.dumps(started), encoding="utf-8")
        (work / CONFIG_YAML).write_text(config_text, encoding="utf-8")
        _WRITING.add(work.resolve())
        try:
            yield str(work)
        except BaseException:
            if work != out:
                shutil.rmtree(work, ignore_errors=True)
            raise
        (work / SUCCESS).write_text(json.dumps({**started, "pid": None}), encoding="utf-8")
        (work / RUNNING).unlink()
        if work != out:
            if (out / CACHE_DIR).exists() and not (work / CACHE_DIR).exists():
                os.replace(out / CACHE_DIR, work / CACHE_DIR)
            if _exchange(work, out):
                shutil.rmtree(work, ignore_errors=True)
            else:
                old = out.parent / f".{out.name}.old-{run_id}"
                os.replace(out, old)
                os.replace(work, out)
                shutil.rmtree(old, ignore_errors=True)
    finally:
        _WRITING.discard(work.resolve())
        lock.close()

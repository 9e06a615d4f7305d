"""A finished run folder: its layout (the one place that knows it) and a lazy, streaming reader.

    OUT/data/       kept rows (Parquet shards or JSONL; `scores` packed as a struct, `meta` JSON)
    OUT/dropped/    dropped rows plus `drop_stage`, `drop_reason`, `drop_detail`
    OUT/report.json the ledger and the stage facts; OUT/report.html the page
    OUT/branches/<b>/ the kept rows of a config branch (e.g. DPO pairs); OUT/train/<stage>/ a train stage's
                    TRL dataset, checkpoint and configs
    OUT/config.yaml the resolved config;  OUT/cache/ the LLM / embedding cache (survives --overwrite)

`RunFolder` reads those lazily and streams them: nothing here loads a whole large run into a list.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property
from typing import Any

import polars as pl

from datacraft.core.paths import is_jsonl
from datacraft.core.rows import SCORE_PREFIX

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
    users = _turns(row.get("messages"), "user")
    answers = _turns(row.get("chosen"), "assistant") or _turns(row.get("messages"), "assistant")
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


class RunFolder:
    """A finished run folder (`datacraft run ... -o OUT`), read lazily."""

    def __init__(self, path: str) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: not a run folder (no such directory)")
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

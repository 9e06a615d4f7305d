"""Look inside files and finished runs: `describe_file` (schema, counts, a few rows) and `explain_row`
("why was this row dropped?", "where did this synthetic row come from?").

A run folder (DESIGN.md, brief) holds `data/*.parquet|jsonl` (kept rows, written layout: `scores`
packed as a struct / object, `meta` a JSON string or object), `dropped/*.jsonl|parquet` (dropped rows
plus `drop_stage`, `drop_reason`, `drop_detail`), `report.json` and `config.yaml`. `RunFolder` reads
those lazily and streams them: nothing here loads a whole large run into a Python list.
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

from datacraft.records import SCORE_PREFIX

KEPT = "kept"
DROPPED = "dropped"
MISSING = "missing"
PREVIEW_CHARS = 240
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")


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
        and (f.endswith(".parquet") or f.endswith(_JSONL_SUFFIXES))
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
        p = os.path.join(self.path, "report.json")
        if not os.path.exists(p):
            return {}
        with open(p, encoding="utf-8") as fh:
            return json.load(fh)

    @cached_property
    def config_text(self) -> str | None:
        p = os.path.join(self.path, "config.yaml")
        if not os.path.exists(p):
            return None
        with open(p, encoding="utf-8") as fh:
            return fh.read()

    @cached_property
    def output_files(self) -> list[str]:
        return _files_under(os.path.join(self.path, "data"))

    @cached_property
    def dropped_files(self) -> list[str]:
        return _files_under(os.path.join(self.path, "dropped"))

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


def _node(row_id: str, hit: tuple[str, str, dict[str, Any]] | None) -> dict[str, Any]:
    if hit is None:
        return {"id": row_id, "status": MISSING, "method": None, "note": "not in this run's output or dropped rows"}
    status, path, row = hit
    parents, method = row_lineage(row)
    instruction, response = row_texts(row)
    node: dict[str, Any] = {
        "id": row_id,
        "status": status,
        "method": method,
        "parent_ids": parents,
        "task": row.get("task"),
        "source": row.get("source"),
        "instruction": truncate(instruction),
        "response": truncate(response),
        "file": path,
    }
    if status == DROPPED:
        node.update(stage=row.get("drop_stage"), reason=row.get("drop_reason"), detail=row.get("drop_detail"))
    return node


def _tree(root: str, nodes: Mapping[str, dict[str, Any]], seen: frozenset[str] = frozenset()) -> dict[str, Any]:
    node = dict(nodes[root])
    if root in seen:
        node["note"] = "cycle in lineage"
        node["parents"] = []
        return node
    node["parents"] = [_tree(p, nodes, seen | {root}) for p in node.get("parent_ids") or [] if p in nodes]
    return node


def _summary(expl: Mapping[str, Any]) -> str:
    lines = []
    if expl["status"] == DROPPED:
        detail = f": {expl['detail']}" if expl.get("detail") else ""
        lines.append(f"Dropped by stage '{expl['stage']}' ({expl['reason']}){detail}.")
    else:
        lines.append("Kept: the row is in the output.")
    steps = expl["steps"]
    if not steps:
        lines.append("It is a seed row (read from the input, no parents).")
    else:
        for step in steps:
            lines.append(f"{step['id']} was made by '{step['method']}' from {', '.join(step['parent_ids'])}.")
        seeds = expl["seeds"]
        lines.append(f"It descends from {len(seeds)} seed row(s): {', '.join(seeds)}.")
    if expl["missing"]:
        lines.append(f"Not found in this run: {', '.join(expl['missing'])}.")
    return " ".join(lines)


def explain_row(run_dir: str, row_id: str, max_depth: int = 32) -> dict[str, Any]:
    """Why a row was dropped and where it came from.

    Looks the id (or a unique prefix of it) up in the run's output and dropped rows, then walks
    `lineage.parent_ids` level by level (one pass over the run per level) down to the seed rows.
    Returns {"id", "found", "status" (kept|dropped), "stage", "reason", "detail", "row", "lineage"
    (a tree of nodes with "parents"), "steps" (each synthesis step: id, method, parent_ids), "seeds",
    "missing" (ancestors not in the run), "related" (rows named in the drop detail), "summary"}.
    Raises FileNotFoundError for a folder that is not a run.
    """
    run = RunFolder(run_dir)
    hits = run.find_rows([row_id])
    if row_id not in hits:
        candidates = run.ids_with_prefix(row_id) if len(row_id) >= 4 else []
        if len(candidates) == 1:
            row_id = candidates[0]
            hits = run.find_rows([row_id])
        else:
            hint = f"; ids starting with it: {', '.join(candidates)}" if candidates else ""
            return {"id": row_id, "found": False, "candidates": candidates,
                    "summary": f"No row with id {row_id!r} in {run_dir} (output or dropped){hint}."}
    nodes: dict[str, dict[str, Any]] = {row_id: _node(row_id, hits[row_id])}
    frontier = set(nodes[row_id]["parent_ids"])
    depth = 0
    while frontier and depth < max_depth:
        found = run.find_rows(frontier)
        nodes.update({pid: _node(pid, found.get(pid)) for pid in frontier})
        frontier = {p for pid in frontier for p in nodes[pid].get("parent_ids") or [] if p not in nodes}
        depth += 1
    status, path, row = hits[row_id]
    steps = [
        {"id": n["id"], "method": n["method"], "parent_ids": n["parent_ids"]}
        for n in nodes.values()
        if n.get("parent_ids")
    ]
    seeds = [n["id"] for n in nodes.values() if n["status"] != MISSING and not n.get("parent_ids") and n["id"] != row_id]
    missing = [n["id"] for n in nodes.values() if n["status"] == MISSING]
    expl: dict[str, Any] = {
        "id": row_id,
        "found": True,
        "status": status,
        "file": path,
        "stage": row.get("drop_stage"),
        "reason": row.get("drop_reason"),
        "detail": row.get("drop_detail"),
        "row": clean_row(row),
        "lineage": _tree(row_id, nodes),
        "steps": steps,
        "seeds": seeds,
        "missing": missing,
        "depth": depth,
    }
    related_ids = [t for t in re.findall(r"[\w:.\-/]{6,}", str(row.get("drop_detail") or "")) if t != row_id]
    related = run.find_rows(related_ids) if related_ids else {}
    expl["related"] = [_node(rid, hit) for rid, hit in related.items()]
    expl["summary"] = _summary(expl)
    return expl


# ---------------------------------------------------------------------------------------------
# rich views


def render_explanation(expl: Mapping[str, Any]) -> Any:
    """A rich renderable of an `explain_row` answer (used by `datacraft why` and `inspect --id`)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text
    from rich.tree import Tree

    if not expl.get("found"):
        return Panel(Text(expl["summary"], style="yellow"), title="not found", border_style="yellow")
    if expl["status"] == DROPPED:
        head = Text.assemble(("DROPPED", "bold white on red"), "  by stage ", (str(expl["stage"]), "bold"),
                             "  reason ", (str(expl["reason"]), "bold red"))
        if expl.get("detail"):
            head.append(f"\n{expl['detail']}", style="red")
        border = "red"
    else:
        head = Text.assemble(("KEPT", "bold white on green"), "  in the output  ", (os.path.basename(expl["file"]), "dim"))
        border = "green"
    row = expl["row"]
    body = Table.grid(padding=(0, 1))
    body.add_column(style="bold cyan", no_wrap=True)
    body.add_column()
    for key in ("task", "source"):
        if row.get(key):
            body.add_row(key, str(row[key]))
    for m in row.get("messages") or []:
        body.add_row(str(m.get("role")), truncate(m.get("content"), 600))
    for key in ("chosen", "rejected"):
        for m in row.get(key) or []:
            if m.get("role") == "assistant":
                body.add_row(key, truncate(m.get("content"), 600))
    scores = row_scores(row)
    if scores:
        body.add_row("scores", ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    parts: list[Any] = [Panel(Group(head, Text(""), body), title=f"row {expl['id']}", border_style=border)]

    def label(node: Mapping[str, Any]) -> Text:
        t = Text(str(node["id"]), style="bold")
        t.append(f"  {node.get('method') or '?'}", style="magenta")
        status = node["status"]
        style = {"kept": "green", "dropped": "red"}.get(status, "yellow")
        t.append(f"  [{status}", style=style)
        if status == DROPPED:
            t.append(f" by {node.get('stage')}: {node.get('reason')}", style=style)
        t.append("]", style=style)
        if node.get("instruction"):
            t.append(f"\n{truncate(node['instruction'], 120)}", style="dim")
        return t

    def grow(tree: Tree, node: Mapping[str, Any]) -> None:
        for parent in node.get("parents", []):
            grow(tree.add(label(parent)), parent)

    if expl["steps"]:
        tree = Tree(label(expl["lineage"]), guide_style="dim")
        grow(tree, expl["lineage"])
        parts.append(Panel(tree, title="lineage (row ← parents ← … ← seeds)", border_style="magenta"))
    for node in expl.get("related", []):
        parts.append(Text.assemble("related: ", label(node)))
    parts.append(Text(expl["summary"], style="italic"))
    return Group(*parts)


def _type_name(v: Any) -> str:
    if isinstance(v, Mapping):
        return "object"
    if isinstance(v, list):
        return "list"
    return type(v).__name__ if v is not None else "null"


def summarize_file(path: str, n: int = 3) -> dict[str, Any]:
    """Facts about an input/output file (or folder): kind, size, detected format, row count,
    fields with their types, the first `n` records (raw) and as canonical rows."""
    from datacraft.io.readers import ReadOptions, plan_reads, read_task, sniff_format

    if os.path.isdir(path) and os.path.exists(os.path.join(path, "report.json")):
        run = RunFolder(path)
        return {"path": path, "kind": "run", "report": run.report,
                "files": {"data": run.output_files, "dropped": run.dropped_files}}
    tasks = plan_reads(path)
    info: dict[str, Any] = {"path": path, "kind": tasks[0].kind, "files": sorted({t.path for t in tasks})}
    info["bytes"] = sum(os.path.getsize(f) for f in info["files"] if os.path.isfile(f))
    try:
        info["format"] = sniff_format(path)
    except ValueError as err:
        info["format"] = None
        info["format_error"] = str(err)
    fields: dict[str, set[str]] = {}
    samples: list[dict[str, Any]] = []
    rows = 0
    for f in info["files"]:
        if f.endswith(".parquet"):
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(f)
            rows += pf.metadata.num_rows
            for field in pf.schema_arrow:
                fields.setdefault(field.name, set()).add(str(field.type))
            if len(samples) < n:
                samples.extend(next(iter_row_chunks(f, chunk_rows=n), [])[: n - len(samples)])
        elif info["kind"] == "datasets":
            import datasets

            loaded = datasets.load_from_disk(f)
            splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            info["splits"] = {k: v.num_rows for k, v in splits.items()}
            first = next(iter(splits.values()))
            rows += sum(info["splits"].values())
            for name, feat in first.features.items():
                fields.setdefault(name, set()).add(str(feat))
            samples.extend(first.select(range(min(n, first.num_rows))).to_list())
        else:
            for i, (_n, line) in enumerate(iter_jsonl(f)):
                rows += 1
                if i < 200:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        fields.setdefault("<not JSON>", set()).add("line")
                        continue
                    if isinstance(rec, dict):
                        for k, v in rec.items():
                            fields.setdefault(k, set()).add(_type_name(v))
                        if len(samples) < n:
                            samples.append(rec)
    info["rows"] = rows
    info["fields"] = {k: sorted(v) for k, v in fields.items()}
    info["samples"] = samples
    canonical: list[dict[str, Any]] = []
    dropped_reasons: dict[str, int] = {}
    try:
        for kept, dropped in read_task(tasks[0], ReadOptions(limit=max(n, 20))):
            canonical.extend(kept.head(n - len(canonical)).to_dicts() if len(canonical) < n else [])
            if dropped.height:
                for r in dropped["drop_reason"].to_list():
                    dropped_reasons[r] = dropped_reasons.get(r, 0) + 1
    except (ValueError, OSError) as err:
        info["read_error"] = str(err)
    info["canonical"] = canonical
    info["dropped_in_first_rows"] = dropped_reasons
    return info


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def describe_file(path: str, n: int = 3) -> Any:
    """A rich renderable describing a file, folder or run folder: schema, counts, a few rows."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    info = summarize_file(path, n)
    if info["kind"] == "run":
        rep = info["report"]
        t = Table(title=f"run {rep.get('name', '')} · config {rep.get('config_hash', '?')}", title_justify="left")
        for col in ("stage", "in", "created", "kept", "dropped", "seconds"):
            t.add_column(col, justify="left" if col == "stage" else "right")
        for s in rep.get("stages", []):
            drops = ", ".join(f"{k}={v}" for k, v in (s.get("dropped") or {}).items()) or "0"
            t.add_row(str(s.get("name")), str(s.get("in", 0)), str(s.get("created", 0)), str(s.get("kept", 0)),
                      drops, f"{s.get('seconds', 0):.2f}")
        files = Text(f"{len(info['files']['data'])} output file(s), {len(info['files']['dropped'])} dropped file(s)", style="dim")
        return Group(t, files, Text("Use `datacraft why OUT ID` to explain a row.", style="italic"))
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan")
    head.add_column()
    head.add_row("path", path)
    head.add_row("kind", f"{info['kind']} ({len(info['files'])} file(s), {_human_bytes(info['bytes'])})")
    head.add_row("rows", f"{info['rows']:,}")
    head.add_row("format", info["format"] or Text(info.get("format_error", "unknown"), style="red"))
    if info.get("splits"):
        head.add_row("splits", ", ".join(f"{k}={v:,}" for k, v in info["splits"].items()))
    if info["dropped_in_first_rows"]:
        head.add_row("dropped on read", ", ".join(f"{k}={v}" for k, v in info["dropped_in_first_rows"].items()),
                     style="yellow")
    schema = Table(title="fields", title_justify="left")
    schema.add_column("field", style="bold")
    schema.add_column("type(s)")
    for k, v in info["fields"].items():
        schema.add_row(k, " | ".join(v))
    parts: list[Any] = [Panel(head, title="file", border_style="cyan"), schema]
    for i, rec in enumerate(info["samples"]):
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        for k, v in rec.items():
            grid.add_row(str(k), truncate(json.dumps(v, ensure_ascii=False, default=str) if not isinstance(v, str) else v, 300))
        parts.append(Panel(grid, title=f"record {i + 1}", border_style="dim"))
    return Group(*parts)

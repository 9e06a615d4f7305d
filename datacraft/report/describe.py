"""`describe_file`: a file's kind, size, detected format, row count, fields and a few rows."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from datacraft.core.run_folder import REPORT_JSON, RunFolder, iter_jsonl, iter_row_chunks, truncate


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

    if os.path.isdir(path) and os.path.exists(os.path.join(path, REPORT_JSON)):
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


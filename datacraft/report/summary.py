"""The run report: per-stage funnel (in / kept / created / dropped by reason), counters, timings.

`build_report` orders the merged ledger entries (`datacraft.core.ledger`) as the pipeline runs them and checks the ledger (`in + created == kept +
sum(dropped)` for every stage, and each stage's `in` equals the previous stage's `kept`);
`write_report` writes `report.json` (and `report.html` when the renderer is available);
`report_table` renders the funnel for the terminal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from datacraft.core.ledger import LedgerEntry, ledger_problems
from datacraft.core.run_folder import REPORT_JSON

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)


def build_report(
    *,
    name: str,
    config_hash: str,
    stage_order: list[str],
    stats: Mapping[str, Mapping[str, Any]],
    input_path: Any,
    output: Mapping[str, Any],
    started: str,
    seconds: float,
    graph: Mapping[str, Mapping[str, str]] | None = None,
    main_tail: str | None = None,
) -> dict[str, Any]:
    """`graph`: label → {"from": the label it reads, "branch": its branch}, for configs with branches;
    `main_tail`: the stage whose kept rows are the run's output (default: the last)."""
    stages = []
    for label in stage_order:
        entry = dict(stats.get(label) or LedgerEntry(label).to_dict())
        entry["rows_per_s"] = round(entry["in"] / entry["seconds"], 1) if entry.get("seconds") else None
        entry.update((graph or {}).get(label, {}))
        stages.append(entry)
    problems = ledger_problems(stages)
    tail = next((s for s in stages if s["name"] == main_tail), stages[-1] if stages else None)
    return {
        "name": name,
        "config_hash": config_hash,
        "input": input_path,
        "output": dict(output),
        "started": started,
        "seconds": round(seconds, 3),
        "rows_in": stages[0]["in"] if stages else 0,
        "rows_out": tail["kept"] if tail else 0,
        "ledger_ok": not problems,
        "ledger_problems": problems,
        "stages": stages,
    }


#: the metadata files of a `datasets.save_to_disk` folder (not rows)
DATASETS_METADATA = {"dataset_info.json", "state.json", "dataset_dict.json"}


def read_shard_columns(path: str, columns: Mapping[str, Any]) -> pl.DataFrame | None:
    """`columns` (name → polars dtype) of one written shard (Parquet, JSONL or a `datasets` Arrow
    stream); None for a file that holds no rows. A column the shard lacks is absent from the result.

    JSONL is scanned with `columns` as its schema, so polars parses only those fields (a full read
    of a dropped-rows file with its messages took 10× longer); a value of another JSON type is
    converted to the dtype the way polars reads it (an integer id → its digits)."""
    import polars as pl

    if path.endswith(".parquet"):
        have = pl.read_parquet_schema(path)
        return pl.read_parquet(path, columns=[c for c in columns if c in have])
    if path.endswith(".jsonl") or (path.endswith(".json") and os.path.basename(path) not in DATASETS_METADATA):
        if not os.path.getsize(path):
            return pl.DataFrame()
        frame = pl.scan_ndjson(path, schema=dict(columns)).collect()
        # a key no line holds reads as all-null: absent, as in a Parquet shard without it
        return frame.select([c for c in frame.columns if frame[c].null_count() < frame.height])
    if path.endswith(".arrow"):  # a `datasets` folder's shards are Arrow IPC streams
        import pyarrow as pa

        with pa.memory_map(path) as source:
            table = pa.ipc.open_stream(source).read_all()
        return pl.from_arrow(table.select([c for c in columns if c in table.column_names]))
    return None


def lineage_counts(files: list[str]) -> dict[str, int]:
    """Rows per `lineage.method` in written shards (Parquet or JSONL), most frequent first."""
    from datacraft.core.rows import LINEAGE_DTYPE

    counts: dict[str, int] = {}
    for f in files:
        frame = read_shard_columns(f, {"lineage": LINEAGE_DTYPE})
        if frame is None or frame.height == 0 or "lineage" not in frame.columns:
            continue
        methods = frame["lineage"].struct.field("method").fill_null("seed")
        for method, n in methods.value_counts().iter_rows():
            counts[method] = counts.get(method, 0) + int(n)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


DROP_COLUMNS = ["id", "drop_stage", "drop_reason", "drop_detail"]


def _shard_ids(files: list[str]) -> pl.Series:
    """The sorted ids of the rows in `files` (byte order of UTF-8 = code point order, as `sorted`)."""
    import polars as pl

    parts = [fr["id"].cast(pl.Utf8) for f in files if (fr := read_shard_columns(f, {"id": pl.Utf8})) is not None and "id" in fr.columns]
    return (pl.concat(parts) if parts else pl.Series("id", [], pl.Utf8)).sort()


def _digest_lines(h: Any, lines: pl.Series) -> None:
    """Feed `lines` (each already ending in a newline) to the hash in one call per million rows."""
    for start in range(0, lines.len(), 1_000_000):
        h.update(lines.slice(start, 1_000_000).str.join("").item().encode())


def output_digest(data_files: list[str], dropped_files: list[str], read_stage: str = "read",
                  branches: Mapping[str, list[str]] | None = None) -> str:
    """sha256 (first 16 hex) of a run's outcome: the kept ids, each drop's id, stage, reason and
    detail, the reasons of the read stage's drops (a malformed line is named by its file and
    line, which a different split of the same input moves), and the kept ids of each side branch
    (`branches`: name → its files under OUT/branches/). Independent of shard order, so two
    runs of one config on one input can be compared by eye."""
    import polars as pl

    frames = [fr for f in dropped_files if (fr := read_shard_columns(f, dict.fromkeys(DROP_COLUMNS, pl.Utf8))) is not None and fr.height]
    dropped = (pl.concat([fr.select([pl.col(c).cast(pl.Utf8) if c in fr.columns else pl.lit(None, pl.Utf8).alias(c) for c in DROP_COLUMNS])
                          for fr in frames]) if frames else pl.DataFrame(schema=dict.fromkeys(DROP_COLUMNS, pl.Utf8)))
    h = hashlib.sha256()
    _digest_lines(h, "k\t" + _shard_ids(data_files) + "\n")
    is_read = pl.col("drop_stage") == read_stage
    rows = dropped.filter(~is_read).sort(DROP_COLUMNS, nulls_last=True)
    _digest_lines(h, rows.select(pl.concat_str([pl.lit("d"), *(pl.col(c).fill_null("") for c in DROP_COLUMNS)], separator="\t") + "\n").to_series())
    reasons = dropped.filter(is_read)["drop_reason"].fill_null("None").sort()
    _digest_lines(h, "r\t" + reasons + "\n")
    for branch in sorted(branches or {}):
        _digest_lines(h, f"b\t{branch}\t" + _shard_ids(list((branches or {})[branch])) + "\n")
    return h.hexdigest()[:16]


def write_report(run_dir: str | Path, report: dict[str, Any], html: bool = True, pending: Mapping[str, Future[Any]] | None = None) -> Path:
    """Write report.json (adding each score's spread, `scores`, the first time) and report.html.
    `pending`: report keys whose values are still being computed (a future each: the run's output
    digest reads the files while the facts are read); they are filled before the HTML is drawn."""
    path = Path(run_dir) / REPORT_JSON
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    facts = None
    if "scores" not in report or html:
        from datacraft.report.facts import collect_facts
        from datacraft.report.spread import score_spreads

        try:
            facts = collect_facts(str(run_dir))
        except Exception as err:  # the data is written; a report that cannot be read back must not fail the run
            log.warning("the run's scores could not be summarised: %s", err)
        if facts is not None and "scores" not in report:
            report["scores"] = score_spreads(facts.scores_all, facts.scores_kept, report.get("score_uses") or {})
            path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
            facts.report = report
            for warning in (s["warning"] for s in report["scores"].values() if s.get("warning")):
                log.warning("%s", warning)
    for key, future in (pending or {}).items():
        report[key] = future.result()
    if html and facts is not None:
        from datacraft.report.html import render_html

        try:
            render_html(str(run_dir), facts)
        except Exception as err:  # the data is written; a broken plot must not fail the run
            log.warning("report.html could not be rendered: %s", err)
    return path


def report_table(report: Mapping[str, Any]) -> Table:
    digest = f" · digest {report['output_digest']}" if report.get("output_digest") else ""
    table = Table(title=f"{report['name']} — {report['rows_in']} in → {report['rows_out']} out ({report['seconds']:.1f} s){digest}")
    for col in ("stage", "in", "created", "kept", "dropped", "why dropped", "s"):
        table.add_column(col, justify="left" if col in ("stage", "why dropped") else "right")
    for s in report["stages"]:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(s["dropped"].items(), key=lambda kv: -kv[1]))
        table.add_row(
            s["name"],
            str(s["in"]),
            str(s["created"] or ""),
            str(s["kept"]),
            str(sum(s["dropped"].values())),
            reasons[:90],
            f"{s['seconds']:.2f}",
        )
    return table

"""The run report: per-stage funnel (in / kept / created / dropped by reason), counters, timings.

`merge_stats` folds the per-batch ledger entries the stages emit into one entry per stage;
`build_report` orders them as the pipeline runs and checks the ledger (`in + created == kept +
sum(dropped)` for every stage, and each stage's `in` equals the previous stage's `kept`);
`write_report` writes `report.json` (and `report.html` when the renderer is available);
`report_table` renders the funnel for the terminal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich.table import Table

log = logging.getLogger(__name__)
MAX_EXTRA_ITEMS = 50


def _merge_extras(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, list):
            into.setdefault(key, [])
            room = MAX_EXTRA_ITEMS - len(into[key])
            if room > 0:
                into[key].extend(value[:room])
        elif isinstance(value, dict):
            target = into.setdefault(key, {})
            for k, v in value.items():
                if isinstance(v, int | float) and isinstance(target.get(k), int | float) and not isinstance(v, bool):
                    target[k] = target[k] + v
                else:
                    target[k] = v
        else:
            into[key] = value


def merge_stats(entries: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-batch ledger entries → one entry per stage label."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        s = out.setdefault(
            e["stage"],
            {"name": e["stage"], "in": 0, "kept": 0, "created": 0, "dropped": {}, "seconds": 0.0, "counters": {}, "extras": {}},
        )
        s["in"] += e["in"]
        s["kept"] += e["kept"]
        s["created"] += e.get("created", 0)
        s["seconds"] += e.get("seconds", 0.0)
        for reason, n in e.get("dropped", {}).items():
            s["dropped"][reason] = s["dropped"].get(reason, 0) + n
        for name, v in e.get("counters", {}).items():
            s["counters"][name] = s["counters"].get(name, 0) + v
        _merge_extras(s["extras"], e.get("extras", {}))
    return out


def ledger_problems(stages: list[Mapping[str, Any]]) -> list[str]:
    """Every way the counts fail to add up (empty list = the ledger balances)."""
    problems = []
    previous_kept: int | None = None
    for s in stages:
        dropped = sum(s["dropped"].values())
        if s["in"] + s["created"] != s["kept"] + dropped:
            problems.append(f"{s['name']}: in {s['in']} + created {s['created']} != kept {s['kept']} + dropped {dropped}")
        if previous_kept is not None and s["in"] != previous_kept:
            problems.append(f"{s['name']}: in {s['in']} != previous stage's kept {previous_kept}")
        previous_kept = s["kept"]
    return problems


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
) -> dict[str, Any]:
    stages = []
    for label in stage_order:
        entry = dict(stats.get(label) or {"name": label, "in": 0, "kept": 0, "created": 0, "dropped": {}, "seconds": 0.0, "counters": {}, "extras": {}})
        entry["rows_per_s"] = round(entry["in"] / entry["seconds"], 1) if entry.get("seconds") else None
        stages.append(entry)
    problems = ledger_problems(stages)
    return {
        "name": name,
        "config_hash": config_hash,
        "input": input_path,
        "output": dict(output),
        "started": started,
        "seconds": round(seconds, 3),
        "rows_in": stages[0]["in"] if stages else 0,
        "rows_out": stages[-1]["kept"] if stages else 0,
        "ledger_ok": not problems,
        "ledger_problems": problems,
        "stages": stages,
    }


def write_report(run_dir: str | Path, report: Mapping[str, Any], html: bool = True) -> Path:
    path = Path(run_dir) / "report.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    if html:
        try:
            from datacraft.report_html import render_html
        except ImportError:
            log.info("report.html skipped: the HTML renderer is not installed")
        else:
            try:
                render_html(str(run_dir))
            except Exception as err:  # the data is written; a broken plot must not fail the run
                log.warning("report.html could not be rendered: %s", err)
    return path


def report_table(report: Mapping[str, Any]) -> Table:
    table = Table(title=f"{report['name']} — {report['rows_in']} in → {report['rows_out']} out ({report['seconds']:.1f} s)")
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

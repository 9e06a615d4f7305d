"""The run driver: a config in, a finished run folder out (data/, dropped/, report.json, report.html).

    rows, dropped = read(config.input)
    for stage in config.stages: rows, dropped[stage] = rows | stage
    write(rows, config.output); write(dropped, OUT/dropped); write_report(ledger)

The graph itself is built in `datacraft.beam.pipeline`; the default runner is Beam's in-process
FnApiRunner (no Prism download); any other runner (`--runner=…`) is passed through.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from datacraft.core.graph import MAIN_BRANCH, branch_tails
from datacraft.core.run_folder import BRANCHES_DIR, DATA_DIR, DROPPED_DIR, STATS_FILE, writing
from datacraft.io.readers import READ_STAGE
from datacraft.io.writers import to_datasets_folder
from datacraft.pipeline.config import PipelineConfig, dump_config, load_config
from datacraft.report.spread import score_uses
from datacraft.report.summary import build_report, lineage_counts, output_digest, write_report


def check_output_names(config: PipelineConfig) -> None:
    """Names that become file or folder names under OUT (the split, stage ids) hold no path
    separator and are not `.` / `..`, so a config value cannot write outside OUT."""
    from datacraft.pipeline.config import ConfigError

    named = [("output.split", config.output.split)] + [(f"stages[{i}].id", label) for i, label in enumerate(config.stage_labels())]
    for key, value in named:
        if not value or value in (".", "..") or any(ch in value for ch in ("/", "\\", "\0")) or value.startswith("."):
            raise ConfigError(f"{key}: {value!r} is not a valid name (it names files under the output folder: no '/', '\\' or leading '.')")


def check_api_keys(config: PipelineConfig) -> None:
    """An API key that cannot go in an HTTP header (non-ASCII: a paste error) fails before any
    work, naming the variable, never the key."""
    from datacraft.pipeline.config import ConfigError

    engines = [config.llm.model_dump(), *(s["llm"] for s in config.stages if isinstance(s.get("llm"), dict))]
    for engine in engines:
        if engine.get("engine", config.llm.engine) != "openai":
            continue
        var = engine.get("api_key_env") or config.llm.api_key_env
        key = os.environ.get(var)
        if key and (not key.isascii() or any(c.isspace() or ord(c) < 32 for c in key.strip())):
            raise ConfigError(f"llm.api_key_env: the API key in ${var} holds non-ASCII, space or control characters (a paste error?)")


def run_config(config: PipelineConfig, beam_args: Sequence[str] = (), test_pipeline: Any = None,
               given: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Run a config end to end; returns the report (also written to OUT/report.json). `given`: stage
    label → extra constructor arguments (an injected client: tests, a shared server).

    The folder is opened by `run_folder.writing`: locked, resumed when a killed run of the same
    config left it, replaced atomically with `--overwrite`, and marked finished only at the end."""
    if not config.output.path:
        raise ValueError("output.path is not set (use -o OUT)")
    check_output_names(config)
    check_api_keys(config)
    with writing(config.output.path, dump_config(config), config.hash(), config.output.overwrite) as out_dir:
        return _run_into(config, out_dir, beam_args, test_pipeline, given)


def _run_into(config: PipelineConfig, out_dir: str, beam_args: Sequence[str], test_pipeline: Any,
              given: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    from datacraft.beam.pipeline import execute

    timings = execute(config, out_dir, beam_args, test_pipeline, given)
    stats_path = Path(out_dir, STATS_FILE)
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    stats_path.unlink()
    data_dir = os.path.join(out_dir, DATA_DIR)
    if config.output.format == "datasets":
        shards = sorted(str(f) for f in Path(data_dir).glob("*.parquet"))
        tmp = tempfile.mkdtemp(dir=out_dir)
        to_datasets_folder(shards, os.path.join(tmp, "ds"), config.output.split)
        for f in shards:
            os.remove(f)
        os.rmdir(data_dir)
        os.replace(os.path.join(tmp, "ds"), data_dir)
        os.rmdir(tmp)
    plans = config.plan()
    tails = branch_tails(plans)
    branched = len(tails) > 1 or any(p.slice for p in plans)
    report = build_report(
        name=config.name,
        config_hash=config.hash(),
        stage_order=[READ_STAGE, *config.stage_labels()],
        stats=stats,
        input_path=config.input.path,
        output={"path": config.output.path, "format": config.output.format, "row_format": config.output.row_format,
                "files": _files(out_dir, data_dir)},
        started=started,
        seconds=time.perf_counter() - t0,
        graph={p.label: {"from": p.source, "branch": p.branch} for p in plans} if branched else None,
        main_tail=tails[MAIN_BRANCH],
    )
    report.update(branch_sections(out_dir, tails, report["stages"]))
    side = {b: [os.path.join(out_dir, f) for f in info["files"]] for b, info in report["branches"].items() if b != MAIN_BRANCH}
    with ThreadPoolExecutor(1) as pool:  # the digest reads the written files while the report reads them too
        digest = pool.submit(output_digest, [os.path.join(out_dir, f) for f in report["output"]["files"]],
                             [str(f) for f in sorted(Path(out_dir, DROPPED_DIR).rglob("*")) if f.is_file()], branches=side)
        report["output_digest"] = None  # its place in report.json; filled by write_report
        report["timings"] = timings
        report["score_uses"] = score_uses((s.label, s.name, s.params.model_dump(mode="json")) for s in config.build_stages())
        t_report = time.perf_counter()
        write_report(out_dir, report, html=config.output.html_report, pending={"output_digest": digest})
    report["timings"]["report_s"] = round(time.perf_counter() - t_report, 3)
    write_report(out_dir, report, html=False)  # again, with the report's own time
    return report


def _files(out_dir: str, folder: str) -> list[str]:
    return sorted(str(f.relative_to(out_dir)) for f in Path(folder).rglob("*") if f.is_file())


def branch_sections(out_dir: str, tails: Mapping[str, str], stages: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's `branches` (per branch: last stage, rows, files), `lineage` (rows per method in
    each branch's output) and `training` (the summary of each train stage)."""
    branches: dict[str, Any] = {}
    lineage: dict[str, dict[str, int]] = {}
    kept = {s["name"]: s["kept"] for s in stages}
    for branch, tail in tails.items():
        folder = os.path.join(out_dir, DATA_DIR if branch == MAIN_BRANCH else os.path.join(BRANCHES_DIR, branch))
        files = _files(out_dir, folder) if os.path.isdir(folder) else []
        branches[branch] = {"stage": tail, "rows": kept.get(tail, 0), "files": files}
        lineage[branch] = lineage_counts([os.path.join(out_dir, f) for f in files])
    training = {s["name"]: s["extras"]["training"] for s in stages if "training" in (s.get("extras") or {})}
    return {"branches": branches, "lineage": lineage, **({"training": training} if training else {})}


def run(argv: Sequence[str] | None = None, test_pipeline: Any = None) -> dict[str, Any]:
    """`python -m pipelines.curate --config C [--input I] [--output O] [--set k=v] [beam options]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--overwrite", action="store_true")
    known, beam_args = parser.parse_known_args(argv)
    overrides = list(known.overrides)
    if known.input:
        overrides.append(f"input.path={known.input}")
    if known.output:
        overrides.append(f"output.path={known.output}")
    if known.overwrite:
        overrides.append("output.overwrite=true")
    config = load_config(known.config, overrides)
    return run_config(config, beam_args, test_pipeline)

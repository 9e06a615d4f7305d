"""The `datacraft` command line.

    datacraft run CONFIG [-i INPUT] [-o OUT] [--set k=v]... [--overwrite] [-- BEAM OPTIONS]
    datacraft filter INPUT -o OUT [--dedup exact|near|semantic] [--min SCORE=V] [--select N|P%] …
    datacraft inspect FILE [--id ID]
    datacraft stages [NAME]
    datacraft --version
    … plus the commands other modules register (serve, dedup-calibrate, train, publish, report, why).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

app = typer.Typer(
    name="datacraft",
    help=(
        "Curate instruction-tuning data for LLMs: read → synthesize → score → deduplicate → select → write, "
        "as an Apache Beam pipeline (in-process by default; Flink / Spark / Dataflow with --runner).\n\n"
        "Example: datacraft run configs/default.yaml -o out/default"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)
DISTRIBUTION = "datacraft-curate"  # the PyPI name; `datacraft` on PyPI is an unrelated project


def _value_label(self: Any, ctx: Any) -> str | None:
    """Help shows a value placeholder (`-o OUTPUT`) and nothing for flags, not typer's `<str>` / `<bool>`."""
    if self.metavar is not None:
        return self.metavar
    if getattr(self, "is_flag", False) or isinstance(self, typer.core.TyperArgument):
        return None
    return (self.name or "value").strip("_").upper()


typer.core.TyperOption.display_type_rich = _value_label
typer.core.TyperArgument.display_type_rich = _value_label


def version_text() -> str:
    """`datacraft <version> (PyPI distribution datacraft-curate)`."""
    from datacraft import __version__

    return f"datacraft {__version__} (PyPI distribution {DISTRIBUTION})"


def _show_version(value: bool) -> None:
    if value:
        print(version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """Curate instruction-tuning data for LLMs."""


_DEBUG = False  # `--debug`: errors show their traceback


def _fail(message: str, code: int = 2) -> None:
    handling = sys.exc_info()[1]
    if _DEBUG and handling is not None:
        raise handling
    _error_line(message)
    raise typer.Exit(code)


def _error_line(message: str) -> None:
    """`error: …` on one line (not wrapped, no markup read from the message)."""
    console.print(Text.assemble(("error: ", "bold red"), " ".join(message.split())), soft_wrap=True)


def _run_with_progress(config: Any, beam_args: list[str]) -> dict[str, Any]:
    """Run a config with live per-stage row counts, then print the funnel table."""
    from datacraft.core import progress
    from datacraft.pipeline.run import run_config
    from datacraft.report.summary import report_table

    labels = ["read", *config.stage_labels()]
    with Progress(
        SpinnerColumn(), TextColumn("{task.description:<18}"), TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        tasks = {label: bar.add_task(label, total=None, counts="waiting") for label in labels}
        seen: dict[str, list[int]] = {label: [0, 0] for label in labels}

        plain = progress.ProgressLog(labels, time.monotonic())
        stop = threading.Event()
        every = float(os.environ.get("DATACRAFT_PROGRESS_SECONDS", "30"))

        def log_lines() -> None:  # no terminal (a log file, CI): one line every `every` seconds
            while not stop.wait(every):
                console.print(plain.line(time.monotonic()), soft_wrap=True, highlight=False)

        if not console.is_terminal and every > 0:
            threading.Thread(target=log_lines, name="datacraft-progress", daemon=True).start()

        def sink(stage: str, rows_in: int, rows_kept: int) -> None:
            plain.record(stage, rows_in, rows_kept)
            if stage in tasks:
                seen[stage][0] += rows_in
                seen[stage][1] += rows_kept
                bar.update(tasks[stage], counts=f"{seen[stage][0]:>9,} in  {seen[stage][1]:>9,} kept")

        progress.set_sink(sink)
        try:
            report = run_config(config, beam_args)
        finally:
            progress.set_sink(None)
            stop.set()
    Console().print(report_table(report))
    if not report["ledger_ok"]:
        console.print("[bold red]ledger does not balance:[/] " + "; ".join(report["ledger_problems"]))
    for label, t in (report.get("training") or {}).items():
        losses = t.get("losses") or []
        loss = f", loss {losses[0]:.3f} → {losses[-1]:.3f}" if losses else ""
        speed = f": {t['steps']} steps, {t['steps_per_second']} steps/s{loss}" if "steps" in t else ""
        why = f" ({t['error']})" if t.get("error") else ""
        console.print(f"{label} ({t.get('kind')}): {t.get('status')}{speed}{why}; in {t.get('output_dir')}")
    console.print(f"wrote {config.output.path} (report: {Path(config.output.path) / 'report.html'})")
    return report


def _load(config_path: str | None, overrides: list[str], data: dict[str, Any] | None = None) -> Any:
    from datacraft.pipeline.config import ConfigError, load_config

    try:
        return load_config(config_path, overrides, data=data)
    except ConfigError as err:
        _fail(str(err))


def _run_or_fail(config: Any, beam_args: list[str]) -> dict[str, Any]:
    from datacraft.io.formats import FormatDetectionError

    try:
        report = _run_with_progress(config, beam_args)
    except (FileExistsError, FileNotFoundError, FormatDetectionError, ValueError) as err:
        _fail(str(err))
    if not report["ledger_ok"] or any(t.get("status") == "failed" for t in (report.get("training") or {}).values()):
        raise typer.Exit(1)  # a failed training keeps the curated rows written; the exit code says it failed
    return report


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Example: datacraft run configs/filter.yaml -i data.jsonl -o out/clean --set filter.where='length.response >= 5' -- --direct_num_workers=2",
)
def run(
    ctx: typer.Context,
    config: Annotated[str, typer.Argument(help="YAML config (see configs/)")],
    input: Annotated[str | None, typer.Option("-i", "--input", help="replace the config's input path")] = None,
    output: Annotated[str | None, typer.Option("-o", "--output", help="output folder")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override: stage.param=value or section.key=value")] = [],  # noqa: B006
    overwrite: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
) -> None:
    """Run a pipeline from a YAML config. Extra arguments after `--` go to Beam (--runner, …)."""
    overrides = list(set_)
    if input:
        overrides.append(f"input.path={input}")
    if output:
        overrides.append(f"output.path={output}")
    if overwrite:
        overrides.append("output.overwrite=true")
    cfg = _load(config, overrides)
    _run_or_fail(cfg, list(ctx.args))


def _parse_min(items: list[str]) -> list[str]:
    conds = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            _fail(f"--min {item!r}: expected SCORE=VALUE, e.g. --min length.response=5")
        try:
            float(value)
        except ValueError:
            _fail(f"--min {item!r}: {value!r} is not a number")
        conds.append(f"{name.strip()} >= {value.strip()}")
    return conds


LLM_SCORERS = {"quality", "complexity", "ifd", "reward"}
SELECT_STAGES = {"facility-location": "select", "deita": "deita_select", "smart": "smart_mixture"}


def filter_config(
    input_path: str,
    output: str,
    *,
    fmt: str = "auto",
    dedup: list[str] = (),
    threshold: float | None = None,
    mins: list[str] = (),
    select: str | None = None,
    by: str = "facility-location",
    task_field: str = "task",
    keep_format: bool = False,
    sample: int | None = None,
    llm_engine: str | None = None,
    llm_model: str | None = None,
    llm_base_url: str | None = None,
    embedder: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The config dict equivalent to `datacraft filter` flags."""
    from datacraft.io.readers import sniff_format

    if fmt == "auto":
        sniff_format(input_path)  # fails early, listing the fields seen, when no known format fits
    # rows keep being detected one by one, so a mixed file converts each row by its own format
    conditions = _parse_min(list(mins))
    scores = {c.split()[0] for c in conditions}
    stages: list[dict[str, Any]] = [{"name": "heuristics"}]
    for scorer in sorted(scores & LLM_SCORERS):
        if not llm_engine and scorer != "ifd":
            _fail(f"--min {scorer}=…: the {scorer} scorer needs an engine (--llm-engine transformers|vllm|openai)")
        stages.append({"name": scorer})
    if conditions:
        stages.append({"name": "filter", "where": conditions})
    for kind in dedup:
        if kind == "exact":
            stages.append({"name": "exact_dedup", "text": "instruction"})
        elif kind == "near":
            stages.append({"name": "near_dedup", **({"threshold": threshold} if threshold is not None else {})})
        elif kind == "semantic":
            stages.append({"name": "semantic_dedup", **({"threshold": threshold} if threshold is not None else {})})
        else:
            _fail(f"--dedup {kind!r}: expected exact, near or semantic")
    if select:
        if by not in SELECT_STAGES:
            _fail(f"--by {by!r}: expected one of {', '.join(SELECT_STAGES)}")
        text = select.strip()
        try:
            budget = float(text[:-1]) / 100 if text.endswith("%") else int(text)
        except ValueError:
            _fail(f"--select {select!r}: expected a row count (1000) or a percentage (10%)")
        if budget <= 0 or (text.endswith("%") and budget >= 1):
            _fail(f"--select {select!r}: a percentage must be in (0, 100); to keep every row leave out --select")
        stages.append({"name": SELECT_STAGES[by], "budget": budget})  # the reader maps --task-field to `task`
    out_format = "jsonl" if keep_format and not input_path.endswith(".parquet") and not os.path.isdir(input_path) else "parquet"
    config: dict[str, Any] = {
        "name": "filter",
        "input": {"path": input_path, "format": fmt, "task_field": task_field, **({"limit": sample} if sample else {})},
        "stages": stages,
        "output": {"path": output, "format": out_format, "row_format": "keep" if keep_format else "datacraft", "overwrite": overwrite},
    }
    llm = {k: v for k, v in {"engine": llm_engine, "model": llm_model, "base_url": llm_base_url}.items() if v}
    if llm:
        config["llm"] = llm
    if embedder:
        config["embedder"] = {"kind": embedder}
    return config


@app.command(
    "filter",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=(
        "Examples:\n\n"
        "  datacraft filter corpus.jsonl -o out/clean --dedup exact --min length.response=5 --keep-format\n\n"
        "  datacraft filter t0.jsonl -o out/mix --dedup semantic --threshold 0.92 --select 10% --by smart --task-field task\n\n"
        "  datacraft filter corpus.jsonl -o out/look --sample 200 --save-config my.yaml"
    ),
)
def filter_cmd(
    ctx: typer.Context,
    input: Annotated[str, typer.Argument(help="JSONL(.gz) / Parquet file or folder / datasets folder")],
    output: Annotated[str, typer.Option("-o", "--output", help="output folder")],
    format: Annotated[str, typer.Option("--format", help="auto|alpaca|sharegpt|messages|completion|preference")] = "auto",
    dedup: Annotated[list[str], typer.Option("--dedup", help="exact | near | semantic (repeatable)")] = [],  # noqa: B006
    threshold: Annotated[float | None, typer.Option(help="near: Jaccard; semantic: cosine similarity")] = None,
    min_: Annotated[list[str], typer.Option("--min", help="SCORE=VALUE, keep rows with score >= value (repeatable)")] = [],  # noqa: B006
    select: Annotated[str | None, typer.Option(help="keep N rows or P% (e.g. 1000 or 10%)")] = None,
    by: Annotated[str, typer.Option(help="facility-location | deita | smart")] = "facility-location",
    task_field: Annotated[str, typer.Option(help="record field with the task label (for --by smart)")] = "task",
    keep_format: Annotated[bool, typer.Option(help="write rows back in the input's own format")] = False,
    sample: Annotated[int | None, typer.Option(help="read only the first N records (a dry look)")] = None,
    save_config: Annotated[str | None, typer.Option(help="write the equivalent YAML config here")] = None,
    llm_engine: Annotated[str | None, typer.Option(help="engine for LLM scorers: transformers|vllm|openai")] = None,
    llm_model: Annotated[str | None, typer.Option(help="model name or path (default: embedded)")] = None,
    llm_base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL")] = None,
    embedder: Annotated[str | None, typer.Option(help="sentence-transformers (accurate) | static (≈70× faster)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
) -> None:
    """Clean and cut down an existing corpus in one command, without writing a YAML file."""
    from datacraft.io.formats import FormatDetectionError

    try:
        data = filter_config(
            input, output, fmt=format, dedup=dedup, threshold=threshold, mins=min_, select=select, by=by,
            task_field=task_field, keep_format=keep_format, sample=sample, llm_engine=llm_engine,
            llm_model=llm_model, llm_base_url=llm_base_url, embedder=embedder, overwrite=overwrite,
        )
    except (FormatDetectionError, FileNotFoundError) as err:
        _fail(str(err))
    cfg = _load(None, [], data=data)
    if save_config:
        saved = {k: v for k, v in data.items()}
        saved["output"] = {k: v for k, v in data["output"].items() if k != "overwrite"}
        Path(save_config).write_text(yaml.safe_dump(saved, sort_keys=False, allow_unicode=True), encoding="utf-8")
        console.print(f"saved the equivalent config to {save_config} (repeat with: datacraft run {save_config} -o OUT)")
    _run_or_fail(cfg, list(ctx.args))


@app.command(epilog="Examples: datacraft inspect out/default/data/train-00000-of-00001.parquet ; datacraft inspect out/default --id 3fa2…")
def inspect(
    path: Annotated[str, typer.Argument(help="a data file / folder, or a run folder with --id")],
    id: Annotated[str | None, typer.Option("--id", help="explain this row: why dropped / where it came from")] = None,  # noqa: A002
    rows: Annotated[int, typer.Option("-n", help="rows to show")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print the explanation as JSON")] = False,
) -> None:
    """Show a file's format, schema, counts and a few rows — or, with --id, why a row was dropped and its lineage."""
    from datacraft.report.describe import describe_file
    from datacraft.report.explain import explain_row, render_explanation

    try:
        if id is not None:
            explanation = explain_row(path, id)
            if as_json:
                Console().print_json(data=explanation)
            else:
                Console().print(render_explanation(explanation))
            if not explanation.get("found"):
                raise typer.Exit(1)
            return
        Console().print(describe_file(path, rows))
    except FileNotFoundError as err:  # also an unfinished run folder: its rows are partial
        _fail(str(err))


def _param_rows(cls: Any) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) for each parameter of a stage, defaults in full."""
    rows = []
    for key, field in cls.Params.model_fields.items():
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        ann = field.annotation
        kind = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
        rows.append((key, kind, default, field.description or ""))
    return rows


def _stage_detail(name: str) -> None:
    """Print one stage: its docstring, parameters with types and defaults, what it reads and writes, an example."""
    from rich.table import Table

    from datacraft.stages.registry import stage_class

    cls = stage_class(name)
    out = Console()
    out.print(f"[bold]{name}[/] ({cls.kind}): {(cls.__doc__ or '').strip()}")
    table = Table(title="parameters")
    for column in ("name", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for row in _param_rows(cls):
        table.add_row(*row)
    out.print(table)
    try:
        stage = cls()
        out.print(f"reads: {', '.join(sorted(stage.reads())) or '—'}")
        out.print(f"writes: {', '.join(sorted(stage.writes())) or '—'}")
    except Exception as err:  # a required parameter: reads/writes depend on it
        out.print(f"reads / writes: depend on the parameters ({type(err).__name__})")
    out.print(f"example config:\n  stages:\n    - name: {name}")


@app.command(epilog="Examples: datacraft stages ; datacraft stages complexity")
def stages(
    name: Annotated[str | None, typer.Argument(help="show one stage in detail: parameters, types, reads / writes")] = None,
) -> None:
    """List the registered stages and their parameters (with defaults), or one stage in detail."""
    from rich.table import Table

    from datacraft.stages.registry import stage_class, stage_names

    if name is not None:
        if name not in stage_names():
            _fail(f"unknown stage {name!r}; registered: {', '.join(stage_names())}", code=1)
        _stage_detail(name)
        return
    table = Table(title="stages (datacraft stages NAME for one in detail)")
    table.add_column("name")
    table.add_column("kind")
    table.add_column("parameters (default)", overflow="fold")
    for stage_name in stage_names():
        try:
            cls = stage_class(stage_name)
        except Exception as err:  # a stage whose optional dependency is missing
            table.add_row(stage_name, "?", f"unavailable: {err}")
            continue
        table.add_row(stage_name, cls.kind, ", ".join(f"{key}={default}" for key, _, default, _ in _param_rows(cls)))
    Console().print(table)


def _register_commands() -> None:
    """The commands defined in the other modules of this package (each has `register(app)`)."""
    from datacraft.cli import dedup, fit_scorer, lift, report, serve, train

    for module in (serve, dedup, train, report, lift, fit_scorer):
        module.register(app)


_register_commands()


class _QuietBeamImports(logging.Filter):
    """Beam warns at import time about GCP client libraries this tool never uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def main(argv: list[str] | None = None) -> None:
    """The console entry point. An error ends with one line naming file, line and field (exit 2
    for bad input or config, 1 for a failure of the machinery); `--debug` shows the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    cut = args.index("--") if "--" in args else len(args)
    global _DEBUG
    debug = _DEBUG = "--debug" in args[:cut]
    if debug:
        args.remove("--debug")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietBeamImports())
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    try:
        app(args=args, prog_name="datacraft")
    except KeyboardInterrupt:
        console.print("interrupted; rerun the same command to resume (finished LLM / embedding calls are cached)")
        sys.exit(130)
    except Exception as err:  # noqa: BLE001  (the one place that turns any error into one line)
        if debug:
            raise
        user_error = isinstance(err, (ValueError, OSError, LookupError))
        text = str(err) or type(err).__name__
        _error_line(text if user_error else f"internal failure ({type(err).__name__}: {text}); rerun with --debug for the traceback")
        sys.exit(2 if user_error else 1)
    finally:
        _DEBUG = False


if __name__ == "__main__":
    main()

"""The curation graph on Beam: read tasks → stages → shard writers for kept and dropped rows → the
merged ledger. `execute` builds and runs it for a `PipelineConfig`; the driver
(`datacraft.pipeline.run`) never sees Beam."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import polars as pl
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.pvalue import AsSingleton, TaggedOutput

from datacraft.beam.coder import frames_by_reference
from datacraft.beam.transform import DROPPED, KEPT, STATS, in_global_window, stage_transform
from datacraft.core import progress
from datacraft.core.graph import MAIN_BRANCH, READ_LABEL, branch_tails
from datacraft.core.ledger import LedgerEntry, merge_entries
from datacraft.core.rows import content_hash
from datacraft.core.run_folder import BRANCHES_DIR, DATA_DIR, DROPPED_DIR, PARTS_PREFIX, STATS_FILE
from datacraft.io.readers import READ_STAGE, ReadOptions, plan_reads, prefetch, read_task
from datacraft.io.writers import ShardWriter, finalize_shards

#: the rows a `slice` leaves out (they pass the stage unchanged)
REST = "rest"


class _ReadDoFn(beam.DoFn):
    def __init__(self, options: ReadOptions) -> None:
        self.options = options

    def process(self, task: Any) -> Any:
        batches = prefetch(read_task(task, self.options))
        while True:
            t0 = time.perf_counter()  # the wait for the next batch: reading time not hidden by read-ahead
            item = next(batches, None)
            if item is None:
                return
            kept, dropped = item
            seconds = time.perf_counter() - t0
            progress.advance(READ_STAGE, kept.height + dropped.height, kept.height)
            if kept.height:
                yield kept
            if dropped.height:
                yield TaggedOutput(DROPPED, dropped)
            yield TaggedOutput(STATS, LedgerEntry.of_batch(READ_STAGE, kept.height + dropped.height, kept, dropped, seconds=seconds))


class _MergeStats(beam.CombineFn):
    def create_accumulator(self) -> list[LedgerEntry]:
        return []

    def add_input(self, acc: list[LedgerEntry], entry: LedgerEntry) -> list[LedgerEntry]:
        acc.append(entry)
        return acc

    def merge_accumulators(self, accs: Any) -> list[LedgerEntry]:
        return [e for acc in accs for e in acc]

    def extract_output(self, acc: list[LedgerEntry]) -> dict[str, Any]:
        return {label: entry.to_dict() for label, entry in merge_entries(acc).items()}


class _WriteShards(beam.DoFn):
    """Appends the batches of a bundle to shard files (`ShardWriter`) on background threads.

    Encoding Parquet / JSON is the costly part and one writer encodes on one core, so past a
    bundle's first `SINGLE_LANE_ROWS` rows batches go round-robin to `LANES` writers, each on its
    own thread with its own files (polars / Arrow release the GIL); writing overlaps the steps
    before it. File names are the bundle's first batch's id hash, the lane and a sequence number,
    so the finalizer orders them the same way on every runner. Emits (path, rows) per file when
    the bundle finishes."""

    LANES = 2
    SINGLE_LANE_ROWS = 100_000  # a bundle's first rows use one lane: small outputs stay one file
    MAX_PENDING = 2  # per lane: bounds the batches held in memory

    def __init__(self, make_writer: Any) -> None:
        self.make_writer = make_writer

    def setup(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pools = [ThreadPoolExecutor(1, thread_name_prefix=f"datacraft-write-{lane}") for lane in range(self.LANES)]

    def start_bundle(self) -> None:
        self.writers: list[Any] = []
        self.pending: list[list[Any]] = [[] for _ in self.pools]
        self.count = self.rows = 0

    def process(self, batch: Any) -> Any:
        if not self.writers:
            # ordered by content; the random part only keeps two bundles that start with the same
            # batch (a file read twice under two names) from writing the same file names
            stem = f"{content_hash(batch['id'].to_list(), length=24)}-{uuid.uuid4().hex[:8]}"
            self.writers = [self.make_writer(f"{stem}-{lane}") for lane in range(self.LANES)]
        lane = self.count % self.LANES if self.rows >= self.SINGLE_LANE_ROWS else 0
        self.count += 1
        self.rows += batch.height
        queue = self.pending[lane]
        queue.append(self.pools[lane].submit(self.writers[lane].write, batch))
        while len(queue) > self.MAX_PENDING:
            queue.pop(0).result()
        return []

    def finish_bundle(self) -> Any:
        for queue in self.pending:
            for future in queue:
                future.result()
        for writer in self.writers:
            for written in writer.close():
                yield in_global_window(written)

    def teardown(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True)


class WriteBatches(beam.PTransform):
    """Write batches into `<prefix>-SSSSS-of-NNNNN` shard files under `target`."""

    def __init__(self, target: str, prefix: str, file_format: str, row_format: str = "datacraft", shard_rows: int = 200_000, keep_embedding: bool = False, write_empty: bool = True) -> None:
        super().__init__()
        self.target, self.prefix, self.file_format = target, prefix, file_format
        self.row_format, self.shard_rows, self.keep_embedding = row_format, shard_rows, keep_embedding
        self.write_empty = write_empty

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "Write" >> beam.ParDo(_WriteShards(self._writer))
            | "Files" >> beam.combiners.ToList()
            | "Name" >> beam.Map(self._finalize)
        )

    @property
    def parts_dir(self) -> str:
        return os.path.join(self.target, f"{PARTS_PREFIX}{self.prefix}")

    def _writer(self, stem: str) -> ShardWriter:
        return ShardWriter(self.parts_dir, self.file_format, self.row_format, self.keep_embedding, self.shard_rows, stem)

    def _finalize(self, files: list[tuple[str, int]]) -> list[str]:
        names = finalize_shards(files, self.target, self.prefix, self.file_format, self.shard_rows, self.write_empty)
        if os.path.isdir(self.parts_dir) and not os.listdir(self.parts_dir):
            os.rmdir(self.parts_dir)
        return names


def _smallest(batch: Any, n: int, seed: int) -> list[tuple[int, str]]:
    """The `n` smallest (id hash, id) pairs of a batch."""
    keyed = pl.DataFrame({"h": batch["id"].hash(seed), "id": batch["id"]}).sort("h", "id").head(n)
    return list(zip(keyed["h"].to_list(), keyed["id"].to_list(), strict=True))


class _Smallest(beam.CombineFn):
    """The `n` smallest (hash, id) pairs over every batch: the ids a `slice` sends through its stage."""

    def __init__(self, n: int) -> None:
        self.n = n

    def create_accumulator(self) -> list[tuple[int, str]]:
        return []

    def add_input(self, acc: list[tuple[int, str]], pairs: list[tuple[int, str]]) -> list[tuple[int, str]]:
        return sorted([*acc, *pairs])[: self.n]

    def merge_accumulators(self, accs: Any) -> list[tuple[int, str]]:
        return sorted(p for acc in accs for p in acc)[: self.n]

    def extract_output(self, acc: list[tuple[int, str]]) -> list[str]:
        return [i for _, i in acc]


class _Slice(beam.DoFn):
    """Splits each batch by the chosen ids: those go to the stage (main output), the rest pass it
    (`rest`), with a ledger line that counts them in and kept."""

    def __init__(self, label: str) -> None:
        self.label = label

    def process(self, batch: Any, chosen: list[str]) -> Any:
        mask = batch["id"].is_in(pl.Series(chosen, dtype=pl.Utf8).implode())
        rest = batch.filter(~mask)
        if rest.height < batch.height:
            yield batch.filter(mask)
        if rest.height:
            yield TaggedOutput(REST, rest)
            yield TaggedOutput(STATS, LedgerEntry(self.label, rest.height, rest.height, counters={"slice.passed": float(rest.height)}))


def _apply_stage(rows: beam.PCollection, stage: Any, plan: Any, seed: int) -> dict[str, beam.PCollection]:
    """`rows | stage`, through a `slice` when the plan has one (kept = the stage's kept + the rest)."""
    if not plan.slice:
        return rows | stage.label >> stage_transform(stage)
    chosen = (
        rows
        | f"SliceCandidates[{stage.label}]" >> beam.Map(_smallest, plan.slice, seed)
        | f"SliceIds[{stage.label}]" >> beam.CombineGlobally(_Smallest(plan.slice))
    )
    parts = rows | f"Slice[{stage.label}]" >> beam.ParDo(_Slice(stage.label), AsSingleton(chosen)).with_outputs(REST, STATS, main=KEPT)
    outs = parts[KEPT] | stage.label >> stage_transform(stage)
    kept = (outs[KEPT], parts[REST]) | f"Rejoin[{stage.label}]" >> beam.Flatten()
    stats = (outs[STATS], parts[STATS]) | f"SliceStats[{stage.label}]" >> beam.Flatten()
    return {KEPT: kept, DROPPED: outs[DROPPED], STATS: stats}


def build(p: beam.Pipeline, config: Any, out_dir: str, given: Any = None) -> dict[str, Any]:
    """Add the whole curation graph to `p`: the reader, every stage reading the kept rows of its
    `from` (`PipelineConfig.plan`), the main branch's output in OUT/data and every other branch's in
    OUT/branches/<name>/. `given`: label → extra stage constructor arguments (injected clients).
    Returns the PCollections of the written files and stats."""
    options = config.input.read_options()
    paths = config.input.path if isinstance(config.input.path, list) else [config.input.path]
    # a file named twice (a glob and its folder) is read once
    tasks = list(dict.fromkeys(t for path in paths for t in plan_reads(path)))
    read = (
        p
        | "ReadTasks" >> beam.Create(tasks)
        | "Spread" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(_ReadDoFn(options)).with_outputs(DROPPED, STATS, main=KEPT)
    )
    kept = {READ_LABEL: read[KEPT]}
    dropped = {READ_STAGE: read[DROPPED]}
    stats = [read[STATS]]
    plans = config.plan()
    for stage, plan in zip(config.build_stages(given, out_dir), plans, strict=True):
        outs = _apply_stage(kept[plan.source], stage, plan, config.seed)
        kept[stage.label] = outs[KEPT]
        dropped[stage.label] = outs[DROPPED]
        stats.append(outs[STATS])

    out = config.output
    data_format = "jsonl" if out.format == "jsonl" else "parquet"
    written = {}
    for branch, tail in branch_tails(plans).items():
        target = os.path.join(out_dir, DATA_DIR) if branch == MAIN_BRANCH else os.path.join(out_dir, BRANCHES_DIR, branch)
        step = "WriteOutput" if branch == MAIN_BRANCH else f"WriteBranch[{branch}]"
        written[branch] = kept[tail] | step >> WriteBatches(target, out.split, data_format, out.row_format, out.shard_rows, out.keep_embedding)
    for label, pcoll in dropped.items():
        _ = pcoll | f"WriteDropped[{label}]" >> WriteBatches(
            os.path.join(out_dir, DROPPED_DIR), label, out.dropped_format, "datacraft", out.shard_rows, out.keep_embedding, write_empty=False
        )
    stats_path = os.path.join(out_dir, STATS_FILE)
    merged = (
        stats
        | "AllStats" >> beam.Flatten()
        | "MergeStats" >> beam.CombineGlobally(_MergeStats())
        | "SaveStats" >> beam.Map(lambda s: Path(stats_path).write_text(json.dumps(s), encoding="utf-8"))
    )
    return {"rows": kept[branch_tails(plans)[MAIN_BRANCH]], "written": written, "stats": merged}


_VIEWS: weakref.WeakKeyDictionary[PipelineOptions, dict[type, PipelineOptions]] = weakref.WeakKeyDictionary()


class CachedViewOptions(PipelineOptions):
    """`PipelineOptions` that make each view once. Beam asks the pipeline's options for a view on
    every transform it applies (≈ 500 for a two-stage graph) and each view parses all of Beam's
    flags with argparse again: 0.4 s of a warm graph build idle, 3 s on a loaded machine. A view
    holds no values of its own (it reads and writes the options' shared `_all_options`), so a kept
    view sees every change."""

    def view_as(self, cls: type[Any]) -> Any:
        views = _VIEWS.setdefault(self, {})
        if cls not in views:
            views[cls] = super().view_as(cls)
        return views[cls]


def pipeline_options(config: Any, beam_args: Sequence[str] = ()) -> tuple[PipelineOptions, Any]:
    """Beam options from the config's runner section and extra args; returns (options, runner)."""
    args = [*config.runner.options, *beam_args]
    options = CachedViewOptions(args)
    if options.view_as(DirectOptions).direct_running_mode == "multi_threading":
        # Measured with Beam 2.77: the thread-split bundles fail to decode large pickled batches
        # ("Unknown type tag") and side inputs arrive empty. multi_processing is tested.
        raise ValueError("--direct_running_mode=multi_threading is not supported; use multi_processing (tested) or in_memory")
    runner_name = options.view_as(StandardOptions).runner or config.runner.runner
    if runner_name in (None, "", "FnApiRunner", "fnapirunner", "DirectRunner", "directrunner"):
        # The in-process runner directly: DirectRunner would try Prism first, which downloads a binary.
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return options, FnApiRunner()
    if runner_name.lower() in ("dask", "daskrunner") or runner_name.endswith(".DaskRunner"):
        # Beam knows no short name "DaskRunner", and its own one loses tagged and finish_bundle outputs
        from datacraft.beam.dask_runner import DaskRunner

        return options, DaskRunner(local=runner_name.lower() == "dask")
    options.view_as(StandardOptions).runner = RUNNER_NAMES.get(runner_name.lower(), runner_name)
    return options, None


#: short runner names → what Beam resolves (Beam itself knows Flink/Spark/Dataflow/Portable/Prism)
RUNNER_NAMES = {name.lower(): name for name in ("FlinkRunner", "SparkRunner", "DataflowRunner", "PortableRunner", "PrismRunner")} | {
    "flink": "FlinkRunner", "spark": "SparkRunner", "dataflow": "DataflowRunner", "portable": "PortableRunner", "prism": "PrismRunner",
}


def runs_in_this_process(options: PipelineOptions, runner: Any) -> bool:
    """Whether every worker of the run is this process (the default in-process FnApiRunner)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return isinstance(runner, FnApiRunner) and options.view_as(DirectOptions).direct_running_mode in (None, "in_memory")




def execute(config: Any, out_dir: str, beam_args: Sequence[str] = (), test_pipeline: Any = None, given: Any = None) -> dict[str, float]:
    """Build the graph for `config` and run it to the end; the merged ledger lands in OUT/_stats.json.
    Returns the build and run times."""
    t0 = time.perf_counter()
    in_process = False
    if test_pipeline is not None:
        p = test_pipeline
    else:
        options, runner = pipeline_options(config, beam_args)
        p = beam.Pipeline(runner=runner, options=options) if runner is not None else beam.Pipeline(options=options)
        in_process = runs_in_this_process(options, runner)
    build(p, config, out_dir, given)
    t_built = time.perf_counter()
    with frames_by_reference() if in_process else contextlib.nullcontext():
        p.run().wait_until_finish()
    return {"build_s": round(t_built - t0, 3), "run_s": round(time.perf_counter() - t_built, 3)}

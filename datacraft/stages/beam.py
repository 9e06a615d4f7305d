"""Beam wrappers around stage cores. Elements are polars batches, never single rows."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import apache_beam as beam
import polars as pl
from apache_beam.pvalue import AsSingleton, TaggedOutput
from apache_beam.transforms.window import GlobalWindows

from datacraft import progress
from datacraft.records import concat_batches
from datacraft.stages.base import BatchStage, GlobalStage, RowStage, Stage, StageResult, stats_of
from datacraft.stages.coder import register as register_batch_coder

# every pipeline that wraps stages encodes its batches as Arrow IPC (see coder.py)
register_batch_coder()

KEPT, DROPPED, STATS = "kept", "dropped", "stats"


def emit_result(label: str, n_in: int, result: StageResult, seconds: float) -> Any:
    """Yield kept / dropped / stats of one processed batch. Pass `seconds` measured before calling:
    downstream fused steps run inside these yields."""
    progress.advance(label, n_in, result.kept.height)
    if result.kept.height:
        yield result.kept
    if result.dropped is not None and result.dropped.height:
        yield TaggedOutput(DROPPED, result.dropped)
    yield TaggedOutput(STATS, stats_of(label, n_in, result, seconds))


def in_global_window(output: Any) -> Any:
    """An output of `finish_bundle`, which Beam wants windowed (batch pipelines: the global window)."""
    if isinstance(output, TaggedOutput):
        return TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
    return GlobalWindows.windowed_value(output)


class OverlappedDoFn(beam.DoFn):
    """Runs `compute(batch, facts)` on a worker thread, one batch ahead of the Beam thread.

    While the worker computes batch i+1 (polars releases the GIL), the Beam thread runs the fused
    steps after this one on batch i (dedup keys, encoding, writing) and fetches the next input, so
    the second core stays busy. Batches are still computed one at a time and their outputs leave
    in input order; `overlap = False` (stages with a model or an engine) computes in `process`."""

    overlap = True

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def compute(self, batch: pl.DataFrame, facts: Any) -> StageResult:
        raise NotImplementedError

    def _timed(self, batch: pl.DataFrame, facts: Any) -> tuple[StageResult, float]:
        t0 = time.perf_counter()
        return self.compute(batch, facts), time.perf_counter() - t0

    def setup(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"datacraft-{self.stage.label}") if self.overlap else None

    def start_bundle(self) -> None:
        self.pending: deque[tuple[int, Future[tuple[StageResult, float]]]] = deque()

    def process(self, batch: pl.DataFrame, facts: Any = None) -> Any:
        """`facts`: the side input of `ApplyWithFacts` (unused by plain stages)."""
        if self.pool is None:
            result, seconds = self._timed(batch, facts)
            yield from emit_result(self.stage.label, batch.height, result, seconds)
            return
        self.pending.append((batch.height, self.pool.submit(self._timed, batch, facts)))
        if len(self.pending) > 1:
            yield from self._emit_oldest()

    def _emit_oldest(self) -> Any:
        n_in, future = self.pending.popleft()
        result, seconds = future.result()
        yield from emit_result(self.stage.label, n_in, result, seconds)

    def finish_bundle(self) -> Any:
        while self.pending:
            for output in self._emit_oldest():
                yield in_global_window(output)

    def teardown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class StageDoFn(OverlappedDoFn):
    """Runs a row/batch stage; the stage's model is created once per worker in `setup`. Stages
    without a model overlap with the steps after them (`OverlappedDoFn`)."""

    def __init__(self, stage: RowStage) -> None:
        super().__init__(stage)
        self.overlap = not isinstance(stage, BatchStage)

    def setup(self) -> None:
        self.stage.ensure_setup()
        super().setup()

    def compute(self, batch: pl.DataFrame, facts: Any) -> StageResult:
        return self.stage.process(batch)

    def teardown(self) -> None:
        super().teardown()
        self.stage.release()


class _GlobalOneProcess(beam.DoFn):
    """The one-process form of a global stage: all batches of the collection in one call."""

    def __init__(self, stage: GlobalStage) -> None:
        self.stage = stage

    def setup(self) -> None:
        self.stage.ensure_setup()

    def process(self, batches: list[pl.DataFrame]) -> Any:
        frame = concat_batches(batches)
        t0 = time.perf_counter()
        result = self.stage.process_all(frame)
        yield from emit_result(self.stage.label, frame.height, result, time.perf_counter() - t0)


class _KeyBatch(beam.DoFn):
    """Split each batch by partition key: (key, sub-batch) pairs."""

    def __init__(self, stage: GlobalStage) -> None:
        self.stage = stage

    def process(self, batch: pl.DataFrame, facts: Any) -> Any:
        keys = self.stage.partition_keys(batch, facts)
        frame = batch.with_columns(keys.alias("_key"))
        if isinstance(frame.schema["_key"], pl.List):
            frame = frame.explode("_key")
        for (key,), part in frame.group_by("_key", maintain_order=True):
            yield key, part.drop("_key")


class _PartitionDoFn(beam.DoFn):
    def __init__(self, stage: GlobalStage) -> None:
        self.stage = stage

    def setup(self) -> None:
        self.stage.ensure_setup()

    def process(self, keyed: tuple[Any, list[pl.DataFrame]], facts: Any) -> Any:
        key, parts = keyed
        frame = concat_batches(list(parts))
        t0 = time.perf_counter()
        result = self.stage.process_partition(key, frame, facts)
        yield from emit_result(self.stage.label, frame.height, result, time.perf_counter() - t0)


def sample_rows(batch: pl.DataFrame, fraction: float) -> pl.DataFrame:
    """A per-batch row sample (facts are computed from the union of these)."""
    if fraction >= 1.0:
        return batch
    return batch.sample(n=max(1, int(batch.height * fraction)), seed=0) if batch.height else batch


class _ApplyDoFn(OverlappedDoFn):
    def __init__(self, stage: Stage, fn: Any) -> None:
        super().__init__(stage)
        self.fn = fn

    def compute(self, batch: pl.DataFrame, facts: Any) -> StageResult:
        return self.fn(batch, facts)


class ApplyWithFacts(beam.PTransform):
    """Per batch, `fn(batch, facts) -> StageResult` with a global fact (a singleton side input):
    the second half of a global stage whose decision is small (a keep-set, losers, centroids)."""

    def __init__(self, stage: Stage, fn: Any, facts: beam.PCollection) -> None:
        super().__init__()
        self.stage, self.fn, self.facts = stage, fn, facts

    def expand(self, rows: beam.PCollection) -> Any:
        return rows | beam.ParDo(_ApplyDoFn(self.stage, self.fn), AsSingleton(self.facts)).with_outputs(
            DROPPED, STATS, main=KEPT
        )


class StageTransform(beam.PTransform):
    """`rows | StageTransform(stage)` → {"kept", "dropped", "stats"} PCollections."""

    def __init__(self, stage: Stage) -> None:
        super().__init__(label=stage.label)
        self.stage = stage

    def expand(self, rows: beam.PCollection) -> dict[str, beam.PCollection]:
        stage = self.stage
        if isinstance(stage, GlobalStage):
            custom = stage.expand_beam(rows)
            if custom is not None:
                return custom
            if stage.wants_partitions():
                sample = (
                    rows
                    | "Sample" >> beam.Map(sample_rows, stage.sample_fraction)
                    | "SampleAll" >> beam.combiners.ToList()
                    | "Facts" >> beam.Map(lambda bs: stage.compute_facts(concat_batches(bs)))
                )
                outs = (
                    rows
                    | "Key" >> beam.ParDo(_KeyBatch(stage), AsSingleton(sample))
                    | "Group" >> beam.GroupByKey()
                    | "Partition" >> beam.ParDo(_PartitionDoFn(stage), AsSingleton(sample)).with_outputs(DROPPED, STATS, main=KEPT)
                )
            else:
                outs = (
                    rows
                    | "All" >> beam.combiners.ToList()
                    | "Process" >> beam.ParDo(_GlobalOneProcess(stage)).with_outputs(DROPPED, STATS, main=KEPT)
                )
        else:
            outs = rows | "Process" >> beam.ParDo(StageDoFn(stage)).with_outputs(DROPPED, STATS, main=KEPT)
        return {KEPT: outs[KEPT], DROPPED: outs[DROPPED], STATS: outs[STATS]}

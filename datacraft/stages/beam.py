"""Beam wrappers around stage cores. Elements are polars batches, never single rows."""

from __future__ import annotations

import time
from typing import Any

import apache_beam as beam
import polars as pl
from apache_beam.pvalue import AsSingleton, TaggedOutput

from datacraft import progress
from datacraft.records import concat_batches
from datacraft.stages.base import GlobalStage, RowStage, Stage, StageResult, stats_of

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


class StageDoFn(beam.DoFn):
    """Runs a row/batch stage; the stage's model is created once per worker in `setup`."""

    def __init__(self, stage: RowStage) -> None:
        self.stage = stage

    def setup(self) -> None:
        self.stage.ensure_setup()

    def process(self, batch: pl.DataFrame) -> Any:
        t0 = time.perf_counter()
        result = self.stage.process(batch)
        yield from emit_result(self.stage.label, batch.height, result, time.perf_counter() - t0)

    def teardown(self) -> None:
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


class _ApplyDoFn(beam.DoFn):
    def __init__(self, stage: Stage, fn: Any) -> None:
        self.stage = stage
        self.fn = fn

    def process(self, batch: pl.DataFrame, facts: Any) -> Any:
        t0 = time.perf_counter()
        result = self.fn(batch, facts)
        yield from emit_result(self.stage.label, batch.height, result, time.perf_counter() - t0)


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

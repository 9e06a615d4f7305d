"""The Beam graphs of global stages, one per `Shape`, driven by the stage's hooks (no stage module
is imported here).

    ONE_PROCESS   rows ─ ToList ─ process_all
    PARTITIONED   rows ─ prepare ─┬─ summarize ─ ToList ─ facts (side input) ─ facts_result
                                  └─ partition_keys ─ GroupByKey ─ process_partition
    DECIDE_APPLY  rows ─ prepare ─┬─ [summarize ─ facts] ─ evidence ─ [GroupByKey ─ partition_evidence]
                                  │                           ─ ToList ─ decide (side input) ─ decision_result
                                  └──────────────────────────────── apply(batch, decision)
    GREEDI        rows ─ prepare ─ hash partition ─ GroupByKey ─ round1 ─ candidates ─ ToList ─ round2

Every path emits kept / dropped / ledger entries; time spent outside a per-batch step (preparing,
partition evidence, deciding) is carried by zero-row ledger entries so the report's stage time is whole.

Order independence: a step that sees many batches at once (ToList, GroupByKey) gets them in whatever
order the runner delivers, so it sorts its rows by id (then a row hash, for repeated ids) before the
stage looks at them (`canonical_order`): the stage's decision then depends on the set of rows only,
not on the runner, the partitioning or the batch order.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import polars as pl
from apache_beam.pvalue import AsSingleton, TaggedOutput

from datacraft.beam.transform import DROPPED, KEPT, STATS, OverlappedDoFn, emit_result
from datacraft.core.rows import canonical_order, concat_batches
from datacraft.core.stage import GlobalStage, Shape, StageResult


def _time_only(stage: GlobalStage, seconds: float, result: StageResult | None = None) -> Any:
    """A ledger entry of no rows: the time (and report facts) of a step before the per-batch apply."""
    return (result or StageResult(kept=pl.DataFrame())).entry(stage.label, 0, seconds)


class _WithStage(beam.DoFn):
    def __init__(self, stage: GlobalStage) -> None:
        self.stage = stage

    def setup(self) -> None:
        self.stage.acquire()

    def teardown(self) -> None:
        self.stage.release()


class _OneProcess(_WithStage):
    def process(self, batches: list[pl.DataFrame]) -> Any:
        frame = canonical_order(concat_batches(batches))
        t0 = time.perf_counter()
        result = self.stage.process_all(frame)
        yield from emit_result(self.stage.label, frame.height, result, time.perf_counter() - t0)


class _Prepare(_WithStage):
    def process(self, batch: pl.DataFrame) -> Any:
        t0 = time.perf_counter()
        prepared = self.stage.prepare(batch)
        seconds = time.perf_counter() - t0
        yield prepared
        yield TaggedOutput(STATS, _time_only(self.stage, seconds))


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


class _Partition(_WithStage):
    def process(self, keyed: tuple[Any, Iterable[pl.DataFrame]], facts: Any) -> Any:  # a GroupByKey: Beam ≥ 2.78 checks the hint
        key, parts = keyed
        frame = canonical_order(concat_batches(list(parts)))
        t0 = time.perf_counter()
        result = self.stage.process_partition(key, frame, facts)
        yield from emit_result(self.stage.label, frame.height, result, time.perf_counter() - t0)


class _Evidence(beam.DoFn):
    def __init__(self, stage: GlobalStage) -> None:
        self.stage = stage

    def process(self, batch: pl.DataFrame, facts: Any) -> Any:
        if self.stage.keyed_evidence:
            yield from self.stage.evidence(batch, facts)
        else:
            yield self.stage.evidence(batch, facts)


class _PartitionEvidence(_WithStage):
    def process(self, item: tuple[Any, Iterable[Any]], facts: Any) -> Any:  # a GroupByKey: Beam ≥ 2.78 checks the hint
        key, pieces = item
        t0 = time.perf_counter()
        yield self.stage.partition_evidence(key, list(pieces), facts), time.perf_counter() - t0


class _Apply(OverlappedDoFn):
    def compute(self, batch: pl.DataFrame, decided: dict[str, Any]) -> StageResult:
        return self.stage.apply(batch, decided["decision"])


def _prepared(stage: GlobalStage, rows: beam.PCollection) -> tuple[beam.PCollection, list[beam.PCollection]]:
    """Rows after `prepare`, and its time entries (nothing when the stage does not prepare)."""
    if type(stage).prepare is GlobalStage.prepare:
        return rows, []
    prep = rows | "Prepare" >> beam.ParDo(_Prepare(stage)).with_outputs(STATS, main="prepared")
    return prep["prepared"], [prep[STATS]]


def _facts_side(stage: GlobalStage, prepared: beam.PCollection) -> beam.PCollection:
    if not stage.uses_facts():
        return prepared.pipeline | "NoFacts" >> beam.Create([None])
    return (
        prepared
        | "Summarize" >> beam.Map(stage.summarize)
        | "Summaries" >> beam.combiners.ToList()
        | "Facts" >> beam.Map(stage.facts)
    )


def _outputs(kept: beam.PCollection, dropped: list[beam.PCollection], stats: list[beam.PCollection]) -> dict[str, Any]:
    return {
        KEPT: kept,
        DROPPED: dropped[0] if len(dropped) == 1 else tuple(dropped) | "Dropped" >> beam.Flatten(),
        STATS: stats[0] if len(stats) == 1 else tuple(stats) | "Stats" >> beam.Flatten(),
    }


def one_process(stage: GlobalStage, rows: beam.PCollection) -> dict[str, Any]:
    outs = rows | "All" >> beam.combiners.ToList() | "Process" >> beam.ParDo(_OneProcess(stage)).with_outputs(DROPPED, STATS, main=KEPT)
    return _outputs(outs[KEPT], [outs[DROPPED]], [outs[STATS]])


def partitioned(stage: GlobalStage, rows: beam.PCollection) -> dict[str, Any]:
    prepared, prep_stats = _prepared(stage, rows)
    facts = _facts_side(stage, prepared)
    outs = (
        prepared
        | "Key" >> beam.ParDo(_KeyBatch(stage), AsSingleton(facts))
        | "Group" >> beam.GroupByKey()
        | "Partition" >> beam.ParDo(_Partition(stage), AsSingleton(facts)).with_outputs(DROPPED, STATS, main=KEPT)
    )
    summary = facts | "FactsSummary" >> beam.FlatMap(lambda f: [_time_only(stage, 0.0, r)] if (r := stage.facts_result(f)) else [])
    return _outputs(outs[KEPT], [outs[DROPPED]], [*prep_stats, outs[STATS], summary])


def decide_apply(stage: GlobalStage, rows: beam.PCollection) -> dict[str, Any]:
    prepared, prep_stats = _prepared(stage, rows)
    facts = _facts_side(stage, prepared)
    evidence = prepared | "Evidence" >> beam.ParDo(_Evidence(stage), AsSingleton(facts))
    if stage.keyed_evidence:
        evidence = (
            evidence
            | "Group" >> beam.GroupByKey()
            | "PartitionEvidence" >> beam.ParDo(_PartitionEvidence(stage), AsSingleton(facts))
        )
    else:
        evidence = evidence | "Untimed" >> beam.Map(lambda piece: (piece, 0.0))

    def _decide(timed: list[tuple[Any, float]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        decision = stage.decide([piece for piece, _ in timed])
        return {"decision": decision, "seconds": time.perf_counter() - t0 + sum(s for _, s in timed)}

    decided = evidence | "AllEvidence" >> beam.combiners.ToList() | "Decide" >> beam.Map(_decide)
    outs = prepared | "Apply" >> beam.ParDo(_Apply(stage), AsSingleton(decided)).with_outputs(DROPPED, STATS, main=KEPT)
    summary = decided | "Summary" >> beam.Map(lambda d: _time_only(stage, d["seconds"], stage.decision_result(d["decision"])))
    return _outputs(outs[KEPT], [outs[DROPPED]], [*prep_stats, outs[STATS], summary])


def greedi(stage: GlobalStage, rows: beam.PCollection) -> dict[str, Any]:
    """Every row is in exactly one partition, so it is dropped in round 1 or decided in round 2."""
    parts = stage.greedi_partitions()

    def _key(batch: pl.DataFrame) -> Any:
        keyed = batch.with_columns((pl.col("id").hash(seed=7) % parts).alias("_p"))
        for (key,), part in keyed.group_by("_p", maintain_order=True):
            yield int(key), part.drop("_p")

    class _Round1(_WithStage):
        def process(self, item: tuple[int, list[pl.DataFrame]], total: int) -> Any:
            t0 = time.perf_counter()
            frame = canonical_order(concat_batches(list(item[1])))
            candidates, result = self.stage.round1(frame, total)
            seconds = time.perf_counter() - t0
            yield candidates  # to round 2, where they are counted
            yield from emit_result(self.stage.label, frame.height - candidates.height, result, seconds)

    class _Round2(_WithStage):
        def process(self, batches: list[pl.DataFrame], total: int) -> Any:
            t0 = time.perf_counter()
            frame = canonical_order(concat_batches(batches))
            result = self.stage.round2(frame, total)
            yield from emit_result(self.stage.label, frame.height, result, time.perf_counter() - t0)

    prepared, prep_stats = _prepared(stage, rows)
    total = prepared | "Count" >> beam.Map(lambda b: b.height) | "Total" >> beam.CombineGlobally(sum)
    r1 = (
        prepared
        | "KeyPartition" >> beam.FlatMap(_key)
        | "Group" >> beam.GroupByKey()
        | "Round1" >> beam.ParDo(_Round1(stage), AsSingleton(total)).with_outputs(DROPPED, STATS, main=KEPT)
    )
    r2 = (
        r1[KEPT]
        | "Candidates" >> beam.combiners.ToList()
        | "Round2" >> beam.ParDo(_Round2(stage), AsSingleton(total)).with_outputs(DROPPED, STATS, main=KEPT)
    )
    return _outputs(r2[KEPT], [r1[DROPPED], r2[DROPPED]], [*prep_stats, r1[STATS], r2[STATS]])


SHAPES = {Shape.ONE_PROCESS: one_process, Shape.PARTITIONED: partitioned, Shape.DECIDE_APPLY: decide_apply, Shape.GREEDI: greedi}


def expand_global(stage: GlobalStage, rows: beam.PCollection) -> dict[str, Any]:
    """The graph of `stage`'s declared shape."""
    return SHAPES[stage.shape()](stage, rows)

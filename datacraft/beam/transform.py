"""The Beam transform of a stage: map stages as a DoFn, global stages by their declared `Shape`
(`datacraft.beam.shapes`). Elements are polars batches, never single rows."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import apache_beam as beam
import polars as pl
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows

from datacraft.beam.coder import register as register_batch_coder
from datacraft.core import progress
from datacraft.core.stage import GlobalStage, MapStage, Stage, StageResult

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
    yield TaggedOutput(STATS, result.entry(label, n_in, seconds))


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
    in input order; `overlap = False` (stages with a resource: a model, an engine) computes in `process`."""

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
        """`facts`: the decision side input of a DECIDE_APPLY stage (unused by map stages)."""
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
    """Runs a map stage; its resource is acquired once per worker in `setup`. Stages without a
    resource overlap with the steps after them (`OverlappedDoFn`)."""

    def __init__(self, stage: MapStage) -> None:
        super().__init__(stage)
        self.overlap = not stage.loads_resource()

    def setup(self) -> None:
        self.stage.acquire()
        super().setup()

    def compute(self, batch: pl.DataFrame, facts: Any) -> StageResult:
        return self.stage.run(batch)

    def teardown(self) -> None:
        super().teardown()
        self.stage.release()


def stage_transform(stage: Stage) -> beam.PTransform:
    """`rows | stage_transform(stage)` → {"kept", "dropped", "stats"} PCollections."""
    return StageTransform(stage)


class StageTransform(beam.PTransform):
    def __init__(self, stage: Stage) -> None:
        super().__init__(label=stage.label)
        self.stage = stage

    def expand(self, rows: beam.PCollection) -> dict[str, beam.PCollection]:
        from datacraft.beam.shapes import expand_global

        if isinstance(self.stage, GlobalStage):
            return expand_global(self.stage, rows)
        outs = rows | "Process" >> beam.ParDo(StageDoFn(self.stage)).with_outputs(DROPPED, STATS, main=KEPT)
        return {KEPT: outs[KEPT], DROPPED: outs[DROPPED], STATS: outs[STATS]}

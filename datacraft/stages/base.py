"""The stage contract: a pure core that tests call without Beam, and a thin Beam PTransform around it.

Three kinds of stage (DESIGN.md "Stages"):

* `RowStage`   — `process(batch) -> StageResult`, vectorized over a polars batch, no model.
* `BatchStage` — the same signature, but `setup()` creates a model / engine once per worker
                 (called from `DoFn.setup`, never per row or per batch).
* `GlobalStage`— needs the whole collection: `process_all(frame) -> StageResult` is the pure core;
                 the Beam form partitions rows by `partition_keys`, runs `process_partition` per key
                 after a `GroupByKey`, with small global facts (`compute_facts` over a sample) as a
                 side input. Without partition keys it runs as one partition (the stated fallback).

Every stage returns kept rows, dropped rows (with `drop_stage/drop_reason/drop_detail`), the number
of rows it created, and counters (LLM tokens, cache hits, …). The Beam wrapper turns them into three
PCollections: `kept` (batches), `dropped` (batches) and `stats` (one dict per batch).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import polars as pl
from pydantic import BaseModel, ConfigDict

from datacraft.records import concat_batches, empty_batch, with_drop


class StageParams(BaseModel):
    """Base of every stage's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass
class RunContext:
    """Run-wide facts a stage may need: where the run writes, the shared cache and the default engines."""

    output_dir: str | None = None
    cache_dir: str | None = None
    llm: dict[str, Any] = field(default_factory=dict)
    embedder: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class StageResult:
    kept: pl.DataFrame
    dropped: pl.DataFrame | None = None
    created: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    #: small structured facts for the report (group-size histograms, budget tables, examples);
    #: lists are concatenated and dicts merged across batches / partitions
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        return 0 if self.dropped is None else self.dropped.height


def split_kept(stage: str, batch: pl.DataFrame, keep: pl.Expr | pl.Series, reason: str, detail: str | pl.Expr = "") -> StageResult:
    """Split a batch by a boolean mask: rows where it is false are dropped with `reason` / `detail`."""
    mask = keep if isinstance(keep, pl.Series) else batch.select(keep.fill_null(False).alias("_keep"))["_keep"]
    mask = mask.fill_null(False)
    dropped = batch.filter(~mask)
    if isinstance(detail, pl.Expr):
        dropped = with_drop(dropped, stage, reason, detail)
    else:
        dropped = with_drop(dropped, stage, reason, detail)
    return StageResult(kept=batch.filter(mask), dropped=dropped)


def stats_of(label: str, n_in: int, result: StageResult, seconds: float) -> dict[str, Any]:
    """The ledger entry of one batch through one stage."""
    reasons: Counter[str] = Counter()
    if result.dropped is not None and result.dropped.height:
        reasons.update(result.dropped["drop_reason"].to_list())
    return {
        "stage": label,
        "in": n_in,
        "kept": result.kept.height,
        "created": result.created,
        "dropped": dict(reasons),
        "seconds": seconds,
        "counters": dict(result.counters),
        "extras": dict(result.extras),
    }


class Stage(ABC):
    """A registered pipeline step. Subclasses set `name`, `kind` and `Params`."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "row"
    Params: ClassVar[type[StageParams]] = StageParams

    def __init__(self, params: StageParams | Mapping[str, Any] | None = None, *, label: str | None = None, context: RunContext | None = None) -> None:
        if params is None:
            params = self.Params()
        elif not isinstance(params, StageParams):
            params = self.Params.model_validate(dict(params))
        self.params = params
        self.label = label or self.name
        self.context = context or RunContext()

    def setup(self) -> None:
        """Load models / engines. Called once per worker (DoFn.setup)."""

    def teardown(self) -> None:
        """Release what setup created."""

    def ensure_setup(self) -> None:
        """Run `setup` once, whoever asks first: a Beam worker, `run_local`, or a test calling the core."""
        if not self.__dict__.get("_set_up"):
            self.setup()
            self._set_up = True

    def release(self) -> None:
        """`teardown` if `setup` ran."""
        if self.__dict__.pop("_set_up", False):
            self.teardown()

    def transform(self) -> Any:
        """The Beam PTransform of this stage (imported lazily so cores stay Beam-free)."""
        from datacraft.stages.beam import StageTransform

        return StageTransform(self)

    def run_local(self, batches: Iterable[pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame, list[dict[str, Any]]]:
        """Run the stage without Beam over batches: (kept, dropped, stats). Used by tests and the fast path."""
        self.ensure_setup()
        try:
            kept, dropped, stats = [], [], []
            for result, n_in, seconds in self._iter_results(batches):
                kept.append(result.kept)
                if result.dropped is not None and result.dropped.height:
                    dropped.append(result.dropped)
                stats.append(stats_of(self.label, n_in, result, seconds))
            return concat_batches(kept), concat_batches(dropped) if dropped else empty_batch(), stats
        finally:
            self.release()

    @abstractmethod
    def _iter_results(self, batches: Iterable[pl.DataFrame]) -> Iterator[tuple[StageResult, int, float]]: ...


class RowStage(Stage):
    """A vectorized per-batch stage without a model."""

    kind = "row"

    @abstractmethod
    def process(self, batch: pl.DataFrame) -> StageResult:
        """Pure core: one batch in, kept + dropped out."""

    def _iter_results(self, batches: Iterable[pl.DataFrame]) -> Iterator[tuple[StageResult, int, float]]:
        for batch in batches:
            t0 = time.perf_counter()
            result = self.process(batch)
            yield result, batch.height, time.perf_counter() - t0


class BatchStage(RowStage):
    """A per-batch stage around a model created once per worker in `setup`."""

    kind = "batch"


class GlobalStage(Stage):
    """A stage that needs the whole collection (dedup across batches, selection, mixtures).

    Override `process_all` (the pure core). For scale-out, also override `partition_keys`
    (a key per row; rows may go to several partitions by returning a list column) and
    `process_partition`; `compute_facts` turns a sample into a small side input (centroids, budgets).
    """

    kind = "global"
    #: fraction of rows sampled (per batch) to compute the side-input facts
    sample_fraction: ClassVar[float] = 0.05

    @abstractmethod
    def process_all(self, frame: pl.DataFrame) -> StageResult:
        """Pure core over the whole collection."""

    def wants_partitions(self) -> bool:
        """Whether the Beam form partitions (else: one partition, the stated fallback)."""
        return False

    def compute_facts(self, sample: pl.DataFrame) -> Any:
        """Small global facts computed from a sample of rows (side input); None by default."""
        return None

    def partition_keys(self, batch: pl.DataFrame, facts: Any) -> pl.Series:
        """One key per row (Utf8 or Int64), or a List column to send a row to several partitions."""
        return pl.Series("_key", [0] * batch.height)

    def process_partition(self, key: Any, frame: pl.DataFrame, facts: Any) -> StageResult:
        return self.process_all(frame)

    def expand_beam(self, rows: Any) -> dict[str, Any] | None:
        """Override to build a custom Beam graph (e.g. GreeDi's two rounds); return
        {"kept", "dropped", "stats"} PCollections, or None for the default partitioned form."""
        return None

    def _iter_results(self, batches: Iterable[pl.DataFrame]) -> Iterator[tuple[StageResult, int, float]]:
        frame = concat_batches(list(batches))
        t0 = time.perf_counter()
        result = self.process_all(frame)
        yield result, frame.height, time.perf_counter() - t0

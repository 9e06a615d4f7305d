"""The stage contract: typed params, declared columns, a resource loaded once per worker, and a pure
core that tests call without Beam. `datacraft.beam` turns a stage into a Beam transform; no stage
builds a Beam graph.

* `MapStage`    — `process(batch, resource) -> StageResult`, one polars batch at a time. A stage
                  that loads nothing overlaps with the steps after it on a thread; one with a
                  resource (a model, an engine) computes on the Beam thread.
* `GlobalStage` — needs the whole collection: `process_all(frame)` is the pure core, and `shape()`
                  names how it scales out (`Shape`); `datacraft.beam.shapes` builds that graph from
                  the stage's hooks.

Every stage declares the columns it `reads()` and `writes()` (score columns as `scores.<name>`):
the config is checked in order before any row is read. `load()` returns the stage's resource;
stages whose `resource_key()` is equal share one per process (`datacraft.core.resources`).
Every result carries kept rows, dropped rows (with `drop_stage/drop_reason/drop_detail`), the
number of rows created, counters and report facts; its `LedgerEntry` is the stage's ledger line.
"""

from __future__ import annotations

import enum
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import polars as pl
from pydantic import BaseModel, ConfigDict

from datacraft.core.ledger import LedgerEntry
from datacraft.core.resources import SHARED
from datacraft.core.rows import (
    BATCH_SCHEMA,
    SCORE_PREFIX,
    canonical_order,
    concat_batches,
    empty_batch,
    with_drop,
)

#: the columns every row has from the reader on
BASE_COLUMNS: frozenset[str] = frozenset(BATCH_SCHEMA)


def score(name: str) -> str:
    """The column of a score: `scores.<name>`."""
    return SCORE_PREFIX + name


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
    #: the run config's hash (lineage of what a stage writes, e.g. a checkpoint's card)
    config_hash: str | None = None


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

    def entry(self, label: str, n_in: int, seconds: float) -> LedgerEntry:
        """This result's ledger line."""
        return LedgerEntry.of_batch(label, n_in, self.kept, self.dropped, created=self.created, seconds=seconds,
                                    counters=self.counters, extras=self.extras)


def split_kept(stage: str, batch: pl.DataFrame, keep: pl.Expr | pl.Series, reason: str, detail: str | pl.Expr = "") -> StageResult:
    """Split a batch by a boolean mask: rows where it is false are dropped with `reason` / `detail`."""
    mask = keep if isinstance(keep, pl.Series) else batch.select(keep.fill_null(False).alias("_keep"))["_keep"]
    mask = mask.fill_null(False)
    return StageResult(kept=batch.filter(mask), dropped=with_drop(batch.filter(~mask), stage, reason, detail))


P = TypeVar("P", bound=StageParams)
R = TypeVar("R")


class Stage(ABC, Generic[P, R]):
    """A registered pipeline step. Subclasses set `name` and `Params`, declare `reads` / `writes`,
    and, when they need a model or an engine, `load` it."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "map"
    Params: ClassVar[type[StageParams]] = StageParams
    params: P

    def __init__(self, params: StageParams | Mapping[str, Any] | None = None, *, label: str | None = None,
                 context: RunContext | None = None, resource: R | None = None) -> None:
        if params is None:
            params = self.Params()
        elif not isinstance(params, StageParams):
            params = self.Params.model_validate(dict(params))
        self.params = params  # type: ignore[assignment]
        self.label = label or self.name
        self.context = context or RunContext()
        #: a resource given by the caller (tests, a client shared by hand) instead of `load()`
        self._given = resource
        self._held: Hashable | None = None
        self._resource: R | None = resource

    # -- declared columns -------------------------------------------------------------------------
    def reads(self) -> set[str]:
        """Columns this stage needs from earlier stages or the input (`scores.<name>` for scores)."""
        return set()

    def writes(self) -> set[str]:
        """Columns this stage adds."""
        return set()

    def param_is_set(self, name: str) -> bool:
        """Whether the user gave parameter `name` (not just its default)."""
        return name in self.params.model_fields_set

    # -- the resource -----------------------------------------------------------------------------
    @classmethod
    def loads_resource(cls) -> bool:
        return cls.load is not Stage.load

    def needs_resource(self) -> bool:
        """Whether this configuration uses the resource (a stage may load one only for some params)."""
        return self.loads_resource()

    def load(self) -> R:
        """Create the model / engine / index this stage uses; called once per process and key."""
        return None  # type: ignore[return-value]

    def resource_key(self) -> Hashable:
        """Stages with equal keys share one resource per process. Default: this stage's class and params."""
        return (type(self).__qualname__, json.dumps(self.params.model_dump(mode="json"), sort_keys=True, default=str),
                json.dumps(self.context.llm, sort_keys=True, default=str), json.dumps(self.context.embedder, sort_keys=True, default=str),
                self.context.cache_dir)

    @property
    def resource(self) -> R:
        """The loaded resource (loaded on first use if no worker acquired it yet)."""
        if self._held is None and self._given is None and self.needs_resource():
            self.acquire()
        return self._resource  # type: ignore[return-value]

    def acquire(self) -> None:
        """Load (or share) the resource: `DoFn.setup`, `run_local`, or the first use."""
        if self._given is not None or self._held is not None or not self.needs_resource():
            return
        key = self.resource_key()
        self._resource = SHARED.acquire(key, self.load)
        self._held = key

    def release(self) -> None:
        """Give the resource back (the last holder in the process closes it)."""
        if self._held is not None:
            key, self._held, self._resource = self._held, None, None
            SHARED.release(key)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if state.get("_held") is not None or state.get("_given") is None:
            state["_resource"], state["_held"] = None, None  # loaded again on the worker
        return state

    # -- running without Beam ---------------------------------------------------------------------
    def run_local(self, batches: Iterable[pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame, list[LedgerEntry]]:
        """Run the stage without Beam over batches: (kept, dropped, ledger entries). Tests and small tools."""
        self.acquire()
        try:
            kept, dropped, entries = [], [], []
            for result, n_in, seconds in self._iter_results(batches):
                kept.append(result.kept)
                if result.dropped is not None and result.dropped.height:
                    dropped.append(result.dropped)
                entries.append(result.entry(self.label, n_in, seconds))
            return concat_batches(kept), concat_batches(dropped) if dropped else empty_batch(), entries
        finally:
            self.release()

    @abstractmethod
    def _iter_results(self, batches: Iterable[pl.DataFrame]) -> Iterator[tuple[StageResult, int, float]]: ...


class MapStage(Stage[P, R]):
    """A per-batch stage: `process(batch, resource)` is its pure core."""

    kind = "map"

    @abstractmethod
    def process(self, batch: pl.DataFrame, resource: R) -> StageResult:
        """One batch in, kept + dropped out."""

    def run(self, batch: pl.DataFrame) -> StageResult:
        """`process` with this stage's own resource."""
        return self.process(batch, self.resource)

    def _iter_results(self, batches: Iterable[pl.DataFrame]) -> Iterator[tuple[StageResult, int, float]]:
        for batch in batches:
            t0 = time.perf_counter()
            result = self.run(batch)
            yield result, batch.height, time.perf_counter() - t0


class Shape(enum.Enum):
    """How a global stage scales out; `datacraft.beam.shapes` builds the graph of each."""

    #: every row in one call of `process_all`
    ONE_PROCESS = "one_process"
    #: rows grouped by `partition_keys(batch, facts)`, `process_partition` per key; `facts` from
    #: per-batch `summarize` (default: a row sample) is a small side input
    PARTITIONED = "partitioned"
    #: what every dedup is: `prepare` per batch, small `evidence` per batch (or per partition of
    #: keyed evidence), one `decide` over all evidence, `apply` the decision per batch
    DECIDE_APPLY = "decide_apply"
    #: GreeDi: `round1` per hash partition keeps candidates, `round2` decides over their union
    GREEDI = "greedi"


class GlobalStage(Stage[P, R]):
    """A stage that needs the whole collection (dedup across batches, selection, mixtures).

    `process_all` is the pure core. `shape()` picks the scale-out form; each form calls the hooks
    below (defaults make a hook optional)."""

    kind = "global"
    #: fraction of rows sampled (per batch) for `facts`
    sample_fraction: ClassVar[float] = 0.05
    #: DECIDE_APPLY: whether `evidence` yields (key, piece) pairs grouped by key before `decide`
    keyed_evidence: ClassVar[bool] = False

    @abstractmethod
    def process_all(self, frame: pl.DataFrame) -> StageResult:
        """Pure core over the whole collection."""

    def shape(self) -> Shape:
        return Shape.ONE_PROCESS

    # -- hooks shared by the shapes
    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Per batch, before anything global: add what later steps need (embeddings, signatures)."""
        return batch

    def uses_facts(self) -> bool:
        return type(self).facts is not GlobalStage.facts

    def summarize(self, batch: pl.DataFrame) -> Any:
        """Per batch, what `facts` is computed from (default: a row sample). The sample is drawn by a
        hash of the id, so the same rows are sampled however the input is split into batches."""
        if self.sample_fraction >= 1.0 or batch.height == 0:
            return batch
        buckets = 1 << 20
        return batch.filter(pl.col("id").hash(seed=11) % buckets < int(self.sample_fraction * buckets))

    def facts(self, summaries: list[Any]) -> Any:
        """Small global facts (a side input) from every batch's `summarize`."""
        return None

    def facts_result(self, facts: Any) -> StageResult | None:
        """A zero-row ledger line carrying what the facts say (budget tables), if any."""
        return None

    # -- PARTITIONED
    def partition_keys(self, batch: pl.DataFrame, facts: Any) -> pl.Series:
        """One key per row (Utf8 or Int64), or a List column to send a row to several partitions."""
        return pl.Series("_key", [0] * batch.height)

    def process_partition(self, key: Any, frame: pl.DataFrame, facts: Any) -> StageResult:
        return self.process_all(frame)

    # -- DECIDE_APPLY
    def evidence(self, batch: pl.DataFrame, facts: Any) -> Any:
        """The small evidence of one prepared batch; with `keyed_evidence`, an iterable of (key, piece)."""
        raise NotImplementedError

    def partition_evidence(self, key: Any, pieces: list[Any], facts: Any) -> Any:
        """With `keyed_evidence`: the evidence of one key's pieces (e.g. candidate edges of a partition)."""
        raise NotImplementedError

    def decide(self, evidence: list[Any]) -> Any:
        """One decision over all evidence (a table of losers, a keep-set)."""
        raise NotImplementedError

    def apply(self, batch: pl.DataFrame, decision: Any) -> StageResult:
        """Split one batch by the decision."""
        raise NotImplementedError

    def decision_result(self, decision: Any) -> StageResult | None:
        """A zero-row ledger line with the decision's report facts (group sizes, edge counts), if any."""
        return None

    # -- GREEDI
    def greedi_partitions(self) -> int:
        return 1

    def round1(self, frame: pl.DataFrame, total: int) -> tuple[pl.DataFrame, StageResult]:
        """One partition: (candidates for round 2, the rows dropped here)."""
        raise NotImplementedError

    def round2(self, frame: pl.DataFrame, total: int) -> StageResult:
        """The final decision over every partition's candidates."""
        raise NotImplementedError

    def _iter_results(self, batches: Iterable[pl.DataFrame]) -> Iterator[tuple[StageResult, int, float]]:
        frame = canonical_order(concat_batches(list(batches)))  # as on Beam (`datacraft.beam.shapes`)
        t0 = time.perf_counter()
        result = self.process_all(frame)
        yield result, frame.height, time.perf_counter() - t0

"""SMART mixture (docs/methods.md §5) and the baselines it is compared with (examples-proportional, equal).

Stage 1 (tasks): task embedding = mean of its prompt embeddings; dense cosine kernel between tasks;
graph cut (λ = 0.4; or facility location / log-det) maximised by greedy for M' tasks, recording
each task's marginal gain g_j in selection order. Budgets: second-order Taylor softmax
p_j = (1 + g_j + g_j²/2) / Σ_k (…); N'_j = ⌊N'·p_j⌋; the remainder +1 round-robin from the first
selected task; then capacities: N'_j > |T_j| is capped and the excess pooled and handed out +1
round-robin (greedy order) over tasks with spare room; unselected tasks get 0; an error when the
selected tasks hold fewer than N' rows.
Stage 2 (rows): facility location (cosine, sparse kNN graph) within each task, first N'_j rows.

Stage `smart_mixture` reads `task`, `embedding` (or embeds `text`, default the prompt). Selected
rows get `scores.<label>_rank` (within the task) and `scores.<label>_gain`; the rest are dropped
"not selected (budget)". Beam form: per-task (sum, count) of embeddings combined globally → budgets
(side input) → GroupByKey by task → per-task selection. Memory: one task's rows + M task vectors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import ConfigDict, Field

from datacraft.core.rows import concat_batches, set_scores, with_drop
from datacraft.core.stage import GlobalStage, Shape, StageResult, score
from datacraft.stages.select.submodular import (
    greedy,
    log_det_greedy,
    resolve_budget,
    similarity_graph,
    with_embeddings,
)
from datacraft.stages.vectors.embed import EmbeddingSourceParams
from datacraft.vectors.embedders import ensure_embeddings

# ---------------------------------------------------------------------------------------------
# budget rules (pure)


def _round_robin(alloc: list[int], caps: Sequence[int], pool: int, order: Sequence[int]) -> int:
    """Hand out `pool` units +1 at a time over `order`, skipping full positions; returns what is left."""
    while pool > 0:
        progressed = False
        for j in order:
            if pool == 0:
                break
            if alloc[j] < caps[j]:
                alloc[j] += 1
                pool -= 1
                progressed = True
        if not progressed:
            break
    return pool


def cap_and_redistribute(alloc: list[int], caps: Sequence[int], order: Sequence[int]) -> list[int]:
    """Cap each allocation at its capacity and redistribute the excess round-robin in `order`."""
    alloc = list(alloc)
    pool = 0
    for j in range(len(alloc)):
        if alloc[j] > caps[j]:
            pool += alloc[j] - caps[j]
            alloc[j] = caps[j]
    left = _round_robin(alloc, caps, pool, order)
    if left:
        raise ValueError(f"budget exceeds capacity: {left} rows could not be placed")
    return alloc


def taylor_softmax_budgets(gains: Sequence[float], capacities: Sequence[int], budget: int) -> list[int]:
    """SMART's rule: tasks in greedy order with gains g_j and sizes |T_j| → task budgets summing to `budget`."""
    if budget < 0:
        raise ValueError("budget must be ≥ 0")
    if sum(capacities) < budget:
        raise ValueError(f"the selected tasks hold {sum(capacities)} rows, fewer than the budget {budget}")
    if not gains:
        return []
    g = np.asarray(gains, dtype=np.float64)
    w = 1.0 + g + g * g / 2.0
    p = w / w.sum()
    alloc = [int(math.floor(budget * pj)) for pj in p]
    remainder = budget - sum(alloc)
    for i in range(remainder):
        alloc[i % len(alloc)] += 1
    return cap_and_redistribute(alloc, capacities, list(range(len(alloc))))


def proportional_budgets(capacities: Sequence[int], budget: int) -> list[int]:
    """Examples-proportional mixing: N'_j ∝ |T_j| (largest remainders get the leftover rows)."""
    total = sum(capacities)
    if total < budget:
        raise ValueError(f"the tasks hold {total} rows, fewer than the budget {budget}")
    if total == 0:
        return [0] * len(capacities)
    exact = [budget * c / total for c in capacities]
    alloc = [int(math.floor(e)) for e in exact]
    order = sorted(range(len(exact)), key=lambda j: (-(exact[j] - alloc[j]), j))
    for j in order[: budget - sum(alloc)]:
        alloc[j] += 1
    return alloc


def equal_budgets(capacities: Sequence[int], budget: int) -> list[int]:
    """Equal mixing: N'/M per task, remainder round-robin, capacities respected (excess redistributed)."""
    m = len(capacities)
    if sum(capacities) < budget:
        raise ValueError(f"the tasks hold {sum(capacities)} rows, fewer than the budget {budget}")
    if m == 0:
        return []
    alloc = [budget // m] * m
    for i in range(budget - sum(alloc)):
        alloc[i % m] += 1
    return cap_and_redistribute(alloc, capacities, list(range(m)))


def task_greedy(task_vectors: np.ndarray, m: int, function: str = "graph_cut", lam: float = 0.4, ridge: float = 1.0) -> tuple[list[int], list[float]]:
    """Greedy over tasks on the dense cosine kernel: selected task indices (in order) and their gains.

    Facility location starts every task's best similarity at 0, as submodlib's FacilityLocation
    (SMART: kowndinya-renduchintala/SMART, submodlib `FacilityLocationFunction`): negative cosines
    add nothing. Log-det uses `ridge` (λ is graph cut's)."""
    x = task_vectors / np.maximum(np.linalg.norm(task_vectors, axis=1, keepdims=True), 1e-12)
    m = min(m, x.shape[0])
    if function == "log_det":
        sel = log_det_greedy(x, m, lam=ridge)
        return sel.indices.tolist(), sel.gains.tolist()
    s = x @ x.T
    n = s.shape[0]
    chosen: list[int] = []
    gains: list[float] = []
    taken = np.zeros(n, dtype=bool)
    if function == "graph_cut":
        modular = s.sum(axis=0)
        acc = np.zeros(n)
        for _ in range(m):
            g = modular - lam * (np.diag(s) + 2 * acc)
            g[taken] = -np.inf
            j = int(np.argmax(g))
            chosen.append(j)
            gains.append(float(g[j]))
            taken[j] = True
            acc += s[j]
    elif function == "facility_location":
        cur = np.zeros(n)
        for _ in range(m):
            g = np.maximum(s - cur[:, None], 0.0).sum(axis=0)
            g[taken] = -np.inf
            j = int(np.argmax(g))
            chosen.append(j)
            gains.append(float(g[j]))
            taken[j] = True
            cur = np.maximum(cur, s[:, j])
    else:
        raise ValueError(f"unknown task function {function!r}")
    return chosen, gains


def plan_budgets(tasks: Sequence[str], vectors: np.ndarray, sizes: Sequence[int], budget: int, *, mixing: str = "smart", num_tasks: int | None = None, function: str = "graph_cut", lam: float = 0.4, ridge: float = 1.0) -> list[dict[str, Any]]:
    """The per-task budget table: one dict per task (task, rows, order, gain, share, budget, and the
    proportional / equal budgets for comparison). Pure; the Beam form calls it on combined task means."""
    m = len(tasks)
    prop = proportional_budgets(sizes, budget)
    equal = equal_budgets(sizes, budget)
    table = [{"task": t, "rows": int(sizes[j]), "order": None, "gain": None, "share": None, "budget": 0, "proportional": prop[j], "equal": equal[j]} for j, t in enumerate(tasks)]
    if mixing == "proportional":
        for j in range(m):
            table[j]["budget"] = prop[j]
    elif mixing == "equal":
        for j in range(m):
            table[j]["budget"] = equal[j]
    elif mixing == "smart":
        order, gains = task_greedy(vectors, num_tasks or m, function, lam, ridge)
        caps = [int(sizes[j]) for j in order]
        alloc = taylor_softmax_budgets(gains, caps, budget)
        w = np.array([1 + g + g * g / 2 for g in gains])
        for rank, (j, g, b, share) in enumerate(zip(order, gains, alloc, w / w.sum(), strict=True), start=1):
            table[j].update(order=rank, gain=round(float(g), 6), share=round(float(share), 6), budget=int(b))
    else:
        raise ValueError(f"unknown mixing {mixing!r}; expected smart, proportional or equal")
    return table


# ---------------------------------------------------------------------------------------------
# the stage


class SmartParams(EmbeddingSourceParams):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    budget: float = Field(0.1, gt=0, description="instance budget N': a row count (≥ 1) or a fraction (< 1)")
    num_tasks: int | None = Field(None, ge=1, description="task budget M' (default: all tasks)")
    mixing: Literal["smart", "proportional", "equal"] = "smart"
    task_function: Literal["graph_cut", "facility_location", "log_det"] = "graph_cut"
    lam: float = Field(0.4, alias="lambda", ge=0, description="graph-cut λ (SMART: 0.4)")
    ridge: float = Field(1.0, gt=0, description="log-det ridge (task_function: log_det)")
    within: Literal["facility_location", "random"] = Field("facility_location", description="how rows are chosen inside a task")
    k: int = Field(20, ge=1)
    task_column: str = "task"


class SmartMixtureStage(GlobalStage):
    name = "smart_mixture"
    Params = SmartParams
    params: SmartParams

    def vectors(self, frame: pl.DataFrame) -> np.ndarray:
        return ensure_embeddings(frame, self.context, self.params.text, self.params.kind, self.params.model)

    def task_sums(self, frame: pl.DataFrame, x: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, int]]:
        """Per task: (sum of prompt embeddings, count) — the combinable form of the task embedding."""
        x = self.vectors(frame) if x is None else x
        tasks = frame[self.params.task_column].fill_null("(none)").cast(pl.Utf8).to_numpy()
        out: dict[str, tuple[np.ndarray, int]] = {}
        for t in np.unique(tasks):
            m = tasks == t
            out[str(t)] = (x[m].sum(axis=0, dtype=np.float64), int(m.sum()))
        return out

    def budgets(self, sums: dict[str, tuple[np.ndarray, int]], total: int) -> list[dict[str, Any]]:
        tasks = sorted(sums)
        vectors = np.stack([sums[t][0] / max(sums[t][1], 1) for t in tasks])
        sizes = [sums[t][1] for t in tasks]
        p = self.params
        return plan_budgets(tasks, vectors, sizes, resolve_budget(p.budget, total), mixing=p.mixing, num_tasks=p.num_tasks, function=p.task_function, lam=p.lam, ridge=p.ridge)

    def select_task(self, task: str, frame: pl.DataFrame, budget: int, x: np.ndarray | None = None) -> StageResult:
        """Stage 2 for one task: the first `budget` rows of facility-location greedy (or random)."""
        n = frame.height
        budget = min(budget, n)
        if self.params.within == "random" or budget in (0, n):
            rng = np.random.default_rng(self.context.seed)
            idx = rng.permutation(n)[:budget] if budget < n else np.arange(n)
            gains = np.full(len(idx), np.nan)
        else:
            x = self.vectors(frame) if x is None else x
            sel = greedy(similarity_graph(x, self.params.k, similarity="cos"), budget)
            idx, gains = sel.indices, sel.gains
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        rank = np.full(n, np.nan)
        rank[idx] = np.arange(1, len(idx) + 1)
        gain = np.full(n, np.nan)
        gain[idx] = gains
        scored = set_scores(frame, {f"{self.label}_rank": rank, f"{self.label}_gain": gain})
        reason_detail = f"task {task}: budget {budget} of {n}" if budget else f"task {task}: not selected by the mixture"
        dropped = with_drop(frame.filter(~pl.Series(mask)), self.label, "not selected (budget)", reason_detail)
        return StageResult(kept=scored.filter(pl.Series(mask)), dropped=dropped)

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        if frame.height == 0:
            return StageResult(kept=frame)
        t0 = time.perf_counter()
        x = self.vectors(frame)
        table = self.budgets(self.task_sums(frame, x), frame.height)
        budget_of = {r["task"]: r["budget"] for r in table}
        tasks = frame[self.params.task_column].fill_null("(none)").cast(pl.Utf8)
        kept, dropped = [], []
        for t in sorted(budget_of):
            m = (tasks == t).to_numpy()
            res = self.select_task(t, frame.filter(pl.Series(m)), budget_of[t], x[m])
            kept.append(res.kept)
            if res.dropped is not None:
                dropped.append(res.dropped)
        extras = {"budgets": table, "mixture": {"mixing": self.params.mixing, "tasks": len(table), "tasks_selected": sum(1 for r in table if r["budget"] > 0), "seconds": round(time.perf_counter() - t0, 3)}}
        return StageResult(kept=concat_batches(kept), dropped=concat_batches(dropped), extras=extras)

    def reads(self) -> set[str]:
        return {self.params.task_column}

    def writes(self) -> set[str]:
        return {score(f"{self.label}_rank"), score(f"{self.label}_gain")}

    # -- scale-out: task sums combined globally → budgets (side input) → per-task selection
    def shape(self) -> Shape:
        return Shape.PARTITIONED

    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        return with_embeddings(batch, self)

    def summarize(self, batch: pl.DataFrame) -> dict[str, tuple[np.ndarray, int]]:
        return self.task_sums(batch)

    def facts(self, summaries: list[dict[str, tuple[np.ndarray, int]]]) -> list[dict[str, Any]]:
        pieces: dict[str, list[tuple[np.ndarray, int]]] = {}
        for part in summaries:
            for t, vc in part.items():
                pieces.setdefault(t, []).append(vc)
        # added in one order (by the partial sums' values), not the order batches arrived in
        sums = {t: (np.sum([v for v, _ in sorted(vs, key=lambda vc: (vc[1], vc[0].tobytes()))], axis=0), sum(c for _, c in vs)) for t, vs in pieces.items()}
        return self.budgets(sums, sum(c for _, c in sums.values())) if sums else []

    def facts_result(self, facts: list[dict[str, Any]]) -> StageResult:
        return StageResult(kept=pl.DataFrame(), extras={"budgets": facts, "mixture": {"mixing": self.params.mixing, "tasks": len(facts)}})

    def partition_keys(self, batch: pl.DataFrame, facts: Any) -> pl.Series:
        return batch[self.params.task_column].fill_null("(none)").cast(pl.Utf8)

    def process_partition(self, key: Any, frame: pl.DataFrame, facts: list[dict[str, Any]]) -> StageResult:
        return self.select_task(key, frame, next((r["budget"] for r in facts if r["task"] == key), 0))

"""Submodular selection on a sparse FAISS kNN graph: facility location, graph cut, log-determinant.

Functions (V = all rows, S = selected, w = graph weights, q = optional per-row weights):

* facility location  F(S) = Σ_{i∈V} max_{j∈S} q_j·w_ij   (w from the symmetric kNN graph + self loops)
* graph cut          G(S) = Σ_{i∈V, j∈S} w_ij − λ Σ_{i,j∈S} w_ij
* log-determinant    D(S) = log det(L_S + λI), L_ij = q_i q_j cos(x_i, x_j): computed exactly in
  feature space (Sylvester: det(X_S X_Sᵀ + λI) = λ^{|S|−d} det(λI + X_Sᵀ X_S)), O(d²) per gain,
  no N×N matrix and no graph needed.

The graph is N×k (k neighbours per row, `datacraft.vectors.knn`), so memory is O(N·k) instead of the dense
N×N of apricot / submodlib: 1M rows at k=20 ≈ 0.5 GB. Optimizers: lazy greedy (exact greedy
result, priority queue of stale upper bounds) and stochastic greedy (each step evaluates
(N/B)·log(1/ε) random candidates; 1 − 1/e − ε in expectation). The greedy loops are compiled with
numba when it is installed (plain Python otherwise). Budgets: rows, a fraction of rows, or tokens
(cost-benefit greedy: gain per token among rows that still fit).

Stage `select` (GlobalStage): reads `embedding` (or embeds `text`), optional score `weight`; the
selected rows get `scores.<label>_gain` and `scores.<label>_rank` (1 = picked first); the others are
dropped "not selected (budget)". Scale-out: GreeDi (`partitions` > 1): rows hashed into partitions,
each selects ⌈oversample·B/P⌉ candidates, one final greedy over the union selects B.
Order independence: every step sees its rows sorted by id (`canonical_order`), GreeDi partitions
are a hash of the id, and equal gains go to the smaller index, i.e. the smaller id.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from numba import njit  # the greedy loops ~50× faster
from pydantic import ConfigDict, Field

from datacraft.core.rows import SCORE_PREFIX, set_scores, text_expr, with_drop
from datacraft.core.stage import GlobalStage, Shape, StageResult, score
from datacraft.stages.vectors.embed import EmbeddingSourceParams
from datacraft.vectors.embedders import EMBEDDING_COLUMN, embedding_series, ensure_embeddings
from datacraft.vectors.knn import ivf_block_knn, knn, knn_graph

# ---------------------------------------------------------------------------------------------
# greedy kernels over a CSR "cover" graph: row j lists (i, w_ij) for the rows i that j covers


@njit(cache=True)
def _fl_gain(j: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, cur: np.ndarray) -> float:
    g = 0.0
    for p in range(indptr[j], indptr[j + 1]):
        d = data[p] - cur[indices[p]]
        if d > 0.0:
            g += d
    return g


@njit(cache=True)
def _gc_gain(j: int, modular: np.ndarray, selfw: np.ndarray, acc: np.ndarray, lam: float) -> float:
    return modular[j] - lam * (selfw[j] + 2.0 * acc[j])


@njit(cache=True)
def _add(j: int, fn: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, state: np.ndarray) -> None:
    for p in range(indptr[j], indptr[j + 1]):
        i = indices[p]
        if fn == 0:
            if data[p] > state[i]:
                state[i] = data[p]
        else:
            state[i] += data[p]


@njit(cache=True)
def _gain(j: int, fn: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, state: np.ndarray, modular: np.ndarray, selfw: np.ndarray, lam: float) -> float:
    if fn == 0:
        return _fl_gain(j, indptr, indices, data, state)
    return _gc_gain(j, modular, selfw, state, lam)


@njit(cache=True)
def _lazy_greedy(fn: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, modular: np.ndarray, selfw: np.ndarray, lam: float, costs: np.ndarray, max_rows: int, max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    n = len(indptr) - 1
    state = np.zeros(n)
    heap = []
    for j in range(n):
        ub = _gain(j, fn, indptr, indices, data, state, modular, selfw, lam)
        heap.append((-ub / costs[j], j))
    heapq.heapify(heap)
    sel = np.empty(min(max_rows, n), dtype=np.int64)
    gains = np.empty(min(max_rows, n))
    m = 0
    spent = 0.0
    while m < max_rows and len(heap) > 0:
        item = heapq.heappop(heap)
        j = item[1]
        if spent + costs[j] > max_cost:
            continue
        g = _gain(j, fn, indptr, indices, data, state, modular, selfw, lam)
        key = (-g / costs[j], j)
        if len(heap) == 0 or key <= heap[0]:
            sel[m] = j
            gains[m] = g
            m += 1
            spent += costs[j]
            _add(j, fn, indptr, indices, data, state)
        else:
            heapq.heappush(heap, key)
    return sel[:m], gains[:m]


@njit(cache=True)
def _stochastic_greedy(fn: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, modular: np.ndarray, selfw: np.ndarray, lam: float, costs: np.ndarray, max_rows: int, max_cost: float, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    np.random.seed(seed)
    n = len(indptr) - 1
    state = np.zeros(n)
    taken = np.zeros(n, dtype=np.bool_)
    remaining = np.arange(n)
    n_rem = n
    sel = np.empty(min(max_rows, n), dtype=np.int64)
    gains = np.empty(min(max_rows, n))
    m = 0
    spent = 0.0
    while m < max_rows and n_rem > 0:
        best = -1
        best_key = -np.inf
        best_g = 0.0
        for _ in range(min(sample, n_rem)):
            p = np.random.randint(0, n_rem)
            j = remaining[p]
            if spent + costs[j] > max_cost:
                remaining[p] = remaining[n_rem - 1]  # never fits again: remove
                n_rem -= 1
                if n_rem == 0:
                    break
                continue
            g = _gain(j, fn, indptr, indices, data, state, modular, selfw, lam)
            key = g / costs[j]
            if key > best_key or (key == best_key and j < best):
                best_key, best, best_g = key, j, g
        if best < 0:
            continue
        sel[m] = best
        gains[m] = best_g
        m += 1
        spent += costs[best]
        taken[best] = True
        _add(best, fn, indptr, indices, data, state)
        for p in range(n_rem):  # swap-remove the chosen row
            if remaining[p] == best:
                remaining[p] = remaining[n_rem - 1]
                n_rem -= 1
                break
    return sel[:m], gains[:m]


# ---------------------------------------------------------------------------------------------
# pure functions


FUNCTIONS = ("facility_location", "graph_cut", "log_det")


@dataclass
class Selection:
    """Selected row indices in greedy order, each row's marginal gain, and the objective reached."""

    indices: np.ndarray
    gains: np.ndarray

    @property
    def objective(self) -> float:
        return float(self.gains.sum())


def similarity_graph(x: np.ndarray, k: int, *, similarity: str = "cos2", exact_max: int = 50_000, nprobe: int = 8, seed: int = 0) -> sp.csr_matrix:
    """Symmetric sparse kNN similarity graph with self loops (weights: cos clipped at 0, or cos²).

    Exact kNN up to `exact_max` rows, above it `ivf_block_knn` (IVF lists searched as BLAS blocks)."""
    n = x.shape[0]
    k = max(1, min(k, n - 1)) if n > 1 else 1
    if n <= 1:
        return sp.identity(n, format="csr", dtype=np.float64)
    if n <= exact_max:
        sims, idx = knn(x, k, exact_max=exact_max, seed=seed)
    else:
        sims, idx = ivf_block_knn(x, k, nprobe=nprobe, seed=seed)
    return knn_graph(sims, idx, symmetric=True, self_loops=True, transform=similarity)


def greedy(
    graph: sp.csr_matrix,
    budget: int,
    *,
    function: str = "facility_location",
    lam: float = 0.4,
    weights: np.ndarray | None = None,
    costs: np.ndarray | None = None,
    max_cost: float = math.inf,
    optimizer: str = "lazy",
    epsilon: float = 0.01,
    seed: int = 0,
) -> Selection:
    """Greedy maximisation of facility location / graph cut on a (symmetric) similarity graph.

    `weights` (q_j ≥ 0) scale the similarities of a representative j (FL) — "good and diverse";
    `costs` + `max_cost` give a knapsack (token) budget, maximised by gain per cost.
    """
    n = graph.shape[0]
    if n == 0 or budget <= 0:
        return Selection(np.zeros(0, np.int64), np.zeros(0))
    g = graph.tocsr().astype(np.float64)
    if weights is not None:  # row j of the cover graph = what j covers, scaled by j's weight
        g = sp.diags(np.asarray(weights, dtype=np.float64)) @ g
    cover = g.tocsr()
    cover.sort_indices()
    fn = {"facility_location": 0, "graph_cut": 1}[function]
    modular = np.asarray(cover.sum(axis=1)).ravel()
    selfw = cover.diagonal().astype(np.float64)
    c = np.ones(n) if costs is None else np.maximum(np.asarray(costs, dtype=np.float64), 1e-9)
    args = (fn, cover.indptr.astype(np.int64), cover.indices.astype(np.int64), cover.data, modular, selfw, float(lam), c, int(min(budget, n)), float(max_cost))
    if optimizer == "stochastic":
        sample = max(1, int(math.ceil(n / max(1, budget) * math.log(1 / epsilon))))
        sel, gains = _stochastic_greedy(*args, sample, seed)
    elif optimizer == "lazy":
        sel, gains = _lazy_greedy(*args)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected lazy or stochastic")
    return Selection(np.asarray(sel), np.asarray(gains))


def log_det_greedy(x: np.ndarray, budget: int, *, lam: float = 1.0, weights: np.ndarray | None = None, costs: np.ndarray | None = None, max_cost: float = math.inf) -> Selection:
    """Lazy greedy for log det(L_S + λI), L = (q x)(q x)ᵀ, in feature space (Sherman–Morrison on a d×d inverse)."""
    x = np.asarray(x, dtype=np.float64)
    if weights is not None:
        x = x * np.asarray(weights, dtype=np.float64)[:, None]
    n, d = x.shape
    c = np.ones(n) if costs is None else np.maximum(np.asarray(costs, dtype=np.float64), 1e-9)
    a_inv = np.eye(d) / lam
    norms = np.einsum("ij,ij->i", x, x)
    heap = [(-(math.log(lam + norms[j])) / c[j], j) for j in range(n)]  # gain with S = ∅ (upper bounds)
    heapq.heapify(heap)
    sel: list[int] = []
    gains: list[float] = []
    spent = 0.0
    while len(sel) < budget and heap:
        _, j = heapq.heappop(heap)
        if spent + c[j] > max_cost:
            continue
        v = a_inv @ x[j]
        quad = float(x[j] @ v)
        gain = math.log(lam) + math.log1p(quad)
        key = (-gain / c[j], j)
        if not heap or key <= heap[0]:
            sel.append(j)
            gains.append(gain)
            spent += c[j]
            a_inv -= np.outer(v, v) / (1.0 + quad)
        else:
            heapq.heappush(heap, key)
    return Selection(np.asarray(sel, dtype=np.int64), np.asarray(gains))


def facility_location_value(graph: sp.csr_matrix, selected: np.ndarray) -> float:
    """Σ_i max_{j∈S} w_ij on a (symmetric) graph."""
    if len(selected) == 0:
        return 0.0
    sub = graph.tocsc()[:, np.asarray(selected)]
    return float(np.asarray(sub.max(axis=1).todense()).ravel().sum())


def dense_facility_location(x: np.ndarray, selected: np.ndarray, similarity: str = "cos2", block: int = 8192) -> float:
    """The dense objective Σ_{i∈V} max_{j∈S} sim(i, j) (blocked; the benchmark's common yardstick)."""
    xs = np.asarray(x[np.asarray(selected)], dtype=np.float32)
    total = 0.0
    for start in range(0, x.shape[0], block):
        s = np.asarray(x[start : start + block], dtype=np.float32) @ xs.T
        s = np.square(s) if similarity == "cos2" else np.clip(s, 0, None)
        total += float(s.max(axis=1).sum())
    return total


def resolve_budget(budget: float, n: int) -> int:
    """Rows from a budget given as a row count (≥ 1) or a fraction (< 1)."""
    return int(min(n, math.floor(budget * n) if budget < 1 else int(budget)))


def token_costs(frame: pl.DataFrame, view: str) -> np.ndarray:
    """Approximate tokens per row: ⌈characters / 4⌉ of the text view (≥ 1)."""
    chars = frame.select(text_expr(view).str.len_chars().alias("c"))["c"].to_numpy()
    return np.maximum(1, np.ceil(chars / 4.0))


# ---------------------------------------------------------------------------------------------
# the stage


class SelectParams(EmbeddingSourceParams):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    function: Literal["facility_location", "graph_cut", "log_det"] = "facility_location"
    budget: float = Field(0.1, gt=0, description="rows to keep: a count (≥ 1) or a fraction of the input (< 1)")
    budget_tokens: int | None = Field(None, ge=1, description="token budget instead of rows (≈ characters/4 of `token_text`)")
    token_text: Literal["instruction", "instruction_response", "response", "conversation"] = "conversation"
    lam: float = Field(0.4, alias="lambda", ge=0, description="graph-cut redundancy weight λ (log-det: the ridge when given, else `ridge`)")
    ridge: float = Field(1.0, gt=0, description="log-det ridge: log det(I·ridge + K_S) (used unless `lambda` is given)")
    dense_max: int = Field(50_000, ge=0, description="report the dense facility-location value up to this many rows")
    k: int = Field(20, ge=1, description="neighbours per row in the similarity graph")
    similarity: Literal["cos", "cos2"] = "cos2"
    optimizer: Literal["lazy", "stochastic"] = "lazy"
    epsilon: float = Field(0.01, gt=0, lt=1)
    weight: str | None = Field(None, description="score used as per-row weight (quality): selects good and diverse")
    weight_power: float = 1.0
    exact_max: int = Field(5_000, ge=1, description="exact kNN graph up to this many rows, IVF lists searched as BLAS blocks above")
    nprobe: int = Field(8, ge=1, description="IVF lists probed per row (nlist ≈ 4·√N)")
    partitions: int = Field(1, ge=1, description="GreeDi partitions for the Beam form (1 = one process)")
    oversample: float = Field(2.0, ge=1.0, description="GreeDi: each partition proposes oversample·B/P rows")


def row_weights(frame: pl.DataFrame, score: str | None, power: float = 1.0) -> np.ndarray | None:
    """Score column → weights in (0, 1] (min-max scaled, nulls = the minimum)."""
    if not score:
        return None
    col = SCORE_PREFIX + score
    if col not in frame.columns:
        raise ValueError(f"weight score {score!r} not found (columns: {', '.join(c for c in frame.columns if c.startswith(SCORE_PREFIX))})")
    v = frame[col].cast(pl.Float64).to_numpy().copy()
    lo, hi = np.nanmin(v) if np.isfinite(v).any() else 0.0, np.nanmax(v) if np.isfinite(v).any() else 1.0
    v = np.where(np.isfinite(v), v, lo)
    w = (v - lo) / (hi - lo) if hi > lo else np.ones_like(v)
    return np.power(0.05 + 0.95 * w, power)


class SubmodularSelectStage(GlobalStage):
    name = "select"
    Params = SelectParams
    params: SelectParams

    def vectors(self, frame: pl.DataFrame) -> np.ndarray:
        return ensure_embeddings(frame, self.context, self.params.text, self.params.kind, self.params.model)

    def select(self, frame: pl.DataFrame, budget_rows: int, x: np.ndarray | None = None) -> tuple[Selection, sp.csr_matrix | None]:
        """Run the configured function / optimizer on a frame; returns the selection and the graph."""
        p = self.params
        x = self.vectors(frame) if x is None else x
        weights = row_weights(frame, p.weight, p.weight_power)
        costs = token_costs(frame, p.token_text) if p.budget_tokens else None
        max_cost = float(p.budget_tokens) if p.budget_tokens else math.inf
        rows = frame.height if p.budget_tokens else budget_rows
        if p.function == "log_det":
            return log_det_greedy(x, rows, lam=self.ridge(), weights=weights, costs=costs, max_cost=max_cost), None
        graph = similarity_graph(x, p.k, similarity=p.similarity, exact_max=p.exact_max, nprobe=p.nprobe, seed=self.context.seed)
        sel = greedy(graph, rows, function=p.function, lam=p.lam, weights=weights, costs=costs, max_cost=max_cost, optimizer=p.optimizer, epsilon=p.epsilon, seed=self.context.seed)
        return sel, graph

    def ridge(self) -> float:
        """Log-det's ridge: `lambda` when the user gave it, else `ridge` (never a silent swap)."""
        return self.params.lam if self.param_is_set("lam") else self.params.ridge

    def split(self, frame: pl.DataFrame, sel: Selection, extras: dict[str, Any], final: bool = True) -> StageResult:
        mask = np.zeros(frame.height, dtype=bool)
        mask[sel.indices] = True
        rank = np.full(frame.height, np.nan)
        gain = np.full(frame.height, np.nan)
        rank[sel.indices] = np.arange(1, len(sel.indices) + 1)
        gain[sel.indices] = sel.gains
        kept_all = set_scores(frame, {f"{self.label}_gain": gain, f"{self.label}_rank": rank}) if final else frame
        order = pl.Series("_order", np.argsort(np.argsort(rank, kind="stable"), kind="stable"))
        kept = kept_all.filter(pl.Series(mask)).with_columns(order.filter(pl.Series(mask))).sort("_order").drop("_order")
        detail = f"{self.params.function}: {len(sel.indices)} of {frame.height} rows selected"
        dropped = with_drop(frame.filter(~pl.Series(mask)), self.label, "not selected (budget)", detail)
        return StageResult(kept=kept, dropped=dropped, extras=extras)

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        if frame.height == 0:
            return StageResult(kept=frame)
        t0 = time.perf_counter()
        budget = resolve_budget(self.params.budget, frame.height)
        x = self.vectors(frame)
        sel, graph = self.select(frame, budget, x)
        extras = {"selection": coverage_report(x, sel, graph, self.params, frame.height, time.perf_counter() - t0)}
        return self.split(frame, sel, extras)

    def reads(self) -> set[str]:
        return {score(self.params.weight)} if self.params.weight else set()

    def writes(self) -> set[str]:
        return {score(f"{self.label}_gain"), score(f"{self.label}_rank")}

    # -- GreeDi scale-out: hash partitions select ⌈oversample·B/P⌉ each, then B over their union
    def shape(self) -> Shape:
        return Shape.GREEDI if self.params.partitions > 1 else Shape.ONE_PROCESS

    def greedi_partitions(self) -> int:
        return self.params.partitions

    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        return with_embeddings(batch, self)

    def round1(self, frame: pl.DataFrame, total: int) -> tuple[pl.DataFrame, StageResult]:
        p = self.params
        local = min(frame.height, math.ceil(p.oversample * resolve_budget(p.budget, total) / p.partitions))
        sel, _ = self.select(frame, local)
        result = self.split(frame, sel, {}, final=False)
        candidates, result.kept = result.kept, result.kept.head(0)
        return candidates, result

    def round2(self, frame: pl.DataFrame, total: int) -> StageResult:
        t0 = time.perf_counter()
        x = self.vectors(frame)
        sel, graph = self.select(frame, resolve_budget(self.params.budget, total), x)
        report = coverage_report(x, sel, graph, self.params, frame.height, time.perf_counter() - t0)
        return self.split(frame, sel, {"selection": {**report, "greedi_partitions": self.params.partitions, "rows_total": total}})


def coverage_report(x: np.ndarray, sel: Selection, graph: sp.csr_matrix | None, params: SelectParams, n: int, seconds: float) -> dict[str, Any]:
    """What the report shows for a selection: size, the objective the greedy maximised (on the sparse
    kNN graph for facility location / graph cut, so it is labelled `objective_sparse_knn`), the dense
    facility-location value Σ_i max_{j∈S} sim(i, j) where it is cheap (n ≤ `dense_max`), and how well
    the selection covers the input."""
    label = "objective_log_det" if graph is None else "objective_sparse_knn"
    out: dict[str, Any] = {"function": params.function, "rows_in": n, "selected": int(len(sel.indices)), label: round(sel.objective, 4), "seconds": round(seconds, 3)}
    if graph is None:
        out["ridge"] = params.lam if "lam" in params.model_fields_set else params.ridge
    if len(sel.indices) and n <= params.dense_max:
        out["dense_facility_location"] = round(dense_facility_location(x, sel.indices, params.similarity), 4)
    if graph is not None and len(sel.indices):
        covered = graph.tocsc()[:, sel.indices].max(axis=1).toarray().ravel()
        out["coverage_mean_sim"] = round(float(covered.sum() / n), 4)
        out["covered_fraction"] = round(float((covered > 0).mean()), 4)
    return out


def with_embeddings(batch: pl.DataFrame, stage: Any) -> pl.DataFrame:
    """The batch with an `embedding` column (the stage's `vectors` when missing); Beam step of the select stages."""
    if batch.height and EMBEDDING_COLUMN not in batch.columns:
        batch = batch.with_columns(embedding_series(stage.vectors(batch)))
    return batch

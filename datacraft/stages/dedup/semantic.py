"""`semantic_dedup`: embedding near-duplicates (FAISS), transitive groups by union-find, best row kept.

Reads `embedding` (or embeds `text` with the run's embedder) and the score `score` (default `quality`;
rows without it are ranked by text length). Rows whose cosine similarity ≥ `threshold` are linked;
every linked component keeps one row (`keep: best`, or `keep: first`: the earliest id, GPTeacher-style
keep-first in file order) and drops the others as "near-duplicate" with detail
"near-duplicate of <id> (cos=0.93)".

One process: each row's `k` nearest neighbours (widened while the k-th is still a duplicate, see
`datacraft.vectors.knn.pairs_above`) in a FAISS index — exact IndexFlatIP up to `exact_max` (5,000)
rows, IndexIVFFlat above (nlist ≈ 4·√N, `nprobe` 8; FAISS's per-query scan up to 30k rows, the same
lists searched as BLAS blocks above, see `datacraft.vectors.knn`); the crossovers are the ones
benchmarks/bench_semdedup.py measured. Groups larger than k stay connected through union-find.
Memory: the N×d vectors (and the index's copy) + N×k neighbours.

Recall contract: exact below `exact_max`; above, a duplicate pair (cos ≥ τ) is missed only when
neither row lies in the other's 8 nearest lists and no chain of found pairs joins them — pair
recall ≥ 0.99 against exact all-pairs for τ ≥ 0.9 on sentence embeddings (bench_semdedup: 1.000
at 20k and 100k rows, static embedder); raise `nprobe` for lower τ or harder data.

Scale-out (Beam): k-means centroids trained on a sample are a side input; each row is keyed by its
nearest and second-nearest centroid (so pairs across a border meet in one partition); each partition
finds its edges after GroupByKey; a single resolve step over the edges (duplicates only) decides each
row once, and the original rows are split against that side input — so a row present in two
partitions is kept or dropped exactly once. Memory per worker: one partition (≈ 2N/clusters rows).

Order independence: the k-means sample is drawn by a hash of the id and sorted by id before the
seeded k-means, and the rows are sorted by id before every search (`threshold_edges`: the IVF
index's seeded training sample is then the same rows in the same order), so the candidate edges
and the kept ids are the same on every runner and for every split of the input into files and
batches (tests/test_reproducible.py: identical on the shipped configs). Two approximations remain,
neither runner-dependent: the Beam form misses a duplicate pair whose rows share no top-2 centroid
(against one-process exact search), and embeddings of a model whose batches are padded
(sentence-transformers) can differ in the last float bits with batch composition, so a pair within
≈1e-6 of τ may flip when the input is batched differently (the static embedder is per row: exact).
Similarities are exact float64 cosines of the two vectors (`pair_cosines`), so they and the drop
details do not change with the partition a pair was found in or the workers' BLAS threads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from datacraft.core.rows import concat_batches
from datacraft.core.stage import GlobalStage, StageResult
from datacraft.stages.dedup.groups import EDGE_SCHEMA, EdgeDedup, apply_drops, node_frame, resolve
from datacraft.stages.vectors.embed import EmbeddingSourceParams
from datacraft.vectors.embedders import EMBEDDING_COLUMN, embedding_series, embeddings_of, ensure_embeddings
from datacraft.vectors.knn import assign, kmeans, pairs_above


class SemanticDedupParams(EmbeddingSourceParams):
    text: Literal["instruction", "instruction_response", "response", "conversation"] = "instruction_response"
    threshold: float = Field(0.9, gt=0.0, le=1.0, description="cosine similarity at or above which two rows are duplicates")
    k: int = Field(10, ge=1, description="neighbours examined per row")
    max_k: int = Field(64, ge=1, description="rows whose k-th neighbour is still a duplicate are searched again, up to this many neighbours")
    score: str | None = Field("quality", description="score that picks the kept row of a group (else the longest text)")
    method: Literal["auto", "exact", "ivf", "hnsw"] = "auto"
    exact_max: int = Field(5_000, ge=1, description="exact search (IndexFlatIP) up to this many rows, FAISS IVF above")
    nprobe: int = Field(8, ge=1, description="IVF lists probed per query (recall ≥ 0.99 at τ ≥ 0.9; more for lower τ)")
    grouping: Literal["union_find", "greedy"] = Field("union_find", description="union_find: transitive groups; greedy: drop a row only if directly similar to a better kept row (no chaining)")
    keep: Literal["best", "first"] = Field("best", description="which row a group keeps: best (by `score`, else the longest text) or first (id in natural order: file order for ids like name:row)")
    partition_rows: int = Field(4000, ge=100, description="Beam form: target rows per k-means partition")
    float16: bool = False


def edges_from_pairs(ids: list[str], a: np.ndarray, b: np.ndarray, sim: np.ndarray) -> pl.DataFrame:
    """Edges (a, b, sim) from index pairs, each unordered pair once."""
    if len(a) == 0:
        return pl.DataFrame(schema=EDGE_SCHEMA)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(lo.astype(np.int64) * len(ids) + hi, return_index=True)
    arr = pl.Series(ids, dtype=pl.Utf8)
    return pl.DataFrame(
        {"a": arr.gather(lo[first]), "b": arr.gather(hi[first]), "sim": sim[first].astype(np.float64)},
        schema=EDGE_SCHEMA,
    )


#: the kNN search keeps pairs down to τ − SLACK; the exact float64 cosine then decides (see `pair_cosines`)
SLACK = 1e-4


def pair_cosines(x: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """x[a]·x[b] in float64 (products of float32 values are exact there): a value of the two rows
    alone, not of the matrix they were searched in — GEMM results differ in the last float32 bits
    with the partition's layout and the BLAS thread count, which flipped drop details across runners."""
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), chunk):
        xa, xb = x[a[s : s + chunk]].astype(np.float64), x[b[s : s + chunk]].astype(np.float64)
        out[s : s + chunk] = np.einsum("ij,ij->i", xa, xb)
    return out


def threshold_edges(ids: list[str], x: np.ndarray, k: int, threshold: float, **knn_kwargs: object) -> pl.DataFrame:
    """Edges of all neighbour pairs ≥ threshold, widening the search for rows in dense groups.

    Searched in id order: the index (the IVF lists' seeded training sample) does not depend on how
    the rows arrived."""
    by_id = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    a, b, _ = pairs_above(x[by_id], k, threshold - SLACK, **knn_kwargs)
    a, b = by_id[a], by_id[b]
    sim = pair_cosines(x, a, b)
    ok = sim >= threshold
    return edges_from_pairs(ids, a[ok], b[ok], sim[ok])


class SemanticDedupStage(EdgeDedup, GlobalStage):
    name = "semantic_dedup"
    Params = SemanticDedupParams
    params: SemanticDedupParams
    metric = "cos"

    # -- pure core -------------------------------------------------------------------------------
    def vectors(self, frame: pl.DataFrame) -> np.ndarray:
        return ensure_embeddings(frame, self.context, self.params.text, self.params.kind, self.params.model)

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        p = self.params
        if frame.height == 0:
            return StageResult(kept=frame)
        x = self.vectors(frame)
        ids = frame["id"].to_list()
        edges = threshold_edges(ids, x, p.k, p.threshold, max_k=p.max_k, exact_max=p.exact_max, nprobe=p.nprobe, method=p.method, seed=self.context.seed)
        nodes = node_frame(frame, p.score, p.text)
        drops, extras = resolve(edges, nodes, p.threshold, "cos", grouping=p.grouping, keep=p.keep)
        if drops.height:  # exact cosine to the kept row (the group may be linked transitively)
            pos = {r: i for i, r in enumerate(ids)}
            a = np.array([pos[r] for r in drops["id"].to_list()])
            b = np.array([pos[r] for r in drops["kept_id"].to_list()])
            drops = drops.with_columns(pl.Series("sim", np.einsum("ij,ij->i", x[a], x[b]).astype(np.float64)), pl.lit(None, dtype=pl.Utf8).alias("via"))
        result = apply_drops(self.label, frame, drops, "cos")
        result.extras = extras
        result.counters = {"cos.edges": float(edges.height)}
        return result

    # -- scale-out --------------------------------------------------------------------------------
    def prepare(self, batch: pl.DataFrame) -> pl.DataFrame:
        if EMBEDDING_COLUMN in batch.columns or batch.height == 0:
            return batch
        return batch.with_columns(embedding_series(self.vectors(batch), self.params.float16))

    def facts(self, summaries: list[pl.DataFrame]) -> Any:
        """k-means centroids from a sample, sized so a partition holds ≈ `partition_rows` rows."""
        sample = concat_batches(summaries)
        if sample.height == 0:
            return None
        sample = sample.sort("id")  # seeded k-means on one row order: the same centroids on every runner
        x = self.vectors(sample)
        n_est = sample.height / max(self.sample_fraction, 1e-9)
        n_clusters = max(1, min(sample.height, math.ceil(2 * n_est / self.params.partition_rows)))
        return kmeans(x, n_clusters, seed=self.context.seed)

    def partition_keys(self, batch: pl.DataFrame, facts: Any) -> pl.Series:
        """Nearest and second-nearest centroid of each row (a List column)."""
        if facts is None:
            return pl.Series("_key", [[0]] * batch.height, dtype=pl.List(pl.Int64))
        _, top = assign(self.vectors(batch), facts, min(2, facts.shape[0]))
        return pl.Series("_key", top.tolist(), dtype=pl.List(pl.Int64))

    def keyed_pieces(self, batch: pl.DataFrame, facts: Any) -> Iterator[tuple[Any, pl.DataFrame]]:
        slim = node_frame(batch, self.params.score, self.params.text).with_columns(batch[EMBEDDING_COLUMN])
        slim = slim.with_columns(self.partition_keys(batch, facts).alias("_key")).explode("_key")
        for (key,), part in slim.group_by("_key", maintain_order=True):
            yield int(key), part.drop("_key")

    def edges_of(self, key: Any, part: pl.DataFrame, facts: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
        part = part.unique("id", keep="first", maintain_order=True)
        if part.height < 2:
            return pl.DataFrame(schema=EDGE_SCHEMA), part.drop(EMBEDDING_COLUMN).head(0)
        edges = threshold_edges(part["id"].to_list(), embeddings_of(part), self.params.k, self.params.threshold, max_k=self.params.max_k, method="exact")
        touched = pl.concat([edges["a"], edges["b"]]).unique()
        return edges, part.drop(EMBEDDING_COLUMN).filter(pl.col("id").is_in(touched.implode()))


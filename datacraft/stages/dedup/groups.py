"""Duplicate groups from candidate edges, shared by `near_dedup` (MinHash) and `semantic_dedup` (FAISS).

Both stages produce edges `(a, b, sim)` between row ids whose similarity passes the threshold; the
rows' priorities (`score` desc, then text `length` desc, then `id` asc) decide which row a group
keeps. `resolve` turns edges + priorities into one drop table (id → kept id), computed once over
the whole collection, so a row that appears in several partitions is still decided exactly once;
`apply_drops` splits any batch by that table. The scale-out form (`EdgeDedup`, the DECIDE_APPLY shape) is:

    rows ─ prepare ─┬─ key (list of partition keys) ─ GroupByKey ─ edges per partition ─┐
                    │                                                     ToList ─ resolve (side input)
                    └──────────────────────────── apply_drops(batch, side input) ─ kept / dropped / stats

Memory of `resolve`: O(#edges + #rows with an edge) — duplicates only, never the whole corpus.

Order independence: `resolve` first puts the edges in one canonical form (each unordered pair once,
lower id first, its largest similarity, sorted), and every tie — the kept row of a group, the kept
neighbour a greedy drop points to, the "via" row — is broken by priority and then by id, so the drop
table and the drop details depend on the set of edges only, not on the order partitions sent them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl

from datacraft.core.rows import SCORE_PREFIX, text_expr, with_drop
from datacraft.core.stage import Shape, StageResult
from datacraft.vectors.knn import union_find_groups

EDGE_SCHEMA = {"a": pl.Utf8, "b": pl.Utf8, "sim": pl.Float64}
NODE_SCHEMA = {"id": pl.Utf8, "score": pl.Float64, "length": pl.Int64, "text": pl.Utf8}


def node_frame(frame: pl.DataFrame, score: str | None, text: str) -> pl.DataFrame:
    """Per-row priority facts: id, score (null when missing), text length and a text preview."""
    col = SCORE_PREFIX + score if score else None
    s = pl.col(col).cast(pl.Float64) if col and col in frame.columns else pl.lit(None, dtype=pl.Float64)
    return frame.select(
        pl.col("id"),
        s.alias("score"),
        text_expr(text).str.len_chars().cast(pl.Int64).alias("length"),
        text_expr(text).str.slice(0, 160).alias("text"),
    )


def rank_of(nodes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Position in `order` (the priority order of all nodes) of each of `nodes`."""
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[nodes]


def canonical_edges(edges: pl.DataFrame) -> pl.DataFrame:
    """Each unordered pair once as (lower id, higher id) with its largest similarity, sorted."""
    lo = pl.min_horizontal("a", "b").alias("a")
    hi = pl.max_horizontal("a", "b").alias("b")
    return edges.filter(pl.col("a") != pl.col("b")).select(lo, hi, "sim").group_by(["a", "b"]).agg(pl.col("sim").max()).sort(["a", "b"])


def _greedy_keep(n: int, order: np.ndarray, ia: np.ndarray, ib: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Non-transitive grouping: in priority order, a node is dropped when it has an edge to an already
    kept node; returns, per node, the index of the kept node it duplicates (itself when kept)."""
    a = np.concatenate([ia, ib])
    b = np.concatenate([ib, ia])
    s = np.concatenate([sim, sim])
    o = np.lexsort((rank_of(b, order), -s, a))  # equal similarity: the better-ranked neighbour first
    a, b = a[o], b[o]
    bounds = np.searchsorted(a, np.arange(n + 1))
    rank = rank_of(np.arange(n), order)
    kept_as = np.full(n, -1, dtype=np.int64)
    for u in order.tolist():
        best = u
        for v in b[bounds[u] : bounds[u + 1]].tolist():  # neighbours, most similar first
            if kept_as[v] == v and rank[v] < rank[u]:
                best = v
                break
        kept_as[u] = best
    return kept_as


def ranked_members(members: pl.DataFrame, keep: str = "best") -> pl.DataFrame:
    """Members sorted by group, then priority: `best` = score desc, length desc, id asc; `first` = id in
    natural order (a trailing number compared as a number: `x:9` before `x:10`), i.e. file order for
    ids such as `name:row`, the keep-first rule of order-dependent dedup scripts."""
    if keep == "best":
        return members.sort(["group", "score", "length", "id"], descending=[False, True, True, False], nulls_last=True)
    if keep == "first":
        stem = pl.col("id").str.replace(r"\d+$", "").alias("_stem")
        num = pl.col("id").str.extract(r"(\d+)$").cast(pl.Int64, strict=False).alias("_num")
        return members.with_columns(stem, num).sort(["group", "_stem", "_num", "id"], nulls_last=True).drop("_stem", "_num")
    raise ValueError(f"unknown keep {keep!r}; expected best or first")


def resolve(edges: pl.DataFrame, nodes: pl.DataFrame, tau: float, metric: str = "cos", examples: int = 5, grouping: str = "union_find", keep: str = "best") -> tuple[pl.DataFrame, dict[str, Any]]:
    """Union-find over the edges; each group keeps its first node by `keep` (see `ranked_members`;
    `grouping="greedy"`: a row is dropped only when it is directly linked to a kept row ranked before
    it — no chaining). Returns (drops, extras):
    drops = (id, kept_id, sim, via) with `via` the group member the row was linked through when it has
    no direct edge to the kept row; extras = group-size histogram and example groups near the threshold."""
    empty = pl.DataFrame(schema={"id": pl.Utf8, "kept_id": pl.Utf8, "sim": pl.Float64, "via": pl.Utf8})
    if edges.height == 0:
        return empty, {"group_sizes": {}, "groups": 0, "examples": []}
    edges = canonical_edges(edges)
    nodes = nodes.sort("id").unique("id", keep="first", maintain_order=True)
    ids = pl.concat([edges["a"], edges["b"]]).unique(maintain_order=True)
    index = pl.DataFrame({"id": ids, "ix": np.arange(len(ids))})
    e = edges.join(index.rename({"id": "a", "ix": "ia"}), on="a").join(index.rename({"id": "b", "ix": "ib"}), on="b")
    labels = union_find_groups(len(ids), e["ia"].to_numpy(), e["ib"].to_numpy())
    members = index.with_columns(pl.Series("group", labels)).join(nodes, on="id", how="left")
    ranked = ranked_members(members, keep)
    kept = ranked.group_by("group", maintain_order=True).first().select("group", pl.col("id").alias("kept_id"))
    if grouping == "greedy":
        order = ranked["ix"].to_numpy()
        kept_as = _greedy_keep(len(ids), order, e["ia"].to_numpy(), e["ib"].to_numpy(), e["sim"].to_numpy())
        kept = pl.DataFrame({"ix": np.arange(len(ids)), "kept_id": ids.gather(kept_as)})
        members = members.join(kept, on="ix").with_columns(pl.col("kept_id").rank("dense").alias("group"))
    elif grouping == "union_find":
        members = members.join(kept, on="group")
    else:
        raise ValueError(f"unknown grouping {grouping!r}; expected union_find or greedy")
    dropped = members.filter(pl.col("id") != pl.col("kept_id"))
    # similarity to the kept row: the direct edge when there is one, else the row's strongest edge
    both = pl.concat([edges, edges.select(pl.col("b").alias("a"), pl.col("a").alias("b"), "sim")])
    direct = dropped.join(both, left_on=["id", "kept_id"], right_on=["a", "b"], how="left").group_by("id").agg(pl.col("sim").max())
    strongest = both.sort(["sim", "b"], descending=[True, False]).group_by("a", maintain_order=True).first().rename({"a": "id", "b": "via_id", "sim": "via_sim"})
    drops = (
        dropped.join(direct, on="id", how="left")
        .join(strongest, on="id", how="left")
        .select(
            "id",
            "kept_id",
            pl.coalesce("sim", "via_sim").alias("sim"),
            pl.when(pl.col("sim").is_null()).then(pl.col("via_id")).otherwise(None).alias("via"),
        )
    )
    sizes = members.group_by("group").len()
    hist = Counter(int(x) for x in sizes["len"].to_list())
    extras: dict[str, Any] = {
        "group_sizes": {str(k): v for k, v in sorted(hist.items())},
        "groups": int(sizes.height),
        "examples": threshold_examples(drops, nodes, tau, metric, examples),
    }
    return drops.sort("id"), extras


def threshold_examples(drops: pl.DataFrame, nodes: pl.DataFrame, tau: float, metric: str, n: int) -> list[dict[str, Any]]:
    """The dropped/kept pairs whose similarity is closest to the threshold (what a person should look at)."""
    if drops.height == 0 or n <= 0:
        return []
    near = drops.with_columns((pl.col("sim") - tau).abs().alias("gap")).sort("gap").head(n)
    text = dict(zip(nodes["id"].to_list(), nodes["text"].to_list(), strict=True))
    return [
        {metric: round(float(r["sim"]), 4), "kept_id": r["kept_id"], "kept": text.get(r["kept_id"]), "dropped_id": r["id"], "dropped": text.get(r["id"])}
        for r in near.iter_rows(named=True)
    ]


def apply_drops(stage_label: str, batch: pl.DataFrame, drops: pl.DataFrame, metric: str = "cos") -> StageResult:
    """Split a batch by the drop table: rows in it are dropped "near-duplicate" with
    detail "near-duplicate of <kept id> (cos=0.93)" (plus "via <id>" for a transitive link)."""
    if drops.height == 0 or batch.height == 0:
        return StageResult(kept=batch)
    marked = batch.join(drops, on="id", how="left", maintain_order="left")
    hit = marked["kept_id"].is_not_null()
    detail = pl.concat_str(
        pl.lit("near-duplicate of "),
        pl.col("kept_id"),
        pl.lit(f" ({metric}="),
        pl.col("sim").round(3).cast(pl.Utf8),
        pl.when(pl.col("via").is_not_null()).then(pl.concat_str(pl.lit(" via "), pl.col("via"))).otherwise(pl.lit("")),
        pl.lit(")"),
    )
    dropped = with_drop(marked.filter(hit), stage_label, "near-duplicate", detail).drop(["kept_id", "sim", "via"])
    return StageResult(kept=batch.filter(~hit), dropped=dropped)


def dedup_result(stage_label: str, frame: pl.DataFrame, edges: pl.DataFrame, nodes: pl.DataFrame, tau: float, metric: str, counters: dict[str, float] | None = None, grouping: str = "union_find") -> StageResult:
    """One-process form: resolve the edges and split the frame."""
    drops, extras = resolve(edges, nodes, tau, metric, grouping=grouping)
    result = apply_drops(stage_label, frame, drops, metric)
    result.extras = extras
    result.counters = {**(counters or {}), f"{metric}.edges": float(edges.height)}
    return result


# ---------------------------------------------------------------------------------------------
# the DECIDE_APPLY hooks both dedup stages share


class EdgeDedup:
    """Mixin for a GlobalStage whose evidence is candidate edges per partition (`keyed_pieces`,
    `edges_of`); the decision is the drop table, applied per batch. The stage sets `metric`; its
    params have `threshold`, `grouping` and `score` (the priority score, read when the user sets it)."""

    label: str
    metric: str
    params: Any
    keyed_evidence = True

    def tau(self) -> float:
        return self.params.threshold

    def grouping(self) -> str:
        return self.params.grouping

    def reads(self) -> set[str]:
        explicit = "score" in self.params.model_fields_set
        return {SCORE_PREFIX + self.params.score} if self.params.score and explicit else set()

    def shape(self) -> Shape:
        return Shape.DECIDE_APPLY

    def evidence(self, batch: pl.DataFrame, facts: Any) -> Iterable[tuple[Any, pl.DataFrame]]:
        return self.keyed_pieces(batch, facts)

    def keyed_pieces(self, batch: pl.DataFrame, facts: Any) -> Iterable[tuple[Any, pl.DataFrame]]:
        raise NotImplementedError

    def edges_of(self, key: Any, part: pl.DataFrame, facts: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
        raise NotImplementedError

    def partition_evidence(self, key: Any, pieces: list[pl.DataFrame], facts: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
        return self.edges_of(key, pl.concat(pieces, how="vertical_relaxed").sort("id"), facts)

    def decide(self, evidence: list[tuple[pl.DataFrame, pl.DataFrame]]) -> dict[str, Any]:
        edges = pl.concat([e for e, _ in evidence], how="vertical_relaxed") if evidence else pl.DataFrame(schema=EDGE_SCHEMA)
        nodes = pl.concat([n for _, n in evidence], how="vertical_relaxed") if evidence else pl.DataFrame(schema=NODE_SCHEMA)
        edges = canonical_edges(edges)
        drops, extras = resolve(edges, nodes, self.tau(), self.metric, grouping=self.grouping(), keep=getattr(self.params, "keep", "best"))
        return {"drops": drops, "extras": extras, "edges": edges.height}

    def apply(self, batch: pl.DataFrame, decision: dict[str, Any]) -> StageResult:
        return apply_drops(self.label, batch, decision["drops"], self.metric)

    def decision_result(self, decision: dict[str, Any]) -> StageResult:
        return StageResult(kept=pl.DataFrame(), extras=decision["extras"], counters={f"{self.metric}.edges": float(decision["edges"])})

"""`pref_head`: a preference head on MiniLM embeddings (`datacraft.stages.score.prefhead`), as a score stage.

Writes `scores.pref_head` (the head's Bradley–Terry score in logit units: a difference of 1 between
two answers to one instruction means the head gives the higher one e/(1+e) ≈ 0.73 odds) and, on
preference rows, `scores.pref_head_margin` = score(chosen) − score(rejected).

`model`: `embedded` (the head shipped in datacraft/resources/pref_head, fitted on the AlpacaEval GPT-4
judgements of 75% of its instructions and length-balanced weak generator pairs; features: response embedding,
log length, heuristics, layout counts, style markers and instruction overlap, hashed word n-grams) or a folder written by `datacraft fit-scorer`. The head
names its embedder; both views (instruction, response) go through the `embed` stage core and its
vector cache. `embedding: column` reads the response vectors from an `embedding` column written by
an `embed` stage with `text: response` instead of embedding the responses again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from datacraft.core.rows import instruction_expr, is_preference_expr, response_expr, set_scores
from datacraft.core.stage import MapStage, StageParams, StageResult, score, split_kept
from datacraft.stages.score.judge import spread
from datacraft.stages.score.prefhead import (
    PrefHead,
    RowViews,
    format_matrix,
    heuristic_matrix,
    ngram_matrix,
    style_matrix,
)
from datacraft.stages.vectors.embed import EmbedStage
from datacraft.vectors.embedders import EMBEDDING_COLUMN, embeddings_of


class PrefHeadParams(StageParams):
    model: str = Field("embedded", description="'embedded' (the shipped head) or a folder from `datacraft fit-scorer`")
    embedding: Literal["compute", "column"] = Field(
        "compute", description="compute: embed the responses (cached); column: read the `embedding` column (embed with text: response)"
    )
    batch_size: int | None = Field(None, description="embedding batch size (default: the run's embedder setting)")
    cache: bool = Field(True, description="keep vectors in the content-addressed vector cache")
    min_score: float | None = Field(None, description="drop rows whose score is below this")


@dataclass
class HeadAndEmbedders:
    """The fitted head and the `embed` stage cores for its two views (their vector caches included)."""

    head: PrefHead
    embedders: dict[str, EmbedStage]

    def close(self) -> None:
        for stage in self.embedders.values():
            stage.release()


class PrefHeadStage(MapStage[PrefHeadParams, HeadAndEmbedders]):
    """Scores each row with a fitted preference head; drops nothing unless `min_score` is set.
    Reads `messages`, `chosen`, `rejected` (and `embedding` with `embedding: column`)."""

    name = "pref_head"
    Params = PrefHeadParams

    def reads(self) -> set[str]:
        return {"messages", EMBEDDING_COLUMN} if self.params.embedding == "column" else {"messages"}

    def writes(self) -> set[str]:
        return {score("pref_head"), score("pref_head_margin")}

    def load(self) -> HeadAndEmbedders:
        p = self.params
        head = PrefHead.load(p.model)
        emb = head.embedder
        # the response embedder is needed with `embedding: column` too: for preference rows' rejected side
        embedders = {
            v: EmbedStage({"text": v, "kind": emb["kind"], "model": emb["model"], "batch_size": p.batch_size, "cache": p.cache}, context=self.context)
            for v in ("instruction", "response")
        }
        for stage in embedders.values():
            stage.acquire()
        return HeadAndEmbedders(head, embedders)

    def _vectors(self, frame: pl.DataFrame, view: str, counters: dict[str, float]) -> np.ndarray:
        res = self.resource.embedders[view].run(frame.select("messages", "chosen"))
        for k, v in res.counters.items():
            counters[k] = counters.get(k, 0.0) + float(v)
        return embeddings_of(res.kept)

    def _score(self, frame: pl.DataFrame, counters: dict[str, float], response_vectors: np.ndarray | None = None) -> np.ndarray:
        res = response_vectors if response_vectors is not None else self._vectors(frame, "response", counters)
        ins = self._vectors(frame, "instruction", counters) if self.resource.head.needs_instruction else np.zeros_like(res)
        dim = self.resource.embedders["response"].resource.embedder.dim
        if res.shape[1] != dim:
            raise ValueError(f"the `embedding` column has {res.shape[1]} dims, the head's embedder {dim}")
        text = frame.select(response_expr().fill_null(""))[:, 0]
        chars = text.str.len_chars().to_numpy().astype(np.float64)
        head = self.resource.head
        heur = heuristic_matrix(frame) if head.needs_heuristics else None
        grams = ngram_matrix(text.to_list(), head.ngram_dim) if head.needs_ngrams else None
        style = style_matrix(text.to_list(), frame.select(instruction_expr().fill_null(""))[:, 0].to_list()) if head.needs_style else None
        return head.score(RowViews(ins, res, chars, heur, format_matrix(text) if head.needs_format else None, grams, style))

    def process(self, batch: pl.DataFrame, resource: HeadAndEmbedders) -> StageResult:
        if batch.height == 0:
            return StageResult(kept=set_scores(batch, {"pref_head": []}))
        counters: dict[str, float] = {}
        column = None
        if self.params.embedding == "column":
            if EMBEDDING_COLUMN not in batch.columns:
                raise ValueError("pref_head with embedding: column needs an `embed` stage (text: response) before it")
            column = embeddings_of(batch)
        values = self._score(batch, counters, column)
        scores: dict[str, Any] = {"pref_head": values.tolist()}
        if "rejected" in batch.columns:
            pref = batch.select(is_preference_expr().fill_null(False))[:, 0].to_numpy()
            if pref.any():
                other = batch.filter(pl.Series(pref)).with_columns(pl.col("rejected").alias("chosen"))
                margin = np.full(batch.height, np.nan)
                margin[pref] = values[pref] - self._score(other, counters)
                scores["pref_head_margin"] = [None if np.isnan(v) else float(v) for v in margin]
        counters["pref_head.rows"] = float(batch.height)
        out = set_scores(batch, scores)
        extras = {"score_spread": [spread("pref_head", scores["pref_head"])]}
        if self.params.min_score is None:
            return StageResult(kept=out, counters=counters, extras=extras)
        res = split_kept(self.label, out, pl.col("scores.pref_head") >= self.params.min_score, "below_min_score",
                         pl.format("pref_head={}", pl.col("scores.pref_head").round(3)))
        res.counters, res.extras = counters, extras
        return res

"""`pref_head`: a preference head on MiniLM embeddings (`datacraft.prefhead`), as a score stage.

Writes `scores.pref_head` (the head's Bradley–Terry score in logit units: a difference of 1 between
two answers to one instruction means the head gives the higher one e/(1+e) ≈ 0.73 odds) and, on
preference rows, `scores.pref_head_margin` = score(chosen) − score(rejected).

`model`: `embedded` (the head shipped in datacraft/resources/pref_head, fitted on the AlpacaEval GPT-4
judgements of 75% of its instructions; features: response embedding, log length, heuristics) or a folder written by `datacraft fit-scorer`. The head
names its embedder; both views (instruction, response) go through the `embed` stage core and its
vector cache. `embedding: column` reads the response vectors from an `embedding` column written by
an `embed` stage with `text: response` instead of embedding the responses again.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from datacraft.records import is_preference_expr, response_expr, set_scores
from datacraft.stages.base import BatchStage, StageParams, StageResult, split_kept
from datacraft.stages.score.judge import spread


class PrefHeadParams(StageParams):
    model: str = Field("embedded", description="'embedded' (the shipped head) or a folder from `datacraft fit-scorer`")
    embedding: Literal["compute", "column"] = Field(
        "compute", description="compute: embed the responses (cached); column: read the `embedding` column (embed with text: response)"
    )
    batch_size: int | None = Field(None, description="embedding batch size (default: the run's embedder setting)")
    cache: bool = Field(True, description="keep vectors in the content-addressed vector cache")
    min_score: float | None = Field(None, description="drop rows whose score is below this")


class PrefHeadStage(BatchStage):
    """Scores each row with a fitted preference head; drops nothing unless `min_score` is set.
    Reads `messages`, `chosen`, `rejected` (and `embedding` with `embedding: column`)."""

    name = "pref_head"
    Params = PrefHeadParams
    params: PrefHeadParams

    def setup(self) -> None:
        from datacraft.embed import EmbedStage
        from datacraft.prefhead import PrefHead

        p = self.params
        self.head = PrefHead.load(p.model)
        emb = self.head.embedder
        # the response embedder is needed with `embedding: column` too: for preference rows' rejected side
        self.embedders = {
            v: EmbedStage({"text": v, "kind": emb["kind"], "model": emb["model"], "batch_size": p.batch_size, "cache": p.cache}, context=self.context)
            for v in ("instruction", "response")
        }
        for stage in self.embedders.values():
            stage.ensure_setup()

    def teardown(self) -> None:
        for stage in getattr(self, "embedders", {}).values():
            stage.release()

    def _vectors(self, frame: pl.DataFrame, view: str, counters: dict[str, float]) -> np.ndarray:
        from datacraft.embed import embeddings_of

        res = self.embedders[view].process(frame.select("messages", "chosen"))
        for k, v in res.counters.items():
            counters[k] = counters.get(k, 0.0) + float(v)
        return embeddings_of(res.kept)

    def _score(self, frame: pl.DataFrame, counters: dict[str, float], response_vectors: np.ndarray | None = None) -> np.ndarray:
        from datacraft.prefhead import RowViews, heuristic_matrix

        res = response_vectors if response_vectors is not None else self._vectors(frame, "response", counters)
        ins = self._vectors(frame, "instruction", counters) if self.head.needs_instruction else np.zeros_like(res)
        dim = self.embedders["response"].embedder.dim
        if res.shape[1] != dim:
            raise ValueError(f"the `embedding` column has {res.shape[1]} dims, the head's embedder {dim}")
        chars = frame.select(response_expr().str.len_chars())[:, 0].to_numpy().astype(np.float64)
        heur = heuristic_matrix(frame) if self.head.needs_heuristics else None
        return self.head.score(RowViews(ins, res, chars, heur))

    def process(self, batch: pl.DataFrame) -> StageResult:
        self.ensure_setup()
        if batch.height == 0:
            return StageResult(kept=set_scores(batch, {"pref_head": []}))
        counters: dict[str, float] = {}
        column = None
        if self.params.embedding == "column":
            from datacraft.embed import EMBEDDING_COLUMN, embeddings_of

            if EMBEDDING_COLUMN not in batch.columns:
                raise ValueError("pref_head with embedding: column needs an `embed` stage (text: response) before it")
            column = embeddings_of(batch)
        score = self._score(batch, counters, column)
        scores: dict[str, Any] = {"pref_head": score.tolist()}
        if "rejected" in batch.columns:
            pref = batch.select(is_preference_expr().fill_null(False))[:, 0].to_numpy()
            if pref.any():
                other = batch.filter(pl.Series(pref)).with_columns(pl.col("rejected").alias("chosen"))
                margin = np.full(batch.height, np.nan)
                margin[pref] = score[pref] - self._score(other, counters)
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

"""`diversity`: per-row diversity scores from embeddings (docs/methods.md §7.4).

* `scores.diversity` — mean cosine distance to the k nearest neighbours (DS2's x̄; by default self is
  included at distance 0, as DS2's `get_lr_score` counts it);
* `scores.longtail` — DS2's long-tail score `2/(1+e^(−x̄)) − 1 = tanh(x̄/2)`, rounded to 4 decimals;
* `scores.nn_distance` — cosine distance to the nearest other row (for reports: after a selection,
  `distance_to_nearest(rows, kept)` gives the distance of any row to the nearest kept row).

Embeddings: the `embedding` column when present (the `embed` stage), else the run's embedder on
`text`. One process: memory ≈ N·d·4 bytes for the vectors + N·k·12 bytes for the neighbours
(1M rows × 384-d ≈ 1.6 GB); kNN is FAISS (exact up to 50k rows, IVF above).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from datacraft.core.rows import set_scores
from datacraft.core.stage import GlobalStage, StageResult, score
from datacraft.stages.score.judge import spread
from datacraft.stages.vectors.embed import EmbeddingSourceParams

TextView = Literal["instruction", "instruction_response", "response", "conversation"]


def neighbour_distances(emb: np.ndarray, k: int, include_self: bool = True) -> np.ndarray:
    """(n, k) cosine distances (1 − cos) to the k nearest neighbours, ascending; with `include_self`
    the first column is the row itself (distance 0) and k − 1 others follow. Missing → NaN."""
    from datacraft.vectors.knn import knn

    others = k - 1 if include_self else k
    n = emb.shape[0]
    if others > 0:
        sims, _ = knn(emb, others)
        d = np.where(np.isfinite(sims), 1.0 - sims.astype(np.float64), np.nan)
    else:
        d = np.zeros((n, 0))
    if include_self:
        d = np.concatenate([np.zeros((n, 1)), d], axis=1)
    return np.clip(d, 0.0, 2.0)


def mean_knn_distance(emb: np.ndarray, k: int = 10, include_self: bool = True) -> np.ndarray:
    """DS2's x̄: mean cosine distance to the k nearest neighbours (NaN-aware for tiny sets)."""
    d = neighbour_distances(emb, k, include_self)
    with np.errstate(invalid="ignore"):
        return np.nanmean(d, axis=1) if d.shape[1] else np.zeros(emb.shape[0])


def long_tail_score(emb: np.ndarray, k: int = 10, include_self: bool = True) -> np.ndarray:
    """DS2's long-tail score tanh(x̄/2), rounded to 4 decimals (higher = rarer)."""
    return np.round(2.0 / (1.0 + np.exp(-mean_knn_distance(emb, k, include_self))) - 1.0, 4)


def distance_to_nearest(rows: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Cosine distance of each row to its nearest row of `kept` (0 for rows that are in `kept`)."""
    from datacraft.vectors.knn import knn

    if kept.shape[0] == 0:
        return np.full(rows.shape[0], np.nan)
    sims, _ = knn(kept, 1, queries=rows)
    return np.clip(1.0 - sims[:, 0].astype(np.float64), 0.0, 2.0)


class DiversityParams(EmbeddingSourceParams):
    k: int = Field(10, ge=1, description="neighbours (DS2: 10, self included)")
    include_self: bool = True
    text: TextView = Field("conversation", description="what is embedded when there is no `embedding` column")
    longtail: bool = Field(True, description="also write scores.longtail")


class DiversityStage(GlobalStage):
    """Writes `scores.diversity`, `scores.nn_distance` (and `scores.longtail`); drops nothing.
    Reads `embedding` or the text view."""

    name = "diversity"
    Params = DiversityParams
    params: DiversityParams

    def writes(self) -> set[str]:
        return {score(n) for n in ("diversity", "nn_distance", *(("longtail",) if self.params.longtail else ()))}

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        from datacraft.vectors.embedders import ensure_embeddings

        p = self.params
        if frame.height == 0:
            return StageResult(kept=frame)
        emb = ensure_embeddings(frame, self.context, p.text, p.kind, p.model)
        d = neighbour_distances(emb, max(p.k, 2), p.include_self)
        with np.errstate(invalid="ignore"):
            xbar = np.nanmean(d[:, : p.k], axis=1)
        nearest = d[:, 1] if p.include_self else d[:, 0]
        scores = {"diversity": xbar.tolist(), "nn_distance": [None if np.isnan(v) else float(v) for v in nearest]}
        if p.longtail:
            scores["longtail"] = np.round(np.tanh(xbar / 2.0), 4).tolist()
        extras = {"score_spread": [spread("diversity", scores["diversity"]), spread("nn_distance", scores["nn_distance"])]}
        return StageResult(kept=set_scores(frame, scores), extras=extras)

"""`deita_select`: Deita's score-first, diversity-aware greedy filter (docs/methods.md §6.2, the Repr Filter).

Deita (Liu et al., ICLR 2024, "What Makes Good Data for Alignment?"; reference hkust-nlp/deita
src/deita/pipeline/filter_pipeline.py + selection/filter/combined_filter.py). Rows are sorted by
the Evol score (descending): `sort: deita` (default) is Deita's Σ_t c_t·q_t over the turns of a
conversation (per-turn scores from `meta.complexity_scores` / `meta.quality_scores`, else
`scores.deita`); `sort: product` is our earlier mean(c)×mean(q) (equal on single-turn rows). A row is
kept when its maximum cosine similarity to the rows already kept is ≤ `threshold` (Deita's 0.9, set
for its LLaMA embeddings), until `budget` rows are kept. τ depends on the embedder: `threshold:
auto` sets it to the `auto_quantile` quantile of the rows' nearest-neighbour cosines, and the stage
warns (report extras + log) when the filter rejected under 1% of the rows it examined. The kept set lives in a FAISS IndexFlatIP that grows as rows are
accepted; candidates are checked in chunks against the index, and inside a chunk against the
earlier accepted rows of the same chunk (the lower triangle), so the result equals the one-by-one
loop. Unlike distilabel's DeitaFiltering the comparison is with the *kept* pool, not the whole set.

Reads `embedding` (or embeds `text`), the score columns; dropped rows: "too similar" (detail
"cos=0.95 to <id>") or "not selected (budget)". Memory: the vectors + the kept index (budget × d).
Order independence: rows arrive sorted by id (`canonical_order`); equal sort keys go to the smaller id.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import faiss
import numpy as np
import polars as pl
from pydantic import Field

from datacraft.core.rows import SCORE_PREFIX, concat_batches, meta_of, set_scores, with_drop
from datacraft.core.stage import GlobalStage, StageResult, score
from datacraft.stages.select.submodular import resolve_budget
from datacraft.stages.vectors.embed import EmbeddingSourceParams
from datacraft.vectors.embedders import ensure_embeddings

log = logging.getLogger(__name__)


def deita_filter(x: np.ndarray, order: np.ndarray, threshold: float = 0.9, budget: int | None = None, chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy repr filter. Returns (kept indices in acceptance order, each row's max cos to the kept
    set when it was examined (nan if never examined), index of that most similar kept row (-1))."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    budget = n if budget is None else budget
    index = faiss.IndexFlatIP(x.shape[1])
    kept: list[int] = []
    best = np.full(n, np.nan)
    nearest = np.full(n, -1, dtype=np.int64)
    pos = 0
    while pos < n and len(kept) < budget:
        cand = order[pos : pos + chunk]
        pos += len(cand)
        if index.ntotal:
            s, i = index.search(x[cand], 1)
            cur_s, cur_i = s[:, 0].astype(np.float64), np.asarray(kept)[i[:, 0]]
        else:
            cur_s, cur_i = np.full(len(cand), -np.inf), np.full(len(cand), -1)
        within = x[cand] @ x[cand].T
        accepted: list[int] = []
        for a, row in enumerate(cand):
            if len(kept) + len(accepted) >= budget:
                break
            s_a, i_a = cur_s[a], cur_i[a]
            for b in accepted:
                if within[a, b] > s_a:
                    s_a, i_a = float(within[a, b]), cand[b]
            best[row], nearest[row] = s_a, i_a
            if s_a <= threshold:
                accepted.append(a)
        if accepted:
            index.add(x[cand[accepted]])
            kept.extend(int(cand[a]) for a in accepted)
    return np.asarray(kept, dtype=np.int64), best, nearest


class DeitaParams(EmbeddingSourceParams):
    budget: float = Field(0.1, gt=0, description="rows to keep: a count (≥ 1) or a fraction (< 1)")
    threshold: float | Literal["auto"] = Field(0.9, description="τ: keep a row only if its max cosine to the kept set ≤ τ; auto: calibrated on the rows")
    auto_quantile: float = Field(0.9, gt=0, lt=1, description="threshold auto: τ = this quantile of the nearest-neighbour cosines")
    sort: Literal["deita", "product"] = Field("deita", description="deita: Σ_t c_t·q_t over turns (the paper); product: Π of mean scores (ours)")
    scores: list[str] = Field(default_factory=lambda: ["complexity", "quality"], description="score names multiplied into the sort key (sort: product)")
    text: Literal["instruction", "instruction_response", "response", "conversation"] = "conversation"


class DeitaSelectStage(GlobalStage):
    name = "deita_select"
    Params = DeitaParams
    params: DeitaParams

    def reads(self) -> set[str]:
        return {score(n) for n in self.params.scores} if self.param_is_set("scores") else set()

    def writes(self) -> set[str]:
        return {score(f"{self.label}_rank"), score("evol_score")}

    def sort_key(self, frame: pl.DataFrame) -> np.ndarray:
        """The Evol score per row (see the module docstring)."""
        if self.params.sort == "deita":
            return self.deita_key(frame)
        return self.product_key(frame)

    def deita_key(self, frame: pl.DataFrame) -> np.ndarray:
        """Σ_t c_t·q_t from the per-turn scores in meta; rows without them: `scores.deita`, else the
        product of the mean scores (one turn)."""
        fallback = self.product_key(frame)
        if SCORE_PREFIX + "deita" in frame.columns:
            d = frame[SCORE_PREFIX + "deita"].cast(pl.Float64).to_numpy()
            fallback = np.where(np.isfinite(d), d, fallback)
        metas = frame["meta"].to_list() if "meta" in frame.columns else [None] * frame.height
        key = fallback.copy()
        for i, m in enumerate(metas):
            meta = meta_of(m)
            c, q = meta.get("complexity_scores"), meta.get("quality_scores")
            if c and q and len(c) == len(q):
                key[i] = float(sum(a * b for a, b in zip(c, q, strict=True)))
        return key

    def product_key(self, frame: pl.DataFrame) -> np.ndarray:
        """Product of the configured scores (missing scores count as 1; all missing: input order)."""
        key = np.ones(frame.height)
        for name in self.params.scores:
            col = SCORE_PREFIX + name
            if col in frame.columns:
                key = key * frame[col].cast(pl.Float64).fill_null(0.0).to_numpy()
        return key

    def threshold(self, x: np.ndarray) -> float:
        """τ: the configured value, or (auto) a quantile of each row's nearest-neighbour cosine."""
        if self.params.threshold != "auto":
            return float(self.params.threshold)
        if x.shape[0] < 2:
            return 1.0
        x = np.ascontiguousarray(x, dtype=np.float32)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        s, _ = index.search(x, 2)
        return float(np.quantile(s[:, 1], self.params.auto_quantile))

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        if frame.height == 0:
            return StageResult(kept=frame)
        x = ensure_embeddings(frame, self.context, self.params.text, self.params.kind, self.params.model)
        key = self.sort_key(frame)
        order = np.lexsort((np.arange(frame.height), -key))
        budget = resolve_budget(self.params.budget, frame.height)
        tau = self.threshold(x)
        kept_idx, best, nearest = deita_filter(x, order, tau, budget)
        rank = np.full(frame.height, np.nan)
        rank[kept_idx] = np.arange(1, len(kept_idx) + 1)
        with_key = self.params.sort == "deita" or len(self.params.scores) > 1
        scored = set_scores(frame, {f"{self.label}_rank": rank, "evol_score": key} if with_key else {f"{self.label}_rank": rank})
        keep = np.zeros(frame.height, dtype=bool)
        keep[kept_idx] = True
        similar = ~keep & np.isfinite(best) & (best > tau)
        ids = np.asarray(frame["id"].to_list(), dtype=object)
        detail = [f"cos={best[i]:.3f} to {ids[nearest[i]]}" for i in np.nonzero(similar)[0]]
        too_similar = with_drop(scored.filter(pl.Series(similar)), self.label, "too similar", pl.Series(detail, dtype=pl.Utf8))
        rest = ~keep & ~similar
        over = with_drop(scored.filter(pl.Series(rest)), self.label, "not selected (budget)", f"budget {budget} reached")
        examined = int(np.isfinite(best).sum())
        info: dict[str, Any] = {"rows_in": frame.height, "selected": int(len(kept_idx)), "too_similar": int(similar.sum()), "threshold": round(tau, 6), "sort": self.params.sort}
        if examined >= 100 and similar.sum() < 0.01 * examined:
            info["warning"] = (f"τ={tau:.3f} rejected {int(similar.sum())} of {examined} rows examined (< 1%): with this embedder the "
                               "repr filter does almost nothing; set `threshold: auto` or a lower τ")
            log.warning("deita_select: %s", info["warning"])
        extras: dict[str, Any] = {"deita": info}
        kept = scored.filter(pl.Series(keep)).sort(f"{SCORE_PREFIX}{self.label}_rank")
        return StageResult(kept=kept, dropped=concat_batches([too_similar, over]), extras=extras)

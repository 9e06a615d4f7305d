"""`ds2_curate`: DS2 score curation and selection (Pang et al., ICLR 2025; docs/methods.md §7.2–7.6).

Input: any discrete rating column (an LLM rater's score, a Deita score rounded, a heuristic bucket)
and embeddings. Steps, as the spec:

1. ratings → K classes: `clip(round(x), lo, hi) − lo` (DS2: overall 1–10 clipped to [4, 9]); a
   missing rating falls into class 0 (DS2's failed ratings), or the row is dropped.
2. `estimate_transition_matrix` — HOC: consensus patterns (own, nn1, nn2 labels) over random
   subsamples, then T = rowsoftmax(W), p = softmax(v) fitted to the 1st/2nd/3rd-order frequencies.
3. `curate` — SimiFeat ranking: kNN votes weighted by (1 − distance) over 51 subsampled epochs; the
   top ρ_c most suspicious items per rated class are flagged; a rating is replaced by the suggested
   class when suggest_prob × noisy_avg ≥ `confidence`.
4. `long_tail_score` — tanh(x̄/2) of the mean cosine distance to the 10 nearest neighbours.
5. `ds2_select` — whole curated classes from the top; the boundary class by long-tail score.

Writes `scores.<rating>_curated` (original scale), `scores.longtail`, `meta.ds2` on changed rows;
the report gets T, p and the class counts. With `budget` set, unselected rows are dropped
(`ds2_not_selected`). One process: memory ≈ N·d·4 bytes + O(N·k) (kNN on subsamples of ≤ 50k rows
for steps 2–3, over all rows for step 4).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from datacraft.core.rows import SCORE_PREFIX, set_scores, update_meta, with_drop
from datacraft.core.stage import BASE_COLUMNS, GlobalStage, StageResult, score
from datacraft.stages.score.diversity import TextView, long_tail_score
from datacraft.stages.vectors.embed import EmbeddingSourceParams


def _subsample(rng: np.random.Generator, n: int, sample_size: int) -> np.ndarray:
    return np.sort(rng.choice(n, min(sample_size, max(int(0.9 * n), 3)), replace=False))


def consensus_frequencies(emb: np.ndarray, labels: np.ndarray, num_classes: int, *, rounds: int = 50, sample_size: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical 1st/2nd/3rd-order label consensus (own, nn1, nn2), averaged over subsample rounds."""
    from datacraft.vectors.knn import knn

    K = num_classes
    rng = np.random.default_rng(seed)
    c1, c2, c3 = np.zeros(K), np.zeros((K, K)), np.zeros((K, K, K))
    for _ in range(rounds):
        idx = _subsample(rng, len(labels), sample_size)
        _, nn = knn(emb[idx], 2)
        lab = labels[idx]
        l0, l1, l2 = lab, lab[nn[:, 0]], lab[nn[:, 1]]
        n = len(idx)
        c1 += np.bincount(l0, minlength=K) / n
        c2 += np.bincount(l0 * K + l1, minlength=K * K).reshape(K, K) / n
        c3 += np.bincount((l0 * K + l1) * K + l2, minlength=K**3).reshape(K, K, K) / n
    return c1 / rounds, c2 / rounds, c3 / rounds


def fit_transition_matrix(c1: np.ndarray, c2: np.ndarray, c3: np.ndarray, *, steps: int = 1501, lr: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HOC: T = rowsoftmax(W) (W₀ = 5I − 1), p = softmax(v) (v₀ = 1/K + 0.1·rand) minimising
    Σ_r ‖ĉ_r − c_r‖_F with Adam; returns the lowest-loss (T, p) seen after step 5."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 6×6 tensors: thread hand-offs cost 10× the arithmetic
    try:
        return _fit_hoc(c1, c2, c3, steps, lr, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_hoc(c1: np.ndarray, c2: np.ndarray, c3: np.ndarray, steps: int, lr: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    K = len(c1)
    g = torch.Generator().manual_seed(seed)
    W = (5 * torch.eye(K, dtype=torch.float64) - 1).requires_grad_(True)
    v = (torch.full((K,), 1.0 / K, dtype=torch.float64) + 0.1 * torch.rand(K, generator=g, dtype=torch.float64)).requires_grad_(True)
    e1, e2, e3 = (torch.tensor(c, dtype=torch.float64) for c in (c1, c2, c3))
    opt = torch.optim.Adam([W, v], lr=lr)
    best: tuple[float, np.ndarray, np.ndarray] = (float("inf"), np.eye(K), np.full(K, 1.0 / K))
    for step in range(steps):
        T, p = torch.softmax(W, dim=1), torch.softmax(v, dim=0)
        m1 = p @ T
        A = p[:, None] * T
        m2 = A.T @ T
        m3 = torch.einsum("ij,ik,il->jkl", A, T, T)
        loss = torch.linalg.norm(e1 - m1) + torch.linalg.norm(e2 - m2) + torch.linalg.norm(e3 - m3)
        if step > 5 and loss.item() < best[0]:
            best = (loss.item(), T.detach().numpy().copy(), p.detach().numpy().copy())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return best[1], best[2]


def estimate_transition_matrix(emb: np.ndarray, labels: np.ndarray, num_classes: int, *, rounds: int = 50, sample_size: int = 50_000, steps: int = 1501, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(T, p_true): T[i, j] = P(rated j | true i) and the true-class prior, by HOC (docs/methods.md §7.2)."""
    c = consensus_frequencies(emb, labels, num_classes, rounds=rounds, sample_size=sample_size, seed=seed)
    return fit_transition_matrix(*c, steps=steps, seed=seed)


def noise_rates(T: np.ndarray, p_true: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ρ_c = 1 − min(P(true = c | rated = c), 1), clipped as DS2 (≥ 1 → 0.95, ≤ 0 → 0.05)."""
    K = len(p_true)
    p_rated = np.bincount(labels, minlength=K) / max(len(labels), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        clean = np.where(p_rated > 0, np.diag(T) * p_true / p_rated, 1.0)
    rho = 1.0 - np.minimum(clean, 1.0)
    return np.where(rho >= 1.0, 0.95, np.where(rho <= 0.0, 0.05, rho))


def curate(emb: np.ndarray, labels: np.ndarray, T: np.ndarray, p_true: np.ndarray, *, k: int = 10, epochs: int = 51, sample_size: int = 50_000, confidence: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SimiFeat-rank score curation: (curated labels, confidence, noisy_avg) (docs/methods.md §7.3)."""
    from datacraft.vectors.knn import knn

    K, n = len(p_true), len(labels)
    rho = noise_rates(T, p_true, labels)
    rng = np.random.default_rng(seed)
    sampled, flagged = np.zeros(n), np.zeros(n)
    suggest = np.zeros((n, K))
    for _ in range(epochs):
        idx = _subsample(rng, n, sample_size)
        sims, nn = knn(emb[idx], k - 1)  # self excluded; added back below at its adjusted distance
        d = np.where(nn >= 0, 1.0 - sims.astype(np.float64), np.nan)
        d_self = 2.0 * d[:, 0] - d[:, 1] if d.shape[1] > 1 else np.zeros(len(idx))
        lab = labels[idx]
        votes = np.zeros((len(idx), K))
        np.add.at(votes, (np.arange(len(idx)), lab), 1.0 - d_self)
        for j in range(nn.shape[1]):
            ok = nn[:, j] >= 0
            np.add.at(votes, (np.arange(len(idx))[ok], lab[nn[ok, j]]), 1.0 - d[ok, j])
        votes /= np.maximum(np.linalg.norm(votes, axis=1, keepdims=True), 1e-12)
        score = -np.log(votes[np.arange(len(idx)), lab] + 1e-8)
        pred = votes.argmax(axis=1)
        sampled[idx] += 1
        for c in range(K):
            sel = lab == c
            if not sel.any():
                continue
            thr = np.percentile(score[sel], 100.0 * (1.0 - rho[c]))
            hit = sel & (score >= thr)
            flagged[idx[hit]] += 1
            np.add.at(suggest, (idx[hit], pred[hit]), 1.0)
    noisy_avg = (flagged + 1.0) / (sampled + 2.0)
    prob = (suggest + 1.0) / (suggest.sum(axis=1, keepdims=True) + K)
    prob[np.arange(n), labels] = -np.inf  # the suggestion must differ from the current label
    best = prob.argmax(axis=1)
    conf = prob[np.arange(n), best] * noisy_avg
    curated = np.where(conf >= confidence, best, labels)
    return curated, conf, noisy_avg


def ds2_select(classes: np.ndarray, longtail: np.ndarray, budget: int) -> np.ndarray:
    """DS2's rule: whole classes from the highest down while one fits (strictly) in what is left;
    the boundary class by long-tail score, descending. Returns the selected indices."""
    chosen: list[np.ndarray] = []
    left = budget
    for c in sorted(np.unique(classes).tolist(), reverse=True):
        if left <= 0:
            break
        members = np.flatnonzero(classes == c)
        if len(members) < left:
            chosen.append(members)
            left -= len(members)
        else:
            order = np.argsort(-longtail[members], kind="stable")
            chosen.append(members[order[:left]])
            left = 0
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def rating_classes(values: list[float | None], lo: float | None, hi: float | None) -> tuple[np.ndarray, int, int, np.ndarray]:
    """(class per row, lo, hi, missing mask): round, clip to [lo, hi], shift to 0..hi−lo."""
    arr = np.array([np.nan if v is None else float(v) for v in values])
    missing = np.isnan(arr)
    r = np.round(arr[~missing]) if (~missing).any() else np.zeros(1)
    lo_i = int(np.floor(lo)) if lo is not None else int(r.min())
    hi_i = int(np.ceil(hi)) if hi is not None else int(r.max())
    cls = np.zeros(len(arr), dtype=np.int64)
    cls[~missing] = np.clip(np.round(arr[~missing]), lo_i, hi_i).astype(np.int64) - lo_i
    return cls, lo_i, hi_i, missing


class DS2Params(EmbeddingSourceParams):
    rating: str = Field(..., description="rating column: a score name (scores.<name>) or a column of the frame")
    lo: float | None = Field(4, description="lowest class after rounding (DS2: 4 on its 1–10 LLM scale); null: the observed min")
    hi: float | None = Field(9, description="highest class (DS2: 9); null: the observed max (for ratings on another scale)")
    missing: Literal["lowest", "drop"] = "lowest"
    text: TextView = Field("conversation", description="embedded when there is no `embedding` column")
    hoc_rounds: int = Field(50, ge=1)
    hoc_steps: int = Field(1501, ge=10)
    curation_epochs: int = Field(51, ge=1)
    k: int = Field(10, ge=3, description="neighbours for curation votes and the long-tail score (self included)")
    sample_size: int = Field(50_000, ge=10)
    confidence: float = Field(0.5, ge=0.0, le=1.0)
    budget: float | None = Field(None, gt=0, description="rows to select (≥ 1) or a fraction (< 1); None = score only")
    replicate_official_quirks: bool = Field(False, description="duplicate every embedding as the official code does")
    seed: int | None = None


class DS2CurateStage(GlobalStage):
    """DS2 curation (and optional selection) of a rating column. Reads the rating and embeddings."""

    name = "ds2_curate"
    Params = DS2Params
    params: DS2Params

    def reads(self) -> set[str]:
        name = self.params.rating
        return {name if name in BASE_COLUMNS else score(name)}

    def writes(self) -> set[str]:
        return {score(f"{self.params.rating}_curated"), score("longtail")}

    def _column(self, frame: pl.DataFrame) -> str:
        name = self.params.rating
        for col in (SCORE_PREFIX + name, name):
            if col in frame.columns:
                return col
        raise ValueError(f"ds2_curate: no rating column {name!r} (nor {SCORE_PREFIX + name!r}) in the rows")

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        from datacraft.vectors.embedders import ensure_embeddings

        p = self.params
        if frame.height == 0:
            return StageResult(kept=frame)
        col = self._column(frame)
        name = col[len(SCORE_PREFIX) :] if col.startswith(SCORE_PREFIX) else col
        dropped: list[pl.DataFrame] = []
        cls, lo, hi, missing = rating_classes(frame[col].cast(pl.Float64).to_list(), p.lo, p.hi)
        if p.missing == "drop" and missing.any():
            dropped.append(with_drop(frame.filter(pl.Series(missing)), self.label, "missing_rating", f"no {name}"))
            frame, cls = frame.filter(pl.Series(~missing)), cls[~missing]
        K = hi - lo + 1
        emb = ensure_embeddings(frame, self.context, p.text, p.kind, p.model)
        n = len(cls)
        seed = p.seed if p.seed is not None else self.context.seed
        e, c = (np.concatenate([emb, emb]), np.concatenate([cls, cls])) if p.replicate_official_quirks else (emb, cls)
        if n >= 4 and K > 1:
            T, prior = estimate_transition_matrix(e, c, K, rounds=p.hoc_rounds, sample_size=p.sample_size, steps=p.hoc_steps, seed=seed)
            curated, conf, _ = curate(e, c, T, prior, k=p.k, epochs=p.curation_epochs, sample_size=p.sample_size, confidence=p.confidence, seed=seed)
            curated, conf = curated[:n], conf[:n]
        else:  # too few rows or one class: nothing to estimate
            T, prior, curated, conf = np.eye(K), np.bincount(cls, minlength=K) / max(n, 1), cls.copy(), np.zeros(n)
        lt = long_tail_score(e, p.k)[:n]
        changed = curated != cls
        metas = [{"ds2": {"rated": int(cls[i] + lo), "curated": int(curated[i] + lo), "confidence": round(float(conf[i]), 4)}} if changed[i] else None for i in range(n)]
        out = update_meta(set_scores(frame, {f"{name}_curated": (curated + lo).astype(float).tolist(), "longtail": lt.tolist()}), metas)
        extras: dict[str, Any] = {"ds2": {
            "rating": name, "classes": list(range(lo, hi + 1)),
            "transition_matrix": np.round(T, 4).tolist(), "p_true": np.round(prior, 4).tolist(),
            "rated_counts": np.bincount(cls, minlength=K).tolist(), "curated_counts": np.bincount(curated, minlength=K).tolist(),
            "changed": int(changed.sum()),
        }}
        counters = {"ds2.changed": float(changed.sum()), "ds2.rows": float(n)}
        if p.budget is not None:
            budget = int(p.budget) if p.budget >= 1 else int(round(p.budget * n))
            keep = np.zeros(n, dtype=bool)
            keep[ds2_select(curated, lt, budget)] = True
            detail = pl.format("class={} longtail={}", pl.col(SCORE_PREFIX + f"{name}_curated"), pl.col(SCORE_PREFIX + "longtail"))
            dropped.append(with_drop(out.filter(pl.Series(~keep)), self.label, "ds2_not_selected", detail))
            out = out.filter(pl.Series(keep))
            extras["ds2"]["selected"] = int(keep.sum())
        return StageResult(kept=out, dropped=pl.concat(dropped, how="diagonal_relaxed") if dropped else None, counters=counters, extras=extras)

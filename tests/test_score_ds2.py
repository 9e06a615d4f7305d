"""DS2 score curation: HOC transition matrix on synthetic ratings with a known noise matrix, curation,
long-tail score, the selection rule; and the `diversity` stage on real rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from datacraft.core.rows import set_scores
from datacraft.io.readers import read_all
from datacraft.stages.registry import build_stage
from datacraft.stages.score.diversity import distance_to_nearest, long_tail_score, mean_knn_distance
from datacraft.stages.score.ds2 import (
    consensus_frequencies,
    curate,
    ds2_select,
    estimate_transition_matrix,
    fit_transition_matrix,
    noise_rates,
    rating_classes,
)

from .conftest import DATA

K = 6


def _true_noise() -> np.ndarray:
    """Raters confuse a score with its neighbours: 0.7 on the diagonal, the rest split ±1."""
    T = np.zeros((K, K))
    for i in range(K):
        T[i, i] = 0.7
        for j in (i - 1, i + 1):
            if 0 <= j < K:
                T[i, j] = 0.15
        T[i] /= T[i].sum()
    return T


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clusterable embeddings (5 clusters per true class) with ratings drawn through T."""
    rng = np.random.default_rng(0)
    n, d = 2400, 32
    centers = rng.normal(size=(K * 5, d))
    which = rng.integers(0, K * 5, n)
    true = np.repeat(np.arange(K), 5)[which]
    emb = centers[which] + 0.35 * rng.normal(size=(n, d))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    T = _true_noise()
    noisy = np.array([rng.choice(K, p=T[t]) for t in true])
    return emb, true, noisy, T


def test_hoc_recovers_exact_consensus() -> None:
    """Fed the exact model frequencies of a known (T, p), the fit returns T."""
    T = _true_noise()
    p = np.full(K, 1 / K)
    A = p[:, None] * T
    c1, c2, c3 = p @ T, A.T @ T, np.einsum("ij,ik,il->jkl", A, T, T)
    T_hat, p_hat = fit_transition_matrix(c1, c2, c3, steps=800)
    assert np.abs(T_hat - T).max() < 0.05
    assert np.abs(p_hat - p).max() < 0.03


def test_hoc_estimate_close_to_truth_and_curation_fixes_ratings(synthetic) -> None:
    emb, true, noisy, T = synthetic
    T_hat, p_hat = estimate_transition_matrix(emb, noisy, K, rounds=8, steps=800, seed=0)
    assert np.abs(T_hat - T).max() < 0.1
    assert np.abs(T_hat - T).mean() < 0.03
    assert np.abs(p_hat - np.bincount(true, minlength=K) / len(true)).max() < 0.05
    c1, _, _ = consensus_frequencies(emb, noisy, K, rounds=2)
    assert c1.sum() == pytest.approx(1.0)
    rho = noise_rates(T_hat, p_hat, noisy)
    assert ((rho >= 0.05) & (rho <= 0.95)).all() and rho.mean() == pytest.approx(0.3, abs=0.1)
    curated, conf, _ = curate(emb, noisy, T_hat, p_hat, epochs=11, seed=0)
    assert (noisy == true).mean() < 0.8
    assert (curated == true).mean() > (noisy == true).mean() + 0.1
    assert (conf[curated != noisy] >= 0.5).all()


def test_selection_rule_whole_classes_then_long_tail() -> None:
    classes = np.array([5, 5, 4, 4, 4, 3, 0])
    lt = np.array([0.1, 0.2, 0.9, 0.1, 0.5, 1.0, 1.0])
    assert ds2_select(classes, lt, 4).tolist() == [0, 1, 2, 4]  # both 5s, then the 4s by long-tail
    assert ds2_select(classes, lt, 2).tolist() == [0, 1]  # class 5 does not fit strictly: by long-tail, all of it
    assert ds2_select(classes, lt, 100).tolist() == list(range(7))


def test_rating_classes_clip_round_and_missing() -> None:
    cls, lo, hi, missing = rating_classes([1.0, 4.4, 9.6, None, 7.0], 4, 9)
    assert (lo, hi) == (4, 9)
    assert cls.tolist() == [0, 0, 5, 0, 3] and missing.tolist() == [False, False, False, True, False]


def test_long_tail_and_diversity_scores() -> None:
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(1, 16)) + 0.05 * rng.normal(size=(40, 16))
    outlier = rng.normal(size=(1, 16))
    emb = np.concatenate([dense, outlier]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    x = mean_knn_distance(emb, k=10)
    lt = long_tail_score(emb, k=10)
    assert lt[-1] == lt.max() and lt[-1] > lt[:-1].max()
    assert lt[0] == pytest.approx(round(float(np.tanh(x[0] / 2)), 4))
    d = distance_to_nearest(emb, emb[:5])
    assert np.allclose(d[:5], 0, atol=1e-5) and d[-1] > d[5:-1].max()


@pytest.fixture(scope="module")
def alpaca_with_embeddings() -> pl.DataFrame:
    from datacraft.core.rows import text_expr
    from datacraft.vectors.embedders import embedding_series, encode_sorted, load_embedder

    rows, _ = read_all(str(DATA / "alpaca_llamafactory_200.jsonl"))
    rows = rows.head(120)
    texts = rows.select(text_expr("conversation").alias("t"))["t"].to_list()
    return rows.with_columns(embedding_series(encode_sorted(load_embedder(), texts)))


def test_diversity_stage_on_real_rows(alpaca_with_embeddings: pl.DataFrame) -> None:
    frame = alpaca_with_embeddings
    dup = frame.head(1).with_columns(pl.lit("dup").alias("id"))
    frame = pl.concat([frame, dup], how="diagonal_relaxed")
    kept, dropped, stats = build_stage("diversity", {"k": 10}).run_local([frame])
    assert kept.height == frame.height and dropped.height == 0
    nn = dict(zip(kept["id"].to_list(), kept["scores.nn_distance"].to_list(), strict=True))
    assert nn["dup"] == pytest.approx(0.0, abs=1e-5)
    assert np.median(kept["scores.nn_distance"].to_numpy()) > 0.2
    assert np.allclose(kept["scores.longtail"], np.round(np.tanh(kept["scores.diversity"].to_numpy() / 2), 4))
    assert stats[0].extras["score_spread"][0]["dimension"] == "diversity"


def test_ds2_stage_curates_any_rating_column_and_selects(alpaca_with_embeddings: pl.DataFrame) -> None:
    frame = alpaca_with_embeddings
    rng = np.random.default_rng(0)
    frame = set_scores(frame, {"rater": rng.integers(1, 11, frame.height).astype(float)})
    params = {"rating": "rater", "lo": 4, "hi": 9, "hoc_rounds": 3, "hoc_steps": 200, "curation_epochs": 5, "budget": 30}
    kept, dropped, stats = build_stage("ds2_curate", params).run_local([frame])
    assert kept.height == 30 and kept.height + dropped.height == frame.height
    assert set(dropped["drop_reason"].to_list()) == {"ds2_not_selected"}
    cur = kept["scores.rater_curated"].to_numpy()
    assert ((cur >= 4) & (cur <= 9)).all()
    worst_kept = cur.min()
    assert (dropped["scores.rater_curated"].to_numpy() <= worst_kept).all()
    facts = stats[0].extras["ds2"]
    assert np.allclose(np.array(facts["transition_matrix"]).sum(axis=1), 1.0, atol=1e-3)
    assert sum(facts["curated_counts"]) == frame.height and facts["classes"] == [4, 5, 6, 7, 8, 9]


def test_ds2_drops_rows_without_a_rating(alpaca_with_embeddings: pl.DataFrame) -> None:
    frame = alpaca_with_embeddings
    ratings = [None if i % 10 == 0 else float(4 + i % 6) for i in range(frame.height)]
    frame = set_scores(frame, {"rater": ratings})
    params = {"rating": "rater", "lo": 4, "hi": 9, "hoc_rounds": 2, "hoc_steps": 100, "curation_epochs": 3, "missing": "drop"}
    kept, dropped, _ = build_stage("ds2_curate", params).run_local([frame])
    unrated = {frame["id"][i] for i in range(0, frame.height, 10)}
    missing = dropped.filter(pl.col("drop_reason") == "missing_rating")
    assert set(missing["id"]) == unrated and set(missing["drop_detail"]) == {"no rater"}
    assert kept.height + dropped.height == frame.height and not unrated & set(kept["id"])
    assert kept["scores.rater_curated"].is_not_null().all()

from __future__ import annotations

import numpy as np
import pytest

from datacraft.stages.select.submodular import dense_facility_location, greedy, similarity_graph
from datacraft.vectors.embedders import ensure_embeddings
from datacraft.vectors.knn import ivf_block_knn, knn, knn_graph, union_find_groups

from ._embed_helpers import clustered, rows


def test_exact_knn_matches_brute_force_and_excludes_self() -> None:
    x = clustered(400)
    s, i = knn(x, 5)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    expect = np.argsort(-full, axis=1)[:, :5]
    assert (i != np.arange(400)[:, None]).all()
    assert np.allclose(s, np.take_along_axis(full, expect, 1), atol=1e-5)


def test_ivf_recall_and_queries() -> None:
    x = clustered(6000, d=48, clusters=60)
    exact = knn(x, 10)[1]
    approx = knn(x, 10, method="ivf", nprobe=8)[1]  # the recall contract: 8 of ≈ 4·√N lists
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.99
    s, i = knn(x[:100], 3, queries=x[:7])
    assert i[:, 0].tolist() == list(range(7)) and np.allclose(s[:, 0], 1.0, atol=1e-5)


def test_graph_and_union_find() -> None:
    s = np.array([[0.9], [0.9], [0.2]], dtype=np.float32)
    i = np.array([[1], [0], [-1]])
    g = knn_graph(s, i, symmetric=True)
    assert g[0, 1] == g[1, 0] and np.isclose(g[0, 1], 0.9) and g[2, 2] == 1.0
    labels = union_find_groups(5, np.array([0, 1, 3]), np.array([1, 2, 4]))
    assert labels[0] == labels[1] == labels[2] != labels[3] == labels[4]


def test_pairs_above_widens_rows_in_dense_groups() -> None:
    """60 near copies with k=5: plain kNN links each row to 5 of them; widening finds all 1,770 pairs."""
    from datacraft.vectors.knn import pairs_above

    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    copies = centre + rng.normal(scale=0.05, size=(60, 64))
    far = rng.normal(size=(200, 64))
    x = np.vstack([copies, far]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a, b, sim = pairs_above(x, 5, 0.9, method="exact")
    pairs = {(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist(), strict=True)}
    assert pairs == {(i, j) for i in range(60) for j in range(i + 1, 60)}
    assert (sim >= 0.9).all() and (a != b).all()


def test_ivf_block_knn_neighbours() -> None:
    """The select stage's kNN above `exact_max`: true similarities, self-free, sorted, nearly the exact neighbours."""
    x = clustered(3000, d=48, clusters=60)
    s, i = ivf_block_knn(x, 10)
    assert (i != np.arange(3000)[:, None]).all() and (i >= 0).all() and (np.diff(s, axis=1) <= 0).all()
    assert np.allclose(s, np.einsum("nd,nkd->nk", x, x[i]), atol=1e-5)
    exact = knn(x, 10)[1]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, i, strict=True)]) >= 0.95


@pytest.mark.slow
def test_ivf_block_graph_objective_on_real_embeddings() -> None:
    """On 1,500 real instructions (static embedder) the facility-location greedy on the block-kNN graph
    keeps ≥ 0.995 of the dense greedy's objective (bench_select's goal; exact_max 500 forces that path)."""
    x = ensure_embeddings(rows("gpteacher_toolformer_dedupe_only_1500.jsonl"), None, "instruction", kind="static")
    n = x.shape[0]
    budget = n // 10
    dense = dense_facility_location(x, greedy(similarity_graph(x, n - 1), budget).indices)
    assert dense_facility_location(x, greedy(similarity_graph(x, 20, exact_max=500), budget).indices) >= 0.995 * dense


def test_ivf_block_knn_pads_small_inputs() -> None:
    x = clustered(6, d=8)
    s, i = ivf_block_knn(x, 9, n_clusters=2, nprobe=2)
    assert (i[:, :5] >= 0).all() and (i[:, 5:] == -1).all() and np.isinf(s[:, 5:]).all()


def test_ivf_block_knn_lanes_give_the_same_graph_on_any_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above BLOCK_LANES_MIN_ROWS the search runs in lanes on threads; the result depends on the lane
    count (fixed) only, not on how many threads the machine gives them."""
    import os

    import datacraft.vectors.knn as knn_module

    x = clustered(3000, d=64, clusters=60, seed=3)
    monkeypatch.setattr(knn_module, "BLOCK_LANES_MIN_ROWS", 1000)
    outs = []
    for cpus in (1, 2, 4):
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        outs.append(ivf_block_knn(x, 10))
    assert all(np.array_equal(outs[0][0], s) and np.array_equal(outs[0][1], i) for s, i in outs[1:])
    exact = knn(x, 10)[1]
    # and the lanes lose nothing: recall against exact neighbours as high as one lane's
    monkeypatch.setattr(knn_module, "BLOCK_LANES_MIN_ROWS", 10**9)
    one = ivf_block_knn(x, 10)
    recall = lambda got: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got[1], exact, strict=True)])  # noqa: E731
    assert recall(outs[0]) >= recall(one) - 0.01 and recall(outs[0]) >= 0.95

"""Task-level greedy of the smart mixture against its objectives written out by brute force, and the
empty selections of the row-level greedy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from datacraft.stages.select.mixture import task_greedy
from datacraft.stages.select.submodular import greedy, log_det_greedy


def _tasks(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(3, 8))
    x = np.concatenate([base, base[:2] + 0.3 * rng.normal(size=(2, 8)), rng.normal(size=(1, 8))])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _graph_cut(s: np.ndarray, chosen: list[int], lam: float) -> float:
    return float(s[:, chosen].sum() - lam * s[np.ix_(chosen, chosen)].sum())


def _facility_location(s: np.ndarray, chosen: list[int]) -> float:
    """submodlib's FacilityLocation: Σ_i max(0, max_{j∈S} s_ij) (a negative best similarity adds nothing)."""
    return float(np.maximum(s[:, chosen].max(axis=1), 0.0).sum()) if chosen else 0.0


@pytest.mark.parametrize("function", ["graph_cut", "facility_location"])
def test_task_greedy_gains_are_the_objective_increments(function: str) -> None:
    x = _tasks()
    s = x @ x.T
    chosen, gains = task_greedy(x, 4, function, lam=0.4)
    f = (lambda c: _graph_cut(s, c, 0.4)) if function == "graph_cut" else (lambda c: _facility_location(s, c))
    assert len(set(chosen)) == 4
    for step in range(4):
        assert gains[step] == pytest.approx(f(chosen[: step + 1]) - f(chosen[:step]), abs=1e-9)
        rest = [j for j in range(len(x)) if j not in chosen[:step]]
        best = max(f([*chosen[:step], j]) - f(chosen[:step]) for j in rest)
        assert gains[step] == pytest.approx(best, abs=1e-9)  # greedy: the largest increment


def test_task_log_det_uses_its_ridge_not_the_graph_cut_lambda() -> None:
    x = _tasks(1)
    # unit rows tie at the first step: give the reference the very floats task_greedy normalizes to
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    for lam, ridge in ((0.4, 1.0), (0.3, 0.3), (0.3, 1.0)):
        ref = log_det_greedy(xn, 3, lam=ridge)
        chosen, gains = task_greedy(x, 3, "log_det", lam=lam, ridge=ridge)
        assert chosen == ref.indices.tolist() and gains == pytest.approx(ref.gains.tolist(), abs=1e-12)
    assert task_greedy(x, 3, "log_det", ridge=0.3)[1] != pytest.approx(task_greedy(x, 3, "log_det")[1], abs=1e-6)


def test_empty_selections() -> None:
    g = sp.identity(4, format="csr")
    for sel in (greedy(g, 0), greedy(sp.csr_matrix((0, 0)), 3)):
        assert sel.indices.tolist() == [] and sel.gains.tolist() == [] and sel.indices.dtype == np.int64

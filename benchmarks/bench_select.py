"""Facility-location selection of 10% of N rows: datacraft (FAISS kNN graph + lazy greedy) vs apricot.

Starting point for both: the N×d float32 embeddings. Baseline: apricot `FacilityLocationSelection`
(metric cosine → cos² similarity, lazy greedy) — dense when the N×N matrix fits (N ≤ 20k), else on
a precomputed exact k-NN graph (faiss.knn; its build time is part of the baseline's time). Ours:
`similarity_graph` (exact ≤ 50k rows, IVF above) + numba lazy greedy. Quality: the dense objective
Σ_i max_{j∈S} cos²(i, j) over all rows, computed the same way for both.

    python benchmarks/bench_select.py --quick          # N=10k vs apricot dense
    python benchmarks/bench_select.py                  # N=50k vs apricot on an exact graph
    python benchmarks/bench_select.py --n 1000000 --no-baseline   # time and peak memory only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import blobs_on_sphere, emit, peak_rss_gb, timed  # noqa: E402

from datacraft.stages.select.submodular import dense_facility_location, greedy, similarity_graph  # noqa: E402
from datacraft.vectors.knn import knn_graph  # noqa: E402


def ours(x: np.ndarray, budget: int, k: int, exact_max: int) -> np.ndarray:
    graph = similarity_graph(x, k, similarity="cos2", exact_max=exact_max)
    return greedy(graph, budget).indices


def apricot_select(x: np.ndarray, budget: int, k: int, dense: bool) -> np.ndarray:
    from apricot import FacilityLocationSelection

    if dense:
        sel = FacilityLocationSelection(budget, metric="cosine", optimizer="lazy")
        sel.fit(x)
    else:
        import faiss

        # the standard exact tool: FAISS flat inner-product search (self included, then dropped)
        sims, idx = faiss.knn(x, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        graph = knn_graph(sims[:, 1:], idx[:, 1:], symmetric=True, self_loops=True, transform="cos2")
        sel = FacilityLocationSelection(budget, metric="precomputed", optimizer="lazy")
        sel.fit(graph)
    return np.asarray(sel.ranking)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=10k (apricot dense still fits)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3, help="runs of ours (median reported); apricot runs once")
    ap.add_argument("--exact-max", type=int, default=5_000, help="above this our graph uses IVF")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    n = args.n or (10_000 if args.quick else 50_000)
    x = blobs_on_sphere(n, args.d)
    budget = int(n * args.fraction)
    warm = x[: min(n, 2 * args.exact_max)]  # warm-up of both graph paths (numba compile, BLAS threads)
    ours(warm[:2000], 200, args.k, args.exact_max)
    ours(warm, len(warm) // 10, args.k, args.exact_max)
    sel, t_ours, spread = timed(lambda: ours(x, budget, args.k, args.exact_max), args.repeats)
    record: dict = {"benchmark": "select", "n": n, "d": args.d, "budget": budget, "k": args.k, "ours_s": t_ours, "ours_spread_s": spread, "peak_rss_gb": peak_rss_gb()}
    print(f"ours: {t_ours:.2f}s for {budget} of {n}; peak RSS {peak_rss_gb():.2f} GB", flush=True)
    if not args.no_baseline:
        dense = n <= 20_000
        base, t_base, _ = timed(lambda: apricot_select(x, budget, args.k, dense), 1)
        f_ours = dense_facility_location(x, sel)
        f_base = dense_facility_location(x, base)
        print(f"apricot ({'dense' if dense else 'exact k-NN graph'}): {t_base:.2f}s", flush=True)
        record.update(baseline="apricot dense" if dense else "apricot on exact kNN graph", apricot_s=t_base, speedup_vs_apricot=t_base / t_ours, objective_ratio=f_ours / f_base, objective_ours=f_ours, objective_apricot=f_base, peak_rss_gb=peak_rss_gb())
    emit(record)


if __name__ == "__main__":
    main()

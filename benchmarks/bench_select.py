"""Facility-location selection of 10% of N rows: datacraft (FAISS kNN graph + lazy greedy) vs apricot.

Starting point for both: the N×d float32 embeddings. Baseline: apricot `FacilityLocationSelection`
(metric cosine → cos² similarity, lazy greedy) — dense when the N×N matrix fits (N ≤ 20k), else on
a precomputed exact k-NN graph (faiss.knn; its build time is part of the baseline's time). Ours:
`similarity_graph` (exact ≤ 50k rows, IVF above) + numba lazy greedy. Quality: the dense objective
Σ_i max_{j∈S} cos²(i, j) over all rows, computed the same way for both.

Beside apricot: submodlib `FacilityLocationFunction` (dense, cosine, LazyGreedy) where its N×N
kernel fits. `--data static|minilm`: real text embeddings of distinct instructions of
../shared/data/sft (cached in /tmp after the first run) instead of synthetic blobs. Sides alternate
(A B C, A B C, …, 3 rounds); ratios are datacraft / peer time (median of the pairs) and CPU time.

    python benchmarks/bench_select.py --quick          # N=10k blobs vs apricot dense and submodlib
    python benchmarks/bench_select.py                  # N=50k blobs vs apricot on an exact graph
    python benchmarks/bench_select.py --data minilm --n 10000     # real MiniLM embeddings
    python benchmarks/bench_select.py --data static --n 50000
    python benchmarks/bench_select.py --n 1000000 --peers ""      # time and peak memory only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternate, blobs_on_sphere, emit, loadavg, peak_rss_gb, robust_record, version  # noqa: E402

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


def submodlib_select(x: np.ndarray, budget: int) -> np.ndarray:
    """submodlib FacilityLocationFunction, dense mode (its sparse mode builds the dense kernel first), lazy greedy."""
    from submodlib import FacilityLocationFunction

    obj = FacilityLocationFunction(n=x.shape[0], data=x, mode="dense", metric="cosine")
    picked = obj.maximize(budget=budget, optimizer="LazyGreedy", stopIfZeroGain=False, stopIfNegativeGain=False, verbose=False, show_progress=False)
    return np.array([i for i, _ in picked])


def real_embeddings(n: int, kind: str) -> np.ndarray:
    """Embeddings of n distinct real instructions of ../shared/data/sft (MiniLM or static), cached under /tmp."""
    cache = Path(f"/tmp/datacraft_bench_select_{kind}_{n}.npy")
    if cache.exists():
        return np.load(cache)
    from bench_semdedup import real_texts

    from datacraft.vectors.embedders import encode_sorted, load_embedder

    texts = real_texts(2 * n)[:n]
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} distinct real texts for --n {n}")
    model = load_embedder("static") if kind == "static" else load_embedder("sentence-transformers", batch_size=64)
    x = np.ascontiguousarray(encode_sorted(model, [t[:500] for t in texts]), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(cache, x)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=10k (apricot dense still fits)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--data", default="blobs", choices=["blobs", "static", "minilm"], help="clustered synthetic or real text embeddings")
    ap.add_argument("--d", type=int, default=384, help="dimension of the synthetic blobs")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds")
    ap.add_argument("--exact-max", type=int, default=5_000, help="above this our graph uses IVF")
    ap.add_argument("--peers", default="apricot,submodlib", help="comma list; submodlib runs where its dense kernel fits (N ≤ 20k)")
    args = ap.parse_args()
    n = args.n or (10_000 if args.quick else 50_000)
    x = blobs_on_sphere(n, args.d) if args.data == "blobs" else real_embeddings(n, args.data)
    budget = int(n * args.fraction)
    dense = n <= 20_000
    warm = x[: min(n, 2 * args.exact_max)]  # warm-up of both graph paths (numba compile, BLAS threads)
    ours(warm[:2000], 200, args.k, args.exact_max)
    sides = {"datacraft": lambda: ours(x, budget, args.k, args.exact_max)}
    warmups = {"datacraft": lambda: ours(warm, len(warm) // 10, args.k, args.exact_max)}
    versions, skipped = {"datacraft": version("datacraft")}, {}
    for name in [p for p in args.peers.split(",") if p]:
        dist = {"apricot": "apricot-select", "submodlib": "submodlib-py"}[name]
        if version(dist) is None:
            skipped[name] = f"{dist} not installed (pip install -e '.[bench]')"
        elif name == "submodlib" and not dense:
            skipped[name] = f"dense N×N kernel of {n} rows does not fit (its sparse mode builds it too)"
        else:
            versions[name] = version(dist)
            fn = (lambda v, b: apricot_select(v, b, args.k, v.shape[0] <= 20_000)) if name == "apricot" else submodlib_select
            sides[name] = lambda fn=fn: fn(x, budget)
            warmups[name] = lambda fn=fn: fn(x[:1000], 100)
    load0 = loadavg()
    trials = alternate(sides, args.pairs, warmups)
    record: dict = {"benchmark": "select", "data": args.data, "n": n, "d": int(x.shape[1]), "budget": budget, "k": args.k,
                    "apricot_mode": "dense" if dense else "exact k-NN graph", "versions": versions, "skipped": skipped}
    record.update(robust_record(trials, "datacraft", load0))
    f_ours = dense_facility_location(x, trials["datacraft"][-1].result)
    record["objective"] = {"datacraft": f_ours}
    for name, ts in trials.items():
        if name != "datacraft":
            f = dense_facility_location(x, ts[-1].result)
            record["objective"][name] = f
            record[f"objective_ratio_vs_{name}"] = round(f_ours / f, 5)
            print(f"objective (cos², dense) ours / {name}: {f_ours / f:.5f}", flush=True)
    record["peak_rss_gb"] = peak_rss_gb()
    emit(record)


if __name__ == "__main__":
    main()

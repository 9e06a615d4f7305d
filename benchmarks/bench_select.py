"""Facility-location selection of 10% of N rows: datacraft (the select stage's path) vs apricot and submodlib.

Starting point for all: the N×d float32 embeddings, unit norm. Ours: the `select` stage's defaults
(`similarity_graph`: exact kNN up to `exact_max` = 5k rows, above it `ivf_block_knn`; k = 20; cos²)
+ the numba lazy greedy. apricot `FacilityLocationSelection` (metric cosine → cos² similarity, lazy
greedy): dense when the N×N matrix fits (N ≤ 20k), else on a precomputed exact k-NN graph
(faiss.knn; its build time is part of the baseline's time). submodlib `FacilityLocationFunction`
(dense, metric cosine, LazyGreedy) where its N×N kernel fits (N ≤ 20k); it maximises Σ max cos, not
cos². Quality, the same yardstick for every side: the dense objective Σ_{i∈V} max_{j∈S} cos²(x_i, x_j)
over all N rows (`dense_facility_location`, blocked float32 GEMM), ours / peer.

`--data static|minilm` (default static): real text embeddings of the first N distinct instructions of
../shared/data/sft, cached in /tmp (a cache of more rows serves any smaller N: the rows are a prefix).
Timing: sides alternate (A B C, A B C, …, `--pairs` rounds) after untimed warm-ups (ours on the full
input); one datacraft trial repeats the selection until it has run ≥ `--min-seconds` (the repeats are
in the JSON) and counts the mean, so a short side is not one sample of the load. Ratios: datacraft /
peer, median of the paired wall ratios and CPU-time ratio.

    python benchmarks/bench_select.py --quick                      # N=5.5k static vs apricot (< 60 s)
    python benchmarks/bench_select.py --n 10000                    # static, apricot dense and submodlib
    python benchmarks/bench_select.py --data minilm --n 50000      # apricot on an exact k-NN graph
    python benchmarks/bench_select.py --data blobs --n 50000       # synthetic clustered vectors
    python benchmarks/bench_select.py --n 1000000 --data blobs --peers ""   # time and peak memory only
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Trial, alternate, blobs_on_sphere, emit, loadavg, peak_rss_gb, robust_record, version  # noqa: E402

from datacraft.stages.select.submodular import SelectParams, dense_facility_location, greedy, similarity_graph  # noqa: E402
from datacraft.vectors.knn import knn_graph  # noqa: E402

DEFAULTS = SelectParams()


def ours(x: np.ndarray, budget: int, k: int, exact_max: int) -> np.ndarray:
    """What the select stage does with its defaults (no weights): the kNN graph, then lazy greedy."""
    graph = similarity_graph(x, k, similarity=DEFAULTS.similarity, exact_max=exact_max, nprobe=DEFAULTS.nprobe)
    return greedy(graph, budget).indices


def repeated(fn: Callable[[], np.ndarray], times: int) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        for _ in range(times - 1):
            fn()
        return fn()
    return run


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
    """Embeddings of the first n distinct real instructions of ../shared/data/sft (MiniLM or static),
    cached under /tmp; a cache of m ≥ n rows serves n (its first n rows are the same texts)."""
    cache = Path(f"/tmp/datacraft_bench_select_{kind}_{n}.npy")
    larger = sorted((int(p.stem.rsplit("_", 1)[1]), p) for p in cache.parent.glob(f"datacraft_bench_select_{kind}_*.npy"))
    for m, path in larger:
        if m >= n:
            return np.load(path, mmap_mode="r")[:n].copy()
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
    ap.add_argument("--quick", action="store_true", help="N=5.5k static embeddings vs apricot dense (< 60 s)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--data", default="static", choices=["blobs", "static", "minilm"], help="real text embeddings or clustered synthetic ones")
    ap.add_argument("--d", type=int, default=384, help="dimension of the synthetic blobs")
    ap.add_argument("--k", type=int, default=DEFAULTS.k)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds")
    ap.add_argument("--min-seconds", type=float, default=None, help="one datacraft trial repeats the selection this long (default 2; --quick 0.5)")
    ap.add_argument("--exact-max", type=int, default=DEFAULTS.exact_max, help="above this our graph uses IVF blocks")
    ap.add_argument("--peers", default=None, help="comma list (default apricot,submodlib; --quick apricot); submodlib runs where its dense kernel fits (N ≤ 20k)")
    args = ap.parse_args()
    n = args.n or (5_500 if args.quick else 50_000)
    peers = args.peers if args.peers is not None else ("apricot" if args.quick else "apricot,submodlib")
    min_seconds = args.min_seconds or (0.5 if args.quick else 2.0)
    x = blobs_on_sphere(n, args.d) if args.data == "blobs" else real_embeddings(n, args.data)
    budget = int(n * args.fraction)
    dense = n <= 20_000
    ours(x[:2000], 200, args.k, args.exact_max)  # numba compile, BLAS threads
    one = lambda: ours(x, budget, args.k, args.exact_max)  # noqa: E731
    one()
    t0 = time.perf_counter()
    one()
    repeats = max(1, min(50, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-3))))
    sides = {"datacraft": repeated(one, repeats)}
    warmups = {"datacraft": one}
    versions, skipped = {"datacraft": version("datacraft-curate")}, {}
    for name in [p for p in peers.split(",") if p]:
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
    trials["datacraft"] = [Trial(t.wall / repeats, t.cpu / repeats, t.peak_gb, t.result) for t in trials["datacraft"]]
    record: dict = {"benchmark": "select", "data": args.data, "n": n, "d": int(x.shape[1]), "budget": budget, "k": args.k,
                    "exact_max": args.exact_max, "datacraft_repeats": repeats,
                    "apricot_mode": "dense" if dense else "exact k-NN graph", "versions": versions, "skipped": skipped}
    record.update(robust_record(trials, "datacraft", load0))
    f_ours = dense_facility_location(x, trials["datacraft"][-1].result)
    record["objective"] = {"datacraft": f_ours}
    for name, ts in trials.items():
        if name != "datacraft":
            f = dense_facility_location(x, ts[-1].result)
            record["objective"][name] = f
            record[f"objective_ratio_vs_{name}"] = round(f_ours / f, 5)
            print(f"objective (Σ max cos², dense, all {n} rows) ours / {name}: {f_ours / f:.5f}", flush=True)
    record["peak_rss_gb"] = peak_rss_gb()
    emit(record)


if __name__ == "__main__":
    main()

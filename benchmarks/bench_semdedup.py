"""Semantic dedup of N embeddings (default 1M): time, peak memory, and pair recall vs exact all-pairs.

Embeddings: real rows of ../shared/data embedded with the static embedder, replicated with noise —
~15% of rows are near copies of a real row (noise norm 0.1–0.35, cos ≈ 0.94–0.99), the rest far
variants (noise norm 0.8–1.3). Ours: `pairs_above` (IVF kNN above 50k rows, k=10, widened up to --max-k (64) for rows
whose k-th neighbour is still ≥ τ) → edges with cos ≥ τ →
union-find groups → drop table (the `semantic_dedup` core). Recall: on a random sample, every pair
with cos ≥ τ found by exact all-pairs (blocked GEMM) counts as found when both rows end in the
same duplicate group.

    python benchmarks/bench_semdedup.py --quick      # N=100k, 20k sample
    python benchmarks/bench_semdedup.py              # N=1M, 100k sample
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, peak_rss_gb  # noqa: E402

from datacraft.stages.dedup.groups import resolve  # noqa: E402
from datacraft.stages.dedup.semantic import threshold_edges  # noqa: E402
from datacraft.vectors.embedders import encode_sorted, load_embedder  # noqa: E402
from datacraft.vectors.knn import union_find_groups  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sft"


def real_texts(limit: int) -> list[str]:
    texts: list[str] = []
    for path in sorted(glob.glob(str(DATA / "*.jsonl"))):
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            t = r.get("instruction") or r.get("prompt") or ""
            if t:
                texts.append(t[:1000])
            if len(texts) >= limit:
                return list(dict.fromkeys(texts))
    return list(dict.fromkeys(texts))


def synthetic(n: int, real: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = real.shape[1]
    parent = rng.integers(0, real.shape[0], n)
    near = rng.random(n) < 0.15
    scale = np.where(near, rng.uniform(0.1, 0.35, n), rng.uniform(0.8, 1.3, n)).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        e = slice(s, min(n, s + 100_000))
        noise = rng.normal(size=(e.stop - s, d)).astype(np.float32) / np.sqrt(d)
        x[e] = real[parent[e]] + noise * scale[e, None]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def exact_pairs(x: np.ndarray, tau: float, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    a, b = [], []
    for s in range(0, x.shape[0], block):
        sims = x[s : s + block] @ x.T
        r, c = np.nonzero(sims >= tau)
        keep = c > r + s
        a.append(r[keep] + s)
        b.append(c[keep])
    return np.concatenate(a), np.concatenate(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--sample", type=int, default=None)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=3)
    ap.add_argument("--max-k", type=int, default=64, help="widening cap for rows in dense duplicate groups")
    args = ap.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)
    sample = args.sample or (20_000 if args.quick else 100_000)
    texts = real_texts(20_000 if args.quick else 60_000)
    real = encode_sorted(load_embedder("static"), texts)
    x = synthetic(n, real)
    print(f"{n} vectors from {len(texts)} real texts (d={x.shape[1]})", flush=True)
    ids = [f"r{i}" for i in range(n)]
    t0 = time.perf_counter()
    edges = threshold_edges(ids, x, args.k, args.threshold, max_k=args.max_k, nprobe=args.nprobe)  # the stage's core: kNN widened in dense groups
    t_knn = time.perf_counter() - t0
    nodes = pl.DataFrame({"id": ids, "score": [None] * n, "length": [1] * n, "text": [""] * n}, schema={"id": pl.Utf8, "score": pl.Float64, "length": pl.Int64, "text": pl.Utf8})
    drops, extras = resolve(edges, nodes, args.threshold)
    seconds = time.perf_counter() - t0
    print(f"ours: {seconds:.1f}s (knn {t_knn:.1f}s), {edges.height} edges, {drops.height} dropped; peak RSS {peak_rss_gb():.2f} GB", flush=True)
    # recall on a sample vs exact all-pairs
    rng = np.random.default_rng(1)
    pick = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    t1 = time.perf_counter()
    a, b = exact_pairs(x[pick], args.threshold)
    t_exact = time.perf_counter() - t1
    ea = edges["a"].str.slice(1).cast(pl.Int64).to_numpy()
    eb = edges["b"].str.slice(1).cast(pl.Int64).to_numpy()
    labels = union_find_groups(n, ea, eb)
    found = labels[pick[a]] == labels[pick[b]]
    recall = float(found.mean()) if len(a) else 1.0
    print(f"exact all-pairs on {len(pick)} rows: {t_exact:.1f}s, {len(a)} pairs; recall {recall:.4f}", flush=True)
    emit({"benchmark": "semdedup", "n": n, "d": int(x.shape[1]), "threshold": args.threshold, "k": args.k, "max_k": args.max_k, "seconds": seconds, "knn_seconds": t_knn, "edges": int(edges.height), "dropped": int(drops.height), "recall_vs_exact": recall, "sample": int(len(pick)), "exact_pairs": int(len(a)), "exact_sample_seconds": t_exact, "peak_rss_gb": peak_rss_gb(), "groups": extras.get("groups")})


if __name__ == "__main__":
    main()

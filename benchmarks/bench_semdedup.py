"""Semantic dedup of N embeddings (default 1M): time, peak memory, and pair recall vs exact all-pairs.

Embeddings: real rows of ../shared/data embedded with the static embedder, replicated with noise —
~15% of rows are near copies of a real row (noise norm 0.1–0.35, cos ≈ 0.94–0.99), the rest far
variants (noise norm 0.8–1.3). Ours: `threshold_edges` with the stage's defaults (FAISS IndexFlatIP up
to 5k rows, IndexIVFFlat nlist 4·√N / nprobe 8 above, searched list by list as BLAS blocks above 30k;
k=10, widened up to --max-k (64) for rows whose k-th neighbour is still ≥ τ) → edges with cos ≥ τ →
union-find groups → drop table (the `semantic_dedup` core). Recall: on a random sample, every pair
with cos ≥ τ found by exact all-pairs (blocked GEMM) counts as found when both rows end in the
same duplicate group.

Peers on the same vectors, alternating rounds (A B C D, …): semhash (`from_embeddings` with the
same static model, vicinity/usearch ANN, `self_deduplicate`), FAISS IndexIVFFlat + range_search and
FAISS IndexHNSWFlat + kNN, each followed by the same union-find. Ratios are datacraft / peer time
(median of the paired rounds) with CPU-time ratios; recall of every side on the same sample.

    python benchmarks/bench_semdedup.py --quick      # N=20k, 10k sample
    python benchmarks/bench_semdedup.py              # N=100k, exact on all 100k
    python benchmarks/bench_semdedup.py --n 1000000 --sample 100000 --peers ""   # datacraft alone at 1M
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_semdedup.py --quick   # current numpy kernels
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternate, emit, installed_peers, loadavg, peak_rss_gb, robust_record, version  # noqa: E402

from datacraft.stages.dedup.semantic import SemanticDedupParams, threshold_edges  # noqa: E402
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


def labels_ours(x: np.ndarray, ids: list[str], args: argparse.Namespace) -> np.ndarray:
    """datacraft's path: `threshold_edges` (the stage's core: kNN widened in dense groups) → union-find groups."""
    edges = threshold_edges(ids, x, args.k, args.threshold, max_k=args.max_k, nprobe=args.nprobe, exact_max=args.exact_max)
    ea = edges["a"].str.slice(1).cast(pl.Int64).to_numpy()
    eb = edges["b"].str.slice(1).cast(pl.Int64).to_numpy()
    return union_find_groups(x.shape[0], ea, eb)


def labels_faiss_ivf(x: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """FAISS IndexIVFFlat (inner product, nlist = 4·√N as its guidelines, nprobe 8) + range_search ≥ τ."""
    import faiss

    n, d = x.shape
    nlist = max(1, int(4 * np.sqrt(n)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(x[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)])
    index.add(x)
    index.nprobe = args.faiss_nprobe
    a, b = [], []
    for s in range(0, n, 20_000):
        lims, _, idx = index.range_search(x[s : s + 20_000], args.threshold)
        rows = np.repeat(np.arange(s, s + len(lims) - 1), np.diff(lims).astype(np.int64))
        keep = idx != rows
        a.append(rows[keep])
        b.append(idx[keep])
    return union_find_groups(n, np.concatenate(a), np.concatenate(b))


def labels_faiss_hnsw(x: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """FAISS IndexHNSWFlat (M 32, efSearch 64, inner product), k = --hnsw-k neighbours ≥ τ (HNSW has no range search)."""
    import faiss

    n, d = x.shape
    index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    index.hnsw.efSearch = 64
    sims, idx = index.search(x, args.hnsw_k + 1)
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    keep = (sims >= args.threshold) & (idx >= 0) & (idx != rows)
    return union_find_groups(n, rows[keep], idx[keep])


def labels_semhash(x: np.ndarray, ids: list[str], embedder: object, args: argparse.Namespace) -> np.ndarray:
    """semhash: `SemHash.from_embeddings` (vicinity + usearch, its default ANN) → `self_deduplicate(τ)`."""
    from semhash import SemHash

    result = SemHash.from_embeddings(x, ids, model=embedder).self_deduplicate(threshold=args.threshold)
    pos = {r: i for i, r in enumerate(ids)}
    a = np.array([pos[d.record] for d in result.filtered], dtype=np.int64)
    b = np.array([pos[d.duplicate_of] for d in result.filtered], dtype=np.int64)
    return union_find_groups(len(ids), a, b)


def recall(labels: np.ndarray, pick: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Share of the exact ≥ τ pairs on the sample whose two rows end in one duplicate group."""
    return float((labels[pick[a]] == labels[pick[b]]).mean()) if len(a) else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--sample", type=int, default=None)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=SemanticDedupParams().nprobe)
    ap.add_argument("--exact-max", type=int, default=SemanticDedupParams().exact_max, help="exact search up to this many rows, IVF above")
    ap.add_argument("--max-k", type=int, default=64, help="widening cap for rows in dense duplicate groups")
    ap.add_argument("--faiss-nprobe", type=int, default=8)
    ap.add_argument("--hnsw-k", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds")
    ap.add_argument("--peers", default="semhash,faiss_ivf,faiss_hnsw")
    args = ap.parse_args()
    n = args.n or (20_000 if args.quick else 100_000)
    sample = args.sample or (10_000 if args.quick else 100_000)
    texts = real_texts(20_000 if args.quick else 60_000)
    embedder = load_embedder("static")
    real = encode_sorted(embedder, texts)
    x = synthetic(n, real)
    print(f"{n} vectors from {len(texts)} real texts (d={x.shape[1]}); OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}", flush=True)
    ids = [f"r{i}" for i in range(n)]
    w = min(n, 5_000)
    sides = {"datacraft": lambda: labels_ours(x, ids, args)}
    warmups = {"datacraft": lambda: labels_ours(x[:w], ids[:w], args)}
    peers = {"semhash": (lambda v, i: labels_semhash(v, i, embedder.model if hasattr(embedder, "model") else embedder, args), "semhash"),
             "faiss_ivf": (lambda v, i: labels_faiss_ivf(v, args), "faiss-cpu"), "faiss_hnsw": (lambda v, i: labels_faiss_hnsw(v, args), "faiss-cpu")}
    versions, skipped = {"datacraft": version("datacraft")}, {}
    for name in installed_peers(args.peers, {k: v[1] for k, v in peers.items()}, versions, skipped):
        fn = peers[name][0]
        sides[name] = lambda fn=fn: fn(x, ids)
        warmups[name] = lambda fn=fn: fn(x[:w], ids[:w])
    load0 = loadavg()
    trials = alternate(sides, args.pairs, warmups)
    # recall on a sample vs exact all-pairs
    pick = np.sort(np.random.default_rng(1).choice(n, size=min(sample, n), replace=False))
    t1 = time.perf_counter()
    a, b = exact_pairs(x[pick], args.threshold)
    t_exact = time.perf_counter() - t1
    recalls = {name: recall(ts[-1].result, pick, a, b) for name, ts in trials.items()}
    groups = {name: int(len(np.unique(ts[-1].result))) for name, ts in trials.items()}
    for name in trials:
        print(f"{name:>11s}: recall {recalls[name]:.4f}, {n - groups[name]} rows in duplicate groups beyond the first", flush=True)
    print(f"exact all-pairs on {len(pick)} rows: {t_exact:.1f}s, {len(a)} pairs", flush=True)
    record = {"benchmark": "semdedup", "n": n, "d": int(x.shape[1]), "threshold": args.threshold, "k": args.k, "max_k": args.max_k, "nprobe": args.nprobe, "exact_max": args.exact_max,
              "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "versions": versions, "skipped": skipped,
              "recall_vs_exact": recalls, "dropped": {k: n - v for k, v in groups.items()}, "sample": int(len(pick)),
              "exact_pairs": int(len(a)), "exact_sample_seconds": t_exact, "peak_rss_gb": peak_rss_gb()}
    record.update(robust_record(trials, "datacraft", load0))
    emit(record)


if __name__ == "__main__":
    main()

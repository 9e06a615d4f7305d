"""FAISS k-nearest-neighbour search and the sparse similarity graphs built from it.

Vectors are L2-normalised float32, so inner product = cosine similarity.

* `knn(x, k)` / `pairs_above` — exact (FAISS IndexFlatIP) up to `exact_max` rows; above it,
  `method="ivf"`: FAISS IndexIVFFlat built as FAISS's guidelines say (nlist ≈ 4·√N lists, k-means
  trained with a fixed seed on a seeded sample of 39 rows per list, 5 iterations), every query
  probing its `nprobe` (8) nearest lists. Up to `IVF_GEMM_MIN` rows FAISS scans the lists; above it
  the same lists and probes are searched list by list as exact BLAS blocks (`ivf_gemm_search`: the
  queries of a list × its members as one GEMM), which the benchmark measured ~2× faster there —
  both give the same neighbours. Recall contract: a true neighbour is missed only when it lies in
  none of the query's `nprobe` nearest lists; nprobe=8 gives recall@10 ≥ 0.999 on clustered data
  (tests/test_select_knn.py) and pair recall ≥ 0.99 for duplicates with cos ≥ 0.9 on sentence
  embeddings (benchmarks/bench_semdedup.py: 1.000 at 20k and 100k). `method="hnsw"` uses
  faiss.IndexHNSWFlat (M=32, efSearch=max(64, 2k)) instead. Memory: the vectors (twice: the index
  holds a copy) + O(N·k) results.
* `knn_graph` — the (n × n) scipy CSR graph of those neighbours (self loops optional).
* `kmeans` / `assign` — spherical k-means centroids and the top-m centroids of each row (numpy).
* `union_find_groups` — connected components of an edge list (transitive duplicate groups).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import scipy.sparse as sp
from numba import njit
from scipy.sparse.csgraph import connected_components
from threadpoolctl import threadpool_limits

IP = faiss.METRIC_INNER_PRODUCT


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def exact_search(queries: np.ndarray, base: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of each query against `base`, sorted descending (k clipped to
    len(base)). Blocked GEMM + argpartition, for the small blocks of k-means assignment and of
    `ivf_gemm_search` (whole-corpus exact search is FAISS's IndexFlatIP: its top-k beats argpartition)."""
    q, b = _f32(queries), _f32(base)
    k = min(k, b.shape[0])
    if k <= 0 or q.shape[0] == 0:
        return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
    out_s = np.empty((q.shape[0], k), np.float32)
    out_i = np.empty((q.shape[0], k), np.int64)
    for start in range(0, q.shape[0], block):
        sims = q[start : start + block] @ b.T
        if k == 1:
            best = sims.argmax(axis=1)[:, None]
            out_s[start : start + block] = np.take_along_axis(sims, best, 1)
            out_i[start : start + block] = best
            continue
        if k < sims.shape[1]:
            top = np.argpartition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        else:
            top = np.broadcast_to(np.arange(sims.shape[1]), sims.shape).copy()
        top_s = np.take_along_axis(sims, top, 1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        out_s[start : start + block] = np.take_along_axis(top_s, order, 1)
        out_i[start : start + block] = np.take_along_axis(top, order, 1)
    return out_s, out_i


def kmeans(x: np.ndarray, n_clusters: int, *, sample: int = 200_000, niter: int = 12, seed: int = 0) -> np.ndarray:
    """Spherical k-means centroids (n_clusters, d), trained on at most `sample` rows (Lloyd's
    iterations with GEMM assignment; empty clusters are re-seeded from random rows)."""
    x = _f32(x)
    rng = np.random.default_rng(seed)
    n_clusters = max(1, min(n_clusters, x.shape[0]))
    if x.shape[0] > sample:
        x = x[rng.choice(x.shape[0], sample, replace=False)]
    n = x.shape[0]
    centroids = x[rng.choice(n, n_clusters, replace=False)].copy()
    for _ in range(niter):
        _, nearest = exact_search(x, centroids, 1)
        labels = nearest[:, 0]
        members = sp.csr_matrix((np.ones(n, np.float32), (labels, np.arange(n))), shape=(n_clusters, n))
        sums = np.asarray(members @ x, dtype=np.float32)
        empty = np.asarray(members.sum(axis=1)).ravel() == 0
        if empty.any():
            sums[empty] = x[rng.choice(n, int(empty.sum()), replace=False)]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = sums / np.maximum(norms, 1e-12)
    return _f32(centroids)


def assign(x: np.ndarray, centroids: np.ndarray, top: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids) of each row's `top` nearest centroids, nearest first."""
    return exact_search(x, centroids, top)


#: FAISS IVF training: rows per list (FAISS's own minimum, 39; its guidelines say 30–256) and Lloyd
#: iterations (5: lists coherent enough for the recall contract, training stays a small share)
TRAIN_PER_LIST, TRAIN_ITER = 39, 5


def _merge_topk(s_old: np.ndarray, i_old: np.ndarray, s_new: np.ndarray, i_new: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([s_old, s_new], axis=1)
    i = np.concatenate([i_old, i_new], axis=1)
    if s.shape[1] > k:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(s, part, 1)
        i = np.take_along_axis(i, part, 1)
    return s, i


def n_lists(n: int) -> int:
    """FAISS's guideline for IndexIVFFlat: about 4·√N inverted lists."""
    return max(1, int(round(4 * math.sqrt(n))))


def ivf_index(base: np.ndarray, *, nprobe: int = 8, n_clusters: int | None = None, seed: int = 0) -> faiss.IndexIVFFlat:
    """IndexIVFFlat (inner product) over `base`: k-means lists trained with `seed` on a sample drawn by
    a seeded generator from the rows in their given order (so the caller's row order fixes the index)."""
    n, d = base.shape
    nlist = min(n, n_clusters or n_lists(n))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, IP)
    index.cp.seed, index.cp.niter = seed, TRAIN_ITER
    index.cp.min_points_per_centroid = 1  # a small input trains on what it has, without FAISS's warning
    index.cp.max_points_per_centroid = TRAIN_PER_LIST
    take = min(n, TRAIN_PER_LIST * nlist)
    index.train(base if take == n else base[np.sort(np.random.default_rng(seed).choice(n, take, replace=False))])
    index.add(base)
    index.nprobe = min(nprobe, nlist)
    return index


def list_members(index: faiss.IndexIVF) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): the row ids of inverted list c are order[bounds[c]:bounds[c + 1]]."""
    sizes = np.array([index.invlists.list_size(c) for c in range(index.nlist)], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    order = np.empty(bounds[-1], np.int64)
    for c in np.nonzero(sizes)[0]:
        order[bounds[c] : bounds[c + 1]] = faiss.rev_swig_ptr(index.invlists.get_ids(int(c)), int(sizes[c]))
    return order, bounds


def ivf_gemm_search(index: faiss.IndexIVF, base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The IVF index's search (same lists, same `nprobe` probes, exact products within) done list by list:
    the queries probing a list against its members as one BLAS block instead of FAISS's per-query scan."""
    q = _f32(queries)
    k = min(k, index.ntotal)
    order, bounds = list_members(index)
    _, probes = index.quantizer.search(q, index.nprobe)
    flat_q = np.repeat(np.arange(q.shape[0]), probes.shape[1])
    flat_c = probes.ravel()
    valid = flat_c >= 0
    flat_q, flat_c = flat_q[valid], flat_c[valid]
    qorder = np.argsort(flat_c, kind="stable")
    qbounds = np.searchsorted(flat_c[qorder], np.arange(index.nlist + 1))
    best_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    best_i = np.full((q.shape[0], k), -1, dtype=np.int64)
    for c in range(index.nlist):
        members = order[bounds[c] : bounds[c + 1]]
        qs = flat_q[qorder[qbounds[c] : qbounds[c + 1]]]
        if members.size == 0 or qs.size == 0:
            continue
        s, i = exact_search(q[qs], base[members], k)
        best_s[qs], best_i[qs] = _merge_topk(best_s[qs], best_i[qs], s, members[i], k)
    return best_s, best_i


def faiss_index(base: np.ndarray, method: str, *, nprobe: int = 8, n_clusters: int | None = None, seed: int = 0) -> faiss.Index:
    """The FAISS index `method` names over `base`: exact IndexFlatIP, IndexIVFFlat or IndexHNSWFlat."""
    if method == "exact":
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        return index
    if method == "ivf":
        return ivf_index(base, nprobe=nprobe, n_clusters=n_clusters, seed=seed)
    if method == "hnsw":
        index = faiss.IndexHNSWFlat(base.shape[1], 32, IP)
        index.add(base)
        return index
    raise ValueError(f"unknown knn method {method!r}; expected auto, exact, ivf or hnsw")


#: above this many indexed rows the IVF index is searched list by list as BLAS blocks (`ivf_gemm_search`),
#: below it by FAISS's own per-query scan: the measured crossover (same lists, same probes, same neighbours)
IVF_GEMM_MIN = 30_000


def index_search(index: faiss.Index, base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (similarities, ids) of each query in `index` (built over `base`), k clipped to its size."""
    k = min(k, index.ntotal)
    if isinstance(index, faiss.IndexIVFFlat) and index.ntotal > IVF_GEMM_MIN:
        return ivf_gemm_search(index, base, queries, k)
    if isinstance(index, faiss.IndexHNSWFlat):
        index.hnsw.efSearch = max(64, 2 * k)
    return index.search(_f32(queries), k)


def _sort_desc(s: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    o = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, o, 1), np.take_along_axis(i, o, 1)


def _drop_self(s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = i.shape[0]
    is_self = i == np.arange(n)[:, None]
    none = ~is_self.any(axis=1)
    is_self[none, -1] = True  # self not found (ties / approximate search): drop the farthest instead
    twice = is_self.sum(axis=1) > 1
    if twice.any():  # cannot happen with unique ids; keep the first mark only
        first = np.argmax(is_self, axis=1)
        is_self[:] = False
        is_self[np.arange(n), first] = True
    keep = ~is_self
    w = i.shape[1] - 1
    return s[keep].reshape(n, w)[:, :k], i[keep].reshape(n, w)[:, :k]


def choose_method(n: int, method: str, exact_max: int) -> str:
    return ("exact" if n <= exact_max else "ivf") if method == "auto" else method


def neighbours(index: faiss.Index, base: np.ndarray, queries: np.ndarray, k: int, *, self_query: bool) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices) (n_queries, k) sorted descending; with `self_query` (queries = the indexed
    rows) the row itself is excluded. Missing neighbours are index -1 with similarity -inf."""
    kk = k + 1 if self_query else k
    s, i = index_search(index, base, queries, kk)
    s, i = _sort_desc(s, i)
    if s.shape[1] < kk:  # fewer rows than k: pad
        pad = kk - s.shape[1]
        s = np.concatenate([s, np.full((s.shape[0], pad), -np.inf, np.float32)], axis=1)
        i = np.concatenate([i, np.full((i.shape[0], pad), -1, np.int64)], axis=1)
    i = np.where(i < 0, -1, i)
    s = np.where(i < 0, -np.inf, s).astype(np.float32)
    if self_query:
        s, i = _drop_self(s, i, k)
    return s, i


def knn(
    embeddings: np.ndarray,
    k: int,
    *,
    exact_max: int = 50_000,
    nprobe: int = 8,
    queries: np.ndarray | None = None,
    method: str = "auto",
    n_clusters: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (n_queries, k), sorted by similarity descending.

    With `queries=None` the rows query themselves and self is excluded. Exact (IndexFlatIP) under
    `exact_max` rows (or `method="exact"`), else `method` "ivf" (default above the threshold) or "hnsw".
    Missing neighbours (k ≥ n) are index -1 with similarity -inf.
    """
    base = _f32(embeddings)
    n = base.shape[0]
    if n == 0:
        m = n if queries is None else queries.shape[0]
        return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
    index = faiss_index(base, choose_method(n, method, exact_max), nprobe=nprobe, n_clusters=n_clusters, seed=seed)
    return neighbours(index, base, base if queries is None else queries, k, self_query=queries is None)


def pairs_above(
    embeddings: np.ndarray,
    k: int,
    threshold: float,
    *,
    max_k: int = 256,
    exact_max: int = 50_000,
    method: str = "auto",
    **index_kwargs: object,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (a, b, sim) pairs with sim ≥ threshold among each row's neighbours, a ≠ b.

    Starts from the k nearest neighbours; a row whose k-th neighbour is still ≥ threshold may have
    more duplicates than k (a dense group of near copies), so only those rows are searched again with
    4× the width, up to `max_k`, in the same index. That keeps range-search semantics — every row
    links to all its duplicates, so two dense groups that touch are joined — at the cost of kNN for
    most rows, and bounds the pairs of a group of m copies by m·max_k (a range search: m²)."""
    x = _f32(embeddings)
    n = x.shape[0]
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    index = faiss_index(x, choose_method(n, method, exact_max), **index_kwargs)  # type: ignore[arg-type]
    sims, idx = neighbours(index, x, x, min(k, n - 1), self_query=True)
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    keep = (sims >= threshold) & (idx >= 0)
    a, b, s = [rows[keep]], [idx[keep]], [sims[keep]]
    width, todo = idx.shape[1], np.nonzero(keep[:, -1])[0]
    while todo.size and width < min(max_k, n - 1):
        width = min(max_k, n - 1, width * 4)
        s2, i2 = neighbours(index, x, x[todo], width + 1, self_query=False)
        r2 = np.broadcast_to(todo[:, None], i2.shape)
        keep2 = (s2 >= threshold) & (i2 >= 0) & (i2 != r2)
        a.append(r2[keep2])
        b.append(i2[keep2])
        s.append(s2[keep2])
        todo = todo[keep2.sum(axis=1) >= width]
    return np.concatenate(a), np.concatenate(b), np.concatenate(s)


@njit(cache=True, nogil=True)
def _push_topk(sims: np.ndarray, rows: np.ndarray, cols: np.ndarray, best_s: np.ndarray, best_i: np.ndarray) -> None:
    """Merge a block of similarities (row ids `rows` × column ids `cols`) into every row's top-k,
    kept as a min-heap (root = the k-th best so far); a row never takes itself."""
    k = best_s.shape[1]
    for a in range(sims.shape[0]):
        r = rows[a]
        hs = best_s[r]
        hi = best_i[r]
        for b in range(sims.shape[1]):
            s = sims[a, b]
            if s <= hs[0] or cols[b] == r:
                continue
            p = 0
            while True:  # replace the root, sift down
                child = 2 * p + 1
                if child >= k:
                    break
                if child + 1 < k and hs[child + 1] < hs[child]:
                    child += 1
                if hs[child] >= s:
                    break
                hs[p] = hs[child]
                hi[p] = hi[child]
                p = child
            hs[p] = s
            hi[p] = cols[b]


#: `ivf_block_knn`'s coarse k-means: training rows per list and Lloyd iterations (cheaper than `ivf_index`'s
#: 39 × 5: the graph of a selection needs good neighbours, not FAISS's recall contract; measured in bench_select)
BLOCK_TRAIN_PER_LIST, BLOCK_TRAIN_ITER = 16, 3
#: up to this many rows `ivf_block_knn` runs on one thread throughout, above it FAISS's steps keep their threads
BLOCK_ONE_THREAD_MAX = 200_000
#: lanes of the list-by-list search from this many rows: each on its own thread (single-threaded BLAS)
#: where the machine has the cores
BLOCK_LANES, BLOCK_LANES_MIN_ROWS = 2, 20_000


def ivf_block_knn(x: np.ndarray, k: int, *, nprobe: int = 8, n_clusters: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate self-kNN (self excluded, sorted descending, -1 / -inf where fewer than k) for graphs.

    IVF without FAISS's per-query scan: spherical k-means lists (≈ 4·√N, trained on a seeded sample),
    each row probes its `nprobe` nearest lists and lives in the first; then list by list, the rows that
    probe it × its members is one BLAS block merged into per-row top-k heaps (numba). The rows' own
    lists go first, so the heaps start with close neighbours and later blocks are mostly skipped."""
    x = _f32(x)
    # the blocks are small GEMMs: extra BLAS / OpenMP threads only spin (3-7x the CPU time under load,
    # measured); FAISS's k-means and list assignment keep their threads where they are large
    with threadpool_limits(1, user_api=None if x.shape[0] <= BLOCK_ONE_THREAD_MAX else "blas"):
        return _ivf_block_knn(x, k, nprobe, n_clusters, seed)


def _ivf_block_knn(x: np.ndarray, k: int, nprobe: int, n_clusters: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n, d = x.shape
    best_s = np.full((n, k), -np.inf, np.float32)
    best_i = np.full((n, k), -1, np.int64)
    if n < 2 or k < 1:
        return best_s, best_i
    nlist = min(n, n_clusters or n_lists(n))
    take = np.sort(np.random.default_rng(seed).choice(n, min(n, BLOCK_TRAIN_PER_LIST * nlist), replace=False))
    km = faiss.Kmeans(d, nlist, niter=BLOCK_TRAIN_ITER, seed=seed, spherical=True, min_points_per_centroid=1,
                      max_points_per_centroid=BLOCK_TRAIN_PER_LIST)
    km.train(x[take])
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(km.centroids)
    _, probes = quantizer.search(x, min(nprobe, nlist))
    order = np.argsort(probes[:, 0], kind="stable")
    bounds = np.searchsorted(probes[order, 0], np.arange(nlist + 1))
    rest_q = np.repeat(np.arange(n), probes.shape[1] - 1)
    rest_c = probes[:, 1:].ravel()
    valid = rest_c >= 0
    rest_q, rest_c = rest_q[valid], rest_c[valid]
    rorder = np.argsort(rest_c, kind="stable")
    rbounds = np.searchsorted(rest_c[rorder], np.arange(nlist + 1))
    lists = [order[bounds[c] : bounds[c + 1]] for c in range(nlist)]
    members = [x[m] for m in lists]
    # the lane count is fixed by n, not by the machine: a lane's GEMM shapes decide the last bits
    # of the similarities (so ties), and the output must not depend on the CPU count
    lanes = BLOCK_LANES if n >= BLOCK_LANES_MIN_ROWS else 1

    def own(lane: int) -> None:  # a row lives in one list: lanes take whole lists
        for c in range(lane, nlist, lanes):
            if lists[c].size:
                _push_topk(members[c] @ members[c].T, lists[c], lists[c], best_s, best_i)

    def probed(lane: int) -> None:  # a row probes several lists: lanes take rows, so no heap is shared
        for c in range(nlist):
            qs = rest_q[rorder[rbounds[c] : rbounds[c + 1]]]
            qs = qs[qs % lanes == lane] if lanes > 1 else qs
            if lists[c].size and qs.size:
                _push_topk(x[qs] @ members[c].T, qs, lists[c], best_s, best_i)

    # every row's heap gets its own list first, then the other lists in list order, on any lane count
    threads = min(lanes, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:  # the GEMMs and the numba kernel release the GIL
        for step in (own, probed):  # all own lists before any probed one
            list(pool.map(step, range(lanes)))
    return _sort_desc(best_s, best_i)


def knn_graph(sims: np.ndarray, idx: np.ndarray, *, self_loops: bool = True, symmetric: bool = False, transform: str = "cos") -> sp.csr_matrix:
    """The (n × n) CSR graph with an edge i → idx[i, j] of weight f(sims[i, j]) (f: cos clipped at 0, or cos²).

    `symmetric=True` takes the max of both directions; `self_loops` adds weight 1 on the diagonal.
    """
    n = idx.shape[0]
    valid = idx >= 0
    rows = np.repeat(np.arange(n), idx.shape[1])[valid.ravel()]
    cols = idx[valid]
    w = sims[valid].astype(np.float64)
    w = np.square(w) if transform == "cos2" else np.clip(w, 0.0, None)
    g = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    g.sum_duplicates()
    if symmetric:
        g = g.maximum(g.T).tocsr()
    if self_loops:
        g = (g + sp.identity(n, format="csr", dtype=np.float64) - sp.diags(g.diagonal())).tocsr()
    g.eliminate_zeros()
    return g


def union_find_groups(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label of each of n nodes given undirected edges a[i] — b[i] (union-find / connected components)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    g = sp.coo_matrix((np.ones(len(a), dtype=np.int8), (np.asarray(a, np.int64), np.asarray(b, np.int64))), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    return labels.astype(np.int64)

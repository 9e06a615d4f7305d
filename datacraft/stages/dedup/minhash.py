"""`near_dedup`: MinHash-LSH near-duplicate detection over character or word shingles.

Each row's text (`text` view, lower-cased, whitespace collapsed) becomes a set of shingles (`char`
k-grams, default 5, or `word` k-grams, default 3), hashed once (polars' vectorized hash) and turned
into a `num_perm`-value MinHash signature with numpy: h_p(x) = ((a_p·x + b_p) mod 2⁶⁴ mod (2⁶¹ − 1)) as datasketch, the
minimum per row taken with `np.minimum.reduceat`. LSH: `bands` × `rows` (chosen so the S-curve's
midpoint ≈ `threshold` when not given); rows sharing a band bucket are candidates, kept as an edge
when their estimated Jaccard (signature agreement) ≥ `threshold`. Groups by union-find; the kept row
is the best by `score` (else the longest); the others are dropped "near-duplicate" with detail
"near-duplicate of <id> (jaccard=0.91)".

Memory: signatures N × num_perm × 8 bytes (1M × 128 ≈ 1 GB) + the bucket table. Beam form: bucket
keys hashed into `shards` partitions (GroupByKey), edges per shard, one resolve (see groups.py).
Order independence: a bucket's rows are linked to its smallest id (not to the first row that
arrived), so the edges — and the groups — do not depend on batch order or partitioning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import polars as pl
from numba import njit, prange
from pydantic import Field

from datacraft.core.rows import text_expr
from datacraft.core.stage import GlobalStage, StageParams, StageResult
from datacraft.stages.dedup.groups import EDGE_SCHEMA, EdgeDedup, dedup_result, node_frame

_SIG = "_minhash"


class MinHashParams(StageParams):
    text: Literal["instruction", "instruction_response", "response", "conversation"] = "instruction_response"
    threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard similarity at or above which rows are duplicates")
    shingle: Literal["char", "word"] = "char"
    ngram: int | None = Field(None, ge=1, description="shingle size (default: 5 for char, 3 for word)")
    num_perm: int = Field(128, ge=8, le=1024)
    bands: int | None = Field(None, ge=1, description="LSH bands (default: chosen from the threshold)")
    score: str | None = "quality"
    grouping: Literal["union_find", "greedy"] = "union_find"
    shards: int = Field(64, ge=1, description="Beam form: partitions of the bucket keys")
    seed: int = 1


def choose_bands(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands·rows ≤ num_perm whose S-curve midpoint (1/b)^(1/r) is nearest the threshold."""
    best = (1, num_perm)
    gap = float("inf")
    for r in range(1, num_perm + 1):
        b = num_perm // r
        mid = (1.0 / b) ** (1.0 / r)
        if abs(mid - threshold) < gap:
            best, gap = (b, r), abs(mid - threshold)
    return best


def shingle_lists(texts: list[str], kind: str, k: int) -> list[list[str]]:
    out = []
    for t in texts:
        t = re.sub(r"\s+", " ", t.lower()).strip()
        if kind == "word":
            w = t.split(" ")
            sh = {" ".join(w[i : i + k]) for i in range(max(1, len(w) - k + 1))}
        else:
            sh = {t[i : i + k] for i in range(max(1, len(t) - k + 1))}
        out.append(list(sh))
    return out


#: Python's `re` `\s` (str.isspace) in Rust regex terms: its `\s` is Unicode White_Space, which lacks \x1c-\x1f
_WHITESPACE = r"[\s\x1c-\x1f]+"
_WORD = r"[^\s\x1c-\x1f]+"


def shingle_hashes(texts: list[str], kind: str, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets): polars' hash of every shingle of `shingle_lists`, row r's at hashes[offsets[r]:offsets[r + 1]].

    The same shingles as `shingle_lists` (duplicates within a row kept: they do not change a minimum),
    built and hashed by polars over all rows at once instead of Python sets of strings."""
    low = pl.Series("t", [t.lower() for t in texts], dtype=pl.Utf8)  # Python's lower: its case rules, not Rust's
    if kind == "word":
        words = pl.DataFrame(low.str.extract_all(_WORD).alias("w")).with_row_index("r")
        n = pl.col("w").list.len().cast(pl.Int64)
        # fewer than k words: one shingle, the whole text (k-gram columns of nulls that concat_str skips)
        w = pl.when(n >= k).then(pl.col("w")).otherwise(pl.concat_list([pl.col("w").list.join(" "), *[pl.lit(None, pl.Utf8)] * (k - 1)]))
        grams = words.select("r", w.alias("w")).select("r", *[pl.col("w").list.slice(j, pl.col("w").list.len() - k + 1).alias(f"g{j}") for j in range(k)])
        sh = grams.explode([f"g{j}" for j in range(k)]).select("r", pl.concat_str([f"g{j}" for j in range(k)], separator=" ", ignore_nulls=True).alias("s"))
    else:
        frame = pl.DataFrame(low.str.replace_all(_WHITESPACE, " ").str.strip_chars(" ")).with_row_index("r")
        pos = frame.with_columns(pl.int_ranges(0, pl.max_horizontal(pl.col("t").str.len_chars().cast(pl.Int64) - k + 1, 1)).alias("i")).explode("i")
        sh = pos.select("r", pl.col("t").str.slice(pl.col("i"), k).alias("s"))
    hashes = sh["s"].hash(seed=seed).to_numpy()
    counts = np.bincount(sh["r"].to_numpy(), minlength=len(texts))
    return hashes, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


@njit(cache=True, parallel=True)
def _minhash(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[r, p] = min over row r's shingle hashes h of ((a_p·(h mod 2³²) + b_p) mod 2⁶⁴ mod (2⁶¹ − 1)) mod 2³²."""
    prime, low32, top = np.uint64((1 << 61) - 1), np.uint64(0xFFFFFFFF), np.uint64(61)
    for r in prange(out.shape[0]):
        row = out[r]
        row[:] = low32
        for j in range(offsets[r], offsets[r + 1]):
            h = hashes[j] & low32
            for p in range(row.shape[0]):
                v = h * a[p] + b[p]  # wraps mod 2⁶⁴, as datasketch
                v = (v & prime) + (v >> top)  # mod 2⁶¹ − 1 without a division (Mersenne prime)
                if v >= prime:
                    v -= prime
                v &= low32
                if v < row[p]:
                    row[p] = v


def signatures(texts: list[str], *, num_perm: int = 128, shingle: str = "char", ngram: int | None = None, seed: int = 1) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint64: shingles hashed by polars, permutations by a compiled kernel."""
    k = ngram or (5 if shingle == "char" else 3)
    rng = np.random.default_rng(seed)
    a = rng.integers(1, (1 << 61) - 1, num_perm, dtype=np.uint64)
    b = rng.integers(0, (1 << 61) - 1, num_perm, dtype=np.uint64)
    sig = np.empty((len(texts), num_perm), dtype=np.uint64)
    if texts:
        hashes, offsets = shingle_hashes(texts, shingle, k, seed)
        _minhash(hashes, offsets, a, b, sig)
    return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 bucket keys: a hash of each band's `rows` signature values."""
    keys = np.empty((sig.shape[0], bands), dtype=np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    for i in range(bands):
        h = np.full(sig.shape[0], ((i + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
        for v in sig[:, i * rows : (i + 1) * rows].T:
            h = (h ^ v) * mult
            h ^= h >> np.uint64(29)
        keys[:, i] = h
    return keys


def candidate_edges(ids: list[str], sig: np.ndarray, keys: np.ndarray, threshold: float) -> pl.DataFrame:
    """Rows sharing a bucket, linked to the bucket's smallest id (whatever the row order) when their
    estimated Jaccard ≥ threshold."""
    n, bands = keys.shape
    if n < 2:
        return pl.DataFrame(schema=EDGE_SCHEMA)
    by_id = np.argsort(np.asarray(ids, dtype=object), kind="stable")  # the row order that decides heads
    table = pl.DataFrame({"band": np.repeat(np.arange(bands), n), "key": keys[by_id].T.ravel(), "ix": np.tile(by_id, bands), "r": np.tile(np.arange(n), bands)})
    heads = table.group_by(["band", "key"]).agg(pl.col("ix").sort_by("r").first().alias("head"), pl.len().alias("size")).filter(pl.col("size") > 1)
    pairs = table.join(heads, on=["band", "key"]).filter(pl.col("ix") != pl.col("head")).select("head", "ix").unique()
    if pairs.height == 0:
        return pl.DataFrame(schema=EDGE_SCHEMA)
    h, i = pairs["head"].to_numpy(), pairs["ix"].to_numpy()
    est = np.empty(len(h))
    for s in range(0, len(h), 200_000):
        est[s : s + 200_000] = (sig[h[s : s + 200_000]] == sig[i[s : s + 200_000]]).mean(axis=1)
    ok = est >= threshold
    arr = pl.Series(ids, dtype=pl.Utf8)
    return pl.DataFrame({"a": arr.gather(h[ok]), "b": arr.gather(i[ok]), "sim": est[ok]}, schema=EDGE_SCHEMA)


class MinHashDedupStage(EdgeDedup, GlobalStage):
    name = "near_dedup"
    Params = MinHashParams
    params: MinHashParams
    metric = "jaccard"

    def bands_rows(self) -> tuple[int, int]:
        p = self.params
        if p.bands:
            return p.bands, max(1, p.num_perm // p.bands)
        return choose_bands(p.num_perm, p.threshold)

    def signatures_of(self, frame: pl.DataFrame) -> np.ndarray:
        p = self.params
        texts = frame.select(text_expr(p.text).alias("t"))["t"].to_list()
        return signatures(texts, num_perm=p.num_perm, shingle=p.shingle, ngram=p.ngram, seed=p.seed)

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        if frame.height == 0:
            return StageResult(kept=frame)
        sig = self.signatures_of(frame)
        edges = candidate_edges(frame["id"].to_list(), sig, band_keys(sig, *self.bands_rows()), self.params.threshold)
        nodes = node_frame(frame, self.params.score, self.params.text)
        return dedup_result(self.label, frame, edges, nodes, self.params.threshold, "jaccard", grouping=self.params.grouping)

    # -- scale-out --------------------------------------------------------------------------------
    def keyed_pieces(self, batch: pl.DataFrame, _facts: Any) -> Iterator[tuple[Any, pl.DataFrame]]:
        sig = self.signatures_of(batch)
        keys = band_keys(sig, *self.bands_rows())
        slim = node_frame(batch, self.params.score, self.params.text).with_columns(pl.Series(_SIG, sig))
        shard = (keys % np.uint64(self.params.shards)).astype(np.int64)
        frame = slim.with_columns(pl.Series("_shard", [sorted(set(r)) for r in shard.tolist()], dtype=pl.List(pl.Int64))).explode("_shard")
        for (key,), part in frame.group_by("_shard", maintain_order=True):
            yield int(key), part.drop("_shard")

    def edges_of(self, _key: Any, part: pl.DataFrame, _facts: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
        part = part.unique("id", keep="first", maintain_order=True)
        sig = part[_SIG].to_numpy().astype(np.uint64)
        edges = candidate_edges(part["id"].to_list(), sig, band_keys(sig, *self.bands_rows()), self.params.threshold)
        touched = pl.concat([edges["a"], edges["b"]]).unique()
        return edges, part.drop(_SIG).filter(pl.col("id").is_in(touched.implode()))


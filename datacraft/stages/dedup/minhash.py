"""`near_dedup`: MinHash-LSH near-duplicate detection over character or word shingles.

Each row's text (`text` view, lower-cased, whitespace collapsed) becomes a set of shingles (`char`
k-grams, default 5, or `word` k-grams, default 3). One compiled pass (numba) normalises the rows'
UTF-8 bytes (Python's `str.lower` only for rows with a non-ASCII character) and writes their shingles as
Arrow views, polars hashes them as one column, and a compiled kernel (8 shingles per pass over the
permutations, in a second thread while the next 4 MB chunk is cut) turns them into `num_perm`-value
MinHash signatures: h_p(x) = ((a_p·x + b_p) mod 2⁶⁴ mod (2⁶¹ − 1)) as datasketch (the Mersenne
modulus without a division), the minimum per row (`shingle_lists` + `_reference` in the tests is
the plain-Python form they equal). LSH: `bands` × `rows` (when not given, the
most rows per band that make a pair at `threshold` a candidate ≥ 90% of the time; buckets found by an open-addressing table per band); rows
sharing a band bucket are candidates, kept as an edge when their estimated Jaccard (signature
agreement) ≥ `threshold`. Groups by union-find; the kept row is the best by `score` (else the
longest); the others are dropped "near-duplicate" with detail "near-duplicate of <id> (jaccard=0.91)".

Memory: signatures N × num_perm × 4 bytes (uint32: the values are < 2³²; 1M × 128 ≈ 0.5 GB) + the
band keys (N × bands × 8 bytes). Beam form: bucket keys hashed into `shards` partitions
(GroupByKey), edges per shard, one resolve (see groups.py).
Order independence: a bucket's rows are linked to its smallest id (not to the first row that
arrived), so the edges — and the groups — do not depend on batch order or partitioning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from numba import njit
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


#: the share of pairs at exactly the threshold that LSH must make candidates. Candidates are then
#: kept only at an estimated Jaccard ≥ the threshold, so a chance candidate costs one comparison
#: while a missed pair is a duplicate left in the data.
MIN_RECALL_AT_THRESHOLD = 0.9


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """The chance that a pair of this Jaccard shares at least one of `bands` bands of `rows` rows."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def choose_bands(num_perm: int, threshold: float, recall: float = MIN_RECALL_AT_THRESHOLD) -> tuple[int, int]:
    """(bands, rows) with bands·rows ≤ num_perm: the most rows per band (the fewest chance
    candidates) that still make a pair at the threshold a candidate with probability ≥ `recall`.
    (The S-curve midpoint at the threshold, the textbook choice, finds such a pair only ≈ 60% of the
    time: at τ 0.7 with 16 × 8 bands, pairs of true Jaccard 0.82–0.88 were measured missed.)"""
    for r in range(num_perm, 0, -1):
        if candidate_probability(threshold, num_perm // r, r) >= recall:
            return num_perm // r, r
    return num_perm, 1


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


@njit(cache=True, inline="always")
def _space_len(buf: np.ndarray, i: int) -> int:
    """Byte length of the whitespace character (Python's str.isspace) starting at buf[i] in UTF-8, else 0."""
    c = buf[i]
    if c == 0x20 or 0x09 <= c <= 0x0D or 0x1C <= c <= 0x1F:
        return 1
    n = buf.shape[0]
    if c == 0xC2 and i + 1 < n and (buf[i + 1] == 0x85 or buf[i + 1] == 0xA0):
        return 2
    if i + 2 < n:
        c1, c2 = buf[i + 1], buf[i + 2]
        if (c == 0xE1 and c1 == 0x9A and c2 == 0x80) or (c == 0xE3 and c1 == 0x80 and c2 == 0x80):
            return 3
        if c == 0xE2 and ((c1 == 0x80 and (c2 <= 0x8A or c2 == 0xA8 or c2 == 0xA9 or c2 == 0xAF)) or (c1 == 0x81 and c2 == 0x9F)):
            return 3
    return 0


#: per byte: its class (0 a byte of a word, 1 an ASCII byte Python's str.isspace() calls whitespace, 2 the lead
#: byte of a possible non-ASCII space) and what `_normalise_row` writes for it (A-Z lower-cased, spaces as " ")
_CLASS = np.zeros(256, np.uint8)
_WRITE = np.arange(256, dtype=np.uint8)
_CLASS[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = 1
_WRITE[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = 0x20
_WRITE[0x41:0x5B] += 0x20
_CLASS[[0xC2, 0xE1, 0xE2, 0xE3]] = 2


@njit(cache=True, inline="always")
def _normalise_row(buf: np.ndarray, i: int, end: int, classes: np.ndarray, write: np.ndarray, out: np.ndarray, o: int, word_ends: np.ndarray) -> tuple[int, int]:
    """buf[i:end] with whitespace runs collapsed to one space and stripped (`re.sub(r"\\s+", " ", t).strip()`) and its
    ASCII letters lower-cased, written to out[o:]; returns (its end in out, its words), word q ending at word_ends[q].

    Without branches on the bytes (word lengths are not predictable): every byte writes, a space advances `o` only
    after a word, and the space after the last word is taken back."""
    words, in_word = 0, 0
    while i < end:
        c = buf[i]
        space = np.int64(classes[c])
        if space == 2:  # rare: a lead byte that may start a non-ASCII space
            n = _space_len(buf, i)
            if n:
                out[o] = 0x20
                word_ends[words] = o
                o += in_word
                words += in_word
                in_word = 0
                i += n
                continue
            space = 0
        out[o] = write[c]
        word_ends[words] = o
        words += in_word & space
        o += (1 - space) | in_word
        in_word = 1 - space
        i += 1
    if in_word:
        word_ends[words] = o
        words += 1
    elif words:
        o -= 1
    return o, words


@njit(cache=True, inline="always")
def _put_view(views: np.ndarray, j: int, out: np.ndarray, start: int, end: int) -> None:
    """views[j]: the Arrow BinaryView struct (16 bytes) of out[start:end]: length, then the bytes inline (≤ 12) or a
    4-byte prefix, buffer 0 and the offset — a column of spans of `out` without copying their bytes."""
    length = end - start
    views[j, 0] = length
    if length > 12:
        views[j, 1] = np.uint32(out[start]) | np.uint32(out[start + 1]) << 8 | np.uint32(out[start + 2]) << 16 | np.uint32(out[start + 3]) << 24
        views[j, 2] = 0
        views[j, 3] = start
    else:
        views[j, 1] = views[j, 2] = views[j, 3] = 0
        inline = views[j].view(np.uint8)
        for q in range(length):
            inline[4 + q] = out[start + q]


@njit(cache=True)
def _shingle_views(buf: np.ndarray, starts: np.ndarray, classes: np.ndarray, write: np.ndarray, k: int, by_word: bool, out: np.ndarray,
                   views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row buf[starts[r]:starts[r + 1]] normalised (`_normalise_row`) into `out`, then the views (`_put_view`) of
    its shingles into `views` (≥ `_view_bound` rows): every word k-gram (`by_word`) or k-code-point substring, the whole
    text when it is shorter than k; returns (views, offsets), row r's at views[offsets[r]:offsets[r + 1]]."""
    rows, longest = starts.shape[0] - 1, 0
    for r in range(rows):
        longest = max(longest, starts[r + 1] - starts[r])
    word_ends = np.empty(longest // 2 + 2, np.int64)  # a row of m words has ≥ 2m − 1 bytes; one more written
    first = np.empty(rows + 1, np.int64)
    j, o = 0, 0
    for r in range(rows):
        first[r] = j
        a = o
        o, m = _normalise_row(buf, starts[r], starts[r + 1], classes, write, out, o, word_ends)
        if by_word and m >= k:
            for i in range(m - k + 1):
                _put_view(views, j, out, a if i == 0 else word_ends[i - 1] + 1, word_ends[i + k - 1])
                j += 1
            continue
        b, seen = a, 0  # b: the byte after the first k characters from a (the whole text for a short row)
        while b < o and (seen < k or by_word):
            b += 1
            while b < o and (out[b] & 0xC0) == 0x80:
                b += 1
            seen += 1
        _put_view(views, j, out, a, b)
        j += 1
        while b < o:  # characters: slide one
            a += 1
            while (out[a] & 0xC0) == 0x80:
                a += 1
            b += 1
            while b < o and (out[b] & 0xC0) == 0x80:
                b += 1
            _put_view(views, j, out, a, b)
            j += 1
    first[rows] = j
    return views[:j], first


def _utf8(texts: Sequence[str] | pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets): the texts in UTF-8, row r at bytes[offsets[r]:offsets[r + 1]]. Rows with a non-ASCII
    character are lower-cased by Python's `str.lower` (its case rules); `_normalise_row` lower-cases ASCII letters."""
    s = (texts if isinstance(texts, pl.Series) else pl.Series(texts, dtype=pl.Utf8)).cast(pl.Utf8).fill_null("")
    wide = s.str.len_bytes() != s.str.len_chars()
    if wide.any():
        at = wide.arg_true()
        s = s.clone().scatter(at, pl.Series([t.lower() for t in s.gather(at).to_list()], dtype=pl.Utf8))
    arr = s.rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())
    _, offsets, data = arr.buffers()
    starts = np.frombuffer(offsets, np.int64)[arr.offset : arr.offset + len(arr) + 1]
    return (np.frombuffer(data, np.uint8) if data is not None and data.size else np.zeros(1, np.uint8)), starts


def _view_bound(size: int, rows: int, by_word: bool) -> int:
    """At least the shingles of `rows` rows of `size` bytes: a row of b bytes has ≤ (b + 1) / 2 words, ≤ b characters."""
    return (size + rows) // 2 + rows if by_word else size + rows


def _span_hashes(buf: np.ndarray, starts: np.ndarray, kind: str, k: int, seed: int, scratch: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets) of the rows buf[starts[r]:starts[r + 1]]: their shingles cut by compiled loops, hashed by polars
    as one BinaryView column over the normalised bytes (its hash of a string is the hash of its bytes).

    `scratch` keeps the byte and view buffers from one chunk to the next (fresh pages cost a fault each)."""
    scratch = {} if scratch is None else scratch
    size, rows = int(starts[-1] - starts[0]), len(starts) - 1
    if len(scratch.get("out", ())) < max(1, size):
        scratch["out"] = np.empty(max(1, size), np.uint8)
    if len(scratch.get("views", ())) < _view_bound(size, rows, kind == "word"):
        scratch["views"] = np.empty((_view_bound(size, rows, kind == "word"), 4), np.uint32)
    out = scratch["out"]
    views, first = _shingle_views(buf, starts, _CLASS, _WRITE, k, kind == "word", out, scratch["views"])
    column = pa.Array.from_buffers(pa.binary_view(), len(views), [None, pa.py_buffer(views), pa.py_buffer(out)])
    return pl.Series(column).hash(seed=seed).to_numpy(), first


def shingle_hashes(texts: Sequence[str] | pl.Series, kind: str, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets): polars' hash of every shingle of `shingle_lists`, row r's at hashes[offsets[r]:offsets[r + 1]].

    The same shingles as `shingle_lists` (duplicates within a row kept: they do not change a minimum),
    cut from the UTF-8 bytes by compiled loops and hashed by polars as one Binary column instead of
    Python sets of strings."""
    buf, starts = _utf8(texts)
    return _span_hashes(buf, starts, kind, k, seed)


@njit(cache=True, inline="always")
def _perm(h: np.uint64, a: np.uint64, b: np.uint64) -> np.uint32:
    """((a·h + b) mod 2⁶⁴ mod (2⁶¹ − 1)) mod 2³²: the wrap as datasketch, the Mersenne modulus without a division."""
    prime = np.uint64((1 << 61) - 1)
    v = h * a + b
    v = (v & prime) + (v >> np.uint64(61))
    if v >= prime:
        v -= prime
    return np.uint32(v & np.uint64(0xFFFFFFFF))


@njit(cache=True, nogil=True)  # no parallel=True: numba's workqueue layer is not thread-safe under Beam's worker threads
def _minhash(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[r, p] = min over row r's shingle hashes h of _perm(h mod 2³², a_p, b_p).

    Eight hashes per pass over the permutations: a_p, b_p and the running minimum are loaded and stored once
    for eight products (the loop is bound by those loads and stores otherwise)."""
    low32 = np.uint64(0xFFFFFFFF)
    row = np.empty(out.shape[1], np.uint32)
    for r in range(out.shape[0]):
        row[:] = np.uint32(0xFFFFFFFF)
        j, end = offsets[r], offsets[r + 1]
        while j + 8 <= end:
            h0, h1, h2, h3 = hashes[j] & low32, hashes[j + 1] & low32, hashes[j + 2] & low32, hashes[j + 3] & low32
            h4, h5, h6, h7 = hashes[j + 4] & low32, hashes[j + 5] & low32, hashes[j + 6] & low32, hashes[j + 7] & low32
            for p in range(row.shape[0]):
                ap, bp = a[p], b[p]
                m0 = min(min(_perm(h0, ap, bp), _perm(h1, ap, bp)), min(_perm(h2, ap, bp), _perm(h3, ap, bp)))
                m1 = min(min(_perm(h4, ap, bp), _perm(h5, ap, bp)), min(_perm(h6, ap, bp), _perm(h7, ap, bp)))
                row[p] = min(row[p], min(m0, m1))
            j += 8
        while j < end:
            h = hashes[j] & low32
            for p in range(row.shape[0]):
                row[p] = min(row[p], _perm(h, a[p], b[p]))
            j += 1
        out[r] = row


def signatures(texts: Sequence[str] | pl.Series, *, num_perm: int = 128, shingle: str = "char", ngram: int | None = None, seed: int = 1,
               chunk_bytes: int = 1 << 22) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint32: shingles hashed by polars, permutations by a compiled kernel.

    Rows go in chunks of ≤ `chunk_bytes` UTF-8 bytes (≤ 2³¹: the BinaryView offsets are 32-bit); a chunk's
    permutations run in a second thread (the kernel releases the GIL) while the next chunk is cut and hashed."""
    k = ngram or (5 if shingle == "char" else 3)
    rng = np.random.default_rng(seed)
    a = rng.integers(1, (1 << 61) - 1, num_perm, dtype=np.uint64)
    b = rng.integers(0, (1 << 61) - 1, num_perm, dtype=np.uint64)
    buf, starts = _utf8(texts)
    n = len(starts) - 1
    sig = np.empty((n, num_perm), dtype=np.uint32)
    lo, scratch, running = 0, {}, None
    with ThreadPoolExecutor(1) as pool:
        while lo < n:
            hi = max(lo + 1, int(np.searchsorted(starts, starts[lo] + chunk_bytes, side="right")) - 1)
            hashes, offsets = _span_hashes(buf, starts[lo : hi + 1], shingle, k, seed, scratch)
            if running is not None:
                running.result()
            running = pool.submit(_minhash, hashes, offsets, a, b, sig[lo:hi])
            lo = hi
        if running is not None:
            running.result()
    return sig


_MIX = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def _band_keys(sig: np.ndarray, rows: int, init: np.ndarray, mult: np.uint64, keys: np.ndarray) -> None:
    for r in range(sig.shape[0]):
        for i in range(init.shape[0]):
            h = init[i]
            for c in range(i * rows, (i + 1) * rows):
                h = (h ^ np.uint64(sig[r, c])) * mult
                h ^= h >> np.uint64(29)
            keys[r, i] = h


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 bucket keys: a hash of each band's `rows` signature values."""
    init = np.array([((i + 1) * int(_MIX)) & 0xFFFFFFFFFFFFFFFF for i in range(bands)], dtype=np.uint64)
    keys = np.empty((bands, sig.shape[0]), dtype=np.uint64).T  # column-major: one band's keys contiguous
    _band_keys(np.ascontiguousarray(sig), rows, init, _MIX, keys)
    return keys


@njit(cache=True, inline="always")
def _slot(slot_key: np.ndarray, slot_row: np.ndarray, key: np.uint64, mask: int) -> int:
    """The slot of `key` in an open-addressing table (linear probing): its own, or the empty one it would take."""
    s = np.int64(key & np.uint64(mask))
    while slot_row[s] >= 0 and slot_key[s] != key:
        s = (s + 1) & mask
    return s


@njit(cache=True, nogil=True)
def _bucket_pairs(keys: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """head·n + row for every row that shares a band's bucket key with a row of lower `rank`, head being the
    bucket's row of lowest rank. Per band the rows are first split by the key's top bits into parts of ~4k
    rows, so that each part's table stays in cache (one table over all rows misses it at every probe)."""
    n, bands = keys.shape
    bits = 0
    while (n >> bits) > 4096:
        bits += 1
    parts, shift = 1 << bits, np.uint64(64 - bits) if bits else np.uint64(0)
    part_key, part_row = np.empty(n, np.uint64), np.empty(n, np.int64)
    start, fill = np.empty(parts + 1, np.int64), np.empty(parts, np.int64)
    slot_key, slot_row = np.empty(16, np.uint64), np.empty(16, np.int64)
    codes = np.empty(n * bands, np.int64)
    m = 0
    for band in range(bands):
        col = keys[:, band]
        start[:] = 0
        for r in range(n):
            start[(np.int64(col[r] >> shift) if bits else 0) + 1] += 1
        for p in range(parts):
            start[p + 1] += start[p]
        fill[:] = start[:-1]
        for r in range(n):  # stable: a part keeps the rows' order
            p = np.int64(col[r] >> shift) if bits else 0
            part_key[fill[p]], part_row[fill[p]] = col[r], r
            fill[p] += 1
        for p in range(parts):
            lo, hi = start[p], start[p + 1]
            size = 2
            while size < 2 * (hi - lo):
                size <<= 1
            if size > slot_row.shape[0]:
                slot_key, slot_row = np.empty(size, np.uint64), np.empty(size, np.int64)
            slot_row[:size] = -1
            for q in range(lo, hi):  # each bucket's row of lowest rank
                s = _slot(slot_key, slot_row, part_key[q], size - 1)
                if slot_row[s] < 0:
                    slot_key[s], slot_row[s] = part_key[q], part_row[q]
                elif rank[part_row[q]] < rank[slot_row[s]]:
                    slot_row[s] = part_row[q]
            for q in range(lo, hi):
                head = slot_row[_slot(slot_key, slot_row, part_key[q], size - 1)]
                if head != part_row[q]:
                    codes[m] = head * n + part_row[q]
                    m += 1
    return codes[:m]


@njit(cache=True, nogil=True)
def _agreement(sig: np.ndarray, h: np.ndarray, i: np.ndarray) -> np.ndarray:
    """The share of equal signature values of rows h[q] and i[q] (the estimated Jaccard), per pair."""
    est = np.empty(h.shape[0])
    for q in range(h.shape[0]):
        same = 0
        for p in range(sig.shape[1]):
            same += sig[h[q], p] == sig[i[q], p]
        est[q] = same / sig.shape[1]
    return est


def candidate_edges(ids: Sequence[str] | pl.Series, sig: np.ndarray, keys: np.ndarray, threshold: float) -> pl.DataFrame:
    """Rows sharing a bucket, linked to the bucket's smallest id (whatever the row order) when their
    estimated Jaccard ≥ threshold."""
    n = keys.shape[0]
    if n < 2:
        return pl.DataFrame(schema=EDGE_SCHEMA)
    arr = ids if isinstance(ids, pl.Series) else pl.Series(ids, dtype=pl.Utf8)
    rank = arr.to_frame("id").select(pl.col("id").rank("ordinal")).to_series().to_numpy().astype(np.int64)  # decides heads
    codes = np.sort(_bucket_pairs(keys, rank))
    if not len(codes):
        return pl.DataFrame(schema=EDGE_SCHEMA)
    codes = codes[np.concatenate(([True], codes[1:] != codes[:-1]))]  # each pair once, whatever bands it shares
    h, i = codes // n, codes % n
    est = _agreement(sig, h, i)
    ok = est >= threshold
    return pl.DataFrame({"a": arr.gather(h[ok]), "b": arr.gather(i[ok]), "sim": est[ok]}, schema=EDGE_SCHEMA)


def with_edges(frame: pl.DataFrame, edges: pl.DataFrame) -> pl.DataFrame:
    """The rows of `frame` that an edge touches."""
    return frame.filter(pl.col("id").is_in(pl.concat([edges["a"], edges["b"]]).unique().implode()))


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
        return signatures(frame.select(text_expr(p.text).alias("t"))["t"], num_perm=p.num_perm, shingle=p.shingle, ngram=p.ngram, seed=p.seed)

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        if frame.height == 0:
            return StageResult(kept=frame)
        sig = self.signatures_of(frame)
        edges = candidate_edges(frame["id"], sig, band_keys(sig, *self.bands_rows()), self.params.threshold)
        nodes = node_frame(with_edges(frame, edges), self.params.score, self.params.text)  # the groups' rows only
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
        sig = part[_SIG].to_numpy()
        edges = candidate_edges(part["id"], sig, band_keys(sig, *self.bands_rows()), self.params.threshold)
        return edges, with_edges(part.drop(_SIG), edges)


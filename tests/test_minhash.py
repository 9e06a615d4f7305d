from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from datacraft.core.rows import batch_from_rows, make_row, text_expr
from datacraft.stages.dedup.minhash import (
    MinHashDedupStage,
    band_keys,
    candidate_edges,
    candidate_probability,
    choose_bands,
    shingle_hashes,
    shingle_lists,
    signatures,
)

from ._embed_helpers import assert_ledger, rows, run_beam


def _with_near_copies():
    base = rows("alpaca_llamafactory_200.jsonl").head(80)
    extra = []
    for r in base.head(10).iter_rows(named=True):
        msgs = [dict(m) for m in r["messages"]]
        msgs[-1]["content"] = msgs[-1]["content"] + " Thanks."  # a small edit
        extra.append(make_row(msgs, id=r["id"] + ":copy"))
    from datacraft.core.rows import concat_batches

    return concat_batches([base, batch_from_rows(extra)])


def test_signature_estimates_jaccard() -> None:
    a = "the quick brown fox jumps over the lazy dog " * 5
    b = a.replace("lazy", "sleepy")
    sig = signatures([a, b, "completely different words about stock markets and rates"], num_perm=256)
    est = (sig[0] == sig[1]).mean()
    sa = {a.strip()[i : i + 5] for i in range(len(a.strip()) - 4)}
    sb = {b.strip()[i : i + 5] for i in range(len(b.strip()) - 4)}
    true = len(sa & sb) / len(sa | sb)
    assert abs(est - true) < 0.1 and (sig[0] == sig[2]).mean() < 0.1
    assert [choose_bands(128, t) for t in (0.7, 0.8, 0.9)] == [(21, 6), (16, 8), (9, 14)]
    for t in (0.5, 0.7, 0.8, 0.9, 0.95):
        b_, r_ = choose_bands(128, t)
        # a pair at the threshold becomes a candidate ≥ 90% of the time, with one more row per band it would not
        assert b_ * r_ <= 128 and candidate_probability(t, b_, r_) >= 0.9 > candidate_probability(t, 128 // (r_ + 1), r_ + 1)


def test_near_copies_dropped_with_detail() -> None:
    frame = _with_near_copies()
    kept, dropped, stats = MinHashDedupStage({"threshold": 0.8}).run_local([frame])
    assert_ledger(frame.height, kept, dropped, stats)
    copies = {i for i in frame["id"].to_list() if i.endswith(":copy")}
    # each pair loses exactly one row; the longer (the copy) is kept when no score exists
    assert len(copies & set(kept["id"])) == 10
    assert dropped.filter(dropped["drop_detail"].str.contains(r"near-duplicate of .*:copy \(jaccard=")).height >= 10
    assert all(r == "near-duplicate" for r in dropped["drop_reason"])


def test_minhash_beam_matches_local() -> None:
    frame = _with_near_copies()
    stage = MinHashDedupStage({"threshold": 0.8, "shards": 4})
    _, local_dropped, _ = stage.run_local([frame])
    kept, dropped, stats = run_beam(stage, frame, batch_rows=30)
    assert_ledger(frame.height, kept, dropped, stats)
    assert set(dropped["id"]) == set(local_dropped["id"])
    assert kept["id"].is_unique().all()


def test_shingles_are_every_n_gram_of_the_normalised_text() -> None:
    from datacraft.stages.dedup.minhash import shingle_lists

    (words,) = shingle_lists(["The  cat sat\non the\tMAT"], "word", 3)
    assert sorted(words) == sorted(["the cat sat", "cat sat on", "sat on the", "on the mat"])
    assert shingle_lists(["two words"], "word", 3) == [["two words"]]  # shorter than n: the whole text
    (chars,) = shingle_lists(["Ab  cd"], "char", 3)
    assert sorted(chars) == sorted(["ab ", "b c", " cd"])  # runs of whitespace count as one space


def _reference_signatures(texts: list[str], kind: str, k: int, num_perm: int, seed: int = 1) -> np.ndarray:
    """The plain form: Python sets of shingle strings (`shingle_lists`), polars' hash, numpy's `%` by the prime."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, (1 << 61) - 1, num_perm, dtype=np.uint64)
    b = rng.integers(0, (1 << 61) - 1, num_perm, dtype=np.uint64)
    out = []
    for sh in shingle_lists(texts, kind, k):
        h = (pl.Series(sh, dtype=pl.Utf8).hash(seed=seed).to_numpy() & np.uint64(0xFFFFFFFF))[:, None]
        with np.errstate(over="ignore"):
            out.append((((h * a + b) % np.uint64((1 << 61) - 1)) & np.uint64(0xFFFFFFFF)).min(axis=0))
    return np.array(out, dtype=np.uint64)


EDGE_TEXTS = ["", " \t ", "a", "ab", "one two", "  Lead and trail  ", "x\u00a0y\u2028z\x85w\u3000v\x1cu", "ΣΑΣ ΟΔΟΣ İstanbul ǅ ß", "naïve café — “quoted” 😀 emoji"]


@pytest.mark.parametrize(("kind", "k"), [("char", 5), ("word", 3), ("word", 5), ("char", 1)])
def test_compiled_signatures_equal_the_plain_form_on_real_rows(kind: str, k: int) -> None:
    # real rows (those with non-ASCII text among them) plus edge cases: empty, all-space, shorter than k, Unicode spaces and case
    real = rows("alpaca_llamafactory_200.jsonl").select(text_expr("conversation").alias("t"))["t"]
    texts = real.head(30).to_list() + real.filter(real.str.contains(r"[^\x00-\x7f]")).to_list() + EDGE_TEXTS
    assert len(texts) > 45
    ref = _reference_signatures(texts, kind, k, 32)
    assert np.array_equal(signatures(texts, shingle=kind, ngram=k, num_perm=32), ref)
    # row chunks (the 32-bit offsets' bound) do not change a signature
    assert np.array_equal(signatures(texts, shingle=kind, ngram=k, num_perm=32, chunk_bytes=500), ref)


def test_whitespace_is_pythons_for_every_code_point() -> None:
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    hashes, offsets = shingle_hashes([f"x{c}y" for c in chars], "word", 1, 1)
    split = np.diff(offsets) == 2  # "x y": two one-word shingles
    assert [c for c, s in zip(chars, split, strict=True) if s] == [c for c in chars if re.fullmatch(r"\s", c)]


def _reference_edges(ids: list[str], sig: np.ndarray, keys: np.ndarray, threshold: float) -> set[tuple[str, str, float]]:
    """The plain form of `candidate_edges`: per band, every row of a bucket linked to the bucket's smallest id."""
    out = set()
    for band in range(keys.shape[1]):
        buckets: dict[int, list[int]] = {}
        for r, key in enumerate(keys[:, band].tolist()):
            buckets.setdefault(key, []).append(r)
        for members in buckets.values():
            head = min(members, key=lambda r: ids[r])
            for r in members:
                est = float((sig[head] == sig[r]).mean())
                if r != head and est >= threshold:
                    out.add((ids[head], ids[r], est))
    return out


def test_candidate_edges_link_each_bucket_to_its_smallest_id_whatever_the_row_order() -> None:
    frame = _with_near_copies()
    texts = frame.select(text_expr("conversation").alias("t"))["t"].to_list()
    texts += [t + " again" for t in texts[:20]]  # more near-copies: buckets of three and more
    ids = frame["id"].to_list() + [f"z{i}" for i in range(20)]
    sig = signatures(texts, num_perm=64)
    keys = band_keys(sig, 16, 4)
    ref = _reference_edges(ids, sig, keys, 0.5)
    assert len(ref) >= 30
    edges = candidate_edges(ids, sig, keys, 0.5)
    assert set(edges.iter_rows()) == ref and edges.height == len(ref)
    flip = np.arange(len(ids))[::-1]  # rows in another order: the same edges
    assert set(candidate_edges(pl.Series([ids[i] for i in flip]), sig[flip], keys[flip], 0.5).iter_rows()) == ref
    # past 4096 rows the buckets are found part by part (split by the keys' top bits): planted copies, shuffled ids
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, (10_000, 16), dtype=np.uint64).astype(np.uint32)
    sig[rng.integers(0, 10_000, 600)] = sig[rng.integers(0, 10_000, 600)]
    sig[:300, :8] = sig[300:600, :8]  # half equal: shares some bands, estimate 0.5
    ids = [f"r{i}" for i in rng.permutation(10_000)]
    keys = band_keys(sig, 4, 4)
    ref = _reference_edges(ids, sig, keys, 0.5)
    assert len(ref) >= 800 and set(candidate_edges(ids, sig, keys, 0.5).iter_rows()) == ref


def test_signatures_of_a_sliced_series_equal_those_of_its_strings() -> None:
    texts = ["Skip me", "Hello  World, how are you", "ÉCOLE  Straße ΣΑΣ", "", "one"]
    series = pl.Series(texts).slice(1, 4)
    assert np.array_equal(signatures(series, shingle="word", ngram=2, num_perm=16), signatures(texts[1:], shingle="word", ngram=2, num_perm=16))
    # rows of one byte: more words than half the bytes (the word-end buffer's bound)
    assert signatures(list("abcdefgh"), shingle="word", num_perm=8).shape == (8, 8)

"""The defaults a user gets without setting a parameter, each with where the value comes from.

A default is part of a stage's contract: the papers' values make `recipe`-free configs reproduce the
papers (../shared/docs/methods.md), and the engineering ones are stated in the stage help and the
README. A changed default changes which rows are kept, so it must be a deliberate edit of this table.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from datacraft.stages.dedup.minhash import signatures
from datacraft.stages.registry import stage_class

DEFAULTS = [
    # stage, parameter, value, source
    ("complexity", "max_length", 2048, "Deita: max_length 2048 for the scorers (methods.md, Deita)"),
    ("deita_select", "threshold", 0.9, "Deita repr filter: reject if any similarity > τ, τ = 0.9"),
    ("ds2_curate", "k", 10, "DS2: k = 10 nearest neighbours, self included"),
    ("ds2_curate", "sample_size", 50_000, "DS2 HOC: subsamples of min(50,000, 0.9N)"),
    ("ds2_curate", "hoc_rounds", 50, "DS2 HOC: 50 rounds"),
    ("ds2_curate", "lo", 4, "DS2: classes 4..9 of the 1-10 LLM scale"),
    ("ds2_curate", "hi", 9, "DS2: classes 4..9 of the 1-10 LLM scale"),
    ("diversity", "k", 10, "DS2 long-tail score: mean distance to k = 10 neighbours"),
    ("reflection", "max_tokens", 2048, "Reflection-Tuning code: max_tokens = min(2048, 4050 - prompt)"),
    ("reflection", "parse_retries", 1, "stage help: re-ask once when a section cannot be parsed"),
    ("near_dedup", "num_perm", 128, "datasketch's MinHash default, the README's near-dedup row"),
    ("near_dedup", "threshold", 0.8, "stage help: estimated Jaccard at or above which rows are duplicates"),
    ("semantic_dedup", "threshold", 0.9, "stage help / README: cosine ≥ 0.9 is a duplicate"),
    ("semantic_dedup", "exact_max", 5_000, "stage help: exact kNN up to 5k rows, FAISS IVF above (bench_semdedup's crossover)"),
    ("semantic_dedup", "nprobe", 8, "stage help: 8 of ≈ 4·√N IVF lists, the recall contract (pair recall ≥ 0.99 at τ ≥ 0.9)"),
    ("select", "exact_max", 5_000, "stage help: exact kNN graph up to 5k rows, IVF blocks above (bench_select: ≥ 20× apricot from 10k rows)"),
    ("select", "epsilon", 0.01, "stochastic greedy's ε (Mirzasoleiman et al. 2015), apricot's default"),
]


@pytest.mark.parametrize(("stage", "param", "value", "source"), DEFAULTS, ids=[f"{s}.{p}" for s, p, _, _ in DEFAULTS])
def test_stage_default_is_the_documented_value(stage: str, param: str, value: object, source: str) -> None:
    field = stage_class(stage).Params.model_fields[param]
    assert field.default == value, f"{stage}.{param} default {field.default!r}, documented {value!r} ({source})"


def _reference_minhash(text: str, num_perm: int, seed: int, k: int = 5) -> list[int]:
    """datasketch's universal hash, in Python integers: min over shingles of ((a·h + b) mod 2⁶⁴ mod p) & (2³² − 1)."""
    prime = (1 << 61) - 1
    rng = np.random.default_rng(seed)
    a = [int(v) for v in rng.integers(1, prime, num_perm, dtype=np.uint64)]
    b = [int(v) for v in rng.integers(0, prime, num_perm, dtype=np.uint64)]
    t = " ".join(text.lower().split())
    shingles = sorted({t[i : i + k] for i in range(max(1, len(t) - k + 1))})
    hashes = [int(h) & 0xFFFFFFFF for h in pl.Series(shingles, dtype=pl.Utf8).hash(seed=seed).to_list()]
    return [min((((ai * h + bi) % (1 << 64)) % prime) & 0xFFFFFFFF for h in hashes) for ai, bi in zip(a, b, strict=True)]


def test_minhash_signature_matches_the_mersenne_prime_universal_hash() -> None:
    texts = ["Give three tips for staying healthy.", "What is the capital of France?  Paris!"]
    sig = signatures(texts, num_perm=16, seed=3)
    for row, text in zip(sig, texts, strict=True):
        assert row.tolist() == _reference_minhash(text, 16, 3)


EDGES = [
    # stage, parameter, value, accepted: the bounds the stage help states
    ("reflection", "parse_retries", 0, True),  # 0: never re-ask (configs/default.yaml uses it)
    ("reflection", "parse_retries", -1, False),
    ("select", "epsilon", 0.5, True),  # stochastic greedy's ε lies in (0, 1)
    ("select", "epsilon", 0.0, False),
    ("select", "epsilon", 1.0, False),
    ("semantic_dedup", "exact_max", 1, True),  # 1 sends every input to the IVF index
    ("semantic_dedup", "exact_max", 0, False),
    ("near_dedup", "num_perm", 8, True),
    ("near_dedup", "num_perm", 7, False),
]


@pytest.mark.parametrize(("stage", "param", "value", "accepted"), EDGES, ids=[f"{s}.{p}={v}" for s, p, v, _ in EDGES])
def test_parameter_bounds(stage: str, param: str, value: object, accepted: bool) -> None:
    from pydantic import ValidationError

    params = stage_class(stage).Params
    if accepted:
        assert getattr(params.model_validate({param: value}), param) == value
    else:
        with pytest.raises(ValidationError, match=param):
            params.model_validate({param: value})

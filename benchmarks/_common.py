"""Shared helpers of the embedding / dedup / selection benchmarks."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float, float]:
    """(last result, median seconds, spread max-min) over `repeats` runs."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times)), float(max(times) - min(times))


def blobs_on_sphere(n: int, d: int = 384, clusters: int | None = None, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors: Gaussian blobs around random centres with Zipf-like cluster sizes."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(10, n // 500)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, clusters + 1) ** 0.7
    labels = rng.choice(clusters, size=n, p=p / p.sum())
    x = centres[labels] + rng.normal(scale=spread / np.sqrt(d), size=(n, d)).astype(np.float32) * rng.uniform(0.5, 1.5, size=(n, 1)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def emit(record: dict[str, Any]) -> None:
    """The benchmark's last line: one JSON object."""
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}))

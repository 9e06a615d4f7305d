"""Helpers shared by the embedding / dedup / selection tests (fast: static embedder, cached vectors)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datacraft.beam.transform import stage_transform
from datacraft.core.rows import concat_batches
from datacraft.io.readers import read_all
from datacraft.vectors.embedders import embedding_series, ensure_embeddings

DATA = Path(__file__).parent / "data"


@cache
def rows(name: str) -> pl.DataFrame:
    kept, dropped = read_all(str(DATA / name))
    assert dropped.height == 0
    return kept


@cache
def embedded(name: str, view: str = "instruction") -> pl.DataFrame:
    """A test slice with static-embedder vectors in the `embedding` column."""
    frame = rows(name)
    return frame.with_columns(embedding_series(ensure_embeddings(frame, None, view, kind="static")))


def clustered(n: int, d: int = 32, clusters: int = 20, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(clusters, d))
    x = c[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def run_beam(stage: Any, frame: pl.DataFrame, batch_rows: int = 100) -> tuple[pl.DataFrame, pl.DataFrame, list[dict]]:
    """Run a stage's Beam transform on FnApiRunner; returns (kept, dropped, stats)."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    out: dict[str, list] = {"kept": [], "dropped": [], "stats": []}
    batches = [frame.slice(i, batch_rows) for i in range(0, frame.height, batch_rows)]

    _SINK.clear()
    _SINK.update({"kept": [], "dropped": [], "stats": []})
    with beam.Pipeline(runner=FnApiRunner()) as p:
        res = p | beam.Create(batches) | stage_transform(stage)
        for tag in ("kept", "dropped", "stats"):
            _ = res[tag] | f"Collect{tag}" >> beam.Map(_collect, tag)
    out = {k: list(v) for k, v in _SINK.items()}
    return concat_batches(out["kept"]), concat_batches(out["dropped"]), out["stats"]


_SINK: dict[str, list] = {}


def _collect(item: Any, tag: str) -> None:
    _SINK[tag].append(item)


def assert_ledger(n_in: int, kept: pl.DataFrame, dropped: pl.DataFrame, stats: list[dict] | None = None) -> None:
    """Every input row is kept or dropped exactly once, with a reason."""
    assert kept.height + dropped.height == n_in
    ids = kept["id"].to_list() + dropped["id"].to_list()
    assert len(set(ids)) == n_in
    if dropped.height:
        assert dropped["drop_reason"].null_count() == 0
    if stats is not None:
        assert sum(s.n_in for s in stats) == n_in
        assert sum(s.kept for s in stats) == kept.height
        assert sum(sum(s.dropped.values()) for s in stats) == dropped.height

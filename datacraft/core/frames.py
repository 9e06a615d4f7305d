"""Helpers for computing over one polars batch on every core."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

MIN_ROWS_PER_SLICE = 2048


def parallel_select(frame: pl.DataFrame, exprs: Sequence[pl.Expr]) -> pl.DataFrame:
    """`frame.select(exprs)`, computed on row slices in parallel.

    polars runs the expressions of one `select` in parallel, but a single long chain (normalize,
    regex, hash) over a batch of a few thousand rows runs on one thread; slicing the rows and
    collecting the slices together (`collect_all`) uses every thread of polars' pool. The result
    is identical for row-wise expressions (not for aggregations)."""
    slices = min(pl.thread_pool_size(), frame.height // MIN_ROWS_PER_SLICE)
    if slices < 2:
        return frame.select(exprs)
    step = -(-frame.height // slices)
    lazy = frame.lazy()
    return pl.concat(pl.collect_all([lazy.slice(start, step).select(exprs) for start in range(0, frame.height, step)]))


def in_chunks(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` as one chunk per polars thread (views, no copy). polars runs a string expression
    over a column chunk by chunk on its pool, so a one-chunk batch uses one core per expression:
    measured on the `heuristics` expressions, 65k rows, 2 cores: 3.6 s → 2.6 s wall, same CPU."""
    slices = min(pl.thread_pool_size(), frame.height // MIN_ROWS_PER_SLICE)
    if slices < 2 or frame.n_chunks() >= slices:
        return frame
    step = -(-frame.height // slices)
    return pl.concat([frame.slice(start, step) for start in range(0, frame.height, step)], rechunk=False)

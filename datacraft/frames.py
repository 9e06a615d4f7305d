"""Helpers for computing over one polars batch on every core."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import polars as pl

MIN_ROWS_PER_SLICE = 2048


def parallel_rows(frame: pl.DataFrame, plan: Callable[[pl.LazyFrame], pl.LazyFrame]) -> pl.DataFrame:
    """`plan(frame.lazy()).collect()`, computed on row slices in parallel.

    polars runs the expressions of one `select` in parallel, but a single long chain (normalize,
    regex, hash) over a batch of a few thousand rows runs on one thread; slicing the rows and
    collecting the slices together (`collect_all`) uses every thread of polars' pool. The result
    is identical for row-wise plans (not for aggregations, sorts or joins)."""
    slices = min(pl.thread_pool_size(), frame.height // MIN_ROWS_PER_SLICE)
    if slices < 2:
        return plan(frame.lazy()).collect()
    step = -(-frame.height // slices)
    lazy = frame.lazy()
    return pl.concat(pl.collect_all([plan(lazy.slice(start, step)) for start in range(0, frame.height, step)]))


def parallel_select(frame: pl.DataFrame, exprs: Sequence[pl.Expr]) -> pl.DataFrame:
    """`frame.select(exprs)` on row slices in parallel (see `parallel_rows`)."""
    return parallel_rows(frame, lambda lazy: lazy.select(exprs))

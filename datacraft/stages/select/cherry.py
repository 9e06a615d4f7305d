"""`cherry_select`: Cherry LLM's top-k% selection by IFD (Li et al., NAACL 2024, "From Quantity to
Quality"; reference MingLiiii/Cherry_LLM `cherry_seletion/data_by_IFD.py`; docs/methods.md §3.1).

The rule of the reference code: rows without an IFD (the code skips them: prompt past `max_length`,
no response tokens) and rows with IFD > 1 (the instruction makes the answer harder: misaligned) go
first; of the m rows left, `int(m × sample_rate)` (or `sample_number`) with the highest IFD are kept.
Ties keep the later row, as the reference's ascending sort of (IFD, index) taken from the end; rows
arrive in id order (`canonical_order`), so "later" is the larger id. Where `int(m × sample_rate)`
is 0 the reference's `list[-0:]` keeps every row; here none is kept.

Reads `scores.<score>` (default `ifd`, written by the `ifd` stage). Dropped rows: `ifd_unscorable`,
`ifd_above_max` (detail `ifd=1.0312 > 1`), `cherry_not_selected` (detail `ifd=0.8123 rank 41 of 60`).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field

from datacraft.core.rows import SCORE_PREFIX, with_drop
from datacraft.core.stage import GlobalStage, StageParams, StageResult, score


class CherryParams(StageParams):
    score: str = Field("ifd", description="score to rank by (scores.<score>)")
    sample_rate: float = Field(0.1, gt=0.0, le=1.0, description="fraction of the remaining rows kept (Cherry: 0.1; the paper tests 5-40%)")
    sample_number: int | None = Field(None, ge=1, description="rows to keep; overrides sample_rate (data_by_IFD.py --sample_number)")
    max_ifd: float | None = Field(1.0, description="rows above this are dropped before ranking (Cherry: IFD > 1); null: none")


def cherry_top(values: np.ndarray, sample_rate: float, sample_number: int | None = None, max_ifd: float | None = 1.0) -> np.ndarray:
    """Indices kept by data_by_IFD.py's rule (see the module docstring), in index order."""
    ok = ~np.isnan(values)
    if max_ifd is not None:
        ok &= np.where(ok, values, 0.0) <= max_ifd
    cand = np.flatnonzero(ok)
    n = sample_number if sample_number is not None else int(len(cand) * sample_rate)
    order = cand[np.lexsort((cand, values[cand]))]  # ascending by (value, index)
    return np.sort(order[len(order) - min(n, len(order)) :])


class CherrySelectStage(GlobalStage[CherryParams, None]):
    """Keeps the top `sample_rate` of the rows by IFD, after dropping IFD > 1 (Cherry LLM)."""

    name = "cherry_select"
    Params = CherryParams
    params: CherryParams

    def reads(self) -> set[str]:
        return {score(self.params.score)}

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        p = self.params
        col = SCORE_PREFIX + p.score
        if col not in frame.columns:
            raise ValueError(f"cherry_select: no column {col!r}; run the `ifd` stage first")
        values = frame[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
        missing = np.isnan(values)
        above = ~missing & (values > p.max_ifd) if p.max_ifd is not None else np.zeros(len(values), dtype=bool)
        keep = np.zeros(frame.height, dtype=bool)
        keep[cherry_top(values, p.sample_rate, p.sample_number, p.max_ifd)] = True
        rest = ~(missing | above | keep)
        rank = np.empty(frame.height, dtype=np.int64)
        cand = np.flatnonzero(~(missing | above))
        rank[cand[np.lexsort((-cand, -values[cand]))]] = np.arange(1, len(cand) + 1)
        value = pl.col(col).round(4)
        dropped = [
            with_drop(frame.filter(pl.Series(missing)), self.label, "ifd_unscorable", f"no {p.score}"),
            with_drop(frame.filter(pl.Series(above)), self.label, "ifd_above_max", pl.format("{}={} > {}", pl.lit(p.score), value, pl.lit(p.max_ifd))),
            with_drop(frame.filter(pl.Series(rest)), self.label, "cherry_not_selected",
                      pl.Series([f"{p.score}={values[i]:.4f} rank {rank[i]} of {len(cand)}" for i in np.flatnonzero(rest)], dtype=pl.Utf8)),
        ]
        counters = {"cherry.unscorable": float(missing.sum()), "cherry.above_max": float(above.sum()),
                    "cherry.ranked": float(len(cand)), "cherry.kept": float(keep.sum())}
        return StageResult(kept=frame.filter(pl.Series(keep)), dropped=pl.concat(dropped, how="diagonal_relaxed"), counters=counters)

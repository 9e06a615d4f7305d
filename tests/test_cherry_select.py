"""`cherry_select` (Cherry LLM top-k% by IFD) against an independent transcription of the reference
selection loop (MingLiiii/Cherry_LLM cherry_seletion/data_by_IFD.py), on real rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from datacraft.core.rows import canonical_order, set_scores
from datacraft.io.readers import read_all
from datacraft.stages.registry import build_stage

from .conftest import DATA


def _reference(ifd: list[float | None], sample_rate: float, sample_number: int = 0) -> list[int]:
    """data_by_IFD.py main(): skip unscorable rows and rates > 1, sort (rate, i), take the last n."""
    mean_rate_list = []
    for i, rate in enumerate(ifd):
        if rate is None:  # the reference `continue`s past rows it could not score
            continue
        if rate > 1:
            continue
        mean_rate_list.append((rate, i))
    mean_rate_list = sorted(mean_rate_list)
    if sample_number == 0:
        sample_number = int(len(mean_rate_list) * sample_rate)
    ids = list(range(len(mean_rate_list)))[-sample_number:]
    return sorted(mean_rate_list[k][1] for k in ids)


@pytest.fixture(scope="module")
def rows() -> pl.DataFrame:
    """80 real Alpaca rows in canonical (id) order with IFDs in [0.6, 1.2] (ties from rounding) and 6 unscored."""
    frame, _ = read_all(str(DATA / "alpaca_llamafactory_200.jsonl"))
    frame = canonical_order(frame.head(80))
    rng = np.random.default_rng(7)
    ifd = np.round(rng.uniform(0.6, 1.2, frame.height), 2).tolist()
    for i in (3, 17, 18, 40, 41, 77):
        ifd[i] = None
    ifd[10] = 1.0  # exactly 1 stays in (the reference drops only > 1)
    return set_scores(frame, {"ifd": ifd})


@pytest.mark.parametrize(("rate", "number"), [(0.1, 0), (0.06, 0), (0.4, 0), (0.1, 7), (1.0, 0)])
def test_cherry_select_is_the_reference_rule(rows: pl.DataFrame, rate: float, number: int) -> None:
    ifd = rows["scores.ifd"].to_list()
    params = {"sample_rate": rate, **({"sample_number": number} if number else {})}
    kept, dropped, stats = build_stage("cherry_select", params).run_local([rows])
    want = _reference(ifd, rate, number)
    assert sorted(kept["id"].to_list()) == [rows["id"][i] for i in want]
    assert kept.height + dropped.height == rows.height
    reasons = dict(zip(dropped["id"], dropped["drop_reason"], strict=True))
    assert {rows["id"][i] for i in (3, 17, 18, 40, 41, 77)} == {k for k, r in reasons.items() if r == "ifd_unscorable"}
    above = {rows["id"][i] for i, v in enumerate(ifd) if v is not None and v > 1}
    assert above == {k for k, r in reasons.items() if r == "ifd_above_max"} and len(above) > 5
    assert stats[0].counters["cherry.kept"] == len(want)


def test_ties_keep_the_later_row_and_details_rank(rows: pl.DataFrame) -> None:
    ifd = rows["scores.ifd"].to_list()
    ranked = sorted(v for v in ifd if v is not None and v <= 1)
    n = next(k for k in range(3, 30) if ranked[-k] == ranked[-k - 1])  # a cut through a tie
    kept, dropped, _ = build_stage("cherry_select", {"sample_number": n}).run_local([rows])
    assert sorted(kept["id"].to_list()) == [rows["id"][i] for i in _reference(ifd, 0.0, n)]
    cut = dropped.filter(pl.col("drop_reason") == "cherry_not_selected")
    assert cut["drop_detail"].str.contains(f"rank {n + 1} of {len(ranked)}").any()


def test_zero_rows_when_the_fraction_rounds_to_zero(rows: pl.DataFrame) -> None:
    # the reference's `list[-0:]` would return every row here; the stage keeps none, as documented
    kept, dropped, _ = build_stage("cherry_select", {"sample_rate": 0.001}).run_local([rows])
    assert kept.height == 0 and set(dropped["drop_reason"]) == {"ifd_unscorable", "ifd_above_max", "cherry_not_selected"}

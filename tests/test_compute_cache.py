"""In-process model calls (judge logits, IFD forward passes, reward model) are cached by content:
a second run over the same rows with the same cache makes zero model calls and gives the same scores."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from datacraft.core.stage import RunContext
from datacraft.io.readers import read_all
from datacraft.llm.cache import ComputeCache
from datacraft.stages.registry import build_stage
from datacraft.stages.score import ifd as ifd_module
from datacraft.stages.score import judge as judge_module

from .conftest import DATA


def _rows(n: int) -> pl.DataFrame:
    rows, _ = read_all(str(DATA / "alpaca_eval_gpt4_200.jsonl"))
    return rows.head(n)


class _Counted:
    """Wraps a real function and counts its calls (the model call is still made)."""

    def __init__(self, fn):  # type: ignore[no-untyped-def]
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_compute_cache_keys_by_namespace_and_item(tmp_path) -> None:  # type: ignore[no-untyped-def]
    seen: list[list[str]] = []

    def compute(items: list[str]) -> list[int]:
        seen.append(list(items))
        return [len(x) for x in items]

    a = ComputeCache(str(tmp_path), ["len", 1])
    assert a.map(["x", "yy", "x"], compute) == [1, 2, 1]
    assert a.map(["yy", "zzz"], compute) == [2, 3]
    assert seen == [["x", "yy", "x"], ["zzz"]] and a.pop_counters("t") == {"t.cache_hits": 1.0, "t.computed": 4.0}
    other = ComputeCache(str(tmp_path), ["len", 2])  # another namespace (model, length, …) is another key
    assert other.map(["x"], compute) == [1] and seen[-1] == ["x"]
    assert ComputeCache(None, ["len", 1]).map(["x"], compute) == [1] and seen[-1] == ["x"]  # no cache: computed


def test_complexity_rerun_makes_no_forward_pass(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    frame = _rows(4)
    counted = _Counted(judge_module.last_token_logits)
    monkeypatch.setattr(judge_module, "last_token_logits", counted)
    ctx = RunContext(cache_dir=str(tmp_path / "cache"))
    first, _, stats1 = build_stage("complexity", {"max_field_chars": 200, "batch_size": 4}, context=ctx).run_local([frame])
    assert counted.calls == 1 and stats1[0].counters["judge.computed"] == 4
    second, _, stats2 = build_stage("complexity", {"max_field_chars": 200, "batch_size": 4}, context=ctx).run_local([frame])
    assert counted.calls == 1  # zero model calls on the rerun
    assert stats2[0].counters["judge.cache_hits"] == 4 and "judge.forward_rows" not in stats2[0].counters
    assert np.allclose(first["scores.complexity"].to_numpy(), second["scores.complexity"].to_numpy())
    # a changed prompt (another field cut) is computed again
    build_stage("complexity", {"max_field_chars": 100, "batch_size": 4}, context=ctx).run_local([frame])
    assert counted.calls == 2


@pytest.mark.slow
@pytest.mark.parametrize("reverse", [True, False])
def test_ifd_rerun_makes_no_forward_pass(tmp_path, monkeypatch, reverse: bool) -> None:  # type: ignore[no-untyped-def]
    frame = _rows(3)
    counted = _Counted(ifd_module.target_losses)
    monkeypatch.setattr(ifd_module, "target_losses", counted)
    ctx = RunContext(cache_dir=str(tmp_path / "cache"))
    params = {"max_length": 128, "batch_size": 4, "reverse": reverse}
    first, _, _ = build_stage("ifd", params, context=ctx).run_local([frame])
    assert counted.calls == 1
    second, _, stats = build_stage("ifd", params, context=ctx).run_local([frame])
    assert counted.calls == 1 and stats[0].counters["ifd.cache_hits"] == 3
    assert np.allclose(first["scores.ifd"].to_numpy(), second["scores.ifd"].to_numpy(), equal_nan=True)

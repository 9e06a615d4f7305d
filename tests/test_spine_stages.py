"""The spine's first stages (heuristics, filter, exact_dedup) as pure cores on real rows."""

from __future__ import annotations

import polars as pl
import pytest

from datacraft.core.rows import batch_from_rows, make_row
from datacraft.io.readers import read_all
from datacraft.stages.registry import build_stage
from datacraft.stages.transform.filter import FilterExpressionError, compile_filter

from .conftest import DATA


def _row(instruction: str, response: str, **kw) -> dict:
    return make_row([{"role": "user", "content": instruction}, {"role": "assistant", "content": response}], **kw)


def test_heuristic_scores_on_known_rows() -> None:
    batch = batch_from_rows(
        [
            _row("Name a color.", "Blue is a color.", id="a"),
            _row("Tell me a joke", "As an AI language model, I cannot tell jokes.", id="b"),
            _row("Repeat", "same\nsame\nsame\nother", id="c"),
            _row("Code", "x=1;y=2;{}", id="d"),
        ]
    )
    out = build_stage("heuristics").process(batch).kept
    get = lambda name: out[f"scores.{name}"].to_list()  # noqa: E731
    assert get("length.instruction") == [3, 4, 1, 1]
    assert get("length.response") == [4, 9, 4, 1]
    assert get("refusal") == [0, 1, 0, 0]
    assert get("repetition")[2] == pytest.approx(1 - 2 / 4)
    assert get("lexical_diversity")[0] == pytest.approx(1.0)
    assert get("alpha_ratio")[3] < 0.5 < get("alpha_ratio")[0]
    assert get("response_ratio")[0] == pytest.approx(4 / 3)


def test_filter_drops_with_the_failed_condition() -> None:
    kept, _ = read_all(str(DATA / "fastchat_dummy_500.jsonl"))
    scored = build_stage("heuristics").process(kept).kept
    stage = build_stage("filter", {"where": ["refusal == 0", "length.response >= 8"]})
    result = stage.process(scored)
    assert result.kept.height + result.dropped.height == scored.height
    assert (result.kept["scores.length.response"] >= 8).all() and (result.kept["scores.refusal"] == 0).all()
    reasons = set(result.dropped["drop_reason"])
    assert reasons <= {"refusal == 0", "length.response >= 8"} and reasons
    # the detail names the failed condition's values, row by row
    for row in result.dropped.iter_rows(named=True):
        name = "refusal" if row["drop_reason"] == "refusal == 0" else "length.response"
        assert row["drop_detail"] == f"{name}={float(row[f'scores.{name}'])}"
    assert result.dropped.filter(pl.col("drop_reason") == "refusal == 0")["drop_detail"].unique().to_list() == ["refusal=1.0"]


def test_filter_detail_lists_every_value_and_missing_scores() -> None:
    frame = pl.DataFrame({"id": ["a", "b", "c", "d"], "task": ["x", "y", "x", "x"], "scores.q": [1.0, 4.0, None, 3.0], "scores.r": [2.5, 0.5, 9.0, 2.0]})
    result = build_stage("filter", {"where": ["q + r > 4", "task in ['x']"]}).process(frame)
    assert result.kept["id"].to_list() == ["d"]
    details = dict(zip(result.dropped["id"], zip(result.dropped["drop_reason"], result.dropped["drop_detail"], strict=True), strict=True))
    assert details.pop("b")[0] == "task in ['x']"
    assert details == {"a": ("q + r > 4", "q=1.0, r=2.5"), "c": ("q + r > 4", "q=missing, r=9.0")}
    assert set(result.dropped["drop_stage"]) == {"filter"}


def test_filter_language() -> None:
    frame = pl.DataFrame({"scores.q": [1.0, 4.0, None], "task": ["a", "b", "a"], "scores.length.response": [30.0, 5.0, 40.0]})
    assert frame.select(compile_filter("q >= 3 or length.response > 20"))[:, 0].to_list() == [True, True, True]
    assert frame.select(compile_filter("q >= 3 and task in ['b']"))[:, 0].to_list() == [False, True, False]
    assert frame.select(compile_filter("not (2 < q < 5)"))[:, 0].to_list() == [True, False, False]
    with pytest.raises(FilterExpressionError):
        compile_filter("__import__('os').system('x')")


def test_exact_dedup_keeps_the_best_row_of_each_group() -> None:
    kept, _ = read_all(str(DATA / "fastchat_dummy_500.jsonl"))
    result = build_stage("exact_dedup", {"text": "instruction"}).process_all(kept)
    groups = kept.with_columns(pl.col("messages").list.first().struct.field("content").str.to_lowercase().str.replace_all(r"[^\w\s]", "").str.replace_all(r"\s+", " ").str.strip_chars().alias("k"))
    assert result.kept.height == groups["k"].n_unique()
    assert result.kept.height + result.dropped.height == kept.height
    assert result.dropped["drop_detail"].str.starts_with("duplicate of ").all()
    # the kept row of each group is its longest response
    winners = set(result.dropped["drop_detail"].str.replace("duplicate of ", ""))
    assert winners <= set(result.kept["id"])
    # ranking by a score instead
    scored = kept.with_columns(pl.Series("scores.q", range(kept.height), dtype=pl.Float64))
    by_score = build_stage("exact_dedup", {"text": "instruction", "by": "q"}).process_all(scored)
    best = scored.join(groups.select("id", "k"), on="id").group_by("k").agg(pl.col("id").sort_by("scores.q").last())
    assert set(by_score.kept["id"]) == set(best["id"])


def test_exact_dedup_is_order_independent() -> None:
    kept, _ = read_all(str(DATA / "fastchat_dummy_500.jsonl"))
    stage = build_stage("exact_dedup", {"text": "conversation"})
    a = stage.process_all(kept).kept["id"].sort()
    b = stage.process_all(kept.sort("id", descending=True)).kept["id"].sort()  # (polars 2.1 breaks reverse() of all-null struct lists)
    assert a.equals(b)

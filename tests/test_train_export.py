"""TRL export, Hub-layout shards, seeded splits, decontamination (no model; fast)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from datacraft.core.rows import batch_from_rows, concat_batches, make_row
from datacraft.stages.handoff.decontaminate import DecontaminateStage, EvalIndex
from datacraft.stages.handoff.export import (
    export_frame,
    split_frame,
    to_dpo,
    to_sft,
)
from datacraft.stages.registry import build_stage
from tests._train_fixtures import read_rows


def test_sft_messages_and_prompt_completion_on_real_rows() -> None:
    rows = read_rows("alpaca_llamafactory_200.jsonl")
    sft, dropped = to_sft(rows)
    assert sft.height == rows.height and dropped.height == 0
    assert sft.columns[:2] == ["id", "messages"]
    first = sft.row(0, named=True)["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert first[-1]["content"] == rows.row(0, named=True)["messages"][-1]["content"]

    pc, _ = to_sft(rows, "prompt_completion")
    row = pc.row(0, named=True)
    assert [m["role"] for m in row["prompt"]] == ["user"] and [m["role"] for m in row["completion"]] == ["assistant"]


def test_sft_drops_rows_without_answer_and_folds_preference_rows() -> None:
    rows = read_rows("alpaca_llamafactory_200.jsonl").head(5)
    pref = read_rows("llamafactory_dpo_60.jsonl").head(3)
    no_answer = batch_from_rows([make_row([{"role": "user", "content": "Only a question?"}], id="q-only")])
    sft, dropped = to_sft(concat_batches([rows, pref, no_answer]))
    assert sft.height == 8
    assert dropped["id"].to_list() == ["q-only"] and dropped["drop_reason"].to_list() == ["no_response"]
    folded = sft.filter(pl.col("id") == pref["id"][0]).row(0, named=True)["messages"]
    assert folded[-1]["content"] == pref.row(0, named=True)["chosen"][0]["content"]


def test_dpo_drops_invalid_pairs_with_reasons() -> None:
    pref = read_rows("hh_rlhf_harmless_150.jsonl").head(20)
    r = pref.row(0, named=True)
    bad = batch_from_rows([
        make_row(r["messages"], chosen=r["chosen"], rejected=r["chosen"], id="same"),
        make_row(r["messages"], chosen=[{"role": "assistant", "content": " \n"}], rejected=r["rejected"], id="empty-chosen"),
        make_row(r["messages"], chosen=r["chosen"], rejected=[{"role": "assistant", "content": ""}], id="empty-rejected"),
        make_row([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], id="plain"),
    ])
    out, dropped = to_dpo(concat_batches([pref, bad]))
    assert out.height == 20 and out.columns[:4] == ["id", "prompt", "chosen", "rejected"]
    reasons = dict(zip(dropped["id"].to_list(), dropped["drop_reason"].to_list(), strict=True))
    assert reasons == {
        "same": "chosen_equals_rejected", "empty-chosen": "empty_chosen", "empty-rejected": "empty_rejected", "plain": "not_preference",
    }
    assert out.height + dropped.height == pref.height + bad.height


def test_split_is_seeded_and_disjoint() -> None:
    rows = read_rows("alpaca_llamafactory_200.jsonl")
    a, b, c = split_frame(rows, 0.1, seed=1), split_frame(rows, 0.1, seed=1), split_frame(rows, 0.1, seed=2)
    assert a["test"]["id"].to_list() == b["test"]["id"].to_list() != c["test"]["id"].to_list()
    assert a["test"].height == 20 and a["train"].height == 180
    assert not set(a["test"]["id"]) & set(a["train"]["id"])
    assert split_frame(rows, 15, seed=0)["test"].height == 15
    with pytest.raises(ValueError):
        split_frame(rows, 200)


def test_export_writes_hub_layout_shards(tmp_path: Path) -> None:
    import datasets

    rows = concat_batches([read_rows("alpaca_llamafactory_200.jsonl"), read_rows("llamafactory_dpo_60.jsonl")])
    res = export_frame(rows, tmp_path, test_size=0.1, seed=0, shard_rows=100)
    assert res.files["sft"]["train"] == ["sft/train-00000-of-00002.parquet", "sft/train-00001-of-00002.parquet"]
    assert res.files["dpo"] == {"train": ["dpo/train-00000-of-00001.parquet"], "test": ["dpo/test-00000-of-00001.parquet"]}
    assert res.rows == {"sft": {"train": 180, "test": 20}, "dpo": {"train": 54, "test": 6}}
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "dpo" / "train-*.parquet"), split="train")
    row = ds[0]  # TRL's conversational preference shape: lists of {role, content}
    assert set(ds.column_names) >= {"prompt", "chosen", "rejected"}
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"


def test_decontamination_removes_planted_eval_items(tmp_path: Path) -> None:
    train = read_rows("alpaca_llamafactory_200.jsonl")
    evals = read_rows("alpaca_eval_gpt4_200.jsonl").head(10)
    # plant 5 eval prompts, lightly edited (case, punctuation, a prefix), in the training rows
    planted = batch_from_rows([
        make_row([{"role": "user", "content": "Please answer: " + r["messages"][0]["content"].upper().replace(",", "")},
                  {"role": "assistant", "content": "some answer"}], id=f"planted-{i}")
        for i, r in enumerate(evals.head(5).iter_rows(named=True))
    ])
    stage = build_stage("decontaminate", {"eval_path": str(Path(__file__).parent / "data" / "alpaca_eval_gpt4_200.jsonl")})
    assert isinstance(stage, DecontaminateStage)
    kept, dropped, stats = stage.run_local([concat_batches([train, planted])])
    assert sorted(dropped["id"].to_list()) == [f"planted-{i}" for i in range(5)]
    assert kept.height == train.height and set(dropped["drop_reason"]) == {"contaminated"}
    assert "gpt4_1106_preview:" in dropped["drop_detail"][0]
    assert stats[0].counters["decontaminate.removed"] == 5
    matches = stats[0].extras["decontamination"]["matches"]
    assert {m["id"] for m in matches} == set(dropped["id"]) and all(m["overlap"] >= 0.5 for m in matches)


def test_eval_index_short_texts_and_threshold() -> None:
    index = EvalIndex.build([("e1", "What is the capital of France?"), ("e2", "word " * 50)], n=8)
    hit = index.best_match("what is the capital of france")
    assert hit is not None and index.ids[hit[0]] == "e1" and hit[1] == 1.0
    assert index.best_match("Name three birds that cannot fly.") is None


def test_short_eval_item_inside_a_longer_row() -> None:
    index = EvalIndex.build([("short", "How do I bake bread?")], n=8)
    hit = index.best_match("Question from a user: how do I bake bread? Please be brief.")
    assert hit is not None and index.ids[hit[0]] == "short" and hit[1] == 1.0

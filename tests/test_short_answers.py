"""The default filter keeps a correct short answer to a short-answer instruction ("fog.", "3") and
still drops a cut-off answer to a long-form one (real rows of tests/data through configs/filter.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from datacraft.io.readers import read_all
from datacraft.pipeline.config import load_config
from datacraft.pipeline.run import run_config
from datacraft.stages.registry import build_stage

from .conftest import DATA, ROOT

CORPUS = DATA / "alpaca_llamafactory_200.jsonl"
FOG, CLAIM, CREPES = "llamafactory_alpaca_en_demo:29", "llamafactory_alpaca_en_demo:35", "llamafactory_alpaca_en_demo:0"


def test_short_answer_ok_flags_short_answer_instructions() -> None:
    rows, _ = read_all(str(CORPUS))
    scored = build_stage("heuristics").process(rows).kept.select("id", "scores.short_answer_ok", "scores.length.response")
    by_id = {r["id"]: r for r in scored.iter_rows(named=True)}
    for rid in (FOG, CLAIM):  # "fog." (fill in the blank), "3" (true / false / uncertain as 1 / 2 / 3)
        assert by_id[rid]["scores.short_answer_ok"] == 1.0 and by_id[rid]["scores.length.response"] < 3
    assert by_id[CREPES]["scores.short_answer_ok"] == 0.0  # "Describe a process of making crepes."
    # every response under 3 words in this corpus answers an instruction that asks for a short answer
    short = scored.filter(pl.col("scores.length.response") < 3)
    assert short.height == 8 and short["scores.short_answer_ok"].sum() == 8
    assert scored["scores.short_answer_ok"].sum() <= 0.1 * scored.height  # most instructions are long-form: not flagged


def test_default_filter_keeps_short_answers_and_drops_cut_off_ones(tmp_path: Path) -> None:
    # one extra row: the real crepes instruction with its answer cut to two words (a truncated generation)
    crepes = json.loads(CORPUS.read_text().splitlines()[0])
    crepes.update(id="crepes-cut", output="Making crepes")
    corpus = tmp_path / "in.jsonl"
    corpus.write_text(CORPUS.read_text() + json.dumps(crepes) + "\n")
    out = tmp_path / "out"
    report = run_config(load_config(ROOT / "configs" / "filter.yaml", [f"input.path={corpus}", f"output.path={out}"]))
    kept = set(pl.read_parquet(str(out / "data" / "*.parquet"))["id"].to_list())
    assert {FOG, CLAIM, CREPES} <= kept
    assert "crepes-cut" not in kept
    drops = {s["name"]: s["dropped"] for s in report["stages"]}["filter"]
    length_rule = next(reason for reason in drops if "short_answer_ok" in reason)
    assert drops[length_rule] == 1  # only the cut-off answer (the other drops are refusals)

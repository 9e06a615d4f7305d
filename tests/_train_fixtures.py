"""A finished run folder built by hand (the layout `datacraft run CONFIG -o OUT` writes), from real rows.

    OUT/data/train-00000-of-00001.parquet   kept rows, written layout (scores packed)
    OUT/dropped/heuristics-00000.jsonl      dropped rows with drop_stage/drop_reason/drop_detail
    OUT/config.yaml                         resolved config
    OUT/report.json                         {"name","config_hash","input","output","started","seconds","stages":[…]}
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from datacraft.core.rows import (
    batch_from_rows,
    concat_batches,
    make_row,
    response_expr,
    row_to_output,
    set_scores,
    to_output_frame,
    with_drop,
)
from datacraft.io.readers import read_all

DATA = Path(__file__).parent / "data"
CONFIG_YAML = """name: fixture
input: {path: tests/data/alpaca_llamafactory_200.jsonl}
stages:
  - name: heuristics
  - name: filter
    where: "length.response >= 40"
output: {path: OUT}
"""


def make_run_folder(out: Path, with_preference: bool = True) -> dict[str, int]:
    """Write a run folder to `out`; returns the counts it holds (sft rows, dpo rows, bad pairs)."""
    sft, _ = read_all(str(DATA / "alpaca_llamafactory_200.jsonl"))
    sft = set_scores(sft, {"length": response_expr().str.len_chars(), "quality": (response_expr().str.len_chars() % 97) / 10.0})
    short = sft["scores.length"] < 40
    kept_sft, dropped = sft.filter(~short), with_drop(sft.filter(short), "filter", "below_threshold", "length.response < 40")
    # one synthesized row with lineage, so the card has lineage statistics
    parent = kept_sft.row(0, named=True)
    child = make_row(
        [{"role": "user", "content": parent["messages"][0]["content"] + " Answer in two sentences."},
         {"role": "assistant", "content": "A short, two-sentence answer. It keeps the essentials."}],
        parent_ids=[parent["id"]], method="reflection:instruction", scores={"length": 54.0, "quality": 3.0},
    )
    kept = concat_batches([kept_sft, batch_from_rows([child])])
    n_pref, n_bad = 0, 0
    if with_preference:
        pref, _ = read_all(str(DATA / "llamafactory_dpo_60.jsonl"))
        pref = pref.head(30)
        first = pref.row(0, named=True)
        bad = batch_from_rows([
            make_row(first["messages"], chosen=first["chosen"], rejected=first["chosen"], id="same-pair"),
            make_row(first["messages"], chosen=[{"role": "assistant", "content": "  "}], rejected=first["rejected"], id="empty-chosen"),
        ])
        kept = concat_batches([kept, pref, bad])
        n_pref, n_bad = pref.height, bad.height
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "dropped").mkdir(parents=True, exist_ok=True)
    to_output_frame(kept).write_parquet(out / "data" / "train-00000-of-00001.parquet")
    with open(out / "dropped" / "filter-00000.jsonl", "w", encoding="utf-8") as fh:
        for row in dropped.iter_rows(named=True):
            fh.write(json.dumps(row_to_output(row), ensure_ascii=False) + "\n")
    (out / "config.yaml").write_text(CONFIG_YAML, encoding="utf-8")
    n_in = sft.height + n_pref + n_bad
    report = {
        "name": "fixture",
        "config_hash": "0123456789abcdef",
        "input": str(DATA / "alpaca_llamafactory_200.jsonl"),
        "output": str(out),
        "started": "2025-01-01T00:00:00Z",
        "seconds": 1.5,
        "stages": [
            {"name": "read", "in": n_in, "kept": n_in, "created": 0, "dropped": {}, "seconds": 0.1, "counters": {}, "extras": {}},
            {"name": "heuristics", "in": n_in, "kept": n_in, "created": 0, "dropped": {}, "seconds": 0.2, "counters": {}, "extras": {}},
            {"name": "filter", "in": n_in, "kept": n_in - dropped.height, "created": 0,
             "dropped": {"below_threshold": dropped.height}, "seconds": 0.1, "counters": {}, "extras": {}},
            {"name": "reflection", "in": n_in - dropped.height, "kept": kept.height, "created": 1, "dropped": {},
             "seconds": 0.3, "counters": {"llm.requests": 1.0}, "extras": {}},
        ],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return {"sft": kept_sft.height + 1, "dpo": n_pref, "bad_pairs": n_bad, "kept": kept.height}


def read_rows(name: str) -> pl.DataFrame:
    kept, _ = read_all(str(DATA / name))
    return kept

"""The `write` stage through a real pipeline: a snapshot of exactly the rows that reach it, in the
chosen format, while every row goes on to the next stage unchanged."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from datacraft.io.readers import read_all
from datacraft.io.writers import to_output_frame
from datacraft.pipeline.config import load_config
from datacraft.pipeline.run import run_config
from datacraft.stages.registry import build_stage

from .conftest import DATA

CORPUS = DATA / "selfinstruct_60.jsonl"
WHERE = "length.response >= 20"


def _read(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path, infer_schema_length=None)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_write_snapshots_the_rows_it_sees_and_passes_them_on(tmp_path: Path, fmt: str) -> None:
    snap, out = tmp_path / "snap", tmp_path / "out"
    config = load_config(data={
        "name": "write_test",
        "input": {"path": str(CORPUS), "batch_size": 25},
        "stages": [{"name": "heuristics"}, {"name": "write", "path": str(snap), "format": fmt}, {"name": "filter", "where": [WHERE]}],
        "output": {"path": str(out), "format": "parquet"},
    })
    report = run_config(config)
    by_name = {s["name"]: s for s in report["stages"]}
    assert (by_name["write"]["in"], by_name["write"]["kept"], by_name["write"]["dropped"]) == (60, 60, {})
    assert by_name["filter"]["in"] == 60 and by_name["filter"]["kept"] == 40

    # the rows as the write stage saw them: scored by `heuristics`, not yet filtered
    rows, _ = read_all(str(CORPUS))
    scored = build_stage("heuristics").process(rows).kept
    expected = to_output_frame(scored).sort("id")
    parts = sorted(snap.iterdir())
    assert [p.suffix for p in parts] == [f".{fmt}"] * 3  # one part a batch of 25, 25, 10
    assert sorted(_read(p).height for p in parts) == [10, 25, 25]
    snapshot = pl.concat([_read(p) for p in parts], how="diagonal_relaxed").sort("id")
    assert snapshot["id"].to_list() == expected["id"].to_list()
    assert snapshot["scores"].struct.unnest().equals(expected["scores"].struct.unnest())
    assert snapshot["messages"].to_list() == expected["messages"].to_list()
    if fmt == "parquet":
        assert_frame_equal(snapshot, expected)

    # ... and passed on unchanged: the output is what `filter` makes of the scored rows
    kept = build_stage("filter", {"where": [WHERE]}).process(scored).kept
    output = pl.read_parquet(str(out / "data" / "*.parquet")).sort("id")
    assert output.height == 40
    assert_frame_equal(output, to_output_frame(kept).sort("id"))

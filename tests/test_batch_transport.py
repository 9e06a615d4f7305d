"""How batches travel and land: the Beam coder (Arrow IPC, by reference in-process), the shard
writer and its finalizer, and the overlapped stage DoFn keeping input order."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import polars as pl
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from datacraft.beam import coder
from datacraft.beam.transform import KEPT, StageTransform
from datacraft.core.rows import from_output_frame
from datacraft.io.readers import ReadOptions, read_all
from datacraft.io.writers import ShardWriter, finalize_shards
from datacraft.stages.registry import build_stage

from .conftest import DATA


@pytest.fixture(scope="module")
def rows() -> pl.DataFrame:
    kept, _ = read_all(str(DATA / "alpaca_llamafactory_200.jsonl"), ReadOptions())
    return build_stage("heuristics").process(kept).kept


def test_coder_round_trips_frames_alone_and_nested(rows: pl.DataFrame) -> None:
    batch_coder = beam.coders.registry.get_coder(object)
    assert isinstance(batch_coder, coder.BatchCoder)
    for value in (rows, (7, rows.head(3)), [rows.head(2), rows.tail(2)], {"n": 1}, "text", None):
        back = batch_coder.decode(batch_coder.encode(value))
        if isinstance(value, pl.DataFrame):
            assert back.equals(value) and back.schema == value.schema
        elif isinstance(value, (tuple, list)):
            assert type(back) is type(value) and all(b.equals(v) if isinstance(v, pl.DataFrame) else b == v for b, v in zip(back, value, strict=True))
        else:
            assert back == value
    # Arrow IPC (LZ4), not pickle: far smaller than the frame in memory for text rows
    assert len(batch_coder.encode(rows)) < rows.estimated_size()


def test_size_estimates_never_encode_a_frame(rows: pl.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam samples element sizes on every output; that must not serialize a batch."""
    impl = beam.coders.registry.get_coder(object).get_impl()

    def forbidden(frame: pl.DataFrame) -> bytes:
        raise AssertionError("size estimation encoded a frame")

    monkeypatch.setattr(coder, "encode_frame", forbidden)
    size, observables = impl.get_estimated_size_and_observables((1, rows))
    assert observables == [] and size >= rows.estimated_size()
    assert impl.estimate_size([rows, rows]) >= 2 * rows.estimated_size()


def test_frames_by_reference_only_inside_a_run(rows: pl.DataFrame) -> None:
    batch_coder = beam.coders.registry.get_coder(object)
    with coder.frames_by_reference():
        encoded = batch_coder.encode(rows)
        assert len(encoded) < 16  # a key, not the rows
        assert batch_coder.decode(encoded) is rows
    with pytest.raises(RuntimeError, match="by reference"):
        batch_coder.decode(encoded)  # the table is emptied when the run ends
    assert batch_coder.decode(batch_coder.encode(rows)).equals(rows)  # outside a run: bytes again


def test_shard_writer_rolls_files_and_finalizer_names_them(tmp_path: Path, rows: pl.DataFrame) -> None:
    writer = ShardWriter(str(tmp_path / "parts"), "parquet", shard_rows=70)
    for start in range(0, rows.height, 45):  # batches cross file boundaries
        writer.write(rows.slice(start, 45))
    files = writer.close()
    assert [n for _, n in files] == [70, 70, 60]
    names = finalize_shards(files, str(tmp_path / "data"), "train", "parquet", 70)
    assert [Path(n).name for n in names] == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    back = from_output_frame(pl.concat([pl.read_parquet(n) for n in names]))
    assert back["id"].to_list() == rows["id"].to_list()  # one writer keeps the batch order
    assert not any((tmp_path / "parts").iterdir())  # renamed, not copied


def test_shard_writer_schema_change_and_jsonl_and_empty(tmp_path: Path, rows: pl.DataFrame) -> None:
    writer = ShardWriter(str(tmp_path / "p"), "parquet", shard_rows=1000)
    writer.write(rows.head(50))
    writer.write(rows.slice(50, 50).drop("scores.refusal"))  # a score these rows lack: a new file
    files = writer.close()
    assert len(files) == 2
    names = finalize_shards(files, str(tmp_path / "d"), "train", "parquet", 1000)
    merged = pl.read_parquet(names[0])
    assert len(names) == 1 and merged.height == 100  # unified into one shard, missing scores null
    assert merged["scores"].struct.field("refusal").null_count() == 50

    jsonl = ShardWriter(str(tmp_path / "j"), "jsonl", shard_rows=1000)
    jsonl.write(rows.head(30))
    written = finalize_shards(jsonl.close(), str(tmp_path / "jd"), "dropped", "jsonl", 1000)
    assert pl.read_ndjson(written[0]).height == 30
    assert finalize_shards([], str(tmp_path / "e"), "train", "parquet", 10) == [str(tmp_path / "e" / "train-00000-of-00001.parquet")]
    empty = pl.read_parquet(tmp_path / "e" / "train-00000-of-00001.parquet")  # no rows, but the row columns
    assert empty.height == 0 and {"id", "messages", "lineage", "meta"} <= set(empty.columns)
    assert finalize_shards([], str(tmp_path / "e2"), "dropped", "jsonl", 10, write_empty=False) == []


def test_overlapped_stage_keeps_input_order_and_ledger(rows: pl.DataFrame) -> None:
    batches = [rows.slice(i, 20) for i in range(0, rows.height, 20)]
    stage = build_stage("filter", {"where": "length.response > 3"})
    expected = [b.filter(pl.col("scores.length.response") > 3)["id"].to_list() for b in batches]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        outs = p | beam.Create(batches, reshuffle=False) | StageTransform(stage)
        ids = outs[KEPT] | beam.Map(lambda b: b["id"].to_list())
        assert_that(ids | beam.combiners.ToList(), equal_to([[i for i in expected if i]]))

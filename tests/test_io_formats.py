"""Readers, formats and writers on real rows, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from datacraft.core.rows import (
    from_output_frame,
    instruction_expr,
    response_expr,
    row_id_for,
    to_output_frame,
)
from datacraft.io.formats import FormatDetectionError, detect_format, from_row, to_row
from datacraft.io.readers import ReadOptions, plan_reads, read_all, read_task, sniff_format
from datacraft.io.writers import merge_parts, write_part

from .conftest import DATA


def _records(name: str, n: int | None = None) -> list[dict]:
    lines = [x for x in (DATA / name).read_text(encoding="utf-8").split("\n") if x.strip()]
    return [json.loads(line) for line in lines[:n]]


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_alpaca_roundtrip_keeps_instruction_and_input() -> None:
    for record in _records("alpaca_llamafactory_200.jsonl", 50):
        row = to_row(record, "alpaca")
        assert row["id"] == record["id"]
        back = from_row(row, "alpaca")
        assert (back["instruction"], back["input"], back["output"]) == (record["instruction"], record["input"], record["output"])


def test_sharegpt_messages_completion_preference_roundtrip() -> None:
    alpaca = _records("alpaca_llamafactory_200.jsonl", 5)
    for r in alpaca:
        share = {"id": r["id"], "conversations": [{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}]}
        assert detect_format(share) == "sharegpt"
        assert from_row(to_row(share, "sharegpt"), "sharegpt")["conversations"] == share["conversations"]
        msgs = {"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
        assert from_row(to_row(msgs, "messages"), "messages")["messages"] == msgs["messages"]
        comp = {"prompt": r["instruction"], "completion": r["output"]}
        back = from_row(to_row(comp, "completion"), "completion")
        assert (back["prompt"], back["completion"]) == (comp["prompt"], comp["completion"])
    for r in _records("hh_rlhf_harmless_150.jsonl", 5):
        assert detect_format(r) == "preference"
        back = from_row(to_row(r, "preference"), "preference")
        assert (back["prompt"], back["chosen"], back["rejected"]) == (r["prompt"], r["chosen"], r["rejected"])


def test_content_hash_id_is_stable_and_content_sensitive() -> None:
    row = to_row({"instruction": "Say hi", "output": "hi"}, "alpaca")
    again = to_row({"instruction": "Say hi", "output": "hi"}, "alpaca")
    other = to_row({"instruction": "Say hi", "output": "hello"}, "alpaca")
    assert row["id"] == again["id"] == row_id_for(row["messages"])
    assert row["id"] != other["id"]


def test_text_views_on_real_rows() -> None:
    kept, dropped = read_all(str(DATA / "alpaca_llamafactory_200.jsonl"))
    assert kept.height == 200 and dropped.height == 0
    first = _records("alpaca_llamafactory_200.jsonl", 1)[0]
    views = kept.head(1).select(instruction_expr().alias("i"), response_expr().alias("r")).row(0)
    assert views[0].startswith(first["instruction"]) and views[1] == first["output"]
    pref, _ = read_all(str(DATA / "hh_rlhf_harmless_150.jsonl"))
    assert pref.select(response_expr())[:, 0].to_list()[0] == _records("hh_rlhf_harmless_150.jsonl", 1)[0]["chosen"]


def test_gzip_and_byte_range_splits_read_every_line_once(tmp_path: Path) -> None:
    records = _records("t0_tasks_720.jsonl")
    plain = _write_jsonl(tmp_path / "t0.jsonl", records)
    gz = tmp_path / "t0.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    tasks = plan_reads(str(plain), split_bytes=50_000)
    assert len(tasks) > 5
    ids = [i for t in tasks for kept, _ in read_task(t, ReadOptions(batch_size=100)) for i in kept["id"].to_list()]
    assert sorted(ids) == sorted(r["id"] for r in records)
    gz_kept, _ = read_all(str(gz))
    assert sorted(gz_kept["id"].to_list()) == sorted(ids)


@pytest.mark.parametrize("block_bytes", [97, 4096, 1 << 20])
def test_block_reader_keeps_line_numbers_across_ranges_and_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int) -> None:
    """Byte ranges and read blocks cut lines anywhere: every line is read once and a bad line's
    file:line is still exact (blank lines, CRLF endings and a last line without newline included)."""
    import datacraft.io.readers as readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", block_bytes)
    good = _records("alpaca_llamafactory_200.jsonl", 60)
    lines, bad_lines = [], []
    for i, record in enumerate(good):
        if i % 17 == 5:
            lines.append(b"")  # blank line: skipped, but counted
        if i % 13 == 7:
            lines.append(b'{"instruction": "broken"')
            bad_lines.append(len(lines))
        lines.append(json.dumps(record).encode() + (b"\r" if i % 2 else b""))
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines))  # no newline after the last line
    tasks = plan_reads(str(path), split_bytes=1500)
    assert len(tasks) > 5
    kept_ids, malformed = [], []
    for task in tasks:
        for kept, dropped in read_task(task, ReadOptions(batch_size=7)):
            kept_ids += kept["id"].to_list()
            if dropped.height:
                malformed += [int(d.split(": ")[0].rsplit(":", 1)[1]) for d in dropped["drop_detail"].to_list()]
    assert sorted(kept_ids) == sorted(g["id"] for g in good)
    assert sorted(malformed) == bad_lines


def test_bad_input_is_dropped_with_file_line_and_field(tmp_path: Path) -> None:
    good = _records("alpaca_llamafactory_200.jsonl", 3)
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(good[0]).encode(),
        b'{"instruction": "broken", "output": ',  # malformed JSON, line 2
        json.dumps({"instruction": "no answer", "input": "", "output": ""}).encode(),  # empty response, line 3
        json.dumps({"instruction": "", "input": "", "output": "x"}).encode(),  # empty instruction, line 4
        b'{"instruction": "caf\xe9", "output": "latin-1 bytes"}',  # not UTF-8, line 5
        json.dumps({"foo": 1, "bar": 2}).encode(),  # unknown format, line 6
        json.dumps({"instruction": "huge", "output": "x" * 5_000_000}).encode(),  # 5 MB row, line 7
        json.dumps({"instruction": 3, "output": "typed wrong"}).encode(),  # wrong type, line 8
        json.dumps(good[1]).encode(),
        b"[1, 2]",  # not an object, line 10
        json.dumps(good[2]).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    kept, dropped = read_all(str(path), ReadOptions(max_row_chars=1_000_000))
    assert kept["id"].to_list() == [g["id"] for g in good]
    assert dropped.height == 8
    details = " | ".join(dropped["drop_detail"].to_list())
    reasons = dict(zip(dropped["drop_detail"].map_elements(lambda d: d.split(": ")[0].rsplit(":", 1)[1], return_dtype=pl.Utf8), dropped["drop_reason"], strict=True))
    assert reasons == {"2": "malformed", "3": "empty_text", "4": "empty_text", "5": "malformed", "6": "unknown_format", "7": "too_large", "8": "bad_record", "10": "malformed"}
    assert f"{path}:2: invalid JSON" in details
    assert "field 'output'" in details and "field 'instruction'" in details and "field 'instruction': expected a string" in details
    assert "not UTF-8" in details and "['bar', 'foo']" in details


def test_sniff_format_errors_list_the_fields(tmp_path: Path) -> None:
    unknown = _write_jsonl(tmp_path / "u.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(FormatDetectionError, match=r"\['answer', 'question'\]"):
        sniff_format(str(unknown))
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(FormatDetectionError, match="no JSON object"):
        sniff_format(str(empty))
    notjson = tmp_path / "n.jsonl"
    notjson.write_text("this is not json\nneither is this\n")
    with pytest.raises(FormatDetectionError, match="no JSON object"):
        sniff_format(str(notjson))
    assert sniff_format(str(DATA / "llamafactory_dpo_60.jsonl")) == "preference"


def test_mixed_file_converts_each_row_by_its_own_format(tmp_path: Path) -> None:
    alpaca = _records("alpaca_llamafactory_200.jsonl", 2)
    share = {"id": "s1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
    path = _write_jsonl(tmp_path / "mixed.jsonl", [*alpaca, share, {"text": "plain"}])
    kept, dropped = read_all(str(path))
    assert set(kept["id"]) == {alpaca[0]["id"], alpaca[1]["id"], "s1"}
    assert dropped["drop_reason"].to_list() == ["unknown_format"]


def test_parquet_shards_and_datasets_folder_roundtrip(tmp_path: Path) -> None:
    kept, _ = read_all(str(DATA / "t0_tasks_720.jsonl"))
    kept = kept.with_columns(pl.lit(1.5).alias("scores.quality"))
    parts = [write_part(kept.slice(i, 100), str(tmp_path / "parts"), "parquet")[0] for i in range(0, kept.height, 100)]
    names = merge_parts(parts, str(tmp_path / "data"), "train", "parquet", shard_rows=300)
    assert [Path(n).name for n in names] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    back, dropped = read_all(str(tmp_path / "data"))
    assert dropped.height == 0 and back.height == 720
    assert back["scores.quality"].to_list() == [1.5] * 720
    assert sorted(back["id"]) == sorted(kept["id"])
    import datasets

    ds = datasets.load_dataset("parquet", data_files=names, split="train")
    assert ds.num_rows == 720 and "scores" in ds.column_names
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dsfolder"))
    from_disk, _ = read_all(str(tmp_path / "dsfolder"))
    assert sorted(from_disk["id"]) == sorted(kept["id"])


def test_output_frame_roundtrip_preserves_rows() -> None:
    kept, _ = read_all(str(DATA / "llamafactory_dpo_60.jsonl"))
    kept = kept.with_columns(pl.Series("scores.q", range(kept.height), dtype=pl.Float64))
    back = from_output_frame(to_output_frame(kept))
    assert back.select(sorted(back.columns)).equals(kept.select(sorted(kept.columns)))


def test_fast_path_matches_the_per_record_path(tmp_path: Path) -> None:
    """The vectorized chunk reader gives the same rows as per-record conversion."""
    from datacraft.core.rows import meta_of

    records = _records("alpaca_llamafactory_200.jsonl") + _records("t0_tasks_720.jsonl", 100)
    for r in records[::7]:
        r.pop("id")  # content-hash ids on both paths
    path = _write_jsonl(tmp_path / "a.jsonl", records)
    fast, _ = read_all(str(path), ReadOptions(batch_size=64))
    slow = pl.concat([pl.DataFrame([to_row(r, "alpaca", source="a.jsonl")], schema_overrides=fast.schema) for r in records], how="diagonal_relaxed")
    assert fast["id"].to_list() == slow["id"].to_list()
    for column in ("messages", "task", "source", "lineage"):
        assert fast[column].to_list() == slow[column].to_list(), column
    clean = lambda m: {k: v for k, v in meta_of(m).items() if v is not None}  # noqa: E731
    assert [clean(m) for m in fast["meta"]] == [clean(m) for m in slow["meta"]]

"""Reader / format / writer edges: the fast JSONL path agrees with the per-record path, every format is
told apart, system turns and extra fields survive, drops carry the raw record, shards are named right."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import polars as pl
import pytest

from datacraft.io.fast import _odd_lines, _odd_lines_re, convert_chunk
from datacraft.io.formats import detect_format, from_row, to_row
from datacraft.io.readers import ReadOptions, peek_columns, plan_reads, read_all
from datacraft.io.writers import finalize_shards, merge_parts

from .conftest import DATA


def _jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _meta(frame: pl.DataFrame) -> list[dict]:
    return [json.loads(m) for m in frame["meta"]]


def test_every_format_is_told_apart() -> None:
    cases = {
        "datacraft": {"id": "a", "messages": [], "lineage": {}},
        "preference": {"prompt": "p", "chosen": "c", "rejected": "r"},
        "messages": {"messages": []},
        "sharegpt": {"conversations": []},
        "alpaca": {"instruction": "i", "output": "o"},
        "completion": {"prompt": "p", "response": "r"},
    }
    assert {fmt: detect_format(rec) for fmt, rec in cases.items()} == {fmt: fmt for fmt in cases}
    assert detect_format({"instruction": "i"}) is None and detect_format({"output": "o"}) is None
    assert detect_format({"prompt": "p", "completion": "c"}) == "completion"


def test_fast_path_matches_the_per_record_path(tmp_path: Path) -> None:
    """Whitespace-only instructions go to the per-record path (which drops them); extra fields land in
    `meta` exactly as the per-record path puts them there."""
    records = [
        {"instruction": "Name a colour.", "input": "", "output": "Blue.", "category": "easy"},
        {"instruction": "   ", "input": "", "output": "Nothing to answer.", "category": "empty"},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "category": "math"},
    ]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    out = convert_chunk(data, 3, "auto", "src.jsonl", "task")
    assert out is not None
    fast, slow = out
    assert slow == [1] and fast.height == 2
    expected = [to_row(records[i], "alpaca", source="src.jsonl") for i in (0, 2)]
    # (the fast path also writes `"input": null` where the per-record path leaves the key out)
    assert [{k: v for k, v in m.items() if v is not None} for m in _meta(fast)] == [json.loads(r["meta"]) for r in expected]
    assert _meta(fast)[1] == {"format": "alpaca", "input": "2 and 3", "category": "math"}
    assert fast["messages"].to_list() == [r["messages"] for r in expected]
    assert fast["id"].to_list() == [r["id"] for r in expected]

    kept, dropped = read_all(_jsonl(tmp_path / "a.jsonl", records))
    assert kept["id"].to_list() == fast["id"].to_list()
    assert dropped["drop_reason"].to_list() == ["empty_text"]


def test_odd_value_lines_polars_regex_equals_python_re_and_json() -> None:
    """The lines the fast path hands back for values polars reads differently from `json` (a number
    or object in a text field, a float / long / object id, a lone escaped surrogate): polars' Rust
    regex over the lines finds exactly the lines Python's `re` finds over the bytes, and every line
    whose parsed values say so."""
    import random

    import numpy as np

    rng = random.Random(0)
    strings, labels = ["instruction", "output", "input", "my.key (x)", "naïve-ß"], ["id", "source", "task"]
    odd = ['"output": 5', '"output" : true', '"id": 1.5', '"id": 12345678901234567', '"input":\t[1]', '"task": {"a": 1}',
           '"source": -3e5', '"my.key (x)": 3', '"naïve-ß":\r 4', '"x": "\\udc00 lone"', '"x": "\\ud83d"']
    fine = ['"output": "a: b\\" : 5"', '"id": 7', '"id": -12', '"output":null', '"x": "\\ud83d\\ude00"', '"x": "\\uD83D\\uDE00"']
    for trial in range(12):
        lines, expected = [], set()
        for i in range(300):
            extra = rng.choice(odd + fine * 3)
            lines.append('{"id": "r' + str(i) + '", "instruction": "Say: \\"hi\\".", ' + extra + ', "n": "ü"}')
            if extra in odd:
                expected.add(i)
        data = ("\n".join(lines) + ("\n" if trial % 2 else "")).encode()
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        ends = ends if data.endswith(b"\n") else np.append(ends, len(data))
        assert _odd_lines(data, ends, strings, labels) == _odd_lines_re(data, ends, strings, labels) == expected


def test_non_string_texts_are_bad_records_on_every_path(tmp_path: Path) -> None:
    records = [{"instruction": f"Count to {i}.", "output": i} for i in range(1, 4)]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    assert convert_chunk(data, 3, "auto", "s", "task") is None  # not the fast path's to convert
    kept, dropped = read_all(_jsonl(tmp_path / "n.jsonl", records))
    assert kept.height == 0 and dropped["drop_reason"].to_list() == ["bad_record"] * 3
    assert all("expected a string, got int" in d for d in dropped["drop_detail"])
    long = {"instruction": "x" * 3000, "output": 7}
    _, bad = read_all(_jsonl(tmp_path / "long.jsonl", [long]))
    assert len(json.loads(bad["meta"][0])["raw"]) == 2000  # the raw record, cut at 2,000 chars


def test_system_turns_and_extra_fields(tmp_path: Path) -> None:
    alpaca = {"instruction": "Greet.", "output": "Hello!", "system": "Be brief."}
    share = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "system": "Be kind."}
    assert [m["role"] for m in to_row(alpaca, "alpaca")["messages"]] == ["system", "user", "assistant"]
    assert to_row(alpaca, "alpaca")["messages"][0]["content"] == "Be brief."
    assert to_row(share, "sharegpt")["messages"][0] == {"role": "system", "content": "Be kind."}
    kept, _ = read_all(_jsonl(tmp_path / "s.jsonl", [alpaca, alpaca | {"instruction": "Wave."}]))
    assert [m["role"] for m in kept["messages"][0]] == ["system", "user", "assistant"]
    row = to_row({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "category": "c"}, "messages")
    assert json.loads(row["meta"]) == {"format": "messages", "category": "c"}


def test_completion_round_trip_keeps_a_chat_prompt() -> None:
    record = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}
    back = from_row(to_row(record, "completion"), "completion")
    assert back["prompt"] == record["prompt"] and back["completion"] == record["completion"]
    text = from_row(to_row({"prompt": "q", "completion": "a"}, "completion"), "completion")
    assert (text["prompt"], text["completion"]) == ("q", "a")


def test_parquet_in_a_user_format_is_read_per_record(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.parquet"
    pl.DataFrame({"instruction": ["a", "b", "c"], "output": ["x", "  ", "z"]}).write_parquet(path)
    kept, dropped = read_all(str(path))
    assert kept["messages"].list.last().struct.field("content").to_list() == ["x", "z"]
    assert dropped["drop_detail"].to_list() == [f"{path}:row 2: field 'output' (assistant turn) is empty"]


def test_plan_reads_hub_names_and_peek(tmp_path: Path) -> None:
    assert [t.kind for t in plan_reads("HuggingFaceH4/no_robots")] == ["hub"]
    with pytest.raises(FileNotFoundError):
        plan_reads("not/a/dataset/path")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert peek_columns(str(empty), ReadOptions()) is None
    assert peek_columns("HuggingFaceH4/no_robots", ReadOptions()) is None
    assert "messages" in peek_columns(str(DATA / "selfinstruct_60.jsonl"), ReadOptions())


@pytest.mark.parametrize("module", ["datacraft.io.readers", "datacraft.io.writers", "datacraft.io.formats", "datacraft.core.rows"])
def test_public_names_resolve(module: str) -> None:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    if names is not None:
        assert names and all(n and hasattr(mod, n) for n in names)


def test_finalize_renames_same_schema_parts_and_merges_jsonl_parts(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(2):
        pl.DataFrame({"id": [f"{i}-{j}" for j in range(3)]}).write_parquet(parts / f"p{i}.parquet")
    names = finalize_shards([(str(parts / f"p{i}.parquet"), 3) for i in range(2)], str(tmp_path / "out"), "train", "parquet", shard_rows=100)
    assert [Path(n).name for n in names] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]  # renamed, not merged
    assert [pl.read_parquet(n).height for n in names] == [3, 3]

    lines = []
    for i in range(3):
        p = parts / f"j{i}.jsonl"
        p.write_text("".join(json.dumps({"id": f"{i}-{j}"}) + "\n" for j in range(2)))
        lines.append(str(p))
    shards = merge_parts(lines, str(tmp_path / "merged"), "train", "jsonl", shard_rows=4)
    assert [Path(s).name for s in shards] == ["train-00000-of-00002.jsonl", "train-00001-of-00002.jsonl"]
    assert [len(Path(s).read_text().splitlines()) for s in shards] == [4, 2]
    assert not any(Path(p).exists() for p in lines)

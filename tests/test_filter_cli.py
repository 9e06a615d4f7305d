"""`datacraft filter` on real corpora: format detected, written back in the same format, ledger
balances, --save-config round-trips through `datacraft run`; and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from datacraft.cli.main import app

from .conftest import DATA

runner = CliRunner()


def _flat(text: str) -> str:
    """CLI output with the terminal's line wrapping undone."""
    return " ".join(text.split())


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]


def _written(out: Path) -> list[dict]:
    return [r for f in sorted((out / "data").glob("*.jsonl")) for r in _lines(f)]


def _report(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    for s in report["stages"]:
        assert s["in"] + s["created"] == s["kept"] + sum(s["dropped"].values()), s
    assert report["ledger_ok"]
    return report


def _invoke(*args: str) -> str:
    result = runner.invoke(app, ["filter", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_alpaca_rows_written_back_as_alpaca(tmp_path: Path) -> None:
    out = tmp_path / "o"
    _invoke(str(DATA / "alpaca_llamafactory_200.jsonl"), "-o", str(out), "--dedup", "exact", "--min", "length.response=5", "--keep-format")
    report = _report(out)
    assert [s["name"] for s in report["stages"]] == ["read", "heuristics", "filter", "exact_dedup"]
    rows = _written(out)
    assert len(rows) == report["rows_out"] > 0
    original = {r["id"]: r for r in _lines(DATA / "alpaca_llamafactory_200.jsonl")}
    for r in rows:
        assert {"instruction", "input", "output"} <= set(r)
        assert r["output"] == original[r["id"]]["output"] and len(r["output"].split()) >= 5


def test_sharegpt_rows_written_back_as_sharegpt(tmp_path: Path) -> None:
    src = tmp_path / "fastchat_sharegpt.jsonl"
    records = [
        {"id": r["id"], "conversations": [{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}]}
        for r in _lines(DATA / "fastchat_dummy_500.jsonl")
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "o"
    _invoke(str(src), "-o", str(out), "--dedup", "exact", "--keep-format")
    report = _report(out)
    rows = _written(out)
    assert rows and all(set(r) >= {"id", "conversations"} and r["conversations"][0]["from"] == "human" for r in rows)
    # the identity prompts repeat heavily: exact dedup must have removed most of them
    assert report["stages"][-1]["dropped"]["duplicate"] > 300


def test_t0_with_task_field_and_smart_selection(tmp_path: Path) -> None:
    out = tmp_path / "o"
    _invoke(str(DATA / "t0_tasks_720.jsonl"), "-o", str(out), "--select", "10%", "--by", "smart", "--task-field", "task", "--embedder", "static")
    report = _report(out)
    assert report["stages"][-1]["name"] == "smart_mixture"
    rows = pl.read_parquet(str(out / "data" / "*.parquet"))
    assert rows.height == pytest.approx(72, abs=2)
    assert rows["task"].null_count() == 0 and rows["task"].n_unique() > 5


def test_preference_rows_kept_as_preference(tmp_path: Path) -> None:
    out = tmp_path / "o"
    _invoke(str(DATA / "hh_rlhf_harmless_150.jsonl"), "-o", str(out), "--dedup", "exact", "--keep-format")
    _report(out)
    rows = _written(out)
    original = {r["id"]: r for r in _lines(DATA / "hh_rlhf_harmless_150.jsonl")}
    assert rows and all((r["prompt"], r["chosen"], r["rejected"]) == (original[r["id"]]["prompt"], original[r["id"]]["chosen"], original[r["id"]]["rejected"]) for r in rows)


def test_save_config_round_trips_to_an_identical_result(tmp_path: Path) -> None:
    saved = tmp_path / "saved.yaml"
    _invoke(str(DATA / "alpaca_llamafactory_200.jsonl"), "-o", str(tmp_path / "a"), "--dedup", "exact", "--min", "length.response=3", "--save-config", str(saved))
    result = runner.invoke(app, ["run", str(saved), "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    a = pl.read_parquet(str(tmp_path / "a" / "data" / "*.parquet")).sort("id")
    b = pl.read_parquet(str(tmp_path / "b" / "data" / "*.parquet")).sort("id")
    assert a.equals(b) and a.height > 0
    assert json.loads((tmp_path / "a" / "report.json").read_text())["config_hash"] == json.loads((tmp_path / "b" / "report.json").read_text())["config_hash"]


def test_sample_reads_only_the_first_rows(tmp_path: Path) -> None:
    _invoke(str(DATA / "alpaca_llamafactory_200.jsonl"), "-o", str(tmp_path / "o"), "--sample", "25")
    assert _report(tmp_path / "o")["rows_in"] == 25


def test_bad_inputs(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    result = runner.invoke(app, ["filter", str(unknown), "-o", str(tmp_path / "u")])
    assert result.exit_code == 2 and "'answer', 'question'" in _flat(result.output)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = runner.invoke(app, ["filter", str(empty), "-o", str(tmp_path / "e")])
    assert result.exit_code == 2 and "no JSON object" in _flat(result.output)

    notjson = tmp_path / "notjson.jsonl"
    notjson.write_text("hello world\nthis is prose\n")
    result = runner.invoke(app, ["filter", str(notjson), "-o", str(tmp_path / "n")])
    assert result.exit_code == 2 and "no JSON object" in _flat(result.output)

    mixed = tmp_path / "mixed.jsonl"
    alpaca = _lines(DATA / "alpaca_llamafactory_200.jsonl")[:3]
    share = {"id": "s1", "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello, how can I help?"}]}
    mixed.write_text("".join(json.dumps(r) + "\n" for r in [*alpaca, share, {"text": "lonely"}]))
    _invoke(str(mixed), "-o", str(tmp_path / "m"))
    report = _report(tmp_path / "m")
    assert report["stages"][0]["kept"] == 4 and report["stages"][0]["dropped"] == {"unknown_format": 1}

    result = runner.invoke(app, ["filter", str(DATA / "selfinstruct_60.jsonl"), "-o", str(tmp_path / "x"), "--min", "quality"])
    assert result.exit_code == 2 and "SCORE=VALUE" in _flat(result.output)

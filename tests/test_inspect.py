"""`explain_row` (why dropped, where from), `describe_file` and the `why` command, on a hand-built run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from datacraft.report.describe import describe_file, summarize_file
from datacraft.report.explain import explain_row, render_explanation
from tests.report_fixtures import DATA, build_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("inspect") / "run"
    return out, build_run(out)


def _text(renderable: Any) -> str:
    console = Console(record=True, width=120, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def test_why_was_this_row_dropped(run: tuple[Path, dict[str, Any]]) -> None:
    out, info = run
    expl = explain_row(str(out), info["short_id"])
    assert expl["found"] and expl["status"] == "dropped"
    assert (expl["stage"], expl["reason"]) == ("heuristics", "too_short")
    assert "< 40" in expl["detail"]
    assert expl["row"]["id"] == info["short_id"]
    assert expl["row"]["messages"][0]["role"] == "user"
    assert expl["row"]["scores"]["length"] < 40
    assert expl["steps"] == [] and expl["seeds"] == [] and expl["missing"] == []
    assert "heuristics" in expl["summary"] and "seed row" in expl["summary"]
    json.dumps(expl)  # the answer is plain JSON


def test_where_did_this_synthetic_row_come_from(run: tuple[Path, dict[str, Any]]) -> None:
    out, info = run
    expl = explain_row(str(out), info["hop2_id"])
    assert expl["status"] == "kept" and expl["stage"] is None
    assert [s["method"] for s in expl["steps"]] == ["multihop:hop2:reasoning", "multihop:hop1"]
    assert expl["steps"][0]["parent_ids"] == [info["hop1_id"]]
    assert expl["steps"][1]["parent_ids"] == [info["seed_id"]]
    hop1 = expl["lineage"]["parents"][0]
    seed = hop1["parents"][0]
    assert (hop1["id"], hop1["method"], hop1["status"]) == (info["hop1_id"], "multihop:hop1", "kept")
    assert (seed["id"], seed["method"], seed["parents"]) == (info["seed_id"], "seed", [])
    assert expl["seeds"] == [info["seed_id"]] and expl["depth"] == 2


def test_dropped_synthetic_row_has_reason_and_lineage(run: tuple[Path, dict[str, Any]]) -> None:
    out, info = run
    expl = explain_row(str(out), info["failed_hop2_id"])
    assert (expl["status"], expl["stage"], expl["reason"]) == ("dropped", "multihop", "parse_error")
    assert expl["seeds"] == [info["failed_seed_id"]]
    text = _text(render_explanation(expl))
    assert "DROPPED" in text and "parse_error" in text and info["failed_seed_id"] in text and "multihop:hop1" in text


def test_duplicate_points_at_the_row_it_duplicates(run: tuple[Path, dict[str, Any]]) -> None:
    out, info = run
    expl = explain_row(str(out), info["dup_loser"])
    assert expl["reason"] == "duplicate"
    assert [r["id"] for r in expl["related"]] == [info["dup_winner"]]
    assert expl["related"][0]["status"] in ("kept", "dropped")


def test_prefix_and_unknown_ids(run: tuple[Path, dict[str, Any]]) -> None:
    out, info = run
    assert explain_row(str(out), info["hop2_id"][:10])["id"] == info["hop2_id"]
    missing = explain_row(str(out), "no-such-row-id")
    assert missing["found"] is False and "no-such-row-id" in missing["summary"]
    with pytest.raises(FileNotFoundError):
        explain_row(str(out / "absent"), "x")


def test_parquet_dropped_rows(tmp_path: Path) -> None:
    out = tmp_path / "run"
    info = build_run(out, dropped_format="parquet", embeddings=False)
    expl = explain_row(str(out), info["read_dropped_id"])
    assert (expl["stage"], expl["reason"]) == ("read", "malformed")
    assert "invalid JSON" in expl["detail"]
    assert explain_row(str(out), info["hop2_id"])["seeds"] == [info["seed_id"]]


def test_describe_input_output_and_run(run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, info = run
    src = summarize_file(str(DATA))
    assert (src["kind"], src["format"], src["rows"]) == ("jsonl", "alpaca", 200)
    assert {"instruction", "input", "output"} <= set(src["fields"])
    assert len(src["samples"]) == 3 and src["canonical"][0]["messages"][0]["role"] == "user"
    text = _text(describe_file(str(DATA)))
    assert "alpaca" in text and "instruction" in text and "200" in text

    parquet = next((out / "data").glob("*.parquet"))
    dst = summarize_file(str(parquet))
    assert (dst["format"], dst["rows"]) == ("datacraft", len(info["kept_ids"]))
    assert {"id", "messages", "lineage", "scores", "embedding"} <= set(dst["fields"])

    assert "exact_dedup" in _text(describe_file(str(out)))

    junk = tmp_path / "junk.jsonl"
    junk.write_text("this is not json\nnor this\n", encoding="utf-8")
    bad = summarize_file(str(junk))
    assert bad["format"] is None and "no JSON object" in bad["format_error"]
    assert bad["dropped_in_first_rows"] == {"malformed": 2}


def test_why_command(run: tuple[Path, dict[str, Any]]) -> None:
    import typer
    from typer.testing import CliRunner

    from datacraft.cli.report import register

    app = typer.Typer()
    register(app)
    out, info = run
    res = CliRunner().invoke(app, ["why", str(out), info["short_id"]])
    assert res.exit_code == 0, res.output
    assert "DROPPED" in res.output and "too_short" in res.output
    res = CliRunner().invoke(app, ["why", str(out), info["hop2_id"], "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["seeds"] == [info["seed_id"]]
    assert CliRunner().invoke(app, ["why", str(out), "nope-nope"]).exit_code == 1


def test_inspect_id_exit_codes(run: tuple[Path, dict[str, Any]]) -> None:
    from typer.testing import CliRunner

    from datacraft.cli.main import app

    out, info = run
    assert CliRunner().invoke(app, ["inspect", str(out), "--id", info["short_id"]]).exit_code == 0
    missing = CliRunner().invoke(app, ["inspect", str(out), "--id", "nope-nope"])
    assert missing.exit_code == 1 and "nope-nope" in missing.output

"""Whole pipelines on real data: the ledger balances for every stage, outputs, runners, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from datacraft.cli.main import app
from datacraft.io.readers import read_all
from datacraft.pipeline.config import load_config
from datacraft.pipeline.run import run, run_config
from datacraft.report.summary import ledger_problems

from .conftest import DATA, ROOT

FILTER_CONFIG = str(ROOT / "configs" / "filter.yaml")


def _bad_corpus(tmp_path: Path) -> Path:
    """Real Alpaca + identity rows with a malformed line, an empty response and a duplicate."""
    lines = (DATA / "alpaca_llamafactory_200.jsonl").read_text().splitlines()[:120]
    lines += (DATA / "fastchat_dummy_500.jsonl").read_text().splitlines()[:80]
    lines.insert(7, '{"instruction": "cut off", ')
    lines.insert(30, json.dumps({"instruction": "Say nothing", "input": "", "output": "   "}))
    lines.append(lines[0])
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _output_rows(out: Path) -> pl.DataFrame:
    return pl.read_parquet(str(out / "data" / "*.parquet")).sort("id")


def test_pipeline_ledger_balances_for_every_stage(tmp_path: Path) -> None:
    corpus = _bad_corpus(tmp_path)
    config = load_config(FILTER_CONFIG, [f"input.path={corpus}", f"output.path={tmp_path / 'out'}"])
    report = run_config(config)
    names = [s["name"] for s in report["stages"]]
    assert names == ["read", "heuristics", "filter", "exact_dedup"]
    assert report["ledger_ok"] and ledger_problems(report["stages"]) == []
    for s in report["stages"]:
        assert s["in"] + s["created"] == s["kept"] + sum(s["dropped"].values()), s
    read, _, filt, dedup = report["stages"]
    assert read["in"] == 203 and read["dropped"] == {"malformed": 1, "empty_text": 1}
    assert dedup["dropped"]["duplicate"] >= 1
    out = tmp_path / "out"
    saved = json.loads((out / "report.json").read_text())
    assert saved["stages"] == report["stages"] and saved["config_hash"] == config.hash()
    assert (out / "config.yaml").exists()
    rows = _output_rows(out)
    assert rows.height == report["rows_out"] == dedup["kept"]
    # every dropped row is on disk with its reason, next to the output
    dropped = pl.concat([pl.read_ndjson(f, infer_schema_length=None).select("id", "drop_stage", "drop_reason", "drop_detail") for f in sorted((out / "dropped").glob("*.jsonl"))])
    assert dropped.height == sum(sum(s["dropped"].values()) for s in report["stages"])
    malformed = dropped.filter(pl.col("drop_reason") == "malformed")
    assert malformed["drop_detail"][0].startswith(f"{corpus}:8: invalid JSON")
    assert set(rows["id"]).isdisjoint(set(dropped["id"]))


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    config = load_config(FILTER_CONFIG, [f"input.path={DATA / 'selfinstruct_60.jsonl'}", f"output.path={out}"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_config(config)
    assert (out / "precious.txt").read_text() == "keep me"
    run_config(load_config(FILTER_CONFIG, [f"input.path={DATA / 'selfinstruct_60.jsonl'}", f"output.path={out}", "output.overwrite=true"]))
    assert not (out / "precious.txt").exists() and (out / "report.json").exists()


def test_keep_format_writes_the_users_format_back(tmp_path: Path) -> None:
    src = DATA / "selfinstruct_60.jsonl"
    config = load_config(FILTER_CONFIG, [f"input.path={src}", f"output.path={tmp_path / 'o'}", "output.format=jsonl", "output.row_format=keep"])
    run_config(config)
    written = [json.loads(x) for f in sorted((tmp_path / "o" / "data").glob("*.jsonl")) for x in f.read_text().splitlines()]
    original = {r["id"]: r for r in (json.loads(x) for x in src.read_text().splitlines())}
    assert written and all(set(w) >= {"instruction", "input", "output"} for w in written)
    for w in written:
        o = original[w["id"]]
        assert (w["instruction"], w["input"], w["output"]) == (o["instruction"], o["input"], o["output"])


def test_datasets_folder_output(tmp_path: Path) -> None:
    import datasets

    config = load_config(FILTER_CONFIG, [f"input.path={DATA / 'selfinstruct_60.jsonl'}", f"output.path={tmp_path / 'o'}", "output.format=datasets"])
    report = run_config(config)
    loaded = datasets.load_from_disk(str(tmp_path / "o" / "data"))
    assert loaded["train"].num_rows == report["rows_out"]
    assert sum(report["lineage"]["main"].values()) == report["rows_out"]  # counted from the Arrow shards
    again, _ = read_all(str(tmp_path / "o" / "data"))
    assert again.height == report["rows_out"]


def test_run_entry_point_and_cli_table(tmp_path: Path) -> None:
    report = run(["--config", FILTER_CONFIG, "--input", str(DATA / "selfinstruct_60.jsonl"), "--output", str(tmp_path / "a")])
    assert report["ledger_ok"]
    result = CliRunner().invoke(app, ["run", FILTER_CONFIG, "-i", str(DATA / "selfinstruct_60.jsonl"), "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "exact_dedup" in result.output and "heuristics" in result.output
    bad = CliRunner().invoke(app, ["run", FILTER_CONFIG, "--set", "filter.wher=1", "-o", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "wher" in bad.output
    again = CliRunner().invoke(app, ["run", FILTER_CONFIG, "-i", str(DATA / "selfinstruct_60.jsonl"), "-o", str(tmp_path / "b")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"port {port} did not open")


@pytest.mark.timeout(300)
def test_multiprocessing_and_portable_runner_give_the_same_output(tmp_path: Path) -> None:
    """Scale-out as far as one machine allows: workers in other processes, and the Job API that
    Flink and Spark expose (Beam's local job service + an external worker pool)."""
    src = str(DATA / "alpaca_llamafactory_200.jsonl")
    base = [f"input.path={src}", "input.batch_size=50"]
    run_config(load_config(FILTER_CONFIG, [*base, f"output.path={tmp_path / 'inproc'}"]))
    expected = _output_rows(tmp_path / "inproc")
    run_config(load_config(FILTER_CONFIG, [*base, f"output.path={tmp_path / 'mp'}"]), ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert _output_rows(tmp_path / "mp").equals(expected)

    job_port, pool_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(job_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        _wait_port(job_port)
        _wait_port(pool_port)
        report = run_config(
            load_config(FILTER_CONFIG, [*base, f"output.path={tmp_path / 'portable'}"]),
            ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"],
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    assert report["ledger_ok"]
    assert _output_rows(tmp_path / "portable").equals(expected)

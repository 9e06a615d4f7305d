"""The main job (configs/default.yaml): synthesize → score → dedup → select → train, with the DPO branch.

The fast test runs the same graph with scripted engines (no LLM; MiniLM for pref_head, the static
embedder for the rest, dry-run train stages); the slow one runs the shipped config as a user does.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from datacraft.core.graph import plan_stages
from datacraft.core.ledger import ledger_problems
from datacraft.pipeline.config import ConfigError, load_config
from datacraft.pipeline.run import run_config

from .synth_fakes import FakeScorer, ScriptedClient, multihop_rules
from .test_synth_reflection import teacher

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.yaml"
SYNTH_PREFIXES = ("multihop:", "reflection:", "mosaic:")


def _scripted(tmp_path: Path, limit: int = 40) -> tuple[dict, Path]:
    out = tmp_path / "out"
    config = load_config(DEFAULT, [
        f"output.path={out}", f"cache_dir={tmp_path / 'cache'}", f"input.limit={limit}", "embedder.kind=static",
        "mosaic.tokenizer=whitespace", "complexity.backend=engine", "train_sft.dry_run=true", "train_dpo.dry_run=true",
    ])
    # the student prefers the reflected instruction (higher IFD) and the better answer (lower r-IFD)
    student = FakeScorer(lambda x, y: (0.9 if x.startswith("Explain") else 0.8, 0.5 if y.startswith("Better") else 0.7))
    given = {
        "multihop": {"client": ScriptedClient(multihop_rules())},
        "reflection": {"client": teacher(), "scorer": student},
        "complexity": {"client": ScriptedClient([("", lambda p: "4")])},
    }
    return run_config(config, given=given), out


def _stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["name"] == name)


def test_default_graph_with_scripted_engines(tmp_path: Path) -> None:
    report, out = _scripted(tmp_path)
    assert report["ledger_ok"], report["ledger_problems"]
    # every synthesis method created rows, and the slices kept the LLM stages to a few rows
    for name, n_slice in (("multihop", 3), ("reflection", 6)):
        st = _stage(report, name)
        assert st["created"] > 0 and st["counters"]["slice.passed"] == st["in"] - n_slice
    assert _stage(report, "mosaic")["created"] > 0
    # the DPO branch reads reflection's rows; the main branch goes on from reflection too
    dpo, mosaic = _stage(report, "dpo_pairs"), _stage(report, "mosaic")
    refl = _stage(report, "reflection")
    assert dpo["from"] == "reflection" and dpo["branch"] == "dpo" and dpo["in"] == refl["kept"] == mosaic["in"]
    assert dpo["kept"] == refl["created"] > 0  # each accepted reflection became one pair
    assert dpo["dropped"] == {"no_reflection": refl["kept"] - refl["created"]}
    # outputs: main in data/, the pairs in branches/dpo/, each train stage's TRL dataset
    assert report["branches"]["main"]["stage"] == "train_sft" and report["branches"]["dpo"]["stage"] == "train_dpo"
    pairs = pl.read_parquet(out / "branches" / "dpo" / "*.parquet")
    assert pairs.height == _stage(report, "train_dpo")["kept"] == dpo["kept"]
    assert all(c and r and c != r for c, r in zip(pairs["chosen"].to_list(), pairs["rejected"].to_list(), strict=True))
    main = pl.read_parquet(out / "data" / "*.parquet")
    assert main.height == report["rows_out"] == _stage(report, "select")["kept"]
    sft = pl.read_parquet(out / "train" / "train_sft" / "data" / "sft" / "train-*.parquet")
    dpo_ds = pl.read_parquet(out / "train" / "train_dpo" / "data" / "dpo" / "train-*.parquet")
    assert sft.height == main.height and sft.columns[:2] == ["id", "messages"]
    assert dpo_ds.height == pairs.height and {"prompt", "chosen", "rejected"} <= set(dpo_ds.columns)
    assert {t["status"] for t in report["training"].values()} == {"dry_run"}
    # lineage: report counts = the rows of each branch's output by method
    methods = main["lineage"].struct.field("method").value_counts()
    assert report["lineage"]["main"] == {m: n for m, n in methods.iter_rows()}
    assert report["lineage"]["dpo"] == {"dpo:reflection": dpo["kept"]}
    assert any(m.startswith(SYNTH_PREFIXES) for m in report["lineage"]["main"])
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Training" in html and "Lineage" in html and "train_dpo" in html


def test_branch_ledger_is_checked_against_its_source() -> None:
    stages = [
        {"name": "read", "in": 10, "kept": 10, "created": 0, "dropped": {}},
        {"name": "a", "in": 10, "kept": 8, "created": 0, "dropped": {"x": 2}, "from": "read"},
        {"name": "b", "in": 8, "kept": 3, "created": 0, "dropped": {"y": 5}, "from": "a"},
        {"name": "c", "in": 8, "kept": 8, "created": 0, "dropped": {}, "from": "a"},  # forks from a, not b
    ]
    assert ledger_problems(stages) == []
    stages[3]["in"] = 3
    stages[3]["kept"] = 3
    assert ledger_problems(stages) == ["c: in 3 != kept 8 of 'a', which it reads"]


def test_plan_forks_from_the_main_branch() -> None:
    plans = plan_stages([{"name": "s1"}, {"name": "s2", "branch": "b"}, {"name": "s3", "branch": "b"}, {"name": "s4"},
                         {"name": "s5", "from": "s1", "branch": "c"}])
    assert [(p.label, p.source, p.branch) for p in plans] == [
        ("s1", "read", "main"), ("s2", "s1", "b"), ("s3", "s2", "b"), ("s4", "s1", "main"), ("s5", "s1", "c")]


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "heuristics", "from": "nowhere"}, "'nowhere' is not an earlier stage"),
    ({"name": "heuristics", "branch": "a b"}, "a branch is a name"),
    ({"name": "heuristics", "slice": 0}, "rows that go through"),
    ({"name": "heuristics", "id": "read"}, "the reader's label"),
])
def test_graph_keys_are_checked_before_any_work(tmp_path: Path, spec: dict, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"input": {"path": str(ROOT / "tests/data/alpaca_llamafactory_200.jsonl")},
                                    "stages": [{"name": "exact_dedup"}, spec]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert f"{path}:" in str(err.value)


def test_a_branch_reads_the_columns_of_its_source_only(tmp_path: Path) -> None:
    data = {"input": {"path": str(ROOT / "tests/data/alpaca_llamafactory_200.jsonl")},
            "stages": [{"name": "heuristics", "branch": "side"}, {"name": "filter", "where": "length.response >= 3"}]}
    with pytest.raises(ConfigError, match="reads score 'length.response'"):
        load_config(data=data)  # filter is on main, which forks from `read`: heuristics' scores are not there


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_default_config_end_to_end(tmp_path: Path) -> None:
    """`datacraft run configs/default.yaml -o OUT`: the embedded models, real training for a few steps."""
    from typer.testing import CliRunner

    from datacraft.cli.main import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(DEFAULT), "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["ledger_ok"], report["ledger_problems"]
    for name in ("multihop", "reflection", "mosaic"):
        assert _stage(report, name)["created"] > 0, name
    for label, kind in (("train_sft", "sft"), ("train_dpo", "dpo")):
        summary = report["training"][label]
        assert summary["status"] == "trained" and summary["kind"] == kind and summary["steps"] >= 1
        assert summary["losses"] and summary["tokens"]["trained"] > 0
        card = (out / "train" / label / "README.md").read_text(encoding="utf-8")
        assert summary["lineage"]["data_hash"] in card and report["config_hash"] in card
        assert (out / "train" / label / f"trl_{kind}.yaml").exists()
    assert report["lineage"]["dpo"] and any(m.startswith(SYNTH_PREFIXES) for m in report["lineage"]["main"])
    rows = pl.read_parquet(out / "data" / "*.parquet")
    assert rows.height == report["rows_out"] > 0
    complexity = rows["scores"].struct.field("complexity")
    assert complexity.min() >= 1.0 and complexity.max() <= 6.0 and complexity.n_unique() > 10
    assert (out / "report.html").stat().st_size > 10_000

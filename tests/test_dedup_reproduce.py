"""Dedup thresholds that mean something: keep-first grouping, GPTeacher's published levels reproduced
by the shipped configs on the MIT slices, and per-source calibration on labelled pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datacraft.pipeline.config import load_config
from datacraft.pipeline.run import run_config
from datacraft.report.compare import match_ids, overlap
from datacraft.stages.dedup.semantic import SemanticDedupStage
from datacraft.vectors.calibration import calibrate_pairs
from datacraft.vectors.embedders import embedding_series

from ._embed_helpers import DATA, assert_ledger, rows

ROOT = Path(__file__).parent.parent
SOURCE = DATA / "gpteacher_toolformer_dedupe_only_1500.jsonl"
PAIRS = DATA / "duplicate_pairs.jsonl"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _frame_with(ids: list[str], x: np.ndarray) -> pl.DataFrame:
    base = rows("alpaca_llamafactory_200.jsonl").head(len(ids)).with_columns(pl.Series("id", ids))
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return base.with_columns(embedding_series(x.astype(np.float32)))


def test_keep_first_is_natural_id_order_for_both_groupings() -> None:
    # x:10, x:2 and x:9 are near copies; string order would keep x:10, file order keeps x:2
    ids = [f"x:{i}" for i in (10, 2, 9, 0, 1, 3)]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 32))
    x[2] = x[1] + 0.01 * rng.normal(size=32)
    x[0] = x[1] + 0.01 * rng.normal(size=32)
    frame = _frame_with(ids, x)
    for grouping in ("greedy", "union_find"):
        kept, dropped, _ = SemanticDedupStage({"threshold": 0.95, "score": None, "grouping": grouping, "keep": "first"}).run_local([frame])
        assert_ledger(6, kept, dropped)
        assert set(dropped["id"]) == {"x:10", "x:9"}, grouping
        assert all(d.startswith("near-duplicate of x:2 ") for d in dropped["drop_detail"])


def test_greedy_keep_first_chain_keeps_the_far_end() -> None:
    # a ~ b, b ~ c, a !~ c: greedy keep-first keeps a and c (b is dropped by a), union-find keeps only a
    ids = ["r:1", "r:2", "r:3", "r:4"]
    x = np.array([[1.0, 0, 0], [0.93, 0.37, 0], [0.73, 0.68, 0], [0, 0, 1.0]])
    frame = _frame_with(ids, x)
    greedy, _, _ = SemanticDedupStage({"threshold": 0.9, "score": None, "grouping": "greedy", "keep": "first"}).run_local([frame])
    union, _, _ = SemanticDedupStage({"threshold": 0.9, "score": None, "grouping": "union_find", "keep": "first"}).run_local([frame])
    assert sorted(greedy["id"]) == ["r:1", "r:3", "r:4"]
    assert sorted(union["id"]) == ["r:1", "r:4"]


def test_match_ids_survives_gpteacher_mojibake() -> None:
    source = _records(SOURCE)
    for name, size in (("gpteacher_toolformer_sim0.9_subset.jsonl", 1312), ("gpteacher_toolformer_sim0.6_subset.jsonl", 715)):
        subset = _records(DATA / name)
        ids, missing = match_ids(source, subset)
        assert (len(ids), missing) == (size, 0) and len(set(ids)) == size
        order = [int(i.rsplit(":", 1)[1]) for i in ids]
        assert order == sorted(order)  # the published levels keep the source's order
    assert overlap(["a", "b", "c"], ["b", "c", "d", "e"]) == {"kept": 3, "jaccard": 0.4, "precision": 0.6667, "recall": 0.5}


# measured with `datacraft run` on the 1,500-row slice (see README "What τ means per embedder")
CONFIGS = (("dedup_gpteacher_sim09.yaml", "gpteacher_toolformer_sim0.9_subset.jsonl", 0.942), ("dedup_gpteacher_sim06.yaml", "gpteacher_toolformer_sim0.6_subset.jsonl", 0.669))


@pytest.mark.parametrize(("config", "published", "measured"), CONFIGS)
def test_shipped_config_reproduces_the_published_level(tmp_path: Path, config: str, published: str, measured: float) -> None:
    report = run_config(load_config(ROOT / "configs" / config, [f"input.path={SOURCE}", f"output.path={tmp_path / 'out'}", "output.html_report=false"]))
    assert report["ledger_ok"]
    kept = pl.read_parquet(str(tmp_path / "out" / "data" / "*.parquet"))["id"].to_list()
    reference, _ = match_ids(_records(SOURCE), _records(DATA / published))
    o = overlap(kept, reference)
    assert o["jaccard"] >= measured - 0.01, o
    # far better than keeping everything (the trivial reproduction)
    assert o["jaccard"] > overlap([r["id"] for r in _records(SOURCE)], reference)["jaccard"] + 0.05, o


def _check_calibration(result: dict, floor: float) -> dict:
    assert result["fit_sources"] == ["mrpc", "qqp"] and result["fit_pairs"] == 400 and result["pairs"] == 600
    assert "word swaps" in result["note"]
    (r,) = result["embedders"].values()
    per = r["per_source"]
    assert set(per) == {"mrpc", "paws", "qqp", "all"}
    assert [per[s]["pairs"] for s in ("mrpc", "paws", "qqp", "all")] == [200, 200, 200, 600]
    assert [per[s]["positives"] for s in ("mrpc", "paws", "qqp")] == [142, 91, 76]
    tau = r["best"]["threshold"]
    assert all(p["at_fit"]["threshold"] == tau for p in per.values())
    for p in per.values():  # each source's own best τ is at least as good as the fitted one
        assert p["best"]["f1"] >= p["at_fit"]["f1"]
    assert r["best"]["f1"] >= floor
    # on QQP (38% duplicates) the fitted τ beats calling every pair a duplicate
    assert per["qqp"]["at_fit"]["f1"] > per["qqp"]["f1_all_duplicate"] + 0.05
    return per


def test_calibrate_per_source_static() -> None:
    per = _check_calibration(calibrate_pairs(str(PAIRS), ("static",)), floor=0.74)
    # a static (bag-of-tokens) embedder cannot see a word swap: PAWS pairs get cos ≈ 1 either way,
    # so its best F1 is that of calling every PAWS pair a duplicate
    assert per["paws"]["best"]["f1"] <= per["paws"]["f1_all_duplicate"] + 0.01
    # --fit-source all: τ fitted on every pair, PAWS included
    everything = calibrate_pairs(str(PAIRS), ("static",), fit_sources=None)
    (r,) = everything["embedders"].values()
    assert everything["fit_pairs"] == 600 and r["best"]["f1"] == r["per_source"]["all"]["best"]["f1"]


@pytest.mark.slow
def test_calibrate_per_source_minilm() -> None:
    per = _check_calibration(calibrate_pairs(str(PAIRS), ("sentence-transformers",)), floor=0.78)
    assert per["paws"]["best"]["f1"] <= per["paws"]["f1_all_duplicate"] + 0.1

"""Each score's spread in report.json and report.html, a warning where a nearly constant score is
used as a weight / dedup score, and constant scores' histograms hidden (real heuristics on T0 rows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datacraft.pipeline.config import load_config
from datacraft.pipeline.run import run_config
from datacraft.report.spread import score_spread, score_uses

from .conftest import DATA


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spread") / "out"
    config = load_config(data={
        "name": "spread",
        "input": {"path": str(DATA / "t0_tasks_720.jsonl")},
        # `repetition` is ~0 on every T0 row: a dedup score that cannot tell rows apart
        "stages": [{"name": "heuristics"}, {"name": "exact_dedup", "text": "instruction", "by": "repetition"}],
        "output": {"path": str(out)},
    })
    run_config(config)
    return out


def test_report_json_has_each_scores_spread_and_warns_on_a_flat_weight(run: Path) -> None:
    scores = json.loads((run / "report.json").read_text())["scores"]
    rep = scores["repetition"]
    assert rep["n"] == 720 and rep["nearly_constant"] and not rep["constant"]
    assert rep["top_bin_share"] > 0.9
    assert rep["used_as"] == ["exact_dedup.by (dedup score)"]
    assert "nearly constant" in rep["warning"] and "exact_dedup.by" in rep["warning"]
    # a score that varies: spread reported, no warning
    sw = scores["stopword_ratio"]
    assert not sw["nearly_constant"] and sw["warning"] is None and sw["p10"] <= sw["median"] <= sw["p90"] and sw["p90"] > sw["p10"]
    assert sw["std"] > 0.05 * (sw["max"] - sw["min"])
    # a constant score nobody uses: flagged constant, no warning
    assert scores["refusal"]["constant"] and scores["refusal"]["warning"] is None


def test_report_html_shows_the_warning_and_hides_constant_histograms(run: Path) -> None:
    page = (run / "report.html").read_text()
    assert "repetition is nearly constant" in page
    assert 'aria-label="stopword_ratio histogram"' in page and 'aria-label="repetition histogram"' in page
    assert 'aria-label="refusal histogram"' not in page  # one value: no information
    assert "histogram hidden): refusal = 0" in page


def test_spread_thresholds() -> None:
    rng = np.random.default_rng(0)
    assert not score_spread(rng.uniform(0, 1, 500))["nearly_constant"]
    spiked = np.concatenate([np.full(483, 3.0), rng.uniform(1, 6, 14)])  # the complexity: 483 of 497 in one bin
    assert score_spread(spiked)["nearly_constant"]
    assert score_spread(np.full(10, 2.0))["constant"]
    uses = score_uses([("sel", "select", {"weight": "scores.quality"}), ("h", "heuristics", {"scores": ["refusal"]}),
                       ("d", "deita_select", {"scores": ["complexity"]})])
    assert uses == {"quality": ["sel.weight (selection weight)"], "complexity": ["d.scores (sort key)"]}

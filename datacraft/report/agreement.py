"""How far a score agrees with external preference labels, as measured by `benchmarks/bench_scorers.py`.

The benchmark writes `datacraft/resources/scorer_agreement.json`: one record per (score column,
model, dataset) with the pairwise accuracy (the preferred answer scores higher; ties half), its 95%
bootstrap interval, the same on length-balanced pairs, and the response-length baseline on the same
pairs. The report and the dataset card look a score up here so a user sees how much to trust a
filter on it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from datacraft.core.rows import SCORE_PREFIX

#: display name and who labelled the pairs, per benchmark dataset
DATASETS: dict[str, tuple[str, str]] = {
    "alpaca_eval_judge_annotations": ("AlpacaEval", "GPT-4"),
    "cherry_gpt4_pairwise_reviews": ("Cherry", "GPT-4"),
    "hh_rlhf_harmless_base_test": ("hh-rlhf harmless", "human raters"),
}


def agreement_path() -> Path:
    return Path(__file__).resolve().parents[1] / "resources" / "scorer_agreement.json"


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[dict[str, Any], ...]:
    p = Path(path)
    if not p.exists():
        return ()
    return tuple(json.loads(p.read_text(encoding="utf-8")).get("records", []))


def agreement_for(score_column: str, model: str | None = None, path: str | Path | None = None) -> dict[str, Any] | None:
    """The recorded agreement of a score column (`quality` or `scores.quality`) for a model
    (`embedded`, a judge or head name; None: the first model recorded for that column), as
    `{"score_column", "model", "datasets": [record, …]}`; None when it was never measured."""
    name = score_column[len(SCORE_PREFIX):] if score_column.startswith(SCORE_PREFIX) else score_column
    records = [r for r in _load(str(path or agreement_path())) if r.get("score_column") == name]
    if model is not None:
        records = [r for r in records if r.get("model") == model]
    elif records:
        records = [r for r in records if r.get("model") == records[0].get("model")]
    if not records:
        return None
    return {"score_column": name, "model": records[0].get("model"), "datasets": records}


def summary_line(agreement: dict[str, Any] | None) -> str:
    """One line for people: 'agreed with GPT-4 on 0.71 [0.66, 0.76] of 400 AlpacaEval pairs (length: 0.68); …'."""
    if not agreement:
        return "not measured against preference labels"
    parts = []
    for r in agreement["datasets"]:
        title, labeller = DATASETS.get(r["dataset"], (r["dataset"], "the labels"))
        lo, hi = r["ci"]
        text = f"agreed with {labeller} on {r['acc']:.2f} [{lo:.2f}, {hi:.2f}] of {r['n']} {title} pairs (length: {r['length_acc']:.2f})"
        if r.get("balanced_n"):
            text += f", {r['balanced_acc']:.2f} of {r['balanced_n']} length-balanced (length: {r['balanced_length_acc']:.2f})"
        parts.append(text)
    return "; ".join(parts)


def summary_for(score_column: str, model: str | None = None, path: str | Path | None = None) -> str:
    return summary_line(agreement_for(score_column, model, path))

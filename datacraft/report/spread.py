"""How much each score varies, and which stages lean on it.

A score that barely varies cannot rank rows: a selection weighted by it is close to unweighted,
a dedup group "keeps the best" at random. `score_spread` summarises one score (quantiles, std,
the share of rows in its fullest histogram bin); `score_uses` names the stage parameters that use
a score as a weight, a dedup score or a sort key; `score_spreads` joins the two into the report's
`scores` section, with a warning for every used score that is nearly constant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from datacraft.core.rows import SCORE_PREFIX

#: the report's histograms have this many bins; "one bin" below means one of these
SPREAD_BINS = 30
#: nearly constant: std below this fraction of the score's range ...
LOW_STD_OF_RANGE = 0.05
#: ... or more than this share of the rows in one histogram bin
ONE_BIN_SHARE = 0.9
#: stage parameters whose value names a score: what the stage does with it, and (None: any) the stages
SCORE_PARAMS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "weight": ("selection weight", None), "by": ("dedup score", None), "score": ("dedup / ranking score", None),
    "scores": ("sort key", ("deita_select",)),  # heuristics' `scores` lists what it computes
}


def score_spread(values: np.ndarray, bins: int = SPREAD_BINS) -> dict[str, Any]:
    """n, min, max, mean, std, p10 / median / p90, the fullest bin's share; `constant` (one value)
    and `nearly_constant` (std < 5% of the range, or > 90% of the rows in one bin)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "constant": True, "nearly_constant": True}
    lo, hi = float(v.min()), float(v.max())
    std = float(v.std())
    constant = lo == hi
    top_share = 1.0 if constant else float(np.histogram(v, bins=bins, range=(lo, hi))[0].max() / v.size)
    p10, median, p90 = (float(q) for q in np.quantile(v, [0.1, 0.5, 0.9]))
    return {
        "n": int(v.size), "min": lo, "max": hi, "mean": round(float(v.mean()), 6), "std": round(std, 6),
        "p10": p10, "median": median, "p90": p90, "top_bin_share": round(top_share, 4),
        "constant": constant,
        "nearly_constant": constant or std < LOW_STD_OF_RANGE * (hi - lo) or top_share > ONE_BIN_SHARE,
    }


def score_uses(stages: Iterable[tuple[str, str, Mapping[str, Any]]]) -> dict[str, list[str]]:
    """score name → the `label.param` places that use it, from (label, stage name, resolved params)."""
    uses: dict[str, list[str]] = {}
    for label, stage_name, params in stages:
        for key, (role, only) in SCORE_PARAMS.items():
            if only is not None and stage_name not in only:
                continue
            value = params.get(key)
            for name in value if isinstance(value, list) else [value]:
                if isinstance(name, str) and name:
                    uses.setdefault(name.removeprefix(SCORE_PREFIX), []).append(f"{label}.{key} ({role})")
    return uses


def spread_warning(name: str, spread: Mapping[str, Any], uses: list[str]) -> str | None:
    """The warning for a used score that is nearly constant (None when it varies or is unused)."""
    if not uses or not spread.get("nearly_constant") or not spread.get("n"):
        return None
    where = ", ".join(uses)
    if spread["constant"]:
        return f"{name} is constant ({spread['min']:.3g} on all {spread['n']} rows) but used as {where}: it ranks nothing"
    rng = spread["max"] - spread["min"]
    return (f"{name} is nearly constant (std {spread['std']:.3g} = {spread['std'] / rng:.0%} of its range, "
            f"{spread['top_bin_share']:.0%} of {spread['n']} rows in one of {SPREAD_BINS} bins) but used as {where}: "
            "weighting by it is close to unweighted; use a better scorer or drop the weight")


def score_spreads(scores_all: Mapping[str, np.ndarray], scores_kept: Mapping[str, np.ndarray],
                  uses: Mapping[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Per score: the spread over every row that had it, the kept rows' median, where it is used,
    and a warning (see `spread_warning`)."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(scores_all):
        entry = score_spread(scores_all[name])
        kept = np.asarray(scores_kept.get(name, np.empty(0)), dtype=np.float64)
        kept = kept[np.isfinite(kept)]
        entry["kept_n"] = int(kept.size)
        entry["kept_median"] = float(np.median(kept)) if kept.size else None
        entry["used_as"] = list(uses.get(name, []))
        entry["warning"] = spread_warning(name, entry, entry["used_as"])
        out[name] = entry
    return out

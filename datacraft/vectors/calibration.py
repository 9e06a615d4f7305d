"""Choosing the semantic-dedup threshold with numbers in hand.

* `calibrate_pairs`: on labelled pairs (JSONL with text_a, text_b, label 1 = duplicate/paraphrase,
  optional `source`; e.g. tests/data/duplicate_pairs.jsonl from QQP / MRPC / PAWS) → precision /
  recall / F1 of "cos ≥ τ" per threshold, for each embedder, the τ with the best F1 on the pairs of
  `fit_sources` (default QQP + MRPC), and per source (plus all pairs) the F1 at that τ and the
  source's own best τ. PAWS is reported, not fitted: see `PAWS_NOTE`.
* `near_threshold_pairs`: on an unlabelled corpus → pairs whose cosine lies within `band` of τ,
  for a person to look at.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from datacraft.core.rows import text_expr
from datacraft.vectors.embedders import encode_sorted, load_embedder
from datacraft.vectors.knn import knn

DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.5, 1.0, 0.05))
DEFAULT_FIT_SOURCES = ("qqp", "mrpc")
PAWS_NOTE = (
    "PAWS pairs are adversarial word swaps (the same words in another order, often another meaning): "
    "a test of word-order sensitivity, not duplicates in the data-cleaning sense; its F1 is reported, "
    "not used to fit tau unless asked (--fit-source paws)."
)


def pr_table(sims: np.ndarray, labels: np.ndarray, thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS) -> list[dict[str, float]]:
    """Precision / recall / F1 of predicting a duplicate when sim ≥ τ, per τ."""
    rows = []
    positives = max(1, int(labels.sum()))
    for tau in thresholds:
        pred = sims >= tau
        tp = int((pred & (labels == 1)).sum())
        p = tp / max(1, int(pred.sum()))
        r = tp / positives
        rows.append({"threshold": float(tau), "precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / max(p + r, 1e-12), 4), "predicted": int(pred.sum())})
    return rows


def _best(table: list[dict[str, float]]) -> dict[str, float]:
    return max(table, key=lambda r: (r["f1"], r["threshold"]))


def calibrate_pairs(path: str, kinds: tuple[str, ...] = ("static", "sentence-transformers"), model: str = "embedded", thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS, fit_sources: tuple[str, ...] | None = DEFAULT_FIT_SOURCES) -> dict[str, Any]:
    """Per embedder: the PR table and best-F1 threshold on the pairs of `fit_sources` (None: all pairs),
    per source (and `all`) the F1 at that τ, the source's own best τ and the trivial baseline (every pair
    called a duplicate), and the encoding speed."""
    pairs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    a = [p["text_a"] for p in pairs]
    b = [p["text_b"] for p in pairs]
    labels = np.array([int(p["label"]) for p in pairs])
    sources = np.array([str(p.get("source") or "all") for p in pairs])
    fit = np.isin(sources, list(fit_sources)) if fit_sources else np.ones(len(pairs), dtype=bool)
    if not fit.any():
        raise ValueError(f"no pairs from sources {list(fit_sources or [])}; this file has {sorted(set(sources.tolist()))}")
    groups = {src: sources == src for src in sorted(set(sources.tolist()))}
    if len(groups) > 1:
        groups["all"] = np.ones(len(pairs), dtype=bool)
    out: dict[str, Any] = {"pairs": len(pairs), "positives": int(labels.sum()), "fit_sources": sorted(set(sources[fit].tolist())), "fit_pairs": int(fit.sum()), "embedders": {}}
    if "paws" in groups:
        out["note"] = PAWS_NOTE
    for kind in kinds:
        emb = load_embedder(kind, model)
        t0 = time.perf_counter()
        xa, xb = encode_sorted(emb, a), encode_sorted(emb, b)
        seconds = time.perf_counter() - t0
        sims = np.einsum("ij,ij->i", xa, xb)
        table = pr_table(sims[fit], labels[fit], thresholds)
        best = _best(table)
        per_source = {}
        for src, mask in groups.items():
            own = pr_table(sims[mask], labels[mask], thresholds)
            at_fit = next(r for r in own if r["threshold"] == best["threshold"])
            rate = float(labels[mask].mean())
            per_source[src] = {"pairs": int(mask.sum()), "positives": int(labels[mask].sum()), "at_fit": at_fit, "best": _best(own), "f1_all_duplicate": round(2 * rate / (1 + rate), 4)}
        out["embedders"][emb.name] = {"kind": kind, "texts_per_s": round(2 * len(pairs) / max(seconds, 1e-9), 1), "table": table, "best": best, "per_source": per_source}
    return out


def near_threshold_pairs(path: str, threshold: float, *, kind: str = "static", model: str = "embedded", text: str = "instruction_response", band: float = 0.03, samples: int = 20, k: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """Neighbour pairs of an unlabelled corpus with |cos − τ| ≤ band (a random sample of them)."""
    from datacraft.io.readers import read_all

    frame, _ = read_all(path)
    texts = frame.select(text_expr(text).alias("t"))["t"].to_list()
    x = encode_sorted(load_embedder(kind, model), texts)
    sims, idx = knn(x, min(k, max(1, len(texts) - 1)))
    rows, cols = np.nonzero((np.abs(sims - threshold) <= band) & (idx >= 0))
    seen: set[tuple[int, int]] = set()
    found = []
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        j = int(idx[r, c])
        key = (min(r, j), max(r, j))
        if key not in seen:
            seen.add(key)
            found.append((key, float(sims[r, c])))
    rng = np.random.default_rng(seed)
    chosen = [found[i] for i in rng.permutation(len(found))[:samples]]
    ids = frame["id"].to_list()
    return [{"cos": round(s, 4), "id_a": ids[i], "text_a": texts[i][:300], "id_b": ids[j], "text_b": texts[j][:300]} for (i, j), s in sorted(chosen, key=lambda t: -t[1])]

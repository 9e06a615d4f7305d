"""Choosing the semantic-dedup threshold with numbers in hand.

* `calibrate_pairs`: on labelled pairs (JSONL with text_a, text_b, label 1 = duplicate/paraphrase;
  e.g. tests/data/duplicate_pairs.jsonl from QQP / MRPC / PAWS) → precision / recall / F1 of
  "cos ≥ τ" per threshold, for each embedder, and the τ with the best F1.
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


def calibrate_pairs(path: str, kinds: tuple[str, ...] = ("static", "sentence-transformers"), model: str = "embedded", thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Per embedder: the PR table, the best-F1 threshold and the encoding speed."""
    pairs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    a = [p["text_a"] for p in pairs]
    b = [p["text_b"] for p in pairs]
    labels = np.array([int(p["label"]) for p in pairs])
    out: dict[str, Any] = {"pairs": len(pairs), "positives": int(labels.sum()), "embedders": {}}
    for kind in kinds:
        emb = load_embedder(kind, model)
        t0 = time.perf_counter()
        xa, xb = encode_sorted(emb, a), encode_sorted(emb, b)
        seconds = time.perf_counter() - t0
        sims = np.einsum("ij,ij->i", xa, xb)
        table = pr_table(sims, labels, thresholds)
        best = max(table, key=lambda r: (r["f1"], r["threshold"]))
        out["embedders"][emb.name] = {"kind": kind, "texts_per_s": round(2 * len(pairs) / max(seconds, 1e-9), 1), "table": table, "best": best}
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

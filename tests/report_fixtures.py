"""A hand-built finished run folder for the report / inspect tests (real Alpaca rows, the real
writers and `build_report`): read → heuristics → multihop (2-level synthetic lineage) → exact_dedup
→ mixture, with scores, embeddings, LLM counters and extras (dedup examples, group sizes, budgets)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from datacraft.core.rows import concat_batches, derived_id, make_row, set_scores, with_drop
from datacraft.io.readers import read_all
from datacraft.io.writers import merge_parts, write_part
from datacraft.report.summary import build_report

DATA = Path(__file__).parent / "data" / "alpaca_llamafactory_200.jsonl"
STAGES = ["read", "heuristics", "multihop", "exact_dedup", "mixture"]
TASKS = ["writing", "qa", "coding", "math"]


def _entry(name: str, n_in: int, kept: pl.DataFrame, dropped: pl.DataFrame, created: int = 0, seconds: float = 0.5,
           counters: dict[str, float] | None = None, extras: dict[str, Any] | None = None) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for r in dropped["drop_reason"].to_list() if dropped.height else []:
        reasons[r] = reasons.get(r, 0) + 1
    return {"name": name, "in": n_in, "kept": kept.height, "created": created, "dropped": reasons,
            "seconds": seconds, "counters": counters or {}, "extras": extras or {}}


def _embed(df: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    """A 16-d vector per row, clustered by task (stands in for the embedding stage)."""
    centers = {t: rng.normal(size=16) * 3 for t in TASKS}
    vecs = [(centers.get(t, np.zeros(16)) + rng.normal(size=16)).tolist() for t in df["task"].to_list()]
    return df.with_columns(pl.Series("embedding", vecs, dtype=pl.List(pl.Float64)))


def _write(batch: pl.DataFrame, folder: str, prefix: str, fmt: str) -> None:
    parts_dir = os.path.join(folder, f"_parts-{prefix}")
    part, _n = write_part(batch, parts_dir, fmt, keep_embedding=True)
    merge_parts([part], folder, prefix, fmt, 200_000)
    shutil.rmtree(parts_dir, ignore_errors=True)


def build_run(out: Path, dropped_format: str = "jsonl", embeddings: bool = True) -> dict[str, Any]:
    """Write a run folder under `out`; returns ids of interest (a dropped row, a hop-2 row, …)."""
    rng = np.random.default_rng(0)
    src = out.parent / f"{out.name}-input.jsonl"
    text = DATA.read_text(encoding="utf-8")
    src.write_text(text + '{"instruction": "broken\n{"no": "format here"}\n', encoding="utf-8")
    kept, read_dropped = read_all(str(src))
    kept = kept.with_columns(pl.Series("task", [TASKS[i % 4] for i in range(kept.height)]))
    if embeddings:
        kept = _embed(kept, rng)
    entries = [_entry("read", kept.height + read_dropped.height, kept, read_dropped, seconds=0.2)]
    all_dropped = [read_dropped]

    # heuristics: length score + a quality score; rows with a short response are dropped
    n_in = kept.height
    lengths = kept.select(pl.col("messages").list.last().struct.field("content").str.len_chars())[:, 0]
    kept = set_scores(kept, {"length": lengths, "quality": rng.uniform(1, 6, kept.height)})
    short = kept["scores.length"] < 40
    dropped = with_drop(kept.filter(short), "heuristics", "too_short", pl.lit("response has ") + pl.col("scores.length").cast(pl.Utf8) + " chars < 40")
    kept = kept.filter(~short)
    entries.append(_entry("heuristics", n_in, kept, dropped, seconds=0.05))
    all_dropped.append(dropped)

    # multihop: 4 hop-1 rows from seeds, one hop-2 row from each; one hop-2 row fails to parse
    n_in = kept.height
    seeds = kept.head(4).to_dicts()
    new_rows = []
    for i, seed in enumerate(seeds):
        q1 = f"Building on: {seed['messages'][0]['content'][:60]} — explain step by step (variant {i})."
        hop1 = make_row([{"role": "user", "content": q1}, {"role": "assistant", "content": "Step one... " * 8}],
                        id=derived_id([seed["id"]], "multihop:hop1", q1), task=seed["task"], source="multihop",
                        parent_ids=[seed["id"]], method="multihop:hop1")
        q2 = f"Now combine that with a constraint (hop 2, variant {i})."
        hop2 = make_row([{"role": "user", "content": q2}, {"role": "assistant", "content": "Combined answer. " * 6}],
                        id=derived_id([hop1["id"]], "multihop:hop2:reasoning", q2), task=seed["task"], source="multihop",
                        parent_ids=[hop1["id"]], method="multihop:hop2:reasoning")
        new_rows += [hop1, hop2]
    created = pl.DataFrame(new_rows, schema_overrides=kept.select(["messages", "lineage"]).schema)
    created = set_scores(created, {"length": [48.0] * len(new_rows), "quality": rng.uniform(2, 6, len(new_rows))})
    if embeddings:
        created = _embed(created, rng)
    kept = concat_batches([kept, created])
    failed = kept["id"] == new_rows[-1]["id"]
    dropped = with_drop(kept.filter(failed), "multihop", "parse_error", "judge output had no score after 3 tries")
    kept = kept.filter(~failed)
    counters = {"llm.requests": 24, "llm.cache_hits": 6, "llm.prompt_tokens": 5120, "llm.completion_tokens": 2048,
                "llm.failures.parse_error": 1, "llm.seconds": 12.5}
    entries.append(_entry("multihop", n_in, kept, dropped, created=len(new_rows), seconds=13.0, counters=counters))
    all_dropped.append(dropped)

    # exact_dedup: drop 3 rows as duplicates of the row before them
    n_in = kept.height
    ids = kept["id"].to_list()
    losers = {ids[10 + 2 * k]: ids[11 + 2 * k] for k in range(3)}
    is_dup = kept["id"].is_in(list(losers))
    dupes = kept.filter(is_dup).with_columns(pl.col("id").replace_strict(losers).alias("_winner"))
    dropped = with_drop(dupes, "exact_dedup", "duplicate", pl.lit("duplicate of ") + pl.col("_winner")).drop("_winner")
    kept = kept.filter(~is_dup)
    examples = [{"kept_id": w, "dropped_id": loser, "text": "…"} for loser, w in losers.items()]
    entries.append(_entry("exact_dedup", n_in, kept, dropped, seconds=0.1,
                          extras={"examples": examples, "group_sizes": {"1": n_in - 6, "2": 3}}))
    all_dropped.append(dropped)

    # mixture: keep a per-task budget of rows
    n_in = kept.height
    budgets = {"writing": 30, "qa": 25, "coding": 20, "math": 15}
    ranked = kept.with_columns(pl.col("id").cum_count().over("task").alias("_rank"))
    keep = ranked["_rank"] <= ranked["task"].replace_strict(budgets, return_dtype=pl.UInt32)
    keep = keep | ranked["lineage"].struct.field("method").str.starts_with("multihop")
    dropped = with_drop(kept.filter(~keep), "mixture", "not selected (budget)", "task budget reached")
    kept = kept.filter(keep)
    avail = ranked.group_by("task").len()
    avail_map = dict(zip(avail["task"].to_list(), avail["len"].to_list(), strict=True))
    entries.append(_entry("mixture", n_in, kept, dropped, seconds=0.3, counters={"select.gain_evals": 4242},
                          extras={"budgets": [{"task": t, "budget": b, "available": avail_map.get(t, 0), "gain": round(0.1 * b, 2)} for t, b in budgets.items()],
                                  "coverage": 0.87}))
    all_dropped.append(dropped)

    out.mkdir(parents=True, exist_ok=True)
    _write(kept, str(out / "data"), "train", "parquet")
    for name, frame in zip(STAGES, all_dropped, strict=True):
        if frame.height:
            _write(frame, str(out / "dropped"), name, dropped_format)
    config = {"name": "fixture", "input": {"path": str(src)}, "stages": [{"name": s} for s in STAGES[1:]],
              "output": {"path": str(out), "keep_embedding": True, "dropped_format": dropped_format}}
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    report = build_report(name="fixture", config_hash="0123456789abcdef", stage_order=STAGES,
                          stats={e["name"]: e for e in entries}, input_path=str(src), output=config["output"],
                          started="2025-01-01T12:00:00", seconds=14.2)
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    dup_loser, dup_winner = next(iter(losers.items()))
    return {
        "report": report,
        "kept_ids": kept["id"].to_list(),
        "short_id": all_dropped[1]["id"][0],
        "read_dropped_id": read_dropped["id"][0],
        "seed_id": seeds[0]["id"],
        "hop1_id": new_rows[0]["id"],
        "hop2_id": new_rows[1]["id"],
        "failed_hop2_id": new_rows[-1]["id"],
        "failed_seed_id": seeds[-1]["id"],
        "dup_loser": dup_loser,
        "dup_winner": dup_winner,
    }

"""Scoring throughput on CPU: the `quality` judge and `ifd` inside a Beam pipeline (FnApiRunner) vs raw
calls of the same scorer on the same rows, plus the cost per 1k rows of every scorer.

    python benchmarks/bench_score.py --quick     # 12 rows, < 60 s on an idle 2-core machine
    python benchmarks/bench_score.py             # 64 rows (--rows N to change)

Per-1k costs: quality / ifd from the raw timings, the others from one call of the stage core on
the same rows (diversity and ds2_curate on the 200-row slice with precomputed embeddings; the
ds2 fit has a fixed cost of a few seconds, so its per-1k figure falls with more rows).

The pipeline gets all rows in one Beam batch (the reader's batches are 4,096 rows), so both sides
sort the same prompts by length into the same forward batches. Model loading is excluded on both sides (the raw side warms the per-process model cache first;
the pipeline's DoFn.setup then reuses it). Last line: {"benchmark": "score", ..., "ratio_vs_raw": R}
with R = the smaller of the two pipeline/raw throughput ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._common import emit  # noqa: E402
from datacraft.beam.transform import stage_transform
from datacraft.core.rows import instruction_expr, response_expr  # noqa: E402
from datacraft.io.readers import read_all  # noqa: E402
from datacraft.stages.registry import build_stage  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "alpaca_llamafactory_200.jsonl"
_SINK: list[Any] = []


def _collect(item: Any) -> None:
    _SINK.append(item)


def run_beam(stage: Any, frame: pl.DataFrame, batch_rows: int) -> int:
    """Rows kept after running the stage's Beam transform on FnApiRunner."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    _SINK.clear()
    batches = [frame.slice(i, batch_rows) for i in range(0, frame.height, batch_rows)]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        res = p | beam.Create(batches) | stage_transform(stage)
        _ = res["kept"] | beam.Map(_collect)
    return sum(b.height for b in _SINK)


def best_of(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def tiny_reward_model(folder: str) -> str:
    """A randomly initialised one-label head on the embedded SmolLM2 (untrained: cost only)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from datacraft.llm.models import resolve_model

    path = resolve_model("embedded")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tok = AutoTokenizer.from_pretrained(path)
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None)
    args = ap.parse_args()
    n = args.rows or (12 if args.quick else 64)
    repeats = 1 if args.quick else 2
    rows, _ = read_all(str(DATA))
    frame = rows.head(n)
    pairs = frame.select(instruction_expr().alias("x"), response_expr().alias("y"))
    xs, ys = pairs["x"].to_list(), pairs["y"].to_list()
    chars, max_len = (600, 256) if args.quick else (1000, 512)
    qparams = {"max_field_chars": chars, "batch_size": 8}
    iparams = {"max_length": max_len, "batch_size": 8}

    # -- quality: raw judge vs pipeline
    from datacraft.llm.config import EngineConfig
    from datacraft.stages.score.ifd import IFDScorer
    from datacraft.stages.score.judge import DeitaJudge

    judge = DeitaJudge("quality", EngineConfig(), max_field_chars=chars, batch_size=8)
    judge.score(list(zip(xs[:2], ys[:2], strict=True)))  # load the model
    raw_q = best_of(lambda: judge.score(list(zip(xs, ys, strict=True))), repeats)
    pipe_q = best_of(lambda: run_beam(build_stage("quality", qparams), frame, n), repeats)

    # -- ifd: raw scorer vs pipeline
    scorer = IFDScorer(max_length=max_len, batch_size=8)
    raw_i = best_of(lambda: scorer.score(xs, ys, reverse=True), repeats)
    pipe_i = best_of(lambda: run_beam(build_stage("ifd", iparams), frame, n), repeats)

    ratio_q, ratio_i = raw_q / pipe_q, raw_i / pipe_i
    print(f"quality: raw {n / raw_q:.2f} rows/s, pipeline {n / pipe_q:.2f} rows/s, ratio {ratio_q:.3f}")
    print(f"ifd:     raw {n / raw_i:.2f} rows/s, pipeline {n / pipe_i:.2f} rows/s, ratio {ratio_i:.3f}")

    # -- cost per 1k rows of each scorer (stage core, models already loaded)
    cost: dict[str, float] = {}

    def per_1k(name: str, params: dict[str, Any], data: pl.DataFrame) -> None:
        stage = build_stage(name, params)
        stage.acquire()
        stage_fn = stage.process_all if hasattr(stage, "process_all") else stage.run
        seconds = best_of(lambda: stage_fn(data), 1)
        cost[name] = round(seconds / data.height * 1000, 2)

    try:
        per_1k("heuristics", {}, rows)
    except Exception as e:  # the lead's module may be absent in a partial checkout
        print(f"heuristics: skipped ({type(e).__name__})")
    cost["quality"] = round(raw_q / n * 1000, 2)
    per_1k("complexity", qparams, frame)
    cost["ifd"] = round(raw_i / n * 1000, 2)
    with tempfile.TemporaryDirectory() as tmp:
        per_1k("reward", {"model": tiny_reward_model(tmp), "batch_size": 8, "max_length": max_len}, frame)
    from datacraft.core.rows import text_expr
    from datacraft.vectors.embedders import embedder_from, encode_sorted

    pool = frame if args.quick else rows
    texts = pool.select(text_expr("conversation").alias("t"))["t"].to_list()
    embedder = embedder_from(None)
    encode_sorted(embedder, texts[:8])
    t0 = time.perf_counter()
    emb = encode_sorted(embedder, texts)
    cost["embed(MiniLM)"] = round((time.perf_counter() - t0) / len(texts) * 1000, 2)
    with_emb = pool.with_columns(pl.Series("embedding", emb))
    per_1k("diversity", {}, with_emb)
    scored = with_emb.with_columns(pl.Series("scores.rater", np.random.default_rng(0).integers(1, 7, pool.height).astype(float)))
    per_1k("ds2_curate", {"rating": "rater", "hoc_rounds": 50, "curation_epochs": 51}, scored)
    for k, v in cost.items():
        print(f"cost on CPU: {k:14s} {v:9.2f} s per 1k rows")

    emit({
        "benchmark": "score",
        "rows": n,
        "torch_threads": __import__("torch").get_num_threads(),
        "quality_rows_per_s_raw": n / raw_q,
        "quality_rows_per_s_pipeline": n / pipe_q,
        "ifd_rows_per_s_raw": n / raw_i,
        "ifd_rows_per_s_pipeline": n / pipe_i,
        "ratio_quality": ratio_q,
        "ratio_ifd": ratio_i,
        "cpu_seconds_per_1k_rows": cost,
        "ratio_vs_raw": min(ratio_q, ratio_i),
    })


if __name__ == "__main__":
    main()

"""Tokens/s of the `generate` stage in a Beam pipeline (FnApiRunner) vs the raw engine, same prompts.

    python benchmarks/bench_llm.py            # 64 prompts, max_tokens 32 (transformers on CPU)
    python benchmarks/bench_llm.py --quick    # 16 prompts, max_tokens 16 (< 60 s on 2 idle cores)
    python benchmarks/bench_llm.py --engine vllm --prompts 256 --max-tokens 128   # on a GPU

Both sides alternate (raw, pipeline, raw, pipeline, …, `--pairs` rounds, default 3) and
use one engine per process (the model is loaded once before timing), the same batch
size and greedy decoding; the pipeline side runs with the cache off so every prompt is generated.
The last line of output is one JSON object with `ratio_vs_raw` = pipeline tok/s / raw tok/s (the
median of the paired rounds), the CPU-time ratio, loadavg at start and end, and a verdict that says
"pairs disagree" when the rounds differ by more than 2×.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from datacraft.beam.transform import stage_transform
from datacraft.core.rows import batch_from_rows, make_row
from datacraft.core.stage import RunContext
from datacraft.llm.config import EngineConfig
from datacraft.llm.engines import create_engine
from datacraft.llm.types import Request, SamplingParams
from datacraft.stages.synthesize.generate import GenerateStage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Trial, emit, loadavg, robust_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "tests/data/selfinstruct_60.jsonl", ROOT / "tests/data/alpaca_llamafactory_200.jsonl"]


def load_prompts(n: int) -> list[str]:
    """n real instructions (Self-Instruct first, then Alpaca), each with its input."""
    out: list[str] = []
    for path in SOURCES:
        for line in path.open():
            r = json.loads(line)
            text = r.get("instruction", "") + (f"\n\n{r['input']}" if r.get("input") else "")
            if text.strip() and len(text) < 600:
                out.append(text)
            if len(out) == n:
                return out
    return out


def run_raw(config: EngineConfig, prompts: list[str], sp: SamplingParams) -> tuple[int, float, float]:
    engine = create_engine(config)
    engine.generate([Request.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2))])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    results = engine.generate([Request.chat([{"role": "user", "content": p}], sp) for p in prompts])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    engine.close()
    return sum(r.completion_tokens for r in results), seconds, cpu


def run_pipeline(config: EngineConfig, prompts: list[str], sp: SamplingParams, batch_rows: int) -> tuple[int, float, float]:
    llm = {**config.model_dump(), "cache": False}
    stage = GenerateStage({"max_tokens": sp.max_tokens}, context=RunContext(llm=llm))
    batches = [
        batch_from_rows([make_row([{"role": "user", "content": p}]) for p in prompts[i : i + batch_rows]])
        for i in range(0, len(prompts), batch_rows)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.jsonl"
        t0, c0 = time.perf_counter(), time.process_time()
        with beam.Pipeline(runner=FnApiRunner()) as p:
            outs = p | beam.Create(batches) | stage_transform(stage)
            outs["stats"] | beam.Map(_append_json, str(stats_path))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        stats = [json.loads(line) for line in stats_path.open()]
    return int(sum(s["counters"].get("llm.completion_tokens", 0.0) for s in stats)), seconds, cpu


def _append_json(record: dict, path: str) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batch-rows", type=int, default=64, help="rows per Beam batch (one engine call each)")
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds of the two sides")
    a = ap.parse_args()
    n = a.prompts or (16 if a.quick else 64)
    max_tokens = a.max_tokens or (16 if a.quick else 32)
    prompts = load_prompts(n)
    config = EngineConfig(engine=a.engine, model=a.model, batch_size=a.batch_size, cache=False)
    if a.engine == "vllm":  # two vLLM engines live in this process (raw, then the stage's)
        config = config.model_copy(update={"gpu_memory_utilization": 0.4, "max_model_len": 4096})
    sp = SamplingParams(max_tokens=max_tokens)
    # alternating rounds (raw, pipeline, raw, pipeline, …): both sides meet the same machine load
    load0 = loadavg()
    trials: dict[str, list[Trial]] = {"pipeline": [], "raw": []}
    tokens: dict[str, list[int]] = {"pipeline": [], "raw": []}
    for _ in range(a.pairs):
        for side in ("raw", "pipeline"):
            run = run_raw(config, prompts, sp) if side == "raw" else run_pipeline(config, prompts, sp, a.batch_rows)
            # the timed time per token: paired time ratios then compare like with like even if token counts differ
            trials[side].append(Trial(run[1] / max(run[0], 1), run[2] / max(run[0], 1), 0.0))
            tokens[side].append(run[0])
            print(f"{side:9s}: {run[0]} tokens in {run[1]:.1f} s wall, {run[2]:.1f} s CPU  load {loadavg()[:1]}", flush=True)
    record = {"benchmark": "llm", "engine": a.engine, "model": a.model, "prompts": len(prompts), "max_tokens": max_tokens,
              "batch_size": a.batch_size, "tokens": tokens}
    record.update(robust_record(trials, "pipeline", load0))  # seconds per token, pipeline / raw
    raw_tps, pipe_tps = 1 / record["sides"]["raw"]["seconds"], 1 / record["sides"]["pipeline"]["seconds"]
    print(f"raw engine : {raw_tps:.1f} tok/s; pipeline: {pipe_tps:.1f} tok/s (medians)")
    record.update(raw_tokens_per_s=raw_tps, pipeline_tokens_per_s=pipe_tps,
                  ratio_vs_raw=1 / record["ratio_vs_raw"],  # throughput, pipeline / raw: median of the pairs
                  ratio_cpu_vs_raw=1 / record.pop("cpu_ratio_vs_raw"))
    emit(record)


if __name__ == "__main__":
    main()

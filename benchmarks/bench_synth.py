"""Tokens/s of the `multihop` stage inside a Beam pipeline (FnApiRunner) vs the raw engine on the same prompts.

    python benchmarks/bench_synth.py            # 3 seeds, 2 hops, 2 personas (transformers on CPU)
    python benchmarks/bench_synth.py --quick    # 1 seed, 1 hop, max_tokens 24
    python benchmarks/bench_synth.py --engine vllm --seeds 10 --max-tokens 256   # on a GPU

The pipeline side runs the stage with the LLM cache off and records every batched request list
it sends (the in-process runner runs DoFns in this process); the raw side sends exactly those
lists, in the same order, straight to a second engine. The model is loaded before timing on both
sides. Pipeline tok/s = completion tokens / the stage's own seconds (its prompt building, parsing
and bookkeeping included). The last line of output is one JSON object with `ratio_vs_raw`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from datacraft.beam.transform import STATS, stage_transform
from datacraft.core.stage import RunContext
from datacraft.io.readers import read_all
from datacraft.llm import client as client_mod
from datacraft.llm.config import EngineConfig
from datacraft.llm.engines import create_engine
from datacraft.llm.types import Request, SamplingParams
from datacraft.stages.synthesize.multihop import MultiHopStage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "tests/data/selfinstruct_60.jsonl"

RECORDED: list[list[Request]] = []


def _recording(generate: Any) -> Any:
    def wrapper(self: Any, requests: list[Request], **kw: Any) -> Any:
        RECORDED.append(list(requests))
        return generate(self, requests, **kw)

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engine", default="transformers")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--hops", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.hops, args.max_tokens = 1, 1, 24
    config = EngineConfig(engine=args.engine, model=args.model, batch_size=args.batch_size, cache=False)

    # warm up: the model is loaded once per process, before either side is timed
    raw = create_engine(config)
    raw.generate([Request.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=2))])

    seeds, _ = read_all(str(SEEDS))
    seeds = seeds.head(args.seeds)
    params = {"hops": args.hops, "personas": 2, "persona_select": "first", "kg": not args.quick, "strict_tags": False,
              "ops": ["reasoning"] if args.quick else ["reasoning", "concrete", "constraint"],
              "max_tokens": args.max_tokens, "solver_max_tokens": args.max_tokens, "max_rows": 60}
    stage = MultiHopStage(params, context=RunContext(llm=config.model_dump(), seed=0))

    original = client_mod.LLMClient.generate
    client_mod.LLMClient.generate = _recording(original)  # type: ignore[method-assign]
    try:
        stats_path = Path(tempfile.mkdtemp()) / "stats.json"
        t0 = time.perf_counter()
        with beam.Pipeline(runner=FnApiRunner()) as p:
            outs = p | beam.Create([seeds]) | stage_transform(stage)
            _ = outs[STATS] | beam.Map(lambda s, path=str(stats_path): Path(path).write_text(json.dumps(s)))
        pipeline_wall = time.perf_counter() - t0
    finally:
        client_mod.LLMClient.generate = original  # type: ignore[method-assign]

    stats = json.loads(stats_path.read_text())
    c = stats["counters"]
    pipe_tokens = c.get("llm.completion_tokens", 0.0)
    pipe_seconds = stats["seconds"]

    t0 = time.perf_counter()
    raw_tokens = 0
    for requests in RECORDED:
        raw_tokens += sum(r.completion_tokens for r in raw.generate(requests))
    raw_seconds = time.perf_counter() - t0
    raw.close()

    pipe_tps = pipe_tokens / pipe_seconds if pipe_seconds else 0.0
    raw_tps = raw_tokens / raw_seconds if raw_seconds else 0.0
    print(f"engine calls: {len(RECORDED)} ({sum(len(r) for r in RECORDED)} requests); "
          f"stage created {stats['created']}, kept {stats['kept']}, dropped {stats['dropped']}")
    print(f"pipeline: {pipe_tokens:.0f} tokens in {pipe_seconds:.1f} s (stage), {pipeline_wall:.1f} s wall -> {pipe_tps:.1f} tok/s")
    print(f"raw:      {raw_tokens} tokens in {raw_seconds:.1f} s -> {raw_tps:.1f} tok/s")
    emit({"benchmark": "synth", "engine": args.engine, "model": args.model, "seeds": args.seeds, "hops": args.hops,
          "engine_calls": len(RECORDED), "requests": sum(len(r) for r in RECORDED), "created": stats["created"],
          "pipeline_tok_s": pipe_tps, "raw_tok_s": raw_tps, "pipeline_wall_s": pipeline_wall,
          # load-independent: the stage's own time outside the engine (prompt building, parsing, rows)
          "stage_overhead_s": pipe_seconds - c.get("llm.seconds", 0.0),
          "ratio_vs_raw": pipe_tps / raw_tps if raw_tps else 0.0})


if __name__ == "__main__":
    main()

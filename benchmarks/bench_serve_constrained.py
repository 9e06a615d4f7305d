"""Tokens/s of `datacraft serve`'s step scheduler with and without JSON-schema constrained decoding
(xgrammar), same prompts, same batch, greedy, on the embedded model.

    python benchmarks/bench_serve_constrained.py            # 8 prompts at once, max_tokens 48, 3 pairs
    python benchmarks/bench_serve_constrained.py --quick    # 4 prompts, max_tokens 24, 2 pairs
    python benchmarks/bench_serve_constrained.py --threads 1   # torch threads (default: torch's)

Sides alternate (free, json, free, json, …) after one untimed warm-up each (the grammar is compiled
in the warm-up). tok/s = completion tokens / wall seconds of the round. The last line is one JSON
object: the median tok/s of each side, `ratio_json_vs_free` (the median of the paired ratios, < 1:
constraints cost), the same per CPU second (steadier on a shared machine), the share of answers that parse as the schema on each side, and loadavg.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, emit, loadavg  # noqa: E402
from bench_llm import load_prompts  # noqa: E402

from datacraft.llm.config import EngineConfig  # noqa: E402
from datacraft.llm.engines import TransformersEngine  # noqa: E402
from datacraft.llm.scheduler import Job, JsonGrammars, StepScheduler  # noqa: E402
from datacraft.llm.types import Request, Result, SamplingParams  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 60}, "confidence": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}


def run_side(scheduler: StepScheduler, requests: list[Request], grammar: object) -> list[Result]:
    """Submit every request at once and wait for all results."""
    results: list[Result] = []
    done = threading.Event()

    def sink(kind: str, payload: object) -> None:
        if kind == "done":
            results.append(payload)  # type: ignore[arg-type]
            if len(results) == len(requests):
                done.set()

    for request in requests:
        scheduler.submit(Job(request, sink, grammar=grammar))
    done.wait()
    return results


def parses(result: Result) -> bool:
    try:
        value = json.loads(result.text)
    except ValueError:
        return False
    return isinstance(value, dict) and isinstance(value.get("answer"), str) and isinstance(value.get("confidence"), int)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a = parser.parse_args()
    n, max_tokens, pairs = (4, 24, 2) if a.quick else (a.prompts, a.max_tokens, a.pairs)

    engine = TransformersEngine(EngineConfig(cache=False, cpu_threads=a.threads, batch_size=n))
    scheduler = StepScheduler(engine, batch_size=n)
    scheduler.start()
    t0 = time.perf_counter()
    grammar = JsonGrammars(engine.tokenizer, engine.lm.config.vocab_size).compile({"type": "json_schema", "json_schema": {"schema": SCHEMA}})
    compile_s = time.perf_counter() - t0
    sp = SamplingParams(max_tokens=max_tokens)
    instruction = "Answer as JSON with the fields answer (a short string) and confidence (an integer from 1 to 5).\n\n"
    requests = [Request.chat([{"role": "user", "content": instruction + p}], sp) for p in load_prompts(n)]

    outputs: dict[str, list[list[Result]]] = {"free": [], "json": []}
    sides = {
        "free": lambda: outputs["free"].append(run_side(scheduler, requests, None)),
        "json": lambda: outputs["json"].append(run_side(scheduler, requests, grammar)),
    }
    load_start = loadavg()
    trials = alternate(sides, pairs=pairs)
    scheduler.stop()
    outputs = {k: v[1:] for k, v in outputs.items()}  # the first run of each side was the warm-up
    rates = {k: [sum(r.completion_tokens for r in out) / t.wall for out, t in zip(outputs[k], trials[k], strict=True)] for k in sides}
    paired_ratios = [j / f for f, j in zip(rates["free"], rates["json"], strict=True)]
    # tokens per CPU second: on a shared machine steadier than wall time
    cpu_rates = {k: [sum(r.completion_tokens for r in out) / t.cpu for out, t in zip(outputs[k], trials[k], strict=True)] for k in sides}
    import torch

    emit({
        "benchmark": "serve_constrained",
        "model": "embedded (SmolLM2-135M-Instruct, fp32, CPU)",
        "constraint": "xgrammar JSON schema (2 fields), compact whitespace",
        "prompts": n, "max_tokens": max_tokens, "pairs": pairs, "torch_threads": torch.get_num_threads(),
        "tok_s_free": round(statistics.median(rates["free"]), 2),
        "tok_s_json": round(statistics.median(rates["json"]), 2),
        "ratio_json_vs_free": round(statistics.median(paired_ratios), 3),
        "ratios": [round(r, 3) for r in paired_ratios],
        "tok_per_cpu_s_free": round(statistics.median(cpu_rates["free"]), 2),
        "tok_per_cpu_s_json": round(statistics.median(cpu_rates["json"]), 2),
        "cpu_ratio_json_vs_free": round(statistics.median(j / f for f, j in zip(cpu_rates["free"], cpu_rates["json"], strict=True)), 3),
        "tokens_per_round": {k: [sum(r.completion_tokens for r in out) for out in outputs[k]] for k in sides},
        "schema_valid_share": {k: round(sum(parses(r) for out in outputs[k] for r in out) / (n * pairs), 3) for k in sides},
        "grammar_setup_s": round(compile_s, 2),
        "loadavg_start": load_start, "loadavg_end": loadavg(),
    })


if __name__ == "__main__":
    main()

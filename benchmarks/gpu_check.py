"""GPU checks of the LLM layer for a lent GPU machine (called by benchmarks/gpu_check.sh).

1. environment: torch / CUDA / vLLM versions, the GPU;
2. the `gpu`-marked tests (vLLM on the embedded SmolLM2 checkpoint: batched chat, JSON schema
   through `structured_outputs`, logprobs);
3. tokens/s raw vs through the pipeline stage (`bench_llm.py`) for vLLM when installed, and for
   the transformers engine on CUDA.

Every step is time-boxed and failures are recorded, not fatal; the summary goes to
$OUT/gpu_check.json (or ./gpu_check.json) and is printed as the last line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step(name: str, cmd: list[str], timeout: int, summary: dict) -> str:
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        out, rc = f"{err.stdout or ''}{err.stderr or ''}\nTIMEOUT after {timeout} s", 124
    summary["steps"][name] = {"rc": rc, "seconds": round(time.time() - t0, 1), "tail": out[-1500:]}
    print(f"== {name}: rc={rc} in {time.time() - t0:.0f} s", flush=True)
    print(out[-3000:], flush=True)
    return out


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def main() -> None:
    quick = "--quick" in sys.argv
    summary: dict = {"steps": {}}
    import torch

    summary["torch"] = torch.__version__
    summary["cuda"] = torch.cuda.is_available()
    summary["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    has_vllm = importlib.util.find_spec("vllm") is not None
    summary["vllm"] = None
    if has_vllm:
        import vllm

        summary["vllm"] = vllm.__version__
    py = sys.executable
    step("convert_embedded", [py, "-c", "from datacraft.llm.models import resolve_model; print(resolve_model('embedded'))"], 300, summary)
    n, mt = ("64", "64") if quick else ("256", "128")
    if has_vllm:
        step("pytest_gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/test_llm_vllm.py", "-p", "no:cacheprovider"], 420, summary)
        out = step("bench_vllm", [py, "benchmarks/bench_llm.py", "--engine", "vllm", "--prompts", n, "--max-tokens", mt,
                                  "--batch-size", "256", "--batch-rows", "256"], 420, summary)
        summary["bench_vllm"] = last_json(out)
    out = step("bench_transformers_cuda", [py, "benchmarks/bench_llm.py", "--prompts", n, "--max-tokens", mt,
                                           "--batch-size", "32", "--batch-rows", "64"], 300, summary)
    summary["bench_transformers_cuda"] = last_json(out)
    target = Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    target.write_text(json.dumps(summary, indent=2))
    brief = {k: v for k, v in summary.items() if k != "steps"}
    brief["rc"] = {k: v["rc"] for k, v in summary["steps"].items()}
    print(json.dumps(brief))


if __name__ == "__main__":
    main()

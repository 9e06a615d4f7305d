"""GPU checks of the LLM layer for a lent GPU machine (called by benchmarks/gpu_check.sh).

1. environment: torch / CUDA / vLLM versions, the GPU;
2. the `gpu`-marked tests (vLLM on the embedded SmolLM2 checkpoint: batched chat, JSON schema
   through `structured_outputs`, logprobs);
3. tokens/s raw vs through the pipeline stage (`bench_llm.py`) for vLLM when installed, and for
   the transformers engine on CUDA;
4. with vLLM, the main job cut down (`configs/gpu.yaml` on the embedded SmolLM2 served by vLLM, a
   few hundred rows, LoRA SFT / DPO for a few steps): tokens/s of each LLM stage next to raw vLLM's,
   training steps/s, the ledger (`mission` in the summary). `--mission` runs only this step.

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


#: configs/gpu.yaml cut down to minutes on the embedded model (the Hub is not reachable from a lent GPU)
MISSION_SETS = [
    "llm.model=embedded", "llm.max_model_len=2048", "reflection.student=embedded", "mosaic.tokenizer=embedded",
    "train_sft.model=embedded", "train_dpo.model=embedded", "multihop.slice=8", "multihop.max_rows=48",
    "reflection.slice=64", "train_sft.max_steps=20", "train_dpo.max_steps=10", "train_sft.max_length=1024",
    "train_dpo.max_length=1024", "train_sft.epochs=1",
]


def mission(py: str, quick: bool, summary: dict) -> None:
    """The cut-down main job; its report's per-stage LLM tokens/s and training speed go to `summary`."""
    out_dir = Path(os.environ.get("OUT", ".")) / "mission"
    limit = "40" if quick else "150"
    sets = [a for s in [*MISSION_SETS, f"input.limit={limit}"] for a in ("--set", s)]
    step("mission", [py, "-m", "datacraft.cli", "run", "configs/gpu.yaml", "-o", str(out_dir), "--overwrite", *sets], 480, summary)
    report_path = out_dir / "report.json"
    if not report_path.exists():
        summary["mission"] = None
        return
    report = json.loads(report_path.read_text())
    llm = {}
    for s in report["stages"]:
        c = s.get("counters") or {}
        if c.get("llm.completion_tokens") and c.get("llm.seconds"):
            llm[s["name"]] = round(c["llm.completion_tokens"] / c["llm.seconds"], 1)
    raw = (summary.get("bench_vllm") or {}).get("raw_tokens_per_s")
    summary["mission"] = {
        "ledger_ok": report.get("ledger_ok"), "seconds": report.get("seconds"),
        "created": {s["name"]: s["created"] for s in report["stages"] if s.get("created")},
        "llm_tokens_per_s": llm, "raw_vllm_tokens_per_s": raw,
        "vs_raw": {k: round(v / raw, 3) for k, v in llm.items()} if raw else None,
        "training": {k: {f: t.get(f) for f in ("status", "steps", "steps_per_second", "error")} | {"tokens_per_s": (t.get("tokens") or {}).get("per_second")}
                     for k, t in (report.get("training") or {}).items()},
    }


def main() -> None:
    quick = "--quick" in sys.argv
    only_mission = "--mission" in sys.argv
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
    if has_vllm and only_mission:
        mission(py, quick, summary)
    elif has_vllm:
        step("pytest_gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/test_llm_vllm.py", "-p", "no:cacheprovider"], 420, summary)
        out = step("bench_vllm", [py, "benchmarks/bench_llm.py", "--engine", "vllm", "--prompts", n, "--max-tokens", mt,
                                  "--batch-size", "256", "--batch-rows", "256"], 420, summary)
        summary["bench_vllm"] = last_json(out)
        mission(py, quick, summary)
    if not only_mission:
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

#!/usr/bin/env bash
# GPU checks of the LLM layer on a lent GPU machine (one short run; see benchmarks/gpu_check.py).
#   bash benchmarks/gpu_check.sh            # vLLM tests + 256 prompts x 128 tokens, raw vs pipeline
#   bash benchmarks/gpu_check.sh --quick    # 64 prompts x 64 tokens
#   bash benchmarks/gpu_check.sh --mission  # only configs/gpu.yaml cut down (embedded model on vLLM, LoRA SFT + DPO)
# With vLLM, the full check also runs the cut-down main job after the raw-vs-pipeline benchmark.
# Writes $OUT/gpu_check.json; the last line printed is the JSON summary.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv 2>/dev/null || echo "no nvidia-smi"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_CONFIGURE_LOGGING=0
exec python benchmarks/gpu_check.py "$@"

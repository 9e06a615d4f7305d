"""The vLLM engine: request building against a stand-in `vllm` module (CPU: explicit max_tokens,
`structured_outputs` instead of the removed guided_* fields, logprobs mapping), and a `gpu` test
with the real vLLM on the embedded SmolLM2 checkpoint."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from datacraft.llm.client import LLMClient
from datacraft.llm.config import EngineConfig
from datacraft.llm.engines import VLLMEngine, create_engine
from datacraft.llm.types import Request, SamplingParams

pytestmark = pytest.mark.timeout(600)


@dataclass
class _Logprob:
    logprob: float
    rank: int
    decoded_token: str


@dataclass
class _Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[dict[int, _Logprob]] | None = None


@dataclass
class _Output:
    prompt_token_ids: list[int]
    outputs: list[_Completion] = field(default_factory=list)


class _KW:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw


class _LLM:
    instances: list[_LLM] = []

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.calls: list[tuple[list, list]] = []
        _LLM.instances.append(self)

    def chat(self, conversations: list, sampling_params: list, use_tqdm: bool = True) -> list[_Output]:
        self.calls.append((conversations, sampling_params))
        steps = [{5: _Logprob(-0.1, 1, "4"), 6: _Logprob(-2.4, 2, "5"), 9: _Logprob(-7.0, 9, "x")}]
        return [_Output([1, 2, 3], [_Completion("4", [5], "stop", steps)]) for _ in conversations]

    def generate(self, prompts: list, sampling_params: list, use_tqdm: bool = True) -> list[_Output]:
        self.calls.append((prompts, sampling_params))
        return [_Output([1] * len(p), [_Completion(f"raw:{p}", [7], "stop")]) for p in prompts]


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = _LLM
    vllm.SamplingParams = _KW
    sp_mod = types.ModuleType("vllm.sampling_params")
    sp_mod.StructuredOutputsParams = _KW
    vllm.sampling_params = sp_mod
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp_mod)
    _LLM.instances.clear()
    return vllm


def test_vllm_engine_builds_current_api_requests(fake_vllm):
    engine = create_engine(EngineConfig(engine="vllm", model="some/hub-model", max_model_len=2048, gpu_memory_utilization=0.5))
    assert isinstance(engine, VLLMEngine)
    llm_kw = _LLM.instances[0].kw
    assert llm_kw["model"] == "some/hub-model" and llm_kw["max_model_len"] == 2048 and llm_kw["gpu_memory_utilization"] == 0.5
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    reqs = [
        Request.chat([{"role": "user", "content": "rate"}], SamplingParams(max_tokens=3, logprobs=True, top_logprobs=2)),
        Request.chat([{"role": "user", "content": "json"}], SamplingParams(max_tokens=64), json_schema=schema),
    ]
    out = engine.generate(reqs)
    convs, sps = _LLM.instances[0].calls[0]
    assert len(_LLM.instances[0].calls) == 1 and convs[0] == [{"role": "user", "content": "rate"}]
    assert sps[0].kw["max_tokens"] == 3 and sps[0].kw["logprobs"] == 2 and "structured_outputs" not in sps[0].kw
    assert sps[1].kw["max_tokens"] == 64 and sps[1].kw["structured_outputs"].kw == {"json": schema}
    assert not any(k.startswith("guided") for sp in sps for k in sp.kw)
    first = out[0].logprobs[0]
    assert (first.token, first.logprob, first.top) == ("4", -0.1, {"4": -0.1, "5": -2.4})
    assert out[0].prompt_tokens == 3 and out[0].completion_tokens == 1 and out[0].finish_reason == "stop"


def test_vllm_raw_prompts_use_generate_and_keep_request_order(fake_vllm):
    """Raw prompts (the released Deita scorers) go to `LLM.generate` without a chat template,
    chat requests to `LLM.chat`; results come back in request order."""
    engine = create_engine(EngineConfig(engine="vllm", model="hkust-nlp/deita-quality-scorer"))
    sp = SamplingParams(max_tokens=3, logprobs=True, top_logprobs=20)
    reqs = [Request.raw("rate A", sp), Request.chat([{"role": "user", "content": "hi"}], sp), Request.raw("rate BB", sp)]
    out = engine.generate(reqs)
    calls = _LLM.instances[0].calls
    assert [c[0] for c in calls] == [[[{"role": "user", "content": "hi"}]], ["rate A", "rate BB"]]
    assert calls[1][1][0].kw["logprobs"] == 20
    assert out[0].text == "raw:rate A" and out[1].text == "4" and out[2].text == "raw:rate BB"
    assert out[2].prompt_tokens == len("rate BB")


def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(RuntimeError, match="datacraft-curate\\[vllm\\]"):
        create_engine(EngineConfig(engine="vllm"))


@pytest.mark.gpu
def test_vllm_real_generation_on_gpu():
    """On a GPU with vLLM installed: the embedded checkpoint, batched chat, JSON schema, logprobs."""
    client = LLMClient(EngineConfig(engine="vllm", model="embedded", max_model_len=2048, gpu_memory_utilization=0.3))
    schema = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}}, "required": ["color"]}
    reqs = [Request.chat([{"role": "user", "content": f"Name a fruit number {i}."}], SamplingParams(max_tokens=24)) for i in range(8)]
    reqs.append(Request.chat([{"role": "user", "content": "Pick a color. Answer in JSON."}], SamplingParams(max_tokens=32), json_schema=schema))
    reqs.append(Request.chat([{"role": "user", "content": "Rate 1-6: 'ok'"}], SamplingParams(max_tokens=1, logprobs=True, top_logprobs=10)))
    reqs.append(Request.raw("The capital of France is", SamplingParams(max_tokens=4, logprobs=True, top_logprobs=5)))  # LLM.generate
    out = client.generate(reqs)
    counters = client.pop_counters()
    client.close()
    assert all(r.ok and r.text.strip() for r in out), [r.error for r in out]
    assert counters["llm.engine_calls"] == 1  # one engine call: chat and raw prompts split inside
    assert out[8].parsed["color"] in {"red", "green", "blue"}  # the constraint was applied, not ignored
    assert len(out[9].logprobs[0].top) == 10
    assert len(out[10].logprobs[0].top) == 5

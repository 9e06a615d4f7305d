"""The `openai` engine against real local HTTP servers: a fault-injecting one (every fault ends in a
retry or a drop with the right reason, nothing hangs) and `datacraft serve`'s app over the embedded
model (real generation, logprobs, micro-batching)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi import Request as HTTPRequest

from datacraft.core.rows import batch_from_rows, make_row
from datacraft.core.stage import RunContext
from datacraft.llm.client import LLMClient
from datacraft.llm.config import EngineConfig
from datacraft.llm.engines import OpenAIEngine, retry_after_seconds
from datacraft.llm.server import create_app
from datacraft.llm.testing import ServerThread, completion, fault_app
from datacraft.llm.types import Request, SamplingParams
from datacraft.stages.synthesize.generate import GenerateStage

pytestmark = pytest.mark.timeout(120)
DATA = Path(__file__).parent / "data" / "selfinstruct_60.jsonl"


def prompts(n: int) -> list[str]:
    """The n shortest real Self-Instruct prompts (instruction + input)."""
    rows = [json.loads(line) for line in DATA.open()]
    texts = [r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "") for r in rows]
    return sorted(texts, key=len)[:n]


@pytest.fixture(scope="module")
def faults():
    app = fault_app()
    with ServerThread(app) as server:
        yield server, app.state.hits


def engine_for(server: ServerThread, mode: str, **kw: object) -> OpenAIEngine:
    cfg = {"engine": "openai", "base_url": f"{server.url}/{mode}/v1", "model": "m", "timeout_s": 1.0,
           "max_retries": 2, "retry_backoff_s": 0.01, **kw}
    return OpenAIEngine(EngineConfig.model_validate(cfg))


def one(engine: OpenAIEngine, text: str = "hello") -> object:
    return engine.generate([Request.chat([{"role": "user", "content": text}], SamplingParams(max_tokens=8))])[0]


@pytest.mark.parametrize(
    ("mode", "hits", "error"),
    [
        ("ok", 1, None),
        ("fail500x2", 3, None),  # two 500s, then success on the third try
        ("always500", 3, "llm_error: http 500 after 3 tries"),
        ("malformed", 3, "llm_error: malformed response after 3 tries"),
        ("truncated", 3, "llm_error: malformed response after 3 tries"),
        ("cutoff", 3, "llm_error: connection error (RemoteProtocolError) after 3 tries"),
        ("badrequest", 1, "llm_error: http 400: model not found"),  # not retried
    ],
)
def test_faults_retry_or_fail_with_reason(faults, mode, hits, error):
    server, counts = faults
    before = counts[mode]
    result = one(engine_for(server, mode))
    assert counts[mode] - before == hits
    assert result.error == error
    if error is None:
        assert result.text == "echo: hello" and result.finish_reason == "stop"


def test_hang_times_out_per_try(faults):
    server, counts = faults
    engine = engine_for(server, "hang", timeout_s=0.5, max_retries=1)
    t0 = time.monotonic()
    result = one(engine)
    assert result.error == "llm_error: timeout after 2 tries"
    assert time.monotonic() - t0 < 5


def test_429_honours_retry_after(faults):
    server, _ = faults
    engine = engine_for(server, "ratelimit1", retry_backoff_s=0.0)
    t0 = time.monotonic()
    result = one(engine)
    assert result.ok and result.text == "echo: hello"
    assert time.monotonic() - t0 >= 0.9  # the server said Retry-After: 1
    assert engine.stats["retries"] == 1
    assert retry_after_seconds("2.5") == 2.5 and retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_bounded_concurrency_and_order(faults):
    server, counts = faults
    engine = engine_for(server, "ok", max_concurrency=3)
    texts = [f"q{i}" for i in range(20)]
    out = engine.generate([Request.chat([{"role": "user", "content": t}]) for t in texts])
    assert [r.text for r in out] == [f"echo: {t}" for t in texts]


def in_flight_app() -> Any:
    """A server that holds each request a while and records the most requests it held at once."""
    app = FastAPI()
    app.state.now, app.state.peak = 0, 0

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest) -> dict[str, Any]:
        body = await request.json()
        app.state.now += 1  # one event loop: no lock needed
        app.state.peak = max(app.state.peak, app.state.now)
        try:
            await asyncio.sleep(0.2)
        finally:
            app.state.now -= 1
        return completion(f"echo: {body['messages'][-1]['content']}")

    return app


@pytest.mark.parametrize("bound", [1, 3])
def test_in_flight_requests_reach_and_never_exceed_max_concurrency(bound):
    app = in_flight_app()
    with ServerThread(app) as server:
        engine = OpenAIEngine(EngineConfig(engine="openai", base_url=f"{server.url}/v1", model="m", timeout_s=30, max_concurrency=bound))
        texts = [f"q{i}" for i in range(4 * bound + 2)]
        out = engine.generate([Request.chat([{"role": "user", "content": t}]) for t in texts])
    assert [r.text for r in out] == [f"echo: {t}" for t in texts]
    assert app.state.peak == bound and app.state.now == 0


def test_api_key_from_env_is_sent_and_never_in_errors(faults, monkeypatch):
    server, _ = faults
    monkeypatch.setenv("DC_TEST_KEY", "sk-secret-123")
    engine = engine_for(server, "badrequest", api_key_env="DC_TEST_KEY")
    result = one(engine, "sk-secret-123")
    assert "sk-secret-123" not in (result.error or "")
    body = engine.body(Request.chat([{"role": "user", "content": "x"}], SamplingParams(top_logprobs=3)))
    assert body["logprobs"] is True and body["top_logprobs"] == 3 and "sk-secret" not in json.dumps(body)


def test_extra_body_and_schema_are_sent():
    engine = OpenAIEngine(EngineConfig(engine="openai", base_url="http://x/v1", extra_body={"top_k": 20, "repetition_penalty": 1.1}))
    body = engine.body(Request.chat([{"role": "user", "content": "x"}], SamplingParams(max_tokens=5, seed=3), json_schema={"type": "object"}))
    assert body["top_k"] == 20 and body["repetition_penalty"] == 1.1 and body["seed"] == 3 and body["max_tokens"] == 5
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}


def test_stage_drops_failed_rows_with_reasons(faults, tmp_path):
    """Through the generate stage: every row ends kept or dropped with the engine's reason."""
    server, _ = faults
    rows = [make_row([{"role": "user", "content": t}]) for t in ("a", "b")]
    for mode, reason in (("always500", "llm_error"), ("empty", "empty_output"), ("length", "length")):
        llm = {"engine": "openai", "base_url": f"{server.url}/{mode}/v1", "max_retries": 1, "retry_backoff_s": 0.01}
        stage = GenerateStage({"llm": llm, "max_tokens": 8, "drop_on_length": True}, context=RunContext(cache_dir=str(tmp_path)))
        kept, dropped, stats = stage.run_local([batch_from_rows(rows)])
        assert kept.height == 0 and dropped.height == 2
        assert set(dropped["drop_reason"]) == {reason} and set(dropped["drop_stage"]) == {"generate"}
        assert stats[0].counters[f"llm.failures.{reason}"] == 2
        if reason == "llm_error":
            assert dropped["drop_detail"][0] == "llm_error: http 500 after 2 tries"


def test_real_server_over_the_embedded_model():
    """`datacraft serve`'s app: real generation through HTTP, logprobs, requests batched."""
    app = create_app(EngineConfig(batch_size=8, cache=False), max_wait_ms=50, default_max_tokens=16)
    with ServerThread(app) as server:
        cfg = EngineConfig(engine="openai", base_url=f"{server.url}/v1", model="embedded", timeout_s=90, max_concurrency=8)
        client = LLMClient(cfg)
        sp = SamplingParams(max_tokens=8, logprobs=True, top_logprobs=5)
        out = client.generate([Request.chat([{"role": "user", "content": p}], sp) for p in prompts(4)])
        client.close()
        stats = app.state.scheduler.stats
    assert all(r.ok and r.text.strip() for r in out), [r.error for r in out]
    assert all(r.prompt_tokens > 10 and 0 < r.completion_tokens <= 8 for r in out)
    first = out[0].logprobs[0]
    assert len(first.top) == 5 and first.token in first.top  # greedy: the chosen token is the top-1
    assert first.logprob == pytest.approx(max(first.top.values()), abs=1e-4)
    assert stats["tokens"] > stats["steps"] + stats["prefills"]  # concurrent requests shared forward passes


def test_raw_completions_through_the_server_and_the_deita_judge():
    """Raw prompts (the released Deita scorers' strings) go to `/v1/completions` without a chat
    template; the judge's engine backend then agrees with the in-process logits backend."""
    from datacraft.llm.cache import request_key
    from datacraft.stages.score.judge import DeitaJudge

    sp = SamplingParams(max_tokens=3, logprobs=True, top_logprobs=20)
    raw, chat = Request.raw("Q: 2+2?\nA:", sp), Request.chat([{"role": "user", "content": "Q: 2+2?\nA:"}], sp)
    assert request_key("e", "m", raw) != request_key("e", "m", chat)
    assert OpenAIEngine(EngineConfig(engine="openai", base_url="http://x/v1", model="m")).body(raw)["prompt"] == "Q: 2+2?\nA:"

    pairs = [(p, "Paris is the capital of France.") for p in prompts(3)]
    app = create_app(EngineConfig(batch_size=8, cache=False), max_wait_ms=50, default_max_tokens=16)
    with ServerThread(app) as server:
        cfg = EngineConfig(engine="openai", base_url=f"{server.url}/v1", model="embedded", timeout_s=90, max_concurrency=8)
        client = LLMClient(cfg)
        out = client.generate([Request.raw(p, sp) for p in prompts(2)])
        judge = DeitaJudge("quality", cfg, template="deita", client=client)
        assert judge.backend == "engine"
        over_http = judge.score(pairs)
        client.close()
    assert all(r.ok and r.logprobs and len(r.logprobs[0].top) == 20 for r in out), [r.error for r in out]
    in_process = DeitaJudge("quality", EngineConfig(), template="deita").score(pairs)
    for remote, local in zip(over_http, in_process, strict=True):
        assert remote.method in ("logprobs", "logprobs_partial")
        # all six digits in the top 20: the same softmax over the six digit logits
        if remote.method == "logprobs":
            assert remote.value == pytest.approx(local.value, abs=0.02)

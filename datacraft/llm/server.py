"""A small OpenAI-compatible server over the transformers engine.

Several workers (or several pipelines) can share one in-process model through it: concurrent
requests are gathered into batches of up to `batch_size` (waiting at most `max_wait_ms` for more)
and each batch is one engine call. Endpoints: `GET /health`, `GET /v1/models`,
`POST /v1/chat/completions` and `POST /v1/completions` (raw prompts, legacy logprobs; both
without streaming, n=1; `response_format` schemas are not enforced during decoding — the
datacraft client validates them).

    datacraft serve --model embedded --port 8000
    python -m datacraft.llm.server --model embedded --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from datacraft.llm.config import EngineConfig
from datacraft.llm.engines import create_engine
from datacraft.llm.types import Engine, Request, Result, SamplingParams


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type", "text") == "text")
        return self.content or ""


class _SamplingFields(BaseModel):
    """The request fields both endpoints share."""

    model_config = ConfigDict(extra="allow")
    model: str = ""
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, description="-1 or 0: off (vLLM's convention)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False

    def sampling(self, max_tokens: int, logprobs: bool, top_logprobs: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k if self.top_k and self.top_k > 0 else None,
            seed=self.seed, stop=tuple(stop), logprobs=logprobs, top_logprobs=top_logprobs,
        )


class ChatRequest(_SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None

    def to_request(self, default_max_tokens: int) -> Request:
        sampling = self.sampling(
            self.max_completion_tokens or self.max_tokens or default_max_tokens,
            self.logprobs,
            (self.top_logprobs or 0) if self.logprobs else 0,
        )
        schema = None
        if self.response_format and self.response_format.get("type") == "json_schema":
            schema = (self.response_format.get("json_schema") or {}).get("schema")
        return Request(tuple((m.role, m.text()) for m in self.messages), sampling, json_schema=schema)


class CompletionRequest(_SamplingFields):
    """`POST /v1/completions`: a raw text prompt (no chat template); `logprobs` = alternatives per token."""

    prompt: str
    logprobs: int | None = Field(None, ge=0, le=20)

    def to_request(self, default_max_tokens: int) -> Request:
        return Request.raw(self.prompt, self.sampling(self.max_tokens or default_max_tokens, self.logprobs is not None, self.logprobs or 0))


class MicroBatcher:
    """Collects concurrent requests into batches; one engine call per batch, off the event loop."""

    def __init__(self, engine: Engine, batch_size: int, max_wait_ms: float) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[tuple[Request, asyncio.Future[Result]]] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="datacraft-engine")
        self.batches = 0

    async def submit(self, request: Request) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self.queue.put((request, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.batch_size:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            self.batches += 1
            try:
                results = await loop.run_in_executor(self.pool, self.engine.generate, [r for r, _ in batch])
            except Exception as err:  # noqa: BLE001 - answer every waiting request
                results = [Result(finish_reason="error", error=f"llm_error: {type(err).__name__}: {err}")] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def completion_body(result: Result, model: str, with_logprobs: bool) -> dict[str, Any]:
    """A Result as an OpenAI chat-completions response."""
    logprobs = None
    if with_logprobs and result.logprobs is not None:
        logprobs = {
            "content": [
                {
                    "token": lp.token,
                    "logprob": lp.logprob,
                    "bytes": list(lp.token.encode("utf-8")),
                    "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in lp.top.items()],
                }
                for lp in result.logprobs
            ]
        }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
                "logprobs": logprobs,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


def text_completion_body(result: Result, model: str, with_logprobs: bool) -> dict[str, Any]:
    """A Result as an OpenAI (legacy) completions response."""
    logprobs = None
    if with_logprobs and result.logprobs is not None:
        logprobs = {
            "tokens": [lp.token for lp in result.logprobs],
            "token_logprobs": [lp.logprob for lp in result.logprobs],
            "top_logprobs": [dict(lp.top) for lp in result.logprobs],
        }
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": logprobs}],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


def create_app(
    config: EngineConfig | None = None,
    *,
    engine: Engine | None = None,
    max_wait_ms: float = 10.0,
    default_max_tokens: int = 256,
    served_name: str | None = None,
) -> Any:
    """The FastAPI app; the engine is created at startup unless one is given."""
    from fastapi import FastAPI

    config = config or EngineConfig()
    name = served_name or config.model
    known_models = {name, config.model}
    state: dict[str, MicroBatcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher = MicroBatcher(engine or create_engine(config), config.batch_size, max_wait_ms)
        state["batcher"] = batcher
        app.state.batcher = batcher
        task = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            task.cancel()
            batcher.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="datacraft OpenAI-compatible server", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "datacraft"}]}

    async def answer(body: ChatRequest | CompletionRequest, render: Any, with_logprobs: bool) -> Any:
        if body.model and body.model not in known_models:
            return _error(404, f"model {body.model!r} not found; this server serves {name!r}", "not_found_error")
        if body.stream:
            return _error(400, "streaming is not supported by this server")
        if body.n != 1:
            return _error(400, "only n=1 is supported")
        result = await state["batcher"].submit(body.to_request(default_max_tokens))
        if result.error is not None:
            if result.error.startswith("prompt_too_long"):
                return _error(400, result.error)
            return _error(500, result.error, "server_error")
        return render(result, name, with_logprobs)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        if not body.messages:
            return _error(400, "messages must not be empty")
        return await answer(body, completion_body, body.logprobs)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        return await answer(body, text_completion_body, body.logprobs is not None)

    return app


def serve(
    model: str = "embedded",
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_size: int = 8,
    device: str = "auto",
    max_wait_ms: float = 10.0,
) -> None:
    """Run the server in the foreground (blocks)."""
    import uvicorn

    config = EngineConfig(engine="transformers", model=model, batch_size=batch_size, device=device, cache=False)
    # SIGTERM / Ctrl-C: stop within a few seconds even with requests queued (they are answered 503 by uvicorn)
    uvicorn.run(create_app(config, max_wait_ms=max_wait_ms), host=host, port=port, log_level="info", timeout_graceful_shutdown=3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible server over the transformers engine")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    a = parser.parse_args(argv)
    serve(a.model, a.host, a.port, a.batch_size, a.device, a.max_wait_ms)


if __name__ == "__main__":
    main()

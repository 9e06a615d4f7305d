"""A small OpenAI-compatible server over the transformers engine.

Several workers (or several pipelines) can share one in-process model through it. Requests are
batched at the level of one decoding step (continuous batching, `datacraft.llm.scheduler`): a new
request joins the running batch at the next step and leaves it when done, so a short request is not
stuck behind a long one; a client that disconnects is dropped from the queue or from the batch; on
SIGTERM the server stops within a few seconds (unfinished requests are answered 503) and exits 0.

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions`
(raw prompts, legacy logprobs). Both take `n` (choices), `stream` (server-sent events ending with
`data: [DONE]`) and vLLM's `ignore_eos`; chat takes `response_format` (`json_object` or
`json_schema`), enforced during decoding with xgrammar.

    datacraft serve --model embedded --port 8000
    python -m datacraft.llm.server --model embedded --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request as HTTPRequest
from pydantic import BaseModel, ConfigDict, Field

from datacraft.llm.config import EngineConfig
from datacraft.llm.engines import create_engine
from datacraft.llm.scheduler import BatchScheduler, Job, JsonGrammars, StepScheduler
from datacraft.llm.types import Engine, Request, Result, SamplingParams, error_reason


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
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = Field(False, description="vLLM's extension: generate max_tokens, never stop at EOS")

    def sampling(self, max_tokens: int, logprobs: bool, top_logprobs: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k if self.top_k and self.top_k > 0 else None,
            seed=self.seed, stop=tuple(stop), logprobs=logprobs, top_logprobs=top_logprobs,
        )

    def choices(self, request: Request) -> list[Request]:
        """`n` requests; with a seed, choice i samples with seed + i (reproducible, yet not n copies)."""
        seed = request.sampling.seed
        return [
            request if i == 0 or seed is None else Request(request.messages, request.sampling.model_copy(update={"seed": (seed + i) % 2**63}), prompt=request.prompt)
            for i in range(self.n)
        ]


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
        return Request(tuple((m.role, m.text()) for m in self.messages), sampling)

    def wants_logprobs(self) -> bool:
        return self.logprobs


class CompletionRequest(_SamplingFields):
    """`POST /v1/completions`: a raw text prompt (no chat template); `logprobs` = alternatives per token."""

    prompt: str
    logprobs: int | None = Field(None, ge=0, le=20)

    def to_request(self, default_max_tokens: int) -> Request:
        return Request.raw(self.prompt, self.sampling(self.max_tokens or default_max_tokens, self.logprobs is not None, self.logprobs or 0))

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None


def _usage(results: list[Result]) -> dict[str, int]:
    prompt = results[0].prompt_tokens if results else 0  # one prompt for all n choices, as OpenAI counts
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_logprobs(result: Result) -> dict[str, Any] | None:
    if result.logprobs is None:
        return None
    return {
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


def _text_logprobs(result: Result) -> dict[str, Any] | None:
    if result.logprobs is None:
        return None
    return {
        "tokens": [lp.token for lp in result.logprobs],
        "token_logprobs": [lp.logprob for lp in result.logprobs],
        "top_logprobs": [dict(lp.top) for lp in result.logprobs],
    }


def completion_body(results: list[Result], model: str, with_logprobs: bool) -> dict[str, Any]:
    """Results (one per choice) as an OpenAI chat-completions response."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": r.text},
            "finish_reason": r.finish_reason,
            "logprobs": _chat_logprobs(r) if with_logprobs else None,
        }
        for i, r in enumerate(results)
    ]
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": _usage(results)}


def text_completion_body(results: list[Result], model: str, with_logprobs: bool) -> dict[str, Any]:
    """Results (one per choice) as an OpenAI (legacy) completions response."""
    choices = [
        {"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": _text_logprobs(r) if with_logprobs else None}
        for i, r in enumerate(results)
    ]
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": _usage(results)}


class _Chunks:
    """The SSE chunks of one streamed response (chat or text completion)."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        prefix, self.object = ("chatcmpl", "chat.completion.chunk") if chat else ("cmpl", "text_completion")
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.model = model
        self.created = int(time.time())

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    def choice(self, index: int, text: str | None, finish_reason: str | None = None, first: bool = False) -> str:
        if not self.chat:
            return self._event([{"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}])
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
        return self._event([{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}])

    def usage(self, results: list[Result]) -> str:
        return self._event([], usage=_usage(results))


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


def _failure(results: list[Result]) -> Any | None:
    """The HTTP error for the first failed choice, or None when all succeeded."""
    failed = next((r for r in results if r.error is not None), None)
    if failed is None:
        return None
    status = {"prompt_too_long": 400, "shutting_down": 503, "cancelled": 499}.get(error_reason(failed.error), 500)
    return _error(status, failed.error or "", "invalid_request_error" if status < 500 else "server_error")


def create_app(
    config: EngineConfig | None = None,
    *,
    engine: Engine | None = None,
    max_wait_ms: float = 10.0,
    default_max_tokens: int = 256,
    served_name: str | None = None,
) -> Any:
    """The FastAPI app; the engine is created at startup unless one is given. A transformers engine
    is served with step-level batching, any other with one engine call per gathered batch."""
    from fastapi import FastAPI

    config = config or EngineConfig()
    name = served_name or config.model
    known_models = {name, config.model}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        eng = engine or create_engine(config)
        steps = hasattr(eng, "lm") and hasattr(eng, "encode")
        scheduler = StepScheduler(eng, config.batch_size) if steps else BatchScheduler(eng, config.batch_size, max_wait_ms / 1000.0)
        app.state.scheduler = scheduler
        app.state.grammars = None
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="datacraft OpenAI-compatible server", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        scheduler = app.state.scheduler
        return {"status": "stopping" if scheduler.stopping else "ok", "stats": dict(scheduler.stats)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "datacraft"}]}

    async def grammar_for(response_format: dict[str, Any] | None) -> Any:
        """The compiled grammar, None for plain text; ValueError naming response_format when it cannot be honoured."""
        if not response_format or response_format.get("type", "text") == "text":
            return None
        scheduler = app.state.scheduler
        if not isinstance(scheduler, StepScheduler):
            raise ValueError(f"response_format is not supported by the {scheduler.engine.name!r} engine of this server")
        if app.state.grammars is None:
            try:
                app.state.grammars = await asyncio.to_thread(JsonGrammars, scheduler.tokenizer, scheduler.lm.config.vocab_size)
            except ImportError:
                raise ValueError("response_format needs xgrammar: pip install 'datacraft-curate[serve]'") from None
        return await asyncio.to_thread(app.state.grammars.compile, response_format)

    async def answer(body: ChatRequest | CompletionRequest, http: HTTPRequest, chat: bool) -> Any:
        if body.model and body.model not in known_models:
            return _error(404, f"model {body.model!r} not found; this server serves {name!r}", "not_found_error")
        with_logprobs = body.wants_logprobs()
        if body.stream and with_logprobs:
            return _error(400, "logprobs with stream is not supported by this server: ask without stream")
        try:
            grammar = await grammar_for(body.response_format if isinstance(body, ChatRequest) else None)
        except ValueError as err:
            return _error(400, str(err))
        scheduler = app.state.scheduler
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()

        def sink(index: int) -> Callable[[str, Any], None]:
            def put(kind: str, payload: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone, nobody waits
                    loop.call_soon_threadsafe(events.put_nowait, (index, kind, payload))

            return put

        requests = body.choices(body.to_request(default_max_tokens))
        jobs = [Job(r, sink(i), stream=body.stream, ignore_eos=body.ignore_eos, grammar=grammar) for i, r in enumerate(requests)]
        for job in jobs:
            scheduler.submit(job)
        if body.stream:
            from fastapi.responses import StreamingResponse

            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(scheduler, jobs, events, _Chunks(chat, name), include_usage), media_type="text/event-stream")
        results: list[Result | None] = [None] * len(jobs)
        while any(r is None for r in results):
            try:
                index, kind, payload = await asyncio.wait_for(events.get(), 0.25)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    for job in jobs:
                        scheduler.cancel(job)
                    return _error(499, "client disconnected")
                continue
            if kind == "done":
                results[index] = payload
        done = [r for r in results if r is not None]
        failure = _failure(done)
        if failure is not None:
            return failure
        return (completion_body if chat else text_completion_body)(done, name, with_logprobs)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: HTTPRequest) -> Any:
        if not body.messages:
            return _error(400, "messages must not be empty")
        return await answer(body, http, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest) -> Any:
        return await answer(body, http, chat=False)

    return app


async def _stream(scheduler: Any, jobs: list[Job], events: asyncio.Queue[tuple[int, str, Any]], chunks: _Chunks, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events for n streamed choices; a disconnect (the generator is cancelled) cancels the jobs."""
    results: list[Result] = []
    try:
        for i in range(len(jobs)):
            yield chunks.choice(i, None, first=True)
        while len(results) < len(jobs):
            index, kind, payload = await events.get()
            if kind == "delta":
                yield chunks.choice(index, payload)
                continue
            results.append(payload)
            if payload.error is not None:
                yield f"data: {json.dumps({'error': {'message': payload.error, 'type': 'server_error', 'code': 500}})}\n\n"
                break
            yield chunks.choice(index, None, payload.finish_reason)
        if include_usage:
            yield chunks.usage(results)
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            if not job.done:
                scheduler.cancel(job)


def _uvicorn_server(app: Any, host: str, port: int) -> Any:
    """A uvicorn server that on SIGTERM / Ctrl-C stops the scheduler at once (unfinished requests are
    answered 503, so connections close quickly) and exits 0 after a SIGTERM."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            scheduler = getattr(app.state, "scheduler", None)
            if scheduler is not None:
                scheduler.stop(timeout_s=0)
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                # uvicorn re-raises a captured signal after shutting down; a requested stop is a clean exit
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    return Server(uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=3))


def serve(
    model: str = "embedded",
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_size: int = 8,
    device: str = "auto",
    max_wait_ms: float = 10.0,
) -> None:
    """Run the server in the foreground (blocks)."""
    config = EngineConfig(engine="transformers", model=model, batch_size=batch_size, device=device, cache=False)
    _uvicorn_server(create_app(config, max_wait_ms=max_wait_ms), host, port).run()


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

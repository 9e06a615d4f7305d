"""Test helpers for code that talks to OpenAI-compatible servers (used by datacraft's own tests,
and useful for yours): run an ASGI app on a free local port in a thread, and a fault-injecting
chat-completions server.

The fault server answers `POST /{mode}/v1/chat/completions`, so `base_url=f"{url}/{mode}/v1"`
selects the behaviour. `app.state.hits[mode]` counts the requests each mode received.

    ok             a valid completion echoing the last user turn
    fail500x<K>    HTTP 500 for the first K requests, then ok      (always500: never ok)
    ratelimit<K>   HTTP 429 + `Retry-After: 1` for the first K, then ok
    hang           sleeps 60 s before answering (past any sane timeout)
    malformed      HTTP 200 whose body is not JSON
    truncated      HTTP 200 whose JSON body is cut in the middle
    cutoff         the connection closes before the declared Content-Length is sent
    badrequest     HTTP 400 (must not be retried)
    empty          a completion with empty content
    length         a completion cut by max_tokens (finish_reason "length")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """`with ServerThread(app) as server: server.url` — uvicorn in a daemon thread on 127.0.0.1."""

    def __init__(self, app: Any, startup_timeout_s: float = 300.0) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"uvicorn-{self.port}")
        self.startup_timeout_s = startup_timeout_s

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def completion(text: str, finish_reason: str = "stop", prompt_tokens: int = 5) -> dict[str, Any]:
    """A minimal valid chat-completions body."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "fault",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()), "total_tokens": 0},
    }


def fault_app() -> Any:
    """The fault-injecting server (see the module docstring for the modes)."""
    app = FastAPI()
    app.state.hits = Counter()

    @app.post("/{mode}/v1/chat/completions")
    async def chat(mode: str, request: Request) -> Any:
        body = await request.json()
        app.state.hits[mode] += 1
        hit = app.state.hits[mode]
        last = next((m.get("content", "") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        ok = JSONResponse(completion(f"echo: {last}"))
        limited = re.fullmatch(r"(fail500x|ratelimit)(\d+)", mode)
        if limited:
            kind, k = limited.group(1), int(limited.group(2))
            if hit > k:
                return ok
            if kind == "ratelimit":
                return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "1"})
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if mode == "always500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if mode == "hang":
            with contextlib.suppress(asyncio.CancelledError):  # cancelled when the server stops
                await asyncio.sleep(60)
            return ok
        if mode == "malformed":
            return Response(b"<html>bad gateway</html>{", media_type="application/json")
        if mode == "truncated":
            return Response(json.dumps(completion("cut here"))[:40].encode(), media_type="application/json")
        if mode == "cutoff":
            return _Cutoff()
        if mode == "badrequest":
            return JSONResponse({"error": {"message": "model not found"}}, status_code=400)
        if mode == "empty":
            return JSONResponse(completion(""))
        if mode == "length":
            return JSONResponse(completion("a response that was cut", finish_reason="length"))
        return ok

    return app


class _Cutoff(Response):
    """A raw ASGI response that declares more bytes than it sends, then ends."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        payload = json.dumps(completion("never complete")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload) + 100).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

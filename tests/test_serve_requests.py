"""`datacraft serve` request checks: sampling parameters out of range are 4xx (not 500), an unknown
model name is 404. The engine here echoes the prompt; the checks run before any engine call."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from datacraft.llm.config import EngineConfig
from datacraft.llm.server import create_app
from datacraft.llm.types import Request, Result


class EchoEngine:
    """Answers each request with its last message; records the sampling parameters it got."""

    name = "echo"
    model = "embedded"

    def __init__(self) -> None:
        self.seen: list[Request] = []

    def generate(self, requests: list[Request], on_results=None) -> list[Result]:  # type: ignore[no-untyped-def]
        self.seen += requests
        return [Result(text=r.messages[-1][1] if r.messages else r.prompt or "", finish_reason="stop") for r in requests]

    def close(self) -> None:
        pass


@pytest.fixture
def client_engine():  # type: ignore[no-untyped-def]
    engine = EchoEngine()
    with TestClient(create_app(EngineConfig(cache=False), engine=engine, max_wait_ms=1)) as client:
        yield client, engine


def _chat(client: TestClient, **extra: object):  # type: ignore[no-untyped-def]
    return client.post("/v1/chat/completions", json={"model": "embedded", "messages": [{"role": "user", "content": "hi"}], **extra})


@pytest.mark.parametrize(("field", "value"), [("top_k", -3), ("seed", 2**70), ("seed", -1), ("n", 0), ("temperature", -1)])
def test_bad_sampling_parameters_are_4xx(client_engine, field: str, value: object) -> None:  # type: ignore[no-untyped-def]
    client, engine = client_engine
    response = _chat(client, **{field: value})
    assert 400 <= response.status_code < 500 and field in response.text
    assert engine.seen == []


def test_top_k_off_values_and_unknown_model(client_engine) -> None:  # type: ignore[no-untyped-def]
    client, engine = client_engine
    for off in (-1, 0):
        assert _chat(client, top_k=off, temperature=0.7).status_code == 200
    assert all(r.sampling.top_k is None for r in engine.seen)
    ok = _chat(client, top_k=5, temperature=0.7)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "hi" and engine.seen[-1].sampling.top_k == 5
    missing = client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 404 and "gpt-9" in missing.json()["error"]["message"]
    assert client.post("/v1/completions", json={"model": "nope", "prompt": "x"}).status_code == 404

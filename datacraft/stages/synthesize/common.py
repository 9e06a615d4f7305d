"""What the LLM synthesis stages share: the client's life cycle, sampling, counters, row views."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import Field

from datacraft.llm.types import Request, Result, SamplingParams
from datacraft.stages.base import StageParams


class Generator(Protocol):
    """The part of `datacraft.llm.client.LLMClient` the stages use (tests inject fakes)."""

    def generate(self, requests: list[Request]) -> list[Result]: ...

    def pop_counters(self) -> dict[str, float]: ...

    def close(self) -> None: ...


class LLMParams(StageParams):
    llm: dict[str, Any] | None = Field(None, description="engine settings merged over the run's `llm:`")
    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(512, ge=1)
    seed: int | None = Field(None, description="sampling seed (default: the run seed)")


class UsesLLM:
    """Mixin for a Stage: `self.client` is created once per worker in `setup()`, or injected."""

    client: Generator | None = None
    params: Any
    context: Any

    def __init__(self, *args: Any, client: Generator | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.client = client  # injected (tests, shared engines) or created in setup()

    def setup(self) -> None:
        if self.client is None:
            from datacraft.llm.client import LLMClient, engine_config_for

            self.client = LLMClient(engine_config_for(self.params.llm, self.context), cache_dir=self.context.cache_dir)
            self._owns_client = True

    def teardown(self) -> None:
        if self.client is not None and getattr(self, "_owns_client", False):
            self.client.close()
            self.client = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if state.get("_owns_client", False):
            state["client"] = None  # created per worker in setup()
        return state

    def sampling(self, max_tokens: int | None = None, temperature: float | None = None, seed_offset: int = 0) -> SamplingParams:
        p = self.params
        seed = p.seed if p.seed is not None else self.context.seed
        return SamplingParams(
            max_tokens=max_tokens or p.max_tokens,
            temperature=p.temperature if temperature is None else temperature,
            seed=seed + seed_offset,
        )

    def ask(self, messages: list[list[dict[str, str]]], sampling: SamplingParams) -> list[Result]:
        """One batched engine call for all `messages` (empty list → no call)."""
        if not messages:
            return []
        if self.client is None:
            self.setup()
        assert self.client is not None
        return self.client.generate([Request.chat(m, sampling) for m in messages])

    def llm_counters(self) -> dict[str, float]:
        return self.client.pop_counters() if self.client is not None else {}


def failure_of(result: Result) -> str:
    """Drop reason of a failed result (the error's category, e.g. `llm_error`, `empty_output`)."""
    return (result.error or "").split(":", 1)[0].strip() or "llm_error"


def add_counts(counters: dict[str, float], counts: Mapping[str, float] | Counter[str], prefix: str = "") -> dict[str, float]:
    for k, v in counts.items():
        counters[prefix + k] = counters.get(prefix + k, 0.0) + float(v)
    return counters


def turns(messages: list[dict[str, str]] | None) -> tuple[str | None, str | None]:
    """(first user turn, last assistant turn) of a conversation; None where absent."""
    msgs = messages or []
    user = next((m["content"] for m in msgs if m["role"] == "user"), None)
    answer = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), None)
    return user, answer


def meta_dict(value: str | None) -> dict[str, Any]:
    return json.loads(value) if value else {}

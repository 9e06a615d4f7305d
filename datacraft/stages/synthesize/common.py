"""What the LLM synthesis stages share: the client's life cycle, sampling, counters, row views."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from typing import Any, Protocol

from pydantic import Field

from datacraft.core.stage import StageParams
from datacraft.llm.types import Request, Result, SamplingParams


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
    """Mixin for a Stage whose resource is an LLM client: created once per process per engine config
    (`load`), so stages on one engine share it, or given with `client=`."""

    params: Any
    context: Any

    def __init__(self, *args: Any, client: Generator | None = None, **kwargs: Any) -> None:
        super().__init__(*args, resource=client, **kwargs)  # type: ignore[call-arg]

    def llm_key(self) -> Hashable:
        from datacraft.llm.client import engine_config_for

        return ("llm", engine_config_for(self.params.llm, self.context).model_dump_json(), self.context.cache_dir)

    def resource_key(self) -> Hashable:
        return self.llm_key()

    def load_client(self) -> Generator:
        from datacraft.llm.client import LLMClient, engine_config_for

        return LLMClient(engine_config_for(self.params.llm, self.context), cache_dir=self.context.cache_dir)

    def load(self) -> Any:
        return self.load_client()

    @property
    def client(self) -> Generator:
        resource = self.resource  # type: ignore[attr-defined]
        return getattr(resource, "client", resource)

    def sampling(self, max_tokens: int | None = None, temperature: float | None = None, seed_offset: int = 0) -> SamplingParams:
        p = self.params
        seed = p.seed if p.seed is not None else self.context.seed
        return SamplingParams(
            max_tokens=max_tokens or p.max_tokens,
            temperature=p.temperature if temperature is None else temperature,
            seed=seed + seed_offset,
        )

    def ask(self, messages: list[list[dict[str, str]]], sampling: SamplingParams, *, truncated_ok: bool = False) -> list[Result]:
        """One batched engine call for all `messages` (empty list → no call). An answer cut at
        `max_tokens` (finish_reason `length`) becomes a failure with reason `length` unless
        `truncated_ok` (judge calls, whose score comes first)."""
        if not messages:
            return []
        results = self.client.generate([Request.chat(m, sampling) for m in messages])
        if not truncated_ok:
            for res in results:
                if res.error is None and res.finish_reason == "length":
                    res.error = f"length: hit max_tokens={sampling.max_tokens}"
        return results

    def llm_counters(self) -> dict[str, float]:
        client = self.client
        return client.pop_counters() if client is not None else {}


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


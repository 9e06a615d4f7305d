"""The one engine interface: batched `generate(requests) -> results`.

A request is chat messages, or a raw text prompt (completion mode: no chat template, for scorers
trained on fixed prompt strings such as the released Deita scorers), + sampling parameters (+
optional JSON schema, + optional logprobs);
a result carries the text, token counts, finish reason, logprobs when asked, and an error when the
request failed (it is then dropped with that reason by the calling stage, never turned into a null).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = None
    seed: int | None = Field(None, description="required for temperature > 0 to make reruns reproducible")
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)


@dataclass(frozen=True)
class Request:
    messages: tuple[tuple[str, str], ...]  # ((role, content), …) — hashable, cache-keyable
    sampling: SamplingParams = field(default_factory=SamplingParams)
    json_schema: dict[str, Any] | None = None
    tag: str = ""  # caller's bookkeeping (row id, op); not part of the cache key
    prompt: str | None = None  # raw text prompt (completion mode); `messages` is then empty

    @classmethod
    def chat(cls, messages: list[dict[str, str]], sampling: SamplingParams | None = None, **kw: Any) -> Request:
        return cls(tuple((m["role"], m["content"]) for m in messages), sampling or SamplingParams(), **kw)

    @classmethod
    def raw(cls, prompt: str, sampling: SamplingParams | None = None, **kw: Any) -> Request:
        """A completion request: `prompt` goes to the model as is, without a chat template."""
        return cls((), sampling or SamplingParams(), prompt=prompt, **kw)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)  # top_logprobs alternatives at this position


@dataclass
class Result:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""  # stop | length | error
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None  # e.g. "llm_error: timeout after 3 tries", "invalid_json", "empty_output"
    cached: bool = False
    parsed: Any = None  # validated JSON when a schema was given

    @property
    def ok(self) -> bool:
        return self.error is None


class Engine(Protocol):
    """What every engine implements. Created once per worker; `generate` is one batched call."""

    name: str
    model: str

    def generate(self, requests: list[Request]) -> list[Result]: ...

    def close(self) -> None: ...


def error_reason(error: str | None) -> str:
    """The short drop reason of an error text: the part before the first ':' (default `llm_error`)."""
    return (error or "").split(":", 1)[0].strip() or "llm_error"


def failure_reason(result: Result) -> str:
    """The short drop reason of a failed result."""
    return error_reason(result.error)

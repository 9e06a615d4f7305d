"""`generate`: write the assistant response for each row's prompt with an LLM.

Reads `messages` (the prompt is every turn up to and including the last user turn); writes
`messages` = prompt + one assistant turn, and `meta.generate` = {model, finish_reason, tokens}.
Rows without a user turn are dropped (`no_prompt`); failed requests are dropped with the client's
reason (`llm_error`, `empty_output`, `length`, …) and the full error as detail.
"""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from pydantic import Field

from datacraft.core.rows import MESSAGES_DTYPE, update_meta, with_drop
from datacraft.core.stage import MapStage, StageParams, StageResult
from datacraft.llm.types import Request, Result, SamplingParams, failure_reason
from datacraft.stages.synthesize.common import UsesLLM


class GenerateParams(StageParams):
    llm: dict[str, Any] | None = Field(None, description="engine settings merged over the run's `llm:`")
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, description="default: the run seed when temperature > 0")
    system_prompt: str | None = Field(None, description="added as the system turn when the prompt has none")
    mode: Literal["replace", "fill_empty"] = Field(
        "replace", description="replace: regenerate every response; fill_empty: only rows without one"
    )
    drop_on_length: bool = Field(False, description="drop responses cut by max_tokens (reason `length`)")


def prompt_of(messages: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
    """The turns up to and including the last user turn; None when there is no user turn."""
    msgs = messages or []
    last = _last_user(msgs)
    return [dict(m) for m in msgs[: last + 1]] if last >= 0 else None


def _last_user(msgs: list[dict[str, str]]) -> int:
    return max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=-1)


def has_response(messages: list[dict[str, str]] | None) -> bool:
    msgs = messages or []
    last = _last_user(msgs)
    return any(m["role"] == "assistant" and m["content"].strip() for m in msgs[last + 1 :])


class GenerateStage(UsesLLM, MapStage):
    """Generate (or fill in) the assistant response of every row; one batched engine call per batch."""

    name = "generate"
    Params = GenerateParams
    params: GenerateParams

    def sampling(self) -> SamplingParams:
        p = self.params
        seed = p.seed if p.seed is not None else (self.context.seed if p.temperature > 0 else None)
        return SamplingParams(max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, seed=seed)

    def build_prompt(self, messages: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
        prompt = prompt_of(messages)
        if prompt is not None and self.params.system_prompt and not any(m["role"] == "system" for m in prompt):
            prompt.insert(0, {"role": "system", "content": self.params.system_prompt})
        return prompt

    def process(self, batch: pl.DataFrame, resource: Any) -> StageResult:
        client = getattr(resource, "client", resource)
        rows = batch["messages"].to_list()
        prompts = [self.build_prompt(m) for m in rows]
        skip = [self.params.mode == "fill_empty" and has_response(m) for m in rows]
        todo = [i for i, p in enumerate(prompts) if p is not None and not skip[i]]
        sampling = self.sampling()
        results: dict[int, Result] = {}
        if todo:
            requests = [Request.chat(prompts[i], sampling, tag=str(i)) for i in todo]  # type: ignore[arg-type]
            out = client.generate(requests, fail_on_length=self.params.drop_on_length)
            results = dict(zip(todo, out, strict=True))
        return self._assemble(batch, prompts, skip, results)

    def _assemble(
        self, batch: pl.DataFrame, prompts: list[list[dict[str, str]] | None], skip: list[bool], results: dict[int, Result]
    ) -> StageResult:
        n = batch.height
        reasons: list[str | None] = [None] * n
        details: list[str] = [""] * n
        new_messages: list[Any] = batch["messages"].to_list()
        metas: list[dict[str, Any] | None] = [None] * n
        model = self.client.config.model
        for i in range(n):
            if skip[i]:
                continue
            if prompts[i] is None:
                reasons[i], details[i] = "no_prompt", "no user turn to answer"
                continue
            res = results[i]
            if not res.ok:
                reasons[i], details[i] = failure_reason(res), res.error or ""
                continue
            new_messages[i] = [*prompts[i], {"role": "assistant", "content": res.text}]  # type: ignore[misc]
            metas[i] = {
                "generate": {
                    "model": model,
                    "finish_reason": res.finish_reason,
                    "completion_tokens": res.completion_tokens,
                    "cached": res.cached,
                }
            }
        frame = update_meta(batch.with_columns(pl.Series("messages", new_messages, dtype=MESSAGES_DTYPE)), metas)
        failed = pl.Series([r is not None for r in reasons])
        dropped = with_drop(
            batch.filter(failed),
            self.label,
            pl.Series([r for r in reasons if r is not None], dtype=pl.Utf8),
            pl.Series([d for d, r in zip(details, reasons, strict=True) if r is not None], dtype=pl.Utf8),
        )
        counters = self.client.pop_counters()
        return StageResult(kept=frame.filter(~failed), dropped=dropped if dropped.height else None, counters=counters)


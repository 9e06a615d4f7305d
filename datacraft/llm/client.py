"""`LLMClient`: what every LLM stage holds (created in the stage's `setup()`, once per worker).

`generate(requests)`:
1. fills a seed into sampled requests that carry none (so the cache key, and reruns, are stable);
2. looks every request up in the content-addressed cache, and sends the misses (deduplicated) to
   the engine in ONE batched call; finished chunks are written to the cache as they complete;
3. validates JSON-schema outputs (one repair request per failure, then error `invalid_json`);
4. turns empty text into `empty_output` and, when asked, a `length` finish into `length`.

Failed requests come back with `Result.error` set (`llm_error: …`, `invalid_json`, …): the calling
stage drops their rows with `failure_reason(result)`. Counters (summed into the report):
`llm.requests`, `llm.cache_hits`, `llm.engine_calls`, `llm.engine_requests`, `llm.prompt_tokens`,
`llm.completion_tokens` (fresh generations only), `llm.seconds`, `llm.repairs`, `llm.failures.<reason>`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datacraft.llm.cache import LLMCache, request_key, result_from_dict, result_to_dict
from datacraft.llm.config import EngineConfig
from datacraft.llm.engines import create_engine
from datacraft.llm.types import Engine, Request, Result, failure_reason

REPAIR_PROMPT = (
    "Your reply was not valid JSON for the required schema ({error}). "
    "Reply again with only the corrected JSON object, no other text.\nSchema: {schema}"
)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def engine_config_for(override: Mapping[str, Any] | None, context: Any) -> EngineConfig:
    """A stage's own `llm:` settings merged over the run default (`context.llm` of a RunContext)."""
    base = dict(context.llm or {})
    return EngineConfig.model_validate({**base, **dict(override or {})})


def extract_json(text: str) -> Any:
    """Parse a JSON value from model text: bare, in a ``` fence, or the outermost {...} / [...]."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        return json.loads(text)
    except ValueError:
        pass
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            try:
                return json.loads(text[start : end + 1])
            except ValueError:
                continue
    raise ValueError("no JSON value found")


def validate_json(text: str, schema: Mapping[str, Any]) -> tuple[Any, str | None]:
    """(parsed value, None) when `text` holds JSON valid against `schema`, else (None, error)."""
    import jsonschema

    try:
        value = extract_json(text)
    except ValueError as err:
        return None, str(err)
    try:
        jsonschema.validate(value, dict(schema))
    except jsonschema.ValidationError as err:
        return None, err.message[:200]
    return value, None


class LLMClient:
    """Cache + one batched engine call + validation. See the module docstring."""

    def __init__(self, config: EngineConfig, cache_dir: str | None = None, *, engine: Engine | None = None) -> None:
        self.config = config
        self._engine: Engine | None = engine
        self._owns_engine = engine is None  # a given engine is shared; its owner closes it
        self.cache: LLMCache | None = None
        if config.cache:
            path = config.cache_path or (str(Path(cache_dir) / "llm_cache.sqlite") if cache_dir else None)
            if path:
                self.cache = LLMCache(path)
        self.counters: dict[str, float] = {}

    @property
    def engine(self) -> Engine:
        """Created on the first cache miss (a rerun served by the cache never loads the model)."""
        if self._engine is None:
            self._engine = create_engine(self.config)
        return self._engine

    def _count(self, name: str, value: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + value

    def pop_counters(self) -> dict[str, float]:
        out, self.counters = self.counters, {}
        return out

    def key(self, request: Request) -> str:
        engine = self.config.engine
        if engine == "openai":  # two servers may serve different models under one name
            engine = f"openai@{self.config.base_url or ''}"
        return request_key(engine, self.config.model, request)

    def _normalize(self, request: Request) -> Request:
        sp = request.sampling
        if sp.temperature > 0 and sp.seed is None:
            return dataclasses.replace(request, sampling=sp.model_copy(update={"seed": self.config.seed}))
        return request

    # ------------------------------------------------------------------------------------------

    def generate(self, requests: list[Request], *, fail_on_length: bool = False) -> list[Result]:
        """One result per request, in order; failures carry `error` (see `failure_reason`)."""
        requests = [self._normalize(r) for r in requests]
        self._count("llm.requests", len(requests))
        results = self._fetch(requests)
        self._validate_schemas(requests, results)
        for request, result in zip(requests, results, strict=True):
            if result.error is None and not result.text.strip():
                result.error = "empty_output"
            if result.error is None and fail_on_length and result.finish_reason == "length":
                result.error = f"length: hit max_tokens={request.sampling.max_tokens}"
            if result.error is not None:
                self._count(f"llm.failures.{failure_reason(result)}")
        return results

    def _fetch(self, requests: list[Request]) -> list[Result]:
        """Cache lookup, then one engine call for the distinct misses (cache written per chunk)."""
        keys = [self.key(r) for r in requests]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        stored = {k: result_from_dict(v) for k, v in found.items()}
        self._count("llm.cache_hits", sum(1 for k in keys if k in stored))
        missing: dict[str, Request] = {}
        for key, request in zip(keys, requests, strict=True):
            if key not in stored and key not in missing:
                missing[key] = request
        if missing:
            stored.update(self._call_engine(missing))
        # copies: the same key may serve several rows, which are then edited independently
        return [dataclasses.replace(stored[k]) for k in keys]

    def _call_engine(self, missing: dict[str, Request]) -> dict[str, Result]:
        miss_keys = list(missing)
        engine = self.engine

        def on_results(indices: list[int], results: list[Result]) -> None:
            if self.cache is not None:
                self.cache.put_many(
                    [(miss_keys[i], result_to_dict(r)) for i, r in zip(indices, results, strict=True) if cacheable(r)]
                )

        t0 = time.perf_counter()
        if "on_results" in inspect.signature(engine.generate).parameters:
            fresh = engine.generate(list(missing.values()), on_results=on_results)  # type: ignore[call-arg]
        else:
            fresh = engine.generate(list(missing.values()))
            on_results(list(range(len(fresh))), fresh)
        self._count("llm.seconds", time.perf_counter() - t0)
        self._count("llm.engine_calls")
        self._count("llm.engine_requests", len(fresh))
        for r in fresh:
            self._count("llm.prompt_tokens", r.prompt_tokens)
            self._count("llm.completion_tokens", r.completion_tokens)
        return dict(zip(miss_keys, fresh, strict=True))

    def _validate_schemas(self, requests: list[Request], results: list[Result]) -> None:
        """Parse + validate schema outputs; one batched repair round for the failures."""
        todo = [i for i, (q, r) in enumerate(zip(requests, results, strict=True)) if q.json_schema is not None and r.ok]
        bad: dict[int, str] = {}
        for i in todo:
            results[i].parsed, err = validate_json(results[i].text, requests[i].json_schema or {})
            if err is not None:
                bad[i] = err
        if not bad:
            return
        repairs = [self._repair_request(requests[i], results[i], bad[i]) for i in bad]
        self._count("llm.repairs", len(repairs))
        for i, fixed in zip(bad, self._fetch(repairs), strict=True):
            if not fixed.ok:
                results[i] = fixed
                continue
            parsed, err = validate_json(fixed.text, requests[i].json_schema or {})
            if err is None:
                fixed.parsed = parsed
                results[i] = fixed
            else:
                results[i].error = f"invalid_json: {err}"

    @staticmethod
    def _repair_request(request: Request, result: Result, error: str) -> Request:
        schema = json.dumps(request.json_schema, ensure_ascii=False)
        repair = REPAIR_PROMPT.format(error=error, schema=schema)
        if request.prompt is not None:  # a raw prompt continues as text
            return dataclasses.replace(request, prompt=f"{request.prompt}{result.text}\n\n{repair}\n")
        messages = (*request.messages, ("assistant", result.text), ("user", repair))
        return dataclasses.replace(request, messages=messages)

    def close(self) -> None:
        if self._engine is not None and self._owns_engine:
            self._engine.close()
        self._engine = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None


def cacheable(result: Result) -> bool:
    """Engine/transport failures are retried on the next run; deterministic outcomes are cached."""
    return result.error is None or not result.error.startswith("llm_error")

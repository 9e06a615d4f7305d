"""The three engines behind `datacraft.llm.types.Engine`: transformers (in-process), vLLM (in-process,
imported lazily) and OpenAI-compatible HTTP servers.

Every engine takes a whole batch in one `generate` call and returns one `Result` per request, in order.
A request that fails carries `error="llm_error: …"` (never an exception that loses the batch).
Engines may also accept `on_results(indices, results)`, called as soon as part of the batch is done,
so the client can write its cache progressively (a killed run keeps every finished chunk).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from datacraft.llm.config import EngineConfig
from datacraft.llm.models import load_causal_lm, pick_device, resolve_model
from datacraft.llm.types import Engine, Request, Result, SamplingParams, TokenLogprob

log = logging.getLogger(__name__)

OnResults = Callable[[list[int], list[Result]], None]


def error_result(message: str) -> Result:
    """A failed request: the stage drops its row with the reason before the first ':'."""
    return Result(finish_reason="error", error=message)


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string; (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _notify(on_results: OnResults | None, indices: list[int], results: list[Result]) -> None:
    if on_results is not None and indices:
        on_results(indices, results)


# ---------------------------------------------------------------------------------------------
# transformers


class TransformersEngine:
    """Batched, left-padded `model.generate` over chat-templated prompts.

    Requests are grouped by sampling parameters, sorted by prompt length (less padding) and run in
    chunks of `config.batch_size`; a seeded group re-seeds torch before each chunk. Logprobs come
    from the raw logits of each step (`top` maps decoded token strings to logprobs).
    """

    name = "transformers"

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model = config.model
        self.device = pick_device(config.device)
        if config.cpu_threads:
            import torch

            torch.set_num_threads(config.cpu_threads)
        self.lm, self.tokenizer = load_causal_lm(config.model, self.device, config.dtype)
        self.max_len = config.max_model_len or getattr(self.lm.config, "max_position_embeddings", None)

    def render(self, request: Request) -> str:
        """The prompt text: a raw prompt as is, the model's chat template, or `role: content` lines
        for base models."""
        if request.prompt is not None:
            return request.prompt
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(request.message_dicts(), tokenize=False, add_generation_prompt=True)
        return "".join(f"{role}: {content}\n" for role, content in request.messages) + "assistant:"

    def encode(self, request: Request) -> list[int]:
        """The prompt's token ids: a chat template writes its own special tokens, a raw prompt gets the tokenizer's (BOS)."""
        return self.tokenizer(self.render(request), add_special_tokens=request.prompt is not None)["input_ids"]

    def generate(self, requests: list[Request], on_results: OnResults | None = None) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        groups: dict[SamplingParams, list[tuple[int, list[int]]]] = defaultdict(list)
        for i, request in enumerate(requests):
            ids = self.encode(request)
            if self.max_len and len(ids) + request.sampling.max_tokens > self.max_len:
                results[i] = error_result(f"prompt_too_long: {len(ids)} prompt tokens + max_tokens > {self.max_len}")
                _notify(on_results, [i], [results[i]])  # type: ignore[list-item]
                continue
            groups[request.sampling].append((i, ids))
        for sampling, items in groups.items():
            items.sort(key=lambda item: len(item[1]))
            for start in range(0, len(items), self.config.batch_size):
                chunk = items[start : start + self.config.batch_size]
                try:
                    chunk_results = self._generate_chunk([ids for _, ids in chunk], sampling)
                except Exception as err:  # noqa: BLE001 - one bad chunk must not lose the batch
                    log.exception("transformers generation failed for a chunk of %d", len(chunk))
                    chunk_results = [error_result(f"llm_error: {type(err).__name__}: {err}")] * len(chunk)
                indices = [i for i, _ in chunk]
                for i, res in zip(indices, chunk_results, strict=True):
                    results[i] = res
                _notify(on_results, indices, chunk_results)
        return [r if r is not None else error_result("llm_error: no result") for r in results]

    def _generation_config(self, sp: SamplingParams) -> Any:
        from transformers import GenerationConfig

        kw: dict[str, Any] = {
            "max_new_tokens": sp.max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "return_dict_in_generate": True,
            "output_logits": bool(sp.logprobs or sp.top_logprobs),
            "do_sample": sp.temperature > 0,
        }
        if sp.temperature > 0:
            kw.update(temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k or 0)
        return GenerationConfig(**kw)

    def _generate_chunk(self, prompts: list[list[int]], sp: SamplingParams) -> list[Result]:
        import torch

        tok = self.tokenizer
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.lm.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.lm.device)
        if sp.seed is not None:
            torch.manual_seed(sp.seed)
        with torch.inference_mode():
            out = self.lm.generate(input_ids=input_ids, attention_mask=attention, generation_config=self._generation_config(sp))
        new = out.sequences[:, width:].tolist()
        logprobs = None
        if out.logits is not None and (sp.logprobs or sp.top_logprobs):
            logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        eos = tok.eos_token_id
        results = []
        for b, seq in enumerate(new):
            n = seq.index(eos) + 1 if eos in seq else len(seq)
            body = seq[: n - 1] if eos in seq else seq
            text, stopped = apply_stop(tok.decode(body, skip_special_tokens=True), sp.stop)
            results.append(
                Result(
                    text=text,
                    prompt_tokens=len(prompts[b]),
                    completion_tokens=n,
                    finish_reason="stop" if (eos in seq or stopped) else "length",
                    logprobs=None if logprobs is None else self._token_logprobs(logprobs[b], seq[:n], sp.top_logprobs),
                )
            )
        return results

    def _token_logprobs(self, lp: Any, ids: list[int], k: int) -> list[TokenLogprob]:
        import torch

        out = []
        decode = self.tokenizer.decode
        top_v, top_i = torch.topk(lp[: len(ids)], k=max(k, 1), dim=-1) if k else (None, None)
        for t, tid in enumerate(ids):
            top: dict[str, float] = {}
            if top_v is not None:
                for v, i in zip(top_v[t].tolist(), top_i[t].tolist(), strict=True):
                    top.setdefault(decode([i]), v)
            out.append(TokenLogprob(token=decode([tid]), logprob=float(lp[t, tid]), top=top))
        return out

    def close(self) -> None:
        """The model stays in the per-process cache (`load_causal_lm`) for other users."""


# ---------------------------------------------------------------------------------------------
# vLLM


class VLLMEngine:
    """In-process `vllm.LLM` (one per worker); `LLM.chat` over the whole batch with per-request
    `SamplingParams` (explicit `max_tokens`; JSON schemas through `structured_outputs`)."""

    name = "vllm"

    def __init__(self, config: EngineConfig) -> None:
        try:
            import vllm
        except ImportError as err:
            raise RuntimeError("engine 'vllm' needs vLLM: pip install 'datacraft-curate[vllm]'") from err
        self.config = config
        self.model = config.model
        self._vllm = vllm
        kw: dict[str, Any] = {
            "model": resolve_model(config.model),
            "tensor_parallel_size": config.tensor_parallel_size,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "seed": config.seed,
        }
        if config.max_model_len:
            kw["max_model_len"] = config.max_model_len
        if config.dtype != "auto":
            kw["dtype"] = config.dtype
        self.llm = vllm.LLM(**kw)

    def sampling_params(self, request: Request) -> Any:
        sp = request.sampling
        kw: dict[str, Any] = {"max_tokens": sp.max_tokens, "temperature": sp.temperature, "top_p": sp.top_p, "seed": sp.seed}
        if sp.stop:
            kw["stop"] = list(sp.stop)
        if sp.top_k is not None:
            kw["top_k"] = sp.top_k
        if sp.logprobs or sp.top_logprobs:
            kw["logprobs"] = max(1, sp.top_logprobs)
        if request.json_schema is not None:
            try:
                from vllm.sampling_params import StructuredOutputsParams
            except ImportError as err:  # the old guided_* fields would be silently ignored
                raise RuntimeError("JSON-schema output needs vLLM with `structured_outputs` (>= 0.11)") from err
            kw["structured_outputs"] = StructuredOutputsParams(json=request.json_schema)
        return self._vllm.SamplingParams(**kw)

    def generate(self, requests: list[Request], on_results: OnResults | None = None) -> list[Result]:
        if not requests:
            return []
        try:
            results = self._chat(requests)
        except Exception:  # noqa: BLE001 - isolate the request that broke the batch
            log.exception("vLLM batch failed; retrying requests one by one")
            results = []
            for request in requests:
                try:
                    results.extend(self._chat([request]))
                except Exception as err:  # noqa: BLE001
                    results.append(error_result(f"llm_error: {type(err).__name__}: {err}"))
        _notify(on_results, list(range(len(requests))), results)
        return results

    def _chat(self, requests: list[Request]) -> list[Result]:
        """`LLM.chat` for chat requests, `LLM.generate` for raw prompts; results in request order."""
        results: list[Result | None] = [None] * len(requests)
        for raw in (False, True):
            idx = [i for i, r in enumerate(requests) if (r.prompt is not None) == raw]
            if not idx:
                continue
            params = [self.sampling_params(requests[i]) for i in idx]
            if raw:
                outs = self.llm.generate([requests[i].prompt for i in idx], sampling_params=params, use_tqdm=False)
            else:
                outs = self.llm.chat([requests[i].message_dicts() for i in idx], sampling_params=params, use_tqdm=False)
            for i, out in zip(idx, outs, strict=True):
                results[i] = self._result(out, requests[i].sampling.top_logprobs)
        return [r for r in results if r is not None]

    @staticmethod
    def _result(out: Any, k: int) -> Result:
        c = out.outputs[0]
        logprobs = None
        if c.logprobs is not None:
            logprobs = []
            for tid, step in zip(c.token_ids, c.logprobs, strict=False):
                chosen = step[tid]
                top = {lp.decoded_token: lp.logprob for lp in step.values() if lp.rank is not None and lp.rank <= k}
                logprobs.append(TokenLogprob(token=chosen.decoded_token or "", logprob=float(chosen.logprob), top=top))
        return Result(
            text=c.text,
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=len(c.token_ids),
            finish_reason=c.finish_reason or "stop",
            logprobs=logprobs,
        )

    def close(self) -> None:
        import gc

        self.llm = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


class _Retryable(Exception):
    def __init__(self, what: str, wait: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.wait = wait


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIEngine:
    """Chat completions over HTTP (`vllm serve`, `datacraft serve`, hosted APIs).

    Async with at most `max_concurrency` requests in flight; each try is bounded by `timeout_s`;
    429 (honouring Retry-After), 408, 5xx, timeouts, broken connections and malformed bodies are
    retried `max_retries` times with exponential backoff and jitter; other 4xx fail at once.
    The API key is read from the environment variable named by `api_key_env` and never logged.
    """

    name = "openai"

    def __init__(self, config: EngineConfig) -> None:
        import httpx

        self._httpx = httpx
        self.config = config
        self.model = config.model
        base = config.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.url = base.rstrip("/") + "/chat/completions"
        self.completions_url = base.rstrip("/") + "/completions"  # raw prompts
        self.stats: Counter[str] = Counter()  # tries, retries, by failure kind

    def _secret(self) -> str | None:
        return os.environ.get(self.config.api_key_env) or None

    def _scrub(self, text: str) -> str:
        key = self._secret()
        return text.replace(key, "***") if key else text

    def body(self, request: Request) -> dict[str, Any]:
        sp = request.sampling
        body: dict[str, Any] = {"model": self.model, "max_tokens": sp.max_tokens, "temperature": sp.temperature, "top_p": sp.top_p}
        if request.prompt is not None:
            body["prompt"] = request.prompt
        else:
            body["messages"] = request.message_dicts()
        if sp.seed is not None:
            body["seed"] = sp.seed
        if sp.stop:
            body["stop"] = list(sp.stop)
        if sp.top_k is not None:
            body["top_k"] = sp.top_k
        if (sp.logprobs or sp.top_logprobs) and request.prompt is not None:
            body["logprobs"] = max(1, sp.top_logprobs)  # the completions API: how many alternatives
        elif sp.logprobs or sp.top_logprobs:
            body["logprobs"] = True
            if sp.top_logprobs:
                body["top_logprobs"] = sp.top_logprobs
        if request.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema},
            }
        body.update(self.config.extra_body)
        return body

    def generate(self, requests: list[Request], on_results: OnResults | None = None) -> list[Result]:
        if not requests:
            return []
        coro = self._generate_all(requests, on_results)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with ThreadPoolExecutor(1) as pool:  # called from inside an event loop (notebook, server)
            return pool.submit(asyncio.run, coro).result()

    async def _generate_all(self, requests: list[Request], on_results: OnResults | None) -> list[Result]:
        httpx = self._httpx
        n = self.config.max_concurrency
        sem = asyncio.Semaphore(n)
        key = self._secret()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.config.timeout_s), limits=limits, headers=headers) as client:

            async def one(i: int, request: Request) -> Result:
                async with sem:
                    result = await self._call(client, request)
                _notify(on_results, [i], [result])
                return result

            return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))

    def _backoff(self, attempt: int) -> float:
        base = min(self.config.retry_max_backoff_s, self.config.retry_backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + 0.5 * random.random())

    async def _call(self, client: Any, request: Request) -> Result:
        tries = self.config.max_retries + 1
        body = self.body(request)
        url = self.completions_url if request.prompt is not None else self.url
        last = ""
        for attempt in range(1, tries + 1):
            self.stats["tries"] += 1
            try:
                return await self._try(client, url, body)
            except _Retryable as err:
                last = err.what
                self.stats[f"retryable.{err.what.split(' (')[0]}"] += 1
                if attempt < tries:
                    self.stats["retries"] += 1
                    wait = err.wait if err.wait is not None else self._backoff(attempt)
                    await asyncio.sleep(min(wait, self.config.retry_max_backoff_s))
            except _Fatal as err:
                self.stats["fatal"] += 1
                return error_result(self._scrub(f"llm_error: {err}"))
        return error_result(f"llm_error: {last} after {tries} tries")

    async def _try(self, client: Any, url: str, body: dict[str, Any]) -> Result:
        httpx = self._httpx
        try:
            resp = await asyncio.wait_for(client.post(url, json=body), self.config.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise _Retryable("timeout") from None
        except httpx.TransportError as err:  # refused, reset, truncated body
            raise _Retryable(f"connection error ({type(err).__name__})") from None
        status = resp.status_code
        if status == 429 or status == 408 or status >= 500:
            raise _Retryable(f"http {status}", retry_after_seconds(resp.headers.get("retry-after")))
        if status >= 400:
            raise _Fatal(f"http {status}: {_error_message(resp)}")
        try:
            return parse_completion(resp.json()) if "prompt" in body else parse_chat_completion(resp.json())
        except (ValueError, KeyError, TypeError, IndexError):
            raise _Retryable("malformed response") from None

    def close(self) -> None:
        """Clients are per call; nothing to release."""


class _Fatal(Exception):
    pass


def _error_message(resp: Any) -> str:
    try:
        data = resp.json()
        msg = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
        return str(msg)[:200]
    except ValueError:
        return resp.text[:200]


def parse_chat_completion(data: Any) -> Result:
    """An OpenAI chat-completions response body → Result (raises on a malformed body)."""
    if not isinstance(data, dict):
        raise TypeError("response is not an object")
    choice = data["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    if not isinstance(text, str):
        raise TypeError("content is not a string")
    logprobs = None
    content = (choice.get("logprobs") or {}).get("content")
    if content is not None:
        logprobs = [
            TokenLogprob(
                token=c["token"],
                logprob=float(c["logprob"]),
                top={t["token"]: float(t["logprob"]) for t in (c.get("top_logprobs") or [])},
            )
            for c in content
        ]
    return _response_result(data, choice, text, logprobs)


def _count(usage: Any, key: str) -> int:
    """A token count from `usage`; a missing or non-numeric one is 0 (the content is still good)."""
    value = usage.get(key) if isinstance(usage, dict) else None
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def _response_result(data: dict[str, Any], choice: dict[str, Any], text: str, logprobs: list[TokenLogprob] | None) -> Result:
    usage = data.get("usage") or {}
    return Result(
        text=text,
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        finish_reason=choice.get("finish_reason") or "stop",
        logprobs=logprobs,
    )


def parse_completion(data: Any) -> Result:
    """An OpenAI (legacy) completions response body → Result (raises on a malformed body).
    Logprobs come as parallel lists: `tokens`, `token_logprobs`, `top_logprobs` ({token: logprob})."""
    if not isinstance(data, dict):
        raise TypeError("response is not an object")
    choice = data["choices"][0]
    text = choice.get("text") or ""
    if not isinstance(text, str):
        raise TypeError("text is not a string")
    logprobs = None
    lp = choice.get("logprobs")
    if lp:
        tops = lp.get("top_logprobs") or [{}] * len(lp["tokens"])
        logprobs = [
            TokenLogprob(token=t, logprob=float(v), top={k: float(x) for k, x in (top or {}).items()})
            for t, v, top in zip(lp["tokens"], lp["token_logprobs"], tops, strict=True)
        ]
    return _response_result(data, choice, text, logprobs)


# ---------------------------------------------------------------------------------------------

ENGINES: dict[str, type] = {"transformers": TransformersEngine, "vllm": VLLMEngine, "openai": OpenAIEngine}


def create_engine(config: EngineConfig) -> Engine:
    """The engine named by `config.engine` (vLLM is imported only when chosen)."""
    try:
        cls = ENGINES[config.engine]
    except KeyError:
        raise ValueError(f"unknown engine {config.engine!r}; expected one of {sorted(ENGINES)}") from None
    return cls(config)

"""Schedulers behind `datacraft serve`: they turn submitted jobs (one request = one sequence) into
engine work on a daemon thread, so the HTTP side never blocks and shutdown never waits on a batch.

`StepScheduler` (the transformers engine) batches at the level of one decoding step (continuous
batching): a job joins the running batch at the next step (its prompt is prefilled and its KV cache
merged in), a finished, cancelled or disconnected job leaves it at the next step, so a short request
is never stuck behind a long one and no token is generated for a client that is gone. Per job:
temperature / top-p / top-k with its own seeded generator, stop strings, logprobs, streaming deltas,
and JSON constrained decoding through `xgrammar` (`JsonGrammars`).

`BatchScheduler` serves any other engine (one `engine.generate` call per gathered batch): queued
jobs can still be cancelled, a running call is not interrupted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datacraft.llm.engines import apply_stop, error_result
from datacraft.llm.types import Engine, Request, Result, TokenLogprob

log = logging.getLogger(__name__)

Sink = Callable[[str, Any], None]  # ("delta", text) while streaming, then ("done", Result) once


@dataclass(eq=False)
class Job:
    """One sequence to generate; `sink` is called from the scheduler thread."""

    request: Request
    sink: Sink
    stream: bool = False
    ignore_eos: bool = False
    grammar: Any = None  # an xgrammar CompiledGrammar (response_format), or None
    # state, owned by the scheduler thread (`cancelled` is set from outside)
    cancelled: bool = False
    done: bool = False
    prompt_ids: list[int] = field(default_factory=list)
    out_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    sent: str = ""
    generator: Any = None
    matcher: Any = None
    bitmask: Any = None


class _Scheduler:
    """The queue, the thread and the bookkeeping both schedulers share."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.stats: Counter[str] = Counter()  # steps, tokens, prefills, cancelled_queued, cancelled_running, …
        self.thread = threading.Thread(target=self._run, daemon=True, name="datacraft-scheduler")

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.stopping:
                job.done = True
                job.sink("done", error_result("shutting_down: the server is stopping"))
                return
            self.waiting.append(job)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job from the queue or from the running batch at the next step."""
        job.cancelled = True
        with self.cond:
            self.cond.notify()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop at the next step boundary; every unfinished job is answered `shutting_down`."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout_s)

    def _finish(self, job: Job, result: Result) -> None:
        if not job.done:
            job.done = True
            job.sink("done", result)

    def _take(self, free: int) -> list[Job] | None:
        """Wait for work; the jobs to admit (cancelled queued jobs are dropped here); None when stopping."""
        with self.cond:
            while not self.stopping and not self.waiting and free == self.batch_size:
                self.cond.wait()
            if self.stopping:
                return None
            for job in [job for job in self.waiting if job.cancelled]:
                self.waiting.remove(job)
                self.stats["cancelled_queued"] += 1
                self._finish(job, error_result("cancelled: client disconnected"))
            return [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as err:  # noqa: BLE001 - the server must answer every job, not hang
            log.exception("scheduler failed")
            self._fail_all(f"llm_error: {type(err).__name__}: {err}")
            return
        self._fail_all("shutting_down: the server is stopping")

    def _fail_all(self, message: str) -> None:
        with self.cond:
            self.stopping = True
            jobs = list(self.waiting) + self._running()
            self.waiting.clear()
        for job in jobs:
            self._finish(job, error_result(message))

    def _running(self) -> list[Job]:
        return []

    def _loop(self) -> None:
        raise NotImplementedError


class BatchScheduler(_Scheduler):
    """Any engine: gather up to `batch_size` jobs (waiting at most `max_wait_s` for more), one call each batch."""

    def __init__(self, engine: Engine, batch_size: int, max_wait_s: float) -> None:
        super().__init__(batch_size)
        self.engine = engine
        self.max_wait_s = max_wait_s
        self.current: list[Job] = []

    def _running(self) -> list[Job]:
        return list(self.current)

    def _loop(self) -> None:
        while True:
            batch = self._take(self.batch_size)
            if batch is None:
                return
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.batch_size and (left := deadline - time.monotonic()) > 0:
                with self.cond:
                    if not self.waiting:
                        self.cond.wait(left)
                more = self._take(self.batch_size - len(batch))
                if more is None:
                    self.current = batch
                    return
                batch += more
            if not batch:
                continue
            self.current = batch
            self.stats["batches"] += 1
            try:
                results = self.engine.generate([job.request for job in batch])
            except Exception as err:  # noqa: BLE001 - answer every waiting request
                results = [error_result(f"llm_error: {type(err).__name__}: {err}")] * len(batch)
            for job, result in zip(batch, results, strict=True):
                if job.stream and result.ok:
                    job.sink("delta", result.text)
                self._finish(job, result)
            self.current = []


class StepScheduler(_Scheduler):
    """Continuous batching over a transformers causal LM (see the module doc)."""

    def __init__(self, engine: Any, batch_size: int) -> None:
        super().__init__(batch_size)
        self.engine = engine
        self.lm = engine.lm
        self.tokenizer = engine.tokenizer
        self.eos = self.tokenizer.eos_token_id
        self.max_len = engine.max_len
        self.jobs: list[Job] = []  # rows of the running batch, in cache order
        self.cache: Any = None
        self.mask: Any = None  # [rows, width] attention mask (left padding)
        self.last: list[int] = []  # the token each row feeds at the next step

    def _running(self) -> list[Job]:
        return list(self.jobs)

    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                self._drop_finished()
                new = self._take(self.batch_size - len(self.jobs))
                if new is None:
                    return
                if self.jobs:
                    self._decode()
                new = [job for job in new if self._admit(job)]
                if new:
                    self._prefill(new)

    # -- batch membership ---------------------------------------------------------------------

    def _admit(self, job: Job) -> bool:
        import torch

        ids = self.engine.encode(job.request)
        if self.max_len and len(ids) + job.request.sampling.max_tokens > self.max_len:
            self._finish(job, error_result(f"prompt_too_long: {len(ids)} prompt tokens + max_tokens > {self.max_len}"))
            return False
        job.prompt_ids = ids
        seed = job.request.sampling.seed
        if seed is not None:
            job.generator = torch.Generator(device=self.lm.device).manual_seed(seed)
        if job.grammar is not None:
            import xgrammar as xgr

            job.matcher = xgr.GrammarMatcher(job.grammar)
            job.bitmask = xgr.allocate_token_bitmask(1, self.lm.config.vocab_size)
        return True

    def _drop_finished(self) -> None:
        for job in self.jobs:
            if job.cancelled and not job.done:
                self.stats["cancelled_running"] += 1
                self._finish(job, error_result("cancelled: client disconnected"))
        keep = [i for i, job in enumerate(self.jobs) if not job.done]
        if len(keep) == len(self.jobs):
            return
        if not keep:
            self.jobs, self.cache, self.mask, self.last = [], None, None, []
            return
        import torch

        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[index]
        start = int((mask.sum(0) == 0).long().cumprod(0).sum())  # columns that are padding in every row left
        layers = [(layer.keys[index, :, start:], layer.values[index, :, start:]) for layer in self.cache.layers]
        self.cache = _cache(layers)
        self.mask = mask[:, start:]
        self.jobs = [self.jobs[i] for i in keep]
        self.last = [self.last[i] for i in keep]

    def _prefill(self, jobs: list[Job]) -> None:
        """Run the new jobs' prompts (left-padded), sample their first token, merge them into the batch."""
        import torch
        from transformers import DynamicCache

        self.stats["prefills"] += 1
        width = max(len(job.prompt_ids) for job in jobs)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs], device=self.lm.device)
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs], device=self.lm.device)
        cache = DynamicCache()
        logits = self._forward(ids, mask, cache)
        if self.jobs:
            cache, mask = _merge(self.cache, self.mask, cache, mask)
        self.cache, self.mask = cache, mask
        self.jobs = self.jobs + jobs
        self.last = self.last + [self._next_token(job, logits[i]) for i, job in enumerate(jobs)]

    def _decode(self) -> None:
        import torch

        self.stats["steps"] += 1
        ids = torch.tensor([[t] for t in self.last], device=self.lm.device)
        self.mask = torch.cat([self.mask, torch.ones((len(self.jobs), 1), dtype=self.mask.dtype, device=self.mask.device)], 1)
        logits = self._forward(ids, self.mask, self.cache)
        self.last = [0 if job.done or job.cancelled else self._next_token(job, logits[i]) for i, job in enumerate(self.jobs)]

    def _forward(self, ids: Any, mask: Any, cache: Any) -> Any:
        """Logits of the last position of each row; `cache` is extended in place."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    # -- one token ------------------------------------------------------------------------------

    def _next_token(self, job: Job, logits: Any) -> int:
        """Pick the job's next token from its logits, record it, finish the job when it is done."""
        import torch

        sp = job.request.sampling
        scores = logits.clone()
        if job.matcher is not None:
            import xgrammar as xgr

            job.matcher.fill_next_token_bitmask(job.bitmask)
            xgr.apply_token_bitmask_inplace(scores.unsqueeze(0), job.bitmask.to(scores.device, non_blocking=True))
        elif job.ignore_eos and self.eos is not None:
            scores[self.eos] = float("-inf")
        if sp.temperature <= 0:
            token = int(scores.argmax())
        else:
            token = _sample(scores / sp.temperature, sp.top_k, sp.top_p, job.generator)
        job.out_ids.append(token)
        self.stats["tokens"] += 1
        if sp.logprobs or sp.top_logprobs:
            job.logprobs.append(self._logprob(torch.log_softmax(logits, -1), token, sp.top_logprobs))
        if job.matcher is not None and not job.matcher.accept_token(token):
            self._finish(job, error_result(f"llm_error: token {token} rejected by the JSON grammar"))
            return token
        finished = self._finish_reason(job, token)
        if job.stream:
            self._emit(job, final=finished is not None)
        if finished is not None:
            self._finish(job, self._result(job, finished))
        return token

    def _finish_reason(self, job: Job, token: int) -> str | None:
        sp = job.request.sampling
        if (token == self.eos and not job.ignore_eos) or (job.matcher is not None and job.matcher.is_terminated()):
            return "stop"
        if sp.stop and apply_stop(self._text(job), sp.stop)[1]:
            return "stop"
        if len(job.out_ids) >= sp.max_tokens or (self.max_len and len(job.prompt_ids) + len(job.out_ids) >= self.max_len):
            return "length"
        return None

    def _text(self, job: Job) -> str:
        body = job.out_ids[:-1] if job.out_ids and job.out_ids[-1] == self.eos and not job.ignore_eos else job.out_ids
        return apply_stop(self.tokenizer.decode(body, skip_special_tokens=True), job.request.sampling.stop)[0]

    def _emit(self, job: Job, final: bool) -> None:
        """Stream the text that is now certain: not an incomplete UTF-8 tail, not a possible stop-string prefix."""
        text = self._text(job)
        if not final:
            text = text.rstrip("\ufffd")
            hold = max((len(s) - 1 for s in job.request.sampling.stop), default=0)
            text = text[: len(text) - hold] if hold else text
        if len(text) > len(job.sent) and text.startswith(job.sent):
            job.sink("delta", text[len(job.sent) :])
            job.sent = text

    def _result(self, job: Job, finish_reason: str) -> Result:
        return Result(
            text=self._text(job),
            prompt_tokens=len(job.prompt_ids),
            completion_tokens=len(job.out_ids),
            finish_reason=finish_reason,
            logprobs=job.logprobs if (job.request.sampling.logprobs or job.request.sampling.top_logprobs) else None,
        )

    def _logprob(self, lp: Any, token: int, k: int) -> TokenLogprob:
        import torch

        decode = self.tokenizer.decode
        top: dict[str, float] = {}
        if k:
            values, indices = torch.topk(lp, k)
            for v, i in zip(values.tolist(), indices.tolist(), strict=True):
                top.setdefault(decode([i]), v)
        return TokenLogprob(token=decode([token]), logprob=float(lp[token]), top=top)


def _sample(scores: Any, top_k: int | None, top_p: float, generator: Any) -> int:
    """Top-k, then nucleus (top-p), then a draw with the job's own generator."""
    import torch

    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(ordered, -1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, -1) >= top_p  # keep the smallest prefix reaching top_p
        scores = scores.clone()
        scores[order[drop]] = float("-inf")
    return int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))


def _cache(layers: list[tuple[Any, Any]]) -> Any:
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


def _merge(cache_a: Any, mask_a: Any, cache_b: Any, mask_b: Any) -> tuple[Any, Any]:
    """Two left-padded batches as one: pad the shorter on the left (masked out), stack the rows."""
    import torch
    import torch.nn.functional as F

    width = max(mask_a.shape[1], mask_b.shape[1])

    def left(t: Any, dim_from_end: int) -> Any:
        missing = width - t.shape[-dim_from_end]
        return F.pad(t, [0, 0] * (dim_from_end - 1) + [missing, 0]) if missing else t

    layers = [
        (torch.cat([left(a.keys, 2), left(b.keys, 2)]), torch.cat([left(a.values, 2), left(b.values, 2)]))
        for a, b in zip(cache_a.layers, cache_b.layers, strict=True)
    ]
    return _cache(layers), torch.cat([left(mask_a, 1), left(mask_b, 1)])


class JsonGrammars:
    """`response_format` → a compiled xgrammar grammar (JSON mode or a JSON schema), compiled once each."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        import xgrammar as xgr  # ImportError: the server answers 400 naming response_format

        self.compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size))
        self.compiled: dict[str, Any] = {}
        self.lock = threading.Lock()

    def compile(self, response_format: dict[str, Any]) -> Any:
        """None for plain text; ValueError naming what is wrong for an unsupported or invalid format."""
        kind = response_format.get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            schema: Any = {"type": "object"}
        elif kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise ValueError("response_format.json_schema.schema must be a JSON schema object")
        else:
            raise ValueError(f"response_format.type {kind!r} is not supported (text, json_object, json_schema)")
        key = json.dumps(schema, sort_keys=True)
        with self.lock:
            if key not in self.compiled:
                try:
                    # compact JSON: a small model given free whitespace can loop on newlines until max_tokens
                    self.compiled[key] = self.compiler.compile_json_schema(key, any_whitespace=False)
                except Exception as err:  # noqa: BLE001 - xgrammar raises several kinds for a bad schema
                    raise ValueError(f"response_format.json_schema.schema is not usable: {err}") from None
            return self.compiled[key]

"""LLMCache and LLMClient logic (cache keys, hits, dedup, seeds, JSON validation + repair,
failure reasons) against a scripted engine: fast, no model."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

import pytest

from datacraft.core.stage import RunContext
from datacraft.llm.cache import LLMCache, request_key, result_from_dict, result_to_dict
from datacraft.llm.client import LLMClient, engine_config_for, extract_json, failure_reason
from datacraft.llm.config import EngineConfig
from datacraft.llm.types import Request, Result, SamplingParams, TokenLogprob

pytestmark = pytest.mark.timeout(60)


class ScriptedEngine:
    """Answers each request with `reply(request)`; records every batch it was sent."""

    name = "transformers"
    model = "embedded"

    def __init__(self, reply: Callable[[Request], Result]) -> None:
        self.reply = reply
        self.batches: list[list[Request]] = []

    def generate(self, requests: list[Request]) -> list[Result]:
        self.batches.append(list(requests))
        return [self.reply(r) for r in requests]

    def close(self) -> None:
        pass


def echo(request: Request) -> Result:
    return Result(text=f"answer to {request.messages[-1][1]}", prompt_tokens=7, completion_tokens=3, finish_reason="stop")


def req(text: str, **sampling: object) -> Request:
    return Request.chat([{"role": "user", "content": text}], SamplingParams(max_tokens=16, **sampling))  # type: ignore[arg-type]


def test_cache_roundtrip_wal_and_reopen(tmp_path):
    path = tmp_path / "c.sqlite"
    lp = [TokenLogprob("4", -0.1, {"4": -0.1, "5": -2.5})]
    value = result_to_dict(Result(text="hi", prompt_tokens=3, completion_tokens=1, finish_reason="stop", logprobs=lp))
    with LLMCache(str(path)) as cache:
        assert cache.put_many({"k1": value}) == 1
        cache.put_many([("k2", {"text": "x"})])
        assert len(cache) == 2
    with LLMCache(str(path)) as cache:
        got = cache.get_many(["k1", "k2", "missing"])
    assert set(got) == {"k1", "k2"}
    back = result_from_dict(got["k1"])
    assert back.text == "hi" and back.cached and back.logprobs[0].top == {"4": -0.1, "5": -2.5}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_cache_concurrent_writers(tmp_path):
    cache = LLMCache(str(tmp_path))  # a folder → llm_cache.sqlite inside
    other = LLMCache(str(tmp_path))

    def write(c: LLMCache, start: int) -> None:
        for i in range(start, start + 50):
            c.put_many({f"k{i}": {"text": str(i)}})

    threads = [threading.Thread(target=write, args=(c, s)) for c, s in ((cache, 0), (other, 50), (cache, 100))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 150 and cache.get_many(["k149"])["k149"]["text"] == "149"
    cache.close()
    other.close()


def test_request_key_covers_what_decides_the_output():
    base = req("hello")
    assert request_key("transformers", "m", base) == request_key("transformers", "m", req("hello"))
    tagged = Request(base.messages, base.sampling, tag="row-17")
    assert request_key("transformers", "m", tagged) == request_key("transformers", "m", base)
    variants = [
        request_key("vllm", "m", base),
        request_key("transformers", "m2", base),
        request_key("transformers", "m", req("hello", temperature=0.7, seed=1)),
        request_key("transformers", "m", req("hello", temperature=0.7, seed=2)),
        request_key("transformers", "m", req("hello!")),
        request_key("transformers", "m", Request(base.messages, base.sampling, json_schema={"type": "object"})),
    ]
    assert len({request_key("transformers", "m", base), *variants}) == 7


def test_client_cache_hits_dedup_and_counters(tmp_path):
    engine = ScriptedEngine(echo)
    client = LLMClient(EngineConfig(), cache_dir=str(tmp_path), engine=engine)
    out = client.generate([req("a"), req("b"), req("a")])
    assert [r.text for r in out] == ["answer to a", "answer to b", "answer to a"]
    assert len(engine.batches) == 1 and len(engine.batches[0]) == 2  # one call, duplicates sent once
    c = client.pop_counters()
    assert c["llm.requests"] == 3 and c["llm.engine_calls"] == 1 and c["llm.engine_requests"] == 2
    assert c["llm.completion_tokens"] == 6 and c["llm.prompt_tokens"] == 14 and c["llm.cache_hits"] == 0
    client.close()
    # a new client (a rerun) is served from the cache: no engine call at all
    engine2 = ScriptedEngine(echo)
    client2 = LLMClient(EngineConfig(), cache_dir=str(tmp_path), engine=engine2)
    out2 = client2.generate([req("b"), req("a"), req("c")])
    assert [r.cached for r in out2] == [True, True, False]
    assert engine2.batches == [[req("c")]]
    assert client2.pop_counters()["llm.cache_hits"] == 2
    assert client2.pop_counters() == {}
    client2.close()


def test_sampled_requests_get_a_seed_and_distinct_keys(tmp_path):
    engine = ScriptedEngine(lambda r: Result(text=f"seed={r.sampling.seed}", finish_reason="stop"))
    client = LLMClient(EngineConfig(seed=11), cache_dir=str(tmp_path), engine=engine)
    out = client.generate([req("x", temperature=0.8), req("x", temperature=0.8, seed=5), req("x")])
    assert [r.text for r in out] == ["seed=11", "seed=5", "seed=None"]
    client.close()


SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}


def test_json_schema_valid_repaired_and_invalid():
    def reply(r: Request) -> Result:
        text = r.messages[0][1]
        repairing = len(r.messages) > 1
        if text == "good":
            return Result(text='```json\n{"score": 4}\n```', finish_reason="stop")
        if text == "fixable":
            return Result(text='{"score": 5}' if repairing else "Score: five", finish_reason="stop")
        return Result(text='{"score": "high"}', finish_reason="stop")

    engine = ScriptedEngine(reply)
    client = LLMClient(EngineConfig(), engine=engine)
    reqs = [Request(req(t).messages, req(t).sampling, json_schema=SCHEMA) for t in ("good", "fixable", "hopeless")]
    good, fixed, bad = client.generate(reqs)
    assert good.ok and good.parsed == {"score": 4}
    assert fixed.ok and fixed.parsed == {"score": 5}
    assert failure_reason(bad) == "invalid_json" and bad.parsed is None
    assert len(engine.batches) == 2 and len(engine.batches[1]) == 2  # one batched repair round
    assert engine.batches[1][0].messages[1] == ("assistant", "Score: five")
    c = client.pop_counters()
    assert c["llm.repairs"] == 2 and c["llm.failures.invalid_json"] == 1


def test_empty_length_and_engine_errors_are_reasons_and_errors_are_not_cached(tmp_path):
    def reply(r: Request) -> Result:
        text = r.messages[0][1]
        if text == "empty":
            return Result(text="  \n", completion_tokens=1, finish_reason="stop")
        if text == "long":
            return Result(text="cut", completion_tokens=16, finish_reason="length")
        return Result(finish_reason="error", error="llm_error: timeout after 3 tries")

    engine = ScriptedEngine(reply)
    client = LLMClient(EngineConfig(), cache_dir=str(tmp_path), engine=engine)
    empty, long_, broken = client.generate([req("empty"), req("long"), req("broken")], fail_on_length=True)
    assert [failure_reason(r) for r in (empty, long_, broken)] == ["empty_output", "length", "llm_error"]
    assert broken.error == "llm_error: timeout after 3 tries"
    # without the flag a length finish is kept
    assert client.generate([req("long")])[0].ok
    c = client.pop_counters()
    assert c["llm.failures.empty_output"] == 1 and c["llm.failures.length"] == 1 and c["llm.failures.llm_error"] == 1
    # the transport failure is retried by a rerun; the deterministic outcomes come from the cache
    engine.batches.clear()
    client.generate([req("empty"), req("long"), req("broken")])
    assert engine.batches == [[req("broken")]]
    client.close()


def test_engine_config_for_merges_stage_over_run_default():
    ctx = RunContext(llm={"engine": "openai", "model": "gpt-x", "base_url": "http://h/v1", "max_retries": 5})
    cfg = engine_config_for({"model": "other", "timeout_s": 3}, ctx)
    assert (cfg.engine, cfg.model, cfg.base_url, cfg.max_retries, cfg.timeout_s) == ("openai", "other", "http://h/v1", 5, 3)
    assert engine_config_for(None, RunContext()).engine == "transformers"
    with pytest.raises(ValueError):
        engine_config_for({"modle": "typo"}, ctx)


def test_extract_json_variants():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Sure! Here it is: {"a": [1, 2]} hope that helps') == {"a": [1, 2]}
    assert extract_json("```\n[1, 2]\n```") == [1, 2]
    with pytest.raises(ValueError):
        extract_json("no json here")

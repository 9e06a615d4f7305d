"""The transformers engine on the embedded SmolLM2, really generating: batched engine results and
logprobs, and the generate stage in a Beam pipeline (FnApiRunner) with the cache — a second run
makes no engine call."""

from __future__ import annotations

import json
import math
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from datacraft.beam.transform import stage_transform
from datacraft.core.rows import batch_from_rows, make_row
from datacraft.core.stage import RunContext
from datacraft.llm.cache import LLMCache
from datacraft.llm.config import EngineConfig
from datacraft.llm.engines import TransformersEngine, apply_stop, create_engine
from datacraft.llm.types import Request, SamplingParams
from datacraft.stages.synthesize.generate import GenerateStage, prompt_of

pytestmark = pytest.mark.timeout(300)
DATA = Path(__file__).parent / "data" / "selfinstruct_60.jsonl"


def seed_rows(n: int) -> list[dict]:
    """n real Self-Instruct rows (shortest prompts first) in batch layout, with their reference answers."""
    raw = sorted((json.loads(line) for line in DATA.open()), key=lambda r: len(r["instruction"]) + len(r["input"]))
    return [
        make_row(
            [
                {"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")},
                {"role": "assistant", "content": r["output"]},
            ],
            id=r["id"],
            task=r["task"],
        )
        for r in raw[:n]
    ]


@pytest.fixture(scope="module")
def engine() -> TransformersEngine:
    return create_engine(EngineConfig(batch_size=4))  # type: ignore[return-value]


def test_engine_batches_generate_with_logprobs(engine):
    rows = seed_rows(4)
    requests = [Request.chat(r["messages"][:1], SamplingParams(max_tokens=8, logprobs=True, top_logprobs=4)) for r in rows]
    out = engine.generate(requests)
    assert len(out) == 4
    for r in out:
        assert r.ok and r.text.strip()
        assert r.prompt_tokens > 10 and 1 <= r.completion_tokens <= 8
        assert r.finish_reason in ("stop", "length")
        assert len(r.logprobs) == r.completion_tokens
        first = r.logprobs[0]
        assert len(first.top) == 4 and all(isinstance(t, str) for t in first.top)
        # greedy: the chosen token is the most likely one; probabilities are proper
        assert first.token in first.top and first.logprob == pytest.approx(max(first.top.values()), abs=1e-5)
        assert sum(math.exp(v) for v in first.top.values()) <= 1.0 + 1e-5
    # batched greedy == one-by-one greedy (left padding is correct)
    alone = engine.generate(requests[:1])[0]
    assert alone.text == out[0].text


def test_digit_logprobs_for_scoring(engine):
    """What the scorers use: top-k logprobs of the first token, keyed by decoded strings."""
    msg = [{"role": "user", "content": "Rate from 1 to 6 how helpful this answer is: 'Paris is the capital of France.' Reply with one digit."}]
    r = engine.generate([Request.chat(msg, SamplingParams(max_tokens=1, logprobs=True, top_logprobs=20))])[0]
    assert r.completion_tokens == 1 and len(r.logprobs) == 1
    digits = {t: v for t, v in r.logprobs[0].top.items() if t.strip() in {"1", "2", "3", "4", "5", "6"}}
    assert digits, r.logprobs[0].top


def test_seeded_sampling_is_reproducible(engine):
    req = Request.chat([{"role": "user", "content": "Write a word."}], SamplingParams(max_tokens=6, temperature=1.0, seed=7))
    a = engine.generate([req])[0]
    b = engine.generate([req])[0]
    assert a.text == b.text


def test_stop_strings_and_prompt_limits():
    assert apply_stop("one\ntwo", ["\n"]) == ("one", True)
    assert apply_stop("abc", ["x", ""]) == ("abc", False)
    small = TransformersEngine(EngineConfig(max_model_len=32))
    long_req = Request.chat([{"role": "user", "content": "word " * 50}], SamplingParams(max_tokens=8))
    assert small.generate([long_req])[0].error.startswith("prompt_too_long")
    assert prompt_of([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == [{"role": "user", "content": "q"}]
    assert prompt_of([{"role": "system", "content": "s"}]) is None


def _run_pipeline(rows: list[dict], cache_dir: str, out: Path) -> tuple[list[dict], list[dict], list[dict]]:
    stage = GenerateStage(
        {"max_tokens": 12, "system_prompt": "You are a concise assistant."},
        context=RunContext(cache_dir=cache_dir, llm={"engine": "transformers", "model": "embedded", "batch_size": 8}),
    )
    kept_path, dropped_path, stats_path = out / "kept.jsonl", out / "dropped.jsonl", out / "stats.jsonl"

    def dump(path: Path):
        def write(item):
            with path.open("a") as fh:
                for rec in item.to_dicts() if hasattr(item, "to_dicts") else [item]:
                    fh.write(json.dumps(rec.to_dict() if hasattr(rec, "to_dict") else rec, default=str) + "\n")

        return write

    with beam.Pipeline(runner=FnApiRunner()) as p:
        outs = p | beam.Create([batch_from_rows(rows)]) | stage_transform(stage)
        outs["kept"] | "K" >> beam.Map(dump(kept_path))
        outs["dropped"] | "D" >> beam.Map(dump(dropped_path))
        outs["stats"] | "S" >> beam.Map(dump(stats_path))
    read = lambda p: [json.loads(line) for line in p.open()] if p.exists() else []  # noqa: E731
    return read(kept_path), read(dropped_path), read(stats_path)


def test_generate_stage_in_beam_with_cache_and_rerun(tmp_path):
    rows = seed_rows(8)
    cache_dir = str(tmp_path / "cache")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    kept, dropped, stats = _run_pipeline(rows, cache_dir, tmp_path / "a")
    assert len(kept) + len(dropped) == 8 and len(kept) >= 7
    c = stats[0]["counters"]
    assert c["llm.requests"] == 8 and c["llm.engine_calls"] == 1 and c["llm.cache_hits"] == 0
    assert c["llm.completion_tokens"] > 8 and c["llm.prompt_tokens"] > 8 * 20
    references = {r["id"]: r["messages"][1]["content"] for r in rows}
    for row in kept:
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        assert msgs[-1]["content"].strip() and msgs[-1]["content"] != references[row["id"]]
        assert json.loads(row["meta"])["generate"]["model"] == "embedded"
    with LLMCache(cache_dir) as cache:
        assert len(cache) == 8
    # a second run with the same config is served entirely from the cache
    kept2, _, stats2 = _run_pipeline(rows, cache_dir, tmp_path / "b")
    c2 = stats2[0]["counters"]
    assert c2.get("llm.engine_calls", 0) == 0 and c2["llm.cache_hits"] == 8
    assert sorted((r["id"], r["messages"][-1]["content"]) for r in kept2) == sorted(
        (r["id"], r["messages"][-1]["content"]) for r in kept
    )


def test_fill_empty_mode_only_generates_missing_responses(tmp_path, engine):
    rows = seed_rows(3)
    rows[1] = make_row([rows[1]["messages"][0]], id="needs-answer")
    rows.append(make_row([{"role": "system", "content": "only a system turn"}], id="no-user"))
    stage = GenerateStage({"max_tokens": 6, "mode": "fill_empty"}, context=RunContext(cache_dir=str(tmp_path)))
    kept, dropped, stats = stage.run_local([batch_from_rows(rows)])
    assert stats[0].counters["llm.requests"] == 1
    assert dropped["drop_reason"].to_list() == ["no_prompt"]
    by_id = {r["id"]: r["messages"] for r in kept.to_dicts()}
    assert by_id[rows[0]["id"]] == rows[0]["messages"]  # untouched
    assert by_id["needs-answer"][-1]["role"] == "assistant" and by_id["needs-answer"][-1]["content"].strip()
    assert kept.height + dropped.height == 4

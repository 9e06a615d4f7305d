"""DS2's LLM rating step (`ds2_rate`): the reference prompt, the reference parser, retries, drops,
the LLM cache, and the rating feeding `ds2_curate` in a Beam run.

The fast tests use a scripted engine (a real engine cannot give fixed replies) behind the real
`LLMClient`, so the content-addressed cache, seeds and batching are the production ones."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from datacraft.core.rows import batch_from_rows, make_row
from datacraft.core.stage import RunContext
from datacraft.llm.client import LLMClient
from datacraft.llm.config import EngineConfig
from datacraft.llm.types import Request, Result
from datacraft.stages.registry import build_stage, stage_class
from datacraft.stages.score.ds2_rate import json_objects, parse_rating, rating_messages, render_sample

from .conftest import DATA

GOLDEN = json.loads((DATA / "golden" / "ds2_rating_prompts.json").read_text(encoding="utf-8"))


class ScriptedEngine:
    """Replies by a function of (prompt text, seed); counts the requests it really received."""

    name = "scripted"
    model = "scripted"

    def __init__(self, reply: Callable[[str, int | None], str | None]) -> None:
        self.reply = reply
        self.requests: list[Request] = []

    def generate(self, requests: list[Request]) -> list[Result]:
        self.requests += requests
        out = []
        for r in requests:
            text = self.reply("\n".join(c for _, c in r.messages), r.sampling.seed)
            out.append(Result(text=text, finish_reason="stop", completion_tokens=3) if text is not None
                       else Result(error="llm_error: injected", finish_reason="error"))
        return out

    def close(self) -> None:
        pass


def _json(overall: int, rarity: int = 3) -> str:
    return json.dumps({"Rarity": rarity, "Complexity": 4, "Informativeness": 5, "Overall rating": overall})


def _reply(prompt: str, seed: int | None) -> str | None:
    if "colour" in prompt:
        return f"Sure. {{draft}} Here you go:\n{_json(7)}"
    if "capital" in prompt:  # the last object counts, as the reference's matches[-1]
        return f"{_json(2)} then revised: {_json(9, rarity=8)}"
    if "haiku" in prompt:  # no JSON in the first sample, a rating in the second
        return "I think it is good." if seed == 0 else _json(6)
    if "prime" in prompt:  # an object without the keys: not retried, unparseable
        return '{"score": 5}'
    if "never" in prompt:
        return "No rating from me."
    return None  # engine failure


ROWS = [("Name a colour.", "Blue."), ("What is the capital of France?", "Paris."), ("Write a haiku.", "Autumn moon..."),
        ("Is 7 prime?", "Yes."), ("Say never.", "never"), ("Fail.", "x")]


def _batch() -> pl.DataFrame:
    return batch_from_rows([make_row([{"role": "user", "content": q}, {"role": "assistant", "content": a}], id=f"r{i}")
                            for i, (q, a) in enumerate(ROWS)])


def _stage(tmp_path: Path, engine: ScriptedEngine, **params: object):
    client = LLMClient(EngineConfig(engine="transformers", model="scripted"), cache_dir=str(tmp_path / "cache"), engine=engine)
    return stage_class("ds2_rate")({"max_tries": 3, **params}, context=RunContext(cache_dir=str(tmp_path / "cache")), client=client)


def test_prompt_is_ds2s_reference_wording() -> None:
    """Both prompt paths against the strings extracted from DS2's files (tests/data/golden/ds2_rating_prompts.json)."""
    conv = render_sample([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}])
    assert conv == "### user: Hi?\n### assistant: Hello.\n"  # scoring.py: f"### {role}: {content}\n"
    system, user = rating_messages(conv, "open")
    assert system == {"role": "system", "content": GOLDEN["system_prompt"]}
    # scoring.py's template: "{user_prompt} \n## Data sample (conversation):\n{conversation}" in the user turn
    assert GOLDEN["llama_user_line"].startswith("<|start_header_id|>user<|end_header_id|>{} \\n## Data sample (conversation):\\n{}")
    assert user == {"role": "user", "content": GOLDEN["user_prompt"] + " \n## Data sample (conversation):\n" + conv}
    api_system, api_user = rating_messages(conv, "api")
    assert api_system["content"] == "You are a helpful assistant."
    assert api_user["content"] == GOLDEN["api_pre_prompt"] + conv + "\n### Rating:"


@pytest.mark.parametrize("text", ['a {"x": {"y": 1}} b {"z": 2}', "{ unmatched {\"a\": 1}", "no braces", "}{}{", '{"a": "}"} {"b": 1}', "{{}}{"])
def test_json_objects_match_the_reference_regex(text: str) -> None:
    regex = pytest.importorskip("regex")  # the reference's module (a transformers dependency)
    assert json_objects(text) == regex.compile(r"\{(?:[^{}]|(?R))*\}").findall(text)


def test_parse_rating_as_the_reference() -> None:
    assert parse_rating(f"x {_json(2)} y {_json(8)}") == ((3, 4, 5, 8), "")
    assert parse_rating('{"Rarity": "6", "Complexity": 7.9, "Informativeness": 1, "Overall rating": "10"}') == ((6, 7, 1, 10), "")
    assert parse_rating("none here") == (None, "no_json")
    assert parse_rating('{"Rarity": 1}')[1].startswith("bad_json: KeyError")
    assert parse_rating('{"Rarity": 1, "Complexity": 1, "Informativeness": 1, "Overall rating": "high"}')[1].startswith("bad_json: ValueError")


def test_rates_retries_drops_with_reasons_and_caches(tmp_path: Path) -> None:
    engine = ScriptedEngine(_reply)
    result = _stage(tmp_path, engine).run(_batch())
    kept, dropped = result.kept, result.dropped
    assert kept.height + dropped.height == len(ROWS)
    rating = dict(zip(kept["id"], kept["scores.ds2_rating"], strict=True))
    assert rating == {"r0": 7.0, "r1": 9.0, "r2": 6.0}
    metas = {i: json.loads(m)["ds2_rating"] for i, m in zip(kept["id"], kept["meta"], strict=True)}
    assert metas["r1"] == {"rarity": 8, "complexity": 4, "informativeness": 5, "overall": 9}
    assert metas["r2"]["tries"] == 2 and "tries" not in metas["r0"]
    why = dict(zip(dropped["id"], dropped["drop_reason"], strict=True))
    assert why == {"r3": "unparseable_rating", "r4": "unparseable_rating", "r5": "llm_error"}
    detail = dict(zip(dropped["id"], dropped["drop_detail"], strict=True))
    assert "KeyError" in detail["r3"] and "after 1 generation" in detail["r3"]  # an object without the keys: no retry
    assert "no JSON object after 3 generation(s)" in detail["r4"]
    # DS2 decoding, one batched call per attempt, a new seed per retry
    first = engine.requests[0].sampling
    assert (first.temperature, first.top_p, first.top_k, first.max_tokens) == (1.2, 0.9, 50, 128)
    seeds = [r.sampling.seed for r in engine.requests]
    assert seeds == [0] * 6 + [1, 1] + [2]  # haiku + never retried at seed 1, never again at seed 2
    assert result.counters["ds2_rate.generations"] == 6 + 2 + 1
    # a rerun on the same cache asks the engine nothing (the failed engine call is retried: not cached)
    again = ScriptedEngine(_reply)
    rerun = _stage(tmp_path, again).run(_batch())
    assert rerun.kept.equals(kept) and [r.tag for r in again.requests] == ["5"]


def test_unparseable_rows_can_stay_in_ds2s_lowest_class(tmp_path: Path) -> None:
    result = _stage(tmp_path, ScriptedEngine(_reply), on_unparseable="zero", temperature=0.0).run(_batch())
    assert set(result.dropped["drop_reason"]) == {"llm_error"}  # engine failures still drop
    rating = dict(zip(result.kept["id"], result.kept["scores.ds2_rating"], strict=True))
    # temperature 0: no second sample, so the haiku row (JSON only in its second sample) is unrated too
    assert rating["r2"] == rating["r3"] == rating["r4"] == 0.0 and rating["r0"] == 7.0
    assert result.counters["ds2_rate.generations"] == len(ROWS)


def test_rating_feeds_ds2_curate(tmp_path: Path) -> None:
    """ds2_rate → ds2_curate with DS2's defaults (overall clipped to [4, 9] → classes 0–5) on real rows."""
    from datacraft.io.readers import read_all

    rows, _ = read_all(str(DATA / "selfinstruct_60.jsonl"))
    rows = rows.head(30)
    rated = _stage(tmp_path, ScriptedEngine(lambda p, s: _json(3 + len(p) % 8))).run(rows).kept  # overall 3..10 by content
    assert rated.height == 30 and set(rated["scores.ds2_rating"]) >= {3.0, 10.0}
    params = {"rating": "ds2_rating", "budget": 10, "hoc_rounds": 2, "hoc_steps": 50, "curation_epochs": 3, "kind": "static"}
    kept, dropped, stats = build_stage("ds2_curate", params).run_local([rated])
    assert kept.height == 10 and dropped.height == 20
    facts = stats[0].extras["ds2"]
    assert facts["rating"] == "ds2_rating" and facts["classes"] == [4, 5, 6, 7, 8, 9]
    clipped = rated["scores.ds2_rating"].clip(4, 9).cast(pl.Int64) - 4
    assert facts["rated_counts"] == [int((clipped == c).sum()) for c in range(6)]
    assert kept["scores.ds2_rating_curated"].is_between(4, 9).all()


@pytest.mark.slow
def test_embedded_smollm2_rates_real_rows(tmp_path: Path) -> None:
    """The embedded SmolLM2-135M as DS2's rater on real rows: every row rated 1–10 or dropped with a reason."""
    from datacraft.io.readers import read_all

    rows, _ = read_all(str(DATA / "alpaca_llamafactory_200.jsonl"))
    batch = rows.head(2)
    ctx = RunContext(cache_dir=str(tmp_path / "cache"), llm={"engine": "transformers", "model": "embedded", "device": "cpu"})
    stage = build_stage("ds2_rate", {"max_tries": 1, "max_tokens": 40}, context=ctx)
    kept, dropped, stats = stage.run_local([batch])
    assert kept.height + dropped.height == 2
    assert kept["scores.ds2_rating"].is_between(-10, 100).all()
    assert set(dropped["drop_reason"].to_list()) <= {"unparseable_rating"}
    assert stats[0].counters["ds2_rate.generations"] == 2
    again, _, stats2 = build_stage("ds2_rate", {"max_tries": 1, "max_tokens": 40}, context=ctx).run_local([batch])
    assert again["id"].to_list() == kept["id"].to_list() and stats2[0].counters.get("llm.cache_hits", 0) == 2

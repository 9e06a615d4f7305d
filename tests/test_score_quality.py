"""Deita quality / complexity judges and the reward-model scorer.

Expected-score math on hand-built logits, the logprobs path of engines (fake client), multi-turn
combination, and the embedded judge (SmolLM2-135M) on real rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datacraft.core.rows import batch_from_rows, make_row, meta_of
from datacraft.io.readers import read_all
from datacraft.llm.config import EngineConfig
from datacraft.llm.types import Result, TokenLogprob
from datacraft.stages.registry import build_stage
from datacraft.stages.score.judge import (
    DEITA_TEMPLATES,
    DeitaJudge,
    expected_score,
    judge_result,
    score_from_top,
    turn_pairs,
)

from .conftest import DATA


def _conv(*turns: str) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


# ---------------------------------------------------------------------------------------------
# math


def test_expected_score_on_hand_built_logits() -> None:
    assert expected_score([0, 0, 0, 0, 0, 0]) == pytest.approx(3.5)
    assert expected_score([-50, -50, -50, -50, -50, 50]) == pytest.approx(6.0)
    assert expected_score([50, -50, -50, -50, -50, -50]) == pytest.approx(1.0)
    # logits (0, ln 3) on "2" and "5", the rest −∞-ish: 2·1/4 + 5·3/4 = 4.25
    assert expected_score([-1e9, 0.0, -1e9, -1e9, math.log(3), -1e9]) == pytest.approx(4.25)
    # shift invariance: logprobs and logits give the same value
    x = np.array([0.3, -1.2, 2.0, 0.1, -0.5, 1.1])
    assert expected_score(x) == pytest.approx(expected_score(x - 7.3))
    p = np.exp(x) / np.exp(x).sum()
    assert expected_score(x) == pytest.approx(float((p * np.arange(1, 7)).sum()))


def test_score_from_top_logprobs_renormalises_and_merges_spellings() -> None:
    full = {str(k): math.log(1 / 6) for k in range(1, 7)} | {"The": -0.1}
    assert score_from_top(full) == (pytest.approx(3.5), [])
    value, missing = score_from_top({"5": math.log(0.3), " 5": math.log(0.3), "2": math.log(0.2), "x": -0.01})
    assert missing == [1, 3, 4, 6] and value == pytest.approx((5 * 0.6 + 2 * 0.2) / 0.8)
    assert score_from_top({"a": -1.0}) == (None, [1, 2, 3, 4, 5, 6])


def test_judge_result_methods() -> None:
    exact = Result(text="4", logprobs=[TokenLogprob("4", -0.1, {str(k): -float(k) for k in range(1, 7)})])
    assert judge_result(exact).method == "logprobs"
    partial = Result(text="4", logprobs=[TokenLogprob("4", -0.1, {"4": -0.1, "5": -2.0})])
    assert judge_result(partial).method == "logprobs_partial" and judge_result(partial).missing == [1, 2, 3, 6]
    parsed = Result(text="Score: 5", logprobs=None)
    assert (judge_result(parsed).value, judge_result(parsed).method) == (5.0, "parsed")
    assert judge_result(Result(text="great answer")).method == "default"
    assert judge_result(Result(error="llm_error: timeout")).error == "llm_error: timeout"


def test_turn_pairs_split_like_deita() -> None:
    assert turn_pairs(_conv("q1", "a1", "q2", "a2", "q3")) == [("q1", "a1"), ("q2", "a2"), ("q3", "")]
    sys_first = [{"role": "system", "content": "be nice"}, *_conv("q", "a")]
    assert turn_pairs(sys_first) == [("q", "a")]
    assert turn_pairs(_conv("prompt"), [{"role": "assistant", "content": "chosen"}]) == [("prompt", "chosen")]


def test_deita_templates_are_the_released_strings() -> None:
    judge = DeitaJudge("quality", EngineConfig(model="hkust-nlp/deita-quality-scorer"))
    assert judge.template == "deita" and judge.backend == "logits"
    assert judge.prompt("Q?", "A.") == (
        "You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
        "Question. \n #Question#:\nQ?\n#Response#:\nA. \n##Quality: "
    )
    assert DEITA_TEMPLATES["complexity"].format(instruction="Q?").endswith("##Query: Q?  \n##Complexity: ")
    assert DeitaJudge("quality", EngineConfig(engine="openai", model="gpt-4o-mini")).template == "judge"


# ---------------------------------------------------------------------------------------------
# stages with an injected engine client (the engine backend)


class FakeClient:
    """Answers every judge request with fixed digit logprobs keyed by a word in the prompt."""

    def __init__(self) -> None:
        self.requests = 0

    def generate(self, requests):
        out = []
        for r in requests:
            self.requests += 1
            text = r.messages[-1][1]
            if "FAIL" in text:
                out.append(Result(error="llm_error: boom"))
            elif "NOLOGPROBS" in text:
                out.append(Result(text="I'd say 2"))
            else:
                best = 6 if "excellent" in text else 2
                top = {str(k): (-0.05 if k == best else -6.0) for k in range(1, 7)}
                out.append(Result(text=str(best), logprobs=[TokenLogprob(str(best), -0.05, top)]))
        return out

    def pop_counters(self):
        return {"llm.requests": float(self.requests)}

    def close(self) -> None:
        pass


def _stage(name: str, **params):
    stage = build_stage(name, {"llm": {"engine": "openai", "model": "judge", "base_url": "http://x/v1"}, **params})
    stage.client = FakeClient()
    return stage


def test_multi_turn_rows_scored_per_turn_and_combined() -> None:
    rows = [
        make_row(_conv("q excellent", "a excellent", "q2", "a2"), id="multi"),
        make_row(_conv("plain q", "plain a"), id="single"),
        make_row(_conv("FAIL", "x"), id="failed"),
        make_row(_conv("NOLOGPROBS", "x"), id="parsed"),
    ]
    batch = batch_from_rows(rows)
    kept_q, dropped_q, stats_q = _stage("quality", missing_digits="renormalize").run_local([batch])  # Deita's 3.0 default: test_paper_recipes
    assert dropped_q["id"].to_list() == ["failed"] and dropped_q["drop_reason"][0] == "llm_error"
    by_id = {r["id"]: r for r in kept_q.iter_rows(named=True)}
    q_turns = meta_of(by_id["multi"]["meta"])["quality_scores"]
    assert len(q_turns) == 2 and q_turns[0] > 5.5 and q_turns[1] < 2.5
    assert by_id["multi"]["scores.quality"] == pytest.approx(np.mean(q_turns))
    assert meta_of(by_id["parsed"]["meta"])["quality_method"] == "parsed" and by_id["parsed"]["scores.quality"] == 2.0
    assert stats_q[0].counters["llm.requests"] == 5  # one request per turn
    assert stats_q[0].extras["score_spread"][0]["n"] == 3

    kept_c, _, _ = _stage("complexity").run_local([kept_q])
    multi = kept_c.filter(pl.col("id") == "multi").row(0, named=True)
    c_turns = meta_of(multi["meta"])["complexity_scores"]
    assert multi["scores.deita"] == pytest.approx(sum(c * q for c, q in zip(c_turns, q_turns, strict=True)))
    assert kept_c.height == 3


def test_min_score_drops_with_reason() -> None:
    batch = batch_from_rows([make_row(_conv("q", "excellent"), id="good"), make_row(_conv("q", "meh"), id="bad")])
    kept, dropped, _ = _stage("quality", min_score=4.0).run_local([batch])
    assert kept["id"].to_list() == ["good"] and dropped["drop_reason"].to_list() == ["below_min_score"]


class PartialClient(FakeClient):
    """FakeClient that also answers "PARTIAL" prompts with only some digits in the top logprobs, and
    records the role of every request's last message."""

    def __init__(self) -> None:
        super().__init__()
        self.roles: list[str] = []

    def generate(self, requests):
        self.roles += [r.messages[-1][0] for r in requests]
        partial = [i for i, r in enumerate(requests) if "PARTIAL" in r.messages[-1][1]]
        out = super().generate(requests)
        for i in partial:
            out[i] = Result(text="3", logprobs=[TokenLogprob("3", -0.1, {"3": -0.1, "4": -2.5})])
        return out


def test_turn_methods_counted_and_the_worst_one_reported() -> None:
    rows = [
        make_row(_conv("PARTIAL q", "a", "NOLOGPROBS q2", "a2"), id="partial_then_parsed"),
        make_row(_conv("NOLOGPROBS q", "a", "PARTIAL q2", "a2"), id="parsed_then_partial"),
        make_row(_conv("q excellent", "a excellent"), id="exact"),
        make_row(_conv("PARTIAL q", "a"), id="partial"),
        make_row(_conv("q excellent", "a excellent", "PARTIAL q2", "a2"), id="exact_then_partial"),
    ]
    stage = _stage("quality", missing_digits="renormalize")
    stage.client = PartialClient()
    kept, _, stats = stage.run_local([batch_from_rows(rows)])
    assert set(stage.client.roles) == {"user"}  # the judge prompt goes as a user turn
    methods = {r["id"]: meta_of(r["meta"]).get("quality_method") for r in kept.iter_rows(named=True)}
    assert methods == {"partial_then_parsed": "parsed", "parsed_then_partial": "parsed", "exact": None, "partial": "logprobs_partial",
                       "exact_then_partial": "logprobs_partial"}
    missing = {r["id"]: meta_of(r["meta"]).get("quality_missing_digits") for r in kept.iter_rows(named=True)}
    assert missing == {"partial_then_parsed": None, "parsed_then_partial": None, "exact": None, "partial": [1, 2, 5, 6],
                       "exact_then_partial": [1, 2, 5, 6]}  # only 3 and 4 were in the top-k
    counters = stats[0].counters
    assert (counters["judge.turns.logprobs_partial"], counters["judge.turns.parsed"], counters["judge.turns.logprobs"]) == (4, 2, 2)


# ---------------------------------------------------------------------------------------------
# the embedded judge on real rows (logits backend)


def _eval_rows(n: int) -> pl.DataFrame:
    rows, _ = read_all(str(DATA / "alpaca_eval_gpt4_200.jsonl"))
    return rows.head(n)


def _truncated(frame: pl.DataFrame, words: int = 4) -> pl.DataFrame:
    rows = []
    for r in frame.iter_rows(named=True):
        msgs = [dict(m) for m in r["messages"]]
        msgs[-1]["content"] = " ".join(msgs[-1]["content"].split()[:words])
        rows.append(make_row(msgs, id=r["id"] + ":trunc"))
    return batch_from_rows(rows)


def test_embedded_judge_small_batch_logits_path() -> None:
    frame = _eval_rows(4)
    stage = build_stage("quality", {"max_field_chars": 300, "batch_size": 4})
    kept, dropped, stats = stage.run_local([frame])
    assert dropped.height == 0 and kept.height == 4
    q = kept["scores.quality"].to_numpy()
    assert ((q >= 1) & (q <= 6)).all() and np.unique(np.round(q, 4)).size > 1
    assert all("quality_method" not in meta_of(m) for m in kept["meta"].to_list())  # exact logits
    # batching does not change the values (right padding, last real position)
    single = build_stage("quality", {"max_field_chars": 300, "batch_size": 1}).run_local([frame])[0]
    assert np.allclose(single["scores.quality"].to_numpy(), q, atol=1e-4)
    assert stats[0].counters["judge.forward_rows"] == 4


@pytest.mark.slow
def test_embedded_judge_on_50_rows_spread_and_truncation() -> None:
    """Measured on the 135M embedded judge (Deita template, first 600 characters of each field):
    see the report in docs — the judge is weak; we assert only what it does reliably."""
    frame = _eval_rows(50)
    params = {"max_field_chars": 600, "batch_size": 8}
    full, _, stats = build_stage("quality", params).run_local([frame])
    trunc, _, _ = build_stage("quality", params).run_local([_truncated(frame)])
    f, t = full["scores.quality"].to_numpy(), trunc["scores.quality"].to_numpy()
    spread = stats[0].extras["score_spread"][0]
    print(json.dumps({"full_mean": f.mean(), "trunc_mean": t.mean(), "frac_full_gt_trunc": float((f > t).mean()), "spread": spread}))
    assert ((f >= 1) & (f <= 6)).all() and spread["std"] > 0.05 and spread["distinct_2dp"] > 10
    assert (f > t).mean() > 0.5 and f.mean() > t.mean()
    comp, _, _ = build_stage("complexity", params).run_local([full])
    assert comp["scores.deita"].is_not_null().all()


# ---------------------------------------------------------------------------------------------
# reward model


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory) -> str:
    """A 2-layer Llama sequence-classification model (num_labels=1) with the embedded SmolLM2
    tokenizer, built offline. Its weights are random: the scores are UNTRAINED — plumbing only."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from datacraft.llm.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("embedded"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, num_labels=1, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    out = tmp_path_factory.mktemp("rm") / "tiny-rm"
    LlamaForSequenceClassification(config).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return str(out)


def test_reward_stage_scores_batched_and_preference_margin(tiny_reward_model: str) -> None:
    rows, _ = read_all(str(DATA / "llamafactory_dpo_60.jsonl"))
    frame = rows.head(6)
    kept, dropped, stats = build_stage("reward", {"model": tiny_reward_model, "batch_size": 4}).run_local([frame])
    assert kept.height == 6 and dropped.height == 0
    r = kept["scores.reward"].to_numpy()
    assert np.isfinite(r).all() and np.unique(np.round(r, 5)).size > 1
    assert kept["scores.reward_margin"].is_not_null().all()
    one = build_stage("reward", {"model": tiny_reward_model, "batch_size": 1}).run_local([frame])[0]
    assert np.allclose(one["scores.reward"].to_numpy(), r, atol=1e-4)
    cut = float(np.median(r))
    kept2, dropped2, _ = build_stage("reward", {"model": tiny_reward_model, "min_score": cut}).run_local([frame])
    assert (kept2["scores.reward"] >= cut).all() and set(dropped2["drop_reason"].to_list()) == {"below_min_score"}


def test_reward_with_several_labels_is_the_last_labels_probability(tmp_path: Path) -> None:
    """A 3-label head: the default score is P(last label); `label_index` picks another; they sum to 1.
    (Random, untrained weights: plumbing only.)"""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from datacraft.llm.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("embedded"))
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, num_labels=3, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    path = tmp_path / "rm3"
    LlamaForSequenceClassification(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    rows, _ = read_all(str(DATA / "alpaca_llamafactory_200.jsonl"))
    frame = rows.head(4)
    score = {i: build_stage("reward", {"model": str(path), **({} if i is None else {"label_index": i})}).run_local([frame])[0]["scores.reward"].to_numpy()
             for i in (None, 0, 1, 2)}
    assert np.allclose(score[None], score[2]) and not np.allclose(score[None], score[0])
    assert np.allclose(score[0] + score[1] + score[2], 1.0, atol=1e-5)

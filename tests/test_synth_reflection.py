"""Reflection-Tuning: the selection rule, parse-failure handling, modes, prompts, and a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from datacraft.io.readers import read_all
from datacraft.llm.types import Request, Result
from datacraft.stages.synthesize import prompts
from datacraft.stages.synthesize.reflection import ReflectionStage, choose_variant, split_input

from .conftest import DATA
from .synth_fakes import FakeScorer, ScriptedClient, check_golden, run_pipeline, short_hash

ALPACA = str(DATA / "alpaca_llamafactory_200.jsonl")


@pytest.fixture(scope="module")
def rows() -> pl.DataFrame:
    kept, _ = read_all(ALPACA)
    return kept.head(8)


def teacher(bad_response_marker: str = "making crepes") -> ScriptedClient:
    """New instructions start with 'Explain'; better answers with 'Better'; one row gets a placeholder."""
    return ScriptedClient(
        [
            ("[New Instruction]", lambda p: f"Critique...\n[New Instruction] Explain in detail {short_hash(p)} with examples. [End]\n[New Answer] Detailed answer {short_hash(p)}. [End]"),
            ("[Better Answer]", lambda p: "Critique.\n[Better Answer] your answer [End]" if bad_response_marker in p else f"Critique.\n[Better Answer] Better answer {short_hash(p)}.\n[End]"),
        ]
    )


def _ledger(stats: list[dict]) -> None:
    s = stats[0]
    assert s.n_in + s.created == s.kept + sum(s.dropped.values())


NAN = float("nan")


@pytest.mark.parametrize(
    ("scores", "below_one", "expected"),
    [
        ({"ori": (0.5, 0.9), "Q": (0.7, 0.8), "QA": (0.8, 0.6), "A": (0.4, 0.5)}, True, ("QA", "")),
        ({"ori": (0.7, 0.9), "Q": (0.5, 0.8), "QA": (0.8, 0.6), "A": (0.4, 0.5)}, True, ("A", "")),
        ({"ori": (0.7, 0.9), "Q": (0.5, 0.8), "A": (0.4, 0.95)}, True, (None, "response_not_accepted")),
        ({"ori": (0.7, 1.3), "A": (0.9, 1.1)}, True, (None, "above_one")),
        ({"ori": (0.7, 1.3), "A": (0.9, 1.1)}, False, ("A", "")),
        ({"ori": (0.7, 0.9), "A": (1.2, 0.5)}, True, (None, "above_one")),
        ({"ori": (0.5, 0.9), "Q": (0.7, 0.8)}, True, (None, "response_not_reflected")),  # QA missing
        ({"ori": (NAN, 0.9), "A": (0.4, 0.5)}, True, (None, "ifd_unavailable")),
    ],
)
def test_selection_rule(scores: dict, below_one: bool, expected: tuple) -> None:
    assert choose_variant(scores, require_below_one=below_one) == expected


def test_selective_mode_one_call_per_step_and_rule_applied(rows: pl.DataFrame) -> None:
    client = teacher()
    # the student prefers the new instructions (higher IFD) and the better answers (lower r-IFD);
    # the crepes row's original-response reflection fails, which does not matter once Q wins
    scorer = FakeScorer(lambda x, y: (0.9 if x.startswith("Explain") else 0.8, 0.5 if y.startswith("Better") else 0.7))
    stage = ReflectionStage({"mode": "selective"}, client=client, scorer=scorer)
    kept, dropped, stats = stage.run_local([rows])
    _ledger(stats)
    assert [len(c) for c in client.calls] == [8, 16, 1]  # instructions, responses (ori + Q), one parse retry
    assert client.calls[2][0].sampling.temperature == 0.7 and client.calls[2][0].sampling.seed == 1
    assert scorer.calls == [8 * 4 - 1]  # the crepes row has no reflected original response (A)
    assert kept.height == 8 and dropped.height == 0
    for r in kept.iter_rows(named=True):
        info = json.loads(r["meta"])["reflection"]
        assert r["lineage"]["method"] == "reflection:selective:QA" and len(r["lineage"]["parent_ids"]) == 1
        assert r["messages"][0]["content"].startswith("Explain") and r["messages"][1]["content"].startswith("Better")
        assert info["rejected_response"].startswith("Detailed answer") and info["accepted"] is True
        assert r["scores.ifd"] == 0.9 and r["scores.rifd"] == 0.5
    assert stats[0].counters["reflection.parse_failed.response.placeholder"] == 1


def test_selective_mode_drops_rows_the_student_rejects(rows: pl.DataFrame) -> None:
    # original instruction wins (higher IFD); the reflected answer has a HIGHER r-IFD: rejected
    scorer = FakeScorer(lambda x, y: (0.5 if x.startswith("Explain") else 0.8, 0.9 if y.startswith("Better") else 0.7))
    kept, dropped, stats = ReflectionStage({"mode": "selective"}, client=teacher(), scorer=scorer).run_local([rows])
    _ledger(stats)
    assert kept.height == 0
    reasons = dropped["drop_reason"].to_list()
    assert reasons.count("response_not_accepted") == 7 and reasons.count("response_not_reflected") == 1  # crepes


def test_parse_failure_keeps_the_original_and_is_counted(rows: pl.DataFrame) -> None:
    kept, dropped, stats = ReflectionStage({"mode": "response"}, client=teacher()).run_local([rows])
    _ledger(stats)
    assert dropped.height == 0 and kept.height == 8
    crepes = kept.filter(pl.col("id") == "llamafactory_alpaca_en_demo:0").row(0, named=True)
    assert crepes["lineage"]["method"] == "seed" and crepes["messages"] == rows.row(0, named=True)["messages"]
    c = stats[0].counters
    assert c["reflection.parse_failed.response.placeholder"] == 1 and c["reflection.unchanged"] == 1 and c["reflection.reflected"] == 7
    assert c["reflection.parse_retries"] == 1  # only the one placeholder answer is asked again
    client = teacher()
    _, _, stats = ReflectionStage({"mode": "response", "parse_retries": 0}, client=client).run_local([rows])
    assert "reflection.parse_retries" not in stats[0].counters and len(client.calls) == 1  # 0: never asked again
    assert stats[0].counters["reflection.unchanged"] == 1


def test_llm_failures_keep_or_drop(rows: pl.DataFrame) -> None:
    client = teacher()
    client.fail_when = "Transform the following sentence"
    kept, dropped, stats = ReflectionStage({"mode": "recycled", "on_failure": "drop"}, client=client).run_local([rows])
    _ledger(stats)
    assert dropped["drop_reason"].to_list() == ["llm_error"] and kept.height == 7
    client.calls.clear()
    kept, dropped, stats = ReflectionStage({"mode": "recycled"}, client=client).run_local([rows])
    assert dropped.height == 0 and stats[0].counters["reflection.llm_failed.instruction.llm_error"] == 1


def test_modes_and_keep_original(rows: pl.DataFrame) -> None:
    for mode, method in [("instruction", "reflection:instruction"), ("recycled", "reflection:recycled")]:
        kept, _, stats = ReflectionStage({"mode": mode}, client=teacher()).run_local([rows])
        assert set(kept["lineage"].struct.field("method")) == {method}
    kept, _, stats = ReflectionStage({"mode": "recycled", "keep_original": True}, client=teacher()).run_local([rows])
    _ledger(stats)
    assert stats[0].created == 8 and kept.height == 16
    rec = kept.filter(pl.col("lineage").struct.field("method") == "reflection:recycled")
    assert all(m[1]["content"].startswith(("Better", "Detailed")) for m in rec["messages"].to_list())


def test_golden_prompts() -> None:
    kept, _ = read_all(str(DATA / "selfinstruct_60.jsonl"))
    row = kept.row(0, named=True)
    user, answer = row["messages"][0]["content"], row["messages"][1]["content"]
    instruction, given = split_input(user, json.loads(row["meta"]))
    assert given and instruction + "\n\n" + given == user
    check_golden("reflection_instruction", prompts.instruction_reflection_messages(user, answer))
    check_golden("reflection_response", prompts.response_reflection_messages(instruction, answer, given))
    check_golden("dpo_pair_judge", prompts.pair_judge_messages(instruction, answer, "A shorter answer."))


@pytest.mark.slow
def test_real_teacher_and_student_in_beam(tmp_path: Path) -> None:
    """Embedded teacher + embedded IFD student, selective mode, end to end in Beam."""
    stage = {"name": "reflection", "mode": "selective", "max_tokens": 48, "parse_retries": 0, "require_below_one": False,
             "strict_tags": False, "on_truncated": "keep"}  # the 135M teacher neither writes the headers nor stops in 48 tokens
    report, out, dropped = run_pipeline(tmp_path, ALPACA, [stage], input={"limit": 2})
    assert report["ledger_ok"]
    st = report["stages"][1]
    assert st["in"] == 2 and st["kept"] + sum(st["dropped"].values()) == 2
    assert st["counters"]["llm.completion_tokens"] > 0 and st["counters"]["reflection.student_pairs"] >= 2
    for r in out.iter_rows(named=True):
        info = json.loads(r["meta"])["reflection"] if isinstance(r["meta"], str) else r["meta"]["reflection"]
        assert r["lineage"]["method"].startswith("reflection:selective:") and math.isfinite(r["scores"]["ifd"])
        assert info["accepted"] is True


def test_only_single_turn_sft_rows_are_reflected() -> None:
    from datacraft.core.rows import batch_from_rows, make_row

    qa = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."}]
    rows = [
        make_row(qa, id="pair", chosen=[{"role": "assistant", "content": "Apple."}], rejected=[{"role": "assistant", "content": "No."}]),
        make_row([*qa, {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Pear."}], id="multi"),
        make_row([qa[0]], id="unanswered"),
        make_row([qa[1], qa[0]], id="reversed"),
        make_row(qa, id="single", task="fruit_names", source="seedset"),
    ]
    kept, _, stats = ReflectionStage({"mode": "response"}, client=teacher()).run_local([batch_from_rows(rows)])
    assert stats[0].counters["reflection.skipped_not_single_turn"] == 4 and stats[0].counters["reflection.reflected"] == 1
    by_id = {r["id"]: r for r in kept.iter_rows(named=True)}
    assert by_id["pair"]["messages"] == rows[0]["messages"] and by_id["multi"]["messages"][-1]["content"] == "Pear."
    (new,) = [r for r in kept.iter_rows(named=True) if r["lineage"]["parent_ids"] == ["single"]]
    assert (new["task"], new["source"]) == ("fruit_names", "seedset")  # the reflected row keeps its task and source


def test_only_selective_stages_with_the_same_student_share_a_resource() -> None:
    """The shared resource holds the student only in selective mode: a response-mode stage on the
    same teacher must not hand a selective one its student-less resource (or the reverse)."""
    key = lambda **p: ReflectionStage(p).resource_key()  # noqa: E731
    assert key(mode="selective") != key(mode="response")
    assert key(mode="selective") != key(mode="selective", student="other/student")
    assert key(mode="selective") == key(mode="selective")
    assert key(mode="response") == key(mode="instruction", student="other/student") == key(mode="response", student_batch_size=2)


def test_selective_mode_keeps_the_original_instruction_with_the_better_answer(rows: pl.DataFrame) -> None:
    # the original instruction wins (higher IFD) and the reflected answer is easier to guess from (lower r-IFD): variant A
    scorer = FakeScorer(lambda x, y: (0.5 if x.startswith("Explain") else 0.8, 0.5 if y.startswith("Better") else 0.7))
    kept, dropped, stats = ReflectionStage({"mode": "selective"}, client=teacher(), scorer=scorer).run_local([rows])
    _ledger(stats)
    assert kept.height == 7 and dropped["drop_reason"].to_list() == ["response_not_reflected"]  # crepes
    originals = {r["id"]: r["messages"] for r in rows.iter_rows(named=True)}
    for r in kept.iter_rows(named=True):
        info = json.loads(r["meta"])["reflection"]
        assert r["lineage"]["method"] == "reflection:selective:A" and info["variant"] == "A"
        assert r["messages"][0] == originals[r["lineage"]["parent_ids"][0]][0] and r["messages"][1]["content"].startswith("Better")
        assert info["rejected_response"] == originals[r["lineage"]["parent_ids"][0]][1]["content"]


def test_a_better_answer_under_the_new_answer_header_is_taken(rows: pl.DataFrame) -> None:
    client = ScriptedClient([("[Better Answer]", lambda p: f"Critique.\n[New Answer] Better answer {short_hash(p)}.\n[End]")])
    kept, _, stats = ReflectionStage({"mode": "response"}, client=client).run_local([rows.head(2)])
    assert stats[0].counters["reflection.reflected"] == 2
    assert all(r["messages"][-1]["content"].startswith("Better answer") for r in kept.iter_rows(named=True))



class _FailOneInstructionReflection(ScriptedClient):
    """The teacher fails only the instruction reflection of the crepes row; its answer is still reflected."""

    def generate(self, requests: list[Request]) -> list[Result]:
        out = super().generate(requests)
        return [Result(error="llm_error: injected failure", finish_reason="error")
                if "[New Instruction]" in "\n".join(c for _, c in r.messages) and "crepes" in "\n".join(c for _, c in r.messages) else o
                for r, o in zip(requests, out, strict=True)]


def test_a_failed_instruction_reflection_is_named_in_the_row_meta(rows: pl.DataFrame) -> None:
    """The row whose instruction reflection failed says why (not `not_run`) in meta.reflection."""
    client = _FailOneInstructionReflection(teacher("no such marker").rules)
    kept, _, stats = ReflectionStage({"mode": "recycled"}, client=client).run_local([rows])
    _ledger(stats)
    meta = {i: json.loads(m) if isinstance(m, str) else m for i, m in zip(kept["id"], kept["meta"], strict=True)}
    statuses = sorted(m["reflection"]["instruction_status"] for m in meta.values())
    assert statuses == ["llm_error"] + ["ok"] * 7
    crepes = next(m["reflection"] for m in meta.values() if "crepes" in m["reflection"]["original_instruction"])
    assert crepes["instruction_status"] == "llm_error" and crepes["response_status"] == "ok"


def test_selective_with_keep_original_rejects_the_candidate_not_the_original(rows: pl.DataFrame) -> None:
    scorer = FakeScorer(lambda x, y: (0.5 if x.startswith("Explain") else 0.8, 0.9 if y.startswith("Better") else 0.7))
    kept, dropped, stats = ReflectionStage({"mode": "selective", "keep_original": True}, client=teacher(), scorer=scorer).run_local([rows])
    _ledger(stats)
    assert (dropped is None or dropped.height == 0) and kept.height == 8 and stats[0].created == 0
    assert kept["id"].to_list() == rows["id"].to_list() and sum(v for k, v in stats[0].counters.items() if k.startswith("reflection.rejected.")) == 8


class _Rambling(ScriptedClient):
    """A tiny model's teacher: never writes the `[Better Answer]` header and runs into max_tokens."""

    def generate(self, requests: list[Request]) -> list[Result]:
        return [Result(text=f"A better answer {short_hash(r.messages[-1][1])} that goes on and on", finish_reason="length", completion_tokens=9)
                for r in requests]


def test_tiny_teacher_options_take_untagged_cut_answers_flagged(rows: pl.DataFrame) -> None:
    """`strict_tags: false` + `on_truncated: keep` take the rambling text whole, flagged `truncated`; the defaults drop it."""
    params = {"mode": "response", "keep_original": True, "parse_retries": 0}
    kept, _, stats = ReflectionStage(params, client=_Rambling([])).run_local([rows])
    assert stats[0].created == 0 and stats[0].counters["reflection.llm_failed.response.length"] == 8
    kept, _, stats = ReflectionStage({**params, "strict_tags": False, "on_truncated": "keep"}, client=_Rambling([])).run_local([rows])
    _ledger(stats)
    new = kept.filter(pl.col("lineage").struct.field("method") == "reflection:response")
    assert new.height == 8 and stats[0].counters["reflection.truncated_kept"] == 8 and stats[0].counters["reflection.untagged"] == 8
    meta = [json.loads(m) if isinstance(m, str) else m for m in new["meta"].to_list()]
    assert {m["reflection"]["response_status"] for m in meta} == {"truncated"}
    assert all(m[1]["content"].startswith("A better answer") for m in new["messages"].to_list())

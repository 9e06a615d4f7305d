"""Edges of the synthesis stages: pair checks and their details, pair counters, judge failures,
knowledge-graph triples in the pipe form."""

from __future__ import annotations

import pytest

from datacraft.io.readers import read_all
from datacraft.stages.synthesize.dpo import DPOPairsStage, pair_check
from datacraft.stages.synthesize.parsing import parse_triples

from .synth_fakes import ScriptedClient, multihop_rules
from .test_synth_dpo import _reflected_rows
from .test_synth_multihop import SEEDS, _run

OK = {"accepted": True, "response_status": "ok", "variant": "A", "rejected_response": "short"}


def test_pair_check_reasons_and_details() -> None:
    assert pair_check({}, "chosen", True) == ("no_reflection", "the row carries no meta.reflection (run the reflection stage first)")
    for variant in ("unchanged", "instruction"):
        assert pair_check({"reflection": OK | {"variant": variant}}, "chosen", True) == (
            "fallback_copy", f"the response was not reflected (ok, variant {variant})")
    assert pair_check({"reflection": OK | {"response_status": "parse_failed"}}, "chosen", True)[0] == "fallback_copy"
    assert pair_check({"reflection": OK}, "a longer chosen answer", True) is None
    cut = {"reflection": OK | {"response_status": "truncated"}}
    assert pair_check(cut, "a longer chosen answer", True)[0] == "truncated"
    assert pair_check(cut, "a longer chosen answer", True, allow_truncated=True) is None


def test_pair_counters_are_the_text_lengths() -> None:
    kept, _, stats = DPOPairsStage().run_local([_reflected_rows()])
    chosen = sum(len(r["chosen"][0]["content"]) for r in kept.iter_rows(named=True))
    rejected = sum(len(r["rejected"][0]["content"]) for r in kept.iter_rows(named=True))
    assert stats[0].counters["dpo.pairs"] == kept.height == 4
    assert (stats[0].counters["dpo.chosen_chars"], stats[0].counters["dpo.rejected_chars"]) == (chosen, rejected)


def test_unparsable_judge_answer_is_kept_in_the_detail_cut_at_300() -> None:
    rambling = "I think both answers have merit. " * 20
    client = ScriptedClient([("Compare two answers", lambda p: rambling)])
    _, dropped, stats = DPOPairsStage({"judge": True}, client=client).run_local([_reflected_rows()])
    failed = dropped.filter(dropped["drop_reason"] == "judge_parse_failed")
    assert failed.height == 4 and stats[0].counters["dpo.judge_parse_failed"] == 4
    assert all(d == (rambling + " | " + rambling)[:300] for d in failed["drop_detail"])


def test_triples_in_the_pipe_form() -> None:
    text = "finance | has | interest rate\nbonds | are | debt\nnot a triple | here\n | empty | head"
    assert parse_triples(text) == [("finance", "has", "interest rate"), ("bonds", "are", "debt")]
    assert parse_triples("no triples at all") == []


@pytest.mark.parametrize("text", ["[a, b]", "(a, , c)", "[a, b, c, d]"])
def test_bracketed_triples_need_three_parts(text: str) -> None:
    assert parse_triples(text) == []


def test_token_budget_counts_exactly_only_near_the_limit() -> None:
    from datacraft.stages.synthesize.mosaic import Item, Mosaic, TokenBudget

    calls: list[str] = []

    def words(text: str) -> int:
        calls.append(text)
        return len(text.split())

    items = [Item("a", "one two three four", "five six seven eight")]

    def mosaic(extra: str) -> Mosaic:
        return Mosaic(instruction="one two three four" + extra, output="five six seven eight", strategy="format", rule=None, order=[0])

    far_below = TokenBudget(words, max_tokens=100)
    assert far_below.fits(items, mosaic("")) and far_below.exact_checks == 0
    near = TokenBudget(words, max_tokens=9, margin=0.15)  # estimate 8 + a few chars / 2.5: inside the band
    calls.clear()
    assert near.fits(items, mosaic(" x")) is True and near.exact_checks == 1 and calls[-1] == "one two three four xfive six seven eight"
    assert near.fits(items, mosaic(" x y z w")) is False  # counted: 8 + 3 words ≥ 9
    at_edge = TokenBudget(lambda t: 25, max_tokens=100, margin=0.5)  # estimate 50 = 100 · (1 − 0.5): counted exactly
    assert at_edge.fits(items, mosaic("")) and at_edge.exact_checks == 1


def test_mosaic_report_examples() -> None:
    from datacraft.stages.synthesize.mosaic import MosaicStage

    from .conftest import DATA

    kept, _ = read_all(str(DATA / "alpaca_llamafactory_200.jsonl"))
    _, _, stats = MosaicStage({"epochs": 1, "tokenizer": "whitespace", "max_tokens": 400, "seed": 3, "examples": 2}).run_local([kept.head(30)])
    examples = stats[0].extras["examples"]
    assert len(examples) == 2 and all(set(e) == {"instruction", "output", "strategy", "rule"} for e in examples)
    assert all(e["instruction"] and e["output"] for e in examples)


def test_multihop_counts_kept_children_and_failed_graphs() -> None:
    rules = [(m, (lambda p: "no triples here") if m == "knowledge-graph triples" else fn) for m, fn in multihop_rules()]
    _, _, s = _run(read_all(SEEDS)[0].head(3), ScriptedClient(rules), hops=2)
    # without a KG tail: 2 attributes × 3 ops + 2 personas = 8 children a node
    assert (s.counters["multihop.hop1.created"], s.counters["multihop.hop1.kept"]) == (24, 24)
    assert (s.counters["multihop.hop2.created"], s.counters["multihop.hop2.kept"]) == (192, 192)
    assert s.counters["multihop.kg_failed"] == 3 + 24  # every node of both hops: no triple parsed


def test_multihop_failed_children_keep_the_question_as_a_user_turn() -> None:
    frame = read_all(SEEDS)[0].head(2)
    _, dropped, s = _run(frame, ScriptedClient(multihop_rules(), fail_when="Persona question"), hops=1)
    assert dropped.height == 4 and s.counters["multihop.hop1.kept"] == s.counters["multihop.hop1.created"] - 4
    assert all(len(m) == 1 and m[0]["role"] == "user" and m[0]["content"].startswith("Persona question") for m in dropped["messages"])


def test_reflection_ignores_the_system_turn() -> None:
    from datacraft.core.rows import batch_from_rows, make_row
    from datacraft.stages.synthesize.reflection import ReflectionStage

    from .test_synth_reflection import teacher

    row = make_row([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
                    {"role": "assistant", "content": "Apple."}], id="sys")
    kept, _, stats = ReflectionStage({"mode": "response"}, client=teacher()).run_local([batch_from_rows([row])])
    assert stats[0].counters["reflection.reflected"] == 1 and "reflection.skipped_not_single_turn" not in stats[0].counters
    assert kept["messages"][0][-1]["content"].startswith("Better answer")


def test_mosaic_rule_text_goes_before_or_after_the_instructions() -> None:
    import random

    from datacraft.stages.synthesize.mosaic import FormatOptions, Item, draw

    items = [Item(str(i), f"instruction number {i} " + "word " * i, f"answer {i}") for i in range(4)]
    draws = [draw(random.Random(seed), items, FormatOptions(version="both")) for seed in range(300)]
    with_rule = [d for d in draws if d.rule_meta is not None]
    after = sum(d.rule_after for d in with_rule)
    assert len(with_rule) > 100 and 0.35 < after / len(with_rule) < 0.65  # a fair coin, as in Mosaic-IT
    assert all(not d.rule_after for d in draws if d.rule_meta is None)


def test_permute_rule_text_says_ties_keep_their_order_only_when_there_are_ties() -> None:
    import random

    from datacraft.stages.synthesize.mosaic import TIES_KEEP_ORDER, _permute_rule, has_ties

    tied = ["same words here", "also three words", "a much longer instruction than the others"]
    untied = ["one", "two words", "now three words"]
    seen = set()
    for seed in range(200):
        rule, text, _ = _permute_rule(random.Random(seed), tied)
        if rule == "LENGTH_WORD":
            seen.add("tied")
            assert has_ties(rule, tied) and text.endswith(TIES_KEEP_ORDER)
        rule, text, _ = _permute_rule(random.Random(seed), untied)
        if rule == "LENGTH_WORD":
            seen.add("untied")
            assert TIES_KEEP_ORDER not in text
    assert seen == {"tied", "untied"}


def test_dpo_rows_carry_the_pair_facts_in_meta() -> None:
    import json

    kept, _, _ = DPOPairsStage().run_local([_reflected_rows()])
    for row in kept.iter_rows(named=True):
        info = json.loads(row["meta"])["dpo"]
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert set(info) == {"length_ratio"} and info["length_ratio"] > 0
        assert row["lineage"]["method"] == "dpo:reflection" and len(chosen) != len(rejected)


def test_has_response_looks_after_the_last_user_turn() -> None:
    from datacraft.stages.synthesize.generate import has_response

    assert has_response([{"role": "assistant", "content": "A greeting with no question before it."}])
    assert has_response([{"role": "assistant", "content": "An opening remark."}, {"role": "assistant", "content": " "}])
    assert not has_response([{"role": "user", "content": "Q?"}])
    assert not has_response([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "  "}])
    assert has_response([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}])
    assert not has_response([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}, {"role": "user", "content": "And?"}])
    assert not has_response(None) and not has_response([])


def test_multihop_use_case_is_the_rows_task_unless_given() -> None:
    import polars as pl

    frame = read_all(SEEDS)[0].head(2).with_columns(task=pl.lit("seedtask_xyz"))
    client = ScriptedClient(multihop_rules())
    _run(frame, client, hops=1)
    persona = [p for call in client.calls for r in call if "seedtask_xyz" in (p := "\n".join(c for _, c in r.messages))]
    assert persona, "the row's task reaches the prompts as the use case"
    client = ScriptedClient(multihop_rules())
    _run(frame, client, hops=1, use_case="given_use_case_q")
    prompts_given = ["\n".join(c for _, c in r.messages) for call in client.calls for r in call]
    assert any("given_use_case_q" in p for p in prompts_given) and not any("seedtask_xyz" in p for p in prompts_given)


class _Closable:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_reflection_and_judge_close_the_client_they_hold() -> None:
    from datacraft.llm.config import EngineConfig
    from datacraft.stages.score.judge import DeitaJudge
    from datacraft.stages.synthesize.reflection import TeacherAndStudent

    client = _Closable()
    TeacherAndStudent(client).close()
    assert client.closed == 1
    TeacherAndStudent(object()).close()  # a client without close() is fine
    client = _Closable()
    judge = DeitaJudge("quality", EngineConfig(), backend="engine", client=client)
    judge.close()
    assert client.closed == 1


def test_fixed_order_and_mask_texts_name_the_positions_readably() -> None:
    import random
    import re

    from datacraft.stages.synthesize.mosaic import _mask_rule, _permute_rule

    seen = {"order": 0, "it": 0, "them": 0}
    for seed in range(400):
        instructions = [f"task {chr(97 + i)} " + "word " * i for i in range(3 if seed % 2 else 12)]
        rule, text, order = _permute_rule(random.Random(seed), instructions)
        if rule == "FIX":  # the stated order can be read back, with 12 instructions too (no ids run together)
            seen["order"] += 1
            assert [int(x) for x in re.findall(r"\d+", text)] == [p + 1 for p in order]
        rule, text, masked = _mask_rule(random.Random(seed), instructions)
        if rule == "FIX":
            assert [int(x) for x in re.findall(r"\d+", text)] == [p + 1 for p in masked]
            if "give no response to" in text:
                pronoun = "it" if len(masked) == 1 else "them"
                seen[pronoun] += 1
                assert f"give no response to {pronoun}," in text
    assert seen["order"] > 20 and seen["it"] > 3 and seen["them"] > 3


def test_mosaic_markers_and_word_count_rules_are_stated_in_full() -> None:
    import random
    import re

    from datacraft.stages.synthesize.mosaic import FormatOptions, Item, _mask_rule, draw

    items = [Item(str(i), f"instruction number {i} " + "word " * i, f"answer {i}") for i in range(3)]
    for seed in range(1500):
        begin, end = draw(random.Random(seed), items, FormatOptions(version="format", p_tags=1.0)).tags
        assert begin and end and begin != end  # each response can be cut out between its markers
    counts = set()
    instructions = [("word " * (i + 1)).strip() for i in range(12)]  # every word count differs: no ties
    for seed in range(600):
        rule, text, masked = _mask_rule(random.Random(seed), instructions)
        if rule in ("WORD_LONG", "WORD_SHORT"):
            n = len(masked)
            counts.add(min(n, 2))
            assert re.search(rf"\b{n} (longest |shortest |wordiest |briefest )?instruction{'s' if n > 1 else ''}\b", text), text
    assert counts == {1, 2}


def test_generate_records_how_each_response_was_made() -> None:
    import json

    from datacraft.core.rows import batch_from_rows, make_row
    from datacraft.llm.config import EngineConfig
    from datacraft.stages.synthesize.generate import GenerateStage

    class Engine(ScriptedClient):  # an LLMClient's surface: its config, and fail_on_length (the stage's drop_on_length)
        config = EngineConfig(model="scripted-engine")

        def generate(self, requests: list, fail_on_length: bool = False) -> list:
            return super().generate(requests)

    rows = [make_row([{"role": "user", "content": "Name two primary colours."}], id="q")]
    kept, _, _ = GenerateStage({}, client=Engine([("colours", lambda p: "Red and blue.")])).run_local([batch_from_rows(rows)])
    row = kept.row(0, named=True)
    assert row["messages"][-1] == {"role": "assistant", "content": "Red and blue."}
    info = json.loads(row["meta"])["generate"]
    assert info["finish_reason"] == "stop" and info["completion_tokens"] == 3 and info["cached"] is False and info["model"] == "scripted-engine"

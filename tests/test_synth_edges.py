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

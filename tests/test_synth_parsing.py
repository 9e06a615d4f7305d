"""Tagged-section parsers on real answers wrapped the ways models actually write them."""

from __future__ import annotations

import json

import pytest

from datacraft.stages.synthesize.parsing import (
    EMPTY,
    MISSING,
    OK,
    PLACEHOLDER,
    extract_angle,
    extract_bracket,
    is_placeholder,
    parse_choices,
    parse_score,
    parse_triples,
    parse_yes_no,
    split_items,
)

from .conftest import DATA


def _real_answers(n: int = 25) -> list[str]:
    rows = [json.loads(line) for line in (DATA / "alpaca_llamafactory_200.jsonl").read_text().splitlines()[:n]]
    return [r["output"].strip() for r in rows]


WRAPPERS = [
    "Critique: the answer lacks detail.\n[Better Answer] {a} [End]",
    "[Better Answer]\n{a}\n[End]\n[End]",  # an extra end tag
    "[better answer]: {a}",  # lower case, no end tag
    "Step 1 ...\n\nBetter Answer: {a}",  # header form, no brackets
    "**Better Answer:** {a}\n[End]",
    "[Better Answer] your answer [End]\nOops, here it is:\n[Better Answer] {a} [End]",  # echoed template first
]


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_bracket_sections_recover_real_answers(wrapper: str) -> None:
    for answer in _real_answers():
        got = extract_bracket(wrapper.format(a=answer), "Better Answer")
        assert got.status == OK and got.value == answer


def test_bracket_section_stops_at_the_next_known_header_not_at_content_headers() -> None:
    text = "[New Instruction] Plan a picnic.\nIngredients: bread\nNew Answer: Pack bread and fruit."
    assert extract_bracket(text, "New Instruction").value == "Plan a picnic.\nIngredients: bread"
    assert extract_bracket(text, "New Answer").value == "Pack bread and fruit."


def test_missing_empty_and_placeholder_sections_are_reported() -> None:
    assert extract_bracket("I think the answer is fine.", "Better Answer").status == MISSING
    assert extract_bracket("[Better Answer] [End]", "Better Answer").status == EMPTY
    assert extract_bracket("[Better Answer] N/A [End]", "Better Answer").status == PLACEHOLDER
    assert extract_bracket("[New Instruction] ... [End]", "New Instruction").status == PLACEHOLDER
    # an alternative name is accepted
    assert extract_bracket("[New Answer] 42 is the answer [End]", "Better Answer", "New Answer").value == "42 is the answer"


def test_angle_tags_tolerate_missing_close_echo_and_case() -> None:
    text = "Thinking: about money.\n<Topic> personal finance\n<related  knowledge>budgeting, interest rates</Related knowledge>"
    assert extract_angle(text, "Topic").value == "personal finance"
    assert extract_angle(text, "Related knowledge").value == "budgeting, interest rates"
    echoed = "<Rewritten Prompt></Rewritten Prompt>\n<Rewritten Prompt>What is 15% of 80?</Rewritten Prompt>"
    assert extract_angle(echoed, "Rewritten Prompt").value == "What is 15% of 80?"
    assert extract_angle("no tags at all", "Rewritten Prompt").status == MISSING


def test_placeholders() -> None:
    assert is_placeholder("Your answer")
    assert is_placeholder("  ")
    assert is_placeholder("<your new instruction here>")
    assert is_placeholder("None") and is_placeholder("...")
    for short in ("None of them are prime.", "Nonetheless, yes.", "Wait... no."):  # short real answers, not the bare words
        assert not is_placeholder(short), short
    for answer in _real_answers(10):
        assert not is_placeholder(answer)


def test_scores_choices_triples_items() -> None:
    assert parse_score("Relevant.\n<Score>7</Score>") == 7
    assert parse_score("<Score> 12 </Score>") == 10  # clipped
    assert parse_score("Score: 4/10") == 4
    assert parse_score("I would say seven.") is None
    assert parse_score("<Score 1>8</Score 1><Score 2>3</Score 2>", "Score 2") == 3
    choices = parse_choices("Thinking...\n<Choices>\ncorrect. Paris\nincorrect. Rome\nB) incorrect: Berlin\n</Choices>")
    assert [(c.text, c.correct) for c in choices] == [("Paris", True), ("Rome", False), ("Berlin", False)]
    assert [(c.text, c.correct) for c in parse_choices("<Choices>\ncorrect. \nincorrect. Rome\n</Choices>")] == [("Rome", False)]  # an empty option is no option
    assert parse_triples("[finance, has, interest rate]\n(finance, includes, bonds)") == [
        ("finance", "has", "interest rate"),
        ("finance", "includes", "bonds"),
    ]
    assert split_items("1. Baking, food safety; baking\n- Fermentation") == ["Baking", "food safety", "Fermentation"]
    assert parse_yes_no("Let me think. <Answer>No</Answer>") == "No"

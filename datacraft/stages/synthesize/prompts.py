"""Prompt templates of the synthesis stages, written for datacraft (our own wording).

The Reflection-Tuning and Mosaic-IT sources carry no licence, so nothing here is copied from them:
the criteria are the methods' (docs/methods.md §1, §2), the sentences are ours. Each builder
returns chat messages (`[{"role", "content"}]`); tests/data/golden/*.txt pins the text built for a
fixed seed row, so a wording change is always a deliberate one.
"""

from __future__ import annotations

from typing import Literal

Messages = list[dict[str, str]]
Op = Literal["reasoning", "concrete", "constraint"]
OPS: tuple[str, ...] = ("reasoning", "concrete", "constraint")


def _user(text: str, system: str | None = None) -> Messages:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": text.strip()})
    return msgs


# ---------------------------------------------------------------------------------------------
# AIDE (docs/methods.md §1)

ANALYZER = """\
You analyse instructions. Read the instruction, think in one sentence about what it asks, then name \
its topic and the knowledge needed to answer it.
- Give exactly one topic of one to three words inside <Topic></Topic>.
- Give up to {n_attributes} pieces of related knowledge, each one to three words, separated by commas, \
inside <Related knowledge></Related knowledge>.

Example
Instruction: A train leaves at 3:40 pm and the trip takes 95 minutes. When does it arrive?
Thinking: It asks for an arrival time, so it needs arithmetic on clock times.
<Topic>time calculation</Topic>
<Related knowledge>clock arithmetic, unit conversion</Related knowledge>

Example
Instruction: Summarize the main causes of the French Revolution in three sentences.
Thinking: It asks for a short historical summary.
<Topic>French Revolution</Topic>
<Related knowledge>European history, summarization</Related knowledge>

Now the instruction to analyse.
Instruction: {instruction}
Thinking:"""

TRIPLES = """\
These knowledge-graph triples describe "{topic}":
{triples}

Write {num_triples} new triples whose head is "{topic}" and that differ from the ones above. Write one \
triple per line as [head, relation, tail], all inside <Triples></Triples>."""

OP_EXPECTATIONS: dict[str, str] = {
    "reasoning": "Change the content while keeping it simple, so that answering it takes more steps of reasoning.",
    "concrete": "Replace general ideas with more specific, concrete details, while keeping it simple.",
    "constraint": "Add one or two simple constraints that the answer has to satisfy.",
}

REWRITE = """\
You are a prompt writer. Rewrite the given prompt into a new prompt that meets every expectation.

<EXPECTATION>
- {op_expectation}
- The new prompt is about "{topic}" and can be solved with knowledge of "{attribute}".{residual}
- Keep the new prompt as short as possible.
- Do not use the phrases "given prompt" or "rewritten prompt".
</EXPECTATION>

Given prompt:
{instruction}

Write only the new prompt, inside <Rewritten Prompt></Rewritten Prompt>."""

RESIDUAL = '\n- Stay close to the task of this original prompt: "{seed}"'

PERSONA = """\
You are a prompt creator. Write a new prompt that the person described below might ask, following \
every action.

<Action>
- The new prompt belongs to the task "{use_case}" and is about "{topic}".
- It reflects the character and needs of this person: {persona}
- It is clearly different from the given prompt.
- It is brief.
</Action>

Given prompt:
{instruction}

Write only the new prompt, inside <Created Prompt></Created Prompt>."""

DIVERSE = """\
You are a prompt creator. Write a new prompt for the task "{use_case}" that stays in the same domain \
as the given prompt but covers different ground. Keep it brief.

Given prompt:
{instruction}

Write only the new prompt, inside <Created Prompt></Created Prompt>."""

SOLVER_SYSTEM = "You are a helpful assistant. Answer accurately and to the point."

SOLVER_MULTI_CHOICE = """\
Solve the question step by step. Then list four answer options inside <Choices></Choices>, one per \
line: exactly one line starts with "correct." and gives the right answer; three lines start with \
"incorrect." and give plausible wrong answers.

Question:
{question}"""

SOLVER_BINARY = """\
Think about the question step by step, then give the final answer, Yes or No, inside <Answer></Answer>.

Question:
{question}"""

JUDGE_CRITERIA: dict[str, str] = {
    "relevance": "how relevant the candidate prompt is to the reference prompt: whether it belongs to the "
    "same task and needs the same kind of knowledge. 1 means unrelated, 10 means the same task",
    "diversity": "how different the candidate prompt is from the reference prompt while staying in the same "
    "domain. 1 means nearly identical, 10 means clearly new content",
}

JUDGE = """\
Rate {criterion}. Write one sentence of reasoning, then the score from 1 to 10 inside <Score></Score>.

Reference prompt:
{reference}

Candidate prompt:
{candidate}"""

FEEDBACK: dict[str, str] = {
    "too_long": "It is much longer than the reference prompt; make it shorter.",
    "relevance": "It drifts away from the reference prompt; bring it back to the reference's task and knowledge.",
    "diversity": "It is too similar to the reference prompt; change its content to add variety.",
}

IMPROVE = """\
Improve the candidate prompt using the feedback.

Reference prompt:
{reference}

Candidate prompt:
{candidate}

Feedback: {feedback}

Write only the improved prompt, inside <Improved Prompt></Improved Prompt>."""


def analyzer_messages(instruction: str, n_attributes: int = 3) -> Messages:
    return _user(ANALYZER.format(instruction=instruction.strip(), n_attributes=n_attributes))


def triples_messages(topic: str, attributes: list[str], num_triples: int) -> Messages:
    triples = "\n".join(f"[{topic}, has, {a}]" for a in attributes) or f"[{topic}, has, ?]"
    return _user(TRIPLES.format(topic=topic, triples=triples, num_triples=num_triples))


def rewrite_messages(op: str, instruction: str, topic: str, attribute: str, seed: str | None = None) -> Messages:
    """A relevance-branch rewrite; `seed` (the hop-0 instruction) adds the residual expectation."""
    residual = RESIDUAL.format(seed=seed.strip()) if seed else ""
    return _user(
        REWRITE.format(
            op_expectation=OP_EXPECTATIONS[op],
            topic=topic,
            attribute=attribute,
            residual=residual,
            instruction=instruction.strip(),
        )
    )


def persona_messages(instruction: str, use_case: str, topic: str, persona: str) -> Messages:
    return _user(PERSONA.format(instruction=instruction.strip(), use_case=use_case, topic=topic, persona=persona))


def diverse_messages(instruction: str, use_case: str) -> Messages:
    return _user(DIVERSE.format(instruction=instruction.strip(), use_case=use_case))


def solver_messages(question: str, choice_type: str = "open") -> Messages:
    """The separate solver call: open QA answers the question directly."""
    if choice_type == "multi_choice":
        return _user(SOLVER_MULTI_CHOICE.format(question=question.strip()))
    if choice_type == "binary":
        return _user(SOLVER_BINARY.format(question=question.strip()))
    return _user(question, system=SOLVER_SYSTEM)


ANSWER_CHECK = """\
Here is a question with answer options. Solve the question yourself, then say whether your solution
is among the options.

Question:
{question}

Options:
{options}

Answer Yes if the correct solution is one of the options, otherwise No, inside <Answer></Answer>."""


def answer_check_messages(question: str, options: str) -> Messages:
    """AIDE's answer checker (our wording): is the solution among the generated options?"""
    return _user(ANSWER_CHECK.format(question=question.strip(), options=options.strip()))


def judge_messages(kind: str, reference: str, candidate: str) -> Messages:
    return _user(JUDGE.format(criterion=JUDGE_CRITERIA[kind], reference=reference.strip(), candidate=candidate.strip()))


def improve_messages(reference: str, candidate: str, feedback: str) -> Messages:
    return _user(IMPROVE.format(reference=reference.strip(), candidate=candidate.strip(), feedback=FEEDBACK[feedback]))


# ---------------------------------------------------------------------------------------------
# Reflection-Tuning (docs/methods.md §2.1): criteria from the method, wording ours

INSTRUCTION_REFLECTION_SYSTEM = (
    "You are a careful and demanding reviewer of instruction-tuning data. You judge how good an "
    "instruction is and how well its answer serves it, and you write better versions."
)

INSTRUCTION_REFLECTION = """\
[Instruction]
{instruction}

[Answer start]
{answer}
[Answer end]

Work through three steps.

Step 1, critique. Explain what keeps the instruction from being a good one, judged on: the complexity \
of its topic, the level of detail it asks for, the knowledge it requires, how ambiguous it is, and how \
much logical reasoning or problem solving it involves. Then explain what keeps the answer from being a \
good one, judged on helpfulness, relevance, accuracy and level of detail. Finally, explain how the \
weaknesses of the instruction lead to the weaknesses of the answer.

Step 2, new instruction. Write a new, self-contained instruction that is more complex and cannot be \
answered in a sentence. It stays related to the original instruction, but a reader can answer it \
without seeing the original. Write it as:
[New Instruction] ... [End]

Step 3, new answer. Answer the new instruction as thoroughly and accurately as you can. Write it as:
[New Answer] ... [End]"""

RESPONSE_REFLECTION_SYSTEM = (
    "You are a careful and demanding reviewer of answers. You judge how well an answer serves its "
    "instruction, and you write better answers."
)

RESPONSE_REFLECTION = """\
[Instruction]
{instruction}
{input_block}
[Answer start]
{answer}
[Answer end]

Work through two steps.

Step 1, critique. Explain what keeps the answer from being a good one, judged on helpfulness, \
relevance, accuracy and level of detail.

Step 2, better answer. Write a better answer: complete, accurate and as detailed as the instruction \
calls for. Write it as:
[Better Answer] ... [End]"""


def instruction_reflection_messages(instruction: str, answer: str) -> Messages:
    text = INSTRUCTION_REFLECTION.format(instruction=instruction.strip(), answer=answer.strip())
    return _user(text, system=INSTRUCTION_REFLECTION_SYSTEM)


def response_reflection_messages(instruction: str, answer: str, given: str = "") -> Messages:
    block = f"\n[Input]\n{given.strip()}\n" if given.strip() else ""
    text = RESPONSE_REFLECTION.format(instruction=instruction.strip(), input_block=block, answer=answer.strip())
    return _user(text, system=RESPONSE_REFLECTION_SYSTEM)


# ---------------------------------------------------------------------------------------------
# DPO pair judge (docs/methods.md §9, CodecLM-style pairwise scores in both orders)

PAIR_JUDGE = """\
Compare two answers to the same instruction. Rate each from 1 (poor) to 10 (excellent) for \
helpfulness, relevance, accuracy and level of detail; do not reward length for its own sake. Write the \
scores as <Score 1>n</Score 1> and <Score 2>n</Score 2>.

[Instruction]
{instruction}

[Answer 1]
{first}

[Answer 2]
{second}"""


def pair_judge_messages(instruction: str, first: str, second: str) -> Messages:
    return _user(PAIR_JUDGE.format(instruction=instruction.strip(), first=first.strip(), second=second.strip()))

"""Rule-based stand-ins for the LLM client and the IFD student, for the synthesis stages' logic tests.

`ScriptedClient` answers each request by the first rule whose marker occurs in the prompt, records
every `generate` call (so tests can check one batched call per step), and can fail on purpose.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from datacraft.llm.types import Request, Result

Rule = tuple[str, Callable[[str], str]]


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


class ScriptedClient:
    def __init__(self, rules: list[Rule], fail_when: str | None = None) -> None:
        self.rules = rules
        self.fail_when = fail_when
        self.calls: list[list[Request]] = []

    def generate(self, requests: list[Request]) -> list[Result]:
        self.calls.append(list(requests))
        out = []
        for req in requests:
            prompt = "\n".join(c for _, c in req.messages)
            if self.fail_when and self.fail_when in prompt:
                out.append(Result(error="llm_error: injected failure", finish_reason="error"))
                continue
            text = next((fn(prompt) for marker, fn in self.rules if marker in prompt), "I cannot help with that.")
            out.append(Result(text=text, prompt_tokens=len(prompt.split()), completion_tokens=len(text.split()), finish_reason="stop"))
        return out

    def pop_counters(self) -> dict[str, float]:
        return {"llm.requests": float(sum(len(c) for c in self.calls))}

    def close(self) -> None:
        pass


def multihop_rules(bad_rewrite_marker: str | None = None) -> list[Rule]:
    """Analyzer → topic + 2 attributes; KG → 1 new triple; rewrites/personas → a tagged new prompt."""

    def rewrite(prompt: str) -> str:
        if bad_rewrite_marker and bad_rewrite_marker in prompt:
            return "Sure! Here is something without the tags."
        return f"<Rewritten Prompt>Rewritten question {short_hash(prompt)}?</Rewritten Prompt>"

    return [
        ("You analyse instructions", lambda p: "It asks about cooking.\n<Topic>cooking</Topic>\n<Related knowledge>baking, food safety</Related knowledge>"),
        ("knowledge-graph triples", lambda p: "<Triples>\n[cooking, has, Fermentation]\n</Triples>"),
        ("You are a prompt writer", rewrite),
        ("You are a prompt creator", lambda p: f"<Created Prompt>Persona question {short_hash(p)}?</Created Prompt>"),
        ("Rate how", lambda p: "Reasonable.\n<Score>3</Score>" if "Rewritten question" in p else "<Score>8</Score>"),
        ("Improve the candidate", lambda p: f"<Improved Prompt>Improved question {short_hash(p)}?</Improved Prompt>"),
        ("Solve the question step by step", lambda p: "<Choices>\ncorrect. 42\nincorrect. 41\nincorrect. 40\nincorrect. 43\n</Choices>"),
        ("?", lambda p: f"Answer to {short_hash(p)}."),
    ]


@dataclass
class FakeIFD:
    """IFDScores stand-in: values given per (instruction, response) by a function."""

    ifd_ppl: float
    rifd_ppl: float

    def ifd(self, form: str = "ppl_ratio") -> float:
        return self.ifd_ppl if form == "ppl_ratio" else math.log(self.ifd_ppl) + 1.0

    def rifd(self, form: str = "ppl_ratio") -> float:
        return self.rifd_ppl if form == "ppl_ratio" else math.log(self.rifd_ppl) + 1.0


class FakeScorer:
    def __init__(self, fn: Callable[[str, str], tuple[float, float]]) -> None:
        self.fn = fn
        self.calls: list[int] = []

    def score(self, instructions: list[str], responses: list[str], reverse: bool = True) -> list[FakeIFD]:
        self.calls.append(len(instructions))
        return [FakeIFD(*self.fn(i, r)) for i, r in zip(instructions, responses, strict=True)]

"""Rule-based stand-ins for the LLM client and the IFD student, for the synthesis stages' logic tests.

`ScriptedClient` answers each request by the first rule whose marker occurs in the prompt, records
every `generate` call (so tests can check one batched call per step), and can fail on purpose.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

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


# ---------------------------------------------------------------------------------------------
# golden prompt files and whole-pipeline runs

GOLDEN = Path(__file__).parent / "data" / "golden"


def render_messages(messages: list[dict[str, str]]) -> str:
    return "".join(f"### {m['role']}\n{m['content']}\n" for m in messages)


def check_golden(name: str, messages: list[dict[str, str]]) -> None:
    """The rendered prompt must equal tests/data/golden/<name>.txt (UPDATE_GOLDEN=1 rewrites it)."""
    path = GOLDEN / f"{name}.txt"
    text = render_messages(messages)
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if os.environ.get("UPDATE_GOLDEN") != "1":
            raise AssertionError(f"golden file {path} was missing and has been written; rerun")
    assert text == path.read_text(encoding="utf-8"), f"prompt {name} changed; if deliberate: UPDATE_GOLDEN=1"


def run_pipeline(tmp_path: Path, input_path: str, stages: list[dict[str, Any]], **extra: Any) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame]:
    """A whole Beam pipeline (FnApiRunner) over a config dict: (report, output rows, dropped rows)."""
    from datacraft.pipeline.config import load_config
    from datacraft.pipeline.run import run_config

    out = tmp_path / "out"
    data = {"name": "synth-test", "input": {"path": input_path, **extra.pop("input", {})}, "stages": stages,
            "output": {"path": str(out), "format": "parquet"}, "cache_dir": str(tmp_path / "cache"), **extra}
    report = run_config(load_config(data=data))
    rows = pl.read_parquet(str(out / "data" / "*.parquet")) if list((out / "data").glob("*.parquet")) else pl.DataFrame()
    dropped_files = sorted((out / "dropped").glob("*.jsonl")) if (out / "dropped").exists() else []
    dropped = [json.loads(line) for f in dropped_files for line in f.read_text().splitlines() if line.strip()]
    return report, rows, pl.DataFrame(dropped) if dropped else pl.DataFrame()

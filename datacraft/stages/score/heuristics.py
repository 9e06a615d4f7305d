"""`heuristics`: the cheap scoring tier, vectorized polars expressions over a batch (no model).

Reads: messages (instruction = first user turn, response = last assistant turn / chosen).
Writes `scores.*` columns:

    length.instruction, length.response   word counts
    chars.response                        character count
    response_ratio                        response words / instruction words
    lexical_diversity                     distinct / total words of the response (type-token ratio)
    repetition                            share of repeated lines in the response (0 = none)
    alpha_ratio                           letters / non-space characters of the response (low = code, tables, junk)
    stopword_ratio                        English function words / words (a cheap English language-id signal)
    refusal                               1.0 when the response matches refusal / AI-boilerplate patterns
    short_answer_ok                       1.0 when the instruction asks for a short answer (fill in the blank,
                                          classify / sentiment / true-false, pick from options, a number,
                                          one word, extractive QA ending in "Answer:"): "3" or "fog." is right there

No row is dropped here; pair it with `filter`. The shipped configs keep a short answer to a
short-answer instruction: `where: "length.response >= 3 or (short_answer_ok == 1 and length.response >= 1)"`.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field

from datacraft.core.frames import in_chunks
from datacraft.core.rows import SCORE_PREFIX, instruction_expr, response_expr
from datacraft.core.stage import MapStage, StageParams, StageResult, score

REFUSAL_PATTERNS = (
    r"as an ai(?: language)? model",
    r"as a (?:large )?language model",
    r"i(?:'m| am) (?:just )?an ai",
    r"i(?:'m| am) sorry,? but i (?:cannot|can't|am unable)",
    r"i cannot (?:fulfill|comply|assist|help with) (?:that|this|your)",
    r"i(?:'m| am) (?:not able|unable) to (?:provide|help|assist|comply)",
    r"my (?:knowledge )?cutoff",
    r"i don't have (?:personal )?(?:opinions|feelings|emotions|access to real-time)",
    r"openai(?:'s)? (?:policy|guidelines|content policy)",
)
#: instructions whose right answer is a word, a label or a number (matched on the instruction, case-insensitive)
SHORT_ANSWER_PATTERNS = (
    r"fill in the blank", r"_{3,}", r"complete the (?:sentence|phrase|word)",
    r"\bsentiment\b", r"\bclassify\b", r"\bcategori[sz]e\b", r"\btrue,? (?:or )?false\b", r"\byes or no\b",
    r"which of the following", r"\b(?:choose|select|pick) (?:a|one|the)\b", r"output should be one of", r"\boptions?:",
    r"\boutput (?:\d|the word|only|one|a number|yes|true)", r"\b(?:one|single|a) word\b", r"\bhow many\b",
    r"\bwhat (?:year|number|is the (?:value|result|sum|product))\b", r"\bconvert\b.*\bto\b", r"\bspell",
    r"answer:\s*$", r", or [^.?!\n]{1,40}\?", r"\blabel\b", r"\bacronym\b", r"\bphone number\b",
    r"\boutput the (?:word|domain|name|number|label|answer)\b",
    r"(?m:^\s*(?:is|are|does|do|did|was|were|which)\b[^\n]{0,100}\?\s*$)",  # a yes / no or pick-one question line
)
_STOPWORDS = r"(?i)\b(?:the|and|of|to|a|in|is|that|for|it|with|as|on|be|this|are|was|by|or|an|at|from|not|you|can|have|will|which|we|they)\b"
_WORD = r"\S+"

ALL_SCORES = (
    "length.instruction",
    "length.response",
    "chars.response",
    "response_ratio",
    "lexical_diversity",
    "repetition",
    "alpha_ratio",
    "stopword_ratio",
    "refusal",
    "short_answer_ok",
)


class HeuristicsParams(StageParams):
    scores: list[Literal[ALL_SCORES]] = Field(default_factory=lambda: list(ALL_SCORES))  # type: ignore[valid-type]
    extra_refusal_patterns: list[str] = Field(default_factory=list, description="more regexes (case-insensitive)")


def add_heuristics(frame: pl.DataFrame, names: list[str], extra_patterns: list[str] = ()) -> pl.DataFrame:
    """Add the named `scores.*` columns to a frame that has `_ins` / `_res` text columns.

    Shared intermediates (word counts, response tokens, non-space characters) are computed once."""
    ins, res = pl.col("_ins"), pl.col("_res")
    refusal = "(?i)(?:" + "|".join((*REFUSAL_PATTERNS, *extra_patterns)) + ")"
    short = "(?is)(?:" + "|".join(SHORT_ANSWER_PATTERNS) + ")"
    lines = res.str.split("\n").list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
    frame = frame.with_columns(
        ins.str.count_matches(_WORD).alias("_ins_words"),
        res.str.count_matches(_WORD).alias("_res_words"),
        res.str.to_lowercase().str.extract_all(r"\w+").alias("_res_tokens"),
        (res.str.len_chars() - res.str.count_matches(r"\s")).alias("_non_space"),
    )
    ins_words, res_words, tokens, non_space = pl.col("_ins_words"), pl.col("_res_words"), pl.col("_res_tokens"), pl.col("_non_space")
    exprs = {
        "length.instruction": ins_words,
        "length.response": res_words,
        "chars.response": res.str.len_chars(),
        "response_ratio": res_words / pl.max_horizontal(ins_words, pl.lit(1)),
        "lexical_diversity": pl.when(tokens.list.len() > 0).then(tokens.list.n_unique() / tokens.list.len()).otherwise(0.0),
        "repetition": pl.when(lines.list.len() > 0).then(1.0 - lines.list.n_unique() / lines.list.len()).otherwise(0.0),
        "alpha_ratio": pl.when(non_space > 0).then(res.str.count_matches(r"[^\W\d_]") / non_space).otherwise(0.0),
        "stopword_ratio": pl.when(res_words > 0).then((res.str.count_matches(_STOPWORDS) / res_words).clip(0.0, 1.0)).otherwise(0.0),
        "refusal": res.str.contains(refusal).cast(pl.Float64),
        "short_answer_ok": ins.str.contains(short).cast(pl.Float64),
    }
    return frame.with_columns([exprs[n].cast(pl.Float64).alias(SCORE_PREFIX + n) for n in names]).drop(
        "_ins_words", "_res_words", "_res_tokens", "_non_space"
    )


class HeuristicsStage(MapStage[HeuristicsParams, None]):
    """Cheap per-row quality signals as `scores.*` columns; keeps every row."""

    name = "heuristics"
    Params = HeuristicsParams

    def writes(self) -> set[str]:
        return {score(n) for n in self.params.scores}

    def process(self, batch: pl.DataFrame, resource: None = None) -> StageResult:
        p = self.params
        texts = in_chunks(batch.with_columns(instruction_expr().alias("_ins"), response_expr().alias("_res")))
        scored = add_heuristics(texts, list(p.scores), p.extra_refusal_patterns).drop("_ins", "_res")
        return StageResult(kept=scored)

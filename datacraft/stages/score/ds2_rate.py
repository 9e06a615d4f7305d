"""`ds2_rate`: DS2's LLM rating step (Pang et al., ICLR 2025, "Improving Data Efficiency via Curating
LLM-Driven Rating Systems"; docs/methods.md §7.1).

The prompt is DS2's own, verbatim from UCSC-REAL/DS2 `LLM_scoring/scoring.py` (`gen_prompt`, the open
raters LLaMA-3.1-8B / Mistral-7B; Apache-2.0) or, with `prompt: api`, `LLM_scoring/scoring_api.py`
(the GPT-4o-mini path). The row is rendered as DS2 renders it: one `### {role}: {content}` line per
message. Decoding as `scoring.py`: sampled at temperature 1.2, top-k 50, top-p 0.9, 128 new tokens.

Parsing as the reference: the last balanced `{...}` of the reply, `json.loads`, then `int()` of
"Rarity", "Complexity", "Informativeness" and "Overall rating". A reply with no `{...}` at all is
sampled again (a new seed, so a new cache entry) up to `max_tries` generations in all; a reply with
an object that does not parse is not retried (the reference retries the same text). A row that is
still unrated is dropped (`unparseable_rating`, the reply in the detail), or with
`on_unparseable: zero` kept with DS2's [0, 0, 0, 0], which `ds2_curate` puts in its lowest class.

Writes `scores.ds2_rating` (the overall 1–10 rating; `ds2_curate` clips it to [4, 9] → classes 0–5)
and `meta.ds2_rating` (the four scores, and `tries` when more than one generation was needed).
Requests go through the content-addressed LLM cache: a resumed run asks nothing twice.
Reads `messages`, `chosen`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import polars as pl
from pydantic import Field

from datacraft.core.rows import set_scores, update_meta, with_drop
from datacraft.core.stage import MapStage, StageResult, score
from datacraft.llm.types import Request, Result, SamplingParams, failure_reason
from datacraft.stages.score.judge import spread
from datacraft.stages.synthesize.common import LLMParams, UsesLLM

# Verbatim from UCSC-REAL/DS2 LLM_scoring/scoring.py `gen_prompt` (Apache-2.0), indentation included.
DS2_SYSTEM_PROMPT = '''As a data quality estimator, your task is to assess the quality of data sample based on the criteria: Rarity, Complexity, Informativeness.
        Please rate the sample on a scale from 1 to 10 for each criterion, and return an overall rating on a scale from 1 to 10, where a higher score indicates higher level of quality.
        Ensure that the ratings are not overly concentrated around a specific score. If multiple samples have similar qualities, consider spreading the scores more evenly to reflect subtle differences.
        '''
DS2_USER_PROMPT = '''Please carefully evaluate the following data sample and return the integral evaluation scores using the JSON format:
        {
            "Rarity": <number, 1-10>,
            "Complexity": <number, 1-10>,
            "Informativeness": <number, 1-10>,
            "Overall rating": <number, 1-10>
        }
        '''
#: scoring.py's user turn: `{user_prompt} \n## Data sample (conversation):\n{conversation}`
DS2_SAMPLE_HEADER = " \n## Data sample (conversation):\n"
# Verbatim from UCSC-REAL/DS2 LLM_scoring/scoring_api.py: one user turn, `pre_prompt + conversation + "\n### Rating:"`.
DS2_API_SYSTEM = "You are a helpful assistant."
DS2_API_PROMPT = ('''
        As a data quality estimator, your task is to assess the quality of data sample based on the criteria: Rarity, Complexity, Informativeness.
        Please rate the sample on a scale from 1 to 10 for each criterion, and return an overall rating on a scale from 1 to 10, where a higher score indicates higher level of quality.
        Ensure that the ratings are not overly concentrated around a specific score. If multiple samples have similar qualities, consider spreading the scores more evenly to reflect subtle differences.
        Please carefully evaluate the following data sample and return the integral evaluation scores using the JSON format:
        {
            "Rarity": <number, 1-10>,
            "Complexity": <number, 1-10>,
            "Informativeness": <number, 1-10>,
            "Overall rating": <number, 1-10>
        }
        ''')
RATING_KEYS = ("Rarity", "Complexity", "Informativeness", "Overall rating")
FAILED_RATING = (0, 0, 0, 0)  # DS2's record for a sample it could not rate


def render_sample(messages: Sequence[Mapping[str, str]]) -> str:
    """DS2's rendering of a conversation: `### {role}: {content}` per message."""
    return "".join(f"### {m['role']}: {m['content'] or ''}\n" for m in messages)


def rating_messages(conversation: str, prompt: str = "open") -> list[dict[str, str]]:
    """The chat turns DS2 sends for one rendered sample (`open`: scoring.py, `api`: scoring_api.py)."""
    if prompt == "api":
        return [{"role": "system", "content": DS2_API_SYSTEM}, {"role": "user", "content": DS2_API_PROMPT + conversation + "\n### Rating:"}]
    return [{"role": "system", "content": DS2_SYSTEM_PROMPT}, {"role": "user", "content": DS2_USER_PROMPT + DS2_SAMPLE_HEADER + conversation}]


def _balanced_end(text: str, start: int) -> int | None:
    """End (exclusive) of the balanced `{...}` opening at `start`, or None."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return None


def json_objects(text: str) -> list[str]:
    """The balanced `{...}` spans of `text`, left to right, as the reference's recursive regex
    `\\{(?:[^{}]|(?R))*\\}` finds them (an unmatched `{` is skipped)."""
    out: list[str] = []
    i = 0
    while (i := text.find("{", i)) >= 0:
        end = _balanced_end(text, i)
        if end is None:
            i += 1
            continue
        out.append(text[i:end])
        i = end
    return out


def parse_rating(text: str) -> tuple[tuple[int, int, int, int] | None, str]:
    """(Rarity, Complexity, Informativeness, Overall) from the last JSON object of a reply, or
    (None, why): `no_json` (the reference samples again) or `bad_json` (it does not)."""
    found = json_objects(text or "")
    if not found:
        return None, "no_json"
    try:
        obj = json.loads(found[-1])
        return tuple(int(obj[k]) for k in RATING_KEYS), ""  # type: ignore[return-value]
    except (ValueError, KeyError, TypeError) as err:
        return None, f"bad_json: {type(err).__name__} {str(err)[:80]}"


class DS2RateParams(LLMParams):
    prompt: Literal["open", "api"] = Field("open", description="DS2's wording: open raters (scoring.py, system + user) or the API path (scoring_api.py)")
    temperature: float = Field(1.2, ge=0.0, description="DS2 scoring.py: sampled at 1.2")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int | None = Field(50, ge=1)
    max_tokens: int = Field(128, ge=1, description="DS2: 128 new tokens")
    max_tries: int = Field(10, ge=1, description="generations per row while the reply has no JSON object (DS2: 10); 1 at temperature 0")
    max_conversation_chars: int | None = Field(8000, ge=100, description="conversation characters kept in the prompt (DS2 cuts the prompt at 2048 tokens)")
    on_unparseable: Literal["drop", "zero"] = Field("drop", description="drop the row (`unparseable_rating`) or keep it rated 0 as DS2 does")


class DS2RateStage(UsesLLM, MapStage):
    """DS2's LLM rater: writes `scores.ds2_rating` (overall, 1–10) for `ds2_curate`; see the module docstring."""

    name = "ds2_rate"
    Params = DS2RateParams
    params: DS2RateParams

    def reads(self) -> set[str]:
        return {"messages", "chosen"}

    def writes(self) -> set[str]:
        return {score("ds2_rating")}

    def _sampling(self, attempt: int) -> SamplingParams:
        p = self.params
        seed = (p.seed if p.seed is not None else self.context.seed) + attempt
        return SamplingParams(max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, seed=seed)

    def _prompt(self, messages: Sequence[Mapping[str, str]] | None, chosen: Sequence[Mapping[str, str]] | None) -> list[dict[str, str]]:
        conversation = render_sample(list(messages or []) + list(chosen or []))
        cut = self.params.max_conversation_chars
        return rating_messages(conversation[:cut] if cut else conversation, self.params.prompt)

    def _rate(self, prompts: list[list[dict[str, str]]]) -> tuple[list[Result], list[tuple[int, ...] | None], list[str], list[int]]:
        """Results, ratings, failure notes and tries per prompt: one batched call per attempt."""
        n = len(prompts)
        results: list[Result] = [Result()] * n
        ratings: list[tuple[int, ...] | None] = [None] * n
        notes, tries = [""] * n, [0] * n
        todo = list(range(n))
        attempts = self.params.max_tries if self.params.temperature > 0 else 1  # greedy: the same reply again
        for attempt in range(attempts):
            if not todo:
                break
            sampling = self._sampling(attempt)
            out = self.client.generate([Request.chat(prompts[i], sampling, tag=str(i)) for i in todo])
            retry = []
            for i, res in zip(todo, out, strict=True):
                results[i], tries[i] = res, attempt + 1
                if not res.ok:
                    continue
                ratings[i], notes[i] = parse_rating(res.text)
                if ratings[i] is None and notes[i] == "no_json":
                    retry.append(i)
            todo = retry
        return results, ratings, notes, tries

    def process(self, batch: pl.DataFrame, resource: Any) -> StageResult:
        chosen = batch["chosen"].to_list() if "chosen" in batch.columns else [None] * batch.height
        prompts = [self._prompt(m, c) for m, c in zip(batch["messages"].to_list(), chosen, strict=True)]
        results, ratings, notes, tries = self._rate(prompts)
        values: list[float | None] = []
        metas: list[dict[str, Any] | None] = []
        reasons: list[str | None] = []
        details: list[str] = []
        for res, rating, note, k in zip(results, ratings, notes, tries, strict=True):
            reason = None if res.ok else failure_reason(res)
            if reason is None and rating is None:
                if self.params.on_unparseable == "drop":
                    reason = "unparseable_rating"
                else:
                    rating = FAILED_RATING
            meta: dict[str, Any] = {}
            if rating is not None:
                meta = dict(zip(("rarity", "complexity", "informativeness", "overall"), rating, strict=True))
                if k > 1:
                    meta["tries"] = k
                if note:
                    meta["unparseable"] = note
            values.append(float(rating[3]) if rating is not None else None)
            metas.append({"ds2_rating": meta} if meta else None)
            reasons.append(reason)
            details.append(_detail(res, note, k) if reason else "")
        out = update_meta(set_scores(batch, {"ds2_rating": values}), metas)
        keep = pl.Series([r is None for r in reasons])
        dropped = with_drop(
            out.filter(~keep), self.label,
            pl.Series([r for r in reasons if r is not None], dtype=pl.Utf8),
            pl.Series([d for d, r in zip(details, reasons, strict=True) if r is not None], dtype=pl.Utf8),
        )
        counters = {"ds2_rate.rows": float(batch.height), "ds2_rate.generations": float(sum(tries)),
                    "ds2_rate.unparseable": float(sum(1 for r, x in zip(results, ratings, strict=True) if r.ok and x is None)),
                    **self.llm_counters()}
        for v in values:
            if v is not None:
                counters[f"ds2_rate.overall_{int(v)}"] = counters.get(f"ds2_rate.overall_{int(v)}", 0.0) + 1
        return StageResult(kept=out.filter(keep), dropped=dropped, counters=counters, extras={"score_spread": [spread("ds2_rating", values)]})


def _detail(result: Result, note: str, tries: int) -> str:
    """Why a row has no rating: the engine error, or the parse failure with the start of the reply."""
    if not result.ok:
        return (result.error or "")[:200]
    what = "no JSON object" if note == "no_json" else note
    return f"{what} after {tries} generation(s); reply: {result.text[:120]!r}"

"""`dpo_pairs`: preference pairs from reflection (docs/methods.md §9, our design).

Runs after `reflection`. For each reflected row: prompt = its instruction x1, chosen = the
teacher-reflected response, rejected = the response before reflection (`meta.reflection.
rejected_response`). A pair is emitted only when

* the student accepted the reflection (`meta.reflection.accepted`, set by selective mode; turn off
  with `require_accepted: false` for the V1 modes),
* the response really was reflected (not a fallback copy after a failed parse),
* neither side is empty and the two differ after whitespace normalisation,
* optionally (`judge: true`) a judge scores chosen above rejected by at least `judge_margin`
  (1–10 scale, both presentation orders averaged, CodecLM-style).

Everything else is dropped with its reason (`no_reflection`, `not_accepted`, `truncated`, `fallback_copy`,
`empty`, `chosen_equals_rejected`, `judge_gap`, `judge_parse_failed`, LLM failure reasons).
Reflected answers are much longer than the originals, so the report carries the length ratio
chosen/rejected (counters `dpo.chosen_chars` / `dpo.rejected_chars`; extras `dpo_length`).

Reads: `messages`, `meta.reflection`, `id`, `task`. Writes preference rows: `messages` = the
prompt turns, `chosen` / `rejected` = one assistant turn each, lineage parent = the reflected row,
method `dpo:reflection`, `meta.dpo` = {judge scores, length ratio}, `scores.judge_gap` when judged.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

import polars as pl
from pydantic import Field

from datacraft.core.rows import batch_from_rows, derived_id, make_row, meta_of, with_drop
from datacraft.core.stage import MapStage, StageResult
from datacraft.llm.types import failure_reason
from datacraft.stages.synthesize import prompts
from datacraft.stages.synthesize.common import LLMParams, UsesLLM, add_counts
from datacraft.stages.synthesize.parsing import normalize_ws, parse_score


class DPOPairsParams(LLMParams):
    require_accepted: bool = Field(True, description="only rows whose reflection the student accepted")
    allow_truncated: bool = Field(False, description="also pair a reflected answer taken cut at max_tokens (reflection's `on_truncated: keep`)")
    judge: bool = Field(False, description="require a judge score gap (LLM calls, both orders)")
    judge_margin: float = Field(3.0, description="chosen − rejected judge score (1–10) at least this")
    max_tokens: int = Field(128, ge=1, description="judge output tokens")
    examples: int = Field(3, ge=0)


def pair_check(meta: dict[str, Any], chosen: str | None, require_accepted: bool, allow_truncated: bool = False) -> tuple[str, str] | None:
    """Why a reflected row cannot become a pair (reason, detail), or None when it can."""
    info = meta.get("reflection")
    if not isinstance(info, dict):
        return "no_reflection", "the row carries no meta.reflection (run the reflection stage first)"
    if require_accepted and info.get("accepted") is not True:
        return "not_accepted", f"the student did not accept the reflection (mode {info.get('mode')})"
    status = info.get("response_status", "ok")
    if status == "truncated" and not allow_truncated:
        return "truncated", "the reflected answer was cut at max_tokens (set allow_truncated to pair it)"
    if status not in ("ok", "truncated") or info.get("variant") in ("unchanged", "instruction"):
        return "fallback_copy", f"the response was not reflected ({status}, variant {info.get('variant')})"
    rejected = info.get("rejected_response")
    if not (chosen or "").strip() or not (rejected or "").strip():
        return "empty", "chosen or rejected response is empty"
    if normalize_ws(chosen or "") == normalize_ws(rejected or ""):
        return "chosen_equals_rejected", "the reflected response equals the original"
    return None


class DPOPairsStage(UsesLLM, MapStage):
    """Preference pairs (chosen = reflected response, rejected = original), see the module docstring."""

    name = "dpo_pairs"
    Params = DPOPairsParams
    params: DPOPairsParams

    def needs_resource(self) -> bool:
        return self.params.judge

    def writes(self) -> set[str]:
        return {"chosen", "rejected"}

    def process(self, batch: pl.DataFrame, resource: Any = None) -> StageResult:
        p = self.params
        counters: Counter[str] = Counter()
        rows = batch.select("id", "messages", "task", "source", "meta").to_dicts()
        drops: dict[int, tuple[str, str]] = {}
        pairs: dict[int, tuple[list[dict[str, str]], str, str, dict[str, Any]]] = {}
        for i, row in enumerate(rows):
            msgs = list(row["messages"] or [])
            last = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
            chosen = msgs[last]["content"] if last >= 0 else None
            meta = meta_of(row["meta"])
            problem = pair_check(meta, chosen, p.require_accepted, p.allow_truncated)
            if problem is not None:
                drops[i] = problem
                continue
            prompt = msgs[:last]  # every turn before the reflected answer
            pairs[i] = (prompt, chosen or "", meta["reflection"]["rejected_response"], meta)
        judged: dict[int, tuple[float, float]] = {}
        if p.judge and pairs:
            judged = self._judge(pairs, drops, counters)
        out_rows = []
        ratios = []
        for i, (prompt, chosen, rejected, meta) in pairs.items():
            if i in drops:
                continue
            ratio = len(chosen) / max(len(rejected), 1)
            ratios.append(ratio)
            counters["dpo.pairs"] += 1
            counters["dpo.chosen_chars"] += len(chosen)
            counters["dpo.rejected_chars"] += len(rejected)
            out_rows.append(self._row(rows[i], prompt, chosen, rejected, meta, ratio, judged.get(i)))
        keep = pl.Series([i not in drops for i in range(batch.height)])
        idx = sorted(drops)
        dropped = with_drop(
            batch.filter(~keep),
            self.label,
            pl.Series([drops[i][0] for i in idx], dtype=pl.Utf8),
            pl.Series([drops[i][1][:300] for i in idx], dtype=pl.Utf8),
        )
        extras: dict[str, Any] = {}
        if ratios:
            extras["dpo_length"] = [
                {
                    "pairs": len(ratios),
                    "chosen_over_rejected_chars": counters["dpo.chosen_chars"] / max(counters["dpo.rejected_chars"], 1),
                    "median_ratio": statistics.median(ratios),
                }
            ]
            extras["examples"] = [
                {"prompt": r["messages"][-1]["content"][:300], "chosen": (r["chosen"][0]["content"])[:300], "rejected": r["rejected"][0]["content"][:300]}
                for r in out_rows[: p.examples]
            ]
        return StageResult(
            kept=batch_from_rows(out_rows) if out_rows else batch.clear(),
            dropped=dropped if dropped.height else None,
            counters=add_counts(dict(self.llm_counters()), counters),
            extras=extras,
        )

    def _judge(self, pairs: dict[int, Any], drops: dict[int, tuple[str, str]], counters: Counter[str]) -> dict[int, tuple[float, float]]:
        """Both presentation orders in one call; (chosen score, rejected score) averaged."""
        order = list(pairs)
        msgs = []
        for i in order:
            prompt, chosen, rejected, _ = pairs[i]
            instruction = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
            msgs.append(prompts.pair_judge_messages(instruction, chosen, rejected))
            msgs.append(prompts.pair_judge_messages(instruction, rejected, chosen))
        results = self.ask(msgs, self.sampling(temperature=0.0), truncated_ok=True)
        out: dict[int, tuple[float, float]] = {}
        for k, i in enumerate(order):
            first, second = results[2 * k], results[2 * k + 1]
            bad = next((r for r in (first, second) if not r.ok), None)
            if bad is not None:
                drops[i] = (failure_reason(bad), bad.error or "")
                continue
            s = [parse_score(r.text, tag) for r in (first, second) for tag in ("Score 1", "Score 2")]
            if any(v is None for v in s):
                drops[i] = ("judge_parse_failed", (first.text + " | " + second.text)[:300])
                counters["dpo.judge_parse_failed"] += 1
                continue
            chosen_score = (s[0] + s[3]) / 2  # type: ignore[operator]
            rejected_score = (s[1] + s[2]) / 2  # type: ignore[operator]
            out[i] = (chosen_score, rejected_score)
            if chosen_score - rejected_score < self.params.judge_margin:
                drops[i] = ("judge_gap", f"chosen {chosen_score:.1f} − rejected {rejected_score:.1f} < {self.params.judge_margin}")
        return out

    def _row(self, row: dict[str, Any], prompt: list[dict[str, str]], chosen: str, rejected: str, meta: dict[str, Any], ratio: float, judged: tuple[float, float] | None) -> dict[str, Any]:
        info: dict[str, Any] = {"length_ratio": ratio}
        scores: dict[str, float] = {}
        if judged is not None:
            info.update({"judge_chosen": judged[0], "judge_rejected": judged[1]})
            scores["judge_gap"] = judged[0] - judged[1]
        meta = {**meta, "dpo": info}
        return make_row(
            prompt,
            id=derived_id([row["id"]], "dpo:reflection", chosen + "\n" + rejected),
            task=row.get("task"),
            source=row.get("source"),
            parent_ids=[row["id"]],
            method="dpo:reflection",
            meta=meta,
            scores=scores,
            chosen=[{"role": "assistant", "content": chosen}],
            rejected=[{"role": "assistant", "content": rejected}],
        )

"""`reflection`: Reflection-Tuning (V1, recycled) and Selective Reflection-Tuning (V2) (docs/methods.md §2).

A teacher (any engine) reflects on each row:

* instruction reflection — criticise the instruction on complexity of topic, level of detail,
  knowledge required, ambiguity and reasoning, and the answer on helpfulness, relevance, accuracy
  and level of detail; write a new instruction and its answer (`[New Instruction]`, `[New Answer]`);
* response reflection — criticise the answer on the four answer criteria and write a better one
  (`[Better Answer]`).

Modes: `instruction`, `response`, `recycled` (V1: instruction then response reflection, no
selection) and `selective` (V2): a student model scores IFD and r-IFD (`datacraft.stages.score.ifd`,
form chosen by `ifd_form`) of the four variants ori (x0,y0), Q (x_ins,y_ins), A (x0,y_res(ori)),
QA (x_ins,y_res(Q)) and keeps, per row, per the paper: x1 = argmax IFD{ori, Q}; then the reflected
response of x1 if its r-IFD is lower than that of x1's own response (with the code's extra
`IFD < 1 and r-IFD < 1` filters when `require_below_one`), else the row is dropped
(`response_not_accepted` / `above_one`): the paper keeps only rows whose response was reflected.

Parsing is tolerant (see `parsing.py`); a failed parse is retried once (`parse_retries`, sampled
with another seed), then the original field is kept and the failure counted in the report
(`reflection.parse_failed.<field>.<status>`), never silently. A failed LLM call keeps the original
too (`on_failure: keep_original`) or drops the row (`drop`). A teacher answer cut at `max_tokens`
(finish_reason `length`; default 2048 as the official code) is taken only when every section the
stage reads closed with `[End]` before the cut (counted `reflection.cut_after_sections`); otherwise
the row it would replace is dropped with reason `length` (with `keep_original` the original stays).

Reads: `messages` (first user turn = instruction, incl. the Alpaca input; last assistant turn),
`meta.input`. Writes: `messages` (reflected), `lineage` (parent = the original row, method
`reflection:<variant>`), `meta.reflection` = {mode, variant, instruction_status, response_status,
original_instruction, original_response, rejected_response, accepted, scores}, and in selective
mode `scores.ifd` / `scores.rifd` of the kept variant. Rows that are not single-turn pass unchanged.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import polars as pl
from pydantic import Field

from datacraft.core.rows import batch_from_rows, concat_batches, derived_id, make_row, meta_of, with_drop
from datacraft.core.stage import MapStage, StageResult
from datacraft.llm.types import failure_reason
from datacraft.stages.score.ifd import IFDForm, ratio_of, split_input
from datacraft.stages.synthesize import prompts
from datacraft.stages.synthesize.common import LLMParams, UsesLLM, add_counts
from datacraft.stages.synthesize.parsing import MISSING, OK, Parsed, extract_bracket

TRUNCATED = "truncated"  # a section taken from an answer cut at max_tokens (`on_truncated: keep`)

Mode = Literal["instruction", "response", "recycled", "selective"]


class ReflectionParams(LLMParams):
    mode: Mode = "selective"
    max_tokens: int = Field(2048, ge=1, description="teacher tokens (the official code: min(2048, 4050 - prompt))")
    parse_retries: int = Field(1, ge=0, description="re-ask once (sampled, new seed) when a section cannot be parsed")
    retry_temperature: float = Field(0.7, ge=0.0)
    on_failure: Literal["keep_original", "drop"] = Field("keep_original", description="what a failed LLM call does to the row")
    keep_original: bool = Field(False, description="emit reflected rows as new rows next to the originals")
    on_truncated: Literal["drop", "keep"] = Field("drop", description="an answer cut at max_tokens whose sections did not close: drop (the paper) "
                                                  "or keep its text, flagged `truncated` in meta.reflection (tiny CPU demo models)")
    strict_tags: bool = Field(True, description="false: an answer without its `[Better Answer]` header is taken whole (weak models; counted)")
    # selective mode: the student
    student: str = Field("embedded", description="IFD student model (Hub name, path or `embedded`)")
    student_device: str = "auto"
    student_max_length: int | None = Field(None, ge=16, description="default: the ifd_form recipe's (2048 for selective_rt)")
    student_batch_size: int = Field(8, ge=1)
    student_template: Literal["chat", "vicuna", "alpaca", "none"] | None = Field(None, description="default: the recipe's (vicuna)")
    ifd_form: IFDForm = Field("selective_rt", description="selective_rt (paper: vicuna, 2048, ppl ratio); see the `ifd` stage")
    require_below_one: bool = Field(True, description="the code's extra filters IFD < 1 and r-IFD < 1 on the kept variant")


@dataclass
class Work:
    """One row's reflection state."""

    index: int
    x0: str
    y0: str
    given: str = ""  # the Alpaca input (already inside x0), shown as its own block
    x_ins: str | None = None
    y_ins: str | None = None
    y_res_ori: str | None = None  # reflected response of (x0, y0)
    y_res_q: str | None = None  # reflected response of (x_ins, y_ins)
    status: dict[str, str] = field(default_factory=dict)
    failure: tuple[str, str] | None = None


def choose_variant(s: dict[str, tuple[float, float]], *, require_below_one: bool) -> tuple[str | None, str]:
    """The Selective RT rule over the variants' (IFD, r-IFD): (kept variant or None, drop reason).

    `s` holds ori, and Q / A / QA where that reflection succeeded. Phase 1: x1 = Q when
    IFD(Q) > IFD(ori), else ori. Phase 2: keep x1's reflected response (QA or A) when its r-IFD
    is lower than that of x1's own response; `require_below_one` adds the code's IFD, r-IFD < 1.
    A row whose response is not reflected is dropped (the paper keeps only reflected responses)."""
    ori, q = s.get("ori"), s.get("Q")
    if ori is None or math.isnan(ori[0]):
        return None, "ifd_unavailable"
    base, cand = ("Q", "QA") if q is not None and q[0] > ori[0] else ("ori", "A")
    if cand not in s:
        return None, "response_not_reflected"
    (ifd_c, rifd_c), rifd_base = s[cand], s[base][1]
    if math.isnan(ifd_c) or math.isnan(rifd_c) or math.isnan(rifd_base):
        return None, "ifd_unavailable"
    if not rifd_c < rifd_base:
        return None, "response_not_accepted"
    if require_below_one and not (rifd_c < 1 and ifd_c < 1):
        return None, "above_one"
    return cand, ""


@dataclass
class TeacherAndStudent:
    """The teacher's LLM client and, in selective mode, the student's IFD scorer."""

    client: Any
    student: Any = None

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if callable(close):
            close()


class ReflectionStage(UsesLLM, MapStage):
    """Reflection-Tuning with a teacher engine (see the module docstring)."""

    name = "reflection"
    Params = ReflectionParams
    params: ReflectionParams

    def __init__(self, *args: Any, client: Any = None, scorer: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if client is not None:
            self._given = self._resource = TeacherAndStudent(client, scorer)

    def load(self) -> TeacherAndStudent:
        scorer = None
        if self.params.mode == "selective":
            from datacraft.stages.score.ifd import IFDScorer

            p = self.params
            scorer = IFDScorer.for_recipe(p.ifd_form, p.student, p.student_device, p.student_batch_size, template=p.student_template, max_length=p.student_max_length)
        return TeacherAndStudent(self.load_client(), scorer)

    def resource_key(self) -> Any:
        p = self.params
        return (self.llm_key(), p.mode == "selective" and (p.student, p.student_device, p.student_max_length, p.student_batch_size, p.student_template, p.ifd_form))

    # -- teacher calls ---------------------------------------------------------------------------

    def _ask_parsed(self, messages: list[list[dict[str, str]]], sections: list[tuple[str, ...]], counters: Counter[str]) -> list[list[Parsed] | str]:
        """One call for all prompts; unparsable ones are re-asked (sampled) up to `parse_retries`.
        Per prompt: the parsed sections, or the failure reason of the LLM call."""
        out: list[list[Parsed] | str] = [[] for _ in messages]
        todo = list(range(len(messages)))
        for attempt in range(self.params.parse_retries + 1):
            if not todo:
                break
            temp = None if attempt == 0 else self.params.retry_temperature
            results = self.ask([messages[i] for i in todo], self.sampling(temperature=temp, seed_offset=attempt))
            again = []
            for i, res in zip(todo, results, strict=True):
                cut = res.finish_reason == "length" and bool(res.text)
                if not res.ok and not cut:
                    out[i] = failure_reason(res)
                    continue
                # an answer cut at max_tokens counts only when every section closed before the cut
                parsed = [extract_bracket(res.text, *names, closed_only=cut) for names in sections]
                if cut:
                    if all(p.ok for p in parsed):
                        counters["reflection.cut_after_sections"] += 1
                    elif self.params.on_truncated == "keep":
                        parsed = [replace(extract_bracket(res.text, *names), truncated=True) for names in sections]
                        counters["reflection.truncated_kept"] += 1
                    else:
                        out[i] = failure_reason(res)
                        continue
                if len(sections) == 1 and parsed[0].status == MISSING and not self.params.strict_tags:
                    loose = extract_bracket(f"[{sections[0][0]}] {res.text} [End]", *sections[0])
                    if loose.ok:
                        parsed = [replace(loose, truncated=cut)]
                        counters["reflection.untagged"] += 1
                out[i] = parsed
                if not all(p.ok for p in parsed):
                    again.append(i)
            if attempt > 0:
                counters["reflection.parse_retries"] += len(todo)
            todo = again
        return out

    def _drops_on(self, reason: str) -> bool:
        """Whether a failed call drops its row: always with `on_failure: drop`; a `length` cut also
        when the reflected row would replace the original (with `keep_original` the original stays)."""
        return self.params.on_failure == "drop" or (reason == "length" and not self.params.keep_original)

    def _reflect_instructions(self, work: list[Work], counters: Counter[str]) -> None:
        msgs = [prompts.instruction_reflection_messages(w.x0, w.y0) for w in work]
        sections = [("New Instruction",), ("New Answer", "Answer")]
        for w, got in zip(work, self._ask_parsed(msgs, sections, counters), strict=True):
            if isinstance(got, str):
                w.status["instruction"] = got
                counters[f"reflection.llm_failed.instruction.{got}"] += 1
                if self._drops_on(got):
                    w.failure = (got, "instruction reflection failed")
                continue
            new_x, new_y = got
            if new_x.ok and new_y.ok:
                w.x_ins, w.y_ins, w.status["instruction"] = new_x.value, new_y.value, TRUNCATED if new_x.truncated else OK
            else:
                bad = new_x if not new_x.ok else new_y
                w.status["instruction"] = f"parse_failed:{bad.status}"
                counters[f"reflection.parse_failed.instruction.{bad.status}"] += 1

    def _reflect_responses(self, pairs: list[tuple[Work, str, str, str]], slots: list[str], counters: Counter[str]) -> list[str | None]:
        """Better answers for (work, instruction, input, answer); None where the original stays.
        The outcome is recorded per slot (`ori`: of x0's response, `q`: of the new instruction's)."""
        msgs = [prompts.response_reflection_messages(x, y, given) for _, x, given, y in pairs]
        out: list[str | None] = []
        results = self._ask_parsed(msgs, [("Better Answer", "New Answer")], counters)
        for (w, *_), slot, got in zip(pairs, slots, results, strict=True):
            key = f"response_{slot}"
            if isinstance(got, str):
                counters[f"reflection.llm_failed.response.{got}"] += 1
                w.status[key] = got
                if self._drops_on(got) and w.failure is None:
                    w.failure = (got, "response reflection failed")
                out.append(None)
            elif got[0].ok:
                w.status[key] = TRUNCATED if got[0].truncated else OK
                out.append(got[0].value)
            else:
                counters[f"reflection.parse_failed.response.{got[0].status}"] += 1
                w.status[key] = f"parse_failed:{got[0].status}"
                out.append(None)
        return out

    # -- the stage -------------------------------------------------------------------------------

    def process(self, batch: pl.DataFrame, resource: TeacherAndStudent) -> StageResult:
        p = self.params
        counters: Counter[str] = Counter()
        rows = batch.select("id", "messages", "chosen", "task", "source", "meta").to_dicts()
        work: list[Work] = []
        for i, row in enumerate(rows):
            msgs = [m for m in row["messages"] or [] if m["role"] != "system"]
            if row.get("chosen") is not None or len(msgs) != 2 or msgs[0]["role"] != "user" or msgs[1]["role"] != "assistant":
                counters["reflection.skipped_not_single_turn"] += 1
                continue
            x0, y0 = msgs[0]["content"], msgs[1]["content"]
            _, given = split_input(x0, meta_of(row.get("meta")))
            work.append(Work(i, x0, y0, given))

        if p.mode in ("instruction", "recycled", "selective"):
            self._reflect_instructions(work, counters)
        if p.mode in ("response", "recycled", "selective"):
            pairs: list[tuple[Work, str, str, str]] = []
            slots: list[str] = []
            for w in work:
                if p.mode in ("response", "selective") or (p.mode == "recycled" and w.x_ins is None):
                    pairs.append((w, split_input(w.x0, {"input": w.given})[0], w.given, w.y0))
                    slots.append("ori")
                if p.mode in ("recycled", "selective") and w.x_ins is not None:
                    pairs.append((w, w.x_ins, "", w.y_ins or ""))
                    slots.append("q")
            for (w, *_), slot, y in zip(pairs, slots, self._reflect_responses(pairs, slots, counters), strict=True):
                if slot == "ori":
                    w.y_res_ori = y
                else:
                    w.y_res_q = y
        decisions = self._select(work, counters) if p.mode == "selective" else {}
        return self._assemble(batch, rows, work, decisions, counters)

    def _select(self, work: list[Work], counters: Counter[str]) -> dict[int, tuple[str | None, str, dict[str, tuple[float, float]]]]:
        """Score the four variants of every row with the student (one scorer call) and apply the rule."""
        p = self.params
        variants: list[tuple[Work, str, str, str]] = []
        for w in work:
            if w.failure is not None:
                continue
            variants.append((w, "ori", w.x0, w.y0))
            if w.x_ins is not None:
                variants.append((w, "Q", w.x_ins, w.y_ins or ""))
                if w.y_res_q is not None:
                    variants.append((w, "QA", w.x_ins, w.y_res_q))
            if w.y_res_ori is not None:
                variants.append((w, "A", w.x0, w.y_res_ori))
        unique = list(dict.fromkeys((x, y) for _, _, x, y in variants))
        scorer = self.resource.student
        if scorer is None:
            raise ValueError("reflection: selective mode needs a student scorer")
        scored = scorer.score([x for x, _ in unique], [y for _, y in unique], reverse=True) if unique else []
        form = ratio_of(p.ifd_form)
        values = {pair: (float(s.ifd(form)), float(s.rifd(form))) for pair, s in zip(unique, scored, strict=True)}
        counters["reflection.student_pairs"] += len(unique)
        nan = (float("nan"), float("nan"))
        per_row: dict[int, dict[str, tuple[float, float]]] = {}
        for w, name, x, y in variants:
            per_row.setdefault(w.index, {})[name] = values.get((x, y), nan)
        decisions = {}
        for w in work:
            if w.failure is None:
                s = per_row.get(w.index, {})
                chosen, reason = choose_variant(s, require_below_one=p.require_below_one)
                decisions[w.index] = (chosen, reason, s)
                counters[f"reflection.selected.{chosen}" if chosen else f"reflection.rejected.{reason}"] += 1
        return decisions

    def _final(self, w: Work, decision: tuple[str | None, str, dict[str, tuple[float, float]]] | None) -> tuple[str, str, str, str]:
        """(instruction, response, rejected_response, variant) of the reflected row."""
        mode = self.params.mode
        if mode == "selective" and decision is not None:
            variant = decision[0] or ""
            if variant == "QA":
                return w.x_ins or w.x0, w.y_res_q or "", w.y_ins or "", "QA"
            return w.x0, w.y_res_ori or "", w.y0, "A"
        if mode == "instruction":
            return (w.x_ins or w.x0), (w.y_ins or w.y0), w.y0, "instruction" if w.x_ins else "unchanged"
        if mode == "response":
            return w.x0, (w.y_res_ori or w.y0), w.y0, "response" if w.y_res_ori else "unchanged"
        # recycled: instruction reflection (if it parsed), then response reflection of the result
        x, y_before = (w.x_ins, w.y_ins or w.y0) if w.x_ins else (w.x0, w.y0)
        y = w.y_res_q if w.x_ins else w.y_res_ori
        changed = w.x_ins is not None or y is not None
        return x, (y or y_before), y_before, "recycled" if changed else "unchanged"

    def _assemble(self, batch: pl.DataFrame, rows: list[dict[str, Any]], work: list[Work], decisions: dict[int, Any], counters: Counter[str]) -> StageResult:
        """Replaced rows leave the batch and their reflected rows join it (or are added, with
        `keep_original`); without `keep_original`, rows the rule rejects or whose call failed are
        dropped with the reason (with it the original stays and the rejection is counted)."""
        p = self.params
        new_rows: dict[int, dict[str, Any]] = {}
        drops: dict[int, tuple[str, str]] = {}
        for w in work:
            decision = decisions.get(w.index)
            if w.failure is not None:
                drops[w.index] = w.failure
                continue
            if decision is not None and decision[0] is None:
                if not p.keep_original:  # with keep_original only the candidate is rejected (counted); the original stays
                    s = decision[2]
                    drops[w.index] = (decision[1], "; ".join(f"{k}: ifd={v[0]:.3g} rifd={v[1]:.3g}" for k, v in sorted(s.items()) if math.isfinite(v[0])))
                continue
            x, y, rejected, variant = self._final(w, decision)
            if variant == "unchanged":
                counters["reflection.unchanged"] += 1
                continue
            new_rows[w.index] = self._row(rows[w.index], w, x, y, rejected, variant, decision)
        counters["reflection.reflected"] += len(new_rows)
        n = batch.height
        dropped_mask = pl.Series([i in drops for i in range(n)])
        replaced = pl.Series([i in new_rows and not p.keep_original for i in range(n)])
        parts = [batch.filter(~dropped_mask & ~replaced)]
        if new_rows:
            parts.append(batch_from_rows(list(new_rows.values())))
        dropped = None
        if drops:
            idx = sorted(drops)
            dropped = with_drop(
                batch.filter(dropped_mask),
                self.label,
                pl.Series([drops[i][0] for i in idx], dtype=pl.Utf8),
                pl.Series([drops[i][1][:300] for i in idx], dtype=pl.Utf8),
            )
        return StageResult(
            kept=concat_batches(parts),
            dropped=dropped,
            created=len(new_rows) if p.keep_original else 0,
            counters=add_counts(dict(self.llm_counters()), counters),
        )

    def _row(self, row: dict[str, Any], w: Work, x: str, y: str, rejected: str, variant: str, decision: Any) -> dict[str, Any]:
        p = self.params
        method = f"reflection:{p.mode}" + (f":{variant}" if p.mode == "selective" else "")
        meta = meta_of(row.get("meta"))
        meta.pop("input", None)  # the instruction is now one self-contained text
        info: dict[str, Any] = {
            "mode": p.mode,
            "variant": variant,
            "instruction_status": w.status.get("instruction", OK if w.x_ins else "not_run"),
            "response_status": w.status.get("response_q" if variant == "QA" or (variant == "recycled" and w.x_ins) else "response_ori", "not_run"),
            "original_instruction": w.x0,
            "original_response": w.y0,
            "rejected_response": rejected,
            "accepted": True if p.mode == "selective" else None,
        }
        scores: dict[str, float] = {}
        if decision is not None:
            s = decision[2]
            info["scores"] = {k: {"ifd": v[0], "rifd": v[1]} for k, v in s.items() if math.isfinite(v[0])}
            scores = {"ifd": s[variant][0], "rifd": s[variant][1]}
        meta["reflection"] = info
        system = [m for m in row["messages"] if m["role"] == "system"]
        return make_row(
            [*system, {"role": "user", "content": x}, {"role": "assistant", "content": y}],
            id=derived_id([row["id"]], method, x + "\n" + y),
            task=row.get("task"),
            source=row.get("source"),
            parent_ids=[row["id"]],
            method=method,
            meta=meta,
            scores=scores,  # scores of the original text no longer apply
        )

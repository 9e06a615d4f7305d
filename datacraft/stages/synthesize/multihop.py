"""`multihop`: AIDE attribute-guided multi-hop data expansion (docs/methods.md §1).

From a few seed rows of a task, every hop expands every frontier node:

1. extract the node's topic and attributes (`<Topic>`, `<Related knowledge>`), optionally widened by
   knowledge-graph triples whose head is the topic (`kg`);
2. relevance branch (hop ≤ `r_depth`): one rewrite per attribute × op (reasoning / concrete /
   constraint); from hop `residual_from_hop` on, the seed instruction is added as a *residual*
   expectation so deep hops do not drift (`residual_quirk: true` reproduces the reference code,
   where only the reasoning op gets it);
3. diversity branch (hop ≤ `d_depth`): one new prompt per persona (the shipped list or a user file,
   top-K by embedding similarity to the task or the node's topic), or one generic "more diverse"
   prompt when no personas are configured;
4. optional self-reflection: an LLM judge scores relevance to the seed (relevance branch) or
   diversity from the parent (diversity branch); below `keep_threshold` the prompt is improved,
   up to `max_improve_*` rounds; items are never rejected by it (as in the reference);
5. a separate solver call answers every new question (open QA, multiple choice, or Yes/No).

Each step of a hop is ONE batched engine call over all frontier nodes of the partition
(extraction, triples, rewrites, each judge / improve round, solver). The stage partitions rows by
task (`partition_by_task`), so a task's seeds expand together; `max_rows` caps the rows created per
task (candidates are taken round-robin over the frontier, so the budget is shared fairly).

Reads: `messages` (first user turn = seed instruction), `id`, `task`.
Writes: new rows `messages` = [user: question, assistant: answer], `lineage.parent_ids` =
[seed id, parent id], `lineage.method` = `multihop:hop<k>:<op>` (op ∈ reasoning, concrete,
constraint, persona, diverse), `meta` = {seed_id, parent_id, hop, op, branch, attribute, persona,
topic, residual, reflection, target_scores}. Every candidate is counted as created; a failed one
(LLM error, unparsable rewrite, no answer) is dropped with its reason. Seeds are kept (`keep_seeds`).
Memory: one task's seeds and generated rows.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from datacraft.core.rows import batch_from_rows, concat_batches, derived_id, make_row, with_drop
from datacraft.core.stage import GlobalStage, Shape, StageResult
from datacraft.llm.types import failure_reason
from datacraft.stages.synthesize import prompts
from datacraft.stages.synthesize.common import LLMParams, UsesLLM, add_counts, turns
from datacraft.stages.synthesize.parsing import (
    MISSING,
    Parsed,
    extract_angle,
    normalize_ws,
    parse_choices,
    parse_score,
    parse_triples,
    parse_yes_no,
    split_items,
)

ChoiceType = Literal["open", "multi_choice", "binary"]


class MultiHopParams(LLMParams):
    temperature: float = Field(0.7, ge=0.0)
    max_tokens: int = Field(256, ge=1, description="tokens for extraction / rewrite / judge calls")
    solver_max_tokens: int = Field(512, ge=1)
    hops: int = Field(2, ge=1, description="K: expansion depth")
    r_depth: int | None = Field(None, description="relevance branch up to this hop (default: hops)")
    d_depth: int | None = Field(None, description="diversity branch up to this hop (default: hops)")
    ops: list[Literal["reasoning", "concrete", "constraint"]] = Field(default_factory=lambda: list(prompts.OPS))
    n_attributes: int = Field(3, ge=1, description="attributes asked from the analyzer")
    max_attributes: int = Field(5, ge=1, description="attributes kept per node after the KG union")
    kg: bool = Field(True, description="widen attributes with knowledge-graph triples (ex_kg)")
    num_triples: int = Field(2, ge=1)
    residual: bool = True
    residual_from_hop: int = Field(2, ge=1, description="hops ≥ this get the seed as residual (sk_conn + 1)")
    residual_quirk: bool = Field(False, description="reference-code behaviour: only the reasoning op gets the residual")
    personas: int = Field(5, ge=0, description="K personas per node in the diversity branch (0: generic prompt)")
    personas_path: str | None = Field(None, description="JSONL ({persona}) or text file; default: the shipped list")
    persona_select: Literal["similar", "random", "first"] = "similar"
    persona_query: Literal["task", "topic"] = Field("task", description="task: the code; topic: the paper")
    persona_threshold: float | None = Field(None, description="minimum cosine similarity (reference: 0.75 with jina)")
    persona_quirk: bool = Field(False, description="reference bug: the last K indices above threshold, not the top K")
    use_case: str | None = Field(None, description="task description for the prompts (default: the row's task)")
    choice_type: ChoiceType = "open"
    strict_tags: bool = Field(True, description="false: an untagged rewrite is taken whole (for weak models; counted)")
    reflection: bool = False
    keep_threshold: float = Field(5.0, description="judge score accepted (≥); the code uses > 4")
    max_improve_relevance: int = Field(5, ge=0)
    max_improve_diversity: int = Field(20, ge=0)
    max_chars: int = Field(500, ge=1, description="longer prompts are sent back as too long (len_token)")
    max_rows: int | None = Field(None, ge=0, description="rows created per task at most (paper: no cap; ~3K rows from 10 seeds at K=2)")
    num_options: int | None = Field(3, ge=2, description="multiple choice: options kept, 1 correct + sampled incorrect (AIDE post_process: num_target_scores = 3)")
    answer_check: bool | None = Field(None, description="checker call: is the solution among the options? else re-solve (default: with `reflection`, as the code)")
    max_answer_checks: int = Field(5, ge=1, description="answer-check rounds (AIDE max_opt: 5)")
    keep_seeds: bool = True
    partition_by_task: bool = True
    examples: int = Field(3, ge=0)


@dataclass
class Node:
    """A question in the expansion tree (a seed is hop 0)."""

    id: str
    question: str
    task: str
    use_case: str
    seed_id: str
    seed_question: str
    hop: int = 0
    topic: str | None = None
    attributes: list[str] = field(default_factory=list)


@dataclass
class Candidate:
    parent: Node
    op: str  # reasoning | concrete | constraint | persona | diverse
    attribute: str | None = None
    persona: str | None = None
    residual: bool = False
    question: str | None = None
    answer: str | None = None
    failure: tuple[str, str] | None = None  # (reason, detail)
    raw: str = ""
    stem: str | None = None  # the question without its options (multiple choice)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def branch(self) -> str:
        return "diversity" if self.op in ("persona", "diverse") else "relevance"


def load_personas(path: str | None = None) -> list[str]:
    """Personas from a JSONL file (`persona` / `text` field) or a text file, one per line."""
    if path is None:
        text = resources.files("datacraft").joinpath("resources/personas.jsonl").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            rec = json.loads(line)
            line = str(rec.get("persona") or rec.get("text") or "").strip()
        if line:
            out.append(line)
    return out


def top_personas(sims: np.ndarray, k: int, threshold: float | None, quirk: bool = False) -> list[int]:
    """Indices of the K most similar personas (above `threshold`); `quirk` takes the last K
    indices above the threshold (the reference sorts indices, not similarities)."""
    idx = np.arange(len(sims)) if threshold is None else np.flatnonzero(sims > threshold)
    if quirk:
        return sorted(idx.tolist())[-k:] if k else []
    order = sorted(idx.tolist(), key=lambda i: (-float(sims[i]), i))
    return order[:k]


def interleave(groups: list[list[Candidate]]) -> list[Candidate]:
    """Round-robin over the nodes' candidate lists (a budget then spreads over all nodes)."""
    out: list[Candidate] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


class MultiHopStage(UsesLLM, GlobalStage):
    """AIDE multi-hop expansion (see the module docstring)."""

    name = "multihop"
    Params = MultiHopParams
    params: MultiHopParams

    def __init__(self, *args: Any, embed: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._embed = embed  # callable texts -> normalized vectors (injected in tests)
        self._personas: list[str] | None = None
        self._persona_vecs: np.ndarray | None = None
        self._persona_choice: dict[str, list[str]] = {}

    # -- setup ----------------------------------------------------------------------------------

    def _load_personas(self) -> None:
        """The persona pool (data, not a model) and, for `similar`, its embeddings."""
        p = self.params
        if self._personas is None and p.personas > 0:
            self._personas = load_personas(p.personas_path)
            if p.persona_select == "similar":
                if self._embed is None:
                    from datacraft.vectors.embedders import embedder_from

                    self._embed = embedder_from(self.context).encode
                self._persona_vecs = np.asarray(self._embed(self._personas), dtype=np.float32)

    def shape(self) -> Shape:
        return Shape.PARTITIONED if self.params.partition_by_task else Shape.ONE_PROCESS

    def partition_keys(self, batch: pl.DataFrame, facts: Any) -> pl.Series:
        return batch["task"].fill_null("")

    def process_partition(self, key: Any, frame: pl.DataFrame, facts: Any) -> StageResult:
        return self.process_all(frame)

    # -- the expansion ----------------------------------------------------------------------------

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        self._load_personas()
        p = self.params
        counters: Counter[str] = Counter()
        seeds: list[Node] = []
        for row in frame.select("id", "messages", "task").iter_rows(named=True):
            question, _ = turns(row["messages"])
            if not question or not question.strip():
                counters["multihop.seed_unusable"] += 1
                continue
            task = row["task"] or ""
            use_case = p.use_case or task or "general"
            seeds.append(Node(row["id"], question.strip(), task, use_case, row["id"], question.strip()))

        created: list[Candidate] = []
        used: Counter[str] = Counter()
        frontier = seeds
        r_depth = p.r_depth if p.r_depth is not None else p.hops
        d_depth = p.d_depth if p.d_depth is not None else p.hops
        for hop in range(1, max(r_depth, d_depth, 0) + 1):
            if not frontier:
                break
            relevance, diversity = hop <= r_depth, hop <= d_depth
            self._extract(frontier, counters, with_kg=p.kg and relevance)
            groups = [self._candidates(node, hop, relevance, diversity) for node in frontier]
            cands = self._apply_budget(interleave(groups), used, counters)
            self._rewrite(cands, counters)
            live = [c for c in cands if c.failure is None]
            if p.reflection:
                self._reflect(live, counters)
            self._solve(live, counters)
            if p.choice_type == "multi_choice" and (p.reflection if p.answer_check is None else p.answer_check):
                self._check_answers(live, counters)
            created.extend(cands)
            frontier = [self._child(c, hop) for c in cands if c.failure is None]
            counters[f"multihop.hop{hop}.created"] += len(cands)
            counters[f"multihop.hop{hop}.kept"] += len(frontier)

        return self._result(frame, created, counters)

    def _extract(self, nodes: list[Node], counters: Counter[str], with_kg: bool) -> None:
        """Topic + attributes for every node (one call), then KG triples (one call)."""
        p = self.params
        sampling = self.sampling(temperature=0.0)
        results = self.ask([prompts.analyzer_messages(n.question, p.n_attributes) for n in nodes], sampling)
        for node, res in zip(nodes, results, strict=True):
            topic = extract_angle(res.text, "Topic") if res.ok else Parsed(None, failure_reason(res))
            attrs = extract_angle(res.text, "Related knowledge") if res.ok else Parsed(None, failure_reason(res))
            node.topic = topic.value if topic.ok else node.use_case
            node.attributes = split_items(attrs.value or "", p.n_attributes) if attrs.ok else []
            if not topic.ok or not node.attributes:
                # no attributes: this node grows through the diversity branch only
                counters[f"multihop.extract_failed.{topic.status if not topic.ok else attrs.status}"] += 1
        if not with_kg:
            return
        todo = [n for n in nodes if n.attributes]
        results = self.ask([prompts.triples_messages(n.topic or "", n.attributes, p.num_triples) for n in todo], sampling)
        for node, res in zip(todo, results, strict=True):
            triples = parse_triples(res.text) if res.ok else []
            if not triples:
                counters["multihop.kg_failed"] += 1
                continue
            tails = [t[2].lower() for t in triples]
            merged = list(dict.fromkeys([*node.attributes, *tails]))
            node.attributes = merged[: p.max_attributes]
            counters["multihop.kg_attributes"] += len(node.attributes)

    def _candidates(self, node: Node, hop: int, relevance: bool, diversity: bool) -> list[Candidate]:
        p = self.params
        out: list[Candidate] = []
        if relevance:
            for attr in node.attributes:
                for op in p.ops:
                    residual = p.residual and hop >= p.residual_from_hop and (not p.residual_quirk or op == "reasoning")
                    out.append(Candidate(node, op, attribute=attr, residual=residual))
        if diversity:
            personas = self._select_personas(node)
            if personas:
                out.extend(Candidate(node, "persona", persona=q) for q in personas)
            else:
                out.append(Candidate(node, "diverse"))
        return out

    def _select_personas(self, node: Node) -> list[str]:
        p = self.params
        if p.personas == 0 or not self._personas:
            return []
        pool = self._personas
        if p.persona_select == "first":
            return pool[: p.personas]
        if p.persona_select == "random":
            rng = random.Random(f"{p.seed if p.seed is not None else self.context.seed}:{node.id}")
            return rng.sample(pool, min(p.personas, len(pool)))
        query = node.use_case if p.persona_query == "task" else (node.topic or node.use_case)
        cache = self._persona_choice
        if query not in cache:
            assert self._embed is not None and self._persona_vecs is not None
            q = np.asarray(self._embed([query]), dtype=np.float32)[0]
            sims = self._persona_vecs @ q
            cache[query] = [pool[i] for i in top_personas(sims, p.personas, p.persona_threshold, p.persona_quirk)]
        return cache[query]

    def _apply_budget(self, cands: list[Candidate], used: Counter[str], counters: Counter[str]) -> list[Candidate]:
        if self.params.max_rows is None:
            return cands
        out = []
        for c in cands:
            if used[c.parent.task] < self.params.max_rows:
                used[c.parent.task] += 1
                out.append(c)
            else:
                counters["multihop.budget_skipped"] += 1
        return out

    def _rewrite(self, cands: list[Candidate], counters: Counter[str]) -> None:
        """All rewrite / persona / diverse prompts of the hop in one call."""
        msgs = []
        for c in cands:
            node = c.parent
            if c.op == "persona":
                msgs.append(prompts.persona_messages(node.question, node.use_case, node.topic or node.use_case, c.persona or ""))
            elif c.op == "diverse":
                msgs.append(prompts.diverse_messages(node.question, node.use_case))
            else:
                seed = node.seed_question if c.residual else None
                msgs.append(prompts.rewrite_messages(c.op, node.question, node.topic or node.use_case, c.attribute or "", seed))
        for c, res in zip(cands, self.ask(msgs, self.sampling()), strict=True):
            if not res.ok:
                c.failure = (failure_reason(res), res.error or "")
                continue
            c.raw = res.text
            tag = "Created Prompt" if c.branch == "diversity" else "Rewritten Prompt"
            parsed = self._tagged(res.text, tag, counters)
            if not parsed.ok:
                c.failure = ("parse_failed", f"{tag}: {parsed.status}")
                counters[f"multihop.parse_failed.{parsed.status}"] += 1
            elif normalize_ws(parsed.value or "").lower() == normalize_ws(c.parent.question).lower():
                c.failure = ("unchanged", "the rewrite repeats its parent")
            else:
                c.question = parsed.value

    def _tagged(self, text: str, tag: str, counters: Counter[str]) -> Parsed:
        """The `<tag>` section; with `strict_tags: false` an untagged answer counts as the section."""
        parsed = extract_angle(text, tag)
        if parsed.status == MISSING and not self.params.strict_tags:
            loose = extract_angle(f"<{tag}>{text}</{tag}>", tag)
            if loose.ok:
                counters["multihop.untagged"] += 1
                return loose
        return parsed

    def _reflect(self, cands: list[Candidate], counters: Counter[str]) -> None:
        """Judge → improve rounds, each batched over every pending candidate; never rejects."""
        p = self.params
        limit = {"relevance": p.max_improve_relevance, "diversity": p.max_improve_diversity}
        state = {id(c): {"attempts": 0, "score": None, "accepted": False} for c in cands}
        pending = [c for c in cands if limit[c.branch] > 0]
        judge_sampling = self.sampling(temperature=0.0, max_tokens=min(p.max_tokens, 128))

        def reference(c: Candidate) -> str:
            return c.parent.seed_question if c.branch == "relevance" else c.parent.question

        while pending:
            long = [c for c in pending if len(c.question or "") > p.max_chars]
            judged = [c for c in pending if len(c.question or "") <= p.max_chars]
            to_improve: list[tuple[Candidate, str]] = [(c, "too_long") for c in long]
            results = self.ask([prompts.judge_messages(c.branch, reference(c), c.question or "") for c in judged], judge_sampling, truncated_ok=True)
            for c, res in zip(judged, results, strict=True):
                score = parse_score(res.text) if res.ok else None
                if score is None:
                    counters["multihop.reflection.judge_failed"] += 1
                state[id(c)]["score"] = score
                if score is not None and score >= p.keep_threshold:
                    state[id(c)]["accepted"] = True
                else:
                    to_improve.append((c, c.branch))
            to_improve = [(c, fb) for c, fb in to_improve if state[id(c)]["attempts"] < limit[c.branch]]
            msgs = [prompts.improve_messages(reference(c), c.question or "", fb) for c, fb in to_improve]
            for (c, _), res in zip(to_improve, self.ask(msgs, self.sampling()), strict=True):
                state[id(c)]["attempts"] += 1
                parsed = self._tagged(res.text, "Improved Prompt", counters) if res.ok else Parsed(None, failure_reason(res))
                if parsed.ok:
                    c.question = parsed.value
                    counters["multihop.reflection.improved"] += 1
                else:
                    counters[f"multihop.reflection.improve_failed.{parsed.status}"] += 1
            pending = [c for c, _ in to_improve]
        for c in cands:
            c.meta["reflection"] = state[id(c)]
            counters["multihop.reflection.accepted" if state[id(c)]["accepted"] else "multihop.reflection.not_accepted"] += 1

    def _solve(self, cands: list[Candidate], counters: Counter[str]) -> None:
        """The separate solver call for every new question (one batch)."""
        p = self.params
        msgs = [prompts.solver_messages(c.question or "", p.choice_type) for c in cands]
        sampling = self.sampling(temperature=0.0, max_tokens=p.solver_max_tokens)
        for c, res in zip(cands, self.ask(msgs, sampling), strict=True):
            if not res.ok:
                reason = failure_reason(res)
                c.failure = (reason if reason == "length" else f"solver_{reason}", res.error or "")
                continue
            if p.choice_type == "open":
                c.answer = res.text.strip()
            elif p.choice_type == "binary":
                body = extract_angle(res.text, "Answer")
                yes_no = parse_yes_no(body.value if body.ok else res.text)
                if yes_no is None:
                    c.failure = ("solver_parse_failed", "no Yes/No answer")
                else:
                    c.answer, c.meta["target_scores"] = yes_no, {"Yes": int(yes_no == "Yes"), "No": int(yes_no == "No")}
            else:
                self._set_choices(c, res.text)
            if c.failure is not None:
                counters["multihop.solver_parse_failed"] += 1

    def _check_answers(self, cands: list[Candidate], counters: Counter[str]) -> None:
        """AIDE's answer checker: a checker call per multiple-choice item asks whether the solution is
        among the options; on No the solver is asked again (up to `max_answer_checks` rounds).
        An item still failing after the last round keeps its options (the reference never rejects)."""
        pending = [c for c in cands if c.failure is None and c.meta.get("target_scores")]
        for round_ in range(self.params.max_answer_checks):
            if not pending:
                break
            msgs = [prompts.answer_check_messages((c.stem or ""), "\n".join(c.meta["target_scores"])) for c in pending]
            results = self.ask(msgs, self.sampling(temperature=0.0, max_tokens=min(self.params.max_tokens, 128)), truncated_ok=True)
            retry = []
            for c, res in zip(pending, results, strict=True):
                verdict = parse_yes_no(extract_angle(res.text, "Answer").value or res.text) if res.ok else None
                counters[f"multihop.answer_check.{(verdict or 'unparsed').lower()}"] += 1
                if verdict == "No":
                    retry.append(c)
            if not retry or round_ == self.params.max_answer_checks - 1:
                break
            for c in retry:
                c.question, c.answer = (c.stem or ""), None
            self._solve(retry, counters)
            counters["multihop.answer_check.resolved"] += len(retry)
            pending = [c for c in retry if c.failure is None]

    def _set_choices(self, c: Candidate, text: str) -> None:
        """Exactly one correct option (post-processing rule); incorrect ones sampled down to
        `num_options - 1`; options shuffled per question."""
        choices = parse_choices(text)
        correct = [ch for ch in choices if ch.correct]
        if len(correct) != 1 or len(choices) < 2:
            c.failure = ("solver_parse_failed", f"{len(correct)} correct of {len(choices)} options")
            return
        rng = random.Random(c.question)
        wrong = [ch for ch in choices if not ch.correct]
        k = self.params.num_options
        if k is not None and len(wrong) > k - 1:
            wrong = rng.sample(wrong, k - 1)
        order = correct + wrong
        rng.shuffle(order)
        letters = "ABCDEFGH"
        options = "\n".join(f"{letters[i]}. {ch.text}" for i, ch in enumerate(order))
        right = next(i for i, ch in enumerate(order) if ch.correct)
        c.stem = c.stem or c.question
        c.question = f"{c.stem}\n\n{options}"
        c.answer = f"{letters[right]}. {order[right].text}"
        c.meta["target_scores"] = {ch.text: int(ch.correct) for ch in order}

    # -- rows -------------------------------------------------------------------------------------

    def _child(self, c: Candidate, hop: int) -> Node:
        node = c.parent
        return Node(self._id(c, hop), c.question or "", node.task, node.use_case, node.seed_id, node.seed_question, hop)

    @staticmethod
    def _id(c: Candidate, hop: int) -> str:
        parents = [c.parent.seed_id, c.parent.id]
        key = f"{c.attribute or ''}|{c.persona or ''}|{c.question or c.raw}"
        return derived_id(parents, f"multihop:hop{hop}:{c.op}", key)

    def _row(self, c: Candidate) -> dict[str, Any]:
        node, hop = c.parent, c.parent.hop + 1
        meta = {
            "seed_id": node.seed_id,
            "parent_id": node.id,
            "hop": hop,
            "op": c.op,
            "branch": c.branch,
            "attribute": c.attribute,
            "persona": c.persona,
            "topic": node.topic,
            "residual": c.residual,
            **c.meta,
        }
        if c.failure is not None:
            messages = [{"role": "user", "content": c.question or node.question}]
            meta["raw"] = c.raw[:500]
        else:
            messages = [{"role": "user", "content": c.question or ""}, {"role": "assistant", "content": c.answer or ""}]
        return make_row(
            messages,
            id=self._id(c, hop),
            task=node.task or None,
            source="multihop",
            parent_ids=[node.seed_id, node.id],
            method=f"multihop:hop{hop}:{c.op}",
            meta=meta,
        )

    def _result(self, frame: pl.DataFrame, created: list[Candidate], counters: Counter[str]) -> StageResult:
        ok = [c for c in created if c.failure is None]
        bad = [c for c in created if c.failure is not None]
        new_rows = batch_from_rows([self._row(c) for c in ok]) if ok else None
        dropped_parts: list[pl.DataFrame] = []
        if bad:
            dropped_parts.append(
                with_drop(
                    batch_from_rows([self._row(c) for c in bad]),
                    self.label,
                    pl.Series([c.failure[0] for c in bad if c.failure], dtype=pl.Utf8),
                    pl.Series([c.failure[1][:300] for c in bad if c.failure], dtype=pl.Utf8),
                )
            )
        kept_parts = [frame] if self.params.keep_seeds else []
        if not self.params.keep_seeds and frame.height:
            dropped_parts.append(with_drop(frame, self.label, "seed_not_kept", "keep_seeds is false"))
        if new_rows is not None:
            kept_parts.append(new_rows)
        kept = concat_batches(kept_parts) if kept_parts else frame.clear()
        counters["multihop.created"] += len(created)
        by_op: defaultdict[str, int] = defaultdict(int)
        for c in ok:
            by_op[f"hop{c.parent.hop + 1}:{c.op}"] += 1
        out_counters = add_counts(dict(self.llm_counters()), counters)
        extras: dict[str, Any] = {
            "multihop_rows": dict(sorted(by_op.items())),
            "examples": [
                {"seed": c.parent.seed_question[:300], "question": (c.question or "")[:300], "answer": (c.answer or "")[:300], "method": f"hop{c.parent.hop + 1}:{c.op}"}
                for c in ok[: self.params.examples]
            ],
        }
        return StageResult(
            kept=kept,
            dropped=concat_batches(dropped_parts) if dropped_parts else None,
            created=len(created),
            counters=out_counters,
            extras=extras,
        )

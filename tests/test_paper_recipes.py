"""Golden tests of the paper defaults (issue 17), each against a small reference written from the
paper / reference code inside the test: Deita's multi-turn sort key and engine fallback, DS2's
defaults, SMART's task-level facility location (submodlib semantics), graph cut, log-det's ridge,
the selection report's labels, truncated synthesis answers and AIDE's options."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from datacraft.core.rows import SCORE_PREFIX, batch_from_rows, make_row, set_scores
from datacraft.llm.types import Result, TokenLogprob
from datacraft.stages.registry import build_stage, stage_names
from datacraft.stages.score.judge import NEUTRAL_SCORE, judge_result
from datacraft.stages.select.deita import DeitaSelectStage
from datacraft.stages.select.mixture import task_greedy
from datacraft.stages.select.submodular import greedy, similarity_graph
from datacraft.vectors.embedders import embedding_series

from .synth_fakes import ScriptedClient


def _conv(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]


def _deita_frame() -> pl.DataFrame:
    """A: two turns c=(2, 2), q=(5, 5) → Deita Σ c_t·q_t = 20 (mean product 10);
    B: one turn c=4, q=4 → 16 (mean product 16). Orthogonal embeddings: nothing is too similar."""
    a = make_row(_conv([("q1", "a1"), ("q2", "a2")]), id="A", meta={"complexity_scores": [2.0, 2.0], "quality_scores": [5.0, 5.0]})
    b = make_row(_conv([("q3", "a3")]), id="B", meta={"complexity_scores": [4.0], "quality_scores": [4.0]})
    frame = set_scores(batch_from_rows([a, b]), {"complexity": [2.0, 4.0], "quality": [5.0, 4.0]})
    return frame.with_columns(embedding_series(np.eye(2, 8, dtype=np.float32)))


def _deita_reference(meta: dict) -> float:
    """Deita's combined score (hkust-nlp/deita: per-turn complexity × quality, summed over turns)."""
    return float(sum(c * q for c, q in zip(meta["complexity_scores"], meta["quality_scores"], strict=True)))


def test_deita_sorts_multi_turn_rows_by_the_sum_over_turns() -> None:
    frame = _deita_frame()
    want = max(frame.iter_rows(named=True), key=lambda r: _deita_reference(json.loads(r["meta"]) if isinstance(r["meta"], str) else r["meta"]))["id"]
    kept, _, _ = DeitaSelectStage({"budget": 1}).run_local([frame])
    assert kept["id"].to_list() == [want] == ["A"]
    assert kept[SCORE_PREFIX + "evol_score"][0] == pytest.approx(20.0)
    ours, _, _ = DeitaSelectStage({"budget": 1, "sort": "product"}).run_local([frame])
    assert ours["id"].to_list() == ["B"]


def test_deita_threshold_auto_and_the_warning_when_nothing_is_rejected() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = [make_row([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}], id=f"r{i}") for i in range(300)]
    frame = set_scores(batch_from_rows(rows), {"complexity": rng.uniform(1, 6, 300), "quality": rng.uniform(1, 6, 300)}).with_columns(embedding_series(x))
    _, _, stats = DeitaSelectStage({"budget": 300}).run_local([frame])
    info = stats[0].extras["deita"]
    assert info["too_similar"] < 3 and "almost nothing" in info["warning"]  # random 16-d vectors: no cos > 0.9
    nn = np.sort(x @ x.T, axis=1)[:, -2]  # each row's nearest other row
    _, dropped, stats = DeitaSelectStage({"budget": 300, "threshold": "auto", "auto_quantile": 0.5}).run_local([frame])
    info = stats[0].extras["deita"]
    assert info["threshold"] == pytest.approx(float(np.quantile(nn, 0.5)), abs=1e-5)
    assert info["too_similar"] > 30 and "warning" not in info


def _lp(top: dict[str, float]) -> TokenLogprob:
    token = max(top, key=top.__getitem__)
    return TokenLogprob(token=token, logprob=top[token], top=top)


def test_deita_engine_path_returns_three_when_a_digit_is_missing() -> None:
    """Deita's infer_score: softmax over the six digit logits, 3.0 as soon as one is absent."""
    full = {str(k): -float(k) for k in range(1, 7)}
    p = np.exp(-np.arange(1, 7, dtype=float))
    want = float((p / p.sum() * np.arange(1, 7)).sum())
    assert judge_result(Result(text="1", logprobs=[_lp(full)])).value == pytest.approx(want)
    partial = {"4": -0.1, "5": -2.0, "hello": -3.0}
    s = judge_result(Result(text="4", logprobs=[_lp(partial)]), "deita")
    assert s.value is None and s.method == "default"  # the stage stores Deita's NEUTRAL_SCORE
    assert NEUTRAL_SCORE == 3.0
    assert judge_result(Result(text="5 stars"), "deita").method == "default"  # no logprobs: no text parse
    assert judge_result(Result(text="4", logprobs=[_lp(partial)]), "renormalize").method == "logprobs_partial"
    assert build_stage("quality", {}).params.missing_digits == "deita"


def test_ds2_defaults_are_the_papers_rating_range() -> None:
    p = build_stage("ds2_curate", {"rating": "quality"}).params
    assert (p.lo, p.hi) == (4, 9)


def _submodlib_fl(s: np.ndarray, m: int) -> tuple[list[int], list[float]]:
    """submodlib FacilityLocation (dense) naive greedy: memoised max starts at 0, gain Σ_i max(0, s_ij − cur_i)."""
    n = s.shape[0]
    cur = np.zeros(n)
    chosen, gains = [], []
    for _ in range(m):
        best, best_j = -np.inf, -1
        for j in range(n):
            if j in chosen:
                continue
            g = sum(max(0.0, s[i, j] - cur[i]) for i in range(n))
            if g > best:
                best, best_j = g, j
        chosen.append(best_j)
        gains.append(best)
        cur = np.maximum(cur, s[:, best_j])
    return chosen, gains


def test_smart_task_facility_location_ignores_negative_cosines_as_submodlib() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 6))  # random directions: many negative cosines
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    assert (s < 0).sum() > 20
    chosen, gains = task_greedy(x, 5, "facility_location")
    ref_chosen, ref_gains = _submodlib_fl(s, 5)
    assert chosen == ref_chosen and gains == pytest.approx(ref_gains, abs=1e-9)
    assert gains[0] > s[:, chosen[0]].sum()  # the negative cosines were not subtracted


def _graph_cut_reference(s: np.ndarray, m: int, lam: float) -> tuple[list[int], list[float]]:
    """Graph cut f(S) = Σ_{i∈V, j∈S} s_ij − λ Σ_{i,j∈S} s_ij, naive greedy on the objective itself."""
    f = lambda c: float(s[:, c].sum() - lam * s[np.ix_(c, c)].sum()) if c else 0.0  # noqa: E731
    chosen, gains = [], []
    for _ in range(m):
        best_j = max((j for j in range(s.shape[0]) if j not in chosen), key=lambda j: (f([*chosen, j]) - f(chosen), -j))
        gains.append(f([*chosen, best_j]) - f(chosen))
        chosen.append(best_j)
    return chosen, gains


def test_graph_cut_row_and_task_level_match_the_objective() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = (x @ x.T).astype(np.float64)
    ref, ref_gains = _graph_cut_reference(s, 6, 0.4)
    chosen, gains = task_greedy(x, 6, "graph_cut", 0.4)
    assert chosen == ref and gains == pytest.approx(ref_gains, abs=1e-5)
    # the row-level greedy on the full kNN graph (k = n − 1, plain cosine; non-negative vectors, so
    # no cosine is clipped) maximises the same function
    y = np.abs(x)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    ref, ref_gains = _graph_cut_reference((y @ y.T).astype(np.float64), 6, 0.4)
    sel = greedy(similarity_graph(y, 29, similarity="cos"), 6, function="graph_cut", lam=0.4)
    assert sel.indices.tolist() == ref and sel.gains == pytest.approx(ref_gains, abs=1e-4)


def test_log_det_ridge_is_not_silently_replaced_and_the_objective_is_labelled() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = [make_row([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}], id=f"r{i}") for i in range(40)]
    frame = batch_from_rows(rows).with_columns(embedding_series(x))
    for params, ridge in (({"function": "log_det", "budget": 5, "lambda": 0.4}, 0.4), ({"function": "log_det", "budget": 5}, 1.0)):
        kept, _, stats = build_stage("select", params).run_local([frame])
        rep = stats[0].extras["selection"]
        sub = [int(r[1:]) for r in kept["id"].to_list()]
        k = (x @ x.T)[np.ix_(sub, sub)]
        assert rep["ridge"] == ridge
        assert rep["objective_log_det"] == pytest.approx(np.linalg.slogdet(k + ridge * np.eye(5))[1], abs=1e-3)
    kept, _, stats = build_stage("select", {"budget": 5, "k": 5}).run_local([frame])
    rep = stats[0].extras["selection"]
    sub = [int(r[1:]) for r in kept["id"].to_list()]
    dense = float(np.square(np.clip(x @ x[sub].T, None, None)).max(axis=1).sum())  # cos² facility location
    assert "objective" not in rep and "objective_sparse_knn" in rep
    assert rep["dense_facility_location"] == pytest.approx(dense, rel=1e-5)
    assert rep["dense_facility_location"] >= rep["objective_sparse_knn"] - 1e-6


def test_registry_names_only_stages_that_import() -> None:
    """No dangling entry (the old `sample`): every built-in name resolves to a Stage class of that name."""
    import importlib

    from datacraft.stages import registry

    assert "sample" not in stage_names()
    for name, target in registry._BUILTIN.items():
        module, cls = target.split(":")
        assert getattr(importlib.import_module(module), cls).name == name


class _Truncating(ScriptedClient):
    """Cuts every answer whose prompt holds `marker` at max_tokens (finish_reason `length`)."""

    def __init__(self, rules, marker: str) -> None:
        super().__init__(rules)
        self.marker = marker

    def generate(self, requests):
        out = super().generate(requests)
        for req, res in zip(requests, out, strict=True):
            if self.marker in "\n".join(c for _, c in req.messages):
                res.finish_reason = "length"
        return out


def test_reflection_drops_a_truncated_teacher_answer_with_reason_length() -> None:
    from datacraft.stages.synthesize.reflection import ReflectionStage

    def better(prompt: str) -> str:
        return "[Better Answer] A much better answer that" if "Cut me" in prompt else "[Better Answer] A complete better answer. [End]"

    rows = [make_row([{"role": "user", "content": q}, {"role": "assistant", "content": "short"}], id=q) for q in ("Cut me off.", "Keep me.")]
    client = _Truncating([("Better Answer", better), ("", better)], "Cut me")
    stage = ReflectionStage({"mode": "response"}, client=client)
    kept, dropped, _ = stage.run_local([batch_from_rows(rows)])
    assert dropped["drop_reason"].to_list() == ["length"] and dropped["id"].to_list() == ["Cut me off."]
    assert kept.height == 1 and "complete better answer" in kept["messages"][0][1]["content"]
    assert stage.params.max_tokens == 2048


def test_aide_options_cut_to_three_answer_check_resolves_and_no_row_cap() -> None:
    """AIDE post_process keeps 1 correct + num_target_scores − 1 incorrect options (3 for finance);
    the answer checker re-asks the solver when it says the solution is not among the options."""
    from datacraft.io.readers import read_all
    from datacraft.stages.synthesize.multihop import MultiHopStage

    from .conftest import DATA
    from .synth_fakes import multihop_rules

    verdicts: dict[str, int] = {}

    def check(prompt: str) -> str:
        key = prompt.split("Question:")[1].split("Options:")[0]
        verdicts[key] = verdicts.get(key, 0) + 1
        return "<Answer>No</Answer>" if verdicts[key] == 1 else "<Answer>Yes</Answer>"

    client = ScriptedClient([("whether your solution", check), *multihop_rules()])
    seeds, _ = read_all(str(DATA / "selfinstruct_60.jsonl"))
    stage = MultiHopStage({"hops": 1, "personas": 0, "kg": False, "ops": ["reasoning"], "choice_type": "multi_choice", "answer_check": True},
                          client=client, embed=lambda t: np.ones((len(t), 3), dtype=np.float32))
    assert MultiHopStage({}).params.max_rows is None
    kept, _, stats = stage.run_local([seeds.head(1)])
    new = kept.filter(pl.col("source") == "multihop")
    assert new.height >= 1
    for r in new.iter_rows(named=True):
        meta = json.loads(r["meta"]) if isinstance(r["meta"], str) else r["meta"]
        assert sorted(meta["target_scores"].values()) == [0, 0, 1] and "42" in meta["target_scores"]
        assert r["messages"][0]["content"].rstrip().split("\n")[-3].startswith("A. ")  # three options A–C
    c = stats[0].counters
    assert c["multihop.answer_check.no"] == new.height and c["multihop.answer_check.yes"] == new.height
    assert c["multihop.answer_check.resolved"] == new.height


def test_reflection_takes_a_cut_answer_only_when_its_section_closed_before_the_cut() -> None:
    """Cut after `[End]`: the section is whole, so it is taken. Cut inside the section: not taken; with
    `keep_original` the original stays and nothing is dropped."""
    from datacraft.stages.synthesize.reflection import ReflectionStage

    def better(prompt: str) -> str:
        if "Cut me" in prompt:
            return "[Better Answer] A much better answer that"
        return "[Better Answer] A complete better answer. [End]\nAnd then the model rambled on until"

    rows = [make_row([{"role": "user", "content": q}, {"role": "assistant", "content": "short"}], id=q) for q in ("Cut me off.", "Keep me.")]
    client = _Truncating([("Better Answer", better), ("", better)], "")  # every answer hits max_tokens
    kept, dropped, stats = ReflectionStage({"mode": "response", "keep_original": True}, client=client).run_local([batch_from_rows(rows)])
    assert dropped is None or dropped.height == 0
    assert kept.height == 3 and stats[0].created == 1
    assert stats[0].counters["reflection.cut_after_sections"] == 1 and stats[0].counters["reflection.llm_failed.response.length"] == 1
    new = kept.filter(pl.col("lineage").struct.field("method") == "reflection:response")
    assert new["messages"][0][1]["content"] == "A complete better answer."
    _, dropped, _ = ReflectionStage({"mode": "response"}, client=client).run_local([batch_from_rows(rows)])
    assert dropped["drop_reason"].to_list() == ["length"] and dropped["id"].to_list() == ["Cut me off."]

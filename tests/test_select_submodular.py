from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datacraft.core.rows import SCORE_PREFIX, set_scores
from datacraft.stages.select.deita import DeitaSelectStage, deita_filter
from datacraft.stages.select.mixture import (
    SmartMixtureStage,
    equal_budgets,
    proportional_budgets,
    taylor_softmax_budgets,
)
from datacraft.stages.select.submodular import (
    SubmodularSelectStage,
    dense_facility_location,
    greedy,
    log_det_greedy,
    similarity_graph,
)
from datacraft.vectors.embedders import embedding_series

from ._embed_helpers import assert_ledger, clustered, embedded, run_beam


def _dense_greedy(s: np.ndarray, budget: int) -> list[int]:
    cur = np.zeros(s.shape[0])
    sel: list[int] = []
    for _ in range(budget):
        gains = np.maximum(s - cur[:, None], 0).sum(axis=0)
        gains[sel] = -1
        j = int(np.argmax(gains))
        sel.append(j)
        cur = np.maximum(cur, s[:, j])
    return sel


def test_lazy_greedy_equals_dense_brute_force() -> None:
    x = clustered(250, d=24, clusters=15)
    sel = greedy(similarity_graph(x, 249, similarity="cos2"), 25)
    assert sel.indices.tolist() == _dense_greedy(np.square(x @ x.T).astype(np.float64), 25)
    assert np.isclose(sel.objective, dense_facility_location(x, sel.indices), rtol=1e-5)


@pytest.mark.slow
def test_sparse_graph_objective_close_to_dense_on_5k() -> None:
    x = clustered(5000, d=32, clusters=80, noise=0.6)
    budget = 250
    sparse = greedy(similarity_graph(x, 20), budget).indices
    # the dense greedy: lazy greedy on the complete graph (equal to brute force, see the test above)
    dense = greedy(similarity_graph(x, 4999), budget).indices
    f_dense = dense_facility_location(x, dense)
    assert dense_facility_location(x, sparse) >= 0.99 * f_dense
    stochastic = greedy(similarity_graph(x, 20), budget, optimizer="stochastic").indices
    assert dense_facility_location(x, stochastic) >= 0.97 * f_dense


def test_graph_cut_and_log_det() -> None:
    x = clustered(200, d=16, clusters=10)
    gc = greedy(similarity_graph(x, 199, similarity="cos"), 20, function="graph_cut", lam=0.4)
    assert len(set(gc.indices.tolist())) == 20 and np.all(np.diff(gc.gains) <= 1e-9)
    ld = log_det_greedy(x, 12, lam=1.0)
    sub = ld.indices
    assert np.isclose(np.linalg.slogdet((x @ x.T)[np.ix_(sub, sub)] + np.eye(12))[1], ld.objective, rtol=1e-6)


def test_select_stage_budget_scores_weights_and_tokens() -> None:
    frame = embedded("alpaca_llamafactory_200.jsonl")
    kept, dropped, stats = SubmodularSelectStage({"budget": 0.1}).run_local([frame])
    assert_ledger(200, kept, dropped, stats)
    assert kept.height == 20 and set(dropped["drop_reason"]) == {"not selected (budget)"}
    assert kept[SCORE_PREFIX + "select_rank"].to_list() == list(range(1, 21))
    assert (kept[SCORE_PREFIX + "select_gain"].diff().drop_nulls() <= 1e-9).all()
    assert 0 < stats[0].extras["selection"]["coverage_mean_sim"] <= 1
    quality = np.linspace(0, 1, 200)
    weighted, _, _ = SubmodularSelectStage({"budget": 20, "weight": "quality"}).run_local([set_scores(frame, {"quality": quality})])
    assert weighted[SCORE_PREFIX + "quality"].mean() > kept.join(set_scores(frame, {"quality": quality}).select("id", SCORE_PREFIX + "quality"), on="id")[SCORE_PREFIX + "quality"].mean()
    tok, tdropped, _ = SubmodularSelectStage({"budget_tokens": 2000, "token_text": "conversation"}).run_local([frame])
    from datacraft.stages.select.submodular import token_costs

    assert token_costs(tok, "conversation").sum() <= 2000 and tok.height + tdropped.height == 200
    for fn in ("graph_cut", "log_det"):
        k, d, _ = SubmodularSelectStage({"budget": 15, "function": fn}).run_local([frame])
        assert k.height == 15 and d.height == 185


def test_greedi_beam_ledger() -> None:
    frame = embedded("alpaca_llamafactory_200.jsonl")
    stage = SubmodularSelectStage({"budget": 30, "partitions": 3})
    kept, dropped, stats = run_beam(stage, frame, batch_rows=50)
    assert_ledger(200, kept, dropped, stats)
    assert kept.height == 30
    local, _, _ = SubmodularSelectStage({"budget": 30}).run_local([frame])
    from datacraft.vectors.embedders import embeddings_of

    x = embeddings_of(frame)
    pos = {r: i for i, r in enumerate(frame["id"].to_list())}
    ratio = dense_facility_location(x, np.array([pos[r] for r in kept["id"]])) / dense_facility_location(x, np.array([pos[r] for r in local["id"]]))
    assert ratio >= 0.9  # GreeDi's two rounds lose a little against one global greedy


# ---------------------------------------------------------------------------------------------
# SMART


def test_smart_on_t0_tasks() -> None:
    frame = embedded("t0_tasks_720.jsonl")
    kept, dropped, stats = SmartMixtureStage({"budget": 180}).run_local([frame])
    assert_ledger(720, kept, dropped, stats)
    table = stats[0].extras["budgets"]
    assert len(table) == 36 and sum(r["budget"] for r in table) == 180 == kept.height
    assert all(r["budget"] <= r["rows"] for r in table)
    assert [r["budget"] for r in table] != [r["proportional"] for r in table]
    per_task = kept.group_by("task").len()
    assert dict(per_task.iter_rows()) == {r["task"]: r["budget"] for r in table if r["budget"]}
    prop, _, pstats = SmartMixtureStage({"budget": 180, "mixing": "proportional"}).run_local([frame])
    assert prop.group_by("task").len()["len"].to_list() == [5] * 36
    few, _, fstats = SmartMixtureStage({"budget": 100, "num_tasks": 8}).run_local([frame])
    assert few["task"].n_unique() <= 8 and few.height == 100


def test_smart_beam_matches_local() -> None:
    frame = embedded("t0_tasks_720.jsonl")
    stage = SmartMixtureStage({"budget": 90})
    local, _, _ = stage.run_local([frame])
    kept, dropped, stats = run_beam(stage, frame, batch_rows=200)
    assert_ledger(720, kept, dropped, stats)
    assert set(kept["id"]) == set(local["id"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-3, 30, allow_nan=False), st.integers(0, 50)), min_size=1, max_size=25),
    st.integers(0, 600),
)
def test_taylor_budget_rule_properties(tasks: list[tuple[float, int]], budget: int) -> None:
    gains = [g for g, _ in tasks]
    caps = [c for _, c in tasks]
    if sum(caps) < budget:
        with pytest.raises(ValueError):
            taylor_softmax_budgets(gains, caps, budget)
        return
    alloc = taylor_softmax_budgets(gains, caps, budget)
    assert sum(alloc) == budget
    assert all(0 <= a <= c for a, c in zip(alloc, caps, strict=True))
    # without caps binding, shares follow the Taylor softmax within one row
    if all(c >= budget for c in caps):
        w = np.array([1 + g + g * g / 2 for g in gains])
        assert np.all(np.abs(np.array(alloc) - budget * w / w.sum()) <= 1 + 1e-9)
    for rule in (proportional_budgets, equal_budgets):
        other = rule(caps, budget)
        assert sum(other) == budget and all(0 <= a <= c for a, c in zip(other, caps, strict=True))


def test_taylor_budget_worked_example() -> None:
    # gains 2, 1, 0 → weights 5, 2.5, 1 → shares 10/17, 5/17, 2/17 of 10 = 5.88, 2.94, 1.18 → 5, 2, 1 + 2 round-robin
    assert taylor_softmax_budgets([2.0, 1.0, 0.0], [100, 100, 100], 10) == [6, 3, 1]
    # caps: the first task holds 2; its excess goes round-robin to the others
    assert taylor_softmax_budgets([2.0, 1.0, 0.0], [2, 100, 100], 10) == [2, 5, 3]



def test_proportional_budget_may_take_every_row_but_no_more() -> None:
    assert proportional_budgets([3, 5, 2], 10) == [3, 5, 2]  # a budget of all the rows keeps all of them
    assert proportional_budgets([30, 50, 20], 10) == [3, 5, 2]
    with pytest.raises(ValueError, match="fewer than the budget"):
        proportional_budgets([3, 5, 2], 11)


# ---------------------------------------------------------------------------------------------
# Deita


def test_deita_filter_equals_one_by_one_loop() -> None:
    x = clustered(300, d=16, clusters=12, noise=0.3)
    order = np.random.default_rng(1).permutation(300)
    kept, _, _ = deita_filter(x, order, 0.9, budget=60, chunk=17)
    naive: list[int] = []
    for i in order:
        if len(naive) == 60:
            break
        if not naive or (x[naive] @ x[i]).max() <= 0.9:
            naive.append(int(i))
    assert kept.tolist() == naive


def test_deita_stage_reasons() -> None:
    frame = embedded("alpaca_llamafactory_200.jsonl", "instruction")
    rng = np.random.default_rng(0)
    frame = set_scores(frame, {"complexity": rng.uniform(1, 6, 200), "quality": rng.uniform(1, 6, 200)})
    dup = frame.head(5).with_columns(frame["id"].head(5) + ":dup")
    from datacraft.core.rows import concat_batches

    frame = concat_batches([frame, dup])
    kept, dropped, stats = DeitaSelectStage({"budget": 60, "threshold": 0.9, "text": "instruction"}).run_local([frame])
    assert_ledger(205, kept, dropped, stats)
    assert kept.height == 60
    reasons = set(dropped["drop_reason"])
    assert reasons <= {"too similar", "not selected (budget)"} and "not selected (budget)" in reasons
    too_similar = int((dropped["drop_reason"] == "too similar").sum())
    assert stats[0].extras["deita"] == {"rows_in": 205, "selected": 60, "too_similar": too_similar, "threshold": 0.9, "sort": "deita"}
    evol = kept[SCORE_PREFIX + "evol_score"].to_list()
    assert evol[0] == max(frame[SCORE_PREFIX + "complexity"] * frame[SCORE_PREFIX + "quality"])
    x = np.stack(kept["embedding"].to_list())
    s = x @ x.T
    np.fill_diagonal(s, 0)
    assert s.max() <= 0.9 + 1e-5
    _ = embedding_series



def test_deita_report_counts_the_rows_in_kept_and_too_similar() -> None:
    """The `deita` extras (shown in the report) count exactly what the stage kept and dropped."""
    frame = embedded("alpaca_llamafactory_200.jsonl", "instruction").head(40)
    rng = np.random.default_rng(2)
    frame = set_scores(frame, {"complexity": rng.uniform(1, 6, 40), "quality": rng.uniform(1, 6, 40)})
    from datacraft.core.rows import concat_batches

    frame = concat_batches([frame, frame.head(3).with_columns(frame["id"].head(3) + ":dup")])
    kept, dropped, stats = DeitaSelectStage({"budget": 30, "threshold": 0.9, "text": "instruction"}).run_local([frame])
    info = stats[0].extras["deita"]
    too_similar = int((dropped["drop_reason"] == "too similar").sum())
    assert too_similar >= 3 and kept.height == 30
    assert (info["rows_in"], info["selected"], info["too_similar"]) == (43, 30, too_similar)

def test_row_weights_scale_a_score_into_0_05_to_1() -> None:
    """The weakest row keeps 1/20 of the best row's weight (never 0, so it can still cover others)."""
    import polars as pl

    from datacraft.stages.select.submodular import row_weights

    frame = set_scores(pl.DataFrame({"id": list("abcd")}), {"quality": [1.0, 3.0, None, 2.0]})
    np.testing.assert_allclose(row_weights(frame, "quality"), [0.05, 1.0, 0.05, 0.525])
    np.testing.assert_allclose(row_weights(frame, "quality", power=2.0), [0.0025, 1.0, 0.0025, 0.275625])
    np.testing.assert_allclose(row_weights(set_scores(frame, {"quality": [2.0] * 4}), "quality"), [1.0] * 4)
    assert row_weights(frame, None) is None
    with pytest.raises(ValueError, match="not found"):
        row_weights(frame, "missing")


def test_deita_on_no_rows_keeps_and_drops_nothing() -> None:
    frame = embedded("alpaca_llamafactory_200.jsonl", "instruction").head(0)
    kept, dropped, stats = DeitaSelectStage({"budget": 10}).run_local([frame])
    assert kept.height == 0 and (dropped is None or dropped.height == 0) and stats[0].n_in == 0


def test_log_det_selection_uses_a_unit_ridge_by_default() -> None:
    """The stage's log-det default is det(L_S + I) (the ridge 1.0), not graph cut's λ 0.4."""
    frame = embedded("alpaca_llamafactory_200.jsonl", "instruction").head(60)
    kept, _, _ = SubmodularSelectStage({"function": "log_det", "budget": 8, "text": "instruction"}).run_local([frame])
    x = np.stack(frame["embedding"].to_list()).astype(np.float64)
    ref = log_det_greedy(x, 8, lam=1.0)
    assert set(kept["id"].to_list()) == {frame["id"][int(i)] for i in ref.indices}
    assert set(kept["id"].to_list()) != {frame["id"][int(i)] for i in log_det_greedy(x, 8, lam=0.4).indices}

"""AIDE multi-hop expansion: batching per hop, lineage, residual, budget, failures, personas, prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datacraft.io.readers import read_all
from datacraft.stages.synthesize import prompts
from datacraft.stages.synthesize.multihop import MultiHopStage, load_personas, top_personas

from .conftest import DATA
from .synth_fakes import ScriptedClient, check_golden, multihop_rules, run_pipeline

SEEDS = str(DATA / "selfinstruct_60.jsonl")


@pytest.fixture(scope="module")
def seeds() -> pl.DataFrame:
    kept, _ = read_all(SEEDS)
    return kept.head(3)


def _fake_embed(texts: list[str]) -> np.ndarray:
    v = np.array([[len(t) % 7 + 1.0, t.count("e") + 1.0, 1.0] for t in texts], dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _run(seeds: pl.DataFrame, client: ScriptedClient, **params: object) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    base = {"hops": 2, "personas": 2, "persona_select": "first", "max_rows": 500}
    stage = MultiHopStage({**base, **params}, client=client, embed=_fake_embed)
    kept, dropped, stats = stage.run_local([seeds])
    s = stats[0]
    assert s.n_in + s.created == s.kept + sum(s.dropped.values())  # the ledger
    return kept, dropped, s


def _prompt(req) -> str:  # noqa: ANN001
    return "\n".join(c for _, c in req.messages)


def test_each_hop_step_is_one_batched_call(seeds: pl.DataFrame) -> None:
    client = ScriptedClient(multihop_rules())
    kept, dropped, s = _run(seeds, client)
    # attributes: 2 extracted + 1 KG tail → 3 attributes × 3 ops + 2 personas = 11 children per node
    sizes = [len(c) for c in client.calls]
    assert sizes == [3, 3, 33, 33, 33, 33, 363, 363]  # hop1: extract, kg, rewrite, solve; hop2: the same
    assert s.created == 33 + 363 and dropped.height == 0 and kept.height == 3 + 396
    new = kept.filter(pl.col("source") == "multihop")
    methods = set(new["lineage"].struct.field("method").to_list())
    assert {"multihop:hop1:reasoning", "multihop:hop1:persona", "multihop:hop2:constraint"} <= methods
    per_method = new["lineage"].struct.field("method").str.strip_prefix("multihop:").value_counts()
    assert s.extras["multihop_rows"] == dict(zip(per_method["method"], per_method["count"], strict=True))  # the report's counts per hop and op
    assert {e["method"] for e in s.extras["examples"]} <= set(s.extras["multihop_rows"])
    created = {(r["messages"][0]["content"][:300], r["messages"][1]["content"][:300]) for r in new.iter_rows(named=True)}
    assert s.extras["examples"] and all((e["question"], e["answer"]) in created for e in s.extras["examples"])
    by_id = {r["id"]: r for r in kept.iter_rows(named=True)}
    for r in new.iter_rows(named=True):
        meta = json.loads(r["meta"])
        seed_id, parent_id = r["lineage"]["parent_ids"]
        assert seed_id == meta["seed_id"] and parent_id == meta["parent_id"] and by_id[parent_id]
        assert r["lineage"]["method"] == f"multihop:hop{meta['hop']}:{meta['op']}"
        if meta["hop"] == 2:
            assert json.loads(by_id[parent_id]["meta"])["seed_id"] == seed_id
        assert (meta["attribute"] is not None) == (meta["branch"] == "relevance")
        assert r["messages"][1]["content"].startswith("Answer to")  # from the separate solver call
    assert "fermentation" in {json.loads(m)["attribute"] for m in new["meta"].to_list()}  # the KG tail


def test_residual_from_hop_two_and_the_reference_quirk(seeds: pl.DataFrame) -> None:
    seed_text = seeds["messages"][0][0]["content"]
    for quirk in (False, True):
        client = ScriptedClient(multihop_rules())
        _run(seeds.head(1), client, personas=0, kg=False, residual_quirk=quirk)
        hop1, hop2 = client.calls[1], client.calls[4]  # the rewrite calls
        assert not any("Stay close to the task" in _prompt(r) for r in hop1)
        for req in hop2:
            text = _prompt(req)
            if "You are a prompt writer" not in text:
                continue
            with_residual = "Stay close to the task of this original prompt" in text and seed_text[:60] in text
            is_reasoning = prompts.OP_EXPECTATIONS["reasoning"] in text
            assert with_residual == (is_reasoning or not quirk)


def test_budget_stops_cleanly_and_spreads_over_seeds(seeds: pl.DataFrame) -> None:
    client = ScriptedClient(multihop_rules())
    kept, _, s = _run(seeds, client, max_rows=20)
    assert s.created == 20 and s.counters["multihop.budget_skipped"] > 0
    new = kept.filter(pl.col("source") == "multihop")
    per_seed = new["lineage"].struct.field("parent_ids").list.first().value_counts()
    assert per_seed.height == 3 and per_seed["count"].min() >= 6  # round-robin, not seed 1 first
    kept, _, s = _run(seeds, ScriptedClient(multihop_rules()), max_rows=0)  # none at all: the seeds pass through
    assert s.created == 0 and kept["id"].to_list() == seeds["id"].to_list()
    with pytest.raises(ValueError, match="max_rows"):
        MultiHopStage({"max_rows": -1})


def test_failures_become_dropped_rows_with_reasons(seeds: pl.DataFrame) -> None:
    client = ScriptedClient(multihop_rules(bad_rewrite_marker="simple constraints"), fail_when="Persona question")
    kept, dropped, s = _run(seeds.head(2), client, hops=1)
    reasons = dict(zip(*np.unique(dropped["drop_reason"].to_list(), return_counts=True), strict=True))
    assert reasons == {"parse_failed": 6, "solver_llm_error": 4}  # 2 seeds × 3 attrs; 2 seeds × 2 personas
    assert s.counters["multihop.parse_failed.missing"] == 6
    assert all(len(p) == 2 for p in dropped["lineage"].struct.field("parent_ids").to_list())
    assert set(dropped["drop_stage"]) == {"multihop"}


def test_multi_choice_and_self_reflection(seeds: pl.DataFrame) -> None:
    client = ScriptedClient(multihop_rules())
    kept, _, s = _run(seeds.head(1), client, hops=1, choice_type="multi_choice", reflection=True, max_improve_relevance=2, max_improve_diversity=1)
    new = kept.filter(pl.col("source") == "multihop")
    for r in new.iter_rows(named=True):
        meta = json.loads(r["meta"])
        assert sorted(meta["target_scores"].values()) == [0, 0, 1]  # AIDE post_process: 3 options
        letter = r["messages"][1]["content"][0]
        assert f"{letter}. 42" in r["messages"][0]["content"] and r["messages"][1]["content"] == f"{letter}. 42"
        # the judge gives rewritten questions 3 (improved, then accepted at 8) and persona prompts 8
        assert meta["reflection"]["accepted"] is True
        assert meta["reflection"]["attempts"] == (1 if meta["branch"] == "relevance" else 0)
    assert s.counters["multihop.reflection.improved"] == 9


def test_persona_selection() -> None:
    personas = load_personas()
    assert len(personas) >= 40 and len(set(personas)) == len(personas)
    sims = np.array([0.9, 0.2, 0.8, 0.95, 0.1, 0.85])
    assert top_personas(sims, 3, None) == [3, 0, 5]
    assert top_personas(sims, 2, 0.5, quirk=True) == [3, 5]  # the reference: last indices above threshold
    assert top_personas(sims, 5, 0.82) == [3, 0, 5]


def test_golden_prompts(seeds: pl.DataFrame) -> None:
    q = seeds["messages"][0][0]["content"]
    check_golden("multihop_analyzer", prompts.analyzer_messages(q))
    check_golden("multihop_rewrite_constraint_residual", prompts.rewrite_messages("constraint", q, "writing", "conciseness", seed=q))
    check_golden("multihop_persona", prompts.persona_messages(q, "Grammarly", "writing", load_personas()[0]))
    check_golden("multihop_solver_mc", prompts.solver_messages(q, "multi_choice"))
    check_golden("multihop_judge_relevance", prompts.judge_messages("relevance", q, "Shorten this sentence."))


@pytest.mark.slow
def test_real_model_in_beam(tmp_path: Path) -> None:
    """The embedded model end to end (tiny: 1 seed, 1 hop, 1 persona, 16 tokens)."""
    stage = {"name": "multihop", "hops": 1, "kg": False, "ops": ["reasoning"], "personas": 1, "persona_select": "first",
             "strict_tags": False, "max_tokens": 16, "solver_max_tokens": 16}
    report, rows, dropped = run_pipeline(tmp_path, SEEDS, [stage], input={"limit": 1}, llm={"batch_size": 8})
    assert report["ledger_ok"]
    st = report["stages"][1]
    assert st["in"] == 1 and st["created"] >= 1 and st["kept"] + sum(st["dropped"].values()) == 1 + st["created"]
    assert st["counters"]["llm.completion_tokens"] > 0
    new = rows.filter(pl.col("source") == "multihop")
    assert new.height >= 1
    for r in new.iter_rows(named=True):
        assert r["lineage"]["parent_ids"] == ["user_oriented_task_0:0", "user_oriented_task_0:0"]
        assert r["lineage"]["method"].startswith("multihop:hop1:") and r["messages"][1]["content"].strip()


def test_binary_questions_get_the_solvers_yes_or_no(seeds: pl.DataFrame) -> None:
    rules = [("Yes or No, inside <Answer>", lambda p: "Thinking it over.\n<Answer>no</Answer>"), *multihop_rules()]
    kept, dropped, s = _run(seeds.head(1), ScriptedClient(rules), hops=1, choice_type="binary")
    new = kept.filter(pl.col("source") == "multihop")
    assert new.height == s.created > 0 and dropped.height == 0
    for r in new.iter_rows(named=True):
        assert r["messages"][1]["content"] == "No"
        assert json.loads(r["meta"])["target_scores"] == {"Yes": 0, "No": 1}
    unsure = [("Yes or No, inside <Answer>", lambda p: "<Answer>maybe</Answer>"), *multihop_rules()]
    _, dropped, s = _run(seeds.head(1), ScriptedClient(unsure), hops=1, choice_type="binary")
    assert dropped.height == s.created and set(dropped["drop_reason"]) == {"solver_parse_failed"}
    assert s.counters["multihop.solver_parse_failed"] == s.created


def test_too_long_questions_are_sent_back_to_be_shortened_not_judged(seeds: pl.DataFrame) -> None:
    client = ScriptedClient(multihop_rules())
    kept, _, s = _run(seeds.head(1), client, hops=1, kg=False, reflection=True, max_chars=1, max_improve_relevance=2, max_improve_diversity=1)
    prompts_sent = [_prompt(r) for call in client.calls for r in call]
    assert not any("Rate how" in p for p in prompts_sent)  # every question is longer than 1 character
    improve = [p for p in prompts_sent if "Improve the candidate" in p]
    assert improve and all("much longer than the reference prompt" in p for p in improve)
    new = kept.filter(pl.col("source") == "multihop")
    assert new.height == s.counters["multihop.reflection.not_accepted"] > 0
    for r in new.iter_rows(named=True):
        meta = json.loads(r["meta"])
        assert meta["reflection"]["accepted"] is False and meta["reflection"]["score"] is None
        assert meta["reflection"]["attempts"] == (2 if meta["branch"] == "relevance" else 1)


def test_personas_file_in_jsonl_or_text(tmp_path: Path) -> None:
    path = tmp_path / "personas.jsonl"
    path.write_text('{"persona": "A chemist who bakes."}\n\n{"text": "  A sailor learning Go.  "}\nA librarian in Oslo.\n{"other": 1}\n')
    assert load_personas(str(path)) == ["A chemist who bakes.", "A sailor learning Go.", "A librarian in Oslo."]


def test_a_seed_without_a_question_is_counted_and_kept_as_is(seeds: pl.DataFrame) -> None:
    from datacraft.core.rows import batch_from_rows, make_row

    blank = batch_from_rows([make_row([{"role": "user", "content": "  "}, {"role": "assistant", "content": "An answer."}], id="blank"),
                             make_row([{"role": "assistant", "content": "A greeting."}], id="no_user")])
    frame = pl.concat([seeds.head(1), blank], how="diagonal_relaxed")
    kept, dropped, s = _run(frame, ScriptedClient(multihop_rules()), hops=1)
    assert s.counters["multihop.seed_unusable"] == 2 and dropped.height == 0
    assert {"blank", "no_user"} <= set(kept["id"].to_list())
    parents = {r["lineage"]["parent_ids"][0] for r in kept.filter(pl.col("source") == "multihop").iter_rows(named=True)}
    assert parents == {seeds["id"][0]}


def test_similar_personas_use_the_injected_embedder(seeds: pl.DataFrame) -> None:
    """`persona_select: similar` ranks personas with the embedder given to the stage (no model load)."""
    seen: list[str] = []

    def embed(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return _fake_embed(texts)

    stage = MultiHopStage({"hops": 1, "personas": 1, "persona_select": "similar", "kg": False, "ops": ["reasoning"]},
                          client=ScriptedClient(multihop_rules()), embed=embed)
    kept, _, stats = stage.run_local([seeds.head(1)])
    assert set(load_personas()) <= set(seen)  # every persona embedded once, by the injected function
    assert stats[0].created >= 1 and any("persona" in m for m in kept["lineage"].struct.field("method").drop_nulls().to_list())

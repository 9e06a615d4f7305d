"""`datacraft lift` on a real slice of AlpacaEval (7 generators × 30 instructions): the split, the arms,
the statistics, the held-out loss against TRL's own, and real tiny training runs."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from datacraft.core.rows import response_expr
from datacraft.io.readers import read_all
from datacraft.train.lift import (
    ArmSpec,
    LiftConfig,
    PoolSpec,
    StudentSpec,
    choose_length,
    choose_oracle,
    choose_random,
    frame_generators,
    instruction_key,
    load_lift_config,
    read_records,
    run_lift,
    split_by_instruction,
    summarize,
    take_candidates,
    to_batch,
)

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
SLICE = str(DATA / "alpaca_eval_7gen_30.jsonl")
REF = "gpt4_1106_preview"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return read_records([SLICE])


@pytest.fixture(scope="module")
def split(records):
    return split_by_instruction(records, PoolSpec(files=SLICE, heldout=8, split_seed=3))


@pytest.fixture(scope="module")
def pool(split):
    return to_batch(split.pool, "pool")


def test_split_is_by_instruction(records, split) -> None:
    pool_keys = {instruction_key(r) for r in split.pool}
    held_keys = {instruction_key(r) for r in split.heldout}
    assert not pool_keys & held_keys  # no held-out instruction is in the pool, under any generator
    assert len(held_keys) == len(split.heldout) == 8
    assert {r["generator"] for r in split.heldout} == {REF}
    assert len(pool_keys) == 22 and len(split.pool) == 22 * 7  # every generator's answer to every pool instruction
    assert Counter(Counter(instruction_key(r) for r in split.pool).values()) == {7: 22}
    again = split_by_instruction(records, PoolSpec(files=SLICE, heldout=8, split_seed=3))
    other = split_by_instruction(records, PoolSpec(files=SLICE, heldout=8, split_seed=4))
    assert again.heldout_keys == split.heldout_keys
    assert other.heldout_keys != split.heldout_keys


def test_builtin_arms_choose_the_right_rows(pool) -> None:
    oracle = choose_oracle(pool, 10, seed=0, reference=REF)
    assert oracle.height == 10 and set(frame_generators(oracle)) == {REF}
    assert choose_oracle(pool, 50, seed=0, reference=REF).height == 22  # all the reference has
    lengths = pool.select(response_expr().str.len_chars()).to_series().to_list()
    longest = choose_length(pool, 12, seed=0)
    chosen = sorted(longest.select(response_expr().str.len_chars()).to_series().to_list())
    assert chosen == sorted(lengths)[-12:]
    a, b, c = (choose_random(pool, 20, seed=s)["id"].to_list() for s in (0, 0, 1))
    assert a == b and a != c and len(set(a)) == 20


def test_recipe_rows_ranked_and_filled(pool) -> None:
    scored = pool.with_columns((response_expr().str.len_chars() % 97).cast(float).alias("scores.toy"))
    top = take_candidates(scored, pool, 5, seed=0, score="toy", salt="x")[0]["scores.toy"].to_list()
    assert sorted(top, reverse=True) == sorted(scored["scores.toy"].to_list(), reverse=True)[:5]
    low = take_candidates(scored, pool, 5, seed=0, score="-toy", salt="x")[0]["scores.toy"].to_list()
    assert sorted(low) == sorted(scored["scores.toy"].to_list())[:5]
    few = scored.head(3)
    rows, filled = take_candidates(few, pool, 10, seed=0, score="toy", salt="x")
    assert filled == 7 and rows.height == 10 and rows["id"].n_unique() == 10
    assert set(few["id"].to_list()) <= set(rows["id"].to_list())


def test_paired_difference_and_gap_closed() -> None:
    losses = {"random": {0: 2.0, 1: 2.1, 2: 2.2}, "oracle": {0: 1.5, 1: 1.6, 2: 1.8}, "default": {0: 1.8, 1: 1.85, 2: 2.1}}
    out = summarize(losses, "random", "oracle", "default", 0.5)
    d = out["arms"]["default"]["diff_vs_baseline"]
    assert d["per_seed"] == pytest.approx({"0": 0.2, "1": 0.25, "2": 0.1})
    assert d["mean"] == pytest.approx(0.55 / 3)
    assert d["sd"] == pytest.approx(math.sqrt(((0.2 - 0.55 / 3) ** 2 + (0.25 - 0.55 / 3) ** 2 + (0.1 - 0.55 / 3) ** 2) / 2))
    assert d["se"] == pytest.approx(d["sd"] / math.sqrt(3))
    assert d["beyond_2sd"] is True and d["wins"] == 3
    assert out["arms"]["default"]["mean"] == pytest.approx(5.75 / 3)
    assert out["arms"]["default"]["sd"] == pytest.approx(float(np.std([1.8, 1.85, 2.1], ddof=1)))
    gap = (2.1 - 5.75 / 3) / (2.1 - 4.9 / 3)
    assert out["arms"]["default"]["gap_closed"] == pytest.approx(gap)  # 0.393
    assert out["arms"]["default"]["gap_closed_per_seed"]["0"] == pytest.approx(0.2 / 0.5)
    assert out["arms"]["oracle"]["gap_closed"] == pytest.approx(1.0)
    assert out["goal"]["checks"] == {"gap_closed": False, "beyond_2sd": True, "seeds>=3": True}
    assert out["goal"]["met"] is False
    # paired on the seeds both arms ran; one seed: no sd, never "beyond 2 sd"
    one = summarize({"random": {0: 2.0, 1: 2.1}, "oracle": {0: 1.0}, "x": {1: 1.9}}, "random", "oracle")
    assert one["arms"]["x"]["diff_vs_baseline"]["per_seed"] == pytest.approx({"1": 0.2})
    assert one["arms"]["x"]["diff_vs_baseline"]["sd"] is None and not one["arms"]["x"]["diff_vs_baseline"]["beyond_2sd"]


def test_shipped_config_and_quick_profile() -> None:
    path = ROOT / "configs" / "lift_alpacaeval.yaml"
    full, quick = load_lift_config(path), load_lift_config(path, quick=True)
    assert [a.name for a in quick.arms] == ["random", "length", "oracle", "default"]  # config order
    assert (quick.budget, quick.seeds, quick.student.max_length) == (100, [0], 128)
    assert (full.budget, full.seeds) == (600, [0, 1, 2])
    assert full.arm("pref_head").score == "pref_head" and full.arm("default").set == ["select.budget={budget}"]
    assert load_lift_config(path, ["budget=300", "student.learning_rate=1e-4"]).budget == 300
    with pytest.raises(ValueError, match="exactly one"):
        ArmSpec(name="bad", recipe="x.yaml", stages=[{"name": "heuristics"}])


def test_default_arm_is_the_main_jobs_curation_without_synthesis_or_training() -> None:
    from datacraft.pipeline.config import load_config
    from datacraft.train.lift import LiftError, recipe_data

    full = load_lift_config(ROOT / "configs" / "lift_alpacaeval.yaml")
    data = recipe_data(full.arm("default"), ROOT / "configs")
    names = [s["name"] for s in data["stages"]]
    assert names == ["heuristics", "filter", "exact_dedup", "pref_head", "complexity", "embed", "diversity", "semantic_dedup", "select"]
    assert load_config(None, [], data={**data, "input": {"path": "x.jsonl"}}).stage_labels()[-1] == "select"
    with pytest.raises(LiftError, match=r"skip names \['mosiac'\].*'mosaic'"):
        recipe_data(ArmSpec(name="typo", recipe="configs/default.yaml", skip=["mosiac"]), ROOT / "configs")


@pytest.fixture(scope="module")
def student_and_model(split):
    from datacraft.train.lift import Student

    heldout = to_batch(split.heldout, REF).head(5)
    student = Student(StudentSpec(max_length=80, bf16=False), heldout)
    return heldout, student, student.load()


def test_heldout_loss_is_token_weighted_and_ignores_padding(student_and_model) -> None:
    """The batched evaluator gives each row the same loss as one row at a time; the mean weights rows by answer tokens."""
    from datacraft.train.lift import answer_nll

    _, student, model = student_and_model
    mean, tokens, batched = answer_nll(model, student.heldout, 80, 3, False, student.pad_id)
    _, _, single = answer_nll(model, student.heldout, 80, 1, False, student.pad_id)
    assert batched == pytest.approx(single, abs=2e-4, nan_ok=True)
    counts = [max(0, min(len(ids), 80) - p) for ids, p in student.heldout]
    assert tokens == sum(counts) and min(counts) < max(counts)  # rows of different lengths share a padded batch
    assert mean == pytest.approx(np.nansum(np.array(single) * counts) / tokens, abs=1e-5)


@pytest.mark.slow
def test_heldout_loss_equals_trl_eval_loss(student_and_model) -> None:
    """One row's held-out loss equals TRL's own eval loss on it (same tokenization, answer tokens only)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from datacraft.stages.handoff.export import convert
    from datacraft.train.lift import answer_nll

    heldout, student, model = student_and_model
    _, _, single = answer_nll(model, student.heldout, 80, 1, False, student.pad_id)
    rows, _ = convert(heldout.head(1), "sft", "prompt_completion", keep=())
    args = SFTConfig(output_dir="/tmp/datacraft_test_lift_trl", max_length=80, per_device_eval_batch_size=1, report_to="none",
                     use_cpu=True, bf16=False)
    ds = Dataset.from_list(rows.to_dicts())
    trl_loss = SFTTrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds, processing_class=student.tokenizer).evaluate()["eval_loss"]
    assert single[0] == pytest.approx(trl_loss, abs=1e-4)


def _tiny(tmp_path: Path, arms: list, seeds: list[int]) -> LiftConfig:
    return LiftConfig(
        name="tiny", pool=PoolSpec(files=SLICE, heldout=4), budget=4, seeds=seeds, arms=arms, goal_arm=None,
        student=StudentSpec(max_length=96, max_steps=1, batch_size=4, train_layers=1, eval_batch_size=4, learning_rate=1e-3),
        output=str(tmp_path / "out"),
    )


def test_one_real_tiny_training_run(tmp_path) -> None:
    """TRL trains the student on 4 rows per arm; the JSON holds each arm's loss and the paired difference."""
    cfg = _tiny(tmp_path, ["random", "oracle"], [0])
    result = run_lift(cfg, log=lambda _m: None)
    saved = json.loads((tmp_path / "out" / "lift.json").read_text())
    for arm in ("random", "oracle"):
        run = json.loads((tmp_path / "out" / "runs" / f"{arm}__s0.json").read_text())
        assert saved["arms"][arm]["losses"]["0"] == pytest.approx(run["loss"])
        assert run["steps"] == 1 and run["train_tokens"] > 0
        assert run["loss"] != pytest.approx(saved["base_loss"], abs=1e-6)  # training moved the model
    diff = saved["arms"]["oracle"]["diff_vs_baseline"]["per_seed"]["0"]
    assert diff == pytest.approx(saved["arms"]["random"]["losses"]["0"] - saved["arms"]["oracle"]["losses"]["0"])
    assert saved["arms"]["oracle"]["mix"] == {REF: 1.0} and saved["arms"]["oracle"]["gap_closed"] == pytest.approx(1.0)
    assert result["heldout"]["rows"] == 4 and '<section id="lift">' in (tmp_path / "out" / "lift.html").read_text()


@pytest.mark.slow
def test_recipe_arm_through_the_pipeline_and_cache(tmp_path) -> None:
    """A recipe arm runs its stages through the Beam pipeline and ranks by its score; an unregistered
    stage skips its arm; a rerun with one more seed only trains the new seed."""
    arms = ["random", "oracle", "length",
            {"name": "ttr", "stages": [{"name": "heuristics"}], "score": "lexical_diversity"},
            {"name": "pref_head", "stages": [{"name": "pref_head"}], "score": "pref_head"}]
    cfg = _tiny(tmp_path, arms, [0])
    first = run_lift(cfg, log=lambda _m: None)
    assert "pref_head" in first["skipped"] and "pref_head" not in first["arms"]
    assert first["arms"]["ttr"]["recipe_run"]["stages"] == ["heuristics"]
    kept, _ = read_all(str(tmp_path / "out" / "recipes" / "ttr" / "data"))
    assert kept.height == first["pool"]["rows"]  # heuristics drops nothing
    score = dict(zip(kept["id"].to_list(), kept["scores.lexical_diversity"].to_list(), strict=True))
    ids = json.loads((tmp_path / "out" / "runs" / "ttr__s0.json").read_text())["ids"]
    assert sorted(score[i] for i in ids) == sorted(score.values())[-4:]
    again = run_lift(cfg.model_copy(update={"seeds": [0, 1]}), log=lambda _m: None)
    assert again["timing"]["trained_now"] == 4  # seed 1 of the 4 arms; seed 0 reused
    assert again["arms"]["random"]["losses"]["0"] == first["arms"]["random"]["losses"]["0"]
    assert again["arms"]["length"]["diff_vs_baseline"]["sd"] is not None

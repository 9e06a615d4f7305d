"""IFD / r-IFD with the embedded student (SmolLM2-135M) on real Alpaca rows."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from datacraft.core.rows import batch_from_rows, make_row
from datacraft.io.readers import read_all
from datacraft.stages.registry import build_stage
from datacraft.stages.score.ifd import (
    ALPACA_HEADER,
    VICUNA_SYSTEM,
    IFDScorer,
    ratios,
    scores_from_losses,
    target_losses,
)

from .conftest import DATA


@pytest.fixture(scope="module")
def scorer() -> IFDScorer:
    return IFDScorer("embedded", device="cpu", max_length=256, batch_size=4)


@pytest.fixture(scope="module")
def alpaca() -> pl.DataFrame:
    rows, _ = read_all(str(DATA / "alpaca_llamafactory_200.jsonl"))
    return rows


def _pairs(frame: pl.DataFrame, n: int) -> tuple[list[str], list[str]]:
    from datacraft.core.rows import instruction_expr, response_expr

    sel = frame.head(n).select(instruction_expr().alias("x"), response_expr().alias("y"))
    return sel["x"].to_list(), sel["y"].to_list()


def _direct_loss(model, context: list[int], target: list[int]) -> float:
    """The unbatched reference: HF's own masked mean loss over the target tokens."""
    import torch

    ids = torch.tensor([context + target])
    labels = torch.tensor([[-100] * len(context) + target])
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=labels).loss)


def test_ratio_forms_and_edge_cases() -> None:
    lr, pr = ratios(0.696, 0.761)  # Cherry's worked example: IFD ≈ 0.915
    assert lr == pytest.approx(0.9146, abs=1e-4)
    assert pr == pytest.approx(math.exp(0.696 - 0.761))
    assert ratios(1.0, 0.0) == (0.0, math.exp(1.0))  # zero denominator → 0 (loss form)
    assert all(math.isnan(v) for v in ratios(math.nan, 1.0))
    s = scores_from_losses(2.0, 1.0, 1.0, 2.0)
    assert s.ifd("loss_ratio") == 2.0 and s.ifd() == pytest.approx(math.e)
    assert s.rifd("loss_ratio") == 0.5 and s.rifd("ppl_ratio") == pytest.approx(math.exp(-1))
    with pytest.raises(ValueError):
        s.ifd("bogus")


def test_batched_scores_match_unbatched_reference(scorer: IFDScorer, alpaca: pl.DataFrame) -> None:
    xs, ys = _pairs(alpaca, 6)
    xs.append("Say hi.")
    ys.append("")  # empty response → NaN IFD, r-IFD still defined
    batched = scorer.score(xs, ys, reverse=True)
    for x, y, got in zip(xs, ys, batched, strict=True):
        items = scorer.items(x, y, reverse=True)
        ref = [_direct_loss(scorer.model, c, t) if t else math.nan for c, t in items]
        for value, want in zip((got.loss_cond, got.loss_direct, got.rloss_cond, got.rloss_direct), ref, strict=True):
            if math.isnan(want):
                assert math.isnan(value)
            else:
                assert value == pytest.approx(want, abs=1e-4)
    assert math.isnan(batched[-1].ifd()) and not math.isnan(batched[-1].rifd())
    assert batched[0].ifd_loss_ratio == pytest.approx(batched[0].loss_cond / batched[0].loss_direct)


def test_mismatched_responses_score_higher_ifd(alpaca: pl.DataFrame) -> None:
    scorer = IFDScorer("embedded", device="cpu", max_length=160, batch_size=6)
    xs, ys = _pairs(alpaca, 12)
    shuffled = ys[5:] + ys[:5]  # every instruction gets another row's response
    matched = scorer.score(xs, ys, reverse=True)
    mismatched = scorer.score(xs, shuffled, reverse=True)
    above = lambda res, f: np.mean([r.ifd(f) > 1 for r in res])  # noqa: E731
    for form in ("ppl_ratio", "loss_ratio"):
        assert above(mismatched, form) > above(matched, form)
    # the response's own instruction is easier to recover from it: lower r-IFD when matched
    assert np.mean([m.rifd() < s.rifd() for m, s in zip(matched, mismatched, strict=True)]) > 0.7


def test_ifd_stage_writes_scores_and_filters(alpaca: pl.DataFrame) -> None:
    batch = alpaca.head(7)
    empty = batch_from_rows([make_row([{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": ""}], id="empty")])
    frame = pl.concat([batch, empty], how="diagonal_relaxed")
    params = {"max_length": 256, "ifd_form": "loss_ratio", "keep_losses": True}
    scored = build_stage("ifd", params).run(frame).kept
    cut = float(scored["scores.ifd"].median())  # a threshold that drops about half the rows
    kept, dropped, stats = build_stage("ifd", {**params, "max_ifd": cut}).run_local([frame])
    assert kept.height + dropped.height == frame.height
    assert dropped.height >= 3 and set(dropped["drop_reason"].to_list()) == {"ifd_above_max"}
    assert (kept["scores.ifd"].drop_nulls() <= cut).all() and (dropped["scores.ifd"] > cut).all()
    row = kept.filter(pl.col("id") == "empty")
    assert row["scores.ifd"][0] is None and "ifd_unscorable" in row["meta"][0]
    ok = kept.filter(pl.col("scores.ifd").is_not_null())
    assert np.allclose(ok["scores.ifd"], ok["scores.ifd_loss_cond"] / ok["scores.ifd_loss_direct"])
    assert stats[0].counters["ifd.rows"] == frame.height


def test_prompt_templates_and_start_token(scorer: IFDScorer) -> None:
    """`chat` uses the tokenizer's chat template; the others prepend BOS to their own wording."""
    import copy

    tok = scorer.tokenizer
    assert scorer.start_ids == [tok.bos_token_id] and tok.bos_token_id != tok.eos_token_id
    chat = tok.decode(scorer.prompt_ids("Name a colour."))
    assert chat == tok.apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False, add_generation_prompt=True)
    texts = {}
    for template in ("alpaca", "vicuna", "none"):
        other = copy.copy(scorer)
        other.template = template
        ids = other.prompt_ids("Name a colour.")
        assert ids[0] == tok.bos_token_id
        texts[template] = tok.decode(ids[1:])
    assert texts["alpaca"] == ALPACA_HEADER + "### Instruction:\nName a colour.\n\n### Response:\n"
    assert texts["alpaca"].startswith("Below is an instruction that describes a task. Write a response that appropriately")
    assert texts["vicuna"] == f"{VICUNA_SYSTEM} USER: Name a colour. ASSISTANT:"
    assert texts["none"] == "Name a colour.\n"
    # r-IFD's "guess the instruction" query (docs/methods.md §2.2): the ask, the response, the request, in that order
    other = copy.copy(scorer)
    other.template = "none"
    query = tok.decode(other.reverse_prompt_ids("Blue is a primary colour.", 8)[1:])
    parts = ["Below is a response that was written for some instruction. Guess what that instruction was.",
             "Response:\nBlue is a primary colour.", "Write the instruction that this response answers."]
    assert all(p in query for p in parts) and [query.index(p) for p in parts] == sorted(query.index(p) for p in parts)


def test_losses_need_a_context_and_a_target(scorer: IFDScorer) -> None:
    bos = scorer.start_ids
    target = list(scorer.tokenizer.encode("Blue.", add_special_tokens=False))
    no_context, no_target, both = target_losses(scorer.model, [([], target), (bos, []), (bos, target)])
    assert math.isnan(no_context) and math.isnan(no_target)
    assert both == pytest.approx(_direct_loss(scorer.model, bos, target), abs=1e-4)


class _FixedLosses:
    """The scorer's interface with given losses, so the stage's columns are checked without a model."""

    def score(self, instructions: list[str], responses: list[str], reverse: bool = True) -> list:
        return [scores_from_losses(2.0, 1.0, 3.0, 1.5) if reverse else scores_from_losses(2.0, 1.0) for _ in instructions]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("keep_losses", [False, True])
def test_ifd_stage_declares_exactly_the_scores_it_writes(reverse: bool, keep_losses: bool) -> None:
    batch = batch_from_rows([make_row([{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}], id="a")])
    stage = build_stage("ifd", {"reverse": reverse, "keep_losses": keep_losses, "ifd_form": "loss_ratio"})
    out = stage.process(batch, _FixedLosses()).kept
    written = {c for c in out.columns if c.startswith("scores.")} - set(batch.columns)
    assert written == stage.writes()  # a later stage may read (and the config check allows) each of them
    assert out["scores.ifd"][0] == 2.0 and (not reverse or out["scores.rifd"][0] == 2.0)
    if keep_losses and reverse:
        assert out["scores.ifd_rloss_cond"][0] == 3.0 and out["scores.ifd_rloss_direct"][0] == 1.5

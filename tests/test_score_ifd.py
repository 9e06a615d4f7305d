"""IFD / r-IFD with the embedded student (SmolLM2-135M) on real Alpaca rows."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from datacraft.core.rows import batch_from_rows, make_row
from datacraft.io.readers import read_all
from datacraft.llm.cache import ComputeCache
from datacraft.stages.registry import build_stage
from datacraft.stages.score.ifd import (
    ALPACA_HEADER,
    REVERSE_PROMPTS,
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
    assert texts["alpaca"] == ALPACA_HEADER + "### Instruction:\nName a colour.\n\n### Response:"  # no newline: the reference template
    assert texts["alpaca"].startswith("Below is an instruction that describes a task. Write a response that appropriately")
    assert texts["vicuna"] == f"{VICUNA_SYSTEM} USER: Name a colour. ASSISTANT:"
    assert texts["none"] == "Name a colour.\n"
    # r-IFD's "guess the instruction" query (docs/methods.md §2.2): the ask, the response, the request, in that order
    other = copy.copy(scorer)
    other.template = "none"
    query, _ = other._reverse_prefix("Blue is a primary colour.", 8)
    parts = ["Below is the response to an instruction, please guess the corresponding instruction for the given response.",
             "Blue is a primary colour.", "Generate the instruction for the above response."]  # Selective RT's wording
    assert all(p in query for p in parts) and [query.index(p) for p in parts] == sorted(query.index(p) for p in parts)
    other.reverse_prompt = REVERSE_PROMPTS["ours"]
    ours, _ = other._reverse_prefix("Blue is a primary colour.", 8)
    parts = ["Below is a response that was written for some instruction. Guess what that instruction was.",
             "Response:\nBlue is a primary colour.", "Write the instruction that this response answers."]
    assert all(p in ours for p in parts) and [ours.index(p) for p in parts] == sorted(ours.index(p) for p in parts)


def test_losses_need_a_context_and_a_target(scorer: IFDScorer) -> None:
    bos = scorer.start_ids
    target = list(scorer.tokenizer.encode("Blue.", add_special_tokens=False))
    no_context, no_target, both = target_losses(scorer.model, [([], target), (bos, []), (bos, target)])
    assert math.isnan(no_context) and math.isnan(no_target)
    assert both == pytest.approx(_direct_loss(scorer.model, bos, target), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# golden: the reference code's computation, written out independently (HF `labels=` losses over
# whole texts, masking by `text.rfind(target)` as tianyi-lab/Cherry_LLM cherry_seletion/data_by_IFD.py
# and tianyi-lab/Reflection_Tuning selection_code/data_analysis.py do)

_ALPACA = {
    "no_input": "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:",
    "input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
}
_VICUNA = {
    "no_input": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: {instruction} ASSISTANT:",
    "input": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: {instruction}\nInput:\n{input} ASSISTANT:",
}
_REVERSE = "Below is the response to an instruction, please guess the corresponding instruction for the given response.\n{output}\nGenerate the instruction for the above response."


def _ref_part_loss(model, tok, text: str, span: str) -> float:
    """Mean loss of the tokens from `text.rfind(span)` on (a LLaMA tokenizer adds BOS: we add it)."""
    import torch

    bos = [tok.bos_token_id]
    ids = bos + tok.encode(text, add_special_tokens=False)
    start = len(bos + tok.encode(text[: text.rfind(span)], add_special_tokens=False))
    labels = [-100] * start + ids[start:]
    with torch.inference_mode():
        return float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss)


def _ref_whole_loss(model, tok, text: str) -> float:
    import torch

    ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
    with torch.inference_mode():
        return float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss)


def _reference(model, tok, form: str, instruction: str, given: str, output: str) -> tuple[float, float]:
    """(IFD, r-IFD) of one Alpaca row as the reference code computes them."""
    templates = _VICUNA if form == "selective_rt" else _ALPACA
    prompt = templates["input" if given else "no_input"].format(instruction=instruction, input=given)
    cond = _ref_part_loss(model, tok, prompt + output, output)
    direct = _ref_part_loss(model, tok, "### Response:" + output, output) if form == "cherry_v1" else _ref_whole_loss(model, tok, output)
    rprompt = templates["no_input"].format(instruction=_REVERSE.format(output=output))
    rcond = _ref_part_loss(model, tok, rprompt + instruction + given, instruction)
    rdirect = _ref_whole_loss(model, tok, instruction + given)
    if form == "selective_rt":
        return math.exp(cond) / math.exp(direct), math.exp(rcond) / math.exp(rdirect)
    return cond / direct, rcond / rdirect


@pytest.mark.parametrize("form", ["cherry", "cherry_v1", "selective_rt"])
def test_ifd_recipes_match_the_reference_computation(scorer: IFDScorer, alpaca: pl.DataFrame, form: str) -> None:
    """Both templates (alpaca, vicuna), both direct forms (answer alone, "### Response:" + answer),
    both ratios, the input in its own block and the official reverse query, on real rows with and
    without an input (the stage's defaults are the recipe's: no template / max_length given)."""
    from datacraft.core.rows import meta_of
    from datacraft.stages.score.ifd import split_input

    frame = alpaca[[0, 1, 5, 8, 12, 16]]
    # max_length past every row: the templates, forms and ratios are compared exactly; the cut at the
    # recipe's max_length (the direct loss cut to the conditioned one's length) is our rule, not Cherry's
    stage = build_stage("ifd", {"ifd_form": form, "max_length": 2048})
    out = stage.run(frame).kept
    model, tok = scorer.model, scorer.tokenizer
    with_input = 0
    for row in out.iter_rows(named=True):
        user, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        instruction, given = split_input(user, meta_of(row["meta"]))
        with_input += bool(given)
        ifd, rifd = _reference(model, tok, form, instruction, given, answer)
        assert row["scores.ifd"] == pytest.approx(ifd, abs=2e-4)
        assert row["scores.rifd"] == pytest.approx(rifd, abs=2e-4)
    assert with_input >= 3


def _code_ifd(model, tok, form: str, prompt: str, output: str, max_length: int) -> float | None:
    """IFD with the reference code's cut at `max_length`, written out from the code: per-token losses
    (log-softmax), the answer slice `[start_token - 1 : end_token - 1]`, data_by_IFD.py's skips.
    `cherry_v1`: Cherry_LLM data_analysis.py / data_by_IFD.py (direct text "### Response:" + output,
    cut at max_length - instruct_len + 4); `cherry`: the answer alone, cut at max_length - instruct_len + 1
    as Reflection_Tuning selection_code/data_analysis.py cuts it. A LLaMA tokenizer adds BOS: we add it."""
    import torch

    enc = lambda text: [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)  # noqa: E731

    def loss_part(text: str, span: str, limit: int) -> tuple[int, float]:
        ids = enc(text)[:limit]
        start = len(enc(text[: text.rfind(span)]))
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        token_loss = [-float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
        part = token_loss[start - 1 : len(ids) - 1]
        return len(ids) - start, (sum(part) / len(part) if part else math.nan)

    instruct_len = len(enc(prompt)[:max_length])
    if max_length - instruct_len <= 0:
        return None
    direct_text, extra = ("### Response:" + output, 4) if form == "cherry_v1" else (output, 1)
    len_1, mean_1 = loss_part(direct_text, output, max_length - instruct_len + extra)
    len_2, mean_2 = loss_part(prompt + output, output, max_length)
    if len_1 <= 0 or len_2 <= 0 or instruct_len + len_1 > max_length:
        return None
    return mean_2 / mean_1


@pytest.mark.slow
@pytest.mark.parametrize("form", ["cherry", "cherry_v1"])
def test_ifd_cut_at_max_length_is_the_reference_codes(scorer: IFDScorer, alpaca: pl.DataFrame, form: str) -> None:
    """Golden: at 128 tokens, rows longer than that (0, 12) and rows whose first response character joins
    the prompt's last token (3, 10: `:"`, where the old same-tokens cut dropped the last direct token);
    at 64 tokens, a row whose prompt alone fills the budget is unscorable."""
    from datacraft.core.rows import meta_of
    from datacraft.stages.score.ifd import split_input

    model, tok = scorer.model, scorer.tokenizer
    for max_length, rows in ((128, [0, 3, 10, 12]), (64, [0, 1, 5, 8])):
        frame = alpaca[rows]
        out = build_stage("ifd", {"ifd_form": form, "reverse": False, "max_length": max_length}).run(frame).kept
        unscorable = 0
        for row in out.iter_rows(named=True):
            user, answer = row["messages"][0]["content"], row["messages"][1]["content"]
            instruction, given = split_input(user, meta_of(row["meta"]))
            prompt = _ALPACA["input" if given else "no_input"].format(instruction=instruction, input=given)
            want = _code_ifd(model, tok, form, prompt, answer, max_length)
            unscorable += want is None
            assert row["scores.ifd"] == (None if want is None else pytest.approx(want, abs=2e-4)), (form, max_length, row["id"])
        assert unscorable == (0 if max_length == 128 else 1)


def test_ifd_default_is_cherry_and_reflection_default_is_selective_rt() -> None:
    from datacraft.stages.score.ifd import RECIPES

    p = build_stage("ifd", {}).params
    assert p.ifd_form == "cherry" and p.template is None and p.max_length is None and p.reverse_prompt == "official"
    assert RECIPES["cherry"].template == "alpaca" and RECIPES["cherry"].max_length == 512 and RECIPES["cherry"].ratio == "loss_ratio"
    assert RECIPES["selective_rt"].template == "vicuna" and RECIPES["selective_rt"].max_length == 2048
    assert REVERSE_PROMPTS["official"].startswith("Below is the response to an instruction, please guess the corresponding instruction")
    r = build_stage("reflection", {}).params
    assert r.ifd_form == "selective_rt" and r.max_tokens == 2048 and r.student_max_length is None


class _FixedLosses:
    """The scorer's interface with given losses, so the stage's columns are checked without a model."""

    computed = ComputeCache(None, ["fixed"])

    def score(self, instructions: list[str], responses: list[str], reverse: bool = True, inputs: list[str] | None = None) -> list:
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


def test_declared_scores_follow_reverse_and_keep_losses() -> None:
    """`writes()` is what later stages may read: the four losses only with `keep_losses`, r-IFD only with `reverse`."""
    from datacraft.stages.score.ifd import IFDStage

    assert IFDStage({"reverse": False}).writes() == {"scores.ifd"}
    assert IFDStage({"reverse": True, "keep_losses": True}).writes() == {
        "scores.ifd", "scores.rifd", "scores.ifd_loss_cond", "scores.ifd_loss_direct", "scores.ifd_rloss_cond", "scores.ifd_rloss_direct"}
    assert IFDStage({"reverse": False, "keep_losses": True}).writes() == {"scores.ifd", "scores.ifd_loss_cond", "scores.ifd_loss_direct"}

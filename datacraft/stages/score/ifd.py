"""`ifd`: Instruction-Following Difficulty and reverse IFD with a student causal LM (docs/methods.md §2.2, §3).

For an (instruction x, response y) pair, with mean token cross-entropies from teacher forcing:

    L(y|x)  response tokens after the formatted prompt       L(y)  the response alone (after BOS)
    L(x|y') instruction after the reverse "guess the instruction" query wrapping y
    L(x)    the instruction alone (after BOS)

    IFD   loss ratio (Cherry)      L(y|x) / L(y)         ppl ratio (Selective RT)  exp(L(y|x) − L(y))
    r-IFD loss ratio               L(x|y') / L(x)        ppl ratio                  exp(L(x|y') − L(x))

`ifd_form` picks which one lands in `scores.ifd` / `scores.rifd` (both agree on the "> 1" test but
rank differently). Edge cases as the spec: a zero denominator gives 0; an empty response (or
instruction, for r-IFD) gives NaN, stored as a null score with `meta.ifd_unscorable`.

Truncation: the conditioned sequence is cut at `max_length` tokens and the direct sequence scores
exactly the same response tokens, so both losses cover the same span (the official code
approximates this with length arithmetic). For r-IFD the response inside the reverse query is cut
instead, so the whole instruction is scored. Sequences are scored in batches, sorted by length and
right-padded, one forward pass each, no generation; the LM head runs on the scored positions only.
The model is loaded once per worker (`load_causal_lm`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from datacraft.core.rows import set_scores, update_meta
from datacraft.core.stage import MapStage, StageParams, StageResult, score, split_kept
from datacraft.stages.score.judge import spread, turn_pairs

IFDForm = Literal["ppl_ratio", "loss_ratio"]
# Our own wording of the reverse ("guess the instruction") query (docs/methods.md §2.2).
REVERSE_PROMPT = (
    "Below is a response that was written for some instruction. Guess what that instruction was.\n\n"
    "Response:\n{response}\n\n"
    "Write the instruction that this response answers."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)


@dataclass
class IFDScores:
    """The four losses of one pair and the ratios built from them (NaN where unscorable)."""

    loss_cond: float
    loss_direct: float
    ifd_loss_ratio: float
    ifd_ppl_ratio: float
    rloss_cond: float
    rloss_direct: float
    rifd_loss_ratio: float
    rifd_ppl_ratio: float

    def ifd(self, form: str = "ppl_ratio") -> float:
        return self.ifd_ppl_ratio if _check_form(form) == "ppl_ratio" else self.ifd_loss_ratio

    def rifd(self, form: str = "ppl_ratio") -> float:
        return self.rifd_ppl_ratio if _check_form(form) == "ppl_ratio" else self.rifd_loss_ratio


def _check_form(form: str) -> str:
    if form not in ("ppl_ratio", "loss_ratio"):
        raise ValueError(f"unknown ifd_form {form!r}; expected 'ppl_ratio' or 'loss_ratio'")
    return form


def ratios(cond: float, direct: float) -> tuple[float, float]:
    """(loss ratio, perplexity ratio); NaN in → NaN out; a zero denominator → 0."""
    if math.isnan(cond) or math.isnan(direct):
        return math.nan, math.nan
    loss_ratio = 0.0 if direct == 0 else cond / direct
    return loss_ratio, math.exp(cond - direct)


def scores_from_losses(lc: float, ld: float, rc: float = math.nan, rd: float = math.nan) -> IFDScores:
    a, b = ratios(lc, ld)
    c, d = ratios(rc, rd)
    return IFDScores(lc, ld, a, b, rc, rd, c, d)


# ---------------------------------------------------------------------------------------------
# batched teacher-forced losses


def target_losses(model: Any, items: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8, pad_id: int = 0, chunk: int = 1024) -> list[float]:
    """Mean cross-entropy of each `target` given its `context` ((context ids, target ids) pairs).

    The context must be non-empty (a BOS for unconditioned scores). Empty targets give NaN."""
    import torch

    out = [math.nan] * len(items)
    todo = [i for i, (c, t) in enumerate(items) if len(t) and len(c)]
    todo.sort(key=lambda i: len(items[i][0]) + len(items[i][1]))
    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        seqs = [list(items[i][0]) + list(items[i][1]) for i in idx]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        rows, pos, labels, owner = [], [], [], []
        for r, (i, s) in enumerate(zip(idx, seqs, strict=True)):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
            c, t = len(items[i][0]), len(items[i][1])
            rows += [r] * t
            pos += range(c - 1, c + t - 1)  # position p predicts token p + 1
            labels += list(items[i][1])
            owner += [r] * t
        with torch.inference_mode():
            hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            picked = hidden[torch.tensor(rows, device=device), torch.tensor(pos, device=device)]
            lab = torch.tensor(labels, device=device)
            nll = torch.empty(len(labels), dtype=torch.float64)
            for s in range(0, len(labels), chunk):
                logits = head(picked[s : s + chunk]).float()
                nll[s : s + chunk] = (torch.logsumexp(logits, -1) - logits.gather(1, lab[s : s + chunk, None])[:, 0]).double().cpu()
        sums = torch.zeros(len(seqs), dtype=torch.float64).index_add_(0, torch.tensor(owner), nll)
        counts = torch.bincount(torch.tensor(owner), minlength=len(seqs)).double()
        for r, i in enumerate(idx):
            out[i] = float(sums[r] / counts[r])
    return out


class IFDScorer:
    """IFD / r-IFD of (instruction, response) pairs with a student causal LM (see module docstring)."""

    def __init__(self, model: str = "embedded", device: str = "auto", max_length: int = 1024, batch_size: int = 8, template: str = "chat", dtype: str = "auto", cache_dir: str | None = None) -> None:
        from datacraft.llm.cache import ComputeCache
        from datacraft.llm.models import load_causal_lm

        if template not in ("chat", "vicuna", "alpaca", "none"):
            raise ValueError(f"unknown IFD template {template!r}; expected chat, vicuna, alpaca or none")
        self.model, self.tokenizer = load_causal_lm(model, device, dtype)
        self.max_length = max_length
        self.batch_size = batch_size
        self.template = template
        tok = self.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.start_ids = [int(start)] if start is not None else []
        self.computed = ComputeCache(cache_dir, ["ifd-losses", model, dtype, max_length, template])

    def prompt_ids(self, user: str) -> list[int]:
        """Token ids of `user` formatted as a prompt, up to where the reply starts."""
        tok = self.tokenizer
        if self.template == "chat" and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
            return list(tok.encode(text, add_special_tokens=False))
        if self.template == "vicuna":
            text = f"{VICUNA_SYSTEM} USER: {user} ASSISTANT:"
        elif self.template == "alpaca":
            text = f"{ALPACA_HEADER}### Instruction:\n{user}\n\n### Response:\n"
        else:
            text = user + "\n"
        return self.start_ids + list(tok.encode(text, add_special_tokens=False))

    def reverse_prompt_ids(self, response: str, target_len: int) -> list[int]:
        """The reverse query around `response`; a response too long for the instruction to fit after
        it within `max_length` is cut (its tail) so that r-IFD stays defined."""
        ids = self.prompt_ids(REVERSE_PROMPT.format(response=response))
        over = len(ids) + target_len - self.max_length
        if over > 0 and response:
            kept = self._text_ids(response)[: max(0, len(self._text_ids(response)) - over - 2)]
            ids = self.prompt_ids(REVERSE_PROMPT.format(response=self.tokenizer.decode(kept)))
        return ids

    def _text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def items(self, instruction: str, response: str, reverse: bool = True) -> list[tuple[list[int], list[int]]]:
        """The (context, target) pairs of one row: cond, direct[, reverse cond, reverse direct]."""
        out = []
        pairs = [(self.prompt_ids(instruction), self._text_ids(response))]
        if reverse:
            pairs.append((self.reverse_prompt_ids(response, len(self._text_ids(instruction))), self._text_ids(instruction)))
        for prompt, target in pairs:
            n = max(0, min(len(target), self.max_length - len(prompt)))
            target = target[:n]  # both the conditioned and the direct loss cover these tokens
            out += [(prompt, target), (self.start_ids or target[:1], target if self.start_ids else target[1:])]
        return out

    def score(self, instructions: list[str], responses: list[str], reverse: bool = True) -> list[IFDScores]:
        """One IFDScores per pair; all sequences of all pairs go through batched forward passes."""
        if len(instructions) != len(responses):
            raise ValueError("instructions and responses differ in length")
        per = 4 if reverse else 2
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def compute(todo: list[tuple[str, str, bool]]) -> list[list[float]]:
            items = [it for x, y, _ in todo for it in self.items(x, y, reverse)]
            losses = target_losses(self.model, items, self.batch_size, pad)
            return [losses[k * per : (k + 1) * per] for k in range(len(todo))]

        rows = self.computed.map([(x, y, reverse) for x, y in zip(instructions, responses, strict=True)], compute)
        return [scores_from_losses(*losses) for losses in rows]


# ---------------------------------------------------------------------------------------------
# the stage


class IFDParams(StageParams):
    model: str = Field("embedded", description="student causal LM: 'embedded', a Hub name or a local path")
    device: str = "auto"
    dtype: str = "auto"
    max_length: int = Field(1024, ge=16)
    batch_size: int = Field(8, ge=1)
    template: Literal["chat", "vicuna", "alpaca", "none"] = "chat"
    ifd_form: IFDForm = Field("ppl_ratio", description="ppl_ratio (Selective RT) or loss_ratio (Cherry)")
    reverse: bool = Field(True, description="also compute r-IFD")
    keep_losses: bool = Field(False, description="also write the four mean losses as scores")
    max_ifd: float | None = Field(None, description="drop rows with IFD above this (Cherry drops IFD > 1)")


class IFDStage(MapStage[IFDParams, "IFDScorer"]):
    """Writes `scores.ifd` (and `scores.rifd`) of each row's first (user, assistant) turn.
    Reads `messages`, `chosen`."""

    name = "ifd"
    Params = IFDParams

    def writes(self) -> set[str]:
        p = self.params
        names = {"ifd"} | ({"rifd"} if p.reverse else set())
        if p.keep_losses:
            names |= {f"ifd_{f}" for f in ("loss_cond", "loss_direct") + (("rloss_cond", "rloss_direct") if p.reverse else ())}
        return {score(n) for n in names}

    def load(self) -> IFDScorer:
        p = self.params
        return IFDScorer(p.model, p.device, p.max_length, p.batch_size, p.template, p.dtype, cache_dir=self.context.cache_dir)

    def process(self, batch: pl.DataFrame, resource: IFDScorer) -> StageResult:
        p = self.params
        chosen = batch["chosen"].to_list()
        pairs = [(turn_pairs(m, c) or [("", "")])[0] for m, c in zip(batch["messages"].to_list(), chosen, strict=True)]
        res = resource.score([x for x, _ in pairs], [y for _, y in pairs], reverse=p.reverse)
        clean = lambda v: None if v is None or math.isnan(v) else float(v)  # noqa: E731
        scores: dict[str, list[float | None]] = {"ifd": [clean(r.ifd(p.ifd_form)) for r in res]}
        if p.reverse:
            scores["rifd"] = [clean(r.rifd(p.ifd_form)) for r in res]
        if p.keep_losses:
            for f in ("loss_cond", "loss_direct") + (("rloss_cond", "rloss_direct") if p.reverse else ()):
                scores[f"ifd_{f}"] = [clean(getattr(r, f)) for r in res]
        metas = [{"ifd_unscorable": "empty response or prompt longer than max_length"} if scores["ifd"][i] is None else None for i in range(batch.height)]
        out = update_meta(set_scores(batch, scores), metas)
        ifd = np.array([np.nan if v is None else v for v in scores["ifd"]])
        counters = {"ifd.above_1": float(np.sum(ifd > 1)), "ifd.unscorable": float(np.isnan(ifd).sum()), "ifd.rows": float(batch.height),
                    **resource.computed.pop_counters("ifd")}
        extras = {"score_spread": [spread("ifd", scores["ifd"])]}
        if p.max_ifd is None:
            return StageResult(kept=out, counters=counters, extras=extras)
        result = split_kept(self.label, out, pl.col("scores.ifd").is_null() | (pl.col("scores.ifd") <= p.max_ifd),
                            "ifd_above_max", pl.format("ifd={}", pl.col("scores.ifd").round(4)))
        result.counters, result.extras = counters, extras
        return result

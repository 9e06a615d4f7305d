"""`ifd`: Instruction-Following Difficulty and reverse IFD with a student causal LM (docs/methods.md §2.2, §3).

For an (instruction x, response y) pair, with mean token cross-entropies from teacher forcing:

    L(y|x)  response tokens after the formatted prompt       L(y)  the response alone (after BOS)
    L(x|y') instruction after the reverse "guess the instruction" query wrapping y
    L(x)    the instruction alone (after BOS)

    IFD   loss ratio (Cherry)      L(y|x) / L(y)         ppl ratio (Selective RT)  exp(L(y|x) − L(y))
    r-IFD loss ratio               L(x|y') / L(x)        ppl ratio                  exp(L(x|y') − L(x))

`ifd_form` picks a paper's whole recipe (template, `max_length`, ratio, direct-answer text; `RECIPES`):
the default `cherry` is the Cherry paper (Li et al., NAACL 2024: alpaca prompt with its input block,
512 tokens, loss ratio; reference tianyi-lab/Cherry_LLM cherry_seletion/data_analysis.py), `cherry_v1`
the Cherry code's `data_by_IFD.py` (direct answer scored after a "### Response:" prefix),
`selective_rt` Selective Reflection-Tuning (Li et al., ACL 2024 Findings: vicuna prompt, 2048,
perplexity ratio; tianyi-lab/Reflection_Tuning selection_code/data_analysis.py); `ppl_ratio` /
`loss_ratio` are our earlier variant (the student's chat template, 1024). The forms agree on the
"> 1" test but rank differently. r-IFD uses the official reverse query (`reverse_prompt: official`)
inside the same template, target = instruction followed by the input, as the reference code. Edge cases as the spec: a zero denominator gives 0; an empty response (or
instruction, for r-IFD) gives NaN, stored as a null score with `meta.ifd_unscorable`.

Truncation (`truncation: code`, the default): the reference code's length arithmetic. The
conditioned text (prompt + response) is cut at `max_length` tokens; the direct text (BOS, the
recipe's direct prefix, the response) is cut on its own at `max_length − prompt_len + head`, where
`head` is its unscored start (BOS + "### Response:" = 4 tokens: Cherry_LLM data_by_IFD.py's `+4`;
BOS alone = 1: Reflection_Tuning data_analysis.py's `+1`); a row is unscorable, as data_by_IFD.py
skips it, when the prompt alone fills `max_length`, a side has no response token, or prompt_len +
direct tokens > `max_length`. So each side scores its own tokenization of the response: where the
prompt's last token absorbs the response's first character (`:"`), the direct side keeps one more
token. `truncation: same_tokens` (ours) cuts the direct tokens to the conditioned count instead.
For r-IFD the response inside the reverse query is cut, so the whole instruction is scored (ours).
Sequences are scored in batches, sorted by length and
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

from datacraft.core.rows import meta_of, set_scores, update_meta
from datacraft.core.stage import MapStage, StageParams, StageResult, score, split_kept
from datacraft.stages.score.judge import spread, turn_pairs

IFDForm = Literal["cherry_v1", "cherry", "selective_rt", "ppl_ratio", "loss_ratio"]
Ratio = Literal["ppl_ratio", "loss_ratio"]
# The reverse ("guess the instruction") query: `official` is the wording of tianyi-lab/Reflection_Tuning
# selection_code/data_analysis.py (r-IFD depends on it); `ours` is our earlier paraphrase.
REVERSE_PROMPTS: dict[str, str] = {
    "official": (
        "Below is the response to an instruction, please guess the corresponding instruction for the given response.\n"
        "{response}\nGenerate the instruction for the above response."
    ),
    "ours": (
        "Below is a response that was written for some instruction. Guess what that instruction was.\n\n"
        "Response:\n{response}\n\n"
        "Write the instruction that this response answers."
    ),
}
REVERSE_PROMPT = REVERSE_PROMPTS["ours"]
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)
ALPACA_INPUT_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)


@dataclass(frozen=True)
class Recipe:
    """One paper's IFD computation: prompt template, token budget, ratio, direct-answer prefix."""

    template: str
    max_length: int
    ratio: Ratio
    direct_prefix: str = ""


#: `cherry_v1`: Cherry_LLM cherry_seletion/data_by_IFD.py (alpaca prompt, 512 tokens for Alpaca, loss
#: ratio, direct answer scored after "### Response:"); `cherry`: the Cherry paper's s(A|Q)/s(A) with the
#: answer alone; `selective_rt`: Reflection_Tuning selection_code/data_analysis.py (vicuna, 2048, ppl ratio).
RECIPES: dict[str, Recipe] = {
    "cherry_v1": Recipe("alpaca", 512, "loss_ratio", "### Response:"),
    "cherry": Recipe("alpaca", 512, "loss_ratio"),
    "selective_rt": Recipe("vicuna", 2048, "ppl_ratio"),
}


def ratio_of(form: str) -> str:
    """The ratio (`ppl_ratio` / `loss_ratio`) an `ifd_form` uses."""
    return RECIPES[form].ratio if form in RECIPES else _check_form(form)


def split_input(user: str, meta: dict[str, Any]) -> tuple[str, str]:
    """(instruction, input) of an Alpaca-style user turn (the reader joins them with a blank line)."""
    given = str(meta.get("input") or "")
    if given and user.endswith("\n\n" + given):
        return user[: -len(given) - 2], given
    return user, ""


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
        return self.ifd_ppl_ratio if ratio_of(form) == "ppl_ratio" else self.ifd_loss_ratio

    def rifd(self, form: str = "ppl_ratio") -> float:
        return self.rifd_ppl_ratio if ratio_of(form) == "ppl_ratio" else self.rifd_loss_ratio


def _check_form(form: str) -> str:
    if form not in ("ppl_ratio", "loss_ratio"):
        raise ValueError(f"unknown ifd_form {form!r}; expected one of {sorted(RECIPES)}, 'ppl_ratio' or 'loss_ratio'")
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
    """IFD / r-IFD of (instruction, response) pairs with a student causal LM (see module docstring).

    Sequences are built as the reference code does: the whole text (prompt + target) is tokenized
    once and the first `len(tokenize(prompt))` tokens are the context (`text.rfind(target)` masking).
    Losses are cached by content in `cache_dir` (a resumed run makes no forward pass twice)."""

    def __init__(self, model: str = "embedded", device: str = "auto", max_length: int = 1024, batch_size: int = 8, template: str = "chat",
                 dtype: str = "auto", direct_prefix: str = "", reverse_prompt: str = "official", cache_dir: str | None = None,
                 truncation: str = "code") -> None:
        from datacraft.llm.cache import ComputeCache
        from datacraft.llm.models import load_causal_lm

        if template not in ("chat", "vicuna", "alpaca", "none"):
            raise ValueError(f"unknown IFD template {template!r}; expected chat, vicuna, alpaca or none")
        self.model, self.tokenizer = load_causal_lm(model, device, dtype)
        self.max_length = max_length
        self.batch_size = batch_size
        self.template = template
        self.direct_prefix = direct_prefix
        self.reverse_prompt = REVERSE_PROMPTS[reverse_prompt]
        if truncation not in ("code", "same_tokens"):
            raise ValueError(f"unknown IFD truncation {truncation!r}; expected code or same_tokens")
        self.truncation = truncation
        tok = self.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.start_ids = [int(start)] if start is not None else []
        self.computed = ComputeCache(cache_dir, ["ifd-losses", model, dtype, max_length, template, direct_prefix, reverse_prompt, truncation])

    @classmethod
    def for_recipe(cls, form: str, model: str = "embedded", device: str = "auto", batch_size: int = 8, dtype: str = "auto", *,
                   template: str | None = None, max_length: int | None = None, reverse_prompt: str = "official", cache_dir: str | None = None,
                   truncation: str = "code") -> IFDScorer:
        """A scorer with a paper's recipe (`RECIPES`); legacy forms default to chat / 1024."""
        r = RECIPES.get(form, Recipe("chat", 1024, ratio_of(form)))  # type: ignore[arg-type]
        return cls(model, device, max_length or r.max_length, batch_size, template or r.template, dtype, r.direct_prefix, reverse_prompt, cache_dir,
                   truncation)

    def prompt_text(self, user: str, given: str = "") -> tuple[str, bool]:
        """`user` (and its input) formatted as a prompt up to where the reply starts; True when the
        text is a rendered chat template (it carries its own special tokens)."""
        tok = self.tokenizer
        if self.template == "chat" and getattr(tok, "chat_template", None):
            content = f"{user}\n\n{given}" if given else user
            return tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True), True
        if self.template == "vicuna":
            body = f"{user}\nInput:\n{given}" if given else user
            return f"{VICUNA_SYSTEM} USER: {body} ASSISTANT:", False
        if self.template == "alpaca":
            if given:
                return f"{ALPACA_INPUT_HEADER}### Instruction:\n{user}\n\n### Input:\n{given}\n\n### Response:", False
            return f"{ALPACA_HEADER}### Instruction:\n{user}\n\n### Response:", False
        return (f"{user}\n{given}\n" if given else user + "\n"), False

    def prompt_ids(self, user: str, given: str = "") -> list[int]:
        """Token ids of `user` formatted as a prompt, up to where the reply starts."""
        text, chat = self.prompt_text(user, given)
        return self._encode(text, chat)

    def _encode(self, text: str, chat: bool = False) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []
        return ids if chat else self.start_ids + ids

    def _pair(self, prefix: str, target: str, chat: bool = False, limit: int | None = None) -> tuple[list[int], list[int]]:
        """(context, target) ids: the whole text tokenized once, the first len(tokenize(prefix))
        tokens as context (as the reference code masks), cut at `limit` (default `max_length`)."""
        if not target:
            return self._encode(prefix, chat) or self.start_ids, []
        whole = self._encode(prefix + target, chat)[: self.max_length if limit is None else max(limit, 0)]
        n = len(self._encode(prefix, chat))
        if not n:  # no start token: the first target token is the context
            n = 1
        return whole[:n], whole[n:]

    def _text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _reverse_prefix(self, response: str, target_len: int) -> tuple[str, bool]:
        """The reverse query around `response`; a response too long for the instruction to fit after
        it within `max_length` is cut (its tail) so that r-IFD stays defined."""
        text, chat = self.prompt_text(self.reverse_prompt.format(response=response))
        over = len(self._encode(text, chat)) + target_len - self.max_length
        if over > 0 and response:
            ids = self._text_ids(response)
            text, chat = self.prompt_text(self.reverse_prompt.format(response=self.tokenizer.decode(ids[: max(0, len(ids) - over - 2)])))
        return text, chat

    def items(self, instruction: str, response: str, reverse: bool = True, given: str = "") -> list[tuple[list[int], list[int]]]:
        """The (context, target) pairs of one row: cond, direct[, reverse cond, reverse direct].
        The direct pairs score the same number of tokens as their conditioned ones."""
        prompt, chat = self.prompt_text(instruction, given)
        cond = self._pair(prompt, response, chat)
        if self.truncation == "code":
            out = self._code_direct(cond, len(self._encode(prompt, chat)), response)
        else:
            out = self._with_direct(cond, self.direct_prefix, response)
        if reverse:
            x = instruction + given  # the official target: instruction followed by the input
            rprefix, rchat = self._reverse_prefix(response, len(self._text_ids(x)))
            out += self._with_direct(self._pair(rprefix, x, rchat), "", x)
        return out

    def _code_direct(self, cond: tuple[list[int], list[int]], prompt_len: int, response: str) -> list[tuple[list[int], list[int]]]:
        """[cond, direct] with the reference code's arithmetic (module docstring); both targets empty
        (NaN) where data_by_IFD.py skips the row."""
        plen = min(prompt_len, self.max_length)
        head = len(self._encode(self.direct_prefix))
        context, direct = self._pair(self.direct_prefix, response, limit=self.max_length - plen + head)
        if plen >= self.max_length or not direct or not cond[1] or plen + len(direct) > self.max_length:
            return [(cond[0], []), (context, [])]
        return [cond, (context, direct)]

    def _with_direct(self, cond: tuple[list[int], list[int]], prefix: str, target: str) -> list[tuple[list[int], list[int]]]:
        context, direct = self._pair(prefix, target)
        return [cond, (context, direct[: len(cond[1])])]

    def score(self, instructions: list[str], responses: list[str], reverse: bool = True, inputs: list[str] | None = None) -> list[IFDScores]:
        """One IFDScores per pair; all sequences of all pairs go through batched forward passes."""
        if len(instructions) != len(responses):
            raise ValueError("instructions and responses differ in length")
        per = 4 if reverse else 2
        given = inputs or [""] * len(instructions)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def compute(todo: list[tuple[str, str, str, bool]]) -> list[list[float]]:
            items = [it for x, y, g, _ in todo for it in self.items(x, y, reverse, g)]
            losses = target_losses(self.model, items, self.batch_size, pad)
            return [losses[k * per : (k + 1) * per] for k in range(len(todo))]

        rows = self.computed.map([(x, y, g, reverse) for x, y, g in zip(instructions, responses, given, strict=True)], compute)
        return [scores_from_losses(*losses) for losses in rows]


# ---------------------------------------------------------------------------------------------
# the stage


class IFDParams(StageParams):
    model: str = Field("embedded", description="student causal LM: 'embedded', a Hub name or a local path")
    device: str = "auto"
    dtype: str = "auto"
    ifd_form: IFDForm = Field("cherry", description="cherry (paper) | cherry_v1 (Cherry code) | selective_rt; ppl_ratio / loss_ratio: ours (chat, 1024)")
    max_length: int | None = Field(None, ge=16, description="default: the recipe's (512 Cherry, 2048 Selective RT, 1024 ours)")
    batch_size: int = Field(8, ge=1)
    template: Literal["chat", "vicuna", "alpaca", "none"] | None = Field(None, description="default: the recipe's")
    reverse_prompt: Literal["official", "ours"] = Field("official", description="r-IFD query: Selective RT's wording or our paraphrase")
    truncation: Literal["code", "same_tokens"] = Field(
        "code", description="cut at max_length: the reference code's arithmetic (each side on its own) or ours (the direct side cut to the conditioned tokens)")
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
        return IFDScorer.for_recipe(p.ifd_form, p.model, p.device, p.batch_size, p.dtype, template=p.template, max_length=p.max_length,
                                    reverse_prompt=p.reverse_prompt, cache_dir=self.context.cache_dir, truncation=p.truncation)

    def process(self, batch: pl.DataFrame, resource: IFDScorer) -> StageResult:
        p = self.params
        chosen = batch["chosen"].to_list()
        pairs = [(turn_pairs(m, c) or [("", "")])[0] for m, c in zip(batch["messages"].to_list(), chosen, strict=True)]
        # the Alpaca input goes into its own template block, as the reference code formats it
        split = [split_input(x, meta_of(m)) for (x, _), m in zip(pairs, batch["meta"].to_list(), strict=True)]
        res = resource.score([x for x, _ in split], [y for _, y in pairs], reverse=p.reverse, inputs=[g for _, g in split])
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

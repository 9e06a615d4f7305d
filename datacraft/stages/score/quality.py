"""`quality` (Deita's EVOL-Quality judge) and `reward` (a sequence-classification reward model).

`quality` writes `scores.quality` (mean over the row's turns), `meta.quality_scores` (per turn) and,
when `complexity` ran before, Deita's `scores.deita = Σ_t c_t · q_t` (docs/methods.md §6.1–6.2).

`reward` runs any `AutoModelForSequenceClassification` checkpoint (Hub name or local path, e.g. a
Skywork / ArmoRM / OpenAssistant reward model) over the rendered conversation and writes
`scores.reward` (one label: the logit; several: the probability of `label_index`). Preference rows
get the chosen reply's reward and `scores.reward_margin` = reward(chosen) − reward(rejected).
Reads `messages`, `chosen`, `rejected`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl
from pydantic import Field

from datacraft.core.rows import set_scores
from datacraft.core.stage import MapStage, StageParams, StageResult, score, split_kept
from datacraft.stages.score.judge import JudgeStage, spread


class QualityStage(JudgeStage):
    """Deita quality judge (expected score over the digits 1–6) of each (user, assistant) turn."""

    name = "quality"
    dimension = "quality"


# ---------------------------------------------------------------------------------------------
# reward model


@lru_cache(maxsize=2)
def load_reward_model(name: str, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) of a sequence-classification checkpoint, once per process."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from datacraft.llm.models import pick_device, pick_dtype, resolve_model

    path = resolve_model(name)
    dev = pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=pick_dtype(dtype, dev))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(dev)
    model.eval()
    return model, tokenizer


def render_conversation(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The conversation in the model's chat template, or `role: content` lines without one."""
    msgs = [{"role": m["role"], "content": m["content"] or ""} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(msgs, tokenize=False))
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)


class RewardScorer:
    """Batched, padding-aware reward scores of conversations (no generation)."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", batch_size: int = 8, max_length: int = 2048, label_index: int | None = None, cache_dir: str | None = None) -> None:
        from datacraft.llm.cache import ComputeCache

        self.model, self.tokenizer = load_reward_model(model, device, dtype)
        self.batch_size = batch_size
        self.max_length = max_length
        self.label_index = label_index
        self.computed = ComputeCache(cache_dir, ["reward", model, dtype, max_length, label_index])

    def score(self, conversations: Sequence[Sequence[Mapping[str, str]]]) -> np.ndarray:
        """One reward per conversation; cached by content, so a resumed run repeats no forward pass."""
        items = [[[m.get("role"), m.get("content")] for m in c] for c in conversations]
        return np.asarray(self.computed.map(items, lambda todo: self._score([[{"role": r, "content": t} for r, t in c] for c in todo]).tolist()), dtype=float)

    def _score(self, conversations: Sequence[Sequence[Mapping[str, str]]]) -> np.ndarray:
        import torch

        texts = [render_conversation(self.tokenizer, c) for c in conversations]
        encoded = [self.tokenizer.encode(t, add_special_tokens=not getattr(self.tokenizer, "chat_template", None))[: self.max_length] for t in texts]
        out = np.full(len(texts), np.nan)
        order = np.argsort([len(e) for e in encoded], kind="stable")
        head = getattr(self.model, "score", None)  # decoder-style heads pool the last real token
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            seqs = [encoded[i] or [self.tokenizer.pad_token_id] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            dev = next(self.model.parameters()).device
            with torch.inference_mode():
                if head is not None:
                    hidden = self.model.base_model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
                    last = hidden[torch.arange(len(seqs), device=dev), (mask.sum(1) - 1).to(dev)]
                    logits = head(last).float().cpu()
                else:
                    logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float().cpu()
            if logits.shape[1] == 1:
                vals = logits[:, 0]
            else:
                vals = logits.softmax(-1)[:, self.label_index if self.label_index is not None else -1]
            out[idx] = vals.numpy()
        return out


class RewardParams(StageParams):
    model: str = Field(..., description="AutoModelForSequenceClassification checkpoint: Hub name or local path")
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(2048, ge=16)
    label_index: int | None = Field(None, description="which label's probability when the head has several (default: last)")
    min_score: float | None = Field(None, description="drop rows whose reward is below this")


class RewardModelStage(MapStage[RewardParams, "RewardScorer"]):
    """Reward-model scorer: writes `scores.reward` (and `scores.reward_margin` on preference rows)."""

    name = "reward"
    Params = RewardParams

    def writes(self) -> set[str]:
        return {score("reward"), score("reward_margin")}

    def load(self) -> RewardScorer:
        p = self.params
        return RewardScorer(p.model, p.device, p.dtype, p.batch_size, p.max_length, p.label_index, cache_dir=self.context.cache_dir)

    def process(self, batch: pl.DataFrame, resource: RewardScorer) -> StageResult:
        msgs = batch["messages"].to_list()
        chosen = batch["chosen"].to_list()
        rejected = batch["rejected"].to_list()
        convs = [list(m or []) + list(c or []) for m, c in zip(msgs, chosen, strict=True)]
        pref = [i for i, (c, r) in enumerate(zip(chosen, rejected, strict=True)) if c and r]
        values = resource.score(convs + [list(msgs[i] or []) + list(rejected[i]) for i in pref])
        reward = values[: batch.height]
        margin = np.full(batch.height, np.nan)
        margin[pref] = reward[pref] - values[batch.height :]
        scores: dict[str, Any] = {"reward": reward.tolist()}
        if pref:
            scores["reward_margin"] = [None if np.isnan(v) else float(v) for v in margin]
        out = set_scores(batch, scores)
        extras = {"score_spread": [spread("reward", reward.tolist())]}
        if self.params.min_score is None:
            return StageResult(kept=out, extras=extras)
        res = split_kept(self.label, out, pl.col("scores.reward") >= self.params.min_score, "below_min_score",
                         pl.format("reward={}", pl.col("scores.reward").round(3)))
        res.extras = extras
        return res

"""`decontaminate`: drop training rows that share word n-grams with a user-given eval set."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import polars as pl
from pydantic import Field

from datacraft.core.rows import empty_batch, text_expr, with_drop
from datacraft.core.stage import MapStage, StageParams, StageResult

DECONTAMINATE_STAGE = "decontaminate"


# ---------------------------------------------------------------------------------------------
# decontamination


_WORD = re.compile(r"\w+", re.UNICODE)


def normalize_words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation and whitespace ignored)."""
    return _WORD.findall(text.lower())


def ngrams(words: Sequence[str], n: int) -> set[str]:
    """Word n-grams as strings; a text shorter than n words is one n-gram (so short exact matches count)."""
    if not words:
        return set()
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class EvalIndex:
    """n-gram → eval ids, plus each eval item's n-gram count (for containment ratios)."""

    n: int
    grams: dict[str, list[int]] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    #: word counts of eval items shorter than n (matched as whole word sequences inside a row)
    short_lengths: set[int] = field(default_factory=set)

    @classmethod
    def build(cls, texts: Iterable[tuple[str, str]], n: int) -> EvalIndex:
        index = cls(n=n)
        grams: dict[str, list[int]] = defaultdict(list)
        for eval_id, text in texts:
            words = normalize_words(text)
            g = ngrams(words, n)
            if not g:
                continue
            if len(words) < n:
                index.short_lengths.add(len(words))
            k = len(index.ids)
            index.ids.append(eval_id)
            index.sizes.append(len(g))
            for gram in g:
                grams[gram].append(k)
        index.grams = dict(grams)
        return index

    def best_match(self, text: str) -> tuple[int, float, str] | None:
        """(eval index, overlap, one shared n-gram) of the eval item this text overlaps most;
        overlap = shared n-grams / min(n-grams of the text, n-grams of the eval item)."""
        words = normalize_words(text)
        g = ngrams(words, self.n)
        if not g:
            return None
        probes = set(g)
        for length in self.short_lengths:  # a short eval item contained in a longer row
            if length < len(words):
                probes |= ngrams(words, length)
        hits: Counter[int] = Counter()
        example: dict[int, str] = {}
        for gram in probes:
            for k in self.grams.get(gram, ()):
                hits[k] += 1
                example.setdefault(k, gram)
        if not hits:
            return None
        best = max(hits, key=lambda k: hits[k] / min(len(g), self.sizes[k]))
        return best, hits[best] / min(len(g), self.sizes[best]), example[best]


def load_eval_texts(path: str | Sequence[str], view: str = "instruction") -> list[tuple[str, str]]:
    """(eval id, text) pairs from any readable eval file(s) (rows without answers are fine)."""
    from datacraft.io.readers import ReadOptions, read_all

    paths = [path] if isinstance(path, str) else list(path)
    out: list[tuple[str, str]] = []
    for p in paths:
        kept, _ = read_all(p, ReadOptions(allow_empty_response=True))
        if kept.height:
            texts = kept.select(pl.col("id"), text_expr(view).alias("_t"))
            out.extend(zip(texts["id"].to_list(), texts["_t"].to_list(), strict=True))
    if not out:
        raise ValueError(f"eval set {paths} holds no readable rows")
    return out


def decontaminate_frame(
    batch: pl.DataFrame, index: EvalIndex, *, view: str = "instruction", threshold: float = 0.5, stage: str = DECONTAMINATE_STAGE
) -> StageResult:
    """Drop rows whose `view` text overlaps an eval item by ≥ `threshold` (reason `contaminated`,
    detail names the eval id, the overlap and one shared n-gram). Reads the text view; writes nothing."""
    if batch.height == 0:
        return StageResult(kept=batch, dropped=empty_batch())
    texts = batch.select(text_expr(view).alias("_t"))["_t"].to_list()
    keep, details, matches = [], [], []
    by_eval: Counter[str] = Counter()
    for row_id, text in zip(batch["id"].to_list(), texts, strict=True):
        m = index.best_match(text or "")
        if m is not None and m[1] >= threshold:
            eval_id = index.ids[m[0]]
            keep.append(False)
            details.append(f"overlaps eval {eval_id} ({m[1]:.0%} of {index.n}-grams), e.g. {m[2]!r}")
            by_eval[eval_id] += 1
            matches.append({"id": row_id, "eval_id": eval_id, "overlap": round(m[1], 3), "ngram": m[2]})
        else:
            keep.append(True)
            details.append("")
    mask = pl.Series("_keep", keep)
    dropped = with_drop(batch.filter(~mask), stage, "contaminated", pl.lit(pl.Series("_d", details).filter(~mask)))
    return StageResult(
        kept=batch.filter(mask),
        dropped=dropped,
        counters={"decontaminate.removed": float(dropped.height)},
        extras={"decontamination": {"matches": matches[:200], "by_eval": dict(by_eval), "n": index.n, "threshold": threshold}},
    )


class DecontaminateParams(StageParams):
    eval_path: str | list[str] = Field(..., description="eval set file(s) or folder(s) in any readable format")
    view: str = Field("instruction", description="text of a training row compared: instruction | response | conversation | instruction_response")
    eval_view: str = Field("instruction", description="text of an eval row compared")
    n: int = Field(8, ge=1, description="word n-gram length")
    threshold: float = Field(0.5, gt=0, le=1, description="drop when shared n-grams / min(n-grams of either side) ≥ this")


class DecontaminateStage(MapStage[DecontaminateParams, EvalIndex]):
    """Drops rows whose text view overlaps an eval item (reason `contaminated`); extras hold the
    matches (row id, eval id, overlap, one shared n-gram) and counts per eval item."""

    name = DECONTAMINATE_STAGE
    Params = DecontaminateParams

    def load(self) -> EvalIndex:
        return EvalIndex.build(load_eval_texts(self.params.eval_path, self.params.eval_view), self.params.n)

    def process(self, batch: pl.DataFrame, resource: EvalIndex) -> StageResult:
        return decontaminate_frame(batch, resource, view=self.params.view, threshold=self.params.threshold, stage=self.label)

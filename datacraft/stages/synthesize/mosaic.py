"""Mosaic-IT (docs/methods.md §4): model-free multi-instruction augmentation.

Several single-turn rows are merged into one row whose user turn holds all their instructions
(numbered, optionally with a meta-instruction) and whose assistant turn holds all their responses —
in the original order (format), in an order set by a rule (permute), or with some responses left
out by a rule (maskout). The reference output of every rule is computed here, so it is correct by
construction. The meta-instruction lists are our own wording (the reference code has no licence).

Reads: `messages` (one user + one assistant turn; system turns are ignored), `id`, `task`.
Writes: new rows (counted as created) with `messages` = [user: instructions, assistant: responses],
`lineage.parent_ids` = every source row in instruction order, `lineage.method` = `mosaic:<strategy>`,
`meta` = {count, epoch, strategy, rule, order, masked, numbering, tags}. Source rows are dropped
with reason `merged_into_mosaic` / `not_merged` (the paper trains on mosaics only: `recipe:
mosaic_it`, the default) or kept next to the mosaics (`keep_sources: true`, `recipe: ours`).

Determinism: rows are sorted by id before the seeded reshuffles, so the output does not depend
on how Beam batched the input. Memory: one partition (all rows with `partitions: 1`, else the rows
hashed to one of `partitions` buckets) is held at a time.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl
from pydantic import Field

from datacraft.core.rows import batch_from_rows, concat_batches, derived_id, empty_batch, make_row, with_drop
from datacraft.core.stage import GlobalStage, Shape, StageParams, StageResult

FORMAT, PERMUTE, MASKOUT = "format", "permute", "maskout"
STRATEGIES_FOR_VERSION: dict[str, tuple[str, ...]] = {
    "format": (FORMAT,),
    "permute": (FORMAT, PERMUTE),
    "maskout": (FORMAT, MASKOUT),
    "both": (FORMAT, PERMUTE, MASKOUT),
}
MAX_INSTRUCTIONS = 50  # hard cap on the instructions of one mosaic (permutation / mask lists)

# ---------------------------------------------------------------------------------------------
# format layer vocabularies (ours)

NUMBER_PATTERNS = ("{i}", "({i})", "[{i}]", "<{i}>", "<<{i}>>", "### {i}", "## {i}", "##{i}##", "|{i}|", "||{i}||")
NUMBER_SUFFIXES = ("", ".", ":")
TAG_WORDS: tuple[tuple[str, str], ...] = (
    ("START", "END"),
    ("BEGIN", "END"),
    ("RESPONSE", "END OF RESPONSE"),
    ("ANSWER", "END OF ANSWER"),
    ("ANS", "/ANS"),
    ("OUTPUT", "/OUTPUT"),
    ("REPLY", "END REPLY"),
    ("RES", "/RES"),
    ("OPEN", "CLOSE"),
    ("BEGIN ANSWER", "FINISH ANSWER"),
    ("OUT", "END OUT"),
    ("SOLUTION", "END SOLUTION"),
    ("RESULT", "END RESULT"),
    ("GO", "STOP"),
    ("HERE", "DONE"),
    ("START OF REPLY", "END OF REPLY"),
    ("A", "/A"),
)
TAG_BRACKETS = (
    "[X]", "<X>", "<|X|>", "**X**", "$$X$$", "{X}", "((X))", "==X==", "--X--", "@@X@@", "##X##", "<<X>>",
    "[[X]]", "|X|", "~~X~~", "::X::", "%%X%%", "++X++", "__X__", "^^X^^", "<#X#>", "[/X/]", "{{X}}", "(X)",
    "!!X!!", "&&X&&", "=X=",
)  # fmt: skip
TAG_META = (
    "Answer each instruction and put every response between {begin} and {end}.",
    "Respond to all of the instructions. Start each response with {begin} and close it with {end}.",
    "For every instruction, write its response wrapped as {begin} ... {end}.",
    "Wrap each of your answers in the markers {begin} and {end}.",
    "Give one response per instruction; each response opens with {begin} and ends with {end}.",
    "Reply to the instructions in turn, enclosing each reply in {begin} and {end}.",
    "Mark where each response starts with {begin} and where it stops with {end}.",
    "Answer the instructions one by one and surround each answer with {begin} and {end}.",
    "Complete every task, delimiting each answer by {begin} at its start and {end} at its end.",
    "Write a separate response for each instruction, bracketed by {begin} and {end}.",
    "Each answer must begin with the marker {begin} and finish with the marker {end}.",
    "Use {begin} to open and {end} to close the response to every instruction.",
)
PLAIN_META = (
    "Respond to each of these instructions.",
    "Answer every instruction.",
    "Complete each of these tasks in turn.",
    "Give a separate response to each instruction.",
    "Work through the instructions and answer each one.",
    "There are several instructions here; respond to all of them.",
    "Reply to each task on its own.",
)
ID_STYLES = ("{i}", "({i})", "[{i}]", "#{i}", "<{i}>", "No. {i}", "instruction {i}", "{{{i}}}")
ORDER_SEPARATORS = (", ", " -> ", " => ", " then ", " > ", ", then ", " | ")
LIST_SEPARATORS = (", ", " and ", "; ")

# ---------------------------------------------------------------------------------------------
# permute / maskout meta-instructions (ours)

SAME_GROUP_ORDER = " Within each group, keep the original order."
TIES_KEEP_ORDER = " Instructions that tie keep their original order."

PERMUTE_META: dict[str, tuple[str, ...]] = {
    "FIX": (
        "Answer the instructions in this order: {order}.",
        "Respond to the instructions following the sequence {order}.",
        "Give your responses in the order {order}, not in the order the instructions appear.",
    ),
    "REVERSE": (
        "Answer the instructions in reverse order, starting with the last one.",
        "Respond to the instructions from last to first.",
        "Work backwards: respond to the final instruction first and to the first instruction last.",
    ),
    "ALPHA": (
        "Answer the instructions in alphabetical order of their text (A to Z, ignoring case).",
        "Sort the instructions alphabetically by their text, ignoring case, and respond in that order.",
        "Respond to the instructions in A-to-Z order of the instruction text, ignoring case.",
    ),
    "REVERSE_ALPHA": (
        "Answer the instructions in reverse alphabetical order of their text (Z to A, ignoring case).",
        "Sort the instructions by their text from Z to A, ignoring case, and respond in that order.",
        "Respond to the instructions in Z-to-A order of the instruction text, ignoring case.",
    ),
    "LENGTH_WORD": (
        "Answer the instructions from the one with the fewest words to the one with the most words.",
        "Respond in order of instruction length in words, shortest first.",
        "Start with the instruction that has the fewest words and finish with the one that has the most.",
    ),
    "REVERSE_LENGTH_WORD": (
        "Answer the instructions from the one with the most words to the one with the fewest words.",
        "Respond in order of instruction length in words, longest first.",
        "Start with the instruction that has the most words and finish with the one that has the fewest.",
    ),
    "LENGTH_CHAR": (
        "Answer the instructions from the shortest to the longest, counting characters.",
        "Respond in order of instruction length in characters, shortest first.",
        "Start with the instruction that has the fewest characters and end with the one that has the most.",
    ),
    "REVERSE_LENGTH_CHAR": (
        "Answer the instructions from the longest to the shortest, counting characters.",
        "Respond in order of instruction length in characters, longest first.",
        "Start with the instruction that has the most characters and end with the one that has the fewest.",
    ),
    "ODD_EVEN": (
        "First answer the odd-numbered instructions, then the even-numbered ones.",
        "Respond to instructions 1, 3, 5, ... first and to instructions 2, 4, 6, ... afterwards.",
        "Handle the instructions with odd numbers before the ones with even numbers.",
    ),
    "EVEN_ODD": (
        "First answer the even-numbered instructions, then the odd-numbered ones.",
        "Respond to instructions 2, 4, 6, ... first and to instructions 1, 3, 5, ... afterwards.",
        "Handle the instructions with even numbers before the ones with odd numbers.",
    ),
}
MASK_META: dict[str, tuple[str, ...]] = {
    "FIX": (
        "Do not respond to {ids}; answer all the other instructions.",
        "Skip {ids} and respond to every remaining instruction.",
        "Leave out {ids}: give no response to {them}, but answer the rest.",
    ),
    "WORD_LONG": (
        "Skip the {count} longest instruction{s} (by number of words) and answer the rest.",
        "Do not answer the {count} instruction{s} with the most words; respond to all the others.",
        "Ignore the {count} wordiest instruction{s} and respond to the remaining ones.",
    ),
    "WORD_SHORT": (
        "Skip the {count} shortest instruction{s} (by number of words) and answer the rest.",
        "Do not answer the {count} instruction{s} with the fewest words; respond to all the others.",
        "Ignore the {count} briefest instruction{s} by word count and respond to the remaining ones.",
    ),
    "ODD": (
        "Answer only the even-numbered instructions and skip the odd-numbered ones.",
        "Do not respond to instructions with odd numbers; answer the ones with even numbers.",
        "Ignore instructions 1, 3, 5, ... and respond to instructions 2, 4, 6, ...",
    ),
    "EVEN": (
        "Answer only the odd-numbered instructions and skip the even-numbered ones.",
        "Do not respond to instructions with even numbers; answer the ones with odd numbers.",
        "Ignore instructions 2, 4, 6, ... and respond to instructions 1, 3, 5, ...",
    ),
}
PERMUTE_RULES = tuple(PERMUTE_META)
MASK_RULES = tuple(MASK_META)


# ---------------------------------------------------------------------------------------------
# pure core


@dataclass(frozen=True)
class Item:
    """One source row: `instruction` is the whole user turn (instruction + input)."""

    id: str
    instruction: str
    response: str
    task: str | None = None


@dataclass
class Mosaic:
    instruction: str
    output: str
    strategy: str
    rule: str | None
    order: list[int]  # 0-based source positions of the responses, in output order
    masked: list[int] = field(default_factory=list)  # 0-based positions left unanswered
    numbering: str | None = None
    tags: tuple[str, str] | None = None


def _word_count(text: str) -> int:
    return len(text.split())


_SORT_KEYS: dict[str, tuple[Callable[[str], Any], bool]] = {
    "ALPHA": (str, False),  # the reference sorts the strings as they are (upper case first)
    "REVERSE_ALPHA": (str, True),
    "LENGTH_WORD": (_word_count, False),
    "REVERSE_LENGTH_WORD": (_word_count, True),
    "LENGTH_CHAR": (len, False),
    "REVERSE_LENGTH_CHAR": (len, True),
}


def _sort_key(rule: str, casefold: bool) -> tuple[Callable[[str], Any], bool]:
    key, descending = _SORT_KEYS[rule]
    return (str.casefold if casefold and key is str else key), descending


def permute_order(rule: str, instructions: Sequence[str], fixed: Sequence[int] | None = None, casefold: bool = False) -> list[int]:
    """The correct response order (0-based positions) for a permute rule; sorts are stable.
    ALPHA compares the strings case-sensitively as the reference does; `casefold` is our variant."""
    n = len(instructions)
    if rule == "FIX":
        if fixed is None or sorted(fixed) != list(range(n)):
            raise ValueError("FIX needs a permutation of the positions")
        return list(fixed)
    if rule == "REVERSE":
        return list(range(n))[::-1]
    if rule in _SORT_KEYS:
        key, descending = _sort_key(rule, casefold)
        keys = [key(t) for t in instructions]
        # Python's sort is stable with reverse=True too: ties keep their original order
        return sorted(range(n), key=keys.__getitem__, reverse=descending)
    odd = [i for i in range(n) if i % 2 == 0]  # 1-based odd numbers
    even = [i for i in range(n) if i % 2 == 1]
    if rule == "ODD_EVEN":
        return odd + even
    if rule == "EVEN_ODD":
        return even + odd
    raise ValueError(f"unknown permute rule {rule!r}")


def has_ties(rule: str, instructions: Sequence[str], casefold: bool = False) -> bool:
    if rule not in _SORT_KEYS:
        return False
    keys = [_sort_key(rule, casefold)[0](t) for t in instructions]
    return len(set(keys)) < len(keys)


def mask_positions(rule: str, instructions: Sequence[str], count: int = 1, fixed: Sequence[int] | None = None) -> list[int]:
    """The 0-based positions whose responses a maskout rule removes (sorted)."""
    n = len(instructions)
    if rule == "FIX":
        return sorted(fixed or [])
    if rule == "ODD":
        return [i for i in range(n) if i % 2 == 0]
    if rule == "EVEN":
        return [i for i in range(n) if i % 2 == 1]
    if rule in ("WORD_LONG", "WORD_SHORT"):
        words = [_word_count(t) for t in instructions]
        ranked = sorted(range(n), key=lambda i: (-words[i] if rule == "WORD_LONG" else words[i], i))
        return sorted(ranked[:count])
    raise ValueError(f"unknown maskout rule {rule!r}")


def unambiguous_count(rule: str, instructions: Sequence[str], wanted: int) -> int | None:
    """The mask size nearest `wanted` (1..n-1) at which "the k longest/shortest" has one answer
    (no tie in word count across the cut); None when every cut is tied."""
    n = len(instructions)
    words = sorted((_word_count(t) for t in instructions), reverse=rule == "WORD_LONG")
    valid = [k for k in range(1, n) if words[k - 1] != words[k]]
    if not valid:
        return None
    return min(valid, key=lambda k: (abs(k - wanted), k))


@dataclass
class Draw:
    """Every random choice of one mosaic (drawn anew at each growth step, as the reference does)."""

    strategy: str
    numbering: str | None
    tags: tuple[str, str] | None
    meta: str | None
    inst_joiner: str
    meta_after: bool
    meta_sep: str
    rule: str | None = None
    rule_meta: str | None = None
    rule_after: bool = False
    rule_sep: str = "\n"
    order: list[int] | None = None
    masked: list[int] | None = None


@dataclass(frozen=True)
class FormatOptions:
    version: Literal["format", "permute", "maskout", "both"] = "both"
    faithful_numbering: bool = True
    p_no_numbering: float = 0.1
    p_tags: float = 0.5
    p_plain_meta: float = 0.5
    alpha_casefold: bool = False


def _numbering(rng: random.Random, forced: bool, p_none: float) -> str | None:
    if not forced and rng.random() < p_none:
        return None
    pattern = rng.choice(NUMBER_PATTERNS)
    return pattern + rng.choice(NUMBER_SUFFIXES) + ("\n" if rng.random() < 0.5 else " ")


def _tags(rng: random.Random) -> tuple[str, str]:
    begin, end = rng.choice(TAG_WORDS)
    if rng.random() < 0.5:
        begin, end = begin.lower(), end.lower()
    bracket = rng.choice(TAG_BRACKETS)
    return bracket.replace("X", begin), bracket.replace("X", end)


def _id_list(rng: random.Random, positions: Sequence[int], separators: Sequence[str]) -> str:
    style = rng.choice(ID_STYLES)
    sep = rng.choice(separators)
    return sep.join(style.format(i=p + 1) for p in positions)


def _permute_rule(rng: random.Random, instructions: Sequence[str], casefold: bool = False) -> tuple[str, str, list[int]]:
    n = len(instructions)
    rule = rng.choice(PERMUTE_RULES)
    fixed = None
    if rule == "FIX":
        fixed = list(range(n))
        while fixed == list(range(n)):
            rng.shuffle(fixed)
    order = permute_order(rule, instructions, fixed, casefold)
    text = rng.choice(PERMUTE_META[rule])
    if rule == "FIX":
        text = text.format(order=_id_list(rng, order, ORDER_SEPARATORS))
    elif rule in ("ODD_EVEN", "EVEN_ODD"):
        text += SAME_GROUP_ORDER
    elif has_ties(rule, instructions, casefold):
        text += TIES_KEEP_ORDER
    return rule, text, order


def _mask_rule(rng: random.Random, instructions: Sequence[str]) -> tuple[str, str, list[int]]:
    n = len(instructions)
    rule = rng.choice(MASK_RULES)
    wanted = max(int(n * rng.uniform(0.1, 0.5)), 1)
    count = wanted
    if rule in ("WORD_LONG", "WORD_SHORT"):
        fitted = unambiguous_count(rule, instructions, wanted)
        if fitted is None:
            rule = "FIX"
        else:
            count = fitted
    fixed = sorted(rng.sample(range(n), wanted)) if rule == "FIX" else None
    masked = mask_positions(rule, instructions, count, fixed)
    template = rng.choice(MASK_META[rule])
    if rule == "FIX":
        ids = _id_list(rng, masked, LIST_SEPARATORS)
        label = "instruction" if len(masked) == 1 else "instructions"
        text = template.format(ids=f"{label} {ids}" if not ids.startswith("instruction") else ids, them="it" if len(masked) == 1 else "them")
    elif rule in ("WORD_LONG", "WORD_SHORT"):
        text = template.format(count=count, s="" if count == 1 else "s")
    else:
        text = template
    return rule, text, masked


def draw(rng: random.Random, items: Sequence[Item], opts: FormatOptions) -> Draw:
    """Draw the strategy, format layer and rule of one mosaic over `items`."""
    n = len(items)
    strategy = rng.choice(STRATEGIES_FOR_VERSION[opts.version]) if n > 1 else FORMAT
    forced = opts.faithful_numbering and strategy != FORMAT
    numbering = _numbering(rng, forced, opts.p_no_numbering)
    tags = _tags(rng) if rng.random() < opts.p_tags else None
    if tags is not None:
        meta: str | None = rng.choice(TAG_META).format(begin=tags[0], end=tags[1])
    else:
        meta = rng.choice(PLAIN_META) if rng.random() < opts.p_plain_meta else None
    d = Draw(
        strategy=strategy,
        numbering=numbering,
        tags=tags,
        meta=meta,
        inst_joiner=rng.choice(("\n", "\n\n")),
        meta_after=rng.random() < 0.5,
        meta_sep=rng.choice(("\n", "\n\n")),
    )
    instructions = [it.instruction for it in items]
    if strategy == PERMUTE:
        d.rule, d.rule_meta, d.order = _permute_rule(rng, instructions, opts.alpha_casefold)
    elif strategy == MASKOUT:
        d.rule, d.rule_meta, d.masked = _mask_rule(rng, instructions)
    if d.rule_meta is not None:
        d.rule_after = rng.random() < 0.5
        d.rule_sep = rng.choice(("\n", "\n\n"))
    return d


def _wrap(block: str, meta: str | None, after: bool, sep: str) -> str:
    if not meta:
        return block
    return f"{block}{sep}{meta}" if after else f"{meta}{sep}{block}"


def build(items: Sequence[Item], d: Draw) -> Mosaic:
    """The mosaic text for a draw: numbered instructions + meta-instructions, and the responses
    in the order / with the omissions the rule demands (each keeping its own number)."""
    n = len(items)
    labels = [d.numbering.format(i=i + 1) if d.numbering else "" for i in range(n)]
    block = d.inst_joiner.join(labels[i] + items[i].instruction for i in range(n))
    user = _wrap(_wrap(block, d.meta, d.meta_after, d.meta_sep), d.rule_meta, d.rule_after, d.rule_sep)
    order = d.order if d.order is not None else list(range(n))
    masked = set(d.masked or [])
    begin, end = d.tags if d.tags else ("", "")
    sep_in = "\n" if d.tags else ""
    responses = [
        f"{labels[i]}{begin}{sep_in}{items[i].response}{sep_in}{end}" for i in order if i not in masked
    ]
    return Mosaic(
        instruction=user,
        output="\n\n".join(responses),
        strategy=d.strategy,
        rule=d.rule,
        order=[i for i in order if i not in masked],
        masked=sorted(masked),
        numbering=d.numbering,
        tags=d.tags,
    )


WrapMode = Literal["uniform", "fix_max", "max_length", "exp", "pareto", "lognormal", "logistic2"]


def draw_chunk_size(rng: random.Random, mode: str, max_n: int, remaining: int) -> int:
    """How many instructions the next mosaic tries to take (docs/methods.md §4.2).

    `exp` / `pareto` / `lognormal` give k = M − ⌊r⌋ (skewed toward M); `logistic2` gives
    k = ⌈r⌉ with r ~ Logistic(0, 2) truncated to (0, M) (skewed toward small mosaics)."""
    if mode == "uniform":
        return rng.randint(1, max_n)
    if mode == "fix_max":
        return max_n
    if mode == "max_length":
        return max(remaining, 1)
    samplers: dict[str, Callable[[], float]] = {
        "exp": lambda: rng.expovariate(1.0),
        "pareto": lambda: rng.paretovariate(1.0) - 1.0,
        "lognormal": lambda: rng.lognormvariate(0.0, 1.0),
    }
    if mode in samplers:
        while True:
            r = samplers[mode]()
            if r < max_n:
                return max_n - int(math.floor(r))
    if mode == "logistic2":
        while True:
            u = rng.random()
            if 0.0 < u < 1.0:
                r = 2.0 * math.log(u / (1.0 - u))
                if 0.0 < r < max_n:
                    return max(1, math.ceil(r))
    raise ValueError(f"unknown wrap_mode {mode!r}")


class TokenBudget:
    """`ntokens(instruction + output) < max_tokens`, counted exactly only near the budget.

    Each source text is tokenized once (cached); a mosaic's count is estimated as the sum of its
    sources' counts plus its formatting characters / 2.5. Only estimates within `margin` of the
    budget are tokenized exactly, so a chunk of k rows costs O(k) tokenizations, not O(k²)."""

    def __init__(self, ntokens: Callable[[str], int], max_tokens: int, margin: float = 0.15) -> None:
        self.ntokens, self.max_tokens, self.margin = ntokens, max_tokens, margin
        self._cache: dict[str, int] = {}
        self.exact_checks = 0

    def _count(self, text: str) -> int:
        n = self._cache.get(text)
        if n is None:
            n = self._cache[text] = self.ntokens(text)
        return n

    def fits(self, items: Sequence[Item], m: Mosaic) -> bool:
        full = m.instruction + m.output
        answered = set(m.order)
        texts = [it.instruction for it in items] + [items[i].response for i in answered]
        est = sum(self._count(t) for t in texts) + max(len(full) - sum(len(t) for t in texts), 0) / 2.5
        if est < self.max_tokens * (1 - self.margin):
            return True
        if est >= self.max_tokens * (1 + self.margin):
            return False
        self.exact_checks += 1
        return self.ntokens(full) < self.max_tokens


@dataclass
class EpochOutput:
    mosaics: list[tuple[list[Item], Mosaic, int]]  # (sources, mosaic, epoch)
    too_long: list[str]  # ids of single items over the budget (per epoch, so possibly repeated)
    too_small: int = 0


def run_mosaic(
    items: Sequence[Item],
    *,
    ntokens: Callable[[str], int],
    seed: int,
    epochs: int = 4,
    wrap_mode: str = "uniform",
    max_instructions: int = 10,
    max_tokens: int = 2000,
    min_count: int = 1,
    opts: FormatOptions | None = None,
) -> EpochOutput:
    """The main loop: per epoch a seeded reshuffle, then greedy growth of each chunk under the
    token budget (`ntokens(instruction + output) < max_tokens`, see TokenBudget), a new draw at
    every step."""
    opts = opts or FormatOptions()
    budget = TokenBudget(ntokens, max_tokens)
    rng = random.Random(seed)
    cap = min(max_instructions, MAX_INSTRUCTIONS)
    data = sorted(items, key=lambda it: it.id)
    out = EpochOutput([], [])
    for epoch in range(epochs):
        rng.shuffle(data)
        i = 0
        while i < len(data):
            k = min(draw_chunk_size(rng, wrap_mode, cap, len(data) - i), MAX_INSTRUCTIONS)
            chunk = data[i : min(i + k, len(data))]
            best: Mosaic | None = None
            count = 0
            for j in range(len(chunk)):
                candidate = build(chunk[: j + 1], draw(rng, chunk[: j + 1], opts))
                if budget.fits(chunk[: j + 1], candidate):
                    best, count = candidate, j + 1
                else:
                    break
            if best is None:
                out.too_long.append(data[i].id)
                i += 1
                continue
            if count >= min_count:
                out.mosaics.append((list(chunk[:count]), best, epoch))
            else:
                out.too_small += 1
            i += count
    return out


# ---------------------------------------------------------------------------------------------
# the stage


#: `mosaic_it`: Mosaic-IT (Li et al., 2024; reference tianyi-lab/Mosaic-IT `mosaic_main.py`): the model is
#: trained on the mosaics only, every chunk (also of one row) is emitted; `ours`: the earlier defaults.
RECIPES: dict[str, dict[str, Any]] = {
    "mosaic_it": {"min_count": 1, "keep_sources": False, "alpha_casefold": False},
    "ours": {"min_count": 2, "keep_sources": True, "alpha_casefold": True},
}


class MosaicParams(StageParams):
    epochs: int = Field(4, ge=1, description="independent reshuffles of the data (reference: 4)")
    wrap_mode: WrapMode = "uniform"
    max_instructions: int = Field(10, ge=1, le=MAX_INSTRUCTIONS, description="M, the largest chunk")
    max_tokens: int = Field(2000, ge=1, description="budget on tokens of instruction + output")
    tokenizer: str = Field("embedded", description="tokenizer for the budget: a Hub name / path, `embedded`, or `whitespace`")
    version: Literal["format", "permute", "maskout", "both"] = "both"
    faithful_numbering: bool = Field(True, description="force numbering when a permute/maskout rule refers to numbers")
    recipe: Literal["mosaic_it", "ours"] = Field("mosaic_it", description="mosaic_it: the paper (mosaics only, min_count 1, case-sensitive ALPHA); ours: originals + mosaics of ≥ 2, ALPHA ignores case")
    min_count: int | None = Field(None, ge=1, description="emit mosaics of at least this many rows (default: the recipe's, 1 / 2)")
    keep_sources: bool | None = Field(None, description="keep the source rows next to the mosaics (default: the recipe's, false / true)")
    alpha_casefold: bool | None = Field(None, description="ALPHA / REVERSE_ALPHA ignore case (default: the recipe's, false / true)")
    partitions: int = Field(1, ge=1, description="hash rows into this many independent mosaic pools (scale-out)")
    seed: int | None = Field(None, description="defaults to the run seed")
    examples: int = Field(3, ge=0, description="mosaics shown in the report")


def load_token_counter(name: str) -> Callable[[str], int]:
    """`len(tokenizer.tokenize(text))` for a Hub name / local path / `embedded`; `whitespace` splits."""
    if name == "whitespace":
        return _word_count
    from transformers import AutoTokenizer

    from datacraft.llm.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    return lambda text: len(tokenizer.tokenize(text))


def items_of(frame: pl.DataFrame) -> tuple[list[Item], pl.Series]:
    """Single-turn rows as Items, and a mask of which rows qualified."""
    ok: list[bool] = []
    items: list[Item] = []
    for row in frame.select("id", "messages", "task", "chosen").iter_rows(named=True):
        turns = [m for m in row["messages"] or [] if m["role"] != "system"]
        single = (
            row["chosen"] is None
            and len(turns) == 2
            and turns[0]["role"] == "user"
            and turns[1]["role"] == "assistant"
            and bool(turns[0]["content"].strip())
            and bool(turns[1]["content"].strip())
        )
        ok.append(single)
        if single:
            items.append(Item(row["id"], turns[0]["content"].strip(), turns[1]["content"].strip(), row["task"]))
    return items, pl.Series("_single", ok, dtype=pl.Boolean)


class MosaicStage(GlobalStage):
    """Mosaic-IT augmentation (see module docstring)."""

    name = "mosaic"
    Params = MosaicParams
    params: MosaicParams

    def load(self) -> Callable[[str], int]:
        return load_token_counter(self.params.tokenizer)

    def resource_key(self) -> Any:
        return ("token-counter", self.params.tokenizer)

    def _counter(self) -> Callable[[str], int]:
        return self.resource

    def shape(self) -> Shape:
        return Shape.PARTITIONED if self.params.partitions > 1 else Shape.ONE_PROCESS

    def partition_keys(self, batch: pl.DataFrame, facts: Any) -> pl.Series:
        return batch["id"].hash(seed=0) % self.params.partitions

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        return self.process_partition(0, frame, None)

    def process_partition(self, key: Any, frame: pl.DataFrame, facts: Any) -> StageResult:
        p = self.params
        seed = (p.seed if p.seed is not None else self.context.seed) * 1_000_003 + zlib.crc32(str(key).encode())
        items, single = items_of(frame)
        result = run_mosaic(
            items,
            ntokens=self._counter(),
            seed=seed,
            epochs=p.epochs,
            wrap_mode=p.wrap_mode,
            max_instructions=p.max_instructions,
            max_tokens=p.max_tokens,
            min_count=self._knob("min_count"),
            opts=FormatOptions(version=p.version, faithful_numbering=p.faithful_numbering, alpha_casefold=self._knob("alpha_casefold")),
        )
        rows = [self._row(sources, m, epoch) for sources, m, epoch in result.mosaics]
        created = batch_from_rows(rows) if rows else empty_batch()
        used = Counter(pid for sources, _, _ in result.mosaics for pid in (s.id for s in sources))
        strategies = Counter(f"{m.strategy}:{m.rule}" if m.rule else m.strategy for _, m, _ in result.mosaics)
        counters: dict[str, float] = {
            "mosaic.created": len(rows),
            "mosaic.sources_used": len(used),
            "mosaic.not_single_turn": int((~single).sum()),
            "mosaic.too_long": len(result.too_long),
            "mosaic.below_min_count": result.too_small,
            **{f"mosaic.strategy.{k}": v for k, v in strategies.items()},
        }
        sizes = Counter(len(sources) for sources, _, _ in result.mosaics)
        extras: dict[str, Any] = {
            "mosaic_sizes": {str(k): v for k, v in sorted(sizes.items())},
            "examples": [
                {"instruction": m.instruction[:600], "output": m.output[:600], "strategy": m.strategy, "rule": m.rule}
                for _, m, _ in result.mosaics[: p.examples]
            ],
        }
        if self._knob("keep_sources"):
            return StageResult(kept=concat_batches([frame, created]), created=len(rows), counters=counters, extras=extras)
        merged = frame["id"].is_in(list(used))
        dropped = with_drop(
            frame,
            self.label,
            pl.when(merged).then(pl.lit("merged_into_mosaic")).otherwise(pl.lit("not_merged")),
            pl.when(merged)
            .then(pl.lit("part of mosaics"))
            .otherwise(pl.when(single).then(pl.lit("over the token budget or below min_count")).otherwise(pl.lit("not a single-turn row"))),
        )
        return StageResult(kept=created, dropped=dropped, created=len(rows), counters=counters, extras=extras)

    def _knob(self, name: str) -> Any:
        """A parameter, or its recipe's value when unset."""
        value = getattr(self.params, name)
        return RECIPES[self.params.recipe][name] if value is None else value

    def _row(self, sources: list[Item], m: Mosaic, epoch: int) -> dict[str, Any]:
        parents = [s.id for s in sources]
        method = f"mosaic:{m.strategy}"
        tasks = {s.task for s in sources}
        return make_row(
            [{"role": "user", "content": m.instruction}, {"role": "assistant", "content": m.output}],
            id=derived_id(parents, f"{method}:{epoch}", m.instruction + "\n" + m.output),
            task=tasks.pop() if len(tasks) == 1 and None not in tasks else "mosaic",
            source="mosaic",
            parent_ids=parents,
            method=method,
            meta={
                "count": len(sources),
                "epoch": epoch,
                "strategy": m.strategy,
                "rule": m.rule,
                "order": [i + 1 for i in m.order],
                "masked": [i + 1 for i in m.masked],
                "numbering": m.numbering,
                "tags": list(m.tags) if m.tags else None,
            },
        )

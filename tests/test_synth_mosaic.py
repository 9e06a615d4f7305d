"""Mosaic-IT: rule outputs checked against the rules on real rows, determinism, budget, the Beam stage."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from datacraft.io.readers import read_all
from datacraft.stages.synthesize import mosaic as M
from datacraft.stages.synthesize.mosaic import Draw, FormatOptions, Item, build, draw, items_of, run_mosaic

from .conftest import DATA
from .synth_fakes import check_golden, run_pipeline

ALPACA = str(DATA / "alpaca_llamafactory_200.jsonl")


@pytest.fixture(scope="module")
def items() -> list[Item]:
    kept, _ = read_all(ALPACA)
    out, single = items_of(kept)
    assert single.all()
    return out


def _draw(rule: str | None, strategy: str, n: int, **kw: object) -> Draw:
    base = dict(strategy=strategy, numbering="({i}) ", tags=None, meta=None, inst_joiner="\n", meta_after=False, meta_sep="\n")
    base.update(kw)
    return Draw(rule=rule, **base)  # type: ignore[arg-type]


def _response_positions(m: M.Mosaic, chunk: list[Item]) -> list[int]:
    """Source positions of the responses, in the order they appear in the output."""
    found = [(m.output.find(f"({i + 1}) {it.response}"), i) for i, it in enumerate(chunk)]
    return [i for pos, i in sorted(found) if pos >= 0]


@pytest.mark.parametrize("rule", M.PERMUTE_RULES)
def test_permute_rules_order_responses_as_stated(items: list[Item], rule: str) -> None:
    chunk = items[10:18]
    texts = [it.instruction for it in chunk]
    fixed = [3, 0, 7, 1, 6, 2, 5, 4]
    order = M.permute_order(rule, texts, fixed if rule == "FIX" else None)
    expected = {
        "FIX": fixed,
        "REVERSE": list(range(7, -1, -1)),
        "ALPHA": sorted(range(8), key=lambda i: (texts[i], i)),
        "REVERSE_ALPHA": sorted(range(8), key=lambda i: texts[i], reverse=True),
        "LENGTH_WORD": sorted(range(8), key=lambda i: (len(texts[i].split()), i)),
        "REVERSE_LENGTH_WORD": sorted(range(8), key=lambda i: (-len(texts[i].split()), i)),
        "LENGTH_CHAR": sorted(range(8), key=lambda i: (len(texts[i]), i)),
        "REVERSE_LENGTH_CHAR": sorted(range(8), key=lambda i: (-len(texts[i]), i)),
        "ODD_EVEN": [0, 2, 4, 6, 1, 3, 5, 7],
        "EVEN_ODD": [1, 3, 5, 7, 0, 2, 4, 6],
    }[rule]
    assert order == expected
    m = build(chunk, _draw(rule, M.PERMUTE, 8, order=order))
    assert _response_positions(m, chunk) == order
    if rule == "LENGTH_WORD":  # the rule itself: word counts never decrease along the output
        counts = [len(chunk[i].instruction.split()) for i in _response_positions(m, chunk)]
        assert counts == sorted(counts)


def test_sort_ties_keep_original_order() -> None:
    texts = ["b c", "a", "x y", "q"]
    assert M.permute_order("LENGTH_WORD", texts) == [1, 3, 0, 2]
    assert M.permute_order("REVERSE_LENGTH_WORD", texts) == [0, 2, 1, 3]
    assert M.has_ties("LENGTH_WORD", texts) and not M.has_ties("LENGTH_CHAR", ["a", "bb"])


@pytest.mark.parametrize("rule", M.MASK_RULES)
def test_maskout_omits_exactly_the_masked_responses(items: list[Item], rule: str) -> None:
    chunk = items[20:27]
    texts = [it.instruction for it in chunk]
    masked = M.mask_positions(rule, texts, count=2, fixed=[1, 4])
    words = [len(t.split()) for t in texts]
    if rule == "ODD":
        assert masked == [0, 2, 4, 6]
    elif rule == "EVEN":
        assert masked == [1, 3, 5]
    elif rule == "FIX":
        assert masked == [1, 4]
    else:
        longest = rule == "WORD_LONG"
        rest = [words[i] for i in range(7) if i not in masked]
        assert len(masked) == 2
        assert all((words[m] >= r) if longest else (words[m] <= r) for m in masked for r in rest)
    m = build(chunk, _draw(rule, M.MASKOUT, 7, masked=masked))
    for i, it in enumerate(chunk):
        assert (f"({i + 1}) {it.response}" in m.output) == (i not in masked)  # survivors keep their numbers
    assert m.order == [i for i in range(7) if i not in masked]


def test_mask_count_avoids_tied_cuts() -> None:
    texts = ["one two", "three four", "five", "six seven eight"]  # words 2, 2, 1, 3
    assert M.unambiguous_count("WORD_LONG", texts, 2) in (1, 3)  # cutting after 2 would split the tie
    assert M.unambiguous_count("WORD_SHORT", texts, 1) == 1
    assert M.unambiguous_count("WORD_LONG", ["a b", "c d", "e f"], 1) is None


def test_random_draws_are_faithful(items: list[Item]) -> None:
    rng = random.Random(7)
    seen = set()
    for _ in range(400):
        chunk = items[: rng.randint(1, 8)]
        d = draw(rng, chunk, FormatOptions())
        m = build(chunk, d)
        seen.add(d.strategy)
        if len(chunk) == 1:
            assert d.strategy == M.FORMAT
        if d.strategy != M.FORMAT:
            assert d.numbering is not None and d.rule_meta and d.rule_meta in m.instruction
        if d.strategy == M.PERMUTE:
            assert d.order == M.permute_order(d.rule or "", [c.instruction for c in chunk], d.order if d.rule == "FIX" else None)
        if d.tags:
            assert m.output.count(d.tags[1]) == len(m.order)
        for it in chunk:
            assert it.instruction in m.instruction
    assert seen == {M.FORMAT, M.PERMUTE, M.MASKOUT}


@pytest.mark.parametrize("mode", ["uniform", "fix_max", "max_length", "exp", "pareto", "lognormal", "logistic2"])
def test_chunk_sizes(mode: str) -> None:
    rng = random.Random(0)
    ks = [M.draw_chunk_size(rng, mode, 10, 37) for _ in range(2000)]
    if mode == "max_length":
        assert set(ks) == {37}
        return
    assert min(ks) >= 1 and max(ks) <= 10
    mean = sum(ks) / len(ks)
    expected = {"uniform": (5, 6), "fix_max": (10, 10), "exp": (8.5, 10), "pareto": (8, 10), "lognormal": (7, 9.5), "logistic2": (1, 4)}[mode]
    assert expected[0] <= mean <= expected[1], mean


def test_run_is_deterministic_and_covers_every_row(items: list[Item]) -> None:
    count = lambda t: len(t.split())  # noqa: E731
    a = run_mosaic(items, ntokens=count, seed=3, epochs=2, max_tokens=600)
    b = run_mosaic(list(reversed(items)), ntokens=count, seed=3, epochs=2, max_tokens=600)
    c = run_mosaic(items, ntokens=count, seed=4, epochs=2, max_tokens=600)
    texts = lambda r: [m.instruction + m.output for _, m, _ in r.mosaics]  # noqa: E731
    assert texts(a) == texts(b) and texts(a) != texts(c)
    for epoch in (0, 1):
        used = [s.id for srcs, _, e in a.mosaics if e == epoch for s in srcs]
        assert len(used) == len(set(used))  # a row appears at most once per epoch
        assert set(used) == {it.id for it in items} - set(a.too_long)  # and every row that fits does
    assert all(count(m.instruction + m.output) < 600 for _, m, _ in a.mosaics)


def test_token_budget_with_the_embedded_tokenizer(items: list[Item]) -> None:
    ntokens = M.load_token_counter("embedded")
    result = run_mosaic(items[:120], ntokens=ntokens, seed=1, epochs=1, max_tokens=400)
    assert result.mosaics
    assert all(ntokens(m.instruction + m.output) < 400 for _, m, _ in result.mosaics)
    assert result.too_long  # some real rows alone exceed 400 tokens and are reported


def test_golden_mosaic_text(items: list[Item]) -> None:
    chunk = items[:4]
    d = draw(random.Random(11), chunk, FormatOptions())
    m = build(chunk, d)
    check_golden("mosaic_seed11", [{"role": "user", "content": m.instruction}, {"role": "assistant", "content": m.output}])


def test_stage_in_beam_lineage_and_ledger(tmp_path: Path) -> None:
    report, rows, dropped = run_pipeline(
        tmp_path, ALPACA, [{"name": "mosaic", "recipe": "ours", "epochs": 2, "tokenizer": "whitespace", "max_tokens": 800, "seed": 5}], input={"limit": 80}
    )
    assert report["ledger_ok"]
    stage = report["stages"][1]
    assert stage["in"] == 80 and stage["created"] > 10 and stage["kept"] == 80 + stage["created"]
    mosaics = rows.filter(rows["source"] == "mosaic")
    assert mosaics.height == stage["created"]
    ids = set(rows.filter(rows["source"] != "mosaic")["id"].to_list())
    for r in mosaics.iter_rows(named=True):
        meta = json.loads(r["meta"]) if isinstance(r["meta"], str) else r["meta"]
        parents = r["lineage"]["parent_ids"]
        assert len(parents) == meta["count"] >= 2 and set(parents) <= ids
        assert r["lineage"]["method"] == f"mosaic:{meta['strategy']}"
        assert len(meta["order"]) + len(meta["masked"]) == meta["count"]


def test_stage_without_sources_drops_them_with_reasons() -> None:
    kept, _ = read_all(ALPACA)
    stage = M.MosaicStage({"epochs": 1, "tokenizer": "whitespace", "max_tokens": 300})  # recipe mosaic_it: mosaics only
    out, dropped, stats = stage.run_local([kept.head(60)])
    assert (out["source"] == "mosaic").all()
    assert dropped.height == 60 and set(dropped["drop_reason"]) <= {"merged_into_mosaic", "not_merged"}
    s = stats[0]
    assert s.n_in + s.created == s.kept + sum(s.dropped.values())


def test_mosaic_it_recipe_is_the_default_and_alpha_is_case_sensitive() -> None:
    """The paper trains on mosaics only (every chunk, also of one row); the reference sorts with
    Python's `sorted` on the raw strings, so "Zebra" comes before "apple"."""
    p = M.MosaicStage({}).params
    assert p.recipe == "mosaic_it" and M.MosaicStage({})._knob("keep_sources") is False and M.MosaicStage({})._knob("min_count") == 1
    ours = M.MosaicStage({"recipe": "ours"})
    assert ours._knob("keep_sources") is True and ours._knob("min_count") == 2 and ours._knob("alpha_casefold") is True
    assert M.MosaicStage({"recipe": "ours", "min_count": 3})._knob("min_count") == 3
    texts = ["apple pie", "Zebra facts", "banana bread", "Apple cider"]
    assert M.permute_order("ALPHA", texts) == sorted(range(4), key=lambda i: texts[i])  # [3, 1, 0, 2]
    assert M.permute_order("ALPHA", texts) == [3, 1, 0, 2]
    assert M.permute_order("ALPHA", texts, casefold=True) == [3, 0, 2, 1]
    assert M.permute_order("REVERSE_ALPHA", texts) == [2, 0, 1, 3]

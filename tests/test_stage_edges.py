"""Edges of the dedup, filter and decontamination stages: shingles, empty candidates, report
examples, operators the filter refuses, the default text view."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from datacraft.core.rows import batch_from_rows, make_row
from datacraft.stages.dedup.groups import EDGE_SCHEMA
from datacraft.stages.dedup.minhash import band_keys, candidate_edges, shingle_lists, signatures
from datacraft.stages.dedup.semantic import SemanticDedupStage, edges_from_pairs
from datacraft.stages.handoff.decontaminate import EvalIndex, decontaminate_frame
from datacraft.stages.transform.filter import FilterExpressionError, compile_filter
from datacraft.vectors.embedders import embedding_series


def test_shingles_collapse_case_and_whitespace() -> None:
    assert sorted(shingle_lists(["Hello \n  World  now"], "word", 2)[0]) == ["hello world", "world now"]
    assert sorted(shingle_lists(["A  b"], "char", 2)[0]) == [" b", "a "]
    assert shingle_lists(["one two"], "word", 3) == [["one two"]]  # shorter than k: the whole text


def test_char_shingles_default_to_five_and_words_to_three() -> None:
    texts = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"]
    assert np.array_equal(signatures(texts), signatures(texts, ngram=5))
    assert np.array_equal(signatures(texts, shingle="word"), signatures(texts, shingle="word", ngram=3))
    assert not np.array_equal(signatures(texts), signatures(texts, ngram=3))


def test_no_shared_bucket_no_edges() -> None:
    texts = ["alpha beta gamma delta", "completely unrelated words here", "numbers one two three four"]
    sig = signatures(texts, num_perm=64)
    edges = candidate_edges(["a", "b", "c"], sig, band_keys(sig, 16, 4), 0.8)
    assert edges.height == 0 and edges.schema == pl.Schema(EDGE_SCHEMA)
    assert edges_from_pairs(["a"], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)).schema == pl.Schema(EDGE_SCHEMA)


def test_report_keeps_five_examples_of_many_groups() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16))
    x = np.repeat(x / np.linalg.norm(x, axis=1, keepdims=True), 2, axis=0).astype(np.float32)  # 8 exact pairs
    frame = batch_from_rows([make_row([{"role": "user", "content": f"q{i}"}], id=f"r{i}") for i in range(16)]).with_columns(embedding_series(x))
    _, dropped, stats = SemanticDedupStage({"threshold": 0.99, "score": None}).run_local([frame])
    assert dropped.height == 8 and stats[0].extras["group_sizes"] == {"2": 8}
    assert len(stats[0].extras["examples"]) == 5


@pytest.mark.parametrize("expression", ["~q", "+q", "q % 2 > 0", "q is None", "f(q) > 1"])
def test_filter_refuses_operators_it_does_not_know(expression: str) -> None:
    with pytest.raises(FilterExpressionError):
        compile_filter(expression)


def test_decontaminate_reads_the_instruction_by_default() -> None:
    index = EvalIndex.build([("e1", "Explain how photosynthesis turns light into chemical energy in plants")], n=4)
    rows = [
        make_row([{"role": "user", "content": "Explain how photosynthesis turns light into chemical energy in plants"},
                  {"role": "assistant", "content": "Plants use chlorophyll."}], id="leak"),
        make_row([{"role": "user", "content": "Write a haiku about rain"},
                  {"role": "assistant", "content": "Explain how photosynthesis turns light into chemical energy in plants"}], id="answer_only"),
    ]
    result = decontaminate_frame(batch_from_rows(rows), index)
    assert result.dropped["id"].to_list() == ["leak"] and result.kept["id"].to_list() == ["answer_only"]
    assert result.dropped["drop_detail"][0].startswith("overlaps eval e1 (100% of 4-grams)")


def test_decontaminate_default_is_8_gram_containment(tmp_path) -> None:  # noqa: ANN001
    import json

    from datacraft.stages.handoff.decontaminate import DecontaminateStage

    words = ["describe", "the", "main", "causes", "of", "the", "french", "revolution", "and", "explain", "how", "they", "shaped", "modern", "european", "politics", "today"]
    (tmp_path / "eval.jsonl").write_text(json.dumps({"instruction": " ".join(words), "output": "x"}) + "\n")
    rows = [make_row([{"role": "user", "content": " ".join(words[3 : 3 + k])}, {"role": "assistant", "content": "ok"}], id=f"w{k}") for k in (7, 8)]
    rows.append(make_row([{"role": "user", "content": " ".join(words[:12]) + " please keep it brief and simple for children"},
                          {"role": "assistant", "content": "ok"}], id="half"))
    stage = DecontaminateStage({"eval_path": str(tmp_path / "eval.jsonl")})
    result = stage.process(batch_from_rows(rows), stage.load())
    assert sorted(result.dropped["id"].to_list()) == ["half", "w8"] and result.kept["id"].to_list() == ["w7"]
    matches = {m["id"]: m["overlap"] for m in result.extras["decontamination"]["matches"]}
    assert matches == {"w8": 1.0, "half": 0.5}  # shared 8-grams / the fewer 8-grams of either side (w8: 1 of 1; half: 5 of the eval's 10)

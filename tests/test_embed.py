from __future__ import annotations

import numpy as np
import polars as pl

from datacraft.core.stage import RunContext
from datacraft.stages.vectors.embed import EmbedStage
from datacraft.vectors.embedders import EMBEDDING_COLUMN, embeddings_of, encode_sorted, load_embedder

from ._embed_helpers import rows


def test_static_embedder_normalised_and_semantic() -> None:
    e = load_embedder("static")
    assert e is load_embedder("static")  # cached per process
    v = e.encode(["How do I bake bread at home?", "What is a recipe for baking bread?", "The central bank raised interest rates."])
    assert v.dtype == np.float32 and v.shape == (3, e.dim)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_sentence_transformers_embedder_offline() -> None:
    e = load_embedder("sentence-transformers", "embedded")
    v = e.encode(["A man is playing a guitar.", "Someone plays the guitar.", "Stocks fell sharply."])
    assert v.shape == (3, 384) and e.dim == 384
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2]


def test_encode_sorted_keeps_input_order() -> None:
    e = load_embedder("static")
    texts = ["a much longer sentence about cooking pasta with garlic", "hi", "medium length text here"]
    assert np.allclose(encode_sorted(e, texts), e.encode(texts), atol=1e-6)


def test_embed_stage_column_cache_and_float16(tmp_path) -> None:
    frame = rows("alpaca_llamafactory_200.jsonl").head(50)
    ctx = RunContext(cache_dir=str(tmp_path), embedder={"kind": "static"})
    stage = EmbedStage({"text": "instruction_response"}, context=ctx)
    kept, dropped, stats = stage.run_local([frame])
    assert kept.height == 50 and dropped.height == 0
    x = embeddings_of(kept)
    assert x.shape == (50, load_embedder("static").dim)
    assert stats[0].counters["embed.encoded"] == 50
    again = EmbedStage({"text": "instruction_response"}, context=ctx)
    kept2, _, stats2 = again.run_local([frame])
    assert stats2[0].counters["embed.cache_hits"] == 50 and stats2[0].counters["embed.encoded"] == 0
    assert np.allclose(embeddings_of(kept2), x)
    half, _, _ = EmbedStage({"float16": True, "cache": False}, context=ctx).run_local([frame])
    assert half.schema[EMBEDDING_COLUMN] == pl.Array(pl.Float16, x.shape[1])

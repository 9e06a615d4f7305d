"""`embed`: the `embedding` column from a text view, with the run's (or a given) embedder, cached
by content hash; and `EmbeddingSourceParams`, the parameters of every stage that reads embeddings."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from datacraft.core.paths import cache_root
from datacraft.core.rows import text_expr
from datacraft.core.stage import MapStage, StageParams, StageResult
from datacraft.vectors.embedders import (
    EMBEDDING_COLUMN,
    Embedder,
    VectorCache,
    embedder_from,
    embedding_series,
    encode_sorted,
)

TextView = Literal["instruction", "instruction_response", "response", "conversation"]


class EmbeddingSourceParams(StageParams):
    """Parameters of every stage that reads embeddings: which text is embedded when a row has no
    `embedding` column yet, and with which embedder (default: the run's `embedder:` section)."""

    text: TextView = "instruction"
    kind: Literal["sentence-transformers", "static"] | None = None
    model: str | None = None


class EmbedParams(EmbeddingSourceParams):
    batch_size: int | None = None
    float16: bool = False
    cache: bool = True
    overwrite: bool = True


@dataclass
class EmbedResource:
    """An embedder and its vector cache (None when caching is off)."""

    embedder: Embedder
    cache: VectorCache | None

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


class EmbedStage(MapStage[EmbedParams, EmbedResource]):
    """Adds the `embedding` column (reads the text view `text`). Vectors cached by content hash
    (model + text) under the run's cache dir."""

    name = "embed"
    Params = EmbedParams

    def writes(self) -> set[str]:
        return {EMBEDDING_COLUMN}

    def resource_key(self) -> Hashable:
        p = self.params
        return ("embed", p.kind, p.model, p.batch_size, p.cache, repr(sorted(self.context.embedder.items())), self.context.cache_dir)

    def load(self) -> EmbedResource:
        p = self.params
        embedder = embedder_from(self.context, p.kind, p.model, p.batch_size)
        cache = None
        if p.cache:
            folder = Path(self.context.cache_dir) if self.context.cache_dir else cache_root()
            cache = VectorCache(folder / "embeddings", f"{embedder.name}|{embedder.dim}")
        return EmbedResource(embedder, cache)

    def process(self, batch: pl.DataFrame, resource: EmbedResource) -> StageResult:
        if batch.height == 0 or (EMBEDDING_COLUMN in batch.columns and not self.params.overwrite):
            return StageResult(kept=batch)
        texts = batch.select(text_expr(self.params.text).alias("t"))["t"].to_list()
        vectors = np.zeros((len(texts), resource.embedder.dim), dtype=np.float32)
        todo = list(range(len(texts)))
        keys: list[str] = []
        if resource.cache is not None:
            keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=12).hexdigest() for t in texts]
            found = resource.cache.get(sorted(set(keys)))
            todo = [i for i, k in enumerate(keys) if k not in found]
            for i, k in enumerate(keys):
                if k in found:
                    vectors[i] = found[k]
        if todo:
            fresh = encode_sorted(resource.embedder, [texts[i] for i in todo])
            vectors[todo] = fresh
            if resource.cache is not None:
                resource.cache.put([keys[i] for i in todo], fresh)
        kept = batch.with_columns(embedding_series(vectors, self.params.float16))
        counters: dict[str, Any] = {"embed.rows": len(texts), "embed.encoded": len(todo), "embed.cache_hits": len(texts) - len(todo)}
        return StageResult(kept=kept, counters=counters)

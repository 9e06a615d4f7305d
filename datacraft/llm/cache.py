"""A content-addressed LLM response cache in SQLite (WAL mode), safe across threads and processes.

The key of a request is a hash of (engine, model, sampling parameters, messages, JSON schema):
`request_key`. Values are JSON objects (a serialised `Result`). Several workers, and a rerun after
a kill, share one file: a finished call is never repeated.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datacraft.core.rows import content_hash
from datacraft.core.sqlite import open_shared
from datacraft.llm.types import Request, Result, TokenLogprob

CACHE_FILE = "llm_cache.sqlite"
_CHUNK = 500  # SQLite host-parameter limit is 999 on old builds


def request_key(engine: str, model: str, request: Request) -> str:
    """The cache key: every input that decides the output, never the caller's `tag`."""
    parts: list[Any] = [engine, model, request.sampling.model_dump(mode="json"), [list(m) for m in request.messages], request.json_schema]
    if request.prompt is not None:  # appended only for raw prompts: chat keys stay what they were
        parts.append({"raw_prompt": request.prompt})
    return content_hash(*parts, length=32)


def result_to_dict(result: Result) -> dict[str, Any]:
    """A JSON-able form of a result (what the cache stores)."""
    return {
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "finish_reason": result.finish_reason,
        "logprobs": None
        if result.logprobs is None
        else [[lp.token, lp.logprob, lp.top] for lp in result.logprobs],
        "error": result.error,
    }


def result_from_dict(data: Mapping[str, Any], cached: bool = True) -> Result:
    logprobs = data.get("logprobs")
    return Result(
        text=data.get("text", ""),
        prompt_tokens=int(data.get("prompt_tokens", 0)),
        completion_tokens=int(data.get("completion_tokens", 0)),
        finish_reason=data.get("finish_reason", ""),
        logprobs=None if logprobs is None else [TokenLogprob(t, float(lp), dict(top)) for t, lp, top in logprobs],
        error=data.get("error"),
        cached=cached,
    )


class LLMCache:
    """`get_many(keys) -> {key: value}`, `put_many({key: value} | [(key, value)])`; values are JSON objects."""

    def __init__(self, path: str) -> None:
        p = Path(path)
        if p.is_dir() or (not p.suffix and not p.exists()):
            p = p / CACHE_FILE
        p.parent.mkdir(parents=True, exist_ok=True)
        self.path = str(p)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = open_shared(
            self.path, "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"LLMCache {self.path} is closed")
        return self._conn

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for i in range(0, len(keys), _CHUNK):
                part = keys[i : i + _CHUNK]
                marks = ",".join("?" * len(part))
                for key, value in self.conn.execute(f"SELECT key, value FROM responses WHERE key IN ({marks})", part):
                    out[key] = json.loads(value)
        return out

    def put_many(self, items: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        if not pairs:
            return 0
        now = time.time()
        rows = [(k, json.dumps(v, ensure_ascii=False), now) for k, v in pairs]
        with self._lock:
            self.conn.executemany("INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)", rows)
            self.conn.commit()
        return len(rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> LLMCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ComputeCache:
    """Content-addressed results of in-process model computations (judge logits, IFD losses, rewards).

    Stored in the run's LLM cache file under keys that cannot collide with request keys, so a resumed
    run repeats no forward pass. `namespace` is everything besides the item that decides the value
    (computation kind, model, dtype, lengths); with no `cache_dir` every item is computed."""

    def __init__(self, cache_dir: str | None, namespace: Sequence[Any]) -> None:
        self.cache = LLMCache(cache_dir) if cache_dir else None
        self.namespace = ["compute", *namespace]
        self.hits = 0
        self.computed = 0

    def map(self, items: Sequence[Any], compute: Callable[[list[Any]], Sequence[Any]]) -> list[Any]:
        """`compute(items)` for the items not cached yet, cached values for the rest, in order."""
        keys = [content_hash(self.namespace, item, length=32) for item in items]
        found = {k: v["value"] for k, v in self.cache.get_many(keys).items()} if self.cache is not None else {}
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            values = list(compute([items[i] for i in missing]))
            new = {keys[i]: value for i, value in zip(missing, values, strict=True)}
            if self.cache is not None:
                self.cache.put_many({k: {"value": v} for k, v in new.items()})
            found.update(new)
        self.hits += len(items) - len(missing)
        self.computed += len(missing)
        return [found[k] for k in keys]

    def pop_counters(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}.cache_hits": float(self.hits), f"{prefix}.computed": float(self.computed)}
        self.hits = self.computed = 0
        return out

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

"""Where datacraft keeps things outside a run folder, and what a file's name says it holds."""

from __future__ import annotations

import os
from pathlib import Path

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")


def is_jsonl(path: str) -> bool:
    """Whether the name says JSON lines (plain or gzip)."""
    return path.lower().endswith(JSONL_SUFFIXES)


def cache_root() -> Path:
    """datacraft's user cache dir (models converted once, shared caches); `DATACRAFT_CACHE` overrides."""
    env = os.environ.get("DATACRAFT_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("datacraft"))


def is_parquet(path: str) -> bool:
    return path.lower().endswith(".parquet")

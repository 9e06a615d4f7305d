"""Several workers opening one fresh cache file together (CI saw 'database is locked' from the WAL switch)."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from datacraft.core.sqlite import open_shared
from datacraft.llm.cache import LLMCache
from datacraft.vectors.embedders import VectorCache

WORKERS = 6
TRIALS = 12


def _open_and_write(args: tuple[str, int]) -> str:
    folder, i = args
    vectors = VectorCache(folder, "model|4")
    vectors.put([f"k{i}"], np.full((1, 4), i, dtype=np.float32))
    LLMCache(folder).put_many({f"k{i}": {"text": str(i)}})
    return "ok"


def test_workers_opening_one_fresh_store_together_all_succeed(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    with ctx.Pool(WORKERS) as pool:
        for trial in range(TRIALS):
            folder = tmp_path / str(trial)
            folder.mkdir()
            assert pool.map(_open_and_write, [(str(folder), i) for i in range(WORKERS)]) == ["ok"] * WORKERS
            got = VectorCache(folder, "model|4").get([f"k{i}" for i in range(WORKERS)])
            assert {k: float(v[0]) for k, v in got.items()} == {f"k{i}": float(i) for i in range(WORKERS)}
            assert LLMCache(str(folder)).get_many([f"k{i}" for i in range(WORKERS)]) == {f"k{i}": {"text": str(i)} for i in range(WORKERS)}


def test_open_shared_is_in_wal_mode_and_gives_up_with_the_path_when_held(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    conn = open_shared(path, "CREATE TABLE IF NOT EXISTS t (k TEXT)")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    holder = sqlite3.connect(str(tmp_path / "r.sqlite"))
    holder.execute("CREATE TABLE t (k TEXT)")
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError, match="r.sqlite"):
        open_shared(tmp_path / "r.sqlite", "CREATE TABLE IF NOT EXISTS t (k TEXT)", wait_s=0.3)
    holder.rollback()

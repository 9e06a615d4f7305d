"""One way to open the sqlite stores (LLM cache, vector cache) that several workers share."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT_S = 60.0


def open_shared(path: str | Path, schema: str, wait_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Connect in WAL mode and run `schema`, retrying while another worker holds the file.

    SQLite answers `PRAGMA journal_mode=WAL` with "database is locked" at once, without
    waiting out the busy timeout, when another connection is opening the same fresh file:
    several Beam workers starting together hit that, so the switch is retried here.
    """
    conn = sqlite3.connect(str(path), timeout=wait_s, check_same_thread=False)
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(schema)
            conn.commit()
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                conn.close()
                raise
            if time.monotonic() > deadline:
                conn.close()
                raise sqlite3.OperationalError(f"{path}: still locked by another worker after {wait_s:.0f} s") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

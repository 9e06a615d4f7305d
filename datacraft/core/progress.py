"""Live per-stage progress for runs in the CLI process (the in-process runner).

Stages report each finished batch through `advance`; the CLI installs a sink that draws rich
progress bars. Workers in other processes (multi-processing, portable runners) have no sink, and
`advance` is then a no-op: the report at the end is the authoritative count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_sink: Callable[[str, int, int], None] | None = None
_lock = threading.Lock()


def set_sink(sink: Callable[[str, int, int], None] | None) -> None:
    global _sink
    _sink = sink


def advance(stage: str, rows_in: int, rows_kept: int) -> None:
    sink = _sink
    if sink is not None:
        with _lock:
            sink(stage, rows_in, rows_kept)

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


class ProgressLog:
    """Per-stage progress for log files: rows done, the rows known to reach the stage so far (what the
    stage before it kept), rate and ETA. `line(now)` is one log line; the CLI writes one every N seconds
    when stderr is not a terminal."""

    def __init__(self, labels: list[str], start: float) -> None:
        self.labels = list(labels)
        self.start = start
        self.rows_in = dict.fromkeys(self.labels, 0)
        self.rows_kept = dict.fromkeys(self.labels, 0)

    def record(self, stage: str, rows_in: int, rows_kept: int) -> None:
        if stage in self.rows_in:
            self.rows_in[stage] += rows_in
            self.rows_kept[stage] += rows_kept

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        parts = []
        for k, stage in enumerate(self.labels):
            done = self.rows_in[stage]
            total = self.rows_kept[self.labels[k - 1]] if k else None
            rate = done / elapsed
            text = f"{stage} {done:,}" + (f"/{total:,}" if total is not None else "") + f" rows ({rate:,.1f}/s"
            if total is not None and total > done and rate > 0:
                text += f", ETA {_duration((total - done) / rate)}"
            parts.append(text + ")")
        return f"progress {_duration(elapsed)}: " + "; ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

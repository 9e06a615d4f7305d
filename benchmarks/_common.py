"""Shared helpers of the benchmarks: data, emit, and the alternating side-by-side timing harness."""

from __future__ import annotations

import importlib.metadata
import json
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def blobs_on_sphere(n: int, d: int = 384, clusters: int | None = None, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors: Gaussian blobs around random centres with Zipf-like cluster sizes."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(10, n // 500)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, clusters + 1) ** 0.7
    labels = rng.choice(clusters, size=n, p=p / p.sum())
    x = centres[labels] + rng.normal(scale=spread / np.sqrt(d), size=(n, d)).astype(np.float32) * rng.uniform(0.5, 1.5, size=(n, 1)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def emit(record: dict[str, Any]) -> None:
    """The benchmark's last line: one JSON object."""
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}))


# -- robust side-by-side timing -------------------------------------------------------------------
def loadavg() -> list[float]:
    """The 1/5/15-minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


class Monitor:
    """While the block runs, a 20 ms sampling thread follows this process and its descendants.

    `gb`: peak resident memory of the tree above its level at the start. `child_cpu`: CPU seconds of
    the descendants as last seen alive (pool workers that are never waited for escape `os.times`).
    """

    def __enter__(self) -> Monitor:
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        rss = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                t = child.cpu_times()
                rss += child.memory_info().rss
                self.seen[child.pid] = t.user + t.system
            except psutil.Error:  # exited between listing and reading
                pass
        self.peak = max(self.peak, rss)

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def gb(self) -> float:
        return (self.peak - self.base) / 1024**3

    @property
    def child_cpu(self) -> float:
        return sum(self.seen.values())


@dataclass
class Trial:
    wall: float
    cpu: float
    peak_gb: float
    result: Any = field(default=None, repr=False)


def measure(fn: Callable[[], Any]) -> Trial:
    """Wall seconds, CPU seconds (user + sys, descendants included) and peak RSS growth of one call."""
    with Monitor() as mon:
        c0, t0 = os.times(), time.perf_counter()
        out = fn()
        wall, c1 = time.perf_counter() - t0, os.times()
    own = (c1.user + c1.system) - (c0.user + c0.system)
    waited = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
    return Trial(wall, own + max(waited, mon.child_cpu), mon.gb, out)


def alternate(sides: dict[str, Callable[[], Any]], pairs: int = 3, warmups: dict[str, Callable[[], Any]] | None = None,
              before: Callable[[str], None] | None = None, log: bool = True) -> dict[str, list[Trial]]:
    """Run the sides interleaved (A B C, A B C, … `pairs` rounds), each warm-up first and untimed.

    `warmups` maps a side to its warm-up call (default: the side itself once, untimed); `before(name)`
    runs untimed before every call (clean an output folder). Interleaving puts every side under the
    same machine load, so a paired ratio compares like with like.
    """
    for name, fn in sides.items():
        if before:
            before(name)
        (warmups or {}).get(name, fn)()
    trials: dict[str, list[Trial]] = {name: [] for name in sides}
    for i in range(pairs):
        for name, fn in sides.items():
            if before:
                before(name)
            trial = measure(fn)
            trials[name].append(trial)
            if log:
                print(f"round {i + 1} {name:>12s}: {trial.wall:8.2f} s wall {trial.cpu:8.2f} s CPU "
                      f"{trial.peak_gb:6.2f} GB peak  load {loadavg()[:1]}", flush=True)
    return trials


def paired(trials: dict[str, list[Trial]], ours: str, peer: str) -> dict[str, Any]:
    """`ours` time / `peer` time: the median of the paired wall ratios, the CPU-time ratio, and a verdict.

    ratio < 1: ours is faster. A spread of the paired ratios above 2× means the load changed under the
    run: the verdict then says so instead of naming a winner.
    """
    walls = [a.wall / b.wall for a, b in zip(trials[ours], trials[peer], strict=True)]
    cpus = [a.cpu / b.cpu for a, b in zip(trials[ours], trials[peer], strict=True) if b.cpu > 0]
    ratio, spread = statistics.median(walls), max(walls) / min(walls)
    if spread > 2:
        verdict = f"pairs disagree >2x ({min(walls):.2f}-{max(walls):.2f}): no verdict"
    else:
        verdict = f"{ours} {'faster' if ratio < 1 else 'slower'}: {1 / ratio:.2f}x {peer}'s speed"
    return {"ratio": ratio, "cpu_ratio": statistics.median(cpus) if cpus else None, "ratios": [round(r, 3) for r in walls],
            "spread": spread, "verdict": verdict,
            "seconds": statistics.median(t.wall for t in trials[ours]), "peer_seconds": statistics.median(t.wall for t in trials[peer])}


def robust_record(trials: dict[str, list[Trial]], ours: str, load_start: list[float]) -> dict[str, Any]:
    """JSON fields for every peer vs `ours`: time ratios, CPU ratios, verdicts, per-side medians, load at start and end."""
    record: dict[str, Any] = {"pairs": len(trials[ours]), "loadavg_start": load_start, "loadavg_end": loadavg(), "sides": {}}
    for name, ts in trials.items():
        record["sides"][name] = {"seconds": round(statistics.median(t.wall for t in ts), 3),
                                 "cpu_seconds": round(statistics.median(t.cpu for t in ts), 3),
                                 "peak_gb": round(max(t.peak_gb for t in ts), 3)}
        if name != ours:
            p = paired(trials, ours, name)
            record[f"ratio_vs_{name}"] = round(p["ratio"], 3)
            record[f"cpu_ratio_vs_{name}"] = None if p["cpu_ratio"] is None else round(p["cpu_ratio"], 3)
            record[f"spread_vs_{name}"] = round(p["spread"], 3)
            record[f"verdict_vs_{name}"] = p["verdict"]
            print(f"{ours} vs {name}: time ratio {p['ratio']:.3f} (pairs {p['ratios']}), CPU ratio "
                  f"{p['cpu_ratio'] if p['cpu_ratio'] is None else round(p['cpu_ratio'], 3)} -> {p['verdict']}", flush=True)
    return record


def version(dist: str) -> str | None:
    """Installed version of a distribution, None when absent (`datacraft`: the package's own version,
    whatever name it was installed under)."""
    if dist == "datacraft":
        import datacraft

        return datacraft.__version__
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_peers(requested: str, dists: dict[str, str], versions: dict[str, str | None], skipped: dict[str, str]) -> list[str]:
    """The peers named in `requested` (comma-separated) whose distribution (`dists[name]`) is
    installed; their versions go into `versions`, the others into `skipped` with the reason."""
    chosen = []
    for name in [p for p in requested.split(",") if p]:
        if version(dists[name]) is None:
            skipped[name] = f"{dists[name]} not installed (pip install -e '.[bench]')"
            continue
        versions[name] = version(dists[name])
        chosen.append(name)
    return chosen

"""Reader cost of the bad-input checks: this tree's JSONL reader (A) against another checkout's (B,
default /work/main), on the same file of real Alpaca rows (repeated), in alternating subprocesses.

    python benchmarks/bench_read.py [--quick] [--other /work/main] [--rows 400000]

Each pair runs A then B (then B then A on the next pair); prints per-pair wall and CPU seconds,
then one JSON object: median paired wall ratio A/B and CPU-time ratio A/B (> 1: this tree slower).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

HERE = Path(__file__).resolve().parent.parent
SOURCE = HERE / "tests" / "data" / "alpaca_llamafactory_200.jsonl"
CHILD = """
import json, os, sys, time
t0, c0 = time.perf_counter(), os.times()
from datacraft.io.readers import read_all
kept, dropped = read_all(sys.argv[1])
c1 = os.times()
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": (c1.user - c0.user) + (c1.system - c0.system), "kept": kept.height, "dropped": dropped.height}))
"""


def _one(tree: Path, path: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", CHILD, path], env=env, capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50,000 rows, 2 pairs")
    parser.add_argument("--other", default="/work/main")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    rows, pairs = (50_000, 2) if args.quick else (args.rows, args.pairs)
    lines = SOURCE.read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "corpus.jsonl")
        with open(path, "w", encoding="utf-8") as fh:
            for i in range(rows):
                record = json.loads(lines[i % len(lines)])
                record["id"] = f"r{i}"
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        walls, cpus = [], []
        for k in range(pairs):
            order = [HERE, Path(args.other)] if k % 2 == 0 else [Path(args.other), HERE]
            got = {str(tree): _one(tree, path) for tree in order}
            a, b = got[str(HERE)], got[str(Path(args.other))]
            assert a["kept"] + a["dropped"] == rows
            walls.append(a["wall"] / b["wall"])
            cpus.append(a["cpu"] / b["cpu"])
            print(f"pair {k}: this {a['wall']:.2f}s wall {a['cpu']:.2f}s cpu; other {b['wall']:.2f}s wall {b['cpu']:.2f}s cpu")
    emit({"bench": "read_jsonl", "rows": rows, "pairs": pairs, "wall_ratio_median": float(np.median(walls)), "cpu_ratio_median": float(np.median(cpus))})


if __name__ == "__main__":
    main()

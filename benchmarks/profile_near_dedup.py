"""Where `near_dedup`'s time goes, phase by phase (wall and process CPU seconds), on the corpus of
`bench_near_dedup.py`; saves the dropped rows (id, reason, detail) and asserts they equal a saved run's.

A before/after check of a change: run it with the old code first (PYTHONPATH at a worktree of the old
commit), then with the new one:

    PYTHONPATH=../old python benchmarks/profile_near_dedup.py --n 100000 --save /tmp/before.parquet
    PYTHONPATH=$PWD  python benchmarks/profile_near_dedup.py --n 100000 --compare /tmp/before.parquet
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

# datacraft first, from PYTHONPATH (the code under test): bench_near_dedup puts this checkout on sys.path
import datacraft
from datacraft.io.readers import read_all
from datacraft.stages.dedup import minhash
from datacraft.stages.dedup.groups import dedup_result, node_frame

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_near_dedup import NGRAM, NUM_PERM, THRESHOLD, make_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="documents")
    ap.add_argument("--save", help="write the dropped rows here (Parquet)")
    ap.add_argument("--compare", help="assert the dropped rows equal this saved run's")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corpus.jsonl"
        make_corpus(src, args.n, 0.1)
        stage = minhash.MinHashDedupStage({"text": "instruction", "threshold": THRESHOLD, "shingle": "word", "ngram": NGRAM,
                                           "num_perm": NUM_PERM, "score": None})
        stage.process_all(read_all(str(src))[0].head(200))  # compiled kernels loaded before timing
        phases: dict[str, tuple[float, float]] = {}
        clock = [time.perf_counter(), time.process_time()]

        def done(name: str) -> None:
            phases[name] = (round(time.perf_counter() - clock[0], 3), round(time.process_time() - clock[1], 3))
            clock[:] = [time.perf_counter(), time.process_time()]

        frame, _ = read_all(str(src))
        done("read_all")
        sig = stage.signatures_of(frame)
        done("signatures")
        keys = minhash.band_keys(sig, *stage.bands_rows())
        done("band_keys")
        edges = minhash.candidate_edges(frame["id"].to_list(), sig, keys, THRESHOLD)
        done("candidate_edges")
        rows = minhash.with_edges(frame, edges) if hasattr(minhash, "with_edges") else frame  # older code: every row
        nodes = node_frame(rows, None, "instruction")
        done("node_frame")
        result = dedup_result(stage.label, frame, edges, nodes, THRESHOLD, "jaccard")
        done("resolve_and_split")
    print(f"datacraft from {Path(datacraft.__file__).parent}")
    print(f"{args.n} documents, {edges.height} edges, {result.dropped.height} dropped; (wall s, CPU s) per phase:")
    for name, (wall, cpu) in phases.items():
        print(f"  {name:>18s}: {wall:7.3f} {cpu:7.3f}")
    dropped = result.dropped.select("id", "drop_reason", "drop_detail").sort("id")
    if args.save:
        dropped.write_parquet(args.save)
    if args.compare:
        assert dropped.equals(pl.read_parquet(args.compare)), f"dropped rows differ from {args.compare}"
        print(f"dropped rows identical to {args.compare}")


if __name__ == "__main__":
    main()

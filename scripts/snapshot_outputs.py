"""Run every shipped config into a folder, or compare two such folders (data/ and dropped/).

    python scripts/snapshot_outputs.py run SNAP [--limit 48] [--only filter,select]
    python scripts/snapshot_outputs.py compare SNAP_A SNAP_B

`run` skips train_*.yaml (trainer configs, not pipelines) and configs that need a server or a GPU
(openai, vllm). LLM configs run with `input.limit` so a snapshot takes minutes, not hours.
`compare` checks that every Parquet file under data/ holds the same rows in the same order and that
every file under dropped/ is byte-identical; it prints one line per config and exits 1 on any
difference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"openai", "vllm", "train_sft", "train_dpo"}
LLM = {"default", "dpo", "ds2", "generate", "multihop", "reflection", "score"}


def configs(only: set[str] | None) -> list[Path]:
    return [p for p in sorted((ROOT / "configs").glob("*.yaml")) if p.stem not in SKIP and (not only or p.stem in only)]


def run(snap: Path, limit: int, only: set[str] | None) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    failed = 0
    for cfg in configs(only):
        out = snap / cfg.stem
        cmd = [sys.executable, "-m", "datacraft.cli", "run", str(cfg), "-o", str(out), "--overwrite"]
        if cfg.stem in LLM:
            cmd += ["--set", f"input.limit={limit}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        print(f"{cfg.stem}: rc={proc.returncode}", flush=True)
        if proc.returncode:
            failed += 1
            print(proc.stderr[-2000:], file=sys.stderr)
    return 1 if failed else 0


def frame_of(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)


def compare(a: Path, b: Path) -> int:
    bad = 0
    for run_a in sorted(p for p in a.iterdir() if p.is_dir()):
        run_b = b / run_a.name
        problems = []
        for sub in ("data", "dropped"):
            files_a = sorted(f.relative_to(run_a) for f in (run_a / sub).rglob("*") if f.is_file())
            files_b = sorted(f.relative_to(run_b) for f in (run_b / sub).rglob("*") if f.is_file()) if run_b.exists() else []
            if files_a != files_b:
                problems.append(f"{sub}: files differ {sorted(set(map(str, files_a)) ^ set(map(str, files_b)))[:4]}")
                continue
            for rel in files_a:
                fa, fb = run_a / rel, run_b / rel
                if fa.read_bytes() == fb.read_bytes():
                    continue
                if fa.suffix == ".parquet" and frame_of(fa).equals(frame_of(fb)):
                    continue
                problems.append(f"{rel}: content differs")
        bad += bool(problems)
        print(f"{run_a.name}: {'identical' if not problems else '; '.join(problems)}")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("snap", type=Path)
    r.add_argument("--limit", type=int, default=48)
    r.add_argument("--only", default="")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.cmd == "run":
        return run(args.snap.resolve(), args.limit, set(filter(None, args.only.split(","))) or None)
    return compare(args.a, args.b)


if __name__ == "__main__":
    raise SystemExit(main())

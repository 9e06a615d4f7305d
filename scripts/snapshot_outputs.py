"""Run every shipped config into a folder, or compare two such folders (data/ and dropped/).

    python scripts/snapshot_outputs.py run SNAP [--limit 48] [--only filter,select] [--rev REV]
    python scripts/snapshot_outputs.py compare SNAP_A SNAP_B

`run --rev REV` runs commit REV's own configs with REV's own code (a temporary detached git worktree,
put first on PYTHONPATH and removed afterwards), so a before/after check is two `run`s and a `compare`.

`run` skips train_*.yaml (trainer configs, not pipelines) and configs that need a server or a GPU
(openai, vllm). LLM configs run with `input.limit` so a snapshot takes minutes, not hours.
`compare` checks that every Parquet file under data/ holds the same rows in the same order and that
every file under dropped/ is byte-identical; it prints one line per config and exits 1 on any
difference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
# the same lists as tests/test_reproducible.py's NOT_RUN and LLM (a test keeps them equal)
SKIP = {"openai", "vllm", "gpu", "train_sft", "train_dpo", "lift_alpacaeval"}
LLM = {"cherry", "default", "dpo", "ds2", "generate", "multihop", "reflection", "score"}


def configs(root: Path, only: set[str] | None) -> list[Path]:
    return [p for p in sorted((root / "configs").glob("*.yaml")) if p.stem not in SKIP and (not only or p.stem in only)]


def cli_module(root: Path) -> str:
    """The module `python -m` runs as the CLI: `datacraft.cli`, except at commits whose `cli/` package
    had no `__main__.py` yet (3608f44), where it is `datacraft.cli.main`."""
    pkg = root / "datacraft" / "cli"
    return "datacraft.cli.main" if pkg.is_dir() and not (pkg / "__main__.py").exists() else "datacraft.cli"


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A temporary detached worktree of `rev`, removed on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="snapshot-"))
    tree = tmp / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True, capture_output=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def run(snap: Path, limit: int, only: set[str] | None, root: Path = ROOT) -> int:
    """Run `root`'s configs with `root`'s code (first on PYTHONPATH) into `snap/<config>/`."""
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    failed = 0
    for cfg in configs(root, only):
        out = snap / cfg.stem
        cmd = [sys.executable, "-m", cli_module(root), "run", str(cfg), "-o", str(out), "--overwrite"]
        if cfg.stem in LLM:
            cmd += ["--set", f"input.limit={limit}"]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
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


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("snap", type=Path)
    r.add_argument("--limit", type=int, default=48)
    r.add_argument("--only", default="", help="comma-separated config names (default: every config)")
    r.add_argument("--rev", default=None, help="run this commit's configs and code instead of this checkout's")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        args.snap = args.snap.resolve()
        args.only = set(filter(None, args.only.split(","))) or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.cmd == "compare":
        return compare(args.a, args.b)
    if args.rev is None:
        return run(args.snap, args.limit, args.only)
    with checkout(args.rev) as tree:
        print(f"--rev {args.rev}: {tree}", flush=True)
        return run(args.snap, args.limit, args.only, tree)


if __name__ == "__main__":
    raise SystemExit(main())

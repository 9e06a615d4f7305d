"""Curation lift: SFT the embedded model on k rows chosen by the pipeline vs k random rows of the same pool.

Pool: AlpacaEval model outputs (../shared/data/sft/alpaca_eval_model_outputs*) of six models
(alpaca-7b, davinci-003, vicuna-7b, llama-2-70b-chat, claude-2, Mixtral) — every prompt answered
several times, from weak to strong. Held out: H prompts, answered by gpt4_1106_preview (strong
reference answers); those prompts and every gpt4 row are kept out of the pool.

Curated arm: the stages that exist at run time, in order: heuristics → filter (no refusals,
response ≥ 20 words) → exact_dedup on the instruction (keeps the longest answer) → select
(facility location on instruction embeddings, budget k). Random arm: k rows drawn from the same pool.
Both arms train the same model with the same TRL settings (prompt-completion, loss on the answer),
then TRL evaluates the answer loss (mean token NLL) on the held-out reference answers. Lower is
better; lift = random − curated. Three seeds (training order, random draw).

    python benchmarks/bench_lift.py --quick        # < 60 s (1 seed, tiny)
    python benchmarks/bench_lift.py                # full: k=16, 2 epochs, 3 seeds (≈ 10-15 min on 2 loaded cores)
    python benchmarks/bench_lift.py --k 64 --heldout 48 --max-length 256   # a stronger check (GPU or idle CPU)

Last line: {"benchmark": "lift", ...}.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from datacraft.core.rows import batch_from_rows, response_expr  # noqa: E402
from datacraft.core.stage import RunContext  # noqa: E402
from datacraft.io.formats import to_row  # noqa: E402
from datacraft.stages.registry import build_stage, stage_names  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft"
STRONG = "gpt4_1106_preview"


def load_outputs() -> list[dict[str, Any]]:
    files = sorted(glob.glob(str(DATA / "alpaca_eval_model_outputs*.jsonl")))
    if not files:
        raise SystemExit(f"no alpaca_eval_model_outputs files under {DATA}")
    return [json.loads(line) for f in files for line in open(f, encoding="utf-8") if line.strip()]


def split_pool(records: list[dict[str, Any]], n_heldout: int, pool_prompts: int | None, seed: int = 1234) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(pool batch, held-out batch): held-out = gpt4 answers to n_heldout prompts; pool = other models'
    answers to the other prompts (optionally only `pool_prompts` of them)."""
    key = lambda r: (r["instruction"].strip(), r.get("input", "").strip())  # noqa: E731
    strong = {key(r): r for r in records if r["id"].startswith(STRONG + ":")}
    prompts = sorted(strong)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(prompts))
    heldout_keys = {prompts[i] for i in order[:n_heldout]}
    rest = [prompts[i] for i in order[n_heldout:]]
    pool_keys = set(rest[:pool_prompts] if pool_prompts else rest)
    pool = [r for r in records if not r["id"].startswith(STRONG + ":") and key(r) in pool_keys and r["output"].strip()]
    heldout = [strong[k] for k in sorted(heldout_keys)]
    as_batch = lambda rs, src: batch_from_rows([to_row(r, "alpaca", source=src) for r in rs])  # noqa: E731
    return as_batch(pool, "alpaca_eval_pool"), as_batch(heldout, STRONG)


def curate(pool: pl.DataFrame, k: int, seed: int) -> tuple[pl.DataFrame, list[str]]:
    """Run the curation stages present in this installation; returns (k rows, stage names used)."""
    available = set(stage_names())
    ctx = RunContext(seed=seed)
    plan: list[tuple[str, dict[str, Any]]] = []
    if "heuristics" in available:
        plan.append(("heuristics", {}))
        if "filter" in available:
            plan.append(("filter", {"where": ["refusal == 0", "length.response >= 20"]}))
    if "exact_dedup" in available:
        plan.append(("exact_dedup", {"text": "instruction"}))
    if "select" in available:
        plan.append(("select", {"function": "facility_location", "budget": k, "text": "instruction"}))
    frame, used = pool, []
    for name, params in plan:
        stage = build_stage(name, params, context=ctx)
        kept, dropped, _ = stage.run_local([frame])
        assert frame.height == kept.height + dropped.height, f"{name}: rows lost"
        frame, used = kept, [*used, name]
    if frame.height > k:  # no selection stage: a seeded draw from what survived the filters
        frame = frame.sample(n=k, seed=seed)
        used.append("random-after-filters")
    return frame.head(k), used


def run_arm(rows: pl.DataFrame, heldout_ds: Any, args: argparse.Namespace, seed: int, out: Path, base: dict[str, float]) -> float:
    """Train on `rows` (prompt-completion SFT) and return TRL's eval loss on the held-out answers."""
    from trl import SFTTrainer

    from datacraft.llm.models import resolve_model
    from datacraft.train.trainer import load_split, load_train_config, prepare_data, trl_args

    trl = {
        "per_device_train_batch_size": args.batch, "per_device_eval_batch_size": args.batch, "max_length": args.max_length,
        "learning_rate": args.lr, "lr_scheduler_type": "constant", "num_train_epochs": args.epochs,
        "disable_tqdm": True, "logging_steps": 1000, "eval_strategy": "no",
    }
    cfg = load_train_config(None, "sft", {"output_dir": str(out), "sft_style": "prompt_completion", "seed": seed, "trl": trl})
    export = prepare_data(cfg, rows)
    trainer = SFTTrainer(
        model=resolve_model("embedded"), args=trl_args(cfg), train_dataset=load_split(export, "sft", "train"), eval_dataset=heldout_ds,
    )
    if "loss" not in base:
        base["loss"] = float(trainer.evaluate()["eval_loss"])
        print(f"  base model held-out answer loss {base['loss']:.4f}", flush=True)
    trainer.train()
    return float(trainer.evaluate()["eval_loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny run under 60 s (1 seed)")
    ap.add_argument("--k", type=int, default=16, help="rows per arm")
    ap.add_argument("--heldout", type=int, default=12, help="held-out prompts (gpt4 answers)")
    ap.add_argument("--pool-prompts", type=int, default=None, help="limit the pool to this many prompts")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: 1 when the machine is oversubscribed, else all)")
    ap.add_argument("--workdir", default="/tmp/datacraft_bench_lift")
    args = ap.parse_args()
    if args.quick:
        args.k, args.heldout, args.pool_prompts, args.seeds, args.batch, args.max_length = 4, 4, 40, 1, 2, 64

    import torch

    from datacraft.train.export import convert
    from datacraft.train.trainer import cpu_threads_for_load

    torch.set_num_threads(args.threads or cpu_threads_for_load())
    t0 = time.perf_counter()
    pool, heldout = split_pool(load_outputs(), args.heldout, args.pool_prompts)
    print(f"pool {pool.height} rows ({pool['id'].str.split(':').list.first().n_unique()} models), held-out {heldout.height} {STRONG} answers", flush=True)
    curated, used = curate(pool, args.k, seed=0)
    print(f"curated arm: {curated.height} rows via {' → '.join(used)} ({time.perf_counter() - t0:.1f} s)", flush=True)

    from datasets import Dataset

    held_rows, _ = convert(heldout, "sft", "prompt_completion", keep=())
    heldout_ds = Dataset.from_list(held_rows.to_dicts())
    work = Path(args.workdir)
    base: dict[str, float] = {}
    results: dict[str, list[float]] = {"curated": [], "random": []}
    mean_chars = {"curated": float(curated.select(response_expr().str.len_chars().mean()).item())}
    random_chars = []
    for seed in range(args.seeds):
        random_rows = pool.sample(n=args.k, seed=seed)
        random_chars.append(float(random_rows.select(response_expr().str.len_chars().mean()).item()))
        for arm, rows in (("curated", curated), ("random", random_rows)):
            t = time.perf_counter()
            loss = run_arm(rows, heldout_ds, args, seed, work / f"{arm}-{seed}", base)
            results[arm].append(loss)
            print(f"  seed {seed} {arm:8s} held-out answer loss {loss:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    mean_chars["random"] = statistics.fmean(random_chars)
    stat = lambda v: (statistics.fmean(v), statistics.pstdev(v) if len(v) > 1 else 0.0)  # noqa: E731
    (cm, cs), (rm, rs) = stat(results["curated"]), stat(results["random"])
    wins = sum(c < r for c, r in zip(results["curated"], results["random"], strict=True))
    print(f"curated {cm:.4f} ± {cs:.4f}   random {rm:.4f} ± {rs:.4f}   base {base.get('loss', float('nan')):.4f}   "
          f"lift (random − curated) {rm - cm:+.4f}, curated better in {wins}/{args.seeds} seeds")
    print(json.dumps({
        "benchmark": "lift", "mode": "quick" if args.quick else "full", "k": args.k, "heldout": heldout.height,
        "pool": pool.height, "stages": used, "seeds": args.seeds, "batch": args.batch, "epochs": args.epochs,
        "max_length": args.max_length, "lr": args.lr, "base_loss": round(base.get("loss", float("nan")), 4),
        "curated_loss": [round(v, 4) for v in results["curated"]], "random_loss": [round(v, 4) for v in results["random"]],
        "curated_mean": round(cm, 4), "curated_std": round(cs, 4), "random_mean": round(rm, 4), "random_std": round(rs, 4),
        "lift": round(rm - cm, 4), "ratio": round(cm / rm, 4) if rm else None, "curated_wins": wins,
        "mean_response_chars": {k: round(v, 1) for k, v in mean_chars.items()},
        "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()

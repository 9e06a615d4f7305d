"""Curation lift on AlpacaEval: `datacraft lift configs/lift_alpacaeval.yaml`, printed as a benchmark.

AlpacaEval's 805 instructions split by instruction (seeded) into a pool (605 instructions × 7
generators ≈ 4,230 rows) and 200 held-out instructions; each arm (random, length, the oracle =
gpt4_1106_preview answers only, the default recipe, scorer arms) picks N pool rows, the same student
(SmolLM2-135M, TRL SFT) trains on them per seed, and the held-out loss is the mean answer-token NLL
of gpt4_1106_preview's answers to the held-out instructions. Baselines beside every arm: random
(Δ and the fraction of the random → oracle gap closed) and length (Δ vs length).

    python benchmarks/bench_lift.py --quick                      # N=100, 1 seed, random/length/default/oracle
    python benchmarks/bench_lift.py                              # N=600, 3 seeds, every arm of the config
    python benchmarks/bench_lift.py --arms default --seeds 3 --budget 300

Every arm-seed result is cached in the output folder: rerun to add seeds or arms. Last line: one
JSON object {"benchmark": "lift", ...}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import emit  # noqa: E402
from datacraft.train.lift import format_table, lift_cmd  # noqa: E402


def vs_length(result: dict) -> dict[str, float]:
    """Paired Δ (length − arm) per arm, over the seeds both ran."""
    arms = result["arms"]
    if "length" not in arms:
        return {}
    ref = arms["length"]["losses"]
    out = {}
    for name, e in arms.items():
        seeds = sorted(set(ref) & set(e["losses"]))
        if name != "length" and seeds:
            out[name] = statistics.fmean(ref[s] - e["losses"][s] for s in seeds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the config's quick profile: N=100, 1 seed, 4 arms")
    ap.add_argument("--config", default=str(ROOT / "configs" / "lift_alpacaeval.yaml"))
    ap.add_argument("--data", default=None, help="data root (default: ../shared/data next to the repo)")
    ap.add_argument("-o", "--output", default=None, help="output folder (default: /tmp/datacraft_bench_lift[_quick])")
    ap.add_argument("--seeds", default=None, help="a count (3) or a list (0,1,2)")
    ap.add_argument("--budget", type=int, default=None, help="N rows per arm")
    ap.add_argument("--arms", default=None, help="comma list of arms (random and oracle always run)")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="override, e.g. student.max_length=128")
    args = ap.parse_args()
    out = args.output or f"/tmp/datacraft_bench_lift{'_quick' if args.quick else ''}"
    result = lift_cmd(args.config, out, args.quick, args.seeds, args.budget, args.arms, args.data, args.sets)
    print(format_table(result))
    lengths = vs_length(result)
    if lengths:
        print("Δ vs length (length − arm, paired): " + ", ".join(f"{a} {d:+.4f}" for a, d in lengths.items()))
    goal = result.get("goal") or {}
    t = result["timing"]
    print(f"wall {t['seconds']:.0f} s; {t['arm_seed_runs']} arm-seed runs ({t['trained_now']} trained now), "
          f"mean train {t['mean_train_s']} s + eval {t['mean_eval_s']} s per arm-seed, torch threads {t['torch_threads']}")
    arms = result["arms"]
    emit({
        "benchmark": "lift", "mode": "quick" if args.quick else "full", "budget": result["budget"], "seeds": result["seeds"],
        "pool_rows": result["pool"]["rows"], "heldout": result["heldout"]["rows"], "base_loss": result["base_loss"],
        "random_loss": arms["random"]["mean"], "length_loss": arms.get("length", {}).get("mean"),
        "oracle_loss": arms["oracle"]["mean"],
        "arms": {
            name: {"mean": e["mean"], "sd": e["sd"], "diff_vs_random": (e.get("diff_vs_baseline") or {}).get("mean"),
                   "diff_sd": (e.get("diff_vs_baseline") or {}).get("sd"), "gap_closed": e.get("gap_closed"),
                   "diff_vs_length": lengths.get(name)}
            for name, e in arms.items()
        },
        "goal_arm": goal.get("arm"), "goal_gap_closed": goal.get("gap_closed"), "goal_met": goal.get("met"),
        "skipped": sorted(result["skipped"]), "seconds": t["seconds"], "per_arm_seed_s": (t["mean_train_s"] or 0) + (t["mean_eval_s"] or 0),
    })


if __name__ == "__main__":
    main()

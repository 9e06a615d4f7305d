"""read → heuristics → exact dedup → write over N rows: the datacraft pipeline vs the same work in plain polars.

Rows are real instruction rows (../shared/data, Apache/MIT files) repeated with perturbations so that
~20% are exact duplicates after normalization. Both sides read the same JSONL, compute the same
heuristic scores, drop the same duplicates and write Parquet. Goal: ratio ≤ 2× polars.

    python benchmarks/bench_filter.py            # 1,000,000 rows, 3 alternating runs of each side
    python benchmarks/bench_filter.py --quick    # 100,000 rows
Last line: {"benchmark": "filter", "rows": N, "ratio_vs_polars": R, ...}: R is the median of the
per-pair ratios (this 2-core VM's timings wander by ±15% between runs, polars' as much as ours).

The datacraft side writes more than polars does: the canonical row layout (messages, lineage,
meta), every dropped row with its reason under dropped/, report.json and report.html.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "sft"
SOURCES = [
    "llamafactory_alpaca_en_demo.jsonl",
    "selfinstruct_user_oriented.jsonl",
    "gpteacher_roleplay.jsonl",
    "gpteacher_codegen.jsonl",
    "t0_per_template_subset.part00.jsonl",
]


def make_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    base = []
    for name in SOURCES:
        src = SHARED / name
        if not src.exists():
            src = ROOT / "tests" / "data" / "alpaca_llamafactory_200.jsonl"
        for line in src.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                r = json.loads(line)
                base.append({"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]})
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            r = dict(base[rng.randrange(len(base))])
            if rng.random() > 0.2:  # ~80% unique variants, ~20% exact repeats of a base row
                r["instruction"] = f"{r['instruction']} (variant {i})"
            r["id"] = f"row{i}"
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def run_polars(src: Path, out: Path) -> int:
    from datacraft.stages.dedup.exact import normalize_text
    from datacraft.stages.score.heuristics import ALL_SCORES, add_heuristics

    df = pl.read_ndjson(src)
    user = pl.when(pl.col("input").str.strip_chars() != "").then(pl.concat_str("instruction", pl.lit("\n\n"), "input")).otherwise(pl.col("instruction"))
    df = add_heuristics(df.with_columns(user.alias("_ins"), pl.col("output").alias("_res")), list(ALL_SCORES))
    key = normalize_text(pl.col("_ins")).hash(seed=0)  # the same normalization expression as exact_dedup
    df = (
        df.with_columns(key.alias("_hash"), pl.col("_res").str.len_chars().alias("_rank"))
        .sort(["_hash", "_rank", "id"], descending=[False, True, False])
        .unique("_hash", keep="first", maintain_order=True)
        .drop("_ins", "_res", "_hash", "_rank")
    )
    out.mkdir(parents=True, exist_ok=True)
    df.write_parquet(out / "train-00000-of-00001.parquet")
    return df.height


def run_datacraft(src: Path, out: Path) -> dict:
    from datacraft.pipeline.config import load_config
    from datacraft.pipeline.run import run_config

    config = load_config(
        data={
            "name": "bench-filter",
            "input": {"path": str(src), "batch_size": 65536},
            "stages": [{"name": "heuristics"}, {"name": "exact_dedup", "text": "instruction"}],
            "output": {"path": str(out), "format": "parquet", "shard_rows": 2_000_000},
        }
    )
    report = run_config(config)
    assert report["ledger_ok"], report["ledger_problems"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each side; the ratio is the median of the pairs")
    args = parser.parse_args()
    n = 100_000 if args.quick else args.rows
    tmp = Path(tempfile.mkdtemp(prefix="bench_filter_"))
    try:
        src = tmp / "corpus.jsonl"
        t0 = time.perf_counter()
        make_corpus(src, n)
        print(f"corpus: {n} rows, {src.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")
        pairs = []
        for attempt in range(args.repeat):
            shutil.rmtree(tmp / "polars", ignore_errors=True)
            shutil.rmtree(tmp / "datacraft", ignore_errors=True)
            t0 = time.perf_counter()
            kept_polars = run_polars(src, tmp / "polars")
            t_polars = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = run_datacraft(src, tmp / "datacraft")
            t_dc = time.perf_counter() - t0
            assert kept_polars == report["rows_out"], "both sides must keep the same rows"
            pairs.append((t_polars, t_dc))
            print(f"run {attempt + 1}: polars {t_polars:6.1f} s  datacraft {t_dc:6.1f} s  ratio {t_dc / t_polars:.2f}  "
                  f"kept {kept_polars}  datacraft {report['timings']}  stage seconds {[(s['name'], round(s['seconds'], 1)) for s in report['stages']]}")
        ratios = sorted(dc / pol for pol, dc in pairs)
        best_polars, best_dc = min(p for p, _ in pairs), min(d for _, d in pairs)
        print(f"polars best {best_polars:.1f} s ({n / best_polars:,.0f} rows/s), datacraft best {best_dc:.1f} s ({n / best_dc:,.0f} rows/s)")
        print(json.dumps({"benchmark": "filter", "rows": n, "repeat": len(pairs), "ratio_vs_polars": round(ratios[len(ratios) // 2], 2),
                          "ratio_of_best_times": round(best_dc / best_polars, 2), "ratios": [round(r, 2) for r in ratios],
                          "seconds_polars_best": round(best_polars, 2), "seconds_datacraft_best": round(best_dc, 2)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The same filter run (configs/filter.yaml, or `--config NAME`: read → heuristics → filter → exact dedup → write) on
Beam's in-process runner, `multi_processing` and Dask (datacraft's fixed DaskRunner on a
`distributed.LocalCluster`): rows/s, peak memory per process, CPU time, and for Dask where the
workers' time goes (compute vs transfer / (de)serialization of batches between workers).

    python benchmarks/bench_engines.py             # 1,000,000 rows; inproc, mp2, mp4, dask1, dask2, dask4; 2 rounds
    python benchmarks/bench_engines.py --quick     # 50,000 rows; inproc, mp2, dask2; 2 rounds
    python benchmarks/bench_engines.py --config semantic_dedup --rows 20000 --files 2 --batch-size 4096 --rounds 1

Each measurement runs in a fresh process (so peak RSS is that engine's own); engines alternate
within a round (A B C, A B C). Ratios are per round against that round's in-process time, then the
median. Every engine's output digest (kept ids + drop reasons) is printed: they must all match.
Last line: one JSON object. On a 2-core machine more workers cannot be faster; what matters is the
overhead against in-process and whether memory per worker stays flat as rows grow.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def _cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _worker_stats() -> dict[str, float]:
    return {"rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, "cpu_s": _cpu_s(resource.RUSAGE_SELF)}


CONFIG = "filter"


def one(engine: str, src: str, out: str, batch_size: int) -> dict[str, Any]:
    """Run the filter config once on `engine`; the figures of this process (and its workers)."""
    from datacraft.pipeline.config import load_config
    from datacraft.pipeline.run import run_config

    config = load_config(str(ROOT / "configs" / f"{CONFIG}.yaml"), [f"input.path={src}", f"input.batch_size={batch_size}", f"output.path={out}", "output.html_report=false"])
    record: dict[str, Any] = {"engine": engine}
    cluster = client = None
    args: list[str] = []
    if engine.startswith("mp"):
        args = ["--direct_running_mode=multi_processing", f"--direct_num_workers={engine[2:]}"]
    elif engine.startswith("dask"):
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=int(engine[4:]), threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        record["cluster_start_s"] = round(time.perf_counter() - t0, 2)
        before = client.run(_worker_stats)
        args = ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]
    t0, cpu0 = time.perf_counter(), _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN)
    import contextlib

    if client is not None:
        from distributed import get_task_stream

        stream = get_task_stream(client=client)
    else:
        stream = contextlib.nullcontext()
    with stream as ts:
        report = run_config(config, args)
    wall = time.perf_counter() - t0
    cpu = _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN) - cpu0
    record.update(seconds=round(wall, 2), rows_in=report["rows_in"], rows_out=report["rows_out"], ledger_ok=report["ledger_ok"])
    record["driver_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)
    if engine.startswith("mp"):
        record["worker_rss_gb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2, 3)
    if client is not None:
        after = client.run(_worker_stats)
        cpu += sum(after[w]["cpu_s"] - before[w]["cpu_s"] for w in after)
        record["worker_rss_gb"] = round(max(s["rss_gb"] for s in after.values()), 3)
        where: dict[str, float] = {}
        for task in ts.data:
            for ss in task.get("startstops", ()):
                where[ss["action"]] = where.get(ss["action"], 0.0) + ss["stop"] - ss["start"]
        record["worker_seconds_by_action"] = {k: round(v, 2) for k, v in sorted(where.items())}
        client.close()
        cluster.close()
    record["cpu_s"] = round(cpu, 2)
    record["rows_per_s"] = round(report["rows_in"] / wall)
    record["digest"] = report["output_digest"]  # kept ids + drops (datacraft.report.summary.output_digest)
    return record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--engines")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=65536)
    ap.add_argument("--config", default="filter", help="a config of configs/ (e.g. semantic_dedup for the reproducibility digests)")
    ap.add_argument("--one", nargs=3, metavar=("ENGINE", "SRC", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    global CONFIG
    CONFIG = a.config
    if a.one:
        print(json.dumps(one(*a.one, a.batch_size)))
        return
    from bench_filter import make_corpus

    rows = a.rows or (50_000 if a.quick else 1_000_000)
    engines = (a.engines or ("inproc,mp2,dask2" if a.quick else "inproc,mp2,mp4,dask1,dask2,dask4")).split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench_engines_"))
    whole = tmp / "all.jsonl"
    make_corpus(whole, rows)
    lines = whole.read_text(encoding="utf-8").splitlines()
    (tmp / "in").mkdir()
    for i in range(a.files):  # several files: read tasks spread over workers
        (tmp / "in" / f"part{i}.jsonl").write_text("\n".join(lines[i :: a.files]) + "\n", encoding="utf-8")
    whole.unlink()
    src = str(tmp / "in" / "*.jsonl")
    results: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    for r in range(a.rounds):
        for e in engines:
            out = tmp / f"out-{e}-{r}"
            cmd = [sys.executable, __file__, "--one", e, src, str(out), "--batch-size", str(a.batch_size), "--config", a.config]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            results[e].append(rec)
            print(json.dumps({"round": r, **rec}), flush=True)
    base = results[engines[0]]
    summary: dict[str, Any] = {"benchmark": "engines", "config": a.config, "rows": rows, "files": a.files, "batch_size": a.batch_size, "rounds": a.rounds}
    digests = {rec["digest"] for recs in results.values() for rec in recs}
    summary["digests_match"] = len(digests) == 1
    summary["digest"] = sorted(digests)[0] if len(digests) == 1 else sorted(digests)
    for e, recs in results.items():
        summary[e] = {
            "seconds": float(np.median([x["seconds"] for x in recs])),
            "rows_per_s": int(np.median([x["rows_per_s"] for x in recs])),
            "time_ratio_vs_inproc": round(float(np.median([x["seconds"] / b["seconds"] for x, b in zip(recs, base, strict=True)])), 3),
            "cpu_ratio_vs_inproc": round(float(np.median([x["cpu_s"] / b["cpu_s"] for x, b in zip(recs, base, strict=True)])), 3),
            "driver_rss_gb": max(x["driver_rss_gb"] for x in recs),
            **({"worker_rss_gb": max(x["worker_rss_gb"] for x in recs)} if "worker_rss_gb" in recs[0] else {}),
            **({"worker_seconds_by_action": recs[-1]["worker_seconds_by_action"]} if "worker_seconds_by_action" in recs[0] else {}),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""The same filter run (configs/filter.yaml, or `--config NAME`: read → heuristics → filter → exact dedup → write) on
Beam's in-process runner, `multi_processing` and Dask (datacraft's fixed DaskRunner on a
`distributed.LocalCluster`): rows/s, peak memory per process, CPU time, memory as rows grow, and
where the time goes: for Dask the workers' time by action (compute / transfer / deserialize) and
compute by task kind and by part (stages / GroupByKey shuffle / rest), and for every engine the cost of one
serialization pass over all batches (LZ4 Arrow IPC, Beam's batch coder; pickle, dask's transport).

    python benchmarks/bench_engines.py             # 1,000,000 rows; inproc, mp2, mp4, dask1, dask2, dask4; 2 rounds;
                                                   # then inproc, dask2 once at 250k and 500k rows (memory growth)
    python benchmarks/bench_engines.py --quick     # 50,000 rows; inproc, mp2, dask2; 2 rounds; no growth sizes
    python benchmarks/bench_engines.py --config semantic_dedup --rows 20000 --files 2 --batch-size 4096 --rounds 1 --growth ""

Each measurement runs in a fresh process; a thread samples the resident memory of that process
(the driver) and of each process below it (the engine's workers) every 20 ms, so a peak is one
process's own. Engines alternate within a round (A B C, A B C). Ratios are per round against that
round's in-process time, then the median. Every engine's output digest (kept ids + drop reasons) is
printed: they must all match. Last line: one JSON object. On a 2-core machine more workers cannot be
faster; what matters is the overhead against in-process and whether memory per worker stays flat as
rows grow (the in-process runner keeps every buffer until the run ends).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from _common import Monitor, loadavg  # noqa: E402


def _cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _worker_stats() -> dict[str, float]:
    return {"pid": os.getpid(), "cpu_s": _cpu_s(resource.RUSAGE_SELF)}


class PerProcess(Monitor):
    """`Monitor` that also keeps each process's own peak RSS (bytes by pid; this process included)."""

    def __enter__(self) -> PerProcess:
        self.by_pid: dict[int, int] = {}
        return t.cast(PerProcess, super().__enter__())

    def _sample(self) -> None:
        super()._sample()
        for proc in [self.proc, *self.proc.children(recursive=True)]:
            try:
                rss = proc.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                continue
            self.by_pid[proc.pid] = max(self.by_pid.get(proc.pid, 0), rss)


CONFIG = "filter"
_GB = 1024**3


def one(engine: str, src: str, out: str, batch_size: int) -> dict[str, Any]:
    """Run the config once on `engine`; the figures of this process (the driver) and its workers."""
    from datacraft.pipeline.config import load_config
    from datacraft.pipeline.run import run_config

    config = load_config(str(ROOT / "configs" / f"{CONFIG}.yaml"), [f"input.path={src}", f"input.batch_size={batch_size}", f"output.path={out}", "output.html_report=false"])
    record: dict[str, Any] = {"engine": engine}
    cluster = client = None
    args: list[str] = []
    with PerProcess() as mon:
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
        t0, cpu0 = time.perf_counter(), os.times()
        if client is not None:
            from distributed import get_task_stream

            stream: Any = get_task_stream(client=client)
        else:
            stream = contextlib.nullcontext()
        with stream as ts:
            report = run_config(config, args)
        wall, cpu1 = time.perf_counter() - t0, os.times()
        own = cpu1.user + cpu1.system - cpu0.user - cpu0.system
        waited = cpu1.children_user + cpu1.children_system - cpu0.children_user - cpu0.children_system
        cpu = own + max(waited, mon.child_cpu)  # Beam's pool workers are not always waited for
        if client is not None:
            after = client.run(_worker_stats)
            cpu = own + sum(after[w]["cpu_s"] - before[w]["cpu_s"] for w in after)
            workers = {s["pid"] for s in after.values()}
            record.update(_where(ts.data))
            client.close()
            cluster.close()
    record.update(seconds=round(wall, 2), rows_in=report["rows_in"], rows_out=report["rows_out"], ledger_ok=report["ledger_ok"])
    me = os.getpid()
    if client is None:  # multi_processing: the Python processes below the driver (not its tiny helpers)
        workers = {pid for pid, rss in mon.by_pid.items() if pid != me and rss > 50 * 1024**2}
    record["driver_peak_gb"] = round(mon.by_pid[me] / _GB, 3)
    record["worker_peak_gb"] = sorted((round(mon.by_pid[w] / _GB, 3) for w in workers if w in mon.by_pid), reverse=True)
    record["all_peak_gb"] = round(mon.peak / _GB, 3)  # the sum over the process tree, at its highest
    record["cpu_s"] = round(cpu, 2)
    record["rows_per_s"] = round(report["rows_in"] / wall)
    record["digest"] = report["output_digest"]  # kept ids + drops (datacraft.report.summary.output_digest)
    return record


def _where(tasks: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Dask workers' seconds by action (compute, transfer, deserialize, ...), compute seconds by task
    kind (the key's prefix; datacraft's DaskRunner does not fuse tasks) and by part: the stages
    (run_bundle), the GroupByKey shuffle, the rest (tag split, concat, create)."""
    from dask.utils import key_split

    by_action: dict[str, float] = {}
    by_task: dict[str, float] = {}
    for task in tasks:
        for ss in task.get("startstops", ()):
            by_action[ss["action"]] = by_action.get(ss["action"], 0.0) + ss["stop"] - ss["start"]
            if ss["action"] == "compute":
                kind = key_split(task["key"])
                by_task[kind] = by_task.get(kind, 0.0) + ss["stop"] - ss["start"]
    top = dict(sorted(by_task.items(), key=lambda kv: -kv[1])[:8])
    out = {"worker_seconds_by_action": {k: round(v, 2) for k, v in sorted(by_action.items())},
           "compute_seconds_by_task": {k: round(v, 2) for k, v in top.items()}}
    parts = {"stages": 0.0, "shuffle": 0.0, "rest": 0.0}
    for kind, seconds in by_task.items():
        parts["stages" if kind == "run_bundle" else "shuffle" if "shuffle" in kind or "groupby" in kind else "rest"] += seconds
    out["compute_seconds_by_part"] = {k: round(v, 2) for k, v in parts.items()}
    return out


def serialization_pass(glob: str, batch_size: int) -> dict[str, float]:
    """Seconds of one encode + decode of every input batch: LZ4 Arrow IPC (Beam's batch coder, what
    multi_processing / portable workers ship) and pickle (what dask ships between workers)."""
    import pickle

    import polars as pl

    from datacraft.beam.coder import decode_frame, encode_frame

    frames = [f for path in sorted(Path(glob).parent.glob(Path(glob).name)) for f in pl.read_ndjson(path).iter_slices(batch_size)]
    record: dict[str, float] = {"batches": len(frames)}
    for name, enc, dec in (("ipc_lz4", encode_frame, decode_frame), ("pickle", pickle.dumps, pickle.loads)):
        t0 = time.perf_counter()
        blobs = [enc(f) for f in frames]
        t1 = time.perf_counter()
        for b in blobs:
            dec(b)
        record[f"{name}_encode_s"] = round(t1 - t0, 3)
        record[f"{name}_decode_s"] = round(time.perf_counter() - t1, 3)
        record[f"{name}_mb"] = round(sum(len(b) for b in blobs) / 1e6, 1)
    return record


def corpus(tmp: Path, rows: int, files: int) -> str:
    """`rows` generated rows split round-robin over `files` JSONL files; their glob."""
    from bench_filter import make_corpus

    folder = tmp / f"in-{rows}"
    folder.mkdir()
    whole = tmp / "all.jsonl"
    make_corpus(whole, rows)
    lines = whole.read_text(encoding="utf-8").splitlines()
    for i in range(files):  # several files: read tasks spread over workers
        (folder / f"part{i}.jsonl").write_text("\n".join(lines[i::files]) + "\n", encoding="utf-8")
    whole.unlink()
    return str(folder / "*.jsonl")


def measure_once(engine: str, src: str, out: Path, a: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", engine, src, str(out), "--batch-size", str(a.batch_size), "--config", a.config]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--engines")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=65536)
    ap.add_argument("--growth", help="smaller row counts (comma-separated) run once on --growth-engines: memory as rows grow (default 250000,500000; --quick: none)")
    ap.add_argument("--growth-engines", default="inproc,dask2")
    ap.add_argument("--config", default="filter", help="a config of configs/ (e.g. semantic_dedup for the reproducibility digests)")
    ap.add_argument("--one", nargs=3, metavar=("ENGINE", "SRC", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    global CONFIG
    CONFIG = a.config
    if a.one:
        print(json.dumps(one(*a.one, a.batch_size)))
        return
    load_start = loadavg()
    rows = a.rows or (50_000 if a.quick else 1_000_000)
    engines = (a.engines or ("inproc,mp2,dask2" if a.quick else "inproc,mp2,mp4,dask1,dask2,dask4")).split(",")
    growth = [int(n) for n in (a.growth if a.growth is not None else ("" if a.quick else "250000,500000")).split(",") if n]
    tmp = Path(tempfile.mkdtemp(prefix="bench_engines_"))
    src = corpus(tmp, rows, a.files)
    results: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    for r in range(a.rounds):
        for e in engines:
            rec = measure_once(e, src, tmp / f"out-{e}-{r}", a)
            results[e].append(rec)
            print(json.dumps({"round": r, "load": loadavg()[:1], **rec}), flush=True)
    grown: list[dict[str, Any]] = []
    for n in growth:
        glob = corpus(tmp, n, a.files)
        for e in a.growth_engines.split(","):
            rec = measure_once(e, glob, tmp / f"out-{e}-{n}", a)
            grown.append(rec)
            print(json.dumps({"rows": n, "load": loadavg()[:1], **rec}), flush=True)
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
            "driver_peak_gb": max(x["driver_peak_gb"] for x in recs),
            "worker_peak_gb": max((x["worker_peak_gb"] for x in recs), key=lambda w: w[:1]),
            **{k: recs[-1][k] for k in ("cluster_start_s", "worker_seconds_by_action", "compute_seconds_by_task", "compute_seconds_by_part") if k in recs[-1]},
        }
    # peak memory by input size: the growth runs plus the main size's first round
    summary["memory_by_rows"] = {
        e: {str(x["rows_in"]): {"driver_peak_gb": x["driver_peak_gb"], "worker_peak_gb": max(x["worker_peak_gb"], default=0.0), "seconds": x["seconds"]}
            for x in sorted([g for g in grown if g["engine"] == e] + results.get(e, [])[:1], key=lambda x: x["rows_in"])}
        for e in a.growth_engines.split(",") if growth
    }
    summary["growth_digests"] = {str(n): len({g["digest"] for g in grown if g["rows_in"] == n}) == 1 for n in growth}
    summary["serialization_pass"] = serialization_pass(src, a.batch_size)
    summary["loadavg_start"], summary["loadavg_end"] = load_start, loadavg()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Which text view, embedder, threshold and grouping rule reproduce GPTeacher's published dedup levels?

GPTeacher published Toolformer at three levels: `dedupe_only` (7,673 rows), `sim0.9` (5,959) and
`sim0.6` (2,396); its README says only "similarity scored cleaning", and no script is published. Both
subsets keep the source's row order, and the kept fraction falls with position (0.98 of the first 250
rows at sim0.9, 0.71 of the last), the mark of a keep-first rule in file order.

For every embedder (`static`, the MiniLM `sentence-transformers` default) and text view (instruction
without the input, datacraft's `instruction` = instruction + input, `response`, `instruction_response`,
`conversation`), the rows are embedded with datacraft's `embed` stage (vector cache on), then the
`semantic_dedup` core (its exact kNN edges, `threshold_edges`, and its `resolve`) is swept over τ
for three rules: greedy + keep first (file order), union-find + keep first, and the default
union-find + keep best (no score: the longest text). Reported per candidate and level: the τ with the
best Jaccard of kept ids against the published subset, with precision / recall of the kept set. The
best setting per level is then run once more as the real stage (`embed` → `semantic_dedup`,
`run_local`) and must give the same kept set.

Baselines beside them: keep everything, a random subset of the published size (mean of 5 seeds),
the rows with the longest responses, and the first rows in file order (both of the published size).

    python benchmarks/bench_dedup_reproduce.py --quick    # first 1,500 rows; static (all views) + MiniLM (response)
    python benchmarks/bench_dedup_reproduce.py            # 7,673 rows, both embedders, all views (MiniLM ≈ 1 h on 2 busy cores)
    python benchmarks/bench_dedup_reproduce.py --st-views instruction_only,response   # MiniLM on two views
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit  # noqa: E402

from datacraft.core.stage import RunContext  # noqa: E402
from datacraft.io.readers import read_all  # noqa: E402
from datacraft.report.compare import match_ids, overlap  # noqa: E402
from datacraft.stages.dedup.groups import node_frame, resolve  # noqa: E402
from datacraft.stages.dedup.semantic import SemanticDedupStage, threshold_edges  # noqa: E402
from datacraft.stages.vectors.embed import EmbedStage  # noqa: E402
from datacraft.vectors.embedders import embeddings_of  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
#: (label, datacraft view, read without the `input` field)
VIEWS = (
    ("instruction_only", "instruction", True),
    ("instruction", "instruction", False),
    ("response", "response", False),
    ("instruction_response", "instruction_response", False),
    ("conversation", "conversation", False),
)
RULES = (("greedy", "first"), ("union_find", "first"), ("union_find", "best"))
TAUS = (0.999, 0.998, 0.995, *[round(float(t), 3) for t in np.arange(0.99, 0.795, -0.01)])
EDGE_FLOORS = (0.97, 0.93, 0.88, 0.8)  # edges are found once per floor and filtered per τ


def load(data: Path, name: str) -> list[dict[str, Any]]:
    files = sorted(glob.glob(str(data / "sft" / f"{name}*.jsonl")))
    if not files:
        raise SystemExit(f"no {name}*.jsonl under {data / 'sft'} (give --data)")
    return [json.loads(line) for f in files for line in open(f, encoding="utf-8")]


def frame_of(records: list[dict[str, Any]], folder: Path, drop_input: bool) -> pl.DataFrame:
    path = folder / f"src{'_noinput' if drop_input else ''}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({**r, "input": ""} if drop_input else r, ensure_ascii=False) + "\n")
    frame, dropped = read_all(str(path))
    assert dropped.height == 0 and frame["id"].to_list() == [r["id"] for r in records]
    return frame


def embed(frame: pl.DataFrame, view: str, kind: str) -> pl.DataFrame:
    """datacraft's `embed` stage (content-hash vector cache), in batches of 1,000 rows."""
    stage = EmbedStage({"text": view, "kind": kind}, context=RunContext(embedder={"kind": kind, "model": "embedded"}))
    kept, _, _ = stage.run_local(frame.slice(i, 1000) for i in range(0, frame.height, 1000))
    return kept


def sweep(frame: pl.DataFrame, view: str, published: dict[str, set[str]], min_kept: int) -> dict[str, dict[str, Any]]:
    """Per rule and level: the τ of the best Jaccard (and its overlap); stops once every rule keeps < min_kept."""
    x = embeddings_of(frame)
    ids = frame["id"].to_list()
    nodes = node_frame(frame, None, view)
    best: dict[str, dict[str, Any]] = {}
    floor, edges = 1.1, None
    for tau in TAUS:
        if tau < floor:
            floor = max([f for f in EDGE_FLOORS if f <= tau] or [EDGE_FLOORS[-1]])
            edges = threshold_edges(ids, x, 10, floor, max_k=len(ids) - 1, method="exact")
        assert edges is not None
        e = edges.filter(pl.col("sim") >= tau)
        sizes = []
        for grouping, keep in RULES:
            drops, _ = resolve(e, nodes, tau, "cos", grouping=grouping, keep=keep)
            kept = set(ids) - set(drops["id"].to_list())
            sizes.append(len(kept))
            for level, ref in published.items():
                o = overlap(kept, ref)
                key = f"{grouping}+{keep}|{level}"
                if o["jaccard"] > best.get(key, {"jaccard": -1})["jaccard"]:
                    best[key] = {"tau": tau, **o}
                if tau == 0.9 and level == "sim0.9":
                    best[f"{grouping}+{keep}|nominal0.9"] = {"tau": tau, **o}
        if max(sizes) < min_kept:
            break
    return best


def baselines(records: list[dict[str, Any]], published: dict[str, set[str]]) -> dict[str, dict[str, Any]]:
    ids = [r["id"] for r in records]
    by_len = [r["id"] for r in sorted(records, key=lambda r: -len(r["output"]))]
    out: dict[str, dict[str, Any]] = {}
    for level, ref in published.items():
        m = len(ref)
        rng = np.random.default_rng(0)
        rand = [overlap(rng.choice(ids, m, replace=False).tolist(), ref)["jaccard"] for _ in range(5)]
        out[level] = {
            "keep_all": overlap(ids, ref)["jaccard"],
            "random": round(float(np.mean(rand)), 4),
            "longest_response": overlap(by_len[:m], ref)["jaccard"],
            "first_rows": overlap(ids[:m], ref)["jaccard"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--quick", action="store_true", help="first 1,500 rows; MiniLM on the response view only")
    ap.add_argument("--rows", type=int, default=None, help="use the first N source rows")
    ap.add_argument("--st-views", default=None, help="comma-separated views embedded with MiniLM (default: all; --quick: response); the static embedder runs every view")
    args = ap.parse_args()
    t_start = time.perf_counter()
    source = load(args.data, "gpteacher_toolformer_dedupe_only")
    n = args.rows or (1500 if args.quick else len(source))
    source = source[:n]
    in_source = {r["id"] for r in source}
    published: dict[str, set[str]] = {}
    full = load(args.data, "gpteacher_toolformer_dedupe_only")
    for level in ("sim0.9", "sim0.6"):
        matched, missing = match_ids(full, load(args.data, f"gpteacher_toolformer_{level}"))
        assert missing == 0, f"{missing} rows of {level} match no dedupe_only row"
        published[level] = {i for i in matched if i in in_source}
    print(f"{n} source rows; published kept: sim0.9 {len(published['sim0.9'])}, sim0.6 {len(published['sim0.6'])}")
    base = baselines(source, published)
    for level, b in base.items():
        print(f"baselines {level}: " + ", ".join(f"{k} J={v:.3f}" for k, v in b.items()))
    st_views = set(args.st_views.split(",")) if args.st_views else ({"response"} if args.quick else {v[0] for v in VIEWS})
    candidates = [(k, v) for k in ("static", "sentence-transformers") for v in VIEWS if k == "static" or v[0] in st_views]
    results: list[dict[str, Any]] = []
    frames: dict[tuple[str, str], pl.DataFrame] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain, noinput = frame_of(source, Path(tmp), False), frame_of(source, Path(tmp), True)
        print(f"\n{'embedder':<22} {'view':<21} {'rule':<17} {'τ@0.9':>6} {'J0.9':>6} {'P':>6} {'R':>6} {'kept':>5} {'τ@0.6':>6} {'J0.6':>6} {'P':>6} {'R':>6} {'kept':>5} {'J@τ=.9':>7} {'s':>5}")
        for kind, (label, view, drop_input) in candidates:
            t0 = time.perf_counter()
            frame = embed(noinput if drop_input else plain, view, kind)
            frames[(kind, label)] = frame
            best = sweep(frame, view, published, int(0.6 * len(published["sim0.6"])))
            seconds = time.perf_counter() - t0
            for grouping, keep in RULES:
                rule = f"{grouping}+{keep}"
                a, b = best[f"{rule}|sim0.9"], best[f"{rule}|sim0.6"]
                nominal = best.get(f"{rule}|nominal0.9", {}).get("jaccard", float("nan"))
                print(f"{kind:<22} {label:<21} {rule:<17} {a['tau']:>6.3f} {a['jaccard']:>6.3f} {a['precision']:>6.3f} {a['recall']:>6.3f} {a['kept']:>5} "
                      f"{b['tau']:>6.3f} {b['jaccard']:>6.3f} {b['precision']:>6.3f} {b['recall']:>6.3f} {b['kept']:>5} {nominal:>7.3f} {seconds:>5.0f}", flush=True)
                results.append({"embedder": kind, "view": label, "text": view, "drop_input": drop_input, "grouping": grouping, "keep": keep, "sim0.9": a, "sim0.6": b, "nominal0.9": nominal})
    summary: dict[str, Any] = {"benchmark": "dedup_reproduce", "rows": n, "minilm_views": sorted(st_views), "published": {k: len(v) for k, v in published.items()}, "baselines": base}
    for level in ("sim0.9", "sim0.6"):
        top = max(results, key=lambda r: r[level]["jaccard"])
        # the same setting as the real stage on the embedded frame: must keep the same rows
        frame = frames[(top["embedder"], top["view"])]
        stage = SemanticDedupStage({"text": top["text"], "threshold": top[level]["tau"], "grouping": top["grouping"], "keep": top["keep"], "score": None, "max_k": n - 1, "method": "exact"})
        kept, dropped, _ = stage.run_local([frame])
        check = overlap(kept["id"].to_list(), published[level])
        assert kept.height + dropped.height == n and check == {k: top[level][k] for k in check}, (check, top[level])
        summary[level] = {k: top[k] for k in ("embedder", "view", "grouping", "keep")} | top[level] | {"stage_check": "same kept set", "other_level_jaccard": overlap(kept["id"].to_list(), published["sim0.6" if level == "sim0.9" else "sim0.9"])["jaccard"]}
        print(f"\nbest for {level}: {summary[level]}")
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    emit(summary)


if __name__ == "__main__":
    main()

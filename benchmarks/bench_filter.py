"""read → heuristics → exact dedup → write over N rows: the datacraft pipeline vs the same work in plain polars.

Rows are real instruction rows (../shared/data, Apache/MIT files) repeated with perturbations so that
~20% are exact duplicates after normalization. Both sides read the same JSONL, compute the same
heuristic scores, drop the same duplicates and write Parquet. Goal: ratio ≤ 2× polars.

    python benchmarks/bench_filter.py            # 1,000,000 rows, 3 alternating runs of each side
    python benchmarks/bench_filter.py --quick    # 100,000 rows
    python benchmarks/bench_filter.py --quick --peers ""   # datacraft vs polars only

Peers beside plain polars (optional, `pip install -e '.[bench]'`): datatrove (JsonlReader → the
same nine scores in a LambdaFilter that keeps every row → ExactDedupSignature / ExactFindDedups /
ExactDedupFilter on the same normalization with "longest response wins" as priority → JsonlWriter;
LocalPipelineExecutor, 2 tasks) and Data-Juicer (`dj-process`, np=2: its nearest filters with
ranges that keep every row, `document_deduplicator` lowercase on the instruction). Sides alternate
(A B C, A B C, …); last line: {"benchmark": "filter", "ratio_vs_polars": R, "ratio_vs_datatrove": …}
with R = the median of the paired time ratios (datacraft / peer), the CPU-time ratios beside them.

The datacraft side writes more than polars does: the canonical row layout (messages, lineage,
meta), every dropped row with its reason under dropped/, report.json and report.html.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, emit, installed_peers, loadavg, robust_record, version  # noqa: E402

from datacraft.stages.score.heuristics import _STOPWORDS, REFUSAL_PATTERNS  # noqa: E402

_REFUSAL = re.compile("(?i)(?:" + "|".join(REFUSAL_PATTERNS) + ")")

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


def _user_text(r: dict) -> str:
    return f"{r['instruction']}\n\n{r['input']}" if r.get("input", "").strip() else r["instruction"]


_NORM_PUNCT, _NORM_SPACE = re.compile(r"[^\w\s]"), re.compile(r"\s+")
_STOP = re.compile(_STOPWORDS)


def _scores(ins: str, res: str) -> dict[str, float]:
    """The nine `heuristics` scores, as a datatrove user writes them: Python per document."""
    ins_words, res_words = len(ins.split()), len(res.split())
    tokens = re.findall(r"\w+", res.lower())
    lines = [x.strip() for x in res.split("\n") if x.strip()]
    non_space = len(res) - sum(c.isspace() for c in res)
    return {"length.instruction": ins_words, "length.response": res_words, "chars.response": len(res),
            "response_ratio": res_words / max(ins_words, 1),
            "lexical_diversity": len(set(tokens)) / len(tokens) if tokens else 0.0,
            "repetition": 1 - len(set(lines)) / len(lines) if lines else 0.0,
            "alpha_ratio": sum(c.isalpha() for c in res) / non_space if non_space else 0.0,
            "stopword_ratio": min(1.0, len(_STOP.findall(res)) / res_words) if res_words else 0.0,
            "refusal": float(bool(_REFUSAL.search(res)))}


def run_datatrove(src: Path, out: Path) -> int:
    """JsonlReader → the same scores (LambdaFilter keeping every row) → exact dedup (3 steps) → JsonlWriter, 2 tasks."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    def adapter(_self: object, data: dict, path: str, id_in_file: int | str) -> dict:
        return {"text": _user_text(data), "id": data["id"], "metadata": {"output": data["output"]}}

    def score(doc: object) -> bool:
        doc.metadata.update(_scores(doc.text, doc.metadata["output"]))
        return True

    config = ExactDedupConfig(content_getter=lambda doc: _NORM_SPACE.sub(" ", _NORM_PUNCT.sub("", doc.text.lower())).strip(),
                              document_priority=lambda doc: min(65535, 1 + len(doc.metadata["output"])))
    reader = {"data_folder": str(src.parent), "glob_pattern": src.name, "adapter": adapter}
    common = {"logging_dir": str(out / "logs"), "skip_completed": False}  # datatrove logs to ./logs otherwise
    sig = LocalPipelineExecutor(pipeline=[JsonlReader(**reader), ExactDedupSignature(output_folder=str(out / "sigs"), config=config, finder_workers=2)],
                                tasks=2, workers=2, **common)
    find = LocalPipelineExecutor(pipeline=[ExactFindDedups(data_folder=str(out / "sigs"), output_folder=str(out / "dups"), config=config)],
                                 tasks=2, workers=2, depends=sig, **common)
    final = LocalPipelineExecutor(pipeline=[JsonlReader(**reader), LambdaFilter(score), ExactDedupFilter(data_folder=str(out / "dups"), config=config),
                                            JsonlWriter(str(out / "out"), compression=None)], tasks=2, workers=2, depends=find, **common)
    final.run()
    return sum(1 for f in (out / "out").glob("*.jsonl") for _ in f.open())


DJ_CONFIG = """project_name: bench-filter
dataset_path: {src}
export_path: {out}/result.jsonl
np: 2
open_tracer: false
use_cache: false
text_keys: output
process:
  - text_length_filter: {{min_len: 0, max_len: 1000000000}}
  - words_num_filter: {{min_num: 0, max_num: 1000000000}}
  - alphanumeric_filter: {{min_ratio: 0.0, max_ratio: 1.0}}
  - character_repetition_filter: {{rep_len: 10, min_ratio: 0.0, max_ratio: 1.0}}
  - special_characters_filter: {{min_ratio: 0.0, max_ratio: 1.0}}
  - document_deduplicator: {{lowercase: true, ignore_non_character: false, text_key: instruction}}
"""


def run_data_juicer(src: Path, out: Path) -> int:
    """`dj-process` on the equivalent ops (length / words / alphanumeric / repetition / special characters, exact dedup), np=2."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.yaml"
    cfg.write_text(DJ_CONFIG.format(src=src, out=out))
    exe = Path(sys.executable).with_name("dj-process")
    done = subprocess.run([str(exe), "--config", str(cfg)], capture_output=True, text=True, cwd=out)
    if done.returncode:
        raise RuntimeError(f"dj-process failed: {done.stderr[-2000:]}")
    return sum(1 for _ in (out / "result.jsonl").open())


PEERS = {"datatrove": ("datatrove", run_datatrove), "data_juicer": ("py-data-juicer", run_data_juicer)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds; ratios are medians of the pairs")
    parser.add_argument("--peers", default="datatrove,data_juicer", help="comma list; absent packages are skipped")
    args = parser.parse_args()
    n = 100_000 if args.quick else args.rows
    tmp = Path(tempfile.mkdtemp(prefix="bench_filter_"))
    try:
        src = tmp / "in" / "corpus.jsonl"
        warm = tmp / "warm" / "corpus.jsonl"
        src.parent.mkdir()
        warm.parent.mkdir()
        t0 = time.perf_counter()
        make_corpus(src, n)
        make_corpus(warm, 2_000, seed=1)
        print(f"corpus: {n} rows, {src.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")
        sides = {"datacraft": lambda: run_datacraft(src, tmp / "datacraft")["rows_out"], "polars": lambda: run_polars(src, tmp / "polars")}
        warmups = {"datacraft": lambda: run_datacraft(warm, tmp / "datacraft"), "polars": lambda: run_polars(warm, tmp / "polars")}
        versions, skipped = {"datacraft": version("datacraft"), "polars": pl.__version__}, {}
        for name in installed_peers(args.peers, {k: v[0] for k, v in PEERS.items()}, versions, skipped):
            fn = PEERS[name][1]
            sides[name] = lambda fn=fn, name=name: fn(src, tmp / name)
            warmups[name] = lambda fn=fn, name=name: fn(warm, tmp / name)
        load0 = loadavg()
        trials = alternate(sides, args.repeat, warmups, before=lambda name: shutil.rmtree(tmp / name, ignore_errors=True))
        record = {"benchmark": "filter", "rows": n, "versions": versions, "skipped": skipped,
                  "kept": {name: ts[-1].result for name, ts in trials.items()}}
        record.update(robust_record(trials, "datacraft", load0))
        record["ratio_vs_polars_goal"] = "<= 1.2"
        emit(record)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Embedding throughput inside the `embed` stage vs raw `model.encode` on the same texts (goal ≥ 0.95×).

Texts: real ~200-word responses from ../shared/data (AlpacaEval GPT-4 answers). Both paths use the
same loaded model; the stage adds text extraction, length sorting, content hashing and the vector
cache (a fresh cache dir, so every row is encoded). The two sides alternate (3 rounds; the model is
loaded and warmed before), `ratio_vs_raw` = stage / raw throughput from the median paired time ratio,
with the CPU-time ratio and loadavg beside it. Also reports the static embedder's texts/s.

    python benchmarks/bench_embed.py --quick     # 96 texts
    python benchmarks/bench_embed.py             # 384 texts
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternate, emit, loadavg, robust_record  # noqa: E402

from datacraft.core.rows import text_expr  # noqa: E402
from datacraft.core.stage import RunContext  # noqa: E402
from datacraft.io.readers import read_all  # noqa: E402
from datacraft.stages.vectors.embed import EmbedStage  # noqa: E402
from datacraft.vectors.embedders import load_embedder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--batch-rows", type=int, default=4096)
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds (stage, raw)")
    args = ap.parse_args()
    n = args.n or (96 if args.quick else 384)
    frame, _ = read_all(str(ROOT / "tests" / "data" / "alpaca_eval_gpt4_200.jsonl"))
    while frame.height < n:
        frame = frame.vstack(frame.with_columns(frame["id"] + "'"))
    frame = frame.head(n)
    texts = frame.select(text_expr("response").alias("t"))["t"].to_list()
    model = load_embedder("sentence-transformers", "embedded", batch_size=64)
    batches = [frame.slice(i, args.batch_rows) for i in range(0, n, args.batch_rows)]

    def stage_side() -> None:
        with tempfile.TemporaryDirectory() as tmp:  # a fresh cache dir: every row is encoded
            EmbedStage({"text": "response", "batch_size": 64}, context=RunContext(cache_dir=tmp)).run_local(batches)

    sides = {"stage": stage_side, "raw": lambda: model.model.encode(texts, batch_size=64, normalize_embeddings=True)}
    warmups = {"stage": lambda: None, "raw": lambda: model.model.encode(texts[:16], batch_size=64)}
    load0 = loadavg()
    trials = alternate(sides, args.pairs, warmups)
    record = {"benchmark": "embed", "n": n}
    record.update(robust_record(trials, "stage", load0))
    static = load_embedder("static")
    t2 = time.perf_counter()
    static.encode(texts * max(1, 2000 // n))
    static_rate = len(texts * max(1, 2000 // n)) / (time.perf_counter() - t2)
    raw_s, piped_s = record["sides"]["raw"]["seconds"], record["sides"]["stage"]["seconds"]
    print(f"raw encode {n / raw_s:.1f} texts/s; embed stage {n / piped_s:.1f} texts/s; static {static_rate:.0f} texts/s", flush=True)
    # ratio_vs_raw keeps its meaning: stage throughput / raw throughput (= raw time / stage time, median of the pairs)
    record["time_ratio_vs_raw"] = record.pop("ratio_vs_raw")
    record.update(raw_texts_per_s=n / raw_s, stage_texts_per_s=n / piped_s, ratio_vs_raw=1 / record["time_ratio_vs_raw"], static_texts_per_s=static_rate)
    emit(record)


if __name__ == "__main__":
    main()

"""MinHash near-dedup with injected near-copies (known ground truth): datacraft `near_dedup` vs the peers.

Corpus: N documents, each 3 pieces (≤ 60 words each) of random real rows of ../shared/data/sft, so
two documents share at most a piece; a fraction (--copies, default 10%) of them are near-copies of
another, distinct document with 1–2% of the words replaced or deleted (word 5-gram Jaccard ≈ 0.8–0.95).
Every side reads the same JSONL file and uses word 5-grams, 128 permutations, threshold 0.7:

- datacraft: `near_dedup` stage core (`process_all`, shingle=word, ngram=5) after `read_all`
- datatrove: JsonlReader → MinhashDedupSignature → Buckets → Cluster → Filter (16 buckets × 8
  hashes), LocalPipelineExecutor with 2 tasks / 2 workers, as its minhash example
- datasketch: MinHash per document (update_batch) + MinHashLSH, query-then-insert
- rensa: RMinHash per document + RMinHashLSH (16 bands), query-then-insert, verified Jaccard ≥ τ
- text-dedup: `python -m text_dedup.minhash` (the 0.4 CLI on a HF json dataset, 2 processes)

Printed per side: median time of the alternating rounds, peak memory (in-process growth; for the
sides that fork, the children's peak), recall on the injected pairs (a pair counts when at least one of
its two rows is dropped), precision (such pairs / rows dropped), Jaccard of the dropped set with
datacraft's and with the ideal one (the copies). Peers are optional (`pip install -e '.[bench]'`); a
missing peer is reported as skipped.

    python benchmarks/bench_near_dedup.py --quick            # 5k docs, 3 rounds (< 60 s without text-dedup)
    python benchmarks/bench_near_dedup.py --n 50000
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternate, emit, installed_peers, loadavg, robust_record, version  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sft"
THRESHOLD, NUM_PERM, NGRAM, BANDS = 0.7, 128, 5, 16


def pieces() -> list[list[str]]:
    """Word lists (≤ 60 words) of distinct real instructions and responses."""
    seen: set[str] = set()
    for path in sorted(glob.glob(str(DATA / "*.jsonl"))):
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            for key in ("instruction", "output", "prompt", "response"):
                t = r.get(key)
                if isinstance(t, str) and len(t.split()) >= 15:
                    seen.add(" ".join(t.split()[:60]))
    return [p.split() for p in sorted(seen)]


def make_corpus(path: Path, n: int, copies: float, seed: int = 0) -> list[tuple[int, int]]:
    """Write the JSONL corpus; return the injected (original, copy) index pairs."""
    rng = random.Random(seed)
    pool = pieces()
    docs = [[w for _ in range(3) for w in pool[rng.randrange(len(pool))]] for _ in range(n)]
    n_copies = int(n * copies)
    slots = rng.sample(range(n), 2 * n_copies)
    truth = list(zip(slots[:n_copies], slots[n_copies:], strict=True))
    for orig, copy in truth:
        words = list(docs[orig])
        for _ in range(max(1, int(len(words) * rng.uniform(0.01, 0.02)))):
            i = rng.randrange(len(words))
            if rng.random() < 0.5:
                del words[i]
            else:
                words[i] = pool[rng.randrange(len(pool))][0]
        docs[copy] = words
    with path.open("w", encoding="utf-8") as fh:
        for i, words in enumerate(docs):
            text = " ".join(words)
            fh.write(json.dumps({"id": f"d{i}", "instruction": text, "output": "-", "text": text}) + "\n")
    return truth


def ids_to_ix(ids: Any) -> set[int]:
    return {int(str(i)[1:]) for i in ids}


def word_shingles(text: str) -> list[str]:
    w = text.lower().split()
    return [" ".join(w[i : i + NGRAM]) for i in range(max(1, len(w) - NGRAM + 1))]


def texts_of(src: Path) -> list[str]:
    return [json.loads(line)["text"] for line in src.open(encoding="utf-8")]


def run_datacraft(src: Path) -> set[int]:
    from datacraft.io.readers import read_all
    from datacraft.stages.dedup.minhash import MinHashDedupStage

    frame, _ = read_all(str(src))
    stage = MinHashDedupStage({"text": "instruction", "threshold": THRESHOLD, "shingle": "word", "ngram": NGRAM,
                               "num_perm": NUM_PERM, "score": None})
    res = stage.process_all(frame)
    return ids_to_ix(res.dropped["id"].to_list())


def run_datasketch(src: Path) -> set[int]:
    from datasketch import MinHash, MinHashLSH

    lsh, dropped = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM), set()
    for i, text in enumerate(texts_of(src)):
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([s.encode("utf-8") for s in set(word_shingles(text))])
        if lsh.query(m):
            dropped.add(i)
        else:
            lsh.insert(i, m)
    return dropped


def run_rensa(src: Path) -> set[int]:
    from rensa import RMinHash, RMinHashLSH

    lsh, sigs, dropped = RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=BANDS), {}, set()
    for i, text in enumerate(texts_of(src)):
        m = RMinHash(num_perm=NUM_PERM, seed=1)
        m.update(word_shingles(text))
        if any(m.jaccard(sigs[c]) >= THRESHOLD for c in lsh.query(m)):
            dropped.add(i)
        else:
            lsh.insert(i, m)
            sigs[i] = m
    return dropped


def run_datatrove(src: Path, work: Path) -> set[int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    shutil.rmtree(work, ignore_errors=True)
    cfg = MinhashConfig(n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=NUM_PERM // BANDS)
    reader = {"data_folder": str(src.parent), "glob_pattern": src.name}
    common = {"logging_dir": str(work / "logs"), "skip_completed": False}  # datatrove logs to ./logs otherwise
    s1 = LocalPipelineExecutor(pipeline=[JsonlReader(**reader), MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)], tasks=2, workers=2, **common)
    s2 = LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg)], tasks=BANDS, workers=2, depends=s1, **common)
    s3 = LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=cfg)], tasks=1, depends=s2, **common)
    s4 = LocalPipelineExecutor(pipeline=[JsonlReader(**reader), MinhashDedupFilter(input_folder=str(work / "remove"), exclusion_writer=JsonlWriter(str(work / "removed"), compression=None)),
                                         JsonlWriter(str(work / "out"), compression=None)], tasks=2, workers=2, depends=s3, **common)
    s4.run()
    return {int(json.loads(line)["id"][1:]) for f in (work / "removed").glob("*") for line in f.open()}


def run_text_dedup(src: Path, work: Path) -> set[int]:
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-m", "text_dedup.minhash", "--path", "json", "--data_files", str(src), "--split", "train",
           "--cache_dir", str(work / "cache"), "--output", str(work / "out"), "--column", "text", "--num_proc", "2",
           "--ngram", str(NGRAM), "--num_perm", str(NUM_PERM), "--threshold", str(THRESHOLD), "--b", str(BANDS), "--r", str(NUM_PERM // BANDS)]
    subprocess.run(cmd, check=True, capture_output=True, env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1"})
    from datasets import load_from_disk

    kept = ids_to_ix(load_from_disk(str(work / "out"))["id"])
    return set(range(sum(1 for _ in src.open()))) - kept


def quality(dropped: set[int], truth: list[tuple[int, int]], ref: set[int]) -> dict[str, float]:
    """Recall / precision on the injected pairs; Jaccard of dropped sets, row-wise and pair-wise.

    Which row of a pair is dropped is a keep rule (datacraft keeps the longer row, the peers the first),
    so the pair-wise Jaccard maps a dropped row of an injected pair to its pair before comparing.
    """
    pair_of = {i: k for k, ab in enumerate(truth) for i in ab}
    found = len({pair_of[i] for i in dropped if i in pair_of})
    as_pairs = lambda x: {("pair", pair_of[i]) if i in pair_of else ("row", i) for i in x}  # noqa: E731
    jac = lambda x, y: len(x & y) / len(x | y) if x | y else 1.0  # noqa: E731
    return {"dropped": len(dropped), "recall": found / len(truth), "precision": found / len(dropped) if dropped else 1.0,
            "jaccard_vs_datacraft": jac(dropped, ref), "pair_jaccard_vs_datacraft": jac(as_pairs(dropped), as_pairs(ref)),
            "pair_jaccard_vs_truth": jac(as_pairs(dropped), {("pair", k) for k in range(len(truth))})}


PEERS: dict[str, tuple[str, Callable[..., set[int]]]] = {
    "datatrove": ("datatrove", run_datatrove), "datasketch": ("datasketch", run_datasketch),
    "rensa": ("rensa", run_rensa), "text_dedup": ("text-dedup", run_text_dedup),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5k documents")
    ap.add_argument("--n", type=int, default=None, help="documents (default 50k)")
    ap.add_argument("--copies", type=float, default=0.1)
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds")
    ap.add_argument("--peers", default="datatrove,datasketch,rensa,text_dedup")
    args = ap.parse_args()
    n = args.n or (5_000 if args.quick else 50_000)
    tmp = Path(tempfile.mkdtemp(prefix="bench_near_dedup_"))
    try:
        src = tmp / "data" / "corpus.jsonl"
        src.parent.mkdir()
        truth = make_corpus(src, n, args.copies)
        warm = tmp / "warm" / "corpus.jsonl"
        warm.parent.mkdir()
        make_corpus(warm, 500, args.copies, seed=1)
        print(f"{n} documents, {len(truth)} injected near-copies", flush=True)
        sides: dict[str, Callable[[], set[int]]] = {"datacraft": lambda: run_datacraft(src)}
        warmups: dict[str, Callable[[], Any]] = {"datacraft": lambda: run_datacraft(warm)}
        versions, skipped = {"datacraft": version("datacraft")}, {}
        for name in installed_peers(args.peers, {k: v[0] for k, v in PEERS.items()}, versions, skipped):
            fn = PEERS[name][1]
            extra = (tmp / name,) if name in ("datatrove", "text_dedup") else ()
            sides[name] = lambda fn=fn, extra=extra: fn(src, *extra)
            warmups[name] = lambda fn=fn, extra=extra: fn(warm, *extra)
        load0 = loadavg()
        trials = alternate(sides, args.pairs, warmups)
        record: dict[str, Any] = {"benchmark": "near_dedup", "n": n, "injected_pairs": len(truth), "threshold": THRESHOLD,
                                  "num_perm": NUM_PERM, "ngram": NGRAM, "versions": versions, "skipped": skipped}
        record.update(robust_record(trials, "datacraft", load0))
        ref = trials["datacraft"][-1].result
        record["quality"] = {name: {k: round(v, 4) for k, v in quality(ts[-1].result, truth, ref).items()} for name, ts in trials.items()}
        record["children_peak_gb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2, 3)
        for name, q in record["quality"].items():
            print(f"{name:>12s}: {record['sides'][name]['seconds']:8.2f} s  dropped {q['dropped']:6d}  recall {q['recall']:.4f}  "
                  f"precision {q['precision']:.4f}  J(dropped, datacraft) {q['jaccard_vs_datacraft']:.4f} pair-wise {q['pair_jaccard_vs_datacraft']:.4f}", flush=True)
        emit(record)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

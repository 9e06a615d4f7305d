"""Every datacraft scorer against external preference labels: pairwise accuracy with 95% bootstrap CIs.

    python benchmarks/bench_scorers.py --quick      # ≤ 400 pairs per dataset, LLM scorers on 30 (trimmed prompts)
    python benchmarks/bench_scorers.py              # every eval pair; LLM scorers on 60 per dataset (--llm-pairs)

Data (`--data`, default ../shared/data): AlpacaEval GPT-4 judge annotations (both parts), Cherry
GPT-4 pairwise reviews, hh-rlhf harmless (human labels). Each pair becomes two ordinary SFT rows
(instruction, answer) that go through the stage cores (`Stage(params).run_local`), as in a user's
pipeline; a scorer agrees on a pair when the preferred answer gets the higher score (ties and
missing scores count half). Scores where lower is better (repetition, refusal, r-IFD) are negated,
a direction fixed here beforehand, never picked from the data.

Pairs scored: the held-out instructions of the shipped `pref_head` (its split by instruction; the
head never saw them) for AlpacaEval and hh-rlhf, and every Cherry pair (never used for fitting:
no licence grant). Cherry's 149 WizardLM pairs have an empty prompt and are dropped by the reader.
LLM scorers (quality / complexity / deita judge, ifd / r-IFD on the embedded SmolLM2) run on a
fixed-seed sample of those pairs (`--llm-pairs`); every figure says how many pairs it is on, and the
length baseline is given on the same pairs. Length-balanced pairs: the two answers within 30% in
characters (shorter ≥ 0.7 × longer).

The full run also cross-fits the shipped head's recipe (its features, L2s and weak pairs, from its
metadata) over every AlpacaEval instruction (4 folds by instruction: each pair scored by a head fitted
without its instruction, labelled or weak), the larger held-out estimate
on length-balanced pairs, with 95% intervals that resample instructions.

`best_cpu_scorer` = the scorer (not a baseline nor length under another name) with the highest mean
accuracy on length-balanced pairs over the three datasets, among those measured on ≥ 20 balanced
pairs of each; `acc`, `length_acc`, `ci` are its AlpacaEval figures (all pairs).
The full run writes datacraft/resources/scorer_agreement.json (`--write-agreement` elsewhere); with
`--no-llm` the LLM scorers' recorded figures there are kept (each record carries its own command).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._common import emit  # noqa: E402
from datacraft.report.agreement import DATASETS, agreement_path  # noqa: E402
from datacraft.stages.registry import build_stage  # noqa: E402
from datacraft.stages.score import prefhead  # noqa: E402

FILES = {
    "alpaca_eval_judge_annotations": "pref/alpaca_eval_judge_annotations.part*.jsonl",
    "cherry_gpt4_pairwise_reviews": "pref/cherry_gpt4_pairwise_reviews.jsonl",
    "hh_rlhf_harmless_base_test": "pref/hh_rlhf_harmless_base_test.jsonl",
}
#: datasets the shipped head was fitted on (their held-out split is scored); the others are scored whole
FITTED = ("alpaca_eval_judge_annotations", "hh_rlhf_harmless_base_test")
LOWER_IS_BETTER = {"repetition", "refusal", "rifd"}
#: heuristics sub-scores that are equal on both sides of a pair (same instruction)
SAME_INSTRUCTION = {"length.instruction"}
#: heuristics sub-scores that are the length baseline under another name (not candidates for best_cpu_scorer)
LENGTH_ALIASES = {"length.response", "chars.response", "response_ratio"}
BALANCE = 0.7
MIN_BALANCED = 20
BOOT = 1000


def default_data() -> Path:
    for cand in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"):
        if cand.exists():
            return cand
    return ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------
# statistics


def outcomes(chosen: np.ndarray, rejected: np.ndarray, sign: float = 1.0, tie: float = 1e-5) -> np.ndarray:
    """1 / 0.5 / 0 per pair (preferred higher / tie or missing / lower). Differences below `tie` are
    ties: batched forward passes pad differently, so equal prompts differ by up to ~4e-6."""
    m = sign * (np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64))
    out = np.where(m > tie, 1.0, np.where(m < -tie, 0.0, 0.5))
    return np.where(np.isnan(m), 0.5, out)


def bootstrap(o: np.ndarray, base: np.ndarray | None = None, seed: int = 0) -> tuple[list[float], list[float] | None]:
    """95% percentile intervals of the mean of `o` and of the paired difference `o − base`."""
    if o.size == 0:
        return [float("nan")] * 2, None
    idx = np.random.default_rng(seed).integers(0, o.size, size=(BOOT, o.size))
    ci = np.percentile(o[idx].mean(axis=1), [2.5, 97.5]).round(4).tolist()
    diff = None if base is None else np.percentile((o - base)[idx].mean(axis=1), [2.5, 97.5]).round(4).tolist()
    return ci, diff


def figures(o: np.ndarray, length: np.ndarray, balanced: np.ndarray) -> dict[str, Any]:
    ci, dci = bootstrap(o, length)
    bo, bl = o[balanced], length[balanced]
    bci, bdci = bootstrap(bo, bl)
    return {
        "n": int(o.size), "acc": round(float(o.mean()), 4), "ci": ci, "length_acc": round(float(length.mean()), 4), "diff_vs_length_ci": dci,
        "balanced_n": int(bo.size),
        "balanced_acc": round(float(bo.mean()), 4) if bo.size else None, "balanced_ci": bci,
        "balanced_length_acc": round(float(bl.mean()), 4) if bl.size else None, "balanced_diff_vs_length_ci": bdci,
    }


# ---------------------------------------------------------------------------------------------
# scoring through the stage cores


def run(name: str, params: dict[str, Any], rows: pl.DataFrame, batch: int = 512) -> pl.DataFrame:
    """The stage's kept rows (all of them: no scorer here drops), in input order."""
    stage = build_stage(name, params)
    kept, dropped, _ = stage.run_local(rows.slice(i, batch) for i in range(0, rows.height, batch))
    assert dropped.height == 0 and kept.height == rows.height, f"{name} dropped rows"
    return rows.select("id").join(kept, on="id", how="left", maintain_order="left")


def split_scores(scored: pl.DataFrame, column: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    v = scored[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    return v[:n], v[n:]


def cheap_scores(rows: pl.DataFrame, n: int) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """scorer → (model, chosen scores, rejected scores) for the scorers that need no LLM."""
    out: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
    heur = run("heuristics", {}, rows)
    for col in [c for c in heur.columns if c.startswith("scores.")]:
        name = col[len("scores."):]
        if name not in SAME_INSTRUCTION:
            out[name] = ("-", *split_scores(heur, col, n))
    t0 = time.perf_counter()
    head = run("pref_head", {"model": "embedded"}, rows)
    out["pref_head"] = ("embedded", *split_scores(head, "scores.pref_head", n))
    print(f"  pref_head: {rows.height} rows in {time.perf_counter() - t0:.1f} s (vectors from the cache when present)", flush=True)
    emb = run("embed", {"text": "response"}, rows)  # the same vectors the head used: cache hits
    div = run("diversity", {"text": "response"}, emb)
    for col in ("diversity", "nn_distance", "longtail"):
        out[col] = ("embedded", *split_scores(div, "scores." + col, n))
    return out


def llm_scores(rows: pl.DataFrame, n: int, args: argparse.Namespace) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """quality / complexity / deita (complexity then quality: the quality stage writes deita) and ifd / rifd.

    The in-process judge and IFD do not go through the LLM cache (no generation), so the scores of a
    (rows, parameters) set are kept under the datacraft cache dir: a rerun with a new head reuses them."""
    from datacraft.core.paths import cache_root

    key = hashlib.blake2b(json.dumps([rows["id"].to_list(), args.max_field_chars, args.ifd_max_length, args.reward_model]).encode(), digest_size=8).hexdigest()
    saved = cache_root() / "bench_scorers" / f"llm-{key}.json"
    if saved.exists():
        data = json.loads(saved.read_text())
        print(f"  LLM scores of these {rows.height} rows reused from {saved}", flush=True)
        return {k: (m, np.array(c, dtype=np.float64), np.array(r, dtype=np.float64)) for k, (m, c, r) in data.items()}
    out: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
    judge = {"max_field_chars": args.max_field_chars, "batch_size": 8}
    t0 = time.perf_counter()
    comp = run("complexity", judge, rows, batch=64)
    qual = run("quality", judge, comp, batch=64)  # complexity's per-turn scores in meta → deita
    print(f"  judge: {rows.height} rows × 2 dimensions in {time.perf_counter() - t0:.1f} s", flush=True)
    for col in ("quality", "complexity", "deita"):
        out[col] = ("embedded", *split_scores(qual, "scores." + col, n))
    t0 = time.perf_counter()
    ifd = run("ifd", {"max_length": args.ifd_max_length, "batch_size": 8}, rows, batch=64)
    print(f"  ifd: {rows.height} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    for col in ("ifd", "rifd"):
        out[col] = ("embedded", *split_scores(ifd, "scores." + col, n))
    if args.reward_model:
        rew = run("reward", {"model": args.reward_model, "batch_size": 8}, rows, batch=64)
        out["reward"] = (args.reward_model, *split_scores(rew, "scores.reward", n))
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({k: (m, c.tolist(), r.tolist()) for k, (m, c, r) in out.items()}))  # NaN round-trips
    return out


def cross_fitted(files: list[str], data: Path, folds: int = 4, seed: int = 0) -> dict[str, Any]:
    """The shipped head's recipe (features, L2s, weak pairs) cross-fitted over every instruction of `files`: each
    pair scored by a head fitted without its instruction, labelled or weak (`prefhead.cross_fit`), with 95%
    intervals resampling instructions (pairs of one instruction move together)."""
    head = prefhead.PrefHead.load("embedded")
    meta = head.metadata
    pairs = prefhead.load_pairs(files)
    feats = head.features
    chosen, rejected = prefhead.pair_views(pairs, **prefhead.view_flags(feats), embedder=head.embedder)
    keys = [prefhead.instruction_key(x) for x in pairs["instruction"].to_list()]
    weak = None
    if meta.get("weak_training_files"):
        answer_files = [next(data.rglob(f["file"])) for f in meta["weak_training_files"]]
        weak = prefhead.weak_views(answer_files, feats, meta["win_rates"], meta.get("weak_balance"), head.embedder)
    margin = prefhead.cross_fit(chosen, rejected, keys, feats, k=folds, l2=meta["l2"], weak=weak, weak_weight=meta.get("weak_weight", 1.0),
                                ngram_l2=meta.get("ngram_l2", prefhead.NGRAM_L2))
    out = prefhead.cross_fit_figures(margin, chosen.chars, rejected.chars, folds, BALANCE)
    o, length = outcomes(margin, np.zeros_like(margin)), outcomes(chosen.chars, rejected.chars)
    bal = np.minimum(chosen.chars, rejected.chars) >= BALANCE * np.maximum(chosen.chars, rejected.chars)
    _, inverse = np.unique(keys, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    rng = np.random.default_rng(seed)
    draws = {"balanced_ci": [], "balanced_diff_vs_length_ci": [], "diff_vs_length_ci": []}
    for _ in range(BOOT):
        pick = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        b = pick[bal[pick]]
        draws["balanced_ci"].append(o[b].mean())
        draws["balanced_diff_vs_length_ci"].append((o - length)[b].mean())
        draws["diff_vs_length_ci"].append((o - length)[pick].mean())
    out.update({k: np.percentile(v, [2.5, 97.5]).round(4).tolist() for k, v in draws.items()})
    return {"features": feats, "l2": meta["l2"], "ngram_l2": meta.get("ngram_l2"), "weak_pairs": None if weak is None else len(weak.targets),
            "weak_weight": meta.get("weak_weight"), **out}


def head_throughput(pairs: pl.DataFrame, n_rows: int, model: str = "embedded") -> dict[str, float]:
    """pref_head rows/min on fresh rows (vector cache off: the embedding is paid), torch on 2 threads."""
    import torch

    torch.set_num_threads(2)
    rows = prefhead.pair_rows(pairs.head(max(1, n_rows // 2)))
    stage = build_stage("pref_head", {"model": model, "cache": False})
    stage.acquire()
    stage.run(rows.head(8))  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    stage.run(rows)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    stage.release()
    # on a shared machine the wall figure depends on the neighbours; CPU seconds / 2 is the wall time
    # the same work takes on 2 dedicated cores (torch runs it on 2 threads)
    return {"rows": rows.height, "seconds": round(seconds, 2), "rows_per_min": round(rows.height / seconds * 60, 1),
            "cpu_seconds": round(cpu, 2), "rows_per_min_2_dedicated_cores": round(rows.height / (cpu / 2) * 60, 1),
            "load_avg_1min": round(os.getloadavg()[0], 2)}


# ---------------------------------------------------------------------------------------------


def table(dataset: str, results: dict[str, dict[str, Any]]) -> None:
    title, labeller = DATASETS[dataset]
    print(f"\n{title} ({labeller} labels)")
    print(f"{'scorer':20s} {'n':>5s} {'acc':>6s} {'95% CI':>15s} {'length':>6s} {'Δ vs len CI':>17s} | {'n_bal':>5s} {'bal':>6s} {'95% CI':>15s} {'length':>6s} {'Δ vs len CI':>17s}")
    fmt = lambda ci: "n/a" if ci is None or any(np.isnan(ci)) else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci[0] < 0 or ci[1] < 0.0 else f"[{ci[0]:.2f}, {ci[1]:.2f}]"  # noqa: E731
    num = lambda v: "  n/a" if v is None else f"{v:6.3f}"  # noqa: E731
    for name, r in results.items():
        if "na" in r:
            print(f"{name:20s} {r['na']}")
            continue
        print(f"{name:20s} {r['n']:5d} {num(r['acc'])} {fmt(r['ci']):>15s} {num(r['length_acc'])} {fmt(r['diff_vs_length_ci']):>17s} | "
              f"{r['balanced_n']:5d} {num(r['balanced_acc'])} {fmt(r['balanced_ci']):>15s} {num(r['balanced_length_acc'])} {fmt(r['balanced_diff_vs_length_ci']):>17s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", default=str(default_data()))
    ap.add_argument("--llm-pairs", type=int, default=None, help="pairs per dataset for the LLM scorers (quick 30, full 60)")
    ap.add_argument("--max-field-chars", type=int, default=None, help="judge: characters kept per field (quick 1000, full 6000 = the stage default)")
    ap.add_argument("--ifd-max-length", type=int, default=None, help="ifd: tokens kept (quick 384, full 1024 = the stage default)")
    ap.add_argument("--reward-model", default=None, help="a local AutoModelForSequenceClassification checkpoint (none ships offline)")
    ap.add_argument("--no-llm", action="store_true", help="skip the LLM scorers")
    ap.add_argument("--llm-datasets", default=None, help="comma-separated datasets for the LLM scorers (default: all)")
    ap.add_argument("--llm-only", action="store_true", help="only the LLM scorers and the baselines (fills their score cache)")
    ap.add_argument("--write-agreement", default=None, help="where to write the agreement figures (full run default: the packaged resource)")
    ap.add_argument("--max-pairs", type=int, default=None, help="pairs per dataset for the other scorers (quick 400, full: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.max_pairs = args.max_pairs or (400 if args.quick else None)
    args.llm_pairs = args.llm_pairs or (30 if args.quick else 60)
    args.max_field_chars = args.max_field_chars or (1000 if args.quick else 6000)
    args.ifd_max_length = args.ifd_max_length or (384 if args.quick else 1024)
    t_start = time.perf_counter()

    holdout = prefhead.PrefHead.load("embedded").metadata["split"]["holdout"]
    all_results: dict[str, dict[str, dict[str, Any]]] = {}
    records: list[dict[str, Any]] = []
    command = " ".join(["python", "benchmarks/bench_scorers.py", *sys.argv[1:]])
    throughput = crossed = None
    for dataset, pattern in FILES.items():
        files = sorted(glob.glob(str(Path(args.data) / pattern)))
        if not files:
            raise SystemExit(f"no files for {dataset} under {args.data} ({pattern}); pass --data")
        pairs = prefhead.with_split(prefhead.load_pairs(files), holdout)
        if dataset in FITTED:
            pairs = pairs.filter(pl.col("held_out"))
        # one fixed-seed order per dataset: the LLM pairs are its head, the capped set a longer head,
        # so the LLM pairs are the same with or without --quick's cap (and their scores are reused)
        perm = np.random.default_rng(args.seed).permutation(pairs.height)
        llm_ids = set(pairs["pair_id"][perm[: args.llm_pairs]].to_list())
        if args.max_pairs and pairs.height > args.max_pairs:
            pairs = pairs[np.sort(perm[: max(args.max_pairs, args.llm_pairs)])]
        n = pairs.height
        print(f"{dataset}: {n} pairs ({'held-out instructions' if dataset in FITTED else 'all; never fitted on'})", flush=True)
        rows = prefhead.pair_rows(pairs)
        chars = rows["messages"].list.last().struct.field("content").str.len_chars().to_numpy().astype(np.float64)
        cl, rl = chars[:n], chars[n:]
        length = outcomes(cl, rl)
        balanced = np.minimum(cl, rl) >= BALANCE * np.maximum(cl, rl)
        rng = np.random.default_rng(args.seed)
        scores: dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]] = {
            "length (baseline)": ("-", cl, rl, np.arange(n)),
            "random (baseline)": ("-", rng.random(n), rng.random(n), np.arange(n)),
        }
        for name, (model, c, r) in ({} if args.llm_only else cheap_scores(rows, n)).items():
            scores[name] = (model, c, r, np.arange(n))
        if dataset == "alpaca_eval_judge_annotations" and not args.llm_only:
            throughput = head_throughput(pairs, 120 if args.quick else 400)
            print(f"  pref_head throughput (embedding included, cache off): {throughput}", flush=True)
            if not args.quick:
                crossed = cross_fitted(files, Path(args.data))
                print(f"  pref_head cross-fitted over all {crossed['pairs']} pairs ({crossed['folds']} folds by instruction, the shipped "
                      f"features and L2): all {crossed['accuracy']:.3f} vs length {crossed['length_accuracy']:.3f}; balanced "
                      f"{crossed['balanced_accuracy']:.3f} {crossed['balanced_ci']} vs length {crossed['balanced_length_accuracy']:.3f} on "
                      f"{crossed['balanced_pairs']} (difference {crossed['balanced_diff_vs_length_ci']}, instructions resampled)", flush=True)
        results: dict[str, dict[str, Any]] = {}
        if not args.no_llm and (args.llm_datasets is None or dataset in args.llm_datasets.split(",")):
            sub = np.flatnonzero(pairs["pair_id"].is_in(list(llm_ids)).to_numpy())
            sub_pairs = pairs[sub]
            for name, (model, c, r) in llm_scores(prefhead.pair_rows(sub_pairs), len(sub), args).items():
                scores[name] = (model, c, r, sub)
        for name, (model, c, r, idx) in scores.items():
            o = outcomes(c, r, -1.0 if name in LOWER_IS_BETTER else 1.0)
            results[name] = {"model": model, **figures(o, length[idx], balanced[idx])}
        if "reward" not in scores:
            results["reward"] = {"na": "n/a: no offline reward model (pass --reward-model PATH)"}
        all_results[dataset] = results
        table(dataset, results)
        for name, r in results.items():
            if "na" not in r and "baseline" not in name:
                records.append({"scorer": name, "score_column": name, "model": r["model"], "dataset": dataset,
                                "pairs": "held-out instructions" if dataset in FITTED else "all",
                                **{k: r[k] for k in ("n", "acc", "ci", "length_acc", "balanced_n", "balanced_acc", "balanced_ci", "balanced_length_acc")},
                                "date": time.strftime("%Y-%m-%d"), "command": command})

    # candidates: measured on every dataset with ≥ MIN_BALANCED balanced pairs in each (not on a handful)
    first = all_results[next(iter(FILES))]
    scorers = [s for s in first if "baseline" not in s and s not in LENGTH_ALIASES and "na" not in first[s]
               and all("na" not in all_results[d].get(s, {"na": 1}) and all_results[d][s]["balanced_n"] >= MIN_BALANCED for d in FILES)]
    mean_bal = {s: float(np.mean([all_results[d][s]["balanced_acc"] for d in FILES])) for s in scorers}
    best = max(mean_bal, key=mean_bal.get)
    primary = all_results["alpaca_eval_judge_annotations"][best]
    out_path = args.write_agreement or (None if args.quick else str(agreement_path()))
    if out_path:
        if args.no_llm and Path(out_path).exists():
            # a run without the LLM scorers keeps their recorded figures (each record names its command)
            measured = {(r["scorer"], r["dataset"]) for r in records}
            previous = json.loads(Path(out_path).read_text(encoding="utf-8")).get("records", [])
            records += [r for r in previous if (r["scorer"], r["dataset"]) not in measured]
        Path(out_path).write_text(json.dumps({"generated": time.strftime("%Y-%m-%d"), "command": command, "records": records}, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {len(records)} agreement records to {out_path}")
    seconds = time.perf_counter() - t_start
    print(f"total {seconds:.0f} s")
    emit({
        "benchmark": "scorers",
        "quick": args.quick,
        "best_cpu_scorer": best,
        "acc": primary["acc"],
        "length_acc": primary["length_acc"],
        "ci": primary["ci"],
        "balanced_acc": primary["balanced_acc"],
        "balanced_length_acc": primary["balanced_length_acc"],
        "balanced_ci": primary["balanced_ci"],
        "per_dataset": {d: {s: {k: r[k] for k in ("n", "acc", "ci", "length_acc", "balanced_n", "balanced_acc", "balanced_length_acc")}
                            for s, r in res.items() if "na" not in r} for d, res in all_results.items()},
        "pref_head_throughput": throughput,
        "pref_head_cross_fitted": crossed,
        "llm_pairs_per_dataset": None if args.no_llm else args.llm_pairs,
        "seconds": seconds,
    })


if __name__ == "__main__":
    main()

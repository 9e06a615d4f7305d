from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl

from datacraft.core.rows import set_scores
from datacraft.io.readers import read_all
from datacraft.stages.dedup.semantic import SemanticDedupStage
from datacraft.vectors.embedders import EMBEDDING_COLUMN, embedding_series, ensure_embeddings

from ._embed_helpers import DATA, assert_ledger, embedded, rows, run_beam

TOOL = "gpteacher_toolformer_dedupe_only_1500.jsonl"


def test_gpteacher_levels_same_direction() -> None:
    """Published: 1500 (dedupe only) → 1312 rows (sim < 0.9) → 715 (sim < 0.6). Our counts fall the same way."""
    published = [rows(TOOL).height, rows("gpteacher_toolformer_sim0.9_subset.jsonl").height, rows("gpteacher_toolformer_sim0.6_subset.jsonl").height]
    assert published == [1500, 1312, 715]
    frame = embedded(TOOL, "instruction_response")
    ours = [frame.height]
    for tau in (0.9, 0.6):
        kept, dropped, _ = SemanticDedupStage({"threshold": tau, "grouping": "greedy", "k": 20}).run_local([frame])
        assert_ledger(frame.height, kept, dropped)
        ours.append(kept.height)
    assert ours[0] > ours[1] > ours[2], (ours, published)


def test_groups_keep_best_by_score_and_detail() -> None:
    base = rows("alpaca_llamafactory_200.jsonl").head(30)
    x = np.random.default_rng(3).normal(size=(30, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # rows 0..2 become one group (near copies), the best quality is row 1
    x[1] = x[0] * 0.98 + 0.02 * x[5]
    x[2] = x[0] * 0.97 + 0.03 * x[7]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    frame = set_scores(base.with_columns(embedding_series(x)), {"quality": [1.0, 5.0, 2.0] + [3.0] * 27})
    kept, dropped, stats = SemanticDedupStage({"threshold": 0.95}).run_local([frame])
    assert_ledger(30, kept, dropped, stats)
    ids = frame["id"].to_list()
    assert set(dropped["id"]) == {ids[0], ids[2]}
    assert ids[1] in kept["id"].to_list()
    assert all(re.fullmatch(rf"near-duplicate of {re.escape(ids[1])} \(cos=(1\.0|0\.9\d+)\)", d) for d in dropped["drop_detail"])
    assert stats[0].extras["group_sizes"] == {"3": 1}
    assert stats[0].extras["examples"][0]["kept_id"] == ids[1]
    # exact_max: 1 sends even 30 rows to the IVF index, which finds the same group here
    approx, approx_dropped, _ = SemanticDedupStage({"threshold": 0.95, "exact_max": 1}).run_local([frame])
    assert set(approx_dropped["id"]) == {ids[0], ids[2]} and approx.height == 28


def test_transitive_groups_union_find() -> None:
    base = rows("alpaca_llamafactory_200.jsonl").head(4)
    a = np.array([1.0, 0, 0])
    b = np.array([0.93, 0.37, 0])  # cos(a, b) ≈ 0.93
    c = np.array([0.73, 0.68, 0])  # cos(b, c) ≈ 0.93, cos(a, c) ≈ 0.73
    d = np.array([0, 0, 1.0])
    x = np.stack([a, b, c, d]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    frame = base.with_columns(embedding_series(x))
    kept, dropped, _ = SemanticDedupStage({"threshold": 0.9, "score": None}).run_local([frame])
    assert kept.height == 2 and dropped.height == 2  # a-b-c chained into one group
    greedy, gdropped, _ = SemanticDedupStage({"threshold": 0.9, "score": None, "grouping": "greedy"}).run_local([frame])
    assert greedy.height + gdropped.height == 4 and greedy.height >= 2


def test_beam_form_matches_local_and_balances() -> None:
    frame = embedded("alpaca_llamafactory_200.jsonl")
    stage = SemanticDedupStage({"threshold": 0.8, "partition_rows": 100})
    local_kept, local_dropped, _ = stage.run_local([frame])
    assert local_dropped.height > 0
    stage.sample_fraction = 1.0
    kept, dropped, stats = run_beam(stage, frame, batch_rows=50)
    assert_ledger(frame.height, kept, dropped, stats)
    assert set(dropped["id"]) == set(local_dropped["id"])
    summary = [s for s in stats if s.n_in == 0 and s.extras]  # (time-only entries have no extras)
    assert summary and summary[0].extras["group_sizes"]


def _with_near_copies(tmp_path: Path) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
    """The 60 Self-Instruct rows plus a near copy of every 6th (lower-cased, end punctuation cut)."""
    source = [json.loads(line) for line in (DATA / "selfinstruct_60.jsonl").open()]
    copies = [{**r, "id": r["id"] + ":copy", "instruction": r["instruction"].lower().rstrip("."), "output": r["output"].rstrip(".!")} for r in source[::6]]
    path = tmp_path / "near_copies.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in source + copies))
    frame, bad = read_all(str(path))
    assert bad.height == 0
    return frame, [(r["id"].removesuffix(":copy"), r["id"]) for r in copies]


def _pairs(dropped: pl.DataFrame) -> set[frozenset[str]]:
    kept_of = dropped["drop_detail"].str.extract(r"^near-duplicate of (.+) \(cos=").to_list()
    return {frozenset(pair) for pair in zip(dropped["id"].to_list(), kept_of, strict=True)}


def test_empty_and_embeds_when_column_missing(tmp_path: Path) -> None:
    """No `embedding` column: the stage embeds the text itself and finds exactly the planted copies,
    the same rows as when the same embedder's vectors are given."""
    frame, pairs = _with_near_copies(tmp_path)
    assert EMBEDDING_COLUMN not in frame.columns and len(pairs) == 10
    stage = SemanticDedupStage({"kind": "static", "threshold": 0.99, "score": None})
    kept, dropped, _ = stage.run_local([frame])
    assert_ledger(frame.height, kept, dropped)
    assert dropped.height == 10 and _pairs(dropped) == {frozenset(p) for p in pairs}
    given = frame.with_columns(embedding_series(ensure_embeddings(frame, None, "instruction_response", kind="static")))
    kept_given, dropped_given, _ = stage.run_local([given])
    assert sorted(dropped_given["id"]) == sorted(dropped["id"]) and kept_given.height == kept.height == 60
    empty, _, _ = SemanticDedupStage().run_local([frame.head(0)])
    assert empty.height == 0


def test_faiss_ivf_and_exact_give_the_same_groups_on_real_embeddings(monkeypatch) -> None:
    """Static-embedder vectors of real rows: the IVF index (FAISS's scan, and the same lists searched as
    BLAS blocks) drops the rows the exact IndexFlatIP search drops — identical on Alpaca rows; on
    GPTeacher Toolformer, where almost every row is a duplicate at τ 0.9, within the recall contract."""
    from datacraft.vectors import knn as knn_module

    def dropped(frame: pl.DataFrame, **params: object) -> pl.DataFrame:
        return SemanticDedupStage({"threshold": 0.8, "score": None, **params}).run_local([frame])[1].sort("id")

    cases = [(embedded("alpaca_llamafactory_200.jsonl", "instruction_response"), 1.0), (embedded(TOOL, "instruction_response"), 0.99)]
    for frame, agreement in cases:
        for tau in (0.9, 0.8):
            exact = dropped(frame, threshold=tau, method="exact")
            assert exact.height > 10
            ivf = dropped(frame, threshold=tau, exact_max=1)
            monkeypatch.setattr(knn_module, "IVF_GEMM_MIN", 0)
            gemm = dropped(frame, threshold=tau, exact_max=1)
            monkeypatch.undo()
            assert gemm.equals(ivf)  # FAISS's scan and the BLAS blocks: the same neighbours
            if agreement == 1.0:
                assert ivf.equals(exact)
            else:
                assert len(set(ivf["id"]) & set(exact["id"])) / len(set(ivf["id"]) | set(exact["id"])) >= agreement


def test_ivf_path_ignores_row_order() -> None:
    """The IVF index is trained on a seeded sample of the rows in id order: shuffled input, the same
    candidate edges (one probe, so the edges depend on the lists: a sample in arrival order changes them)."""
    from datacraft.stages.dedup.semantic import threshold_edges
    from datacraft.vectors.embedders import embeddings_of

    frame = embedded("alpaca_llamafactory_200.jsonl", "instruction_response")

    def edges(f: pl.DataFrame) -> pl.DataFrame:
        e = threshold_edges(f["id"].to_list(), embeddings_of(f), 10, 0.75, max_k=64, exact_max=1, nprobe=1)
        return e.select(pl.min_horizontal("a", "b").alias("a"), pl.max_horizontal("a", "b").alias("b"), "sim").sort("a", "b")

    first = edges(frame)
    assert first.height > 100
    for seed in range(3):
        assert edges(frame.sample(fraction=1.0, shuffle=True, seed=seed)).equals(first)

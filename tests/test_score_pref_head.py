"""The preference head: fit on real AlpacaEval / hh-rlhf pairs, the shipped head, `fit-scorer`, the
`pref_head` stage in Beam, and the agreement lookup (real embedders, real data slices)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datacraft.core.stage import RunContext
from datacraft.report import agreement
from datacraft.stages.registry import build_stage
from datacraft.stages.score import prefhead
from tests._embed_helpers import assert_ledger, run_beam

DATA = Path(__file__).parent / "data"
AE_SLICE = DATA / "alpaca_eval_pairs_201.jsonl"
HH_SLICE = DATA / "hh_rlhf_harmless_150.jsonl"
STATIC = {"kind": "static", "model": "embedded"}


def pair_margin(kept: pl.DataFrame, pairs: pl.DataFrame, column: str = "scores.pref_head") -> np.ndarray:
    """score(chosen) − score(rejected) per pair, from the stage's output rows (`pair_rows` ids)."""
    score = dict(zip(kept["id"].to_list(), kept[column].to_list(), strict=True))
    ids = pairs["pair_id"].to_list()
    return np.array([score[i + "|chosen"] - score[i + "|rejected"] for i in ids])


@pytest.fixture(scope="module")
def static_head(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A head fitted by `fit_from_files` on the AlpacaEval slice with the (fast) static embedder."""
    out = tmp_path_factory.mktemp("head")
    meta = prefhead.fit_from_files([AE_SLICE], out, features=["response", "loglen"], embedder=STATIC, cache_dir=str(out / "cache"))
    return out, meta


def test_split_is_by_instruction_and_stable() -> None:
    pairs = prefhead.with_split(prefhead.load_pairs([AE_SLICE]))
    # the slice was cut as 20 held-out + 47 other pairs per judged model
    assert pairs.height == 201 and int(pairs["held_out"].sum()) == 60
    by_instruction = pairs.group_by(pl.col("instruction").map_elements(prefhead.instruction_key, return_dtype=pl.Utf8)).agg(pl.col("held_out").n_unique())
    assert by_instruction["held_out"].max() == 1  # no instruction on both sides
    assert prefhead.is_held_out("  Tell me a JOKE ") == prefhead.is_held_out("tell me a joke")


def test_fit_beats_chance_on_held_out_instructions(static_head: tuple[Path, dict]) -> None:
    _, meta = static_head
    assert meta["train_pairs"] == 141 and meta["held_out_pairs"] == 60
    # chance is 0.5; the figure measured with this slice is 0.93
    assert meta["held_out_accuracy"] >= 0.80
    assert meta["l2"] in prefhead.L2_GRID and meta["cv_log_loss"]
    assert meta["training_files"][0]["license"] == "Apache-2.0 (repo)" and not meta["restricted_training_data"]
    # the model card says how the held-out pairs were chosen: by instruction, with the salted hash rule
    split = meta["split"]
    assert split["by"] == "instruction" and prefhead.SPLIT_SALT in split["rule"] and 0 < split["holdout"] < 1


def test_fit_without_length_feature_still_learns(tmp_path: Path) -> None:
    """The response embedding alone (no explicit length) ranks held-out pairs well above chance."""
    pairs = prefhead.with_split(prefhead.load_pairs([AE_SLICE]))
    chosen, rejected = prefhead.pair_views(pairs, embedder=STATIC, cache_dir=str(tmp_path))
    train = ~pairs["held_out"].to_numpy()
    sub = lambda v, m: prefhead.RowViews(v.instruction[m], v.response[m], v.chars[m])  # noqa: E731
    keys = [prefhead.instruction_key(x) for x in pairs.filter(~pl.col("held_out"))["instruction"].to_list()]
    head = prefhead.fit_head(sub(chosen, train), sub(rejected, train), keys, ["response"], l2=100.0)
    margin = head.score(sub(chosen, ~train)) - head.score(sub(rejected, ~train))
    assert prefhead.pair_accuracy(margin) >= 0.70
    flipped = prefhead.PrefHead(-head.weights, head.mean, head.scale, head.features)
    assert prefhead.pair_accuracy(flipped.score(sub(chosen, ~train)) - flipped.score(sub(rejected, ~train))) <= 0.30


def test_shipped_head_prefers_the_preferred_answer(tmp_path: Path) -> None:
    """The embedded head on 30 of the slice's held-out pairs (instructions its fit never saw; the first
    10 per judged model). Measured: 30 of 30 (0.95 on all 60)."""
    meta = json.loads((prefhead.embedded_head_dir() / "metadata.json").read_text())
    assert not meta["restricted_training_data"]
    assert {f["file"].split(".")[0] for f in meta["training_files"]} == {"alpaca_eval_judge_annotations"}
    pairs = prefhead.with_split(prefhead.load_pairs([AE_SLICE]), meta["split"]["holdout"]).filter(pl.col("held_out"))
    pairs = pl.concat([pairs.slice(k, 10) for k in (0, 20, 40)])
    assert pairs["pair_id"].str.split(":").list.get(1).str.split("/").list.first().n_unique() == 3
    rows = prefhead.pair_rows(pairs)
    kept, dropped, _ = build_stage("pref_head", {}, context=RunContext(cache_dir=str(tmp_path))).run_local([rows])
    assert dropped.height == 0
    acc = prefhead.pair_accuracy(pair_margin(kept, pairs))
    assert acc >= 0.85, acc


def test_format_features_count_the_layout() -> None:
    text = "# Title\n\n- one\n- two\n1. three\n**bold** and **more**. End!\n```py\nx = 1\n```"
    got = np.expm1(prefhead.format_matrix([text, ""]))
    # lines, list items, bold spans, headers, code blocks, sentences ("1. " counts), words per sentence, words
    np.testing.assert_allclose(got[0], [8, 3, 2, 1, 1, 3, 3.5, 17], atol=1e-9)
    np.testing.assert_allclose(got[1], np.zeros(8), atol=1e-12)
    assert got.shape[1] == len(prefhead.FORMAT_FEATURES)


def test_style_features_count_markers_and_instruction_overlap() -> None:
    text = ("Sure! Here are two ideas:\n\n- Bake bread. It is easy.\n- Plant basil\n\n1. Water it daily\n\n"
            "As an AI, I cannot taste it. I'm sorry! Overall, enjoy. Let me know?")
    got = prefhead.style_matrix([text, ""], ["Give me ideas for the weekend: bread, basil", ""])
    assert got.shape == (2, len(prefhead.STYLE_FEATURES))
    col = {name: got[0, i] for i, name in enumerate(prefhead.STYLE_FEATURES)}
    counts = {k: round(float(np.expm1(v)), 6) for k, v in col.items() if k not in ("multiline", "instruction_overlap")}
    assert counts == {"paragraphs": 4, "bullets": 2, "numbered": 1, "sentence_words_sd": pytest.approx(counts["sentence_words_sd"]),
                      "sentence_words_max": 10, "as_an_ai": 1, "sorry": 1, "cannot": 1, "summary": 0, "sure": 1, "here": 0,
                      "note": 0, "hope": 1, "question": 1, "exclaim": 2, "colon_eol": 1}
    # sentences end at . ! ? before whitespace ("1." too): 1, 7, 3, 4, 10, 2, 2, 3 words; population sd
    assert counts["sentence_words_sd"] == pytest.approx(np.std([1, 7, 3, 4, 10, 2, 2, 3]), abs=1e-5)
    assert col["multiline"] == 1.0
    assert col["instruction_overlap"] == pytest.approx(3 / 5)  # of give, ideas, weekend, bread, basil: ideas, bread, basil
    np.testing.assert_allclose(got[1], np.zeros(len(prefhead.STYLE_FEATURES)))


def test_stage_scores_equal_the_head_on_its_own_views(tmp_path: Path) -> None:
    """The stage builds the shipped head's features (embeddings, length, heuristics, layout, style, cosine,
    n-grams) from rows as the fit built them from pairs: the same scores."""
    head = prefhead.PrefHead.load("embedded")
    assert head.features == list(prefhead.DEFAULT_FEATURES) and head.needs_format and head.needs_style
    pairs = prefhead.load_pairs([AE_SLICE]).head(4)
    rows = prefhead.pair_rows(pairs)
    kept, _, _ = build_stage("pref_head", {}, context=RunContext(cache_dir=str(tmp_path))).run_local([rows])
    ins = pairs["instruction"].to_list() * 2
    views = prefhead.row_views(ins, pairs["chosen"].to_list() + pairs["rejected"].to_list(), rows, **prefhead.view_flags(head.features),
                               cache_dir=str(tmp_path))
    np.testing.assert_allclose(kept["scores.pref_head"].to_numpy(), head.score(views), atol=1e-4)
    no_layout = prefhead.RowViews(views.instruction, views.response, views.chars, views.heuristics, ngrams=views.ngrams, style=views.style)
    with pytest.raises(ValueError, match="format"):
        head.score(no_layout)
    no_style = prefhead.RowViews(views.instruction, views.response, views.chars, views.heuristics, views.format, views.ngrams)
    with pytest.raises(ValueError, match="style"):
        head.score(no_style)
    # the instruction matters (style's overlap): the same answers under other instructions score differently
    other = prefhead.row_views(ins[::-1], pairs["chosen"].to_list() + pairs["rejected"].to_list(), rows, **prefhead.view_flags(head.features),
                               cache_dir=str(tmp_path))
    assert np.abs(head.score(other) - head.score(views)).max() > 1e-3


def test_fit_scorer_cli_writes_a_loadable_head(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from datacraft.cli.main import app

    out = tmp_path / "hh_head"
    res = CliRunner().invoke(app, ["fit-scorer", str(HH_SLICE), "-o", str(out), "--embedder", "static", "--features", "response,loglen", "--holdout", "0.3"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout.strip().splitlines()[-1])
    head = prefhead.PrefHead.load(out)
    assert head.features == ["response", "loglen"] and head.embedder == STATIC
    assert head.weights.shape == (head.mean.shape[0],) == (257,)  # static vectors: 256 dims, + log length
    assert head.metadata["training_files"] == [{"file": HH_SLICE.name, "pairs": 149, "license": "MIT"}]
    assert printed["held_out_pairs"] + printed["train_pairs"] == 149
    bad = CliRunner().invoke(app, ["fit-scorer", str(HH_SLICE), "-o", str(tmp_path / "x"), "--features", "response,colour"])
    assert bad.exit_code == 2 and "colour" in bad.output


def test_stage_in_beam_keeps_every_row_and_scores_preference_rows(static_head: tuple[Path, dict], tmp_path: Path) -> None:
    from datacraft.io.readers import read_all

    folder, _ = static_head
    rows, _ = read_all(str(HH_SLICE))
    ctx = RunContext(cache_dir=str(tmp_path))
    kept, dropped, stats = run_beam(build_stage("pref_head", {"model": str(folder)}, context=ctx), rows, batch_rows=50)
    assert_ledger(rows.height, kept, dropped, stats)
    assert dropped.height == 0
    score = kept["scores.pref_head"].to_numpy()
    assert np.isfinite(score).all() and score.std() > 0.1
    margin = kept["scores.pref_head_margin"].to_numpy()
    assert np.isfinite(margin).all() and (margin != 0).mean() > 0.95
    # a floor drops rows with a reason, and the ledger still balances
    floor = float(np.median(score))
    kept2, dropped2, stats2 = run_beam(build_stage("pref_head", {"model": str(folder), "min_score": floor}, context=ctx), rows, batch_rows=50)
    assert_ledger(rows.height, kept2, dropped2, stats2)
    assert set(dropped2["drop_reason"].to_list()) == {"below_min_score"} and 0 < dropped2.height < rows.height
    assert (kept2["scores.pref_head"] >= floor).all()


def test_embedding_column_gives_the_computed_scores(static_head: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = static_head
    rows = prefhead.pair_rows(prefhead.load_pairs([AE_SLICE]).head(20))
    ctx = RunContext(cache_dir=str(tmp_path))
    computed, _, stats = build_stage("pref_head", {"model": str(folder)}, context=ctx).run_local([rows])
    spread = stats[0].extras["score_spread"]
    assert len(spread) == 1 and spread[0]["dimension"] == "pref_head" and spread[0]["n"] == rows.height  # the report's spread check
    embedded, _, _ = build_stage("embed", {"text": "response", **STATIC}, context=ctx).run_local([rows])
    from_column, _, _ = build_stage("pref_head", {"model": str(folder), "embedding": "column"}, context=ctx).run_local([embedded])
    np.testing.assert_allclose(from_column["scores.pref_head"].to_numpy(), computed["scores.pref_head"].to_numpy(), atol=1e-4)
    # the vectors scored are the column's, not embeddings computed again: other vectors, other scores
    from datacraft.vectors.embedders import EMBEDDING_COLUMN

    swapped = embedded.with_columns(pl.col(EMBEDDING_COLUMN).reverse())
    from_swapped, _, _ = build_stage("pref_head", {"model": str(folder), "embedding": "column"}, context=ctx).run_local([swapped])
    assert (np.abs(from_swapped["scores.pref_head"].to_numpy() - computed["scores.pref_head"].to_numpy()) > 1e-3).mean() > 0.8
    empty, _, _ = build_stage("pref_head", {"model": str(folder)}, context=ctx).run_local([rows.head(0)])
    assert empty.height == 0 and "scores.pref_head" in empty.columns
    with pytest.raises(ValueError, match="needs an `embed` stage"):
        build_stage("pref_head", {"model": str(folder), "embedding": "column"}, context=ctx).run_local([rows])


def test_agreement_for_returns_the_recorded_figure(tmp_path: Path) -> None:
    rec = {"scorer": "quality", "score_column": "quality", "model": "embedded", "dataset": "alpaca_eval_judge_annotations", "n": 400,
           "acc": 0.71, "ci": [0.66, 0.76], "length_acc": 0.68, "balanced_n": 90, "balanced_acc": 0.55, "balanced_ci": [0.45, 0.65], "balanced_length_acc": 0.5}
    path = tmp_path / "agreement.json"
    path.write_text(json.dumps({"records": [rec, {**rec, "model": "other-judge", "acc": 0.9}]}))
    got = agreement.agreement_for("scores.quality", "embedded", path)
    assert got is not None and got["datasets"] == [rec]
    assert agreement.agreement_for("quality", "other-judge", path)["datasets"][0]["acc"] == 0.9
    assert agreement.agreement_for("quality", "unmeasured", path) is None
    assert agreement.agreement_for("reward", None, path) is None
    line = agreement.summary_line(got)
    assert line.startswith("agreed with GPT-4 on 0.71 [0.66, 0.76] of 400 AlpacaEval pairs (length: 0.68)")
    assert "0.55 of 90 length-balanced" in line

    # the packaged figures written by benchmarks/bench_scorers.py
    packaged = json.loads(agreement.agreement_path().read_text())["records"]
    head = [r for r in packaged if r["score_column"] == "pref_head" and r["dataset"] == "alpaca_eval_judge_annotations"]
    assert len(head) == 1
    assert agreement.agreement_for("scores.pref_head", "embedded")["datasets"][0]["acc"] == head[0]["acc"]


SEVEN_GEN = DATA / "alpaca_eval_7gen_30.jsonl"


def test_weak_pairs_order_generators_by_win_rate_and_skip_held_out_instructions() -> None:
    """Weak pairs: every two rated generators' answers to one training-side instruction, the stronger
    (AlpacaEval win rate) preferred with a Bradley–Terry soft target; no held-out instruction."""
    answers = prefhead.load_answers([SEVEN_GEN])
    assert answers.height == 210 and answers["generator"].n_unique() == 7
    rates = prefhead.ALPACA_EVAL_WIN_RATES
    weak = prefhead.weak_pairs(answers, rates, lambda x: not prefhead.is_held_out(x))
    keys = {prefhead.instruction_key(x) for x in answers["instruction"]}
    held = {k for k in keys if prefhead.is_held_out(k)}
    assert 0 < len(held) < len(keys)
    assert not {prefhead.instruction_key(x) for x in weak["instruction"]} & held
    assert weak.height == 21 * (len(keys) - len(held))  # 7 generators: 21 pairs per instruction
    winner, loser = weak["pair_id"].str.extract(r"^weak:([^>]+)>", 1), weak["pair_id"].str.extract(r">([^:]+):", 1)
    assert all(rates[w] > rates[v] for w, v in zip(winner, loser, strict=True))
    top = weak.filter(pl.col("pair_id").str.starts_with("weak:gpt4_1106_preview>alpaca-7b:"))["target"]
    np.testing.assert_allclose(top.to_numpy(), 1 / (1 + (2.591 / 97.409) / (50 / 50)), atol=1e-9)
    assert weak["target"].min() > 0.5 and weak["target"].max() < 1.0
    bal = prefhead.weak_pairs(answers, rates, lambda x: not prefhead.is_held_out(x), balance=0.7)
    short, long_ = (pl.min_horizontal(*(bal[c].str.len_chars() for c in ("chosen", "rejected"))),
                    pl.max_horizontal(*(bal[c].str.len_chars() for c in ("chosen", "rejected"))))
    assert 0 < bal.height < weak.height and (bal.select(short >= 0.7 * long_).to_series()).all()
    assert set(bal["pair_id"]) < set(weak["pair_id"])


def test_cross_fit_leaves_each_folds_weak_pairs_out(tmp_path: Path) -> None:
    """Each fold is scored by a head fitted without that fold's instructions, labelled or weak: the
    cross-fitted margins equal a fit built by hand without them, and differ from one that kept them."""
    pairs = prefhead.load_pairs([AE_SLICE])
    chosen, rejected = prefhead.pair_views(pairs, embedder=STATIC, cache_dir=str(tmp_path))
    keys = [prefhead.instruction_key(x) for x in pairs["instruction"]]
    frame = prefhead.weak_pairs(prefhead.load_answers([SEVEN_GEN]), prefhead.ALPACA_EVAL_WIN_RATES, lambda _: True)
    wc, wr = prefhead.pair_views(frame, embedder=STATIC, cache_dir=str(tmp_path))
    wkeys = [prefhead.instruction_key(x) for x in frame["instruction"]]
    weak = prefhead.WeakPairs(wc, wr, wkeys, frame["target"].to_numpy())
    feats = ["response", "loglen"]
    margin = prefhead.cross_fit(chosen, rejected, keys, feats, k=4, weak=weak, l2=100.0)
    folds, wfolds = prefhead.group_folds(keys, 4), prefhead.group_folds(wkeys, 4)
    f = 0
    test, wout = folds == f, wfolds == f
    assert test.any() and wout.any()

    def fold_margin(keep: np.ndarray) -> np.ndarray:
        w = prefhead.WeakPairs(wc.take(keep), wr.take(keep), [g for g, t in zip(wkeys, keep, strict=True) if t], weak.targets[keep])
        head = prefhead.fit_head(chosen.take(~test), rejected.take(~test), [g for g, t in zip(keys, test, strict=True) if not t], feats, 100.0, weak=w)
        return head.score(chosen.take(test)) - head.score(rejected.take(test))

    np.testing.assert_allclose(margin[test], fold_margin(~wout), atol=1e-9)
    assert np.abs(margin[test] - fold_margin(np.ones(len(wkeys), dtype=bool))).max() > 1e-6
    assert prefhead.pair_accuracy(margin) >= 0.8  # measured 0.93 on this slice


def test_fit_scorer_with_weak_answers_records_them_and_cross_fits(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from datacraft.cli.main import app

    out = tmp_path / "weak_head"
    args = ["fit-scorer", str(AE_SLICE), "-o", str(out), "--embedder", "static", "--features", "response,loglen", "--l2", "100",
            "--weak-answers", str(SEVEN_GEN), "--weak-weight", "0.5", "--cross-fit", "4"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    meta = prefhead.PrefHead.load(out).metadata
    train_side = {prefhead.instruction_key(x) for x in prefhead.load_answers([SEVEN_GEN])["instruction"] if not prefhead.is_held_out(x)}
    assert meta["weak_pairs"] == 21 * len(train_side) and meta["weak_weight"] == 0.5  # held-out instructions gave none
    assert meta["weak_training_files"] == [{"file": SEVEN_GEN.name, "license": "Apache-2.0 (repo)"}] and not meta["restricted_training_data"]
    cf = meta["cross_fitted"]
    assert cf["folds"] == 4 and cf["pairs"] == 201 and cf["accuracy"] >= 0.8 and 0 <= cf["balanced_pairs"] <= 201
    bad = CliRunner().invoke(app, [*args[:6], "--cross-fit", "1"])
    assert bad.exit_code == 2 and "cross-fit" in bad.output


def test_ngram_matrix_is_stable_hashed_and_unit_length() -> None:
    """The hashed n-grams: crc32 buckets (the same on every machine), log counts, unit rows; words, word
    pairs, line openings and the first / last tokens each land in their bucket."""
    import zlib

    text = "Here is a list:\n- one\n- two two"
    grams = prefhead.ngram_matrix([text, text, "Something else entirely.", ""], dim=2**16)
    assert grams.shape == (4, 2**16)
    np.testing.assert_allclose(np.sqrt(grams.multiply(grams).sum(axis=1)).A1, 1.0)
    np.testing.assert_array_equal(grams[0].toarray(), grams[1].toarray())
    assert abs(grams[0] - grams[2]).sum() > 1.0
    row = grams[0].toarray().ravel()
    bucket = lambda f: zlib.crc32(f.encode()) % 2**16  # noqa: E731
    for feature in ("two", "two two", "here is", "^- one", "<first>here is a", "<last>- two two"):
        assert row[bucket(feature)] > 0, feature
    assert row[bucket("two")] > row[bucket("one")]  # log(1 + 3) vs log(1 + 1): counts matter


def test_block_fit_reaches_the_joint_optimum() -> None:
    """`fit_bt_blocks` (Newton on the dense block, L-BFGS on the sparse one, alternating) lands on the
    weights of one Newton fit over both blocks together (a narrow sparse block makes that fit possible)."""
    pairs = prefhead.load_pairs([AE_SLICE])
    views = [prefhead.RowViews(np.zeros((pairs.height, 1)), np.zeros((pairs.height, 1)), pairs[side].str.len_chars().to_numpy(),
                               format=prefhead.format_matrix(pairs[side])) for side in ("chosen", "rejected")]
    dense = prefhead.feature_matrix(views[0], ["loglen", "format"]) - prefhead.feature_matrix(views[1], ["loglen", "format"])
    dense /= dense.std(axis=0) + 1e-9
    grams = prefhead.ngram_matrix(pairs["chosen"].to_list(), 64) - prefhead.ngram_matrix(pairs["rejected"].to_list(), 64)
    pen = np.full(dense.shape[1], 1.0)
    ones = np.ones(pairs.height)
    w, v = prefhead.fit_bt_blocks(dense, pen, grams.tocsr(), 0.5, targets=ones, weights=ones, rounds=20)
    joint = prefhead.fit_bt(np.hstack([dense, grams.toarray()]), np.r_[pen, np.full(64, 0.5)])
    np.testing.assert_allclose(np.r_[w, v], joint, atol=2e-3)
    assert np.abs(v).max() > 0.05  # the sparse block carries weight


def test_ngram_head_fits_saves_and_the_stage_scores_it(tmp_path: Path) -> None:
    """A head with the `ngrams` feature: fitted by `fit_from_files`, saved with its n-gram weights, and
    scored by the stage exactly as on the fit's own views; the n-gram weights change the scores."""
    out = tmp_path / "ngram_head"
    meta = prefhead.fit_from_files([AE_SLICE], out, features=["response", "loglen", "ngrams"], embedder=STATIC, l2=100.0,
                                   cache_dir=str(tmp_path / "cache"))
    assert meta["ngram_dim"] == prefhead.NGRAM_DIM and meta["ngram_l2"] == prefhead.NGRAM_L2
    assert meta["held_out_accuracy"] >= 0.8  # measured 0.93 on this slice
    head = prefhead.PrefHead.load(out)
    assert head.needs_ngrams and head.ngram_weights is not None and np.abs(head.ngram_weights).max() > 0
    pairs = prefhead.load_pairs([AE_SLICE]).head(6)
    rows = prefhead.pair_rows(pairs)
    kept, _, _ = build_stage("pref_head", {"model": str(out)}, context=RunContext(cache_dir=str(tmp_path / "cache"))).run_local([rows])
    responses = pairs["chosen"].to_list() + pairs["rejected"].to_list()
    views = prefhead.row_views(pairs["instruction"].to_list() * 2, responses, rows, ngrams=True, embedder=STATIC, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_allclose(kept["scores.pref_head"].to_numpy(), head.score(views), atol=1e-4)
    without = prefhead.PrefHead(head.weights, head.mean, head.scale, ["response", "loglen"])
    assert np.abs(without.score(views) - head.score(views)).max() > 1e-3
    with pytest.raises(ValueError, match="n-grams"):
        head.score(prefhead.RowViews(views.instruction, views.response, views.chars))

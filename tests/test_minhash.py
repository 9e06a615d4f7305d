from __future__ import annotations

from datacraft.core.rows import batch_from_rows, make_row
from datacraft.stages.dedup.minhash import MinHashDedupStage, choose_bands, signatures

from ._embed_helpers import assert_ledger, rows, run_beam


def _with_near_copies():
    base = rows("alpaca_llamafactory_200.jsonl").head(80)
    extra = []
    for r in base.head(10).iter_rows(named=True):
        msgs = [dict(m) for m in r["messages"]]
        msgs[-1]["content"] = msgs[-1]["content"] + " Thanks."  # a small edit
        extra.append(make_row(msgs, id=r["id"] + ":copy"))
    from datacraft.core.rows import concat_batches

    return concat_batches([base, batch_from_rows(extra)])


def test_signature_estimates_jaccard() -> None:
    a = "the quick brown fox jumps over the lazy dog " * 5
    b = a.replace("lazy", "sleepy")
    sig = signatures([a, b, "completely different words about stock markets and rates"], num_perm=256)
    est = (sig[0] == sig[1]).mean()
    sa = {a.strip()[i : i + 5] for i in range(len(a.strip()) - 4)}
    sb = {b.strip()[i : i + 5] for i in range(len(b.strip()) - 4)}
    true = len(sa & sb) / len(sa | sb)
    assert abs(est - true) < 0.1 and (sig[0] == sig[2]).mean() < 0.1
    b_, r_ = choose_bands(128, 0.8)
    assert b_ * r_ <= 128 and abs((1 / b_) ** (1 / r_) - 0.8) < 0.05


def test_near_copies_dropped_with_detail() -> None:
    frame = _with_near_copies()
    kept, dropped, stats = MinHashDedupStage({"threshold": 0.8}).run_local([frame])
    assert_ledger(frame.height, kept, dropped, stats)
    copies = {i for i in frame["id"].to_list() if i.endswith(":copy")}
    # each pair loses exactly one row; the longer (the copy) is kept when no score exists
    assert len(copies & set(kept["id"])) == 10
    assert dropped.filter(dropped["drop_detail"].str.contains(r"near-duplicate of .*:copy \(jaccard=")).height >= 10
    assert all(r == "near-duplicate" for r in dropped["drop_reason"])


def test_minhash_beam_matches_local() -> None:
    frame = _with_near_copies()
    stage = MinHashDedupStage({"threshold": 0.8, "shards": 4})
    _, local_dropped, _ = stage.run_local([frame])
    kept, dropped, stats = run_beam(stage, frame, batch_rows=30)
    assert_ledger(frame.height, kept, dropped, stats)
    assert set(dropped["id"]) == set(local_dropped["id"])
    assert kept["id"].is_unique().all()


def test_shingles_are_every_n_gram_of_the_normalised_text() -> None:
    from datacraft.stages.dedup.minhash import shingle_lists

    (words,) = shingle_lists(["The  cat sat\non the\tMAT"], "word", 3)
    assert sorted(words) == sorted(["the cat sat", "cat sat on", "sat on the", "on the mat"])
    assert shingle_lists(["two words"], "word", 3) == [["two words"]]  # shorter than n: the whole text
    (chars,) = shingle_lists(["Ab  cd"], "char", 3)
    assert sorted(chars) == sorted(["ab ", "b c", " cd"])  # runs of whitespace count as one space

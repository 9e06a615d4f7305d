"""DPO pairs from reflection: which rows become pairs, the judge gap, length ratio, Beam run."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from datacraft.core.rows import batch_from_rows, make_row
from datacraft.io.readers import read_all
from datacraft.stages.synthesize.dpo import DPOPairsStage, pair_check

from .conftest import DATA
from .synth_fakes import ScriptedClient, run_pipeline

ALPACA = str(DATA / "alpaca_llamafactory_200.jsonl")


def _reflected_rows() -> pl.DataFrame:
    """Real Alpaca rows as reflection would leave them: chosen = a real (longer) answer, rejected = another."""
    kept, _ = read_all(ALPACA)
    recs = kept.head(8).to_dicts()
    rows = []
    for i, r in enumerate(recs):
        user, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        info = {"mode": "selective", "variant": "A", "response_status": "ok", "accepted": True, "rejected_response": answer[: len(answer) // 2]}
        if i == 1:
            info["accepted"] = None  # V1 mode: no student
        if i == 2:
            info["rejected_response"] = answer + "  "  # same text after whitespace normalisation
        if i == 3:
            info["response_status"] = "parse_failed:placeholder"
        if i == 4:
            info = None
        rows.append(make_row([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], id=f"r{i}", task=r["task"],
                             parent_ids=[r["id"]], method="reflection:selective:A", meta={"reflection": info} if info else None))
    return batch_from_rows(rows)


def test_pairs_and_drop_reasons() -> None:
    kept, dropped, stats = DPOPairsStage().run_local([_reflected_rows()])
    s = stats[0]
    assert s.n_in == s.kept + sum(s.dropped.values())
    assert dict(zip(dropped["id"], dropped["drop_reason"], strict=True)) == {
        "r1": "not_accepted", "r2": "chosen_equals_rejected", "r3": "fallback_copy", "r4": "no_reflection"}
    assert kept.height == 4
    for r in kept.iter_rows(named=True):
        assert r["lineage"] == {"parent_ids": [r["lineage"]["parent_ids"][0]], "method": "dpo:reflection"}
        assert r["messages"][-1]["role"] == "user" and len(r["chosen"][0]["content"]) > len(r["rejected"][0]["content"])
    assert s.counters["dpo.chosen_chars"] / s.counters["dpo.rejected_chars"] == pytest.approx(s.extras["dpo_length"][0]["chosen_over_rejected_chars"])
    assert s.extras["dpo_length"][0]["median_ratio"] >= 2.0 - 1e-9
    assert pair_check({"reflection": {"accepted": None, "response_status": "ok", "variant": "recycled", "rejected_response": "a"}}, "b", False) is None


def test_judge_gap_both_orders() -> None:
    # judge: answer 1 gets 9 when it is the longer text, else 6; answer 2 gets 4 → gap ≥ 3 only when chosen is long
    def judge(p: str) -> str:
        first = p.split("[Answer 1]")[1].split("[Answer 2]")[0]
        second = p.split("[Answer 2]")[1]
        s1, s2 = (9, 4) if len(first) > len(second) else (5, 6)
        return f"<Score 1>{s1}</Score 1> <Score 2>{s2}</Score 2>"

    client = ScriptedClient([("Compare two answers", judge)])
    kept, dropped, stats = DPOPairsStage({"judge": True, "judge_margin": 3.0}, client=client).run_local([_reflected_rows()])
    assert len(client.calls) == 1 and len(client.calls[0]) == 8  # 4 pairs × 2 orders, one call
    # chosen (long) scores (9 + 6) / 2 = 7.5, rejected (4 + 5) / 2 = 4.5 → gap 3 → kept
    assert kept.height == 4 and set(kept["scores.judge_gap"]) == {3.0}
    kept, dropped, _ = DPOPairsStage({"judge": True, "judge_margin": 3.5}, client=client).run_local([_reflected_rows()])
    assert kept.height == 0 and dropped["drop_reason"].to_list().count("judge_gap") == 4
    bad = ScriptedClient([("Compare two answers", lambda p: "Both are fine.")])
    _, dropped, _ = DPOPairsStage({"judge": True}, client=bad).run_local([_reflected_rows()])
    assert dropped["drop_reason"].to_list().count("judge_parse_failed") == 4


def test_in_beam_without_judge(tmp_path: Path) -> None:
    path = tmp_path / "reflected.jsonl"
    df = _reflected_rows()
    with path.open("w") as f:
        for r in df.to_dicts():
            f.write(json.dumps({**r, "meta": json.loads(r["meta"]) if r["meta"] else None}) + "\n")
    report, rows, dropped = run_pipeline(tmp_path, str(path), [{"name": "dpo_pairs"}], input={"format": "datacraft"})
    assert report["ledger_ok"] and rows.height == 4 and dropped.height == 4
    st = report["stages"][1]
    assert st["counters"]["dpo.pairs"] == 4 and st["extras"]["dpo_length"]
    assert rows["chosen"].list.len().to_list() == [1, 1, 1, 1]


def test_real_judge_in_beam(tmp_path: Path) -> None:
    """The embedded model as judge, end to end: every pair ends kept or dropped with a reason."""
    path = tmp_path / "reflected.jsonl"
    with path.open("w") as f:
        for r in _reflected_rows().head(1).to_dicts():
            f.write(json.dumps({**r, "meta": json.loads(r["meta"])}) + "\n")
    report, rows, dropped = run_pipeline(tmp_path, str(path), [{"name": "dpo_pairs", "judge": True, "max_tokens": 24}], input={"format": "datacraft"})
    assert report["ledger_ok"]
    st = report["stages"][1]
    assert st["counters"]["llm.requests"] == 2 and st["counters"]["llm.completion_tokens"] > 0
    assert rows.height + dropped.height == 1
    if dropped.height:
        assert dropped["drop_reason"][0] in {"judge_gap", "judge_parse_failed"}

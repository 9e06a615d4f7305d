"""Edges of the core helpers: row layout conversions, the run-folder reader, the drop split, shared
resources and the cache root."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from datacraft.core.paths import cache_root
from datacraft.core.resources import SharedResources
from datacraft.core.rows import batch_from_rows, make_row, row_to_output, update_meta
from datacraft.core.run_folder import RunFolder, iter_jsonl, row_texts
from datacraft.core.stage import GlobalStage, StageParams, split_kept


def test_drop_columns_are_text_even_when_all_empty() -> None:
    rows = [make_row([{"role": "user", "content": "q"}]) | {"drop_stage": None, "drop_reason": None, "drop_detail": None}]
    frame = batch_from_rows(rows)
    assert {c: frame.schema[c] for c in ("drop_stage", "drop_reason", "drop_detail")} == dict.fromkeys(("drop_stage", "drop_reason", "drop_detail"), pl.Utf8)


def test_meta_keeps_unicode_and_output_drops_missing_scores() -> None:
    frame = batch_from_rows([make_row([{"role": "user", "content": "q"}])])
    meta = update_meta(frame, [{"note": "café – ok"}])["meta"][0]
    assert "café – ok" in meta and json.loads(meta) == {"note": "café – ok"}
    out = row_to_output({"id": "a", "meta": '{"k": 1}', "scores.q": 2.0, "scores.missing": None, "_tmp": 1})
    assert out == {"id": "a", "meta": {"k": 1}, "scores": {"q": 2.0}}


def test_row_texts_prefer_the_chosen_answer() -> None:
    row = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "plain"}],
           "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "better"}]}
    assert row_texts(row) == ("Q", "better")
    assert row_texts({"messages": [], "meta": json.dumps({"raw": "{broken"})}) == ("{broken", "")


def test_iter_jsonl_numbers_lines_from_one_skipping_blanks(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert [(n, json.loads(line)["a"]) for n, line in iter_jsonl(str(path))] == [(1, 1), (3, 2)]


def test_find_rows_skips_parquet_files_without_ids(tmp_path: Path) -> None:
    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    pl.DataFrame({"other": [1, 2]}).write_parquet(data / "a.parquet")
    pl.DataFrame({"id": ["x", "y"], "v": [1, 2]}).write_parquet(data / "b.parquet")
    found = RunFolder(str(tmp_path / "run")).find_rows(["y"])
    assert set(found) == {"y"} and found["y"][2]["v"] == 2 and found["y"][1].endswith("b.parquet")


def test_split_kept_drops_rows_whose_condition_is_null() -> None:
    batch = pl.DataFrame({"id": ["a", "b", "c"]})
    result = split_kept("s", batch, pl.Series([True, None, False]), "why", "detail")
    assert result.kept["id"].to_list() == ["a"]
    assert result.dropped["id"].to_list() == ["b", "c"] and set(result.dropped["drop_reason"]) == {"why"}


def test_a_greedi_stage_must_write_its_rounds() -> None:
    class Half(GlobalStage[StageParams, None]):
        name = "half_written"
        Params = StageParams

        def process_all(self, frame: pl.DataFrame) -> None:  # type: ignore[override]
            raise AssertionError("not called")

    stage = Half()
    with pytest.raises(NotImplementedError):
        stage.round1(pl.DataFrame({"id": ["a"]}), 1)
    with pytest.raises(NotImplementedError):
        stage.round2(pl.DataFrame({"id": ["a"]}), 1)


def test_shared_resource_closed_once_by_its_last_holder() -> None:
    closed = []

    class Engine:
        def close(self) -> None:
            closed.append(self)

    shared = SharedResources()
    a = shared.acquire("k", Engine)
    assert shared.acquire("k", Engine) is a and shared.holders("k") == 2
    shared.release("k")
    assert closed == [] and shared.holders("k") == 1
    shared.release("k")
    assert closed == [a] and shared.holders("k") == 0


    class Index:  # a resource that is shut with teardown() instead
        def teardown(self) -> None:
            closed.append(self)

    b = shared.acquire("index", Index)
    shared.release("index")
    assert closed == [a, b]


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATACRAFT_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("DATACRAFT_CACHE")
    assert cache_root().name == "datacraft"

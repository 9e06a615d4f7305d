"""Bad input never stops a run (issue 16): every read error is per record or per file, the fast and
per-record JSONL paths agree, partial output is never read as whole, a killed run resumes."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from datacraft.core.run_folder import (
    CACHE_DIR,
    RUNNING,
    SUCCESS,
    ConfigMismatch,
    RunFolder,
    RunFolderBusy,
    UnfinishedRunError,
    writing,
)
from datacraft.io.readers import ReadOptions, read_all, sniff_format
from datacraft.pipeline.config import ConfigError, dump_config, load_config
from datacraft.pipeline.run import run_config

from .conftest import DATA, ROOT

FILTER_CONFIG = str(ROOT / "configs" / "filter.yaml")
PER_RECORD = ReadOptions(limit=10**9)  # a limit turns the fast path off: every line per record


def _good(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"instruction": f"Question number {i}?", "output": f"Answer number {i}."} for i in range(start, start + n)]


def _write(path: Path, records: list[object], raw: list[bytes] = ()) -> Path:
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records) + b"".join(raw)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _reasons(dropped: pl.DataFrame) -> list[str]:
    return dropped["drop_reason"].to_list() if dropped.height else []


# ---------------------------------------------------------------------------------------------
# one bad record or file never loses the other rows


def test_deeply_nested_json_is_one_dropped_row(tmp_path: Path) -> None:
    deep = b'{"instruction": "x", "output": "y", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    path = _write(tmp_path / "a.jsonl", _good(3), [deep, json.dumps(_good(1, 3)[0]).encode() + b"\n"])
    for options in (ReadOptions(), PER_RECORD):
        kept, dropped = read_all(str(path), options)
        assert kept.height == 4 and _reasons(dropped) == ["malformed"]
        assert dropped["drop_detail"][0] == f"{path}:4: invalid JSON: nested too deeply"


def test_truncated_gzip_keeps_its_rows_and_the_files_beside_it(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "good.jsonl", _good(5))
    whole = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in _good(3000, 100)))
    (folder / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "fake.jsonl.gz").write_bytes(b'{"instruction": "not gzip", "output": "at all"}\n')
    (folder / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    kept, dropped = read_all(str(folder))
    sources = kept["source"].value_counts()
    assert dict(zip(sources["source"], sources["count"], strict=True))["good.jsonl"] == 5
    cut_rows = kept.filter(pl.col("source") == "cut.jsonl.gz").height
    assert 0 < cut_rows < 3000  # the readable part of the truncated file is kept
    unreadable = dropped.filter(pl.col("drop_reason") == "unreadable_file")
    details = dict(zip(unreadable["source"], unreadable["drop_detail"], strict=True))
    assert set(details) == {"cut.jsonl.gz", "fake.jsonl.gz", "garbage.parquet"}
    assert "unreadable from byte" in details["cut.jsonl.gz"] and "EOFError" in details["cut.jsonl.gz"]
    assert details["fake.jsonl.gz"].startswith(f"{folder / 'fake.jsonl.gz'}: unreadable from byte 0: BadGzipFile")
    # the line cut in half by the truncation is accounted for as one malformed row
    assert kept.height + dropped.height - 3 <= 5 + 3000 and dropped.filter(pl.col("drop_reason") == "malformed").height <= 1


def test_lone_surrogates_are_dropped_naming_the_field(tmp_path: Path) -> None:
    good = _good(10)
    escaped = [b'{"instruction": "bad \\ud800 text", "output": "x"}\n', b'{"instruction": "ok", "output": "lone low \\udc80"}\n']
    raw = "{\"instruction\": \"raw \udc80\", \"output\": \"x\"}\n".encode("utf-8", "surrogatepass")
    pair = b'{"instruction": "emoji \\ud83d\\ude80 fine", "output": "yes"}\n'
    path = _write(tmp_path / "s.jsonl", good, [*escaped, raw, pair])
    for options in (ReadOptions(), PER_RECORD):
        kept, dropped = read_all(str(path), options)
        assert kept.height == 11 and _reasons(dropped) == ["malformed"] * 3
        assert not any("\x00" in m["content"] for ms in kept["messages"].to_list() for m in ms)
        assert "🚀" in kept["messages"].to_list()[-1][0]["content"]
        details = dropped["drop_detail"].to_list()
        assert "field 'instruction': lone UTF-16 surrogate" in details[0]
        assert "field 'output': lone UTF-16 surrogate" in details[1]
        assert "not UTF-8" in details[2]


def test_nan_is_not_json_and_is_dropped(tmp_path: Path) -> None:
    path = _write(tmp_path / "n.jsonl", _good(2), [b'{"instruction": "a", "output": "b", "score": NaN}\n'])
    for options in (ReadOptions(), PER_RECORD):
        kept, dropped = read_all(str(path), options)
        assert kept.height == 2 and dropped["drop_detail"].to_list() == [f"{path}:3: invalid JSON: NaN is not JSON"]
        assert all(json.loads(m) for m in kept["meta"].to_list())


def test_odd_field_names_and_types_are_read_the_same_on_both_paths(tmp_path: Path) -> None:
    records = [
        {"instruction": "q1", "output": "a1", "source": ["x", "y"]},
        {"instruction": "q2", "output": "a2", "format": "mine", "_line": 7, "_user": "u"},
        {"instruction": "q3", "output": "a3", "id": {"k": 1}},
        {"instruction": "q4", "output": "a4", "id": {"j": 1}},
    ]
    path = _write(tmp_path / "o.jsonl", records * 3)
    fast, fast_dropped = read_all(str(path))
    slow, _ = read_all(str(path), PER_RECORD)
    assert fast_dropped.height == 0 and fast.height == 12
    assert fast.select("id", "source", "meta").to_dicts() == slow.select("id", "source", "meta").to_dicts()
    assert fast["source"][0] == '["x","y"]'
    assert json.loads(fast["meta"][1]) == {"format": "alpaca", "_line": 7, "_user": "u", "record.format": "mine"}
    assert fast["id"].to_list()[2:4] == ['{"k":1}', '{"j":1}']


def test_duplicate_keys_keep_the_first_value_on_both_paths(tmp_path: Path) -> None:
    lines = [b'{"instruction": "first", "output": "b", "instruction": "second"}\n'] * 2 + [
        b'{"id": "x1", "instruction": "q", "output": "a", "id": "x2"}\n'
    ]
    path = _write(tmp_path / "d.jsonl", [], lines)
    fast, _ = read_all(str(path))
    slow, _ = read_all(str(path), PER_RECORD)
    assert fast.select("id", "messages").to_dicts() == slow.select("id", "messages").to_dicts()
    assert fast["messages"][0][0]["content"] == "first" and fast["id"][2] == "x1"


def test_openai_content_parts_are_read_as_text(tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
    records = [
        {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, {"role": "assistant", "content": "a"}]},
    ]
    kept, dropped = read_all(str(_write(tmp_path / "m.jsonl", records)))
    assert kept["messages"][0].to_list() == [{"role": "user", "content": "Hello\nworld"}, {"role": "assistant", "content": "Hi"}]
    assert _reasons(dropped) == ["bad_record"] and "image_url" in dropped["drop_detail"][0]


def test_parquet_with_our_columns_of_the_wrong_type_is_dropped_per_row(tmp_path: Path) -> None:
    path = tmp_path / "ours.parquet"
    pl.DataFrame({"id": ["a", "b"], "messages": ["not a list", "x"], "lineage": [1, 2]}).write_parquet(path)
    kept, dropped = read_all(str(path))
    assert kept.height == 0 and _reasons(dropped) == ["bad_record", "bad_record"]
    assert dropped["drop_detail"][0].startswith(f"{path}:row 1: field 'lineage'")


def test_a_json_array_file_is_a_list_of_records(tmp_path: Path) -> None:
    records = _good(20)
    compact, pretty = tmp_path / "a.json", tmp_path / "p.json"
    compact.write_text(json.dumps(records))
    pretty.write_text("\ufeff" + json.dumps(records, indent=2))
    for path in (compact, pretty):
        kept, dropped = read_all(str(path))
        assert kept.height == 20 and dropped.height == 0
        assert sniff_format(str(path)) == "alpaca"
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(records, indent=2)[:-200])
    kept, dropped = read_all(str(cut))
    assert 0 < kept.height < 20 and _reasons(dropped) == ["unreadable_file"] and "line " in dropped["drop_detail"][0]
    kept, dropped = read_all(str(pretty), ReadOptions(limit=5))
    assert kept.height == 5


def test_a_folder_reads_upper_case_names_and_reports_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "A.JSONL", _good(3))
    (folder / "notes.csv").write_text("a,b\n1,2\n")
    (folder / "_SUCCESS").write_text("")
    (folder / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(_good(1)[0]).encode() + b"\n")
    kept, dropped = read_all(str(folder))
    assert kept.height == 4  # line 1 after a BOM is read
    assert _reasons(dropped) == ["unsupported_file"] and dropped["drop_detail"][0].startswith(f"{folder / 'notes.csv'}: not a")


# ---------------------------------------------------------------------------------------------
# a whole run: bad input never fails it


def test_a_run_over_bad_files_keeps_every_good_row(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder / "good.jsonl", [json.loads(line) for line in (DATA / "alpaca_llamafactory_200.jsonl").read_text().splitlines()[:40]])
    _write(folder / "odd.jsonl", [{"instruction": "Name a colour of the sky.", "output": "Blue is the usual colour.", "source": ["a"], "format": 1}],
           [b'{"instruction": "x \\ud800", "output": "y"}\n', b"[" * 5000 + b"]" * 5000 + b"\n"])
    (folder / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"instruction": "a", "output": "b"}\n' * 50)[:40])
    (folder / "x.parquet").write_bytes(b"garbage")
    report = run_config(load_config(FILTER_CONFIG, [f"input.path={folder}", f"output.path={tmp_path / 'out'}"]))
    assert report["ledger_ok"]
    read = report["stages"][0]
    assert read["dropped"]["unreadable_file"] == 2 and read["dropped"]["malformed"] in (2, 3)  # 3: a line cut by the truncation
    assert read["kept"] == 41
    assert (tmp_path / "out" / SUCCESS).exists() and not (tmp_path / "out" / RUNNING).exists()


# ---------------------------------------------------------------------------------------------
# run folders: unfinished ones are refused, killed runs resume, one writer at a time


def _config(tmp_path: Path, *sets: str) -> object:
    return load_config(FILTER_CONFIG, [f"input.path={DATA / 'selfinstruct_60.jsonl'}", f"output.path={tmp_path / 'out'}", *sets])


def _killed_run(config: object) -> Path:
    """A run folder as kill -9 leaves it: marked running, partial parts, a cache, no report."""
    out = Path(config.output.path)
    with pytest.raises(KeyboardInterrupt), writing(str(out), dump_config(config), config.hash(), False) as work:
        parts = Path(work) / "data" / "_parts-train"
        parts.mkdir(parents=True)
        pl.DataFrame({"id": ["p"], "messages": [[{"role": "user", "content": "x"}]]}).write_parquet(parts / "p.parquet")
        (Path(work) / CACHE_DIR).mkdir()
        (Path(work) / CACHE_DIR / "llm.sqlite").write_text("cached calls")
        raise KeyboardInterrupt
    return out


def test_every_reader_refuses_an_unfinished_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from datacraft.cli.main import app
    from datacraft.stages.handoff.trainer import read_rows

    out = _killed_run(_config(tmp_path))
    with pytest.raises(UnfinishedRunError, match="Rerun the same command to resume"):
        RunFolder(str(out))
    with pytest.raises(FileNotFoundError, match="unfinished run"):
        read_rows(str(out))  # `datacraft train sft OUT` reads through this
    for args in (["inspect", str(out)], ["report", str(out)], ["why", str(out), "p"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, args
        assert "unfinished run" in result.output and "Traceback" not in result.output


def test_a_killed_run_resumes_with_the_same_command(tmp_path: Path) -> None:
    out = _killed_run(_config(tmp_path))
    with pytest.raises(ConfigMismatch, match=r"stages\[0\]\.min_words|output.format: 'parquet' → 'jsonl'"):
        run_config(_config(tmp_path, "output.format=jsonl"))
    assert (out / RUNNING).exists()
    report = run_config(_config(tmp_path))  # no --overwrite
    assert report["ledger_ok"] and (out / SUCCESS).exists() and not (out / RUNNING).exists()
    assert (out / CACHE_DIR / "llm.sqlite").read_text() == "cached calls"
    assert not (out / "data" / "_parts-train").exists()
    RunFolder(str(out))
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_config(_config(tmp_path))  # a finished folder is still not replaced without --overwrite


def test_a_second_run_on_the_same_folder_fails_at_once(tmp_path: Path) -> None:
    config = _config(tmp_path)
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with writing(config.output.path, dump_config(config), config.hash(), False):
            inside.set()
            release.wait(30)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(30)
    t0 = time.perf_counter()
    with pytest.raises(RunFolderBusy, match="another run is writing"):
        run_config(config)
    assert time.perf_counter() - t0 < 5
    release.set()
    thread.join()


def test_overwrite_builds_beside_and_replaces_atomically(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run_config(config)
    out = Path(config.output.path)
    (out / CACHE_DIR).mkdir(exist_ok=True)
    (out / CACHE_DIR / "llm.sqlite").write_text("kept")
    old_report = (out / "report.json").read_text()
    with writing(str(out), dump_config(config), config.hash(), True) as work:
        assert Path(work) != out and Path(work).parent == out.parent
        assert (out / "report.json").read_text() == old_report and (out / SUCCESS).exists()  # readers still see the old run
        (Path(work) / "report.json").write_text("{}")
    assert (out / "report.json").read_text() == "{}" and (out / SUCCESS).exists()
    assert (out / CACHE_DIR / "llm.sqlite").read_text() == "kept"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".out.")] == [".out.lock"]


# ---------------------------------------------------------------------------------------------
# config attacks: checked before any work


@pytest.mark.parametrize("override", ["output.split=../../../X", "output.split=a/b", "exact_dedup.id=../up"])
def test_output_names_from_config_values_cannot_leave_the_folder(tmp_path: Path, override: str) -> None:
    with pytest.raises(ConfigError, match="not a valid name"):
        run_config(_config(tmp_path, override))
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "X").exists()


def test_a_yaml_alias_bomb_is_refused_before_expansion(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nname: x\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb"):
        load_config(bomb)
    assert time.perf_counter() - t0 < 5
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested deeper"):
        load_config(deep)


def test_a_deeply_nested_filter_expression_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nested deeper than"):
        _config(tmp_path, "filter.where=" + json.dumps(["not " * 3000 + "length.response"]))


def test_llm_settings_are_checked_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="llm.base_url"):
        _config(tmp_path, "llm.engine=openai", "llm.base_url=localhost:8000")
    monkeypatch.setenv("DC_TEST_KEY", "sk-abc\u2013def")
    with pytest.raises(ConfigError, match=r"\$DC_TEST_KEY holds non-ASCII") as err:
        run_config(_config(tmp_path, "llm.engine=openai", "llm.api_key_env=DC_TEST_KEY"))
    assert "abc" not in str(err.value) and not (tmp_path / "out").exists()


def test_non_numeric_usage_keeps_a_good_answer() -> None:
    from datacraft.llm.engines import parse_chat_completion as parse_chat

    result = parse_chat({"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": "n/a", "completion_tokens": None}})
    assert result.text == "fine" and result.prompt_tokens == 0 and result.completion_tokens == 0
    assert parse_chat({"choices": [{"message": {"content": "ok"}}], "usage": "weird"}).text == "ok"


def test_the_cli_ends_an_error_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datacraft.cli.main import main

    out = _killed_run(_config(tmp_path))
    with pytest.raises(SystemExit) as code:
        main(["inspect", str(out)])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unfinished run" in err and len(err.splitlines()) == 1
    with pytest.raises(UnfinishedRunError):
        main(["inspect", str(out), "--debug"])

"""Property and fuzz tests (hypothesis) over the readers and the config loader.

- one JSONL semantics: the vectorized fast path and the per-record path give the same rows, ids,
  metadata and drops for generated lines (valid records of odd shapes mixed with malformed ones);
- no input crashes a reader, and every non-blank input line is accounted for (kept or dropped);
- no config text makes the loader raise anything but `ConfigError`.

The default run is bounded to seconds; `-m slow` tries many more inputs.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datacraft.io.readers import ReadOptions, read_all
from datacraft.pipeline.config import ConfigError, load_config

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
TRIED = {"lines": 0, "files": 0, "configs": 0}

KEYS = ["instruction", "output", "input", "id", "idx", "source", "task", "system", "format", "_line", "_user", "category", "n", "prompt", "completion"]
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "\x1f", "\u2003", "ok", "a\\ud800", "\ud800", "x\udc80y", "🚀", "\x00", "null", "1"]),
)
scalars = st.one_of(texts, st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.floats(allow_nan=False, allow_infinity=False))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from(["k", "j"]), scalars, max_size=2))


@st.composite
def record_line(draw: Any) -> bytes:
    """A JSON object line: usually a plausible Alpaca / completion record, with odd keys, odd
    values and duplicate keys mixed in; written with or without ASCII escapes."""
    pairs: list[tuple[str, Any]] = []
    if draw(st.integers(0, 3)):
        a, b = ("instruction", "output") if draw(st.booleans()) else ("prompt", "completion")
        pairs += [(a, draw(st.text(min_size=1, max_size=10))), (b, draw(st.text(min_size=1, max_size=10)))]
    pairs += draw(st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=4))
    if draw(st.booleans()):
        pairs = sorted(pairs, key=lambda kv: draw(st.integers(0, 9)))
    ascii_ = draw(st.booleans())
    body = ",".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=ascii_)}" for k, v in pairs)
    return ("{" + body + "}").encode("utf-8", "surrogatepass")


malformed = st.one_of(
    st.sampled_from([b"{bad", b"[1, 2]", b'"text"', b"NaN", b'{"instruction": "a", "output": NaN}', b"[" * 3000, b"{}", b"   "]),
    st.binary(max_size=24).map(lambda b: b.replace(b"\n", b"")),
)
lines_of = st.lists(st.one_of(record_line(), record_line(), record_line(), malformed), min_size=1, max_size=30)


def _rows(path: str, options: ReadOptions) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    kept, dropped = read_all(path, options)
    rows = [
        {"id": r["id"], "messages": r["messages"], "task": r["task"], "source": r["source"], "meta": json.loads(r["meta"]) if r["meta"] else None}
        for r in kept.select("id", "messages", "task", "source", "meta").to_dicts()
    ] if kept.height else []
    drops = list(zip(dropped["drop_reason"], dropped["drop_detail"], strict=True)) if dropped.height else []
    return rows, drops


def _non_blank(lines: list[bytes]) -> int:
    return sum(1 for line in lines if line.strip())


def check_both_paths_agree(lines: list[bytes], batch_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.jsonl")
        Path(path).write_bytes(b"\n".join(lines) + b"\n")
        fast = _rows(path, ReadOptions(batch_size=batch_size))
        slow = _rows(path, ReadOptions(batch_size=batch_size, limit=10**9))  # a limit turns the fast path off
    TRIED["lines"] += len(lines)
    assert fast == slow
    assert len(fast[0]) + len(fast[1]) == _non_blank([lines[0].removeprefix(b"\xef\xbb\xbf"), *lines[1:]])  # every line accounted for (a BOM is not one)


def _empty_array(body: bytes) -> bool:
    try:
        return json.loads(body) == []
    except ValueError:
        return False


def check_any_file_reads(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f" + suffix)
        Path(path).write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
        kept, dropped = read_all(path, ReadOptions(batch_size=4))
    TRIED["files"] += 1
    body = data.removeprefix(b"\xef\xbb\xbf")
    total = kept.height + dropped.height
    if suffix in (".jsonl", ".jsonl.gz") or (suffix == ".json" and not body.lstrip().startswith(b"[")):
        assert total == _non_blank(body.split(b"\n"))  # every line kept or dropped
    elif suffix == ".json":
        assert total >= 1 or _empty_array(body)  # items, or one `unreadable_file`
    else:
        assert dropped["drop_reason"].to_list() == ["unreadable_file"]  # never a valid Parquet file


def check_config_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "c.yaml")
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        TRIED["configs"] += 1
        try:
            config = load_config(path, [f"output.path={tmp}/out"], check_inputs=False)
        except ConfigError as err:
            assert str(err) and "Traceback" not in str(err)
            return
        assert config.output.path == f"{tmp}/out"


yaml_texts = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(["name: x", "stages:", "  - name: filter", "    where: [a >= 1]", "  - name: heuristics", "    id: ../x",
                              "a: &a [1, 2]", "b: [*a, *a]", "output: {split: ../y}", "input: {path: /nope}", "llm: {base_url: 'ftp:x'}",
                              "stages: 3", "- x", "? [a]", "x: !!python/object:os.system ls", "&c [*c]", "input: {batch_size: -1}"]),
             max_size=8).map("\n".join),
)


@FAST
@given(lines_of, st.sampled_from([3, 8, 64]))
def test_fast_and_per_record_paths_agree(lines: list[bytes], batch_size: int) -> None:
    check_both_paths_agree(lines, batch_size)


@FAST
@given(st.one_of(st.binary(max_size=300), lines_of.map(lambda ls: b"\n".join(ls))), st.sampled_from([".jsonl", ".json", ".jsonl.gz", ".parquet"]))
def test_no_file_crashes_a_reader(data: bytes, suffix: str) -> None:
    check_any_file_reads(data, suffix)


@FAST
@given(yaml_texts)
def test_the_config_loader_raises_only_config_errors(text: str) -> None:
    check_config_text(text)


@pytest.mark.slow
@SLOW
@given(lines_of, st.sampled_from([2, 5, 64]))
def test_fast_and_per_record_paths_agree_long(lines: list[bytes], batch_size: int) -> None:
    check_both_paths_agree(lines, batch_size)


@pytest.mark.slow
@SLOW
@given(st.one_of(st.binary(max_size=2000), lines_of.map(lambda ls: b"\n".join(ls))), st.sampled_from([".jsonl", ".json", ".jsonl.gz", ".parquet"]))
def test_no_file_crashes_a_reader_long(data: bytes, suffix: str) -> None:
    check_any_file_reads(data, suffix)


@pytest.mark.slow
@SLOW
@given(yaml_texts)
def test_the_config_loader_raises_only_config_errors_long(text: str) -> None:
    check_config_text(text)


def teardown_module() -> None:
    print(f"\nfuzz: {TRIED['lines']} JSONL lines, {TRIED['files']} files, {TRIED['configs']} configs tried; 0 crashes")

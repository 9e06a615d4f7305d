"""Config loading: strict keys with file:line errors, --set overrides, the hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from datacraft.pipeline.config import ConfigError, load_config

from .conftest import ROOT

BASE = """\
input:
  path: tests/data/alpaca_llamafactory_200.jsonl
stages:
  - name: heuristics
  - name: filter
    where: "length.response >= 3"
output:
  path: out/x
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_validate() -> None:
    from datacraft.stages.handoff.trainer import load_train_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("train_"):  # trainer configs (datacraft train sft|dpo)
            assert load_train_config(path, path.stem.removeprefix("train_")).model
            continue
        if path.name.startswith("lift_"):  # lift experiments (datacraft lift): each arm's recipe is a pipeline
            from datacraft.train.lift import load_lift_config

            assert load_lift_config(path).arms
            continue
        config = load_config(path)
        assert config.stages, path
        assert len(config.build_stages()) == len(config.stages)


def test_unknown_stage_names_file_line_and_known_stages(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace("name: heuristics", "name: heuristix"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:4" in str(err.value) and "heuristix" in str(err.value) and "exact_dedup" in str(err.value)


def test_unknown_key_and_wrong_type_name_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace('where: "length.response >= 3"', 'wher: "x"'))
    with pytest.raises(ConfigError, match=r"c.yaml:6: stages\[1\]\.wher: unknown key"):
        load_config(path)
    path = _write(tmp_path, BASE + "  shard_rows: many\n")
    with pytest.raises(ConfigError, match=r"c.yaml:9: output\.shard_rows"):
        load_config(path)
    path = _write(tmp_path, BASE + "colour: blue\n")
    with pytest.raises(ConfigError, match=r"colour: unknown key"):
        load_config(path)
    path = _write(tmp_path, BASE.replace('"length.response >= 3"', '"length.response >>= 3"'))
    with pytest.raises(ConfigError, match="cannot parse filter"):
        load_config(path)


def test_set_overrides_stage_params_and_sections(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    config = load_config(path, ["filter.where=length.response >= 10", "output.format=jsonl", "input.path=C:/odd:path.jsonl"])
    assert config.stages[1]["where"] == "length.response >= 10"
    assert config.output.format == "jsonl"
    assert config.input.path == "C:/odd:path.jsonl"
    with pytest.raises(ConfigError, match="shard_rows"):
        load_config(path, ["output.shard_rows=-1"])


def test_hash_changes_with_the_config(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    a, b = load_config(path), load_config(path)
    c = load_config(path, ["filter.where=length.response >= 4"])
    assert a.hash() == b.hash() != c.hash()


def test_every_problem_is_listed_in_one_error(tmp_path: Path) -> None:
    """Unknown keys, a wrong type, an unknown stage and a bad stage parameter: all in one error,
    each with its file:line and key (not one per run)."""
    text = """\
input:
  path: tests/data/alpaca_llamafactory_200.jsonl
  batch_size: lots
stages:
  - name: heuristix
  - name: filter
    wher: "length.response >= 3"
  - name: exact_dedup
    text: 7
output:
  path: out/x
  colour: blue
"""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "6 problems" in msg  # the five above and filter's missing `where`
    for line, key in ((3, "input.batch_size"), (12, "output.colour: unknown key"), (5, "stages[0].name"),
                      (6, "stages[1].where: Field required"), (7, "stages[1].wher: unknown key"), (9, "stages[2].text")):
        assert f"c.yaml:{line}: {key}" in msg, (line, key, msg)


def test_every_missing_score_is_listed(tmp_path: Path) -> None:
    text = BASE.replace('where: "length.response >= 3"', 'where: "qualty >= 3"').replace(
        "output:", '  - {name: filter, id: f2, where: "complexty >= 1"}\noutput:')
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    msg = str(err.value)
    assert "2 problems" in msg and "c.yaml:6: stages[1].where" in msg and "c.yaml:7: stages[2].where" in msg
    assert "'qualty'" in msg and "'complexty'" in msg

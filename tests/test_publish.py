"""`datacraft publish`: the built folder loads with `datasets`, the card validates, bad input fails early.

The upload test uses a mocked `HfApi`: the Hugging Face Hub is unreachable from the machines that
build and test this project, so the test asserts the calls (create_repo, upload_folder) instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import datasets
import polars as pl
import pytest
import yaml
from huggingface_hub import DatasetCard

from datacraft.pipeline.config import load_config
from datacraft.pipeline.run import run_config
from datacraft.train.publish import (
    CardOptions,
    PublishError,
    build_publish_folder,
    check_repo_id,
    parse_card_yaml,
    publish,
    size_category,
    validate_card,
)
from tests._train_fixtures import DATA, make_run_folder

FAKE_TOKEN = "hf_fakeTOKEN0123456789abcdefghijklmnop"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("runs") / "out"
    return out, make_run_folder(out)


def test_built_folder_loads_with_datasets_and_card_validates(run_folder: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    run, counts = run_folder
    plan = build_publish_folder(run, "alice/curated", tmp_path / "hub", test_size=0.1, seed=3)
    folder = plan.folder
    assert validate_card(folder) == []
    meta = parse_card_yaml(folder)
    assert meta["license"] == "unknown" and meta["task_categories"] == ["text-generation"]  # the fixture's input has none
    assert meta["size_categories"] == ["n<1K"]
    assert [c["config_name"] for c in meta["configs"]] == ["sft", "dpo"]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "sft/train-*"}, {"split": "test", "path": "sft/test-*"}]
    card = DatasetCard.load(folder / "README.md")
    assert card.data.to_dict()["configs"] == meta["configs"]

    sft = datasets.load_dataset(str(folder), "sft")
    dpo = datasets.load_dataset(str(folder), "dpo")
    assert set(sft) == {"train", "test"} and set(dpo) == {"train", "test"}
    assert sft["train"].num_rows + sft["test"].num_rows == counts["sft"]
    assert dpo["train"].num_rows + dpo["test"].num_rows == counts["dpo"]  # the 2 bad pairs are dropped
    assert "messages" in sft["train"].column_names and {"prompt", "chosen", "rejected"} <= set(dpo["train"].column_names)
    default = datasets.load_dataset(str(folder), split="train")  # the default config is sft
    assert default.num_rows == sft["train"].num_rows

    body = card.text
    assert "| filter | " in body and "below_threshold: " in body  # funnel from report.json
    assert "chosen_equals_rejected: 1" in body and "empty_chosen: 1" in body  # export drops
    assert "0123456789abcdef" in body and "where: \"length.response >= 40\"" in body  # config + hash
    assert '"reflection:instruction": 1' in body and '"derived_rows": 1' in body  # lineage
    for score in ("length", "quality"):
        assert f"images/score_{score}.png" in body and (folder / "images" / f"score_{score}.png").stat().st_size > 1000
    assert (folder / "datacraft_config.yaml").exists() and (folder / "datacraft_report.json").exists()


def test_decontamination_at_publish(run_folder: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    run, counts = run_folder
    train_file = Path(__file__).parent / "data" / "alpaca_llamafactory_200.jsonl"
    plan = build_publish_folder(run, "alice/curated", tmp_path / "hub", decontaminate={"eval_path": str(train_file)})
    # every alpaca row is "contaminated" against itself; only the synthesized row and preference rows stay
    assert plan.export.decontamination["removed"] >= counts["sft"] - 1
    assert "rows overlapping the eval set" in (plan.folder / "README.md").read_text().lower()


def test_card_validation_catches_bad_values(run_folder: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    run, _ = run_folder
    folder = build_publish_folder(run, "alice/curated", tmp_path / "hub").folder
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("n<1K", "n>1M").replace("sft/train-*", "nowhere/train-*"))
    problems = validate_card(folder)
    assert any("size_categories 'n>1M'" in p for p in problems)
    assert any("nowhere/train-*" in p for p in problems)


def test_size_categories_are_official() -> None:
    assert [size_category(n) for n in (0, 999, 1000, 12_345, 2_000_000, 10**13)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M", "n>1T"
    ]


def test_upload_with_mocked_hfapi(run_folder: tuple[Path, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Mocked: the Hub is unreachable here, so HfApi is replaced and its calls are checked."""
    run, _ = run_folder
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with mock.patch("datacraft.train.publish.HfApi") as api_cls:
        api_cls.return_value.upload_folder.return_value = mock.Mock(commit_url="https://huggingface.co/datasets/alice/curated/commit/abc")
        summary = publish(run, "alice/curated", folder=tmp_path / "hub", private=True)
    api_cls.assert_called_once_with(token=FAKE_TOKEN)
    api = api_cls.return_value
    api.create_repo.assert_called_once_with(repo_id="alice/curated", repo_type="dataset", private=True, exist_ok=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "alice/curated" and kwargs["repo_type"] == "dataset"
    assert Path(kwargs["folder_path"]) == tmp_path / "hub" and (Path(kwargs["folder_path"]) / "README.md").exists()
    assert summary["commit_url"].endswith("/commit/abc")
    # the token is never printed or written
    assert FAKE_TOKEN not in repr(summary) and FAKE_TOKEN not in capsys.readouterr().out
    for path in (tmp_path / "hub").rglob("*"):
        if path.is_file() and path.suffix in {".md", ".json", ".yaml"}:
            assert FAKE_TOKEN not in path.read_text()


def test_upload_error_does_not_leak_token(run_folder: tuple[Path, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked HfApi (the Hub is unreachable): a failing upload whose message contains the token."""
    run, _ = run_folder
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with mock.patch("datacraft.train.publish.HfApi") as api_cls:
        api_cls.return_value.upload_folder.side_effect = RuntimeError(f"401 for token {FAKE_TOKEN}")
        with pytest.raises(PublishError) as err:
            publish(run, "alice/curated", folder=tmp_path / "hub")
    assert FAKE_TOKEN not in str(err.value) and "***" in str(err.value)


def test_bad_input_fails_before_any_work(run_folder: tuple[Path, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = run_folder
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    target = tmp_path / "hub"
    with mock.patch("datacraft.train.publish.HfApi") as api_cls, pytest.raises(PublishError, match="HF_TOKEN"):
        publish(run, "alice/curated", folder=target)
    assert not target.exists() and not api_cls.called  # nothing built, nothing called
    for bad in ("alice", "alice/", "/name", "a/b/c", "alice/na me", "alice/--x", "https://huggingface.co/alice/x"):
        with pytest.raises(PublishError, match="user/name"):
            check_repo_id(bad)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(PublishError, match="report.json"):
        publish(empty, "alice/curated", folder=target)
    assert not target.exists()
    with pytest.raises(PublishError, match="inside the run folder"):
        build_publish_folder(run, "alice/curated", run / "hub")


def test_cli_publish_dry_run(run_folder: tuple[Path, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from datacraft.cli.train import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """datacraft"""

    register(app)
    run, _ = run_folder
    monkeypatch.delenv("HF_TOKEN", raising=False)
    runner = CliRunner()
    res = runner.invoke(app, ["publish", str(run), "--repo", "alice/curated", "--dry-run", "--folder", str(tmp_path / "hub"),
                              "--license", "apache-2.0", "--test-size", "0.1"])
    assert res.exit_code == 0, res.output
    assert "dry run" in res.output and yaml.safe_load((tmp_path / "hub" / "README.md").read_text().split("---")[1])["license"] == "apache-2.0"
    res = runner.invoke(app, ["publish", str(run), "--repo", "alice/curated"])
    assert res.exit_code == 2 and "HF_TOKEN" in res.output
    assert os.environ.get("HF_TOKEN") is None


def test_publish_a_real_run_folder(tmp_path: Path) -> None:
    """A folder written by `pipelines.curate.run_config` (configs/filter.yaml on real rows)."""
    from datacraft.pipeline.config import load_config
    from datacraft.pipeline.run import run_config

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    config = load_config(root / "configs" / "filter.yaml",
                         [f"input.path={root / 'tests' / 'data' / 'alpaca_llamafactory_200.jsonl'}", f"output.path={out}"])
    report = run_config(config)
    kept = report["stages"][-1]["kept"]
    plan = build_publish_folder(out, "alice/filtered", tmp_path / "hub", test_size=0.1)
    assert validate_card(plan.folder) == []
    # a fresh cache: `datasets` keys a local folder's cache by its files' names, not their contents
    ds = datasets.load_dataset(str(plan.folder), "sft", cache_dir=str(tmp_path / "hf_cache"))
    assert ds["train"].num_rows + ds["test"].num_rows == kept
    body = (plan.folder / "README.md").read_text()
    assert f"`{config.hash()}`" in body and "| exact_dedup | " in body and "images/score_length.response.png" in body


def test_refuses_to_overwrite_a_foreign_folder(run_folder: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    run, _ = run_folder
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(PublishError, match="not a folder built by"):
        build_publish_folder(run, "alice/curated", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    build_publish_folder(run, "alice/curated", tmp_path / "hub")
    build_publish_folder(run, "alice/curated", tmp_path / "hub")  # a rebuild of our own folder is fine


def test_card_lists_every_column_and_says_how_to_set_an_unknown_license(run_folder: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    run, _ = run_folder
    plan = build_publish_folder(run, "alice/curated", tmp_path / "hub")
    text = (plan.folder / "README.md").read_text()
    for config in ("sft", "dpo"):
        written = pl.read_parquet(str(plan.folder / config / "*.parquet")).columns
        assert plan.export.columns[config] == written and {"id", "scores"} <= set(written)
        for column in written:
            assert f"- `{column}`:" in text, column
    assert parse_card_yaml(plan.folder)["license"] == "unknown"
    assert "License: **unknown**" in text and "input: {license: <Hub license id>}" in text and "--license" in text


def test_card_license_comes_from_the_input(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run_folder(run, with_preference=False)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("input: {path: tests/data/alpaca_llamafactory_200.jsonl}",
                                                  "input: {path: tests/data/alpaca_llamafactory_200.jsonl, license: apache-2.0}"))
    plan = build_publish_folder(run, "alice/curated", tmp_path / "hub")
    assert parse_card_yaml(plan.folder)["license"] == "apache-2.0"
    assert "from input.license in the run's config" in (plan.folder / "README.md").read_text()
    assert validate_card(plan.folder) == []
    # the user's --license wins
    plan = build_publish_folder(run, "alice/curated", tmp_path / "hub", options=CardOptions(license="mit"))
    assert parse_card_yaml(plan.folder)["license"] == "mit"


def test_card_license_from_a_license_field_of_the_rows(tmp_path: Path) -> None:
    """Rows that carry their own `license` field (a real DPO corpus, each record tagged)."""
    src = tmp_path / "in.jsonl"
    lines = (DATA / "llamafactory_dpo_60.jsonl").read_text().splitlines()[:20]
    src.write_text("".join(json.dumps({**json.loads(line), "license": "Apache-2.0"}) + "\n" for line in lines))
    out = tmp_path / "run"
    run_config(load_config(data={"name": "lic", "input": {"path": str(src)}, "stages": [{"name": "heuristics"}],
                                 "output": {"path": str(out)}}))
    plan = build_publish_folder(out, "alice/curated", tmp_path / "hub")
    assert parse_card_yaml(plan.folder)["license"] == "apache-2.0"
    assert "the `license` field of the input rows" in (plan.folder / "README.md").read_text()

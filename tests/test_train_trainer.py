"""`datacraft train sft|dpo`: real optimizer steps with the embedded SmolLM2-135M on real rows (CPU).

The fast test trains LoRA adapters for 4 steps on 2 rows (the same batch each step, so the loss
must fall); the slow ones train all weights (SFT) and DPO for a few steps.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from datacraft.core.rows import text_expr
from datacraft.stages.handoff.trainer import TrainError, cpu_threads_for_load, load_train_config, train
from tests._train_fixtures import make_run_folder, read_rows

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _threads() -> int:
    return cpu_threads_for_load()


def _check_trl_cli_config(path: Path, kind: str) -> None:
    """The written YAML parses with TRL's own CLI parser (what `trl sft|dpo --config` runs)."""
    if kind == "sft":
        from trl.scripts.sft import make_parser
    else:
        from trl.scripts.dpo import make_parser
    script, args, model, data = make_parser().parse_args_and_config(["--config", str(path)])
    written = yaml.safe_load(path.read_text())
    assert model.model_name_or_path == written["model_name_or_path"]
    assert args.max_steps == written["max_steps"] and args.output_dir == written["output_dir"]
    assert data.datasets[0].path == "parquet" and all(Path(f).exists() for f in data.datasets[0].data_files)


def test_sft_lora_loss_decreases_fast(tmp_path: Path) -> None:
    cfg = load_train_config(None, "sft", {
        "data": str(Path(__file__).parent / "data" / "alpaca_llamafactory_200.jsonl"), "output_dir": str(tmp_path / "ckpt"),
        "limit": 2, "torch_threads": _threads(), "lora": {"enabled": True, "r": 8, "alpha": 16},
        "trl": {"max_steps": 3, "per_device_train_batch_size": 2, "max_length": 40, "learning_rate": 2e-3,
                "lr_scheduler_type": "constant", "disable_tqdm": True},
    })
    result = train(cfg)
    assert result.steps == 3 and len(result.losses) == 3
    assert result.losses[-1] < result.losses[0] * 0.9, result.losses
    out = tmp_path / "ckpt"
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert '"max_steps": 3' in (out / "trl_config.json").read_text()
    _check_trl_cli_config(out / "trl_sft.yaml", "sft")
    written = yaml.safe_load((out / "trl_sft.yaml").read_text())
    assert written["use_peft"] is True and written["lora_r"] == 8


@pytest.mark.slow
def test_sft_full_weights_from_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    counts = make_run_folder(run)
    cfg = load_train_config(CONFIGS / "train_sft.yaml", "sft", {
        "data": str(run), "output_dir": str(tmp_path / "ckpt"), "limit": 4, "test_size": None, "torch_threads": _threads(),
        "trl": {"max_steps": 6, "per_device_train_batch_size": 2, "max_length": 64, "learning_rate": 1e-4,
                "lr_scheduler_type": "constant", "warmup_steps": 0, "disable_tqdm": True},
    })
    result = train(cfg)
    first, last = sum(result.losses[:2]) / 2, sum(result.losses[-2:]) / 2  # epoch 1 vs epoch 3 on the same 4 rows
    assert last < first * 0.8, result.losses
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    assert result.export["rows"]["sft"]["train"] == 4 and counts["sft"] > 4
    _check_trl_cli_config(tmp_path / "ckpt" / "trl_sft.yaml", "sft")


@pytest.mark.slow
def test_dpo_lora_steps_and_bad_pairs_dropped(tmp_path: Path) -> None:
    rows = read_rows("hh_rlhf_harmless_150.jsonl")
    rows = rows.with_columns(text_expr("conversation").str.len_chars().alias("_n")).sort("_n").head(4).drop("_n")
    r = rows.row(0, named=True)
    bad = pl.DataFrame([{**r, "id": "same", "rejected": r["chosen"]}], schema=rows.schema)
    cfg = load_train_config(CONFIGS / "train_dpo.yaml", "dpo", {
        "output_dir": str(tmp_path / "ckpt"), "torch_threads": _threads(), "lora": {"r": 8, "alpha": 16},
        "trl": {"max_steps": 4, "per_device_train_batch_size": 2, "max_length": 128, "learning_rate": 5e-4,
                "lr_scheduler_type": "constant", "disable_tqdm": True, "truncation_mode": "keep_start"},
    })
    result = train(cfg, pl.concat([rows, bad]))
    assert result.export["dropped"] == {"chosen_equals_rejected": 1}
    assert (tmp_path / "ckpt" / "data" / "dropped.jsonl").read_text().count("chosen_equals_rejected") == 1
    assert result.steps == 4 and result.losses[-1] < result.losses[0], result.losses
    _check_trl_cli_config(tmp_path / "ckpt" / "trl_dpo.yaml", "dpo")


def test_bad_train_config_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="kind"):
        load_train_config(CONFIGS / "train_dpo.yaml", "sft")
    with pytest.raises(TrainError, match="unknown_key"):
        load_train_config(None, "sft", {"unknown_key": 1})
    only_bad = read_rows("llamafactory_dpo_60.jsonl").head(1)
    only_bad = only_bad.with_columns(pl.col("chosen").alias("rejected"))
    cfg = load_train_config(None, "dpo", {"output_dir": str(tmp_path / "x")})
    with pytest.raises(TrainError, match="chosen_equals_rejected"):
        train(cfg, only_bad)


def test_token_counts_read_trls_dpo_columns() -> None:
    """DPO datasets tokenized by TRL hold `prompt_ids` / `chosen_ids` / `rejected_ids`: all are counted."""
    from types import SimpleNamespace

    import datasets

    from datacraft.stages.handoff.trainer import _token_counts

    ds = datasets.Dataset.from_dict({"prompt_ids": [[1, 2, 3], [4]], "chosen_ids": [[5, 6], [7]], "rejected_ids": [[8], [9, 10]]})
    args = SimpleNamespace(per_device_train_batch_size=1, gradient_accumulation_steps=1, world_size=1, num_train_epochs=1, max_steps=1)
    assert _token_counts(ds, 1, args) == (10, 5)
    sft = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3, 4, 5, 6]]})
    assert _token_counts(sft, 2, args) == (6, 6)

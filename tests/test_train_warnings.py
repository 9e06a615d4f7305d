"""The DPO / SFT configs and trainer defaults raise no TRL / transformers deprecation warning
(`gradient_checkpointing` → `activation_checkpointing`, DPO's deprecated `truncation_mode: keep_end`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from datacraft.core.stage import RunContext
from datacraft.stages.handoff.trainer import load_train_config, train, trl_args
from datacraft.stages.registry import build_stage
from tests._train_fixtures import read_rows

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _deprecations(caught: list[warnings.WarningMessage]) -> list[str]:
    """Deprecation / future warnings raised from TRL, transformers or peft code."""
    return [f"{w.category.__name__}: {w.message}" for w in caught
            if issubclass(w.category, DeprecationWarning | FutureWarning) and any(p in w.filename for p in ("/trl/", "/transformers/", "/peft/"))]


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_configs_and_defaults_build_trl_args_without_deprecations(kind: str, tmp_path: Path) -> None:
    stage = build_stage("train", {"kind": kind, "max_steps": 1}, context=RunContext(output_dir=str(tmp_path)))
    configs = [load_train_config(CONFIGS / f"train_{kind}.yaml", kind), load_train_config(None, kind), stage.train_config(),
               load_train_config(None, kind, {"trl": {"gradient_checkpointing": True}})]  # the old name, given by a user
    for config in configs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = trl_args(config)
        assert _deprecations(caught) == [], config
    assert args.activation_checkpointing is True  # the user's value, under its current name


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_a_real_step_raises_no_deprecation(kind: str, tmp_path: Path) -> None:
    import transformers  # noqa: F401 - imported first: import-time warnings of other packages are not ours
    import trl  # noqa: F401

    rows = read_rows("llamafactory_dpo_60.jsonl" if kind == "dpo" else "alpaca_llamafactory_200.jsonl").head(2)
    config = load_train_config(CONFIGS / f"train_{kind}.yaml", kind, {
        "output_dir": str(tmp_path / "ckpt"), "test_size": None, "trl": {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 96}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config, rows)
    assert result.steps == 1
    assert _deprecations(caught) == []

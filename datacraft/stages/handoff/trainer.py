"""A thin stage over TRL's SFTTrainer / DPOTrainer that starts from a finished run folder.

    config (YAML) → read rows → export to TRL format (Hub-layout Parquet, invalid pairs dropped)
                  → SFTTrainer | DPOTrainer (optional LoRA via peft) → trained model
                  + `trl_config.json` (the TRL config used)
                  + `trl_<kind>.yaml` (a config that `trl sft --config …` / `trl dpo --config …` accepts)
                  + `train_report.json` (losses, steps/s, rows, drops)

The model is a Hub name, a local path, or `embedded` (SmolLM2-135M-Instruct, converted once to a
local checkpoint by `datacraft.llm.models.resolve_model`). The trainer gets the model *path*, so
DPO's reference model is loaded from the same path (TRL reloads it from the original path).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datacraft.stages.handoff.export import (
    DecontaminateParams,
    ExportResult,
    export_frame,
    trl_columns,
    write_dropped_jsonl,
)

Kind = Literal["sft", "dpo"]


class TrainError(ValueError):
    """A training request that cannot run (bad config, no usable rows); raised before training."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LoraOptions(_Strict):
    """LoRA adapters through peft (TRL's `use_peft` / `lora_*` options)."""

    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class TrainConfig(_Strict):
    """The YAML of `datacraft train sft|dpo` (see configs/train_sft.yaml). `trl` holds any
    SFTConfig / DPOConfig field and is passed through unchanged."""

    kind: Kind = "sft"
    model: str = Field("embedded", description="Hub name, local path, or `embedded` (SmolLM2-135M-Instruct)")
    data: str | None = Field(None, description="a run folder (with report.json), an export folder, or a JSONL/Parquet file")
    output_dir: str = "ckpt/sft"
    sft_style: Literal["messages", "prompt_completion"] = "messages"
    test_size: float | None = Field(None, ge=0, description="fraction (< 1) or count of rows held out as `test`")
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="use only the first N usable rows (a dry look)")
    decontaminate: DecontaminateParams | None = None
    lora: LoraOptions = Field(default_factory=LoraOptions)
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    trl: dict[str, Any] = Field(default_factory=dict)


#: datacraft's defaults under the user's `trl:` section (a short, logged, no-checkpoint run)
_TRL_DEFAULTS: dict[str, Any] = {
    "logging_steps": 1,
    "report_to": "none",
    "save_strategy": "no",
    "num_train_epochs": 1,
}


def load_train_config(path: str | Path | None, kind: Kind, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a train YAML (or defaults), force `kind`, apply flat overrides (`trl.max_steps=5` style keys)."""
    raw: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise TrainError(f"{path}: a train config must be a YAML mapping")
        raw = loaded
    if raw.get("kind", kind) != kind:
        raise TrainError(f"{path}: config is for kind {raw['kind']!r}, but `datacraft train {kind}` was run")
    raw["kind"] = kind
    raw.setdefault("output_dir", f"ckpt/{kind}")
    for key, value in (overrides or {}).items():
        target = raw
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise TrainError(f"{path or 'train config'}: {err}") from None


# ---------------------------------------------------------------------------------------------
# data


def read_rows(path: str) -> pl.DataFrame:
    """Rows of a run folder (its `data/`), an export folder, or any readable file, in batch layout."""
    from datacraft.io.readers import read_all

    p = Path(path)
    if not p.exists():
        raise TrainError(f"{path}: no such file or folder")
    if p.is_dir() and (p / "report.json").exists() and (p / "data").is_dir():
        p = p / "data"
    kept, _dropped = read_all(str(p))
    return kept


def prepare_data(config: TrainConfig, rows: pl.DataFrame | None = None) -> ExportResult:
    """Export the rows to `<output_dir>/data/<kind>/<split>-*.parquet`; dropped rows to `data/dropped.jsonl`.
    Raises `TrainError` when no usable row is left."""
    result = export_rows(config, rows)
    n_train = result.rows.get(config.kind, {}).get("train", 0)
    if n_train == 0:
        raise TrainError(f"no usable {config.kind} rows after export (dropped: {result.drop_counts()})")
    return result


def export_rows(config: TrainConfig, rows: pl.DataFrame | None = None) -> ExportResult:
    """`prepare_data` without the check: the export, however many rows it kept."""
    if rows is None:
        if not config.data:
            raise TrainError("no training data: set `data:` in the config or pass --data")
        rows = read_rows(config.data)
    if config.limit is not None:
        rows = rows.head(config.limit)
    folder = Path(config.output_dir) / "data"
    result = export_frame(
        rows, folder, kinds=[config.kind], sft_style=config.sft_style, test_size=config.test_size or None, seed=config.seed,
        decontaminate=config.decontaminate,
    )
    if result.dropped.height:
        write_dropped_jsonl(result.dropped, folder / "dropped.jsonl")
    return result


def _data_files(result: ExportResult, kind: str) -> dict[str, list[str]]:
    return {split: [str((result.folder / rel).resolve()) for rel in rels] for split, rels in result.files[kind].items()}


def load_split(result: ExportResult, kind: str, split: str) -> Any:
    """A `datasets.Dataset` of one exported split holding only TRL's columns."""
    from datasets import load_dataset

    files = _data_files(result, kind)
    ds = load_dataset("parquet", data_files={split: files[split]}, split=split)
    return ds.select_columns(result.columns[kind])


# ---------------------------------------------------------------------------------------------
# TRL objects


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


#: TrainingArguments names transformers 5 deprecates (a FutureWarning each time) → their current names
_RENAMED = {"gradient_checkpointing": "activation_checkpointing", "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def _current_names(values: dict[str, Any]) -> dict[str, Any]:
    """The user's values under current argument names, and activation checkpointing set explicitly:
    TRL's configs default the deprecated `gradient_checkpointing` to True, which warns unless the new
    name is given. Off on CPU (memory is not the limit there; recompute is), TRL's default elsewhere."""
    out = dict(values)
    for old, new in _RENAMED.items():
        if old in out:
            out.setdefault(new, out.pop(old))
    out.setdefault("activation_checkpointing", not on_cpu())
    return out


@contextmanager
def _quiet_library_internals() -> Iterator[None]:
    """peft (PeftModel.__init__) and TRL (models/utils) read the model's `is_gradient_checkpointing`,
    which transformers 5 deprecates: a FutureWarning no argument of ours can avoid. Only that one
    is silenced; every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _trl_values(config: TrainConfig, dtype_key: str) -> dict[str, Any]:
    """datacraft's TRL defaults + the user's `trl:` section; on CPU fp32 without bf16 unless set.
    `dtype_key` is where the model dtype goes: `model_init_kwargs` (Python) or `dtype` (the CLI)."""
    values = _current_names({**_TRL_DEFAULTS, **config.trl, "output_dir": config.output_dir, "seed": config.seed})
    if on_cpu():
        values.setdefault("use_cpu", True)
        values.setdefault("bf16", False)
        values.setdefault(dtype_key, {"dtype": "float32"} if dtype_key == "model_init_kwargs" else "float32")
    return values


def trl_args(config: TrainConfig) -> Any:
    """SFTConfig / DPOConfig from datacraft defaults + the user's `trl:` section (CPU: no bf16)."""
    from trl import DPOConfig, SFTConfig

    values = _trl_values(config, "model_init_kwargs")
    cls = SFTConfig if config.kind == "sft" else DPOConfig
    try:
        return cls(**values)
    except TypeError as err:  # unknown field
        raise TrainError(f"trl: {err} (see the {cls.__name__} reference)") from None


def peft_config(config: TrainConfig) -> Any:
    if not config.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules, task_type="CAUSAL_LM",
    )


def trl_cli_config(config: TrainConfig, model_path: str, result: ExportResult) -> dict[str, Any]:
    """The YAML mapping `trl sft|dpo --config FILE` accepts: ScriptArguments + SFTConfig/DPOConfig +
    ModelConfig + DatasetMixtureConfig fields, pointing at the exported Parquet shards."""
    files = _data_files(result, config.kind)
    out: dict[str, Any] = {
        "model_name_or_path": model_path,
        "datasets": [{"path": "parquet", "data_files": files["train"], "split": "train", "columns": trl_columns(result.columns[config.kind])}],
        **_trl_values(config, "dtype"),
    }
    out.pop("model_init_kwargs", None)  # ModelConfig's fields (dtype, …) carry it on the CLI
    if config.lora.enabled:
        out.update(
            use_peft=True, lora_r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
            lora_target_modules=config.lora.target_modules,
        )
    return out


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class TrainResult:
    """What a training run produced: paths, per-step losses, speed, the export summary."""

    kind: str
    output_dir: Path
    model_path: str
    losses: list[float]
    steps: int
    seconds: float
    export: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    eval_loss: float | None = None
    #: tokens of the tokenized train split, and those the steps saw (steps × batch, capped at the epochs run)
    dataset_tokens: int = 0
    trained_tokens: int = 0
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "output_dir": str(self.output_dir), "model": self.model_path, "losses": self.losses,
            "steps": self.steps, "seconds": round(self.seconds, 2), "steps_per_second": round(self.steps_per_second, 4),
            "eval_loss": self.eval_loss, "export": self.export, "files": self.files,
            "tokens": {"dataset": self.dataset_tokens, "trained": self.trained_tokens,
                       "per_second": round(self.trained_tokens / self.seconds, 1) if self.seconds else 0.0},
            "lineage": self.lineage,
        }


def _loss_callback(losses: list[float]) -> Any:
    from transformers import TrainerCallback

    class _Losses(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    return _Losses()


def build_trainer(config: TrainConfig, result: ExportResult, model_path: str, callbacks: Sequence[Any] = ()) -> Any:
    """An SFTTrainer / DPOTrainer over the exported train (and test) split."""
    from trl import DPOTrainer, SFTTrainer

    args = trl_args(config)
    train_ds = load_split(result, config.kind, "train")
    eval_ds = load_split(result, config.kind, "test") if "test" in result.files[config.kind] else None
    cls = SFTTrainer if config.kind == "sft" else DPOTrainer
    return cls(
        model=model_path, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        peft_config=peft_config(config), callbacks=list(callbacks),
    )


def data_hash(result: ExportResult) -> str:
    """SHA-256 (16 hex) of the exported shard files' bytes, in path order: the data a model saw."""
    digest = hashlib.sha256()
    for split in sorted(result.files.get(result_kind(result), {})):
        for rel in result.files[result_kind(result)][split]:
            digest.update(rel.encode())
            digest.update((result.folder / rel).read_bytes())
    return digest.hexdigest()[:16]


def result_kind(result: ExportResult) -> str:
    return next(iter(result.files))


def _token_counts(dataset: Any, steps: int, args: Any) -> tuple[int, int]:
    """(tokens in the tokenized train split, tokens the steps consumed)."""
    # TRL's tokenized columns: SFT `input_ids`; DPO `prompt_ids` / `chosen_ids` / `rejected_ids` (older TRL: `*_input_ids`)
    cols = [c for c in ("input_ids", "prompt_ids", "chosen_ids", "rejected_ids", "prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
            if c in dataset.column_names]
    total = sum(len(ids) for c in cols for ids in dataset[c])
    n = len(dataset)
    seen_rows = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    epochs = max(1.0, float(args.num_train_epochs)) if args.max_steps <= 0 else float("inf")
    trained = int(total * min(seen_rows / n, epochs)) if n else 0
    return total, trained


def write_card(out: Path, result: TrainResult, config: TrainConfig) -> Path:
    """The checkpoint's README.md: what it was trained on (data hash, run config hash) and how."""
    lin = result.lineage
    lines = [
        "---", "library_name: transformers", "tags: [datacraft, trl, " + config.kind + "]", "---", "",
        f"# {config.kind.upper()} checkpoint trained by datacraft", "",
        f"- base model: `{config.model}` ({result.model_path})",
        f"- data hash: `{lin.get('data_hash')}` ({result.export.get('rows', {})} rows exported)",
        f"- run config hash: `{lin.get('config_hash')}`" + (f" (run folder `{lin['run']}`)" if lin.get("run") else ""),
        f"- steps: {result.steps} in {result.seconds:.1f} s; LoRA: {config.lora.enabled}",
        f"- loss: {result.losses[0] if result.losses else None} → {result.losses[-1] if result.losses else None}",
        "", f"Rerun with TRL: `trl {config.kind} --config {result.files.get('trl_cli_config')}`", "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def train(config: TrainConfig, rows: pl.DataFrame | None = None, prepared: ExportResult | None = None,
          lineage: Mapping[str, Any] | None = None) -> TrainResult:
    """Export (unless `prepared` is given), train, save. Writes the model, `trl_config.json`,
    `trl_<kind>.yaml`, `train_report.json` and the card (README.md) with `lineage` (the run config
    hash) and the data hash."""
    from datacraft.llm.models import resolve_model

    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = prepared or prepare_data(config, rows)
    model_path = resolve_model(config.model)
    losses: list[float] = []
    with _quiet_library_internals():
        trainer = build_trainer(config, result, model_path, [_loss_callback(losses)])
    if len(trainer.train_dataset) == 0:
        raise TrainError(
            f"TRL dropped every {config.kind} row while tokenizing (prompts longer than trl.max_length="
            f"{trainer.args.max_length}): raise max_length"
        )
    t0 = time.perf_counter()
    with _quiet_library_internals():
        trainer.train()
    seconds = time.perf_counter() - t0
    eval_loss = None
    if trainer.eval_dataset is not None:
        eval_loss = float(trainer.evaluate().get("eval_loss", float("nan")))
    trainer.save_model(str(out))
    files = {
        "model": str(out),
        "trl_config": str(out / "trl_config.json"),
        "trl_cli_config": str(out / f"trl_{config.kind}.yaml"),
        "report": str(out / "train_report.json"),
        "datacraft_config": str(out / "datacraft_train.yaml"),
    }
    Path(files["trl_config"]).write_text(trainer.args.to_json_string(), encoding="utf-8")
    Path(files["trl_cli_config"]).write_text(
        yaml.safe_dump(trl_cli_config(config, model_path, result), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    Path(files["datacraft_config"]).write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    steps = int(trainer.state.global_step)
    dataset_tokens, trained_tokens = _token_counts(trainer.train_dataset, steps, trainer.args)
    files["card"] = str(out / "README.md")
    train_result = TrainResult(
        kind=config.kind, output_dir=out, model_path=model_path, losses=losses, steps=steps,
        seconds=seconds, export=result.summary(), files=files, eval_loss=eval_loss,
        dataset_tokens=dataset_tokens, trained_tokens=trained_tokens,
        lineage={**(lineage or {}), "data_hash": data_hash(result)},
    )
    write_card(out, train_result, config)
    Path(files["report"]).write_text(json.dumps(train_result.to_dict(), indent=2), encoding="utf-8")
    return train_result


def cpu_threads_for_load() -> int:
    """1 torch thread when the machine is oversubscribed (spin-waiting threads then cost 5-10×), else all cores."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return 1 if load > cores else cores

"""`train`: the terminal stage that hands the curated rows to TRL (SFT or DPO).

    rows → TRL-format dataset in OUT/train/<label>/data/<kind>/ (rows TRL cannot use dropped with a reason)
         → unless `dry_run`: SFTTrainer | DPOTrainer (optional LoRA) → checkpoint + trl_config.json
           + trl_<kind>.yaml (for `trl sft|dpo --config`) + train_report.json + README.md (card: data
           hash, run config hash)

The export and the training are `datacraft.stages.handoff.trainer`'s, the code of `datacraft train`. The
dataset is written before training starts, and a training that fails is recorded (status `failed`,
the error) in the report instead of failing the run: the curated rows already written stay.
The stage passes the rows it exported on, so its kept rows are what the model was given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field

from datacraft.core.rows import with_drop
from datacraft.core.run_folder import TRAIN_DIR
from datacraft.core.stage import GlobalStage, StageParams, StageResult
from datacraft.stages.handoff.trainer import LoraOptions, TrainConfig, export_rows, train

log = logging.getLogger(__name__)


class TrainParams(StageParams):
    kind: Literal["sft", "dpo"] = "sft"
    model: str = Field("embedded", description="Hub name, local path, or `embedded` (SmolLM2-135M-Instruct)")
    dry_run: bool = Field(False, description="write the TRL dataset and configs only; do not train")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (default: `epochs` full passes)")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(2, ge=1, description="per-device train batch size")
    learning_rate: float = Field(5e-5, gt=0)
    max_length: int = Field(512, ge=16, description="tokens per example (DPO: prompt + answer)")
    sft_style: Literal["messages", "prompt_completion"] = "messages"
    test_size: float | None = Field(None, ge=0, description="fraction (< 1) or count held out as `test`")
    lora: LoraOptions = Field(default_factory=LoraOptions)
    torch_threads: int | None = Field(None, ge=1)
    trl: dict[str, Any] = Field(default_factory=dict, description="any SFTConfig / DPOConfig field (wins over the above)")
    output: str | None = Field(None, description="folder for dataset and checkpoint (default: OUT/train/<label>)")


class TrainStage(GlobalStage[TrainParams, None]):
    """SFT / DPO with TRL on every row that reaches it (one process: one trainer)."""

    name = "train"
    Params = TrainParams

    def reads(self) -> set[str]:
        return {"messages", "chosen", "rejected"} if self.params.kind == "dpo" else {"messages"}

    def output_dir(self) -> str:
        if self.params.output:
            return self.params.output
        return str(Path(self.context.output_dir or ".", TRAIN_DIR, self.label))

    def train_config(self) -> TrainConfig:
        p = self.params
        trl: dict[str, Any] = {"per_device_train_batch_size": p.batch_size, "learning_rate": p.learning_rate,
                               "max_length": p.max_length, "num_train_epochs": p.epochs}
        if p.max_steps:
            trl["max_steps"] = p.max_steps
        return TrainConfig(kind=p.kind, model=p.model, output_dir=self.output_dir(), sft_style=p.sft_style,
                           test_size=p.test_size, seed=self.context.seed, lora=p.lora, torch_threads=p.torch_threads,
                           trl={**trl, **p.trl})

    def process_all(self, frame: pl.DataFrame) -> StageResult:
        config = self.train_config()
        export = export_rows(config, frame)
        kept, dropped = self._split(frame, export.dropped)
        n_rows = export.rows.get(config.kind, {}).get("train", 0)
        summary: dict[str, Any] = {"kind": config.kind, "model": config.model, "output_dir": config.output_dir,
                                   "export": export.summary(), "dry_run": self.params.dry_run}
        if self.params.dry_run:
            summary["status"] = "dry_run"
        elif n_rows == 0:
            summary["status"] = "no_data"
        else:
            try:
                result = train(config, prepared=export, lineage={"config_hash": self.context.config_hash, "run": self.context.output_dir})
            except Exception as err:  # the rows and the dataset are written; the report says why training stopped
                log.exception("train stage %s failed", self.label)
                summary.update(status="failed", error=f"{type(err).__name__}: {err}"[:500])
            else:
                summary.update(result.to_dict(), status="trained")
        counters = {f"train.{config.kind}_rows": float(n_rows)}
        if "steps" in summary:
            counters["train.steps"] = float(summary["steps"])
        return StageResult(kept=kept, dropped=dropped, counters=counters, extras={"training": summary})

    def _split(self, frame: pl.DataFrame, export_dropped: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """The stage's rows by the export's verdict: dropped ones carry the export's reason, this stage's label."""
        if export_dropped.height == 0:
            return frame, None
        reasons = export_dropped.select("id", pl.col("drop_reason").alias("_reason"), pl.col("drop_detail").alias("_detail")).unique("id")
        mask = frame["id"].is_in(reasons["id"].implode())
        gone = frame.filter(mask).join(reasons, on="id", how="left")
        dropped = with_drop(gone, self.label, pl.col("_reason"), pl.col("_detail").fill_null("")).drop("_reason", "_detail")
        return frame.filter(~mask), dropped

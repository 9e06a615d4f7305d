"""`write`: a snapshot of the rows that reach this point (a tee; the run's output is `output:`)."""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field

from datacraft.core.stage import MapStage, StageParams, StageResult
from datacraft.io.writers import write_part


class WriteParams(StageParams):
    path: str = Field(..., description="folder to write a snapshot of the rows at this point")
    format: Literal["parquet", "jsonl"] = "parquet"
    row_format: str = "datacraft"


class WriteStage(MapStage[WriteParams, None]):
    """Writes the rows that reach this point as part files under `path` and passes them on."""

    name = "write"
    Params = WriteParams

    def process(self, batch: pl.DataFrame, resource: None = None) -> StageResult:
        if batch.height:
            write_part(batch, self.params.path, self.params.format, self.params.row_format)
        return StageResult(kept=batch)

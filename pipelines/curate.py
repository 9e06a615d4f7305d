"""`python -m pipelines.curate --config CONFIG [--input I] [--output O] [--set k=v] [beam options]`:
the curation pipeline as a script (the same as `datacraft run`). The driver is `datacraft.pipeline.run`."""

from __future__ import annotations

import json
import logging

from datacraft.pipeline.run import run, run_config

__all__ = ["run", "run_config"]

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    print(json.dumps(run(), indent=2)[:4000])

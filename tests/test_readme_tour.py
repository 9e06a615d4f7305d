"""The README's "A five-minute tour" runs: its ```bash commands, in order, in a copy of the repo's
data and configs, each exiting 0. Commands that need the main job's output (`out/default`, made by
the embedded models) or a placeholder (`<row id>`) are left out; the rest need no model and no network."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

NEEDS_MODEL = ("out/default", "<")
#: the cheap ones, run in the default suite (the whole tour is `slow`)
FAST = ("datacraft --version", "datacraft stages complexity")


def tour_commands() -> list[str]:
    """Every command line of the tour's ```bash blocks, in order (comments stripped)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def _run_in_copy(commands: list[str], tmp: Path) -> None:
    for folder in ("configs", "examples", "tests/data"):
        shutil.copytree(ROOT / folder, tmp / folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "datacraft", command
        proc = subprocess.run([sys.executable, "-m", "datacraft.cli", *words[1:]], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def test_tour_commands_are_found() -> None:
    commands = tour_commands()
    runnable = [c for c in commands if not any(m in c for m in NEEDS_MODEL)]
    assert len(commands) >= 10 and len(runnable) >= 8
    assert set(FAST) <= set(runnable)
    # the train section's `datacraft train dpo out/dpo` reads a folder a tour command makes
    assert any(c.startswith("datacraft filter") and "-o out/dpo" in c for c in runnable)


def test_fast_tour_commands_exit_0(tmp_path: Path) -> None:
    _run_in_copy([c for c in tour_commands() if c in FAST], tmp_path)


@pytest.mark.slow
def test_whole_tour_runs_in_order(tmp_path: Path) -> None:
    commands = [c for c in tour_commands() if not any(m in c for m in NEEDS_MODEL)]
    _run_in_copy(commands, tmp_path)
    assert (tmp_path / "out" / "clean3" / "_SUCCESS").exists() and (tmp_path / "my.yaml").exists()
    import polars as pl

    dpo = pl.read_parquet(str(tmp_path / "out" / "dpo" / "data" / "*.parquet"))
    assert {"prompt", "chosen", "rejected"} <= set(dpo.columns) and dpo.height > 0

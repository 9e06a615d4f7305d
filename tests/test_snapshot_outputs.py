"""scripts/snapshot_outputs.py: argument handling of `run --rev` and which CLI module a commit runs (no pipeline run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "snapshot_outputs.py"


@pytest.fixture(scope="module")
def snap():
    spec = importlib.util.spec_from_file_location("snapshot_outputs", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_run_args_with_rev(snap, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = snap.parse(["run", "out", "--rev", "3608f44^", "--only", "default,,dpo", "--limit", "5"])
    assert (args.cmd, args.rev, args.limit) == ("run", "3608f44^", 5)
    assert args.only == {"default", "dpo"}
    assert args.snap == tmp_path / "out"


def test_run_args_defaults(snap):
    args = snap.parse(["run", "out"])
    assert (args.rev, args.only, args.limit) == (None, None, 48)
    assert args.snap.is_absolute()


def test_compare_args(snap):
    args = snap.parse(["compare", "a", "b"])
    assert (args.cmd, args.a, args.b) == ("compare", Path("a"), Path("b"))
    with pytest.raises(SystemExit):
        snap.parse(["compare", "a", "b", "--rev", "HEAD"])


def test_cli_module_per_layout(snap, tmp_path):
    (tmp_path / "datacraft").mkdir()
    (tmp_path / "datacraft" / "cli.py").write_text("")
    assert snap.cli_module(tmp_path) == "datacraft.cli"  # before the refactor: one module
    (tmp_path / "datacraft" / "cli.py").unlink()
    (tmp_path / "datacraft" / "cli").mkdir()
    assert snap.cli_module(tmp_path) == "datacraft.cli.main"  # 3608f44: a package without __main__
    (tmp_path / "datacraft" / "cli" / "__main__.py").write_text("")
    assert snap.cli_module(tmp_path) == "datacraft.cli"
    assert snap.cli_module(snap.ROOT) == "datacraft.cli"

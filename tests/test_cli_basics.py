"""The CLI's own surface: the PyPI distribution name, --version, help without type noise, `stages NAME`."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from datacraft import __version__
from datacraft.cli.main import DISTRIBUTION, app

ROOT = Path(__file__).resolve().parents[1]


def test_distribution_name_is_free_and_used_in_every_hint() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # (tomllib is not in Python 3.10)
    assert re.search(r'^name = "([^"]+)"', pyproject, re.M).group(1) == DISTRIBUTION == "datacraft-curate"  # type: ignore[union-attr]
    assert 'datacraft = "datacraft.cli.main:main"' in pyproject  # the command and import package keep their name
    index = Path("/work/.library/env/packages/pypi.tsv")  # the package-index list of this build machine
    if index.exists():
        names = {line.split("\t", 1)[0].lower() for line in index.open(encoding="utf-8")}
        assert "datacraft" in names and DISTRIBUTION not in names
    hinted = [p for p in (ROOT / "datacraft").rglob("*.py") if "pip install 'datacraft[" in p.read_text(encoding="utf-8")]
    assert hinted == []
    assert "pypi.org/project/datacraft-curate/" in (ROOT / "datacraft/train/publish.py").read_text(encoding="utf-8")
    assert ".[dev,train]" in (ROOT / ".ci/run").read_text(encoding="utf-8")  # the editable set-up is name-independent


def test_version_and_help_without_type_noise() -> None:
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"datacraft {__version__} (PyPI distribution datacraft-curate)"
    for command in (["run", "--help"], ["filter", "--help"], ["serve", "--help"], ["--help"]):
        text = CliRunner().invoke(app, command, terminal_width=200).output
        assert "<str>" not in text and "<bool>" not in text and "<int>" not in text, command
    assert "OUTPUT" in CliRunner().invoke(app, ["run", "--help"], terminal_width=200).output


def test_stages_lists_full_defaults_and_one_in_detail() -> None:
    listing = CliRunner().invoke(app, ["stages"], env={"COLUMNS": "400"}).output
    assert "max_field_chars=6000" in listing and "scores=['complexity', 'quality']" in listing
    detail = CliRunner().invoke(app, ["stages", "complexity"], env={"COLUMNS": "200"})
    assert detail.exit_code == 0
    for part in ("Literal['auto', 'logits', 'engine']", "reads: messages", "scores.complexity", "- name: complexity"):
        assert part in detail.output, part
    unknown = CliRunner().invoke(app, ["stages", "no_such_stage"])
    assert unknown.exit_code == 1


def test_progress_log_line_has_totals_rate_and_eta() -> None:
    from datacraft.core.progress import ProgressLog

    log = ProgressLog(["read", "complexity", "select"], start=100.0)
    log.record("read", 1000, 900)
    log.record("complexity", 300, 300)
    line = log.line(160.0)  # 60 s in: complexity at 5 rows/s, 600 of the 900 read rows to go → 120 s
    assert line == ("progress 0:01:00: read 1,000 rows (16.7/s); complexity 300/900 rows (5.0/s, ETA 0:02:00); "
                    "select 0/300 rows (0.0/s)")
    log.record("unknown", 5, 5)  # a label outside the run is ignored
    assert "unknown" not in log.line(160.0)

"""report.html: rendered from a run folder, self-contained, every stage and section present, ledger flags right."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from datacraft.report.facts import collect_facts, stage_balance
from datacraft.report.html import render_html
from tests.report_fixtures import STAGES, build_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("report") / "run"
    info = build_run(out)
    return out, info


@pytest.fixture(scope="module")
def page(run: tuple[Path, dict[str, Any]]) -> str:
    out, _info = run
    path = render_html(str(out))
    assert path == str(out / "report.html")
    return Path(path).read_text(encoding="utf-8")


def _external_refs(html: str) -> list[str]:
    attrs = re.findall(r"""(?:src|href|xlink:href|action)\s*=\s*["']?\s*((?:https?:)?//[^"'\s>]*)""", html, flags=re.I)
    css = re.findall(r"""(?:url\(\s*["']?|@import\s+["']?)((?:https?:)?//[^"')\s]*)""", html, flags=re.I)
    return attrs + css


def test_every_stage_and_section_present(page: str, run: tuple[Path, dict[str, Any]]) -> None:
    _out, info = run
    for stage in STAGES:
        assert f'data-stage="{stage}"' in page, stage
        assert f"<b>{stage}</b>" in page, stage
    for anchor in ("funnel", "drops", "scores", "groups", "map", "mixture", "timings", "llm", "config"):
        assert f'<section id="{anchor}">' in page, anchor
    # headline numbers come from the report
    rep = info["report"]
    assert f'<div class="tv">{rep["rows_in"]:,}</div>' in page
    assert f'<div class="tv">{rep["rows_out"]:,}</div>' in page
    # funnel chart, histograms (SVG) and the embedding map (PNG) are inline
    assert 'class="funnel"' in page
    assert page.count('class="chart"') >= 3
    assert "data:image/png;base64," in page and "PCA projection" in page
    # dropped examples per reason, with ids; dedup pairs with the kept and the dropped row
    for reason in ("too_short", "parse_error", "duplicate", "not selected (budget)", "malformed", "unknown_format"):
        assert f"<h3>{reason}</h3>" in page, reason
    assert info["short_id"] in page and info["failed_hop2_id"] in page
    assert "Groups at the threshold" in page and info["dup_loser"] in page and info["dup_winner"] in page
    # budgets, LLM counters, timings, config and its hash
    for task in ("writing", "qa", "coding", "math"):
        assert f'data-v="{task}"' in page
    assert "5,120" in page and "2,048" in page and "(25%)" in page  # prompt / completion tokens, cache-hit rate
    assert "rows/s" in page and "13.0 s" in page
    assert "0123456789abcdef" in page and "keep_embedding: true" in page


def test_page_is_self_contained(page: str) -> None:
    assert _external_refs(page) == []
    assert "<link" not in page and "<script src" not in page
    assert _external_refs('<img src="https://x/y.png"><a href=//cdn.z/a.css>') == ["https://x/y.png", "//cdn.z/a.css"]


def test_css_and_js_resources_are_inlined(page: str) -> None:
    """The stylesheet and the script are package resources, found through importlib.resources and inlined."""
    res = resources.files("datacraft").joinpath("resources/report")
    css, js = (res.joinpath(name).read_text(encoding="utf-8") for name in ("report.css", "report.js"))
    assert "svg.funnel .fk{fill:@KEPT@;font-weight:700}" in css  # the colour is filled in from the charts' palette
    assert "svg.funnel .fk{fill:#4f46e5;font-weight:700}" in page and "@KEPT@" not in page and "@DROP@" not in page
    assert "--accent:#4f46e5;--drop:#f97360" in page
    style = re.search(r"<style>(.*?)</style>", page, flags=re.S)
    script = re.search(r"<script>(.*?)</script>", page, flags=re.S)
    assert style and script
    assert style.group(1).strip() == css.replace("@KEPT@", "#4f46e5").replace("@DROP@", "#f97360").strip()
    assert script.group(1).strip() == js.strip()
    assert "document.querySelectorAll('table.sortable')" in script.group(1)
    assert page.count('<table class="sortable') >= 3  # the script has tables to sort


def test_balance_flags(run: tuple[Path, dict[str, Any]], tmp_path: Path, page: str) -> None:
    out, _info = run
    assert all(stage_balance(s)[0] for s in json.loads((out / "report.json").read_text())["stages"])
    assert page.count("balance-ok") == len(STAGES) and "balance-bad" not in page
    assert "Ledger balances" in page
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    rep = json.loads((broken / "report.json").read_text())
    rep["stages"][3]["kept"] += 2  # exact_dedup now claims two rows it never had
    (broken / "report.json").write_text(json.dumps(rep))
    html = Path(render_html(str(broken))).read_text(encoding="utf-8")
    bad = re.findall(r'balance-bad" data-stage="([^"]+)"', html)
    good = re.findall(r'balance-ok" data-stage="([^"]+)"', html)
    assert bad == ["exact_dedup"]
    assert good == [s for s in STAGES if s != "exact_dedup"]
    assert "does not balance" in html


def test_histograms_before_and_after(run: tuple[Path, dict[str, Any]]) -> None:
    out, info = run
    facts = collect_facts(str(out))
    n_kept = len(info["kept_ids"])
    assert facts.rows_written == n_kept
    # before = every row that had the score (kept + dropped after heuristics); after = kept rows
    rep = info["report"]["stages"]
    scored_dropped = sum(sum(s["dropped"].values()) for s in rep[1:])
    assert len(facts.scores_kept["quality"]) == n_kept
    assert len(facts.scores_all["quality"]) == n_kept + scored_dropped
    assert min(facts.scores_all["length"]) < 40 <= min(facts.scores_kept["length"])  # too_short rows only before
    assert len(facts.points) == n_kept + scored_dropped  # all rows carry a 16-d vector, under MAX_POINTS
    assert {lab for _v, lab in facts.points} == {"kept", "heuristics", "multihop", "exact_dedup", "mixture"}


def test_without_embeddings_and_with_parquet_drops(tmp_path: Path) -> None:
    out = tmp_path / "run"
    info = build_run(out, dropped_format="parquet", embeddings=False)
    assert list((out / "dropped").glob("*.parquet"))
    html = Path(render_html(str(out))).read_text(encoding="utf-8")
    assert "No embeddings in this run" in html and "data:image/png" not in html
    assert info["short_id"] in html and "<h3>too_short</h3>" in html


def test_missing_report_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="report.json"):
        render_html(str(tmp_path))


def test_report_command(run: tuple[Path, dict[str, Any]]) -> None:
    import typer
    from typer.testing import CliRunner

    from datacraft.cli.report import register

    app = typer.Typer()
    register(app)
    out, _info = run
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(out / "report.html")
    res = CliRunner().invoke(app, ["report", str(out / "nope")])
    assert res.exit_code == 2


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_real_run_report_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    from datacraft.pipeline.config import load_config
    from datacraft.pipeline.run import run_config

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    config = load_config(root / "configs" / "filter.yaml", [
        f"input.path={root / 'tests' / 'data' / 'alpaca_llamafactory_200.jsonl'}", f"output.path={out}"])
    report = run_config(config)
    html_path = out / "report.html"
    assert html_path.exists(), "run must write report.html"
    html = html_path.read_text(encoding="utf-8")
    for stage in report["stages"]:
        assert f'data-stage="{stage["name"]}"' in html
    assert _external_refs(html) == []
    shot = tmp_path / "shot.png"
    profile = tempfile.mkdtemp()
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1400,3000", html_path.as_uri()],
        check=True, timeout=120, capture_output=True,
    )
    shutil.rmtree(profile, ignore_errors=True)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 3000)
    # the page really rendered: the dark header at the top, many colours (charts) further down
    assert sum(img.getpixel((700, 40))) < 200
    assert len(img.resize((350, 750)).getcolors(1 << 20) or []) > 200


def test_each_score_says_what_it_agreed_with(run: tuple[Path, dict[str, Any]]) -> None:
    """The scores section carries the bench_scorers figure of a measured score, and says so when unmeasured."""
    from datacraft.report.agreement import agreement_for
    from datacraft.report.html import scores_section

    out, _ = run
    facts = collect_facts(str(out))
    html_text = scores_section(facts)
    measured = agreement_for("quality")
    assert measured is not None and "quality" in facts.scores_all
    first = measured["datasets"][0]
    assert f"of {first['n']} " in html_text and f"{first['acc']:.2f}" in html_text
    assert "not measured against preference labels" in html_text  # the fixture's `length` score has no recorded figure


def test_rows_a_stage_names_are_previewed_from_parquet_shards(tmp_path: Path) -> None:
    """Parquet output without embeddings: the loader threads read the rows an exact-dedup example
    names (kept and dropped); each preview is that row's own text and status."""
    from datacraft.pipeline.config import load_config
    from datacraft.pipeline.run import run_config

    from .conftest import DATA

    out = tmp_path / "o"
    report = run_config(load_config(data={
        "name": "previews", "input": {"path": str(DATA / "alpaca_eval_7gen_30.jsonl")},
        "stages": [{"name": "exact_dedup", "text": "instruction"}], "output": {"path": str(out), "format": "parquet"}}))
    examples = next(s for s in report["stages"] if s["name"] == "exact_dedup")["extras"]["examples"]
    assert len(examples) >= 3
    facts = collect_facts(str(out))
    for ex in examples:
        kept, dropped = facts.previews[ex["kept_id"]], facts.previews[ex["dropped_id"]]
        assert (kept["status"], kept["id"], dropped["id"]) == ("kept", ex["kept_id"], ex["dropped_id"])
        assert kept["instruction"][:60] == dropped["instruction"][:60] == ex["text"][:60]

"""The house rules: Beam only in datacraft/beam, every stage under datacraft/stages, no import cycles,
declared columns checked before any row is read, resources shared per process, ledger entries add up."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import polars as pl
import pytest

from datacraft.core.ledger import LedgerEntry, ledger_problems
from datacraft.core.resources import SHARED
from datacraft.core.rows import batch_from_rows, make_row
from datacraft.core.stage import MapStage, StageParams, StageResult, score
from datacraft.pipeline.config import ConfigError, load_config
from datacraft.pipeline.run import run_config
from datacraft.stages import registry

PACKAGE = Path(__file__).resolve().parents[1] / "datacraft"
DATA = Path(__file__).parent / "data"


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules a file imports (every import, or only those executed at import time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


FILES = {_module_of(p): p for p in PACKAGE.rglob("*.py")}


def test_only_datacraft_beam_imports_apache_beam() -> None:
    offenders = sorted(m for m, p in FILES.items() if not m.startswith("datacraft.beam")
                       and any(i == "apache_beam" or i.startswith("apache_beam.") for i in _imports(p)))
    assert offenders == []
    assert any(i.startswith("apache_beam") for i in _imports(FILES["datacraft.beam.shapes"]))


def test_every_registered_stage_lives_under_stages() -> None:
    names = registry.stage_names()
    assert len(names) >= 22
    for name in names:
        cls = registry.stage_class(name)
        assert cls.__module__.startswith("datacraft.stages."), (name, cls.__module__)
        assert cls.name == name


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles_between_modules_or_folders() -> None:
    modules = {m: {i for i in _imports(p, top_level_only=True) if i in FILES and i != m} for m, p in FILES.items()}
    assert _cycle(modules) is None, _cycle(modules)

    def folder(m: str) -> str:
        parts = m.split(".")
        return parts[1] if len(parts) > 2 or (len(parts) == 2 and FILES[m].name == "__init__.py") else "<root>"

    folders: dict[str, set[str]] = {}
    for m, p in FILES.items():
        for i in _imports(p):  # lazy imports too: a folder may not reach back up
            if i in FILES and folder(i) != folder(m):
                folders.setdefault(folder(m), set()).add(folder(i))
    assert _cycle(folders) is None, _cycle(folders)
    assert "beam" not in folders.get("stages", set()) and "beam" not in folders.get("core", set())


# ---------------------------------------------------------------------------------------------
# a stage defined here, registered, run through the real pipeline


class ShoutParams(StageParams):
    min_words: int = 3


class ShoutStage(MapStage[ShoutParams, None]):
    """Scores how much of the response is upper case; drops rows with fewer than `min_words` words."""

    name = "test_shout"
    Params = ShoutParams

    def reads(self) -> set[str]:
        return {"messages"}

    def writes(self) -> set[str]:
        return {score("shout")}

    def process(self, batch: pl.DataFrame, resource: None = None) -> StageResult:
        text = batch["messages"].list.last().struct.field("content")
        scored = batch.with_columns((text.str.count_matches(r"[A-Z]") / text.str.len_chars().clip(1)).alias(score("shout")))
        words = text.str.count_matches(r"\w+")
        from datacraft.core.stage import split_kept

        return split_kept(self.label, scored, words >= self.params.min_words, "too_short", "fewer words than min_words")


def test_a_stage_defined_in_a_test_runs_in_a_config(tmp_path: Path) -> None:
    registry.register(ShoutStage)
    try:
        cfg = load_config(data={
            "input": {"path": str(DATA / "selfinstruct_60.jsonl")},
            "stages": [{"name": "test_shout", "min_words": 20}, {"name": "filter", "where": "shout < 0.5"}],
            "output": {"path": str(tmp_path / "out")},
        })
        report = run_config(cfg)
    finally:
        registry._EXTRA.pop("test_shout")
    shout = next(s for s in report["stages"] if s["name"] == "test_shout")
    assert report["ledger_ok"]
    assert shout["in"] == 60 and shout["dropped"].get("too_short", 0) > 0
    assert shout["kept"] + shout["dropped"]["too_short"] == 60
    kept = pl.read_parquet(next((tmp_path / "out" / "data").glob("*.parquet")))
    assert kept.height == report["rows_out"] > 0
    assert "shout" in kept["scores"].struct.fields


# ---------------------------------------------------------------------------------------------
# misconfigurations are errors before any row is read


def _config_file(tmp_path: Path, stages: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"input: {{path: {DATA / 'alpaca_llamafactory_200.jsonl'}}}\noutput: {{path: {tmp_path / 'out'}}}\nstages:\n{stages}",
                    encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("stages", "line", "needle"),
    [
        ("  - name: heuristics\n  - name: filter\n    where: 'qualty >= 3'\n", 6, "score 'qualty'"),
        ("  - name: heuristics\n  - name: filter\n    where: 'length.respons > 3'\n", 6, "did you mean 'length.response'"),
        ("  - name: embed\n  - name: select\n    weight: quality\n    budget: 10\n", 6, "score 'quality'"),
        ("  - name: exact_dedup\n    by: complexty\n", 5, "score 'complexty'"),
        ("  - name: embed\n  - name: semantic_dedup\n    score: reward\n", 6, "score 'reward'"),
        ("  - name: embed\n  - name: smart_mixture\n    task_column: category\n", 6, "column 'category'"),
        ("  - name: embed\n  - name: ds2_curate\n    rating: quality\n", 6, "score 'quality'"),
    ],
)
def test_misconfigured_columns_fail_at_load_with_file_line_and_hint(tmp_path: Path, stages: str, line: int, needle: str) -> None:
    path = _config_file(tmp_path, stages)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:{line}:" in message and needle in message
    assert not (tmp_path / "out").exists()


def test_typo_hint_names_the_close_score(tmp_path: Path) -> None:
    path = _config_file(tmp_path, "  - name: complexity\n  - name: filter\n    where: 'complexty >= 3'\n")
    with pytest.raises(ConfigError, match="did you mean 'complexity'"):
        load_config(path)


def test_scores_carried_by_the_input_count_as_available(tmp_path: Path) -> None:
    rows = [make_row([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a b c"}], id=f"r{i}", scores={"quality": float(i)})
            for i in range(6)]
    src = tmp_path / "scored.parquet"
    from datacraft.core.rows import to_output_frame

    to_output_frame(batch_from_rows(rows)).write_parquet(src)
    cfg = load_config(data={"input": {"path": str(src)}, "stages": [{"name": "filter", "where": "quality >= 3"}], "output": {"path": str(tmp_path / "o")}})
    report = run_config(cfg)
    assert report["rows_out"] == 3


# ---------------------------------------------------------------------------------------------
# resources and the ledger


class _Model:
    loaded = 0

    def __init__(self) -> None:
        _Model.loaded += 1
        self.closed = False

    def close(self) -> None:
        self.closed = True


class ModelStage(MapStage[StageParams, _Model]):
    name = "test_model"

    def load(self) -> _Model:
        return _Model()

    def resource_key(self) -> object:
        return ("test-model", "one")

    def process(self, batch: pl.DataFrame, resource: _Model) -> StageResult:
        return StageResult(kept=batch.with_columns(pl.lit(id(resource)).alias("_model")))


def test_two_stages_on_one_key_share_one_resource_and_the_last_release_closes_it() -> None:
    _Model.loaded = 0
    a, b = ModelStage(label="a"), ModelStage(label="b")
    a.acquire()
    b.acquire()
    assert _Model.loaded == 1 and a.resource is b.resource and SHARED.holders(("test-model", "one")) == 2
    model = a.resource
    a.release()
    assert not model.closed
    b.release()
    assert model.closed and SHARED.holders(("test-model", "one")) == 0
    assert ModelStage.loads_resource() and not ShoutStage.loads_resource()


def test_ledger_entries_add_and_the_balance_check_names_the_stage() -> None:
    one = LedgerEntry("f", 10, 7, 0, {"x": 3}, 0.5, {"c": 1.0}, {"examples": [1]})
    two = LedgerEntry("f", 5, 2, 1, {"x": 1, "y": 2}, 0.25, {"c": 2.0}, {"examples": [2]})
    s = one + two
    assert (s.n_in, s.kept, s.created, s.dropped, s.seconds, s.counters, s.extras) == (15, 9, 1, {"x": 4, "y": 2}, 0.75, {"c": 3.0}, {"examples": [1, 2]})
    assert s.problems() == ["f: in 15 + created 1 != kept 9 + dropped 6"]
    assert ledger_problems([LedgerEntry("read", 4, 4), LedgerEntry("g", 3, 3)]) == ["g: in 3 != previous stage's kept 4"]
    with pytest.raises(ValueError):
        one + LedgerEntry("other")
    assert json.loads(json.dumps(s.to_dict()))["in"] == 15

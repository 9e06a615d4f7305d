"""Beam on dask.distributed (issue 19): datacraft's DaskRunner on a LocalCluster of 2 worker
processes. Each fix is checked against Beam's stock DaskRunner, which fails the same check."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.pvalue import AsList, AsSingleton, TaggedOutput
from apache_beam.runners.dask.dask_runner import DaskRunner as StockDaskRunner

from datacraft.beam.dask_runner import DaskRunner
from datacraft.beam.transform import in_global_window
from datacraft.pipeline.config import load_config
from datacraft.pipeline.run import run_config

from .conftest import DATA, ROOT
from .test_reproducible import run_outputs

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster() -> str:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


class _Split(beam.DoFn):
    def process(self, x: int):
        yield x if x % 2 else TaggedOutput("even", x)


class _CountedSplit(_Split):
    """_Split that appends a line to `log` per element it processes (workers are other processes)."""

    def __init__(self, log: str) -> None:
        self.log = log

    def process(self, x: int):
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(f"{x}\n")
        yield from super().process(x)


class _Buffered(beam.DoFn):
    """Emits nothing from process: one sum per bundle, from finish_bundle (as the shard writers)."""

    def start_bundle(self) -> None:
        self.total = 0

    def process(self, x: int):
        self.total += x
        return []

    def finish_bundle(self):
        yield in_global_window(self.total)


def _write(out: Path, name: str):
    def save(values: list) -> None:
        (out / name).write_text(repr(sorted(values)))
    return save


def _graph(p: beam.Pipeline, out: Path) -> None:
    """Tagged outputs, finish_bundle outputs, a side input, a GroupByKey and three sinks."""
    nums = p | "Nums" >> beam.Create(list(range(20)))
    split = nums | "Split" >> beam.ParDo(_Split()).with_outputs("even", main="odd")
    _ = split.odd | "Odd" >> beam.combiners.ToList() | "SaveOdd" >> beam.Map(_write(out, "odd"))
    _ = split.even | "Even" >> beam.combiners.ToList() | "SaveEven" >> beam.Map(_write(out, "even"))
    total = nums | "Buffered" >> beam.ParDo(_Buffered()) | "Sum" >> beam.CombineGlobally(sum)
    offsets = nums | "Small" >> beam.Filter(lambda x: x < 3)
    shifted = (
        nums
        | "Shift" >> beam.Map(lambda x, t, small: (x % 3, x + t + len(small)), AsSingleton(total), AsList(offsets))
        | "Group" >> beam.GroupByKey()
        | "Sizes" >> beam.MapTuple(lambda k, vs: (k, sorted(vs)))
    )
    _ = shifted | "All" >> beam.combiners.ToList() | "SaveGroups" >> beam.Map(_write(out, "groups"))


def _expected() -> dict[str, str]:
    t = sum(range(20))
    groups = sorted((k, sorted(x + t + 3 for x in range(20) if x % 3 == k)) for k in range(3))
    return {"odd": repr(list(range(1, 20, 2))), "even": repr(list(range(0, 20, 2))), "groups": repr(groups)}


def _run(runner: beam.runners.PipelineRunner, address: str, out: Path) -> dict[str, str]:
    out.mkdir()
    p = beam.Pipeline(runner=runner, options=beam.options.pipeline_options.PipelineOptions([f"--dask_client_address={address}", "--dask_npartitions=2"]))
    _graph(p, out)
    p.run().wait_until_finish()
    return {name: (out / name).read_text() for name in ("odd", "even", "groups") if (out / name).exists()}


@pytest.mark.timeout(120)
def test_fixed_runner_keeps_tagged_finish_bundle_and_side_input_outputs(cluster: str, tmp_path: Path) -> None:
    assert _run(DaskRunner(), cluster, tmp_path / "fixed") == _expected()


@pytest.mark.timeout(120)
def test_stock_runner_loses_outputs(cluster: str, tmp_path: Path) -> None:
    """The defects the fixes are for: Beam's own DaskRunner does not produce the expected outputs."""
    try:
        got = _run(StockDaskRunner(), cluster, tmp_path / "stock")
    except Exception as e:  # noqa: BLE001 - failing outright is one of the ways it loses the outputs
        got = {"error": repr(e)}
    assert got != _expected()
    assert "even" not in got or got["even"] != _expected()["even"]


@pytest.mark.timeout(120)
def test_a_pardo_with_tagged_outputs_runs_once_per_element(cluster: str, tmp_path: Path) -> None:
    """Three consumers of one ParDo's outputs: dask's task fusion must not copy the ParDo into each
    (it ran every stage once per tag, e.g. an LLM stage three times)."""
    log = tmp_path / "calls.txt"
    p = beam.Pipeline(runner=DaskRunner(), options=beam.options.pipeline_options.PipelineOptions([f"--dask_client_address={cluster}", "--dask_npartitions=2"]))
    split = p | beam.Create(list(range(20))) | beam.ParDo(_CountedSplit(str(log))).with_outputs("even", "never", main="odd")
    for name in ("odd", "even", "never"):
        _ = getattr(split, name) | f"Save{name}" >> beam.combiners.ToList() | f"W{name}" >> beam.Map(_write(tmp_path, name))
    p.run().wait_until_finish()
    assert sorted(int(x) for x in log.read_text().split()) == list(range(20))
    assert (tmp_path / "even").read_text() == _expected()["even"] and (tmp_path / "never").read_text() == "[]"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["filter", pytest.param("semantic_dedup", marks=pytest.mark.slow)])
def test_config_on_dask_matches_in_process_id_for_id(name: str, cluster: str, tmp_path: Path) -> None:
    """A shipped config through `--runner=DaskRunner`: the same kept ids and dropped rows as in-process."""
    config = str(ROOT / "configs" / f"{name}.yaml")
    base = [f"input.path={DATA / 'alpaca_llamafactory_200.jsonl'}", "input.batch_size=40"]
    run_config(load_config(config, [*base, f"output.path={tmp_path / 'inproc'}"]))
    report = run_config(load_config(config, [*base, f"output.path={tmp_path / 'dask'}"]), ["--runner=DaskRunner", f"--dask_client_address={cluster}"])
    assert report["ledger_ok"]
    expected, got = run_outputs(tmp_path / "inproc"), run_outputs(tmp_path / "dask")
    assert got[0] == expected[0] and got[0]
    assert got[1].equals(expected[1]) and (name == "filter" or got[1].height)

"""Evaluate the third-party `beam-pyspark-runner` (issue 19): Beam features one by one, then a config
id for id against Beam's in-process runner, on Spark `local[2]`.

    python -m venv --system-site-packages /work/venv-spark     # the runner pins apache-beam==2.48.0:
    /work/venv-spark/bin/pip install --no-deps beam-pyspark-runner==0.0.3 pyspark==3.5.1 py4j==0.10.9.7
    PYTHONPATH=$PWD /work/venv-spark/bin/python scripts/eval_pyspark_runner.py [filter|semantic_dedup|select]

Needs Java 17 (Spark 3.5). Prints one line per feature (OK / WRONG / ERROR and the worker's Python
error), then the config's outcome; the last line is one JSON object. Not a datacraft dependency.
"""

from __future__ import annotations

import json
import sys
import tempfile
import typing as t
from pathlib import Path

import apache_beam as beam
from apache_beam.pvalue import AsList, TaggedOutput
from apache_beam.transforms.window import GlobalWindows

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUNNER = "beam_pyspark_runner.pyspark_runner.PySparkRunner"
NUMS = list(range(20))


def _cause(e: Exception) -> str:
    """The first line of `e`, and the Python error a Spark worker raised (inside the Java trace)."""
    lines = str(e).splitlines()
    worker = next((ln.strip() for ln in lines if "Error:" in ln and "Py4J" not in ln and "Spark" not in ln), "")
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}" + (f" | worker: {worker[:200]}" if worker else "")


class _Split(beam.DoFn):
    def process(self, x: int) -> t.Iterator[t.Any]:
        yield x if x % 2 else TaggedOutput("even", x)


class _Buffered(beam.DoFn):
    """Emits only from finish_bundle, as datacraft's shard writers do."""

    def start_bundle(self) -> None:
        self.total = 0

    def process(self, x: int) -> list[int]:
        self.total += x
        return []

    def finish_bundle(self) -> t.Iterator[t.Any]:
        yield GlobalWindows.windowed_value(self.total)


def _save(out: Path, name: str) -> t.Callable[[list[t.Any]], None]:
    def save(values: list[t.Any]) -> None:
        (out / name).write_text(json.dumps(sorted(values)))
    return save


def _features(out: Path) -> dict[str, tuple[t.Callable[[beam.Pipeline], t.Any], list[t.Any]]]:
    """name → (graph writing `out/name`, the expected content)."""
    def tagged(tag: str) -> t.Callable[[beam.Pipeline], t.Any]:
        return lambda p: getattr(p | beam.Create(NUMS) | beam.ParDo(_Split()).with_outputs("even", main="odd"), tag) | beam.combiners.ToList() | beam.Map(_save(out, f"tagged_{tag}"))

    def side_input(p: beam.Pipeline) -> t.Any:
        m = p | "M" >> beam.Create([100])
        return p | "N" >> beam.Create(NUMS) | beam.Map(lambda x, ms: x + ms[0], AsList(m)) | beam.combiners.ToList() | beam.Map(_save(out, "side_input"))

    return {
        "tagged_odd": (tagged("odd"), [x for x in NUMS if x % 2]),
        "tagged_even": (tagged("even"), [x for x in NUMS if not x % 2]),
        "finish_bundle": (lambda p: p | beam.Create(NUMS) | beam.ParDo(_Buffered()) | beam.CombineGlobally(sum) | beam.Map(lambda s: [s]) | beam.Map(_save(out, "finish_bundle")), [sum(NUMS)]),
        "side_input": (side_input, [x + 100 for x in NUMS]),
        "group_by_key": (lambda p: p | beam.Create(NUMS) | beam.Map(lambda x: (x % 3, x)) | beam.GroupByKey() | beam.MapTuple(lambda k, v: [k, sorted(v)]) | beam.combiners.ToList() | beam.Map(_save(out, "group_by_key")),
                         [[k, [x for x in NUMS if x % 3 == k]] for k in range(3)]),
        "reshuffle": (lambda p: p | beam.Create(NUMS) | beam.Reshuffle() | beam.combiners.ToList() | beam.Map(_save(out, "reshuffle")), NUMS),
    }


def feature_outcomes(tmp: Path) -> dict[str, str]:
    from apache_beam.options.pipeline_options import PipelineOptions

    tmp.mkdir(parents=True)
    outcomes: dict[str, str] = {}
    for name, (build, expected) in _features(tmp).items():
        try:
            with beam.Pipeline(options=PipelineOptions([f"--runner={RUNNER}"])) as p:
                build(p)
            got = json.loads((tmp / name).read_text()) if (tmp / name).exists() else None
            outcomes[name] = "OK" if got == expected else f"WRONG: got {got!r}, expected {expected!r}"
        except Exception as e:  # noqa: BLE001 - the outcome is what this script reports
            outcomes[name] = "ERROR " + _cause(e)
        print(f"{name}: {outcomes[name]}", flush=True)
    return outcomes


def config_outcome(name: str, tmp: Path) -> str:
    """`name` on alpaca_mix_600 (3 files, batches of 60): the Spark run's kept ids and dropped rows vs in-process."""
    from datacraft.pipeline.config import load_config
    from datacraft.pipeline.run import run_config
    from tests.test_reproducible import run_outputs, split_input

    glob = split_input(ROOT / "examples/data/alpaca_mix_600.jsonl", tmp / "in", seed=5, parts=3)

    def run(out: Path, args: list[str]) -> dict[str, t.Any]:
        return run_config(load_config(str(ROOT / "configs" / f"{name}.yaml"), [f"input.path={glob}", "input.batch_size=60", f"output.path={out}"]), args)

    run(tmp / "inproc", [])
    try:
        report = run(tmp / "spark", [f"--runner={RUNNER}"])
    except Exception as e:  # noqa: BLE001
        return "ERROR " + _cause(e)
    expected, got = run_outputs(tmp / "inproc"), run_outputs(tmp / "spark")
    same = report["ledger_ok"] and got[0] == expected[0] and got[1].equals(expected[1])
    return "OK: same kept ids and dropped rows" if same else f"WRONG: kept {len(got[0])} vs {len(expected[0])}, dropped {got[1].height} vs {expected[1].height}"


def main() -> None:
    import importlib.metadata as md

    from pyspark.sql import SparkSession

    name = sys.argv[1] if len(sys.argv) > 1 else "filter"
    # the runner calls SparkSession.builder.getOrCreate() without a master: make this one first
    SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    tmp = Path(tempfile.mkdtemp(prefix="eval_pyspark_"))
    record: dict[str, t.Any] = {"versions": {d: md.version(d) for d in ("beam-pyspark-runner", "pyspark", "apache-beam")}}
    record["features"] = feature_outcomes(tmp / "features")
    record[name] = config_outcome(name, tmp / name)
    print(f"{name}: {record[name]}")
    print(json.dumps(record))


if __name__ == "__main__":
    main()

"""Same input, same config, same output (issue 20): each shipped config without an LLM stage runs on
its input shuffled and split over several files and batches — twice in-process with two different
splits, once with Beam's `multi_processing` — and every run keeps the same ids and drops the same
rows with the same reasons and details. The report's `output_digest` (kept ids, drops by id / stage / reason / detail, read-stage drops by
reason) is equal across all of them."""

from __future__ import annotations

import hashlib
import importlib.util
import random
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from datacraft.pipeline.config import load_config
from datacraft.pipeline.run import run_config
from datacraft.report.summary import output_digest

from .conftest import ROOT

CONFIGS = ROOT / "configs"
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
# every shipped config with no LLM stage (pref_head: the packaged head, no generation)
NO_LLM = ["filter", "semantic_dedup", "select", "smart", "dedup_gpteacher_sim06", "dedup_gpteacher_sim09", "score_head", "mosaic"]
FAST = ["semantic_dedup", "select"]
# every shipped config with an LLM stage that runs on CPU (openai / vllm need a server, gpu.yaml a GPU,
# train_*.yaml are trainer configs), and the overrides that make its model work tiny
LLM = {
    "generate": ["input.limit=12", "generate.max_tokens=16"],
    "cherry": ["input.limit=12", "ifd.max_length=128"],
    "score": ["input.limit=12", "complexity.max_field_chars=300", "quality.max_field_chars=300", "ifd.max_length=128", "diversity.k=4"],
    "ds2": ["input.limit=16", "ds2_rate.max_tokens=32", "ds2_rate.max_tries=2", "ds2_curate.k=4",
            "ds2_rate.on_unparseable=zero"],  # 32 tokens rarely hold the 135M model's JSON: keep unrated rows (DS2's rule)
    "dpo": ["input.limit=6", "reflection.max_tokens=24", "reflection.strict_tags=false", "reflection.on_truncated=keep",
            "dpo_pairs.allow_truncated=true"],
    "reflection": ["input.limit=6", "reflection.max_tokens=24", "reflection.parse_retries=0", "reflection.strict_tags=false",
                   "reflection.on_truncated=keep"],
    "multihop": ["input.limit=3", "multihop.hops=1", "multihop.ops=[reasoning]", "multihop.personas=1", "multihop.kg=false",
                 "multihop.max_rows=4", "multihop.max_tokens=24", "multihop.solver_max_tokens=24"],
    "default": ["input.limit=16", "multihop.hops=1", "multihop.max_rows=3", "multihop.max_tokens=16", "multihop.solver_max_tokens=16",
                "reflection.slice=3", "reflection.max_tokens=24", "train_dpo.dry_run=true", "train_sft.dry_run=true"],
}
#: shipped configs the reproducibility runs leave out, and why
NOT_RUN = {"openai": "needs a server", "vllm": "needs a GPU", "gpu": "needs a GPU", "train_sft": "a trainer config",
           "train_dpo": "a trainer config", "lift_alpacaeval": "a lift config (datacraft lift), not a pipeline"}
#: counters of work done by a model rather than read from the cache (LLM engine, forward passes, embeddings)
FRESH_WORK = (".engine_requests", ".computed", "embed.encoded")


def split_input(src: Path, folder: Path, seed: int, parts: int, limit: int | None = None) -> str:
    """The rows of `src` shuffled by `seed` and dealt over `parts` files; returns a glob of them."""
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    random.Random(seed).shuffle(lines)
    folder.mkdir(parents=True)
    for i in range(parts):
        (folder / f"part{i}.jsonl").write_text("\n".join(lines[i::parts]) + "\n", encoding="utf-8")
    return str(folder / "*.jsonl")


def run_outputs(out: Path) -> tuple[list[str], pl.DataFrame]:
    """Kept ids (sorted) and the dropped rows as (id, stage, reason, detail), sorted."""
    kept = sorted(pl.read_parquet(str(out / "data" / "*"))["id"].to_list())
    files = sorted((out / "dropped").glob("*"))
    cols = ["id", "drop_stage", "drop_reason", "drop_detail"]
    if not files:
        return kept, pl.DataFrame(schema=dict.fromkeys(cols, pl.Utf8))
    read = lambda f: pl.read_parquet(f, columns=cols) if f.suffix == ".parquet" else pl.read_ndjson(f).select(cols)  # noqa: E731
    dropped = pl.concat([read(f) for f in files]).sort(cols)
    return kept, dropped


def run_split(name: str, tmp: Path, tag: str, seed: int, parts: int, batch_size: int, beam_args: list[str] | None = None,
              sets: list[str] | None = None) -> tuple[list[str], pl.DataFrame, dict]:
    """`name` on its input (`sets` applied, e.g. `input.limit`) shuffled by `seed` over `parts` files."""
    path = CONFIGS / f"{name}.yaml"
    base = load_config(str(path), sets or [])
    glob = split_input(ROOT / base.input.path, tmp / f"in-{tag}", seed, parts, base.input.limit)
    overrides = [f"input.path={glob}", f"input.batch_size={batch_size}", "input.limit=null", f"output.path={tmp / tag}"]
    config = load_config(str(path), [*(sets or []), *overrides])
    report = run_config(config, beam_args or [])
    assert report["ledger_ok"], report
    return (*run_outputs(tmp / tag), report)


def check_config(name: str, tmp: Path, multi_processing: bool = True, sets: list[str] | None = None,
                 check: Callable[[dict], None] | None = None) -> str:
    """Two in-process runs on two different shuffles / splits / batch sizes (and `multi_processing`
    on a third) give the same kept ids and the same dropped rows; returns the output digest.
    `check`: called on the report of each run after the first."""
    kept, dropped, report = run_split(name, tmp, "a", seed=1, parts=3, batch_size=64, sets=sets)
    assert kept, f"{name}: nothing kept"
    digest = report["output_digest"]
    assert digest == output_digest([str(f) for f in sorted((tmp / "a" / "data").glob("*"))], [str(f) for f in sorted((tmp / "a" / "dropped").glob("*"))])
    runs = [("b", 2, 4, 37, None)]
    if multi_processing:
        runs.append(("mp", 3, 5, 50, MULTI_PROCESSING))
    for tag, seed, parts, batch, args in runs:
        kept2, dropped2, report2 = run_split(name, tmp, tag, seed, parts, batch, args, sets)
        if check is not None:
            check(report2)
        assert kept2 == kept, f"{name} [{tag}]: {len(set(kept) ^ set(kept2))} kept ids differ"
        # a malformed input line is named by its file and line, which the re-split moves: compare those by reason
        same = dropped.filter(pl.col("drop_stage") != "read"), dropped2.filter(pl.col("drop_stage") != "read")
        reasons = [d.filter(pl.col("drop_stage") == "read")["drop_reason"].sort().to_list() for d in (dropped, dropped2)]
        assert same[1].equals(same[0]) and reasons[1] == reasons[0], f"{name} [{tag}]: dropped rows differ"
        assert report2["output_digest"] == digest, f"{name} [{tag}]: output digest differs"
    return digest


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", FAST)
def test_fast_configs_are_reproducible_across_splits_and_runners(name: str, tmp_path: Path) -> None:
    check_config(name, tmp_path, multi_processing=name == "semantic_dedup")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", NO_LLM)
def test_every_no_llm_config_is_reproducible(name: str, tmp_path: Path) -> None:
    print(f"digest {name}: {check_config(name, tmp_path)}")


def test_every_shipped_config_is_checked_or_excused() -> None:
    shipped = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert shipped - set(NO_LLM) - set(LLM) - set(NOT_RUN) == set(), "add the new config to NO_LLM, LLM or NOT_RUN"
    assert set(NO_LLM) | set(LLM) | set(NOT_RUN) <= shipped
    spec = importlib.util.spec_from_file_location("snapshot_outputs", ROOT / "scripts" / "snapshot_outputs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert (set(NOT_RUN), set(LLM)) == (script.SKIP, script.LLM), "scripts/snapshot_outputs.py lists differ"


def counter_sums(report: dict) -> dict[str, float]:
    """Every stage's counters, summed by name."""
    sums: dict[str, float] = {}
    for stage in report["stages"]:
        for key, value in (stage.get("counters") or {}).items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return sums


def assert_cache_only(report: dict) -> None:
    """The run was served by the cache: model requests and cache hits, no fresh model work."""
    sums = counter_sums(report)
    fresh = {k: v for k, v in sums.items() if k.endswith(FRESH_WORK) and v}
    assert not fresh, f"{report['name']}: the rerun did model work: {fresh}"
    assert sum(v for k, v in sums.items() if k.endswith(".cache_hits")) > 0, f"{report['name']}: no cache hits: {sums}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", list(LLM))
def test_every_llm_config_is_reproducible_with_the_cache_warm(name: str, tmp_path: Path) -> None:
    """The first run warms one shared cache folder; the two reruns (another shuffle, split and batch
    size; one on `multi_processing`) make no model call and give the same outcome."""
    sets = [*LLM[name], f"cache_dir={tmp_path / 'cache'}"]
    print(f"digest {name}: {check_config(name, tmp_path, sets=sets, check=assert_cache_only)}")


def test_same_run_twice_writes_byte_identical_dropped(tmp_path: Path) -> None:
    """The same input in the same order twice: `dropped/` files are byte for byte the same."""
    glob = split_input(ROOT / "examples/data/alpaca_mix_600.jsonl", tmp_path / "in", seed=4, parts=2)
    outs = []
    for tag in ("x", "y"):
        config = load_config(str(CONFIGS / "semantic_dedup.yaml"), [f"input.path={glob}", "input.batch_size=100", f"output.path={tmp_path / tag}"])
        run_config(config)
        outs.append({f.name: f.read_bytes() for f in sorted((tmp_path / tag / "dropped").glob("*"))})
    assert outs[0] and outs[0] == outs[1]


def test_output_digest_depends_on_outcome_not_on_shard_order(tmp_path: Path) -> None:
    """Kept ids, drop reasons and details change the digest; shard order and read-drop positions do not."""
    pl.DataFrame({"id": ["b", "a"]}).write_parquet(tmp_path / "k1.parquet")
    pl.DataFrame({"id": ["c"]}).write_parquet(tmp_path / "k2.parquet")
    drops = {"id": ["x", "f.jsonl:3"], "drop_stage": ["filter", "read"], "drop_reason": ["where", "malformed_json"],
             "drop_detail": ["length<3", "line 3"]}
    pl.DataFrame(drops).write_parquet(tmp_path / "d.parquet")
    k1, k2, d = (str(tmp_path / n) for n in ("k1.parquet", "k2.parquet", "d.parquet"))
    base = output_digest([k1, k2], [d])
    assert output_digest([k2, k1], [d]) == base
    pl.DataFrame({**drops, "id": ["x", "g.jsonl:9"], "drop_detail": ["length<3", "line 9"]}).write_parquet(tmp_path / "d2.parquet")
    assert output_digest([k1, k2], [str(tmp_path / "d2.parquet")]) == base
    for change in ({"drop_reason": ["other", "malformed_json"]}, {"drop_detail": ["length<4", "line 3"]}):
        pl.DataFrame({**drops, **change}).write_parquet(tmp_path / "d3.parquet")
        assert output_digest([k1, k2], [str(tmp_path / "d3.parquet")]) != base
    assert output_digest([k1], [d]) != base
    # the definition, line by line: kept ids sorted, non-read drops sorted, read-drop reasons sorted
    lines = "k\ta\nk\tb\nk\tc\n" "d\tx\tfilter\twhere\tlength<3\n" "r\tmalformed_json\n"
    assert base == hashlib.sha256(lines.encode()).hexdigest()[:16]


def test_output_digest_covers_each_branch(tmp_path: Path) -> None:
    """A side branch's kept ids (OUT/branches/<b>/) enter the digest; its shard order does not."""
    for name, ids in (("k", ["a"]), ("p1", ["x", "y"]), ("p2", ["z"]), ("p3", ["x"])):
        pl.DataFrame({"id": ids}).write_parquet(tmp_path / f"{name}.parquet")
    k, p1, p2, p3 = (str(tmp_path / f"{n}.parquet") for n in ("k", "p1", "p2", "p3"))
    base = output_digest([k], [], branches={"dpo": [p1, p2]})
    assert output_digest([k], [], branches={"dpo": [p2, p1]}) == base
    assert output_digest([k], [], branches={"dpo": [p1, p3]}) != base
    assert output_digest([k], [], branches={"pairs": [p1, p2]}) != base
    assert output_digest([k], []) != base
    assert output_digest([k], [], branches={}) == output_digest([k], [])

"""Kill-and-resume: a pipeline run killed mid-stage (SIGKILL), then rerun with the same config,
generates every distinct prompt exactly once in total (counted through the cache and the rerun's
counters)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datacraft.llm.cache import LLMCache

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
DATA = Path(__file__).parent / "data" / "selfinstruct_60.jsonl"

SCRIPT = r"""
import json, sys
import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from datacraft.beam.transform import stage_transform
from datacraft.stages.synthesize.generate import GenerateStage
from datacraft.core.rows import batch_from_rows, make_row
from datacraft.core.stage import RunContext

prompts, cache_dir, stats_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = [make_row([{"role": "user", "content": p}], id=f"r{i}") for i, p in enumerate(prompts)]
stage = GenerateStage({"max_tokens": 8}, context=RunContext(cache_dir=cache_dir, llm={"batch_size": 2}))

def save(stats):
    with open(stats_path, "a") as fh:
        fh.write(json.dumps(stats.to_dict()) + "\n")

with beam.Pipeline(runner=FnApiRunner()) as p:
    outs = p | beam.Create([batch_from_rows(rows)]) | stage_transform(stage)
    outs["stats"] | beam.Map(save)
"""


def test_killed_run_resumes_without_repeating_finished_calls(tmp_path):
    rows = [json.loads(line) for line in DATA.open()]
    distinct = sorted({r["instruction"] for r in rows}, key=len)[:12]
    prompts = distinct + distinct[:3]  # duplicates are generated once too
    cache_dir, stats_path = tmp_path / "cache", tmp_path / "stats.jsonl"
    cmd = [sys.executable, "-c", SCRIPT, json.dumps(prompts), str(cache_dir), str(stats_path)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_before_kill = 0
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (cache_dir / "llm_cache.sqlite").exists():
                with LLMCache(str(cache_dir)) as cache:
                    done_before_kill = len(cache)
                if done_before_kill >= 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"run finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not stats_path.exists()  # killed mid-stage: the stage never reported
    with LLMCache(str(cache_dir)) as cache:
        after_kill = len(cache)
    assert 2 <= after_kill < len(distinct)

    rerun = subprocess.run(cmd, env=env, capture_output=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    counters = json.loads(stats_path.read_text().splitlines()[0])["counters"]
    assert counters["llm.requests"] == len(prompts)
    assert counters["llm.cache_hits"] >= after_kill
    # every distinct prompt generated exactly once over both runs
    assert after_kill + counters["llm.engine_requests"] == len(distinct)
    with LLMCache(str(cache_dir)) as cache:
        assert len(cache) == len(distinct)

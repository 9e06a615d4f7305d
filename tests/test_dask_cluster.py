"""Beam on a real dask.distributed cluster (issue 19): a `dask scheduler` and two `dask worker`
processes on 127.0.0.1 (free ports), the filter, semantic-dedup and GreeDi-selection configs compared
id for id with the in-process run, and a worker killed mid-run. Every process started is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datacraft.pipeline.config import load_config
from datacraft.pipeline.run import run_config

from .conftest import ROOT
from .test_pipeline import _free_port, _wait_port
from .test_reproducible import run_outputs, split_input

pytest.importorskip("distributed")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CASES = {
    "filter": [],
    "semantic_dedup": [],
    "select": ["select.partitions=3"],  # GreeDi: 3 hash partitions, then one round over the candidates
}


def _dask(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture
def scheduler() -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """(address, worker processes) of a scheduler with two single-thread workers without nannies."""
    port = _free_port()
    procs = [_dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")]
    try:
        _wait_port(port)
        address = f"tcp://127.0.0.1:{port}"
        workers = [_dask("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1") for _ in range(2)]
        procs += workers
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address, workers
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        assert all(p.poll() is not None for p in procs)


def _run(name: str, out: Path, glob: str, extra: list[str], beam_args: list[str]) -> dict:
    config = load_config(str(ROOT / "configs" / f"{name}.yaml"), [f"input.path={glob}", "input.batch_size=60", f"output.path={out}", *extra])
    return run_config(config, beam_args)


@pytest.mark.parametrize("name", list(CASES))
def test_config_on_scheduler_and_two_workers_matches_in_process(name: str, scheduler: tuple[str, list], tmp_path: Path) -> None:
    address, _ = scheduler
    glob = split_input(ROOT / "examples/data/alpaca_mix_600.jsonl", tmp_path / "in", seed=5, parts=3)
    _run(name, tmp_path / "inproc", glob, CASES[name], [])
    report = _run(name, tmp_path / "dask", glob, CASES[name], ["--runner=DaskRunner", f"--dask_client_address={address}"])
    assert report["ledger_ok"]
    expected, got = run_outputs(tmp_path / "inproc"), run_outputs(tmp_path / "dask")
    assert got[0] == expected[0] and got[0]
    assert got[1].equals(expected[1])


def test_killed_worker_completes_or_fails_clearly_never_loses_rows(scheduler: tuple[str, list], tmp_path: Path) -> None:
    """One of the two workers is killed (SIGKILL) while the run is under way: dask reschedules its
    tasks on the other; the run either completes with the in-process result and a balanced ledger,
    or raises — it never finishes with rows missing."""
    address, workers = scheduler
    glob = split_input(ROOT / "examples/data/alpaca_mix_600.jsonl", tmp_path / "in", seed=6, parts=6)
    _run("semantic_dedup", tmp_path / "inproc", glob, [], [])
    outcome: dict[str, object] = {}

    def go() -> None:
        try:
            outcome["report"] = _run("semantic_dedup", tmp_path / "dask", glob, [], ["--runner=DaskRunner", f"--dask_client_address={address}"])
        except Exception as e:  # noqa: BLE001 - a clear failure is one of the two allowed outcomes
            outcome["error"] = e

    thread = threading.Thread(target=go)
    thread.start()
    time.sleep(4.0)
    assert thread.is_alive(), "the run finished before a worker could be killed: make the input larger"
    os.killpg(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=900)
    assert not thread.is_alive()
    print(f"killed worker outcome: {'error: ' + repr(outcome['error']) if 'error' in outcome else 'completed'}")
    if "error" in outcome:
        assert str(outcome["error"]), "a failed run must say why"
        return
    assert outcome["report"]["ledger_ok"]  # type: ignore[index]
    expected, got = run_outputs(tmp_path / "inproc"), run_outputs(tmp_path / "dask")
    assert got[0] == expected[0]
    assert got[1].equals(expected[1])

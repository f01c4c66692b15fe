"""The two-process race over real `gandissect run` processes and the real lease (slow).

A computes a run; B, the same spec started from another directory while A computes, reports that the
run is being computed elsewhere by A's pid and exits 1 without touching it; B2 with `--wait` waits and
then finds the run done (computed by another process). A's rows survive, and a third call is up to date.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compute import runner, spec as specmod
from compute.jobs.context import cache_root_for
from db import store
from tests.helpers import analysis, model, write_spec_of

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_two_processes_one_run(tmp_path: Path, tiny_gan: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir(), b_dir.mkdir()
    spec_path = write_spec_of(tmp_path, store="store.duckdb", models=[model("tiny", tiny_gan)],
                              analyses=[analysis("q", "quantiles", "tiny", layers=["layer2", "layer6"],
                                                 samples=3000, seed=5, batch_size=8)])
    env = {k: v for k, v in os.environ.items() if k != "GANDISSECT_DB"}
    env.update(PYTHONPATH=str(ROOT), GANDISSECT_CHECKPOINT_EVERY="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "compute.cli", "run", "--quiet", str(spec_path)]
    s = specmod.load(spec_path)
    key = runner.plan(s)[0].run_key
    lease = cache_root_for(s.store) / f"{key}.lease"

    a = subprocess.Popen(cmd, cwd=a_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not lease.exists() and time.time() < deadline and a.poll() is None:
        time.sleep(0.02)
    assert lease.exists(), "A never took its lease"
    b = subprocess.run(cmd, cwd=b_dir, env=env, capture_output=True, text=True, timeout=300)
    assert a.poll() is None, "A finished before B asked: make A's run longer"
    assert b.returncode == 1, b.stdout + b.stderr
    assert "running elsewhere" in b.stdout and f"pid {a.pid} since" in b.stdout, b.stdout
    b2 = subprocess.run(cmd + ["--wait"], cwd=b_dir, env=env, capture_output=True, text=True, timeout=600)
    a_out, _ = a.communicate(timeout=600)
    assert a.returncode == 0, a_out
    assert b2.returncode == 0, b2.stdout + b2.stderr
    assert "computed by another process" in b2.stdout or "up to date" in b2.stdout, b2.stdout

    runs = store.read("select status, count(*) as n from runs group by status", path=s.store)
    assert runs.rows() == [("done", 1)]
    n = store.read("select count(*) as n from unit_quantiles where run_key = ?", [key], path=s.store)["n"][0]
    assert n > 0
    c = subprocess.run(cmd, cwd=a_dir, env=env, capture_output=True, text=True, timeout=300)
    assert c.returncode == 0 and "up to date" in c.stdout, c.stdout + c.stderr
    assert store.read("select count(*) as n from unit_quantiles where run_key = ?", [key], path=s.store)["n"][0] == n
    assert not (a_dir / ".cache").exists() and not (b_dir / ".cache").exists()
    assert not (cache_root_for(s.store) / key).exists() and not lease.exists()

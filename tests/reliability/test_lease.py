"""Runs and their leases: a run another process holds is skipped (naming its pid) or waited for, a dead
holder's lease is taken over, `.cache/` lives beside the store whatever the working directory, a done
run's leftover cache is cleaned, and `status` tells a live run from a killed one.

The two-process race over real `gandissect run` processes is in test_race.py (slow)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from compute import runner, spec as specmod
from compute.jobs.context import cache_root_for
from compute.runner import Lease
from db import store
from tests.conftest import write_spec

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from compute.runner import Lease; l = Lease(sys.argv[1], sys.argv[2]); "
        "assert l.acquire(); print('held', flush=True); time.sleep(float(sys.argv[3]))")


def _spec(tmp_path: Path, tiny_gan: Path) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    return write_spec(tmp_path, f"""
        [store]
        path = "data/store.duckdb"

        [[models]]
        name = "tiny"
        family = "progan"
        checkpoint = "{tiny_gan}"

        [[analyses]]
        name = "q"
        kind = "quantiles"
        models = ["tiny"]
        layers = ["layer2"]
        samples = 16
        seed = 1
        batch_size = 8
        """)


def _holder(root: Path, key: str, seconds: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(root), key, str(seconds)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_lease_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    a, b = Lease(tmp_path, "k"), Lease(tmp_path, "k")
    assert a.acquire()
    assert not b.acquire(wait=False)
    assert f"pid {os.getpid()} since" in b.holder()
    a.release()
    assert not (tmp_path / "k.lease").exists()
    assert b.acquire(wait=False)
    b.release()


def test_a_held_run_is_skipped_then_taken_over_when_its_holder_dies(tmp_path: Path, tiny_gan: Path,
                                                                    monkeypatch) -> None:
    monkeypatch.delenv("GANDISSECT_DB", raising=False)
    s = specmod.load(_spec(tmp_path, tiny_gan))
    key = runner.plan(s)[0].run_key
    root = cache_root_for(s.store)
    assert root == tmp_path / "data" / ".cache"
    holder = _holder(root, key, 120)
    try:
        lines: list[str] = []
        out = runner.run(s, quiet=True, echo=lines.append)
        assert [o.state for o in out] == ["running elsewhere"]
        assert f"pid {holder.pid} since" in out[0].error and "--wait" in out[0].error
        assert not Path(s.store).exists()  # nothing was started: not even the store file
        assert runner.status(s)[0][1] == "pending"
    finally:
        holder.kill()
        holder.wait()
    out = runner.run(s, quiet=True, echo=lambda m: None)  # the dead holder's lease is free at once
    assert [o.state for o in out] == ["done"]
    assert store.read("select count(*) as n from unit_quantiles", path=s.store)["n"][0] > 0
    assert not (root / key).exists() and not (root / f"{key}.lease").exists()


def test_wait_waits_for_the_holder_then_runs(tmp_path: Path, tiny_gan: Path, monkeypatch) -> None:
    monkeypatch.delenv("GANDISSECT_DB", raising=False)
    s = specmod.load(_spec(tmp_path, tiny_gan))
    key = runner.plan(s)[0].run_key
    holder = _holder(cache_root_for(s.store), key, 2.0)
    lines: list[str] = []
    t0 = time.monotonic()
    out = runner.run(s, quiet=True, wait=True, echo=lines.append)
    holder.wait()
    assert [o.state for o in out] == ["done"]
    assert any(ln.startswith("waiting:") and f"pid {holder.pid}" in ln for ln in lines), lines
    assert time.monotonic() - t0 > 0.5


def test_cache_lives_beside_the_store_and_a_done_runs_leftover_is_cleaned(tmp_path: Path, tiny_gan: Path,
                                                                         monkeypatch) -> None:
    monkeypatch.delenv("GANDISSECT_DB", raising=False)
    spec_path = _spec(tmp_path, tiny_gan)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = specmod.load(spec_path)
    key = runner.plan(s)[0].run_key
    assert [o.state for o in runner.run(s, quiet=True, echo=lambda m: None)] == ["done"]
    assert not (elsewhere / ".cache").exists()
    leftover = tmp_path / "data" / ".cache" / key
    leftover.mkdir(parents=True)  # as if killed between the publish commit and the clean-up
    (leftover / "quantiles.safetensors").write_bytes(b"x")
    assert [o.state for o in runner.run(s, quiet=True, echo=lambda m: None)] == ["up to date"]
    assert not leftover.exists()


def test_status_tells_a_live_run_from_a_killed_one(tmp_path: Path, tiny_gan: Path, monkeypatch) -> None:
    monkeypatch.delenv("GANDISSECT_DB", raising=False)
    s = specmod.load(_spec(tmp_path, tiny_gan))
    job = runner.plan(s)[0]
    store.start_run(job.run_key, "quantiles", name="q", model="tiny", params={}, path=s.store)
    assert runner.status(s)[0][1] == "stopped"
    holder = _holder(cache_root_for(s.store), job.run_key, 120)
    try:
        state, detail = runner.status(s)[0][1:]
        assert state == "running" and f"pid {holder.pid}" in detail
    finally:
        holder.kill()
        holder.wait()


def test_a_store_without_the_schema_reads_as_pending(tmp_path: Path, tiny_gan: Path, monkeypatch) -> None:
    import duckdb

    monkeypatch.delenv("GANDISSECT_DB", raising=False)
    s = specmod.load(_spec(tmp_path, tiny_gan))
    duckdb.connect(s.store).close()  # a DuckDB file made by another tool, without gandissect's tables
    assert [state for _, state, _ in runner.status(s)] == ["pending"]


def test_a_failure_before_the_run_started_touches_no_rows(tmp_path: Path, tiny_gan: Path, monkeypatch) -> None:
    """Rows of a done run survive a later --force attempt that fails before it started its run."""
    monkeypatch.delenv("GANDISSECT_DB", raising=False)
    s = specmod.load(_spec(tmp_path, tiny_gan))
    assert [o.state for o in runner.run(s, quiet=True, echo=lambda m: None)] == ["done"]
    n = store.read("select count(*) as n from unit_quantiles", path=s.store)["n"][0]

    def boom(job, ctx):
        raise OSError("disk full while registering")

    monkeypatch.setattr(runner, "_register", boom)
    out = runner.run(s, quiet=True, force=True, echo=lambda m: None)
    assert [o.state for o in out] == ["failed"]
    assert store.read("select status from runs", path=s.store)["status"].to_list() == ["done"]
    assert store.read("select count(*) as n from unit_quantiles", path=s.store)["n"][0] == n

"""`gandissect watch`: a checkpoint dropped into a glob's folder is dissected on the next tick; one
watcher per spec (a second exits 2 naming the first); SIGTERM stops it cleanly (exit 0).

Reads tiny random generators saved by the tests; writes a store and `.cache/` in tmp_path.

    .venv/bin/python -m pytest -q tests/compute/test_watch.py
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from compute import cli
from compute.watch import WatchError, lock_path, parse_interval
from db import store
from tests.helpers import ROOT, analysis, model, write_spec_of


@pytest.fixture(autouse=True)
def _own_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANDISSECT_DB", raising=False)  # each spec's store, not the caller's


def _tiny_gan(path: Path, seed: int) -> Path:
    """A tiny random ProGAN; another seed gives other weights (so another checkpoint hash, another run)."""
    from ingest.models.progan import Generator, save_progan

    torch.manual_seed(seed)
    save_progan(Generator(z_dim=8, widths=(8,) * 10), path, step=seed)
    return path


def _glob_spec(tmp_path: Path) -> Path:
    (tmp_path / "ckpts").mkdir()
    _tiny_gan(tmp_path / "ckpts" / "a.safetensors", 0)
    return write_spec_of(tmp_path, store=tmp_path / "store.duckdb",
                         models=[model("run", "ckpts/*.safetensors")],
                         analyses=[analysis("q", "quantiles", "run", layers=["layer2"], samples=16, seed=1,
                                            batch_size=8)])


def _done_models(tmp_path: Path) -> list[str]:
    df = store.read("select model from runs where status = 'done' order by model", path=str(tmp_path / "store.duckdb"))
    return df["model"].to_list()


def test_parse_interval() -> None:
    assert [parse_interval(t) for t in ("30s", "10m", "1h", "1d", "90", "0.5m")] == [30, 600, 3600, 86400, 90, 30]
    for bad in ("0", "-5m", "10x", "m", ""):
        with pytest.raises(WatchError):
            parse_interval(bad)


def test_once_twice_picks_up_a_new_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = _glob_spec(tmp_path)
    assert cli.main(["watch", str(spec), "--once"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 1 and "done: q [run@a]" in first[0], first
    assert _done_models(tmp_path) == ["run@a"]

    assert cli.main(["watch", str(spec), "--once"]) == 0  # nothing new: nothing runs, nothing printed
    assert capsys.readouterr().out == ""

    _tiny_gan(tmp_path / "ckpts" / "b.safetensors", 1)
    assert cli.main(["watch", str(spec), "--once"]) == 0
    second = capsys.readouterr().out.splitlines()
    assert len(second) == 1 and "done: q [run@b]" in second[0], second  # one line per new run, a not rerun
    assert _done_models(tmp_path) == ["run@a", "run@b"]


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = _glob_spec(tmp_path)
    assert cli.main(["watch", str(spec), "--every", "soon"]) == 2
    assert "--every 'soon'" in capsys.readouterr().err
    assert cli.main(["watch", str(spec), "--workers", "2"]) == 2  # --workers without --engine ray
    assert "--engine ray" in capsys.readouterr().err
    assert not (tmp_path / "store.duckdb").exists()


def _lines(proc: subprocess.Popen) -> "queue.Queue[str]":
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            q.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_for(q: "queue.Queue[str]", text: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} in {timeout} s; saw {seen}")


def test_watcher_ticks_locks_and_stops_on_sigterm(tmp_path: Path) -> None:
    spec = _glob_spec(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("GANDISSECT_DB", None)
    proc = subprocess.Popen([sys.executable, "-m", "compute.cli", "watch", str(spec), "--every", "1s"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        q = _lines(proc)
        _wait_for(q, "watching")
        _wait_for(q, "done: q [run@a]")
        _tiny_gan(tmp_path / "ckpts" / "b.safetensors", 1)  # dropped into the glob's folder
        _wait_for(q, "done: q [run@b]")                       # picked up by a later tick

        second = subprocess.run([sys.executable, "-m", "compute.cli", "watch", str(spec), "--once"], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert "another watcher (pid" in second.stderr and f"is already watching {spec}" in second.stderr
        assert str(lock_path(spec, tmp_path / "store.duckdb")) in second.stderr

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _wait_for(q, "stopped (SIGTERM)", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _done_models(tmp_path) == ["run@a", "run@b"]
    # the lock died with its holder: a new watcher runs
    assert cli.main(["watch", str(spec), "--once"]) == 0


def test_sigterm_mid_run_abandons_it_and_the_next_tick_resumes(tmp_path: Path) -> None:
    from compute import runner, spec as specmod

    (tmp_path / "ckpts").mkdir()
    _tiny_gan(tmp_path / "ckpts" / "a.safetensors", 0)
    spec = write_spec_of(tmp_path, store=tmp_path / "store.duckdb", models=[model("run", "ckpts/*.safetensors")],
                         analyses=[analysis("q", "quantiles", "run", layers=["layer2"], samples=4096, seed=1,
                                            batch_size=32)])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               GANDISSECT_CHECKPOINT_EVERY="1")
    env.pop("GANDISSECT_DB", None)
    proc = subprocess.Popen([sys.executable, "-m", "compute.cli", "watch", str(spec), "--every", "1h"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        q = _lines(proc)
        deadline = time.monotonic() + 120
        while not list((tmp_path / ".cache").glob("*/*.safetensors")):  # the run has checkpointed a batch
            assert time.monotonic() < deadline and proc.poll() is None, "the run never checkpointed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _wait_for(q, "stopped (SIGTERM)", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ((job, state, _),) = runner.status(specmod.load(spec))
    assert state == "stopped"  # its runs row says running, no process holds its lease
    assert store.read("select count(*) as n from unit_quantiles", path=str(tmp_path / "store.duckdb"))["n"][0] == 0
    (ckpt,) = (tmp_path / ".cache" / job.run_key).glob("*.safetensors")
    from compute.jobs.tally import Checkpoint

    done, _, _ = Checkpoint(ckpt.parent, ckpt.stem).load()
    assert 0 < done < 4096 // 32  # part of the pass is kept for the resume

    assert cli.main(["watch", str(spec), "--once"]) == 0  # resumes from the checkpoint and finishes
    ((_, state, _),) = runner.status(specmod.load(spec))
    assert state == "done"


@pytest.mark.slow
def test_ray_watcher_equals_local_and_stops_on_sigterm(tmp_path: Path) -> None:
    """ray.init installs its own SIGTERM handler (sys.exit): the watcher starts Ray first, so SIGTERM
    still stops it cleanly (exit 0, the stop line)."""
    pytest.importorskip("ray")
    from compute.bench.scale import differing_tables

    spec = _glob_spec(tmp_path)
    local = write_spec_of(tmp_path, store=tmp_path / "local.duckdb", models=[model("run", "ckpts/*.safetensors")],
                          analyses=[analysis("q", "quantiles", "run", layers=["layer2"], samples=16, seed=1,
                                             batch_size=8)], name="local.toml")
    assert cli.main(["watch", str(local), "--once"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("GANDISSECT_DB", None)
    proc = subprocess.Popen([sys.executable, "-m", "compute.cli", "watch", str(spec), "--every", "1h",
                             "--engine", "ray", "--workers", "2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        q = _lines(proc)
        _wait_for(q, "done: q [run@a]", timeout=300)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _wait_for(q, "stopped (SIGTERM)", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _done_models(tmp_path) == ["run@a"]
    assert differing_tables(tmp_path / "local.duckdb", tmp_path / "store.duckdb") == []


def test_a_second_signal_exits_at_once() -> None:
    """The first SIGTERM asks for a clean stop (WatchStop); a second one while stopping exits."""
    import os
    import signal

    from compute.watch import WatchStop, _Signals

    with _Signals():
        with pytest.raises(WatchStop):
            os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.code == 128 + signal.SIGTERM

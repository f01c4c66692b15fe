"""The runner: run keys make re-runs no-ops, failures leave no rows, a SIGKILLed run resumes exactly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compute import runner, spec as specmod
from db import store
from tests.helpers import analysis, model, write_spec, write_spec_of

ROWS = "select layer, unit, q, value from unit_quantiles order by all"
TOPK = "select layer, unit, rank, sample, value from unit_topk order by all"


def _run(path: Path, **kw) -> list[runner.Outcome]:
    return runner.run(specmod.load(path), quiet=True, echo=lambda s: None, **kw)


def test_second_run_computes_nothing_and_force_recomputes(quantile_spec: Path, tmp_path: Path,
                                                          monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = _run(quantile_spec)
    assert [o.state for o in first] == ["done"]
    db = str(tmp_path / "store.duckdb")
    rows = store.read(ROWS, path=db)
    assert len(rows) > 0
    assert store.read("select status from runs", path=db)["status"].to_list() == ["done"]
    second = _run(quantile_spec)
    assert [o.state for o in second] == ["up to date"]
    forced = _run(quantile_spec, force=True)
    assert [o.state for o in forced] == ["done"]
    assert store.read(ROWS, path=db).equals(rows)  # same rows, not duplicated
    assert store.read("select count(*) n from runs", path=db)["n"][0] == 1


def test_run_key_changes_with_parameters(quantile_spec: Path) -> None:
    key = runner.plan(specmod.load(quantile_spec))[0].run_key
    text = quantile_spec.read_text().replace("seed = 3", "seed = 4")
    quantile_spec.write_text(text)
    assert runner.plan(specmod.load(quantile_spec))[0].run_key != key


def test_failed_run_records_error_and_leaves_no_rows(tmp_path: Path, monkeypatch) -> None:
    from ingest.models.progan import Generator, save_progan

    monkeypatch.chdir(tmp_path)
    g = Generator(z_dim=8, widths=(8,) * 10)
    with torch.no_grad():
        g.layer3.conv.weight[2].fill_(float("nan"))  # unit 2 of layer3 becomes NaN
    save_progan(g, tmp_path / "nan.safetensors", step=1)
    path = write_spec(tmp_path, f"""
        [store]
        path = "{tmp_path / 'store.duckdb'}"
        [[models]]
        name = "broken"
        family = "progan"
        checkpoint = "{tmp_path / 'nan.safetensors'}"
        [[analyses]]
        kind = "quantiles"
        models = ["broken"]
        layers = ["layer3"]
        samples = 16
        """)
    out = _run(path)
    assert [o.state for o in out] == ["failed"]
    assert "layer 'layer3' unit 2" in out[0].error
    db = str(tmp_path / "store.duckdb")
    runs = store.read("select status, error from runs", path=db)
    assert runs["status"].to_list() == ["failed"] and "unit 2" in runs["error"][0]
    assert store.read("select count(*) n from unit_quantiles", path=db)["n"][0] == 0


def _spec_for(tmp_path: Path, tiny_gan: Path, name: str) -> Path:
    return write_spec_of(tmp_path, store=tmp_path / name, models=[model("tiny", tiny_gan)],
                         analyses=[analysis("q", "quantiles", "tiny", layers=["layer2", "layer6"], samples=1200,
                                            seed=5, batch_size=8)], name=name + ".toml")


@pytest.mark.slow
def test_sigkill_and_resume_gives_identical_rows(tmp_path: Path, tiny_gan: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir(), b_dir.mkdir()
    spec_a, spec_b = _spec_for(a_dir, tiny_gan, "a.duckdb"), _spec_for(b_dir, tiny_gan, "b.duckdb")
    env = dict(os.environ, GANDISSECT_CHECKPOINT_EVERY="1")
    cmd = [sys.executable, "-m", "compute.cli", "run", "--quiet"]
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    key = runner.plan(specmod.load(spec_a))[0].run_key
    ckpt = a_dir / ".cache" / key / "quantiles.safetensors"

    proc = subprocess.Popen(cmd + [str(spec_a)], cwd=a_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from compute.jobs.context import Checkpoint

    done, _, _ = Checkpoint(ckpt.parent, "quantiles").load()
    assert 0 < done < 150, done  # killed mid-way, with some batches checkpointed
    assert store.read("select status from runs", path=str(a_dir / "a.duckdb"))["status"].to_list() == ["running"]

    resumed = subprocess.run(cmd + [str(spec_a)], cwd=a_dir, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    clean = subprocess.run(cmd + [str(spec_b)], cwd=b_dir, env=env, capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    for sql in (ROWS, TOPK):
        a = store.read(sql, path=str(a_dir / "a.duckdb"))
        b = store.read(sql, path=str(b_dir / "b.duckdb"))
        assert len(a) > 0 and a.equals(b)


def test_runs_params_record_every_default_of_the_analysis(quantile_spec) -> None:
    """Parameters the spec leaves out are recorded with their defaults (and are part of the run key)."""
    import json

    from compute import analyses
    from compute.runner import _job_params

    spec = specmod.load(quantile_spec)
    a = spec.analyses[0]
    p = _job_params(spec, a, "tiny", ("layer2",))
    assert p["topk"] == 20 and p["batch_size"] == 16  # the default, and the spec's value over the default
    for kind in ("quantiles", "dissect", "ace", "ablate", "insert", "trace", "realism", "repair"):
        assert analyses.kind(kind).defaults, kind
    assert {"lr", "l2", "epochs", "steps_per_epoch", "batch"} <= set(analyses.kind("ace").defaults)
    key = runner.plan(spec)[0].run_key
    runner.run(spec, quiet=True, echo=lambda s: None)
    recorded = json.loads(store.read("select params from runs where run_key = ?", [key], path=spec.store)["params"][0])
    assert recorded["topk"] == 20

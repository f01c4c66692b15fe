"""The Ray engine (compute/jobs/ray_engine.py) on a local Ray with 2 CPUs and tiny models: rows equal the
local engine's (quantiles, top-k, dissect IoU + null, realism + coverage), a shard failing once is
retried, a shard always failing fails the run with no rows, a resumed driver runs only missing shards.

    .venv/bin/python -m pytest -q tests/compute/test_ray_engine.py      # skipped when Ray is absent
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from compute import runner, spec as specmod  # noqa: E402
from compute.jobs.ray_engine import RayEngine, shard_ranges  # noqa: E402
from db import store  # noqa: E402
from tests.helpers import analysis, model, segmenter, write_spec_of  # noqa: E402

TABLES = {  # table -> sort columns; rows are read with their run's analysis name instead of the run key
    "unit_quantiles": "layer, unit, q",
    "unit_topk": "layer, unit, rank",
    "unit_iou": "layer, unit, concept",
    "layer_null_iou": "layer",
    "unit_realism": "layer, unit",
    "concept_coverage": "source, concept",
}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for the module (start-up takes seconds)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def _spec(tmp_path: Path, tiny_gan: Path, tiny_seg: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    seg = dict(segmenter="tiny-seg", seed=2, batch_size=8)
    return write_spec_of(
        d, store=d / "store.duckdb", models=[model("tiny", tiny_gan, dataset="village")],
        segmenters=[segmenter("tiny-seg", tiny_seg)],
        analyses=[analysis("q", "quantiles", "tiny", layers=["layer2", "layer4"], samples=40, seed=3, batch_size=8),
                  analysis("dq", "dissect", "tiny", layers=["layer3", "layer8"], samples=40, **seg),
                  analysis("d1", "dissect", "tiny", layers=["layer3"], samples=40, method="one-pass", **seg),
                  analysis("realism", "realism", "tiny", layers=["layer3"], samples=40, top_fraction=0.5,
                           real_samples=20, **seg)])


def _rows(path: Path) -> dict[str, object]:
    db = str(path.parent / "store.duckdb")
    return {t: store.read(f"select r.name, t.* exclude (run_key) from {t} t join runs r using (run_key) "
                          f"order by r.name, {order}", path=db) for t, order in TABLES.items()}


def _run(path: Path, engine: object = "local", **kw: object) -> list[runner.Outcome]:
    return runner.run(specmod.load(path), quiet=True, echo=lambda s: None, engine=engine, **kw)


# The permutation null's variance is a float64 sum over blocks: merging shard sums re-associates it, so it and
# what is computed from it agree to float64 rounding (measured: max relative 3e-16 on null_std, 1e-14 on
# log10_p); every count, IoU, threshold, quantile, top-k, realism and coverage value is equal exactly.
REASSOCIATED = {"unit_iou": ("null_std", "z", "p_value", "q_value", "log10_p")}


def _assert_equal(a: dict, b: dict) -> None:
    import numpy as np

    for t in TABLES:
        assert len(a[t]) > 0 and a[t].shape == b[t].shape, t
        loose = REASSOCIATED.get(t, ())
        exact = [c for c in a[t].columns if c not in loose]
        assert a[t].select(exact).equals(b[t].select(exact)), t
        for c in loose:
            x, y = a[t][c].to_numpy().astype(float), b[t][c].to_numpy().astype(float)
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=0, equal_nan=True, err_msg=f"{t}.{c}")


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory, tiny_gan, tiny_seg) -> dict:
    path = _spec(tmp_path_factory.mktemp("local"), tiny_gan, tiny_seg, "local")
    out = _run(path)
    assert [o.state for o in out] == ["done"] * 4, [o.error for o in out]
    return _rows(path)


def test_shard_ranges_are_contiguous_whole_batches() -> None:
    assert shard_ranges(5, 2) == [(0, 3), (3, 5)]
    assert shard_ranges(2, 4) == [(0, 1), (1, 2)]
    assert shard_ranges(0, 2) == [(0, 0)]


def test_ray_rows_equal_local(local_ray, local_rows, tmp_path, tiny_gan, tiny_seg) -> None:
    path = _spec(tmp_path, tiny_gan, tiny_seg, "ray")
    engine = RayEngine(workers=2)
    out = _run(path, engine)
    assert [o.state for o in out] == ["done"] * 4, [o.error for o in out]
    # 2 shards per pass: q (quantiles), dq (quantiles, iou), d1 (onepass), realism (features)
    assert engine.tasks_run == 2 * 5
    _assert_equal(_rows(path), local_rows)


class FlakyEngine(RayEngine):
    """Shard 1's first batch raises while the flag file exists; `once` deletes the flag on raising."""

    def __init__(self, flag: Path, once: bool, error: type[Exception] = RuntimeError, **kw: object) -> None:
        super().__init__(**kw)
        self.flag, self.once, self.error = str(flag), once, error

    def run_pass(self, job, ctx, name, make, step, n, batch_size):
        first = shard_ranges(len(range(0, n, batch_size)), self.workers or 1)[-1][0] * batch_size
        flag, once, error = self.flag, self.once, self.error

        def flaky(c, stats, start, count):  # runs in the worker (pickled by value)
            if start == first and os.path.exists(flag):
                if once:
                    os.remove(flag)
                raise error(f"injected failure at sample {start}")
            step(c, stats, start, count)

        return super().run_pass(job, ctx, name, make, flaky, n, batch_size)


def test_a_shard_failing_once_is_retried(local_ray, local_rows, tmp_path, tiny_gan, tiny_seg) -> None:
    path = _spec(tmp_path, tiny_gan, tiny_seg, "flaky")
    flag = tmp_path / "fail-once"
    flag.touch()
    out = _run(path, FlakyEngine(flag, once=True, workers=2, max_retries=1))
    assert [o.state for o in out] == ["done"] * 4, [o.error for o in out]
    assert not flag.exists()  # the failure did happen
    _assert_equal(_rows(path), local_rows)


def test_failing_shard_fails_the_run_and_a_new_driver_runs_only_missing_shards(
        local_ray, local_rows, tmp_path, tiny_gan, tiny_seg) -> None:
    path = _spec(tmp_path, tiny_gan, tiny_seg, "resume")
    flag = tmp_path / "fail-always"
    flag.touch()
    out = runner.run(specmod.load(path), only="q", quiet=True, echo=lambda s: None,
                     engine=FlakyEngine(flag, once=False, workers=2, max_retries=1))
    assert [o.state for o in out] == ["failed"]
    assert "shard 1" in out[0].error and "injected failure" in out[0].error and not out[0].bad_input
    db = str(path.parent / "store.duckdb")
    assert store.read("select status from runs", path=db)["status"].to_list() == ["failed"]
    assert store.read("select count(*) n from unit_quantiles", path=db)["n"][0] == 0
    key = out[0].job.run_key
    shards = path.parent / ".cache" / key / "shards"
    assert sorted(f.name for f in shards.iterdir()) == ["quantiles-0-3.safetensors"]  # 5 batches of 8: 3 + 2
    flag.unlink()
    engine = RayEngine(workers=2)
    out = runner.run(specmod.load(path), only="q", quiet=True, echo=lambda s: None, engine=engine)
    assert [o.state for o in out] == ["done"], [o.error for o in out]
    assert engine.tasks_run == 1  # shard 0 came from disk
    rows = _rows(path)
    for t in ("unit_quantiles", "unit_topk"):
        want = local_rows[t].filter(local_rows[t]["name"] == "q")
        assert len(want) > 0 and rows[t].equals(want), t


def _pickled_without_models(*fns: object) -> int:
    """Bytes of the functions pickled as Ray ships them (cloudpickle), failing on any captured nn.Module."""
    import io

    import torch
    from ray import cloudpickle

    class NoModels(cloudpickle.Pickler):
        def reducer_override(self, obj):  # type: ignore[no-untyped-def]
            if isinstance(obj, torch.nn.Module):
                raise AssertionError(f"a pass captures a loaded model ({type(obj).__name__})")
            return super().reducer_override(obj)

    buf = io.BytesIO()
    NoModels(buf).dump(fns)
    return len(buf.getvalue())


def test_sharded_passes_capture_no_models(tmp_path, tiny_gan, tiny_seg) -> None:
    """make/step of the quantile, dissect (two-pass and one-pass) and realism passes pickle without a model."""
    from compute.jobs.tally import LocalEngine

    sizes: dict[str, int] = {}

    class Recording(LocalEngine):
        def run_pass(self, job, ctx, name, make, step, n, batch_size):
            sizes[f"{job.analysis.name}.{name}"] = _pickled_without_models(make, step)
            return super().run_pass(job, ctx, name, make, step, n, batch_size)

    out = _run(_spec(tmp_path, tiny_gan, tiny_seg, "pickle"), Recording())
    assert [o.state for o in out] == ["done"] * 4, [o.error for o in out]
    assert set(sizes) == {"q.quantiles", "dq.quantiles", "dq.iou", "d1.onepass", "realism.realism.features"}
    assert max(sizes.values()) < 1_000_000, sizes  # closures and small tensors (thresholds), no featuremaps


def test_cli_engine_arguments(local_ray, quantile_spec, tmp_path, capsys) -> None:
    """`gandissect run --engine ray --workers 2` computes the local rows; --workers without ray is refused."""
    from compute.cli import main

    assert main(["run", str(quantile_spec), "--workers", "2", "--quiet"]) == 2
    assert "--address and --workers need --engine ray" in capsys.readouterr().err
    db = str(tmp_path / "store.duckdb")
    assert main(["run", str(quantile_spec), "--engine", "ray", "--workers", "2", "--quiet"]) == 0
    ray_rows = store.read("select layer, unit, q, value from unit_quantiles order by all", path=db)
    assert main(["run", str(quantile_spec), "--force", "--quiet"]) == 0
    local = store.read("select layer, unit, q, value from unit_quantiles order by all", path=db)
    assert len(local) > 0 and ray_rows.equals(local)


def test_a_shard_failing_on_bad_input_is_bad_input(local_ray, tmp_path, tiny_gan, tiny_seg) -> None:
    """A shard that fails on a missing file fails the run as bad input (exit status 2), as a local run would."""
    path = _spec(tmp_path, tiny_gan, tiny_seg, "bad")
    flag = tmp_path / "missing"
    flag.touch()
    out = runner.run(specmod.load(path), only="q", quiet=True, echo=lambda s: None,
                     engine=FlakyEngine(flag, once=False, error=FileNotFoundError, workers=2, max_retries=0))
    assert [o.state for o in out] == ["failed"] and out[0].bad_input, out[0].error
    assert "ShardInputError" in out[0].error and "FileNotFoundError" in out[0].error

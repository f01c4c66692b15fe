"""`gandissect bench --only scale`: the sweep's spec, the store comparison behind rows_equal, and (slow, with
Ray) one whole small sweep local vs Ray whose rows must be equal.

Reads the bundled training checkpoints; writes temporary stores.

    .venv/bin/python -m pytest -q tests/compute/test_bench_scale.py
    .venv/bin/python -m pytest -q -m slow tests/compute/test_bench_scale.py     # the sweep (needs Ray)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pytest

from compute import spec as specmod
from compute.bench import scale


def test_sweep_spec_is_one_model_per_training_checkpoint(tmp_path: Path) -> None:
    files = sorted(scale.ZOO.glob(scale.CHECKPOINTS))
    assert files, "no bundled training checkpoints"
    path = tmp_path / "sweep.toml"
    path.write_text(scale.spec_text(tmp_path / "s.duckdb", 8))
    s = specmod.load(path)
    assert sorted(m.name for m in s.models) == sorted(f"sweep@{f.name.split('.')[0]}" for f in files)
    assert sorted(m.checkpoint for m in s.models) == sorted(str(f) for f in files)
    (a,) = s.analyses
    assert a.kind == "dissect" and a.samples == 8 and len(a.models) == len(files)


def _store(path: Path, rows: list[tuple[str, float, str]]) -> Path:
    con = duckdb.connect(str(path))
    con.execute("create table t (name varchar, value double, created_at varchar)")
    con.executemany("insert into t values (?, ?, ?)", rows)
    con.execute("create table u (k integer)")
    con.close()
    return path


def test_differing_tables(tmp_path: Path) -> None:
    a = _store(tmp_path / "a.duckdb", [("x", 1.0, "t0"), ("y", 2.0, "t0")])
    b = _store(tmp_path / "b.duckdb", [("y", 2.0, "t1"), ("x", 1.0, "t1")])  # order and time columns ignored
    c = _store(tmp_path / "c.duckdb", [("x", 1.0, "t0"), ("y", 2.5, "t0")])
    assert scale.compare_stores(a, b) == ([], 0.0)
    assert scale.compare_stores(a, c) == (["t"], pytest.approx(0.5 / 2.5))  # the largest relative difference
    con = duckdb.connect(str(c))
    con.execute("create table extra (k integer)")
    con.close()
    assert scale.compare_stores(a, c) == (["extra", "t"], math.inf)
    d = _store(tmp_path / "d.duckdb", [("x", 1.0, "t0"), ("z", 2.0, "t0")])  # text differs: no ratio
    assert scale.compare_stores(a, d) == (["t"], math.inf)


@pytest.mark.slow
def test_sweep_local_vs_ray(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    rows = {r["metric"]: r for r in scale.bench_scale(samples=32, workers=2)}
    params = json.loads(rows["speedup"]["params"])
    assert params["runs"] == len(params["checkpoints"]) == len(list(scale.ZOO.glob(scale.CHECKPOINTS)))
    # counts are exact; float sums merged in shard order may differ in the last bits (the null's variance)
    assert rows["max_rel_diff"]["value"] < 1e-12, params["tables_differing"]
    assert rows["rows_equal"]["value"] == (0.0 if params["tables_differing"] else 1.0)
    ray_s, local_s = rows["ray_2workers_s"]["value"], rows["local_1thread_s"]["value"]
    assert rows["speedup"]["value"] == pytest.approx(local_s / ray_s)
    assert rows["speedup_vs_threads"]["value"] == pytest.approx(rows["local_2threads_s"]["value"] / ray_s)


def test_max_rel_diff_never_hides_a_difference() -> None:
    """NaN against a number or inf against a finite value is an infinite difference, not 0."""
    import math

    from compute.bench.scale import _max_rel_diff

    assert _max_rel_diff([(1.0, 2)], [(1.0, 2)]) == 0.0
    assert 0 < _max_rel_diff([(1.0,)], [(1.0 + 1e-15,)]) < 1e-14
    assert _max_rel_diff([(1.0,)], [(float("nan"),)]) == math.inf
    assert _max_rel_diff([(1.0,)], [(float("inf"),)]) == math.inf
    assert _max_rel_diff([(1.0,)], []) == math.inf

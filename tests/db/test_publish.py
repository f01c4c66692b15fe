"""publish / publish_many / runs bookkeeping / dimensions / flags / benchmarks / read."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from db import store
from tests.db.fixture_store import MODEL, iou_row

LAYER = "layer1"


def _setup(path: Path, units: int = 4, runs: tuple[str, ...] = ("a", "b")) -> None:
    store.upsert_dimension("models", [{"model": MODEL, "family": "progan"}], path)
    store.upsert_dimension("layers", [{"model": MODEL, "layer": LAYER, "layer_index": 0, "units": units}], path)
    for key in runs:
        store.start_run(key, "quantiles", model=MODEL, layer=LAYER, path=path)


def _quantiles(units: int, qs=(0.1, 0.5, 0.99), offset: float = 0.0) -> list[dict]:
    return [{"model": MODEL, "layer": LAYER, "unit": u, "q": q, "value": u + q + offset}
            for u in range(units) for q in qs]


def _slice(path: Path, table: str, run_key: str) -> pl.DataFrame:
    return store.read(f"SELECT * FROM {table} WHERE run_key = ? ORDER BY ALL", [run_key], path=path)


def test_publish_twice_gives_identical_rows(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    _setup(path)
    assert store.publish("unit_quantiles", "a", _quantiles(4), path) == 12
    first = _slice(path, "unit_quantiles", "a")
    store.publish("unit_quantiles", "a", _quantiles(4), path)
    assert _slice(path, "unit_quantiles", "a").equals(first)
    assert first.height == 12


def test_publish_replaces_only_that_runs_slice(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    _setup(path)
    store.publish("unit_quantiles", "a", _quantiles(4), path)
    store.publish("unit_quantiles", "b", _quantiles(4, offset=1.0), path)
    b = _slice(path, "unit_quantiles", "b")
    store.publish("unit_quantiles", "a", _quantiles(2, qs=(0.5,), offset=7.0), path)
    a = _slice(path, "unit_quantiles", "a")
    assert a["value"].to_list() == [7.5, 8.5]
    assert _slice(path, "unit_quantiles", "b").equals(b)


def test_rows_may_be_dicts_polars_or_arrow_and_nullable_columns_may_be_absent(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    _setup(path)
    rows = [iou_row("a", LAYER, u, "tree", 0.1 * (u + 1)) for u in range(3)]
    rows[0]["z"] = np.float32(2.5)  # numpy scalars are fine
    store.publish("unit_iou", "a", rows, path)
    as_dicts = _slice(path, "unit_iou", "a")
    assert as_dicts["z"].to_list() == [2.5, None, None]
    frame = pl.DataFrame([{k: v for k, v in r.items() if k != "z"} for r in rows])
    store.publish("unit_iou", "a", frame, path)
    store.publish("unit_iou", "a", frame.to_arrow(), path)
    again = _slice(path, "unit_iou", "a")
    assert again.drop("z").equals(as_dicts.drop("z")) and again["z"].null_count() == 3


@pytest.mark.parametrize("table,rows,message", [
    ("unit_quantiles", [{"model": MODEL, "layer": LAYER, "unit": 0, "q": 0.5, "value": 1, "bogus": 1}],
     "has no column(s) bogus"),
    ("unit_quantiles", [{"model": MODEL, "layer": LAYER, "unit": 0, "q": 0.5}], "lack required column(s) value"),
    ("unit_quantiles", [{"run_key": "b", "model": MODEL, "layer": LAYER, "unit": 0, "q": 0.5, "value": 1}],
     "carry run_key"),
    ("no_such_table", [], "no table 'no_such_table'"),
    ("models", [], "not a per-run result table"),
    ("unit_quantiles", [{"model": MODEL, "layer": LAYER, "unit": "x", "q": 0.5, "value": 1}], "unit_quantiles:"),
])
def test_publish_validates_rows(tmp_path, table, rows, message) -> None:
    path = tmp_path / "s.duckdb"
    _setup(path)
    with pytest.raises(store.PublishError, match=message.replace("(", r"\(").replace(")", r"\)")):
        store.publish(table, "a", rows, path)


def test_publish_needs_a_started_run(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    _setup(path, runs=())
    with pytest.raises(store.PublishError, match="call start_run first"):
        store.publish("unit_quantiles", "zzz", _quantiles(1), path)


def test_publish_many_is_one_transaction_with_the_done_status(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    _setup(path)
    store.publish_many("a", {"unit_quantiles": _quantiles(4)}, {"status": "done", "seconds": 3.0}, path)
    run = store.read("SELECT status, seconds, finished_at, error FROM runs WHERE run_key = 'a'", path=path).row(0)
    assert run[0] == "done" and run[1] == 3.0 and run[2] is not None and run[3] is None
    before = _slice(path, "unit_quantiles", "a")
    bad_topk = [{"model": MODEL, "layer": LAYER, "unit": 0, "rank": 1, "seed": 1, "sample": 0, "value": 1.0},
                {"model": MODEL, "layer": LAYER, "unit": 0, "rank": 1, "seed": 1, "sample": 3, "value": 1.0}]
    with pytest.raises(store.AuditError, match="unique_unit_topk") as err:
        store.publish_many("a", {"unit_quantiles": _quantiles(1), "unit_topk": bad_topk},
                           {"status": "done", "seconds": 9.0}, path)
    assert err.value.failures[0][0] == "unique_unit_topk"
    assert _slice(path, "unit_quantiles", "a").equals(before)  # rolled back: nothing changed
    assert _slice(path, "unit_topk", "a").height == 0
    assert store.read("SELECT seconds FROM runs WHERE run_key = 'a'", path=path).item() == 3.0


def test_publish_refuses_out_of_range_values_and_unregistered_layers(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    _setup(path)
    with pytest.raises(store.AuditError, match="iou_range"):
        store.publish("unit_iou", "a", [iou_row("a", LAYER, 0, "tree", 0.3) | {"iou": 1.5}], path)
    with pytest.raises(store.AuditError, match="units_out_of_range"):
        store.publish("unit_quantiles", "a", _quantiles(5), path)
    with pytest.raises(store.AuditError, match="rows_on_unregistered_layers"):
        store.publish("unit_quantiles", "a", [{"model": MODEL, "layer": "nope", "unit": 0, "q": 0.5,
                                               "value": 1.0}], path)
    assert store.read("SELECT count(*) FROM unit_iou", path=path).item() == 0


def test_start_run_again_clears_old_rows_and_failure_leaves_none(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    _setup(path)
    store.publish_many("a", {"unit_quantiles": _quantiles(4)}, {"status": "done", "seconds": 1.0}, path)
    store.start_run("a", "quantiles", model=MODEL, layer=LAYER, params={"seed": 2}, path=path)
    assert _slice(path, "unit_quantiles", "a").height == 0
    run = store.read("SELECT status, finished_at, params FROM runs WHERE run_key = 'a'", path=path).row(0)
    assert run == ("running", None, '{"seed":2}')
    store.publish("unit_quantiles", "a", _quantiles(4), path)
    store.fail_run("a", "ValueError: boom", 2.0, path=path)
    assert _slice(path, "unit_quantiles", "a").height == 0
    assert store.read("SELECT status, error FROM runs WHERE run_key = 'a'", path=path).row(0) == \
        ("failed", "ValueError: boom")
    assert store.run_audits(path) == []
    with pytest.raises(store.PublishError, match="JSON"):
        store.start_run("c", "x", params="{not json", path=path)
    with pytest.raises(store.PublishError, match="'done' or 'failed'"):
        store.finish_run("a", "running", path=path)


def test_publish_100k_rows_is_fast(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    _setup(path, units=512)
    n_units, qs = 512, np.linspace(0.0, 1.0, 200)
    unit = np.repeat(np.arange(n_units), len(qs))
    frame = pa.table({"model": [MODEL] * unit.size, "layer": [LAYER] * unit.size, "unit": unit,
                      "q": np.tile(qs, n_units), "value": unit + np.tile(qs, n_units)})
    assert frame.num_rows > 100_000
    t0 = time.perf_counter()
    store.publish_many("a", {"unit_quantiles": frame}, {"status": "done", "seconds": 1.0}, path)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.publish_many("a", {"unit_quantiles": frame}, {"status": "done", "seconds": 1.0}, path)
    second = time.perf_counter() - t0
    print(f"publish {frame.num_rows} rows: {first:.2f} s, replace: {second:.2f} s")
    assert store.read("SELECT count(*) FROM unit_quantiles", path=path).item() == frame.num_rows
    assert second < 5.0
    dicts = frame.slice(0, 20_000).to_pylist()
    t0 = time.perf_counter()
    store.publish("unit_quantiles", "b", dicts, path)
    print(f"publish 20000 dict rows: {time.perf_counter() - t0:.2f} s")


def test_dimensions_flags_and_benchmarks(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    _setup(path, runs=())
    store.upsert_dimension("models", [{"model": MODEL, "family": "progan", "z_dim": 8}], path)
    store.upsert_dimension("models", [{"model": MODEL, "family": "progan", "dataset": "village"}], path)
    m = store.read("SELECT family, dataset, z_dim, registered_at FROM models", path=path)
    assert m.height == 1 and m.row(0)[:3] == ("progan", "village", 8) and m.row(0)[3] is not None
    with pytest.raises(store.PublishError, match="not a dimension"):
        store.upsert_dimension("runs", [], path)
    store.set_flag(MODEL, LAYER, 2, "artifact", "smudge", path=path)
    store.set_flag(MODEL, LAYER, 2, "artifact", "smudge 2", path=path)
    store.set_flag(MODEL, LAYER, 3, "label", "doorway", path=path)
    flags = store.read("SELECT unit, flag, note FROM unit_flags ORDER BY unit", path=path)
    assert flags.rows() == [(2, "artifact", "smudge 2"), (3, "label", "doorway")]
    store.clear_flag(MODEL, LAYER, 2, "artifact", path=path)
    assert store.read("SELECT count(*) FROM unit_flags", path=path).item() == 1
    for bad, msg in [((MODEL, LAYER, 9, "artifact"), "out of range"), ((MODEL, "zz", 0, "artifact"), "no layer"),
                     ((MODEL, LAYER, 0, "weird"), "unknown flag"), ((MODEL, LAYER, 0, "label"), "label text")]:
        with pytest.raises(store.PublishError, match=msg):
            store.set_flag(*bad, path=path)
    store.record_benchmarks([{"bench": "edit", "metric": "median_ms", "value": 12.0, "unit": "ms",
                              "params": {"n": 50}}], path)
    store.record_benchmarks([{"bench": "edit", "metric": "median_ms", "value": 11.0, "unit": "ms"}], path)
    b = store.read("SELECT value, params FROM benchmarks", path=path)
    assert b.rows() == [(11.0, None)]


def test_read_on_a_missing_store(tmp_path) -> None:
    missing = tmp_path / "nothing.duckdb"
    with pytest.raises(store.StoreNotFound, match="run `gandissect run` first"):
        store.read("SELECT 1", path=missing)
    empty = store.read("SELECT * FROM unit_labels", path=missing, missing_ok=True)
    assert empty.height == 0 and "interpretable" in empty.columns
    assert not missing.exists()


def test_default_path_comes_from_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GANDISSECT_DB", str(tmp_path / "env.duckdb"))
    assert store.store_path() == str(tmp_path / "env.duckdb")
    store.connect().close()
    assert (tmp_path / "env.duckdb").exists()


def test_connect_waits_for_a_lock_held_by_another_process(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    store.connect(path).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time, duckdb
        con = duckdb.connect({str(path)!r})
        print("locked", flush=True)
        time.sleep(1.5)
        con.close()
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(store.StoreLocked, match="stayed locked"):
            store.connect(path, read_only=True, timeout=0.3)
        assert time.monotonic() - t0 < 1.2
        df = store.read("SELECT count(*) AS n FROM runs", path=path, timeout=20)  # retries until released
        assert df["n"].item() == 0
        assert time.monotonic() - t0 >= 1.0
    finally:
        holder.wait(timeout=30)

"""The SQL guard refuses anything but one read-only SELECT, and limits rows and time."""
from __future__ import annotations

import shutil
import time

import pytest

from db import store
from db.guard import GuardError, check_sql, guarded_query, run_guarded


@pytest.fixture(scope="module")
def small_store(small_store_master, tmp_path_factory):
    """One copy of the small store for this module (the guard only reads)."""
    dst = tmp_path_factory.mktemp("guard") / "small.duckdb"
    shutil.copy(small_store_master, dst)
    return dst


@pytest.mark.parametrize("sql,reason", [
    ("copy (select 1) to '{tmp}/x.csv'", "COPY"),
    ("attach '{tmp}/other.duckdb'", "ATTACH"),
    ("drop table runs", "DROP"),
    ("set enable_external_access=true", "SET"),
    ("reset enable_external_access", "SET"),
    ("load httpfs", "LOAD"),
    ("install httpfs", "INSTALL"),
    ("delete from runs", "DELETE"),
    ("insert into runs (run_key) values ('x')", "INSERT"),
    ("update runs set status = 'done'", "UPDATE"),
    ("create table t as select 1", "CREATE"),
    ("create macro m() as 1", "CREATE"),
    ("export database '{tmp}/dump'", "EXPORT"),
    ("import database '{tmp}/dump'", "PRAGMA"),
    ("pragma enable_profiling", "PRAGMA"),
    ("detach other", "DETACH"),
    ("use other", "SET"),
    ("checkpoint", "CHECKPOINT"),
    ("analyze", "ANALYZE"),
    ("pivot runs on status using count(*)", "PIVOT"),
    ("vacuum", "VACUUM"),
    ("begin transaction", "transaction"),
    ("select 1; drop table runs", "2 statements"),
    ("select 1; select 2", "2 statements"),
    ("explain analyze copy (select 1) to '{tmp}/y.csv'", "EXPLAIN"),
    ("", "empty"),
])
def test_refused_before_running(small_store, tmp_path, sql, reason) -> None:
    out = tmp_path / "out"
    out.mkdir()
    sql = sql.format(tmp=out)
    with pytest.raises(GuardError, match=f"^refused: .*{reason}") as err:
        guarded_query(sql, path=small_store)
    assert err.value.refused and "\n" not in str(err.value)
    assert list(out.iterdir()) == []  # nothing written
    assert store.read("SELECT count(*) FROM runs", path=small_store).item() == 11


@pytest.mark.parametrize("sql", [
    "select * from read_csv('/etc/hostname')",
    "select * from read_text('/etc/hostname')",
    "select * from glob('/etc/*')",
    "select * from read_parquet('{tmp}/x.parquet')",
    "from query('drop table runs')",
])
def test_reaching_outside_the_store_is_refused(small_store, tmp_path, sql) -> None:
    with pytest.raises(GuardError) as err:
        guarded_query(sql.format(tmp=tmp_path), path=small_store)
    assert "refused" in str(err.value) or "query failed" in str(err.value)
    if "read_" in sql or "glob" in sql:
        assert err.value.refused and "external access" in str(err.value)
    assert store.read("SELECT count(*) FROM runs", path=small_store).item() == 11


@pytest.mark.parametrize("sql", [
    "select model, layer, unit, concept from unit_labels order by iou desc",
    "with t as (select * from runs) select count(*) from t",
    "from unit_iou limit 3;",
    "show tables",
    "describe unit_iou",
    "summarize unit_quantiles",
    "explain select * from runs",
    "select table_name, comment from duckdb_tables()",
    "select * from unit_labels_realistic(100.0)",
])
def test_read_queries_run(small_store, sql) -> None:
    assert check_sql(sql)
    assert guarded_query(sql, path=small_store).height >= 1


def test_row_limit(small_store) -> None:
    res = run_guarded("select * from unit_iou", path=small_store, row_limit=5)
    assert res.frame.height == 5 and res.truncated
    res = run_guarded("select * from runs", path=small_store, row_limit=100)
    assert res.frame.height == 11 and not res.truncated


def test_time_limit_stops_a_long_query(small_store) -> None:
    t0 = time.monotonic()
    with pytest.raises(GuardError, match="time limit of 0.5 s"):
        guarded_query("select count(*) from range(100000000000) t(i) where i % 7 = 3", path=small_store,
                      timeout_s=0.5)
    assert time.monotonic() - t0 < 5


def test_errors_are_one_clear_line(small_store, tmp_path) -> None:
    with pytest.raises(GuardError, match="^syntax error") as err:
        guarded_query("selec 1", path=small_store)
    assert not err.value.refused
    with pytest.raises(GuardError, match="^query failed: Catalog Error") as err:
        guarded_query("select * from no_such_table", path=small_store)
    assert "\n" not in str(err.value)
    with pytest.raises(GuardError, match="no store at"):
        guarded_query("select 1", path=tmp_path / "missing.duckdb")
    empty = guarded_query("select * from unit_labels", path=tmp_path / "missing.duckdb", missing_ok=True)
    assert empty.height == 0
    with pytest.raises(GuardError, match="external access"):
        guarded_query("select * from read_csv('/etc/hostname')", path=tmp_path / "missing.duckdb", missing_ok=True)

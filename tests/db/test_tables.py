"""The Table declarations (db/tables.py) and schema.sql agree exactly; views and audits are declared."""
from __future__ import annotations

import re
import subprocess
import sys

import duckdb

from db import store
from db.tables import RESULT_TABLES, SCHEMA_SQL, TABLES, parse_schema


def test_declarations_match_parsed_schema() -> None:
    parsed = parse_schema()
    assert list(parsed) == list(TABLES)
    for name, t in TABLES.items():
        p = parsed[name]
        assert p.columns == t.columns, name
        assert p.required == t.required, name
        assert p.grain == t.grain, name
        assert p.key == t.key, name
        assert t.grain.startswith("one row per "), name
        assert all(p.comments[c] for c in t.names), f"{name}: every column needs a -- comment"
        assert set(t.key) <= set(t.names) and set(t.key) <= set(t.required), name


def test_declarations_match_the_database_catalog() -> None:
    con = duckdb.connect(":memory:")
    con.execute(SCHEMA_SQL.read_text())
    rows = con.execute("SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                       "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall()
    got: dict[str, list[tuple[str, str, bool]]] = {}
    for table, col, typ, nullable in rows:
        got.setdefault(table, []).append((col, typ, nullable == "NO"))
    assert set(got) == set(TABLES)
    for name, t in TABLES.items():
        assert got[name] == [(c, typ, c in t.required) for c, typ in t.columns], name
    pks = {r[0]: tuple(r[1]) for r in con.execute(
        "SELECT table_name, constraint_column_names FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY'"
    ).fetchall()}
    for name, t in TABLES.items():
        if t.per_run:
            assert name not in pks, f"{name}: result tables have no primary key (audits check the grain)"
        else:
            assert pks[name] == t.key, name


def test_every_table_has_a_grain_uniqueness_audit() -> None:
    audits = store.audits()
    for name, t in TABLES.items():
        sql = audits[f"unique_{name}"]
        assert re.search(rf"FROM {name} GROUP BY {', '.join(t.key)} HAVING count\(\*\) > 1", sql), name


def test_store_documents_itself_and_views_exist(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    with store.session(path) as con:
        comments = dict(con.execute("SELECT table_name, comment FROM duckdb_tables()").fetchall())
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        col = con.execute("SELECT comment FROM duckdb_columns() WHERE table_name = 'unit_iou' "
                          "AND column_name = 'iou'").fetchall()[0][0]
    assert {n: t.grain for n, t in TABLES.items()} == comments
    assert "NULL when the concept never appears" in col
    views_sql = store.views_sql()  # views.sql with its <table>_latest template written out
    declared = re.findall(r"^-- view: (\w+)", views_sql, re.M)
    macros = set(re.findall(r"^CREATE OR REPLACE MACRO (\w+)", views_sql, re.M))
    assert macros == {"unit_labels_realistic", "realism_label_counts"}
    assert set(declared) - macros == views
    for m in macros:  # every table macro runs on an empty store
        assert store.read(f"SELECT * FROM {m}(1.0)", path=path).height == 0
    assert len(declared) == len(set(declared))
    assert len(re.findall(r"^-- grain: one row per", views_sql, re.M)) == len(declared)
    assert "{" not in views_sql
    for v in views:  # every view runs on an empty store
        assert store.read(f"SELECT * FROM {v}", path=path).height == 0


def test_schema_is_idempotent_and_adds_missing_columns(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE unit_realism (run_key VARCHAR NOT NULL, model VARCHAR NOT NULL, "
                "layer VARCHAR NOT NULL, unit INTEGER NOT NULL, frechet DOUBLE NOT NULL)")
    con.close()
    for _ in range(2):
        store.connect(path).close()
    cols = store.read("SELECT column_name FROM duckdb_columns() WHERE table_name = 'unit_realism'", path=path)
    assert cols["column_name"].to_list() == list(TABLES["unit_realism"].names)
    fp = store.read("SELECT value FROM store_meta WHERE key = 'schema_sha256'", path=path).item()
    assert fp == store.schema_fingerprint()


def test_db_never_imports_torch() -> None:
    code = "import sys, db.store, db.guard, db.tables; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_latest_keys_are_columns_of_their_tables() -> None:
    for name, t in TABLES.items():
        assert set(t.latest) <= set(t.names), name
        assert not t.latest or name in RESULT_TABLES, name


def test_fingerprint_covers_the_expanded_views(monkeypatch) -> None:
    """A change to a table's `latest` declaration changes the fingerprint, so the DDL is re-applied."""
    before = store.schema_fingerprint()
    t = TABLES["unit_topk"]
    store.views_sql.cache_clear()
    try:
        monkeypatch.setitem(TABLES, "unit_topk", type(t)(t.name, t.grain, t.key, t.columns, t.required,
                                                          ("model", "layer", "unit")))
        changed = store.views_sql()
        assert "PARTITION BY t.model, t.layer, t.unit)" in changed
        assert store.schema_fingerprint() != before
    finally:
        monkeypatch.undo()
        store.views_sql.cache_clear()
    assert store.schema_fingerprint() == before


def test_audit_table_lists_are_written_out_from_tables() -> None:
    audits = store.audits()
    assert not [n for n, sql in audits.items() if "{" in sql or "-- each" in sql]
    for name in ("rows_of_runs_not_done", "rows_model_differs_from_run"):
        assert set(re.findall(r"SELECT DISTINCT '(\w+)' AS tbl", audits[name])) == set(RESULT_TABLES), name
    layers = set(re.findall(r"SELECT DISTINCT '(\w+)' AS tbl", audits["rows_on_unregistered_layers"]))
    assert layers == {n for n in RESULT_TABLES if {"model", "layer"} <= set(TABLES[n].names)}

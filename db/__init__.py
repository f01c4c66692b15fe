"""The DuckDB store (never imports torch): schema.sql, views.sql, audits.sql, tables.py (Table
declarations), store.py (connect / read / publish / runs / audits) and guard.py (user SQL)."""

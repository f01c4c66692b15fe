"""Compare two stores table by table: are the rows equal, leaving out time columns?

Reads two DuckDB store files (read-only); writes nothing. Used to check that a refactor leaves every
stored row unchanged: build the demo store with the old and the new code, then

    python -m compute.reports.store_diff OLD.duckdb NEW.duckdb
"""
from __future__ import annotations

import sys

import duckdb

TIME_COLUMNS = {"created_at", "started_at", "finished_at", "seconds", "pid", "path", "updated_at",
                "computed_at", "host", "wall_seconds"}


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall()}


def _kept(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()
            if r[0] not in TIME_COLUMNS and not r[0].endswith("_at") and "second" not in r[0]]


def table_rows(a: duckdb.DuckDBPyConnection, b: duckdb.DuckDBPyConnection, table: str) -> tuple[list[tuple], list[tuple]]:
    """A table's rows in both stores, over the columns both keep (time columns left out), sorted."""
    cols = [c for c in _kept(a, table) if c in set(_kept(b, table))]
    sel = ", ".join(f'"{c}"' for c in cols)
    return (a.execute(f'SELECT {sel} FROM "{table}" ORDER BY ALL').fetchall(),
            b.execute(f'SELECT {sel} FROM "{table}" ORDER BY ALL').fetchall())


def main(argv: list[str] | None = None) -> int:
    old_path, new_path = (argv if argv is not None else sys.argv[1:])[:2]
    old, new = duckdb.connect(old_path, read_only=True), duckdb.connect(new_path, read_only=True)
    t_old, t_new = _tables(old), _tables(new)
    print("only in old:", sorted(t_old - t_new))
    print("only in new:", sorted(t_new - t_old))
    for t in sorted(t_old & t_new):
        ra, rb = table_rows(old, new, t)
        if ra == rb:
            print(f"{t}: equal ({len(ra)} rows)")
        else:
            sa, sb = set(ra), set(rb)
            print(f"{t}: DIFFER old {len(ra)} new {len(rb)}; only in old {len(sa - sb)}, only in new {len(sb - sa)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

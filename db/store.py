"""The DuckDB store: connect (with retry on the file lock), read, publish, runs bookkeeping, audits.

Reads and writes the store file (`path` argument, else env GANDISSECT_DB, else "gandissect.duckdb"),
and db/schema.sql, db/views.sql, db/audits.sql. DuckDB allows one writer process or many reader
processes, never both, so every connection here is short and every connect retries with exponential
backoff (and jitter) while another process holds the lock. Never hold a connection across compute.

    from db import store
    store.start_run("ab12...", "dissect", model="village-gan", params={"threshold": "q0.99"})
    store.publish_many("ab12...", {"unit_iou": rows, "unit_quantiles": frame},
                       finish={"status": "done", "seconds": 12.5})
    df = store.read("select * from unit_labels where model = ?", ["village-gan"])

Result rows of a run become visible together with its status 'done' when published with
`publish_many(..., finish=...)` (one transaction: delete the run's slice, insert, write its run_layers,
mark done, audit). `start_run` stores the run's parsed threshold (db.threshold) in the runs row. Opening an
older store for writing migrates it: missing tables and columns are added, and run_layers and the
threshold columns are back-filled (`_backfill`).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar, Union

import duckdb
import polars as pl
import pyarrow as pa

try:
    import fcntl
except ImportError:  # not POSIX: no writer gate, plain retry
    fcntl = None  # type: ignore[assignment]

from db.errors import BadInput
from db.tables import (AUDITS_SQL, DIMENSIONS, LATEST_TABLES, RESULT_TABLES, SCHEMA_SQL, TABLES, VIEWS_SQL, Table,
                       parse_schema, result_tables_with)
from db.threshold import THRESHOLD_COLUMNS, run_columns

DEFAULT_PATH = "gandissect.duckdb"
DEFAULT_TIMEOUT_S = float(os.environ.get("GANDISSECT_DB_TIMEOUT", "30"))  # read-only connects
WRITE_TIMEOUT_S = float(os.environ.get("GANDISSECT_DB_WRITE_TIMEOUT", "120"))  # write connects
# every connection: never download or auto-load an extension (a foreign file must not make DuckDB fetch
# e.g. sqlite_scanner). One base configuration for all, since DuckDB refuses two connections of one
# process to one file with different configurations.
BASE_CONFIG: dict[str, Any] = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
DUCKDB_MAGIC = b"DUCK"  # bytes 8..12 of every DuckDB database file
FLAGS = ("artifact", "watermark", "interesting", "label")

Rows = Union[Sequence[Mapping[str, Any]], pl.DataFrame, pa.Table]
T = TypeVar("T")


class StoreError(RuntimeError):
    """Anything the store refuses or cannot do; the message is one clear line."""


class StoreLocked(StoreError):
    """Another process kept the store's lock for longer than the retry window."""


class StorePathError(StoreError, BadInput):
    """The store path is not usable: a directory, an empty or foreign file, a path under a file,
    an uncreatable location (bad input: the CLI exits 2)."""


class StoreNotFound(StoreError, FileNotFoundError):
    """A read-only connection to a store file that does not exist."""


class PublishError(StoreError, ValueError):
    """Rows that do not fit their table, or a run that does not exist."""


class AuditError(StoreError):
    """Audits failed; `failures` holds (audit name, number of offending rows)."""

    def __init__(self, message: str, failures: list[tuple[str, int]]) -> None:
        super().__init__(message)
        self.failures = failures


# ---------------------------------------------------------------- connections

def store_path(path: str | os.PathLike | None = None) -> str:
    """The store file: `path`, else $GANDISSECT_DB, else "gandissect.duckdb"."""
    return str(path) if path is not None else os.environ.get("GANDISSECT_DB") or DEFAULT_PATH


def _is_lock_error(e: Exception) -> bool:
    msg = str(e)
    return ("lock" in msg.lower() and isinstance(e, duckdb.IOException)) or (
        isinstance(e, duckdb.ConnectionException) and "different configuration" in msg)


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> tuple | None:
    """First row of a query, with the result fully consumed (DuckDB 2 refuses new work on a
    connection while a result from execute() is unfinished)."""
    rows = con.execute(sql, params).fetchall()
    return rows[0] if rows else None


def now_utc() -> dt.datetime:
    """Naive UTC timestamp (the TIMESTAMP columns hold UTC)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def connect(path: str | os.PathLike | None = None, read_only: bool = False, *,
            timeout: float | None = None, config: Mapping[str, Any] | None = None
            ) -> duckdb.DuckDBPyConnection:
    """Open the store, retrying with exponential backoff while another process holds its lock.

    A write connection creates the file and its schema (tables, views) when needed. A read-only
    connection to a missing file raises `StoreNotFound`. Raises `StoreLocked` after `timeout`
    seconds (default: $GANDISSECT_DB_TIMEOUT or 30 for read-only, $GANDISSECT_DB_WRITE_TIMEOUT or
    120 for write). Close it soon: prefer `session()` or `read()`.

    Writers get priority: a writer waiting for the lock holds an exclusive flock on `<store>.gate`,
    and read-only connects wait while it is held, so a stream of short readers cannot starve it.
    """
    p = store_path(path)
    timeout = (DEFAULT_TIMEOUT_S if read_only else WRITE_TIMEOUT_S) if timeout is None else timeout
    if p != ":memory:":
        if read_only and not Path(p).exists():
            check_store_path(p)  # a path under a regular file says so
            raise StoreNotFound(f"no store at {p}: run `gandissect run` first")
        check_store_path(p)
        if not read_only:
            try:
                Path(p).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorePathError(f"store {p}: cannot create its directory: {e.strerror or e}") from None
    con = _connect_with_retry(p, read_only, timeout, {**BASE_CONFIG, **dict(config or {})})
    if not read_only:
        try:
            ensure_schema(con)
        except BaseException:
            con.close()
            raise
    return con


def check_store_path(p: str | os.PathLike) -> None:
    """Refuse a store path DuckDB must not open (StorePathError, one line), before anything is created:
    a directory, a path under a regular file, an empty file, a file that is not a DuckDB database
    (e.g. SQLite: DuckDB would try to install an extension to read it), an unreadable file."""
    path = Path(p)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StorePathError(f"store {p}: {parent} is a file, not a directory")
            break
    if not path.exists():
        return
    if path.is_dir():
        raise StorePathError(f"store {p} is a directory: give the path of a .duckdb file")
    head = b""
    for attempt in range(2):  # a store another process is creating right now may be empty for an instant
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise StorePathError(f"store {p}: cannot read it: {e.strerror or e}") from None
        if len(head) >= 12 or attempt:
            break
        time.sleep(0.25)
    if not head:
        raise StorePathError(f"store {p} is an empty file, not a DuckDB database: delete it "
                             f"(`gandissect run` creates the store)")
    if head[8:12] != DUCKDB_MAGIC:
        what = ("a SQLite database" if head.startswith(b"SQLite format 3") else
                "a text file" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "another kind of file")
        raise StorePathError(f"store {p} is {what}, not a DuckDB database: point --db / [store] path at a "
                             f".duckdb file (or a new path)")


def _connect_with_retry(p: str, read_only: bool, timeout: float, config: dict[str, Any]
                        ) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout
    if read_only or p == ":memory:":
        return _retry(p, read_only, timeout, deadline, config)
    with _writer_gate(p, timeout, deadline):
        return _retry(p, read_only, timeout, deadline, config)


def _retry(p: str, read_only: bool, timeout: float, deadline: float, config: dict[str, Any]
           ) -> duckdb.DuckDBPyConnection:
    delay = 0.002
    while True:
        err: Exception | str = "a writer is waiting"
        if not read_only or _gate_open(p):
            try:
                return duckdb.connect(p, read_only=read_only, config=config)
            except (duckdb.IOException, duckdb.ConnectionException) as e:
                if not _is_lock_error(e):
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise StorePathError(f"cannot open store {p}: {first}") from e
                err = e
        if time.monotonic() + delay > deadline:
            raise StoreLocked(f"store {p} stayed locked by another process for {timeout:g} s "
                              f"({'read-only' if read_only else 'write'} connect): {err}")
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 0.05)


def gate_path(p: str) -> str:
    """The writer-priority flock file beside the store."""
    return p + ".gate"


@contextlib.contextmanager
def _writer_gate(p: str, timeout: float, deadline: float) -> Iterator[None]:
    """Hold an exclusive flock on the gate while a writer waits for DuckDB's lock."""
    try:
        fd = os.open(gate_path(p), os.O_RDWR | os.O_CREAT, 0o666) if fcntl is not None else None
    except OSError:  # e.g. a gate file of another user: go on without priority
        fd = None
    if fd is None:
        yield
        return
    try:
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() + delay > deadline:
                    raise StoreLocked(f"store {p}: another writer kept it busy for {timeout:g} s") from None
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.02)
        yield
    finally:
        os.close(fd)  # releases the flock


def flock_held(path: str | Path) -> bool | None:
    """Whether another process holds an exclusive flock on `path` right now (probed without keeping a lock);
    None when the file cannot be opened or flock is unavailable."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _gate_open(p: str) -> bool:
    """False while a writer is waiting for the store (readers then hold back)."""
    return not flock_held(gate_path(p))


@contextlib.contextmanager
def session(path: str | os.PathLike | None = None, read_only: bool = False, *,
            timeout: float | None = None, config: Mapping[str, Any] | None = None
            ) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that is always closed on exit: `with session(read_only=True) as con: ...`."""
    con = connect(path, read_only, timeout=timeout, config=config)
    try:
        yield con
    finally:
        con.close()


_EMPTY: duckdb.DuckDBPyConnection | None = None


def empty_store() -> duckdb.DuckDBPyConnection:
    """A cursor on an in-memory store with the full schema and no rows (for "nothing computed yet")."""
    global _EMPTY
    if _EMPTY is None:
        con = duckdb.connect(":memory:", config=BASE_CONFIG)
        ensure_schema(con)
        _EMPTY = con
    return _EMPTY.cursor()


@contextlib.contextmanager
def _reader(path: str | os.PathLike | None, timeout: float | None, missing_ok: bool,
            config: Mapping[str, Any] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    p = store_path(path)
    if missing_ok and p != ":memory:" and not Path(p).exists():
        con = empty_store()
    else:
        con = connect(p, read_only=True, timeout=timeout, config=config)
    try:
        yield con
    finally:
        con.close()


def has_table(path: str | os.PathLike | None, table: str) -> bool:
    """Whether the store file exists and holds `table` (a store made by another tool may not)."""
    p = store_path(path)
    if p != ":memory:" and not Path(p).exists():
        return False
    with _reader(p, None, False) as con:
        return _one(con, "SELECT 1 FROM duckdb_tables() WHERE database_name = current_database() "
                         "AND schema_name = 'main' AND table_name = ?", [table]) is not None


def read(sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None,
         path: str | os.PathLike | None = None, *, timeout: float | None = None,
         missing_ok: bool = False) -> pl.DataFrame:
    """Run one query on a short read-only connection (retrying on the lock) and return a polars frame.

    `params` are bound (`?` or `$name`), never interpolated. With `missing_ok`, a missing store reads
    as an empty one (every table and view exists, with no rows).
    """
    with _reader(path, timeout, missing_ok) as con:
        return con.sql(sql, params=params).pl()


# ---------------------------------------------------------------- schema

def schema_fingerprint() -> str:
    """sha256 of schema.sql + the expanded views (`views_sql()`): a store whose recorded fingerprint matches
    needs no DDL; a change to a table's `latest` declaration changes it too."""
    h = hashlib.sha256(SCHEMA_SQL.read_bytes())
    h.update(views_sql().encode())
    return h.hexdigest()


_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_TEMPLATE = re.compile(r"^-- template:.*?\n(-- view:.*?)^-- end template\n", re.M | re.S)
_EACH = re.compile(r"^([ \t]*)-- each result table with ([\w, ]+):\n[ \t]*(.*)$", re.M)


def _fill(template: str, values: Mapping[str, str]) -> str:
    """`{name}` placeholders replaced by `values` (names of tables and columns from TABLES, never user input)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _words(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def latest_view_values(name: str) -> dict[str, str]:
    """The template's placeholders for `<name>_latest` (db/tables.py `Table.latest`): the latest done run per
    that key, found through run_layers_done when the key holds the layer, else through runs_done."""
    t = TABLES[name]
    per_layer = "layer" in t.latest
    grain = [*t.latest, *(k for k in t.key if k != "run_key" and k not in t.latest)]
    return {"table": name, "grain": _words(grain), "latest": _words(t.latest),
            "runs": "run_layers_done" if per_layer else "runs_done",
            "join": "run_key, model, layer" if per_layer else "run_key",
            "partition": ", ".join(f"t.{c}" for c in t.latest)}


@lru_cache(maxsize=1)
def views_sql() -> str:
    """views.sql with its `<table>_latest` template written out once per table in LATEST_TABLES."""
    def expand(m: re.Match[str]) -> str:
        return "\n".join(_fill(m.group(1), latest_view_values(name)) for name in LATEST_TABLES)
    return _TEMPLATE.sub(expand, VIEWS_SQL.read_text())


def expand_each(sql: str) -> str:
    """Write out every `-- each result table with COLUMNS:` line (audits.sql): the line after it once per
    result table that has those columns, `{table}` its name, joined by UNION ALL."""
    def expand(m: re.Match[str]) -> str:
        indent, columns, line = m.groups()
        tables = result_tables_with(tuple(c.strip() for c in columns.split(",")))
        return indent + f"\n{indent}UNION ALL ".join(_fill(line, {"table": t}) for t in tables)
    return _EACH.sub(expand, sql)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables, add missing columns, (re)create the views and comments. Idempotent.

    Cheap when the store already has this schema (one lookup of its fingerprint in store_meta).
    Column comments and grain sentences become DuckDB comments, so
    `select table_name, comment from duckdb_tables()` documents the store from SQL.
    """
    fp = schema_fingerprint()
    try:
        row = _one(con, "SELECT value FROM store_meta WHERE key = 'schema_sha256'")
    except duckdb.CatalogException:
        row = None
    if row is not None and row[0] == fp:
        return

    def apply() -> None:
        con.execute(SCHEMA_SQL.read_text())
        _add_missing_columns(con)
        _backfill(con)
        con.execute(views_sql())
        tables = parse_schema().values()
        con.execute(";\n".join([f"COMMENT ON TABLE {t.name} IS {_quote(t.grain)}" for t in tables]
                               + [f"COMMENT ON COLUMN {t.name}.{col} IS {_quote(text)}"
                                  for t in tables for col, text in t.comments.items()]))
        con.execute("INSERT OR REPLACE INTO store_meta VALUES ('schema_sha256', ?)", [fp])

    _transaction(con, apply)


def _add_missing_columns(con: duckdb.DuckDBPyConnection) -> None:
    have: dict[str, dict[str, str]] = {}
    for table, col, typ in con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main'").fetchall():
        have.setdefault(table, {})[col] = typ
    for t in TABLES.values():
        cols = have.get(t.name, {})
        for col, typ in t.columns:
            if col not in cols:
                con.execute(f'ALTER TABLE {t.name} ADD COLUMN "{col}" {typ}')
            elif cols[col] != typ:
                raise StoreError(f"store table {t.name}.{col} has type {cols[col]}, the schema says {typ}: "
                                 "rebuild the store (delete the file and run `gandissect run`)")


def run_layers_sql(where: str = "") -> str:
    """SELECT DISTINCT run_key, model, layer over every result table with a layer column: the rows
    run_layers holds (`where`, e.g. "run_key = $run_key", filters each table). The one derivation of the
    run -> layer relation: publish writes it, the migration back-fills it, an audit checks it."""
    cond = f" WHERE {where}" if where else ""
    parts = [f"SELECT run_key, model, layer FROM {name}{cond}" for name in result_tables_with(("model", "layer"))]
    return "SELECT DISTINCT run_key, model, layer FROM (" + " UNION ALL ".join(parts) + ")"


def _write_run_layers(c: duckdb.DuckDBPyConnection, run_key: str) -> None:
    c.execute("DELETE FROM run_layers WHERE run_key = $run_key", {"run_key": run_key})
    c.execute(f"INSERT INTO run_layers {run_layers_sql('run_key = $run_key')}", {"run_key": run_key})


def _backfill(con: duckdb.DuckDBPyConnection) -> None:
    """Migrate a store written by code that does not keep run_layers or the runs threshold columns (older
    code, or an older-version process writing after the migration: it re-records its own schema fingerprint,
    so the next write connection of this code comes here). run_layers is made to match the result rows, per
    row: rows with no result rows behind them go (an old start_run or fail_run leaves them), and every
    (run, model, layer) of a done run's rows is added (an old publish writes none, even for a run key that
    has some). The threshold columns are filled for runs whose params name a threshold (parsed by
    db.threshold, the one parser). A store already in order finds nothing to do."""
    derived = run_layers_sql()
    con.execute(f"DELETE FROM run_layers l WHERE NOT EXISTS (SELECT 1 FROM ({derived}) d "
                "WHERE d.run_key = l.run_key AND d.model = l.model AND d.layer = l.layer)")
    con.execute(f"INSERT INTO run_layers SELECT d.* FROM ({derived}) d "
                "WHERE d.run_key IN (SELECT run_key FROM runs WHERE status = 'done') "
                "AND NOT EXISTS (SELECT 1 FROM run_layers l WHERE l.run_key = d.run_key AND l.layer = d.layer)")
    todo = con.execute("SELECT run_key, params FROM runs WHERE threshold_mode IS NULL AND params IS NOT NULL "
                       "AND json_valid(params) AND params ->> 'threshold' IS NOT NULL").fetchall()
    sets = ", ".join(f"{col} = ?" for col in THRESHOLD_COLUMNS)
    for run_key, params in todo:
        cols = run_columns(json.loads(params))
        if cols["threshold_mode"] is not None:
            con.execute(f"UPDATE runs SET {sets} WHERE run_key = ?", [*cols.values(), run_key])


def _transaction(con: duckdb.DuckDBPyConnection, fn: Callable[[], T]) -> T:
    con.execute("BEGIN TRANSACTION")
    try:
        out = fn()
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # keep the original error if the rollback fails too
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return out


@contextlib.contextmanager
def _writer(path: str | os.PathLike | None, con: duckdb.DuckDBPyConnection | None,
            timeout: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    if con is not None:
        yield con
        return
    with session(path, read_only=False, timeout=timeout) as c:
        yield c


# ---------------------------------------------------------------- rows -> arrow

def _frame(table: Table, rows: Rows | Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows as an arrow table whose columns all belong to `table` (missing nullable ones allowed)."""
    if isinstance(rows, pl.DataFrame):
        frame = rows.to_arrow()
    elif isinstance(rows, pa.Table):
        frame = rows
    elif isinstance(rows, pa.RecordBatch):
        frame = pa.Table.from_batches([rows])
    else:
        rows = list(rows)
        keys: dict[str, None] = {}
        for r in rows:
            if not isinstance(r, Mapping):
                raise PublishError(f"{table.name}: rows must be mappings (column -> value), got {type(r).__name__}")
            keys.update(dict.fromkeys(r))
        frame = pa.table({k: [r.get(k) for r in rows] for k in keys}) if rows else pa.table({})
    unknown = [c for c in frame.column_names if c not in table.types]
    if unknown:
        raise PublishError(f"table {table.name} has no column(s) {', '.join(unknown)}; "
                           f"its columns: {', '.join(table.names)}")
    if len(set(frame.column_names)) != len(frame.column_names):
        raise PublishError(f"{table.name}: duplicate column names in rows")
    return frame


def _insert(con: duckdb.DuckDBPyConnection, table: Table, frame: pa.Table, verb: str = "INSERT",
            conflict: str = "") -> None:
    if frame.num_rows == 0:
        return
    cols = frame.column_names
    select = ", ".join(f'CAST("{c}" AS {table.types[c]})' for c in cols)
    name = "_gandissect_rows"
    con.register(name, frame)
    try:
        con.execute(f'{verb} INTO {table.name} ({", ".join(cols)}) SELECT {select} FROM {name} {conflict}')
    except duckdb.Error as e:
        raise PublishError(f"{table.name}: {str(e).splitlines()[0]}") from e
    finally:
        with contextlib.suppress(duckdb.Error):  # fails inside an aborted transaction; the rollback drops it
            con.unregister(name)


def _require(table: Table, frame: pa.Table, filled: Sequence[str] = ()) -> None:
    missing = [c for c in table.required if c not in frame.column_names and c not in filled]
    if missing and frame.num_rows:
        raise PublishError(f"{table.name}: rows lack required column(s) {', '.join(missing)}")


def _run_frame(table_name: str, run_key: str, rows: Rows | Iterable[Mapping[str, Any]]) -> tuple[Table, pa.Table]:
    if table_name not in TABLES:
        raise PublishError(f"no table {table_name!r}; tables: {', '.join(TABLES)}")
    table = TABLES[table_name]
    if not table.per_run:
        raise PublishError(f"{table_name} is not a per-run result table (use upsert_dimension, set_flag, "
                           "record_benchmarks or start_run)")
    frame = _frame(table, rows)
    if "run_key" in frame.column_names:
        keys = set(frame.column("run_key").to_pylist())
        if keys - {run_key}:
            raise PublishError(f"{table_name}: rows carry run_key(s) {sorted(map(str, keys - {run_key}))[:3]} "
                               f"but are published for {run_key}")
        frame = frame.drop(["run_key"])
    frame = frame.append_column("run_key", pa.array([run_key] * frame.num_rows, pa.string()))
    _require(table, frame)
    return table, frame


# ---------------------------------------------------------------- publish

def publish(table: str, run_key: str, rows: Rows, path: str | os.PathLike | None = None,
            con: duckdb.DuckDBPyConnection | None = None, *, audit: bool = True) -> int:
    """Replace the run's slice of one result table: delete where run_key = ?, insert rows; one transaction.

    Publishing the same rows twice leaves the same rows. The audits that read `table` run inside the
    transaction (a failure rolls it back). Returns the number of rows inserted. To make rows visible
    together with the run's 'done' status use `publish_many(..., finish=...)`.
    """
    return publish_many(run_key, {table: rows}, None, path, con, audit=audit)[table]


def publish_many(run_key: str, tables: Mapping[str, Rows], finish: Mapping[str, Any] | None = None,
                 path: str | os.PathLike | None = None, con: duckdb.DuckDBPyConnection | None = None, *,
                 audit: bool = True) -> dict[str, int]:
    """Publish several result tables of one run, and optionally finish it, in ONE transaction.

    `finish`: {"status": "done" | "failed", "seconds": float, "error": str} applied to the runs row.
    The run must exist (`start_run`). Audits reading the touched tables run before COMMIT, scoped to
    this run's rows where the audit reports run_key; any failure raises `AuditError` and rolls back.
    """
    prepared = {name: _run_frame(name, run_key, rows) for name, rows in tables.items()}
    if finish is not None:
        _check_finish(finish)

    def work(c: duckdb.DuckDBPyConnection) -> dict[str, int]:
        if _one(c, "SELECT 1 FROM runs WHERE run_key = ?", [run_key]) is None:
            raise PublishError(f"no run {run_key} in the store: call start_run first")
        counts = {}
        for name, (table, frame) in prepared.items():
            c.execute(f"DELETE FROM {name} WHERE run_key = ?", [run_key])
            _insert(c, table, frame)
            counts[name] = frame.num_rows
        _write_run_layers(c, run_key)
        touched = set(prepared) | {"run_layers"}
        if finish is not None:
            _finish(c, run_key, finish)
            touched.add("runs")
        if audit:
            _raise_on_failures(c, _audits_touching(touched, with_runs=finish is not None), run_key)
        return counts

    with _writer(path, con) as c:
        return _transaction(c, lambda: work(c))


def _check_finish(finish: Mapping[str, Any]) -> None:
    unknown = set(finish) - {"status", "seconds", "error"}
    if unknown:
        raise PublishError(f"finish takes status, seconds, error; got {', '.join(sorted(unknown))}")
    if finish.get("status") not in ("done", "failed"):
        raise PublishError(f"finish status must be 'done' or 'failed', got {finish.get('status')!r}")


def _finish(c: duckdb.DuckDBPyConnection, run_key: str, finish: Mapping[str, Any]) -> None:
    status = finish["status"]
    error = finish.get("error") if status == "failed" else None
    if status == "failed":
        error = error or "failed (no error text given)"
        _delete_results(c, run_key)
    c.execute("UPDATE runs SET status = ?, finished_at = ?, seconds = coalesce(?, seconds), error = ? "
              "WHERE run_key = ?", [status, now_utc(), finish.get("seconds"), error, run_key])


def _delete_results(c: duckdb.DuckDBPyConnection, run_key: str) -> None:
    for name in (*RESULT_TABLES, "run_layers"):
        c.execute(f"DELETE FROM {name} WHERE run_key = ?", [run_key])


# ---------------------------------------------------------------- runs

def start_run(run_key: str, analysis: str, *, name: str | None = None, model: str | None = None,
              layer: str | None = None, segmenter: str | None = None, n_samples: int | None = None,
              seed: int | None = None, params: Mapping[str, Any] | str | None = None,
              code_version: str | None = None, device: str | None = None,
              path: str | os.PathLike | None = None, con: duckdb.DuckDBPyConnection | None = None) -> None:
    """Record a run as 'running' (replacing any earlier row of the same key and deleting its old
    result rows, so a forced recompute never shows stale or partial results). The threshold columns come
    from params["threshold"] (db.threshold.run_columns; NULL without one). `params`: a dict (stored
    as canonical JSON) or JSON text."""
    if isinstance(params, str):
        try:
            parsed = json.loads(params)
        except ValueError as e:
            raise PublishError(f"runs.params must be JSON text: {e}") from e
        params_text = params
    else:
        parsed = params
        params_text = None if params is None else json.dumps(params, sort_keys=True, separators=(",", ":"))
    threshold = run_columns(parsed if isinstance(parsed, Mapping) else None)
    row = [run_key, analysis, name, model, layer, segmenter, n_samples, seed, params_text, code_version,
           "running", now_utc(), None, None, None, device, *threshold.values()]

    def work(c: duckdb.DuckDBPyConnection) -> None:
        _delete_results(c, run_key)
        c.execute("DELETE FROM runs WHERE run_key = ?", [run_key])
        c.execute(f"INSERT INTO runs ({', '.join(TABLES['runs'].names)}) VALUES ({', '.join('?' * len(row))})",
                  row)

    with _writer(path, con) as c:
        _transaction(c, lambda: work(c))


def finish_run(run_key: str, status: str, seconds: float | None = None, error: str | None = None, *,
               path: str | os.PathLike | None = None, con: duckdb.DuckDBPyConnection | None = None) -> None:
    """Mark a run done or failed (finished_at = now). A failed run's result rows are deleted."""
    finish = {"status": status, "seconds": seconds, "error": error}
    _check_finish(finish)

    def work(c: duckdb.DuckDBPyConnection) -> None:
        if _one(c, "SELECT 1 FROM runs WHERE run_key = ?", [run_key]) is None:
            raise PublishError(f"no run {run_key} in the store")
        _finish(c, run_key, finish)

    with _writer(path, con) as c:
        _transaction(c, lambda: work(c))


def fail_run(run_key: str, error: str, seconds: float | None = None, *,
             path: str | os.PathLike | None = None, con: duckdb.DuckDBPyConnection | None = None) -> None:
    """`finish_run(run_key, 'failed', seconds, error)`."""
    finish_run(run_key, "failed", seconds, error, path=path, con=con)


# ---------------------------------------------------------------- dimensions, flags, benchmarks

def _upsert(c: duckdb.DuckDBPyConnection, table: Table, frame: pa.Table) -> None:
    update = [col for col in frame.column_names if col not in table.key]
    action = ("DO UPDATE SET " + ", ".join(f'"{col}" = excluded."{col}"' for col in update)) if update \
        else "DO NOTHING"
    _insert(c, table, frame, "INSERT", f"ON CONFLICT ({', '.join(table.key)}) {action}")


def upsert_dimension(table: str, rows: Rows, path: str | os.PathLike | None = None,
                     con: duckdb.DuckDBPyConnection | None = None) -> int:
    """Insert or update rows of models / layers / segmenters / concepts by their key. Columns absent
    from `rows` keep their stored values on update. Returns the number of rows given."""
    if table not in DIMENSIONS:
        raise PublishError(f"{table} is not a dimension table ({', '.join(DIMENSIONS)})")
    t = TABLES[table]
    frame = _frame(t, rows)
    if "registered_at" in t.names and "registered_at" not in frame.column_names:
        frame = frame.append_column("registered_at", pa.array([now_utc()] * frame.num_rows, pa.timestamp("us")))
    _require(t, frame)
    with _writer(path, con) as c:
        _transaction(c, lambda: _upsert(c, t, frame))
    return frame.num_rows


def set_flag(model: str, layer: str, unit: int, flag: str, note: str | None = None, *,
             path: str | os.PathLike | None = None, con: duckdb.DuckDBPyConnection | None = None) -> None:
    """Flag a unit by hand (artifact | watermark | interesting | label); one short write transaction."""
    if flag not in FLAGS:
        raise PublishError(f"unknown flag {flag!r}; flags: {', '.join(FLAGS)}")
    if flag == "label" and not note:
        raise PublishError("a 'label' flag needs the label text as its note")

    def work(c: duckdb.DuckDBPyConnection) -> None:
        found = _one(c, "SELECT units FROM layers WHERE model = ? AND layer = ?", [model, layer])
        if found is None:
            raise PublishError(f"no layer {layer!r} of model {model!r} in the store")
        if not 0 <= int(unit) < found[0]:
            raise PublishError(f"unit {unit} out of range: {model} {layer} has {found[0]} units")
        frame = pa.table({"model": [model], "layer": [layer], "unit": [int(unit)], "flag": [flag],
                          "note": [note], "created_at": pa.array([now_utc()], pa.timestamp("us"))})
        _upsert(c, TABLES["unit_flags"], frame)

    with _writer(path, con) as c:
        _transaction(c, lambda: work(c))


def clear_flag(model: str, layer: str, unit: int, flag: str, *, path: str | os.PathLike | None = None,
               con: duckdb.DuckDBPyConnection | None = None) -> None:
    """Remove one flag of a unit (no error when it was not set)."""
    with _writer(path, con) as c:
        c.execute("DELETE FROM unit_flags WHERE model = ? AND layer = ? AND unit = ? AND flag = ?",
                  [model, layer, int(unit), flag])


def record_benchmarks(rows: Rows, path: str | os.PathLike | None = None,
                      con: duckdb.DuckDBPyConnection | None = None) -> int:
    """Insert or replace benchmark rows (bench, metric, value, unit, params, created_at) by (bench, metric).
    `params` may be a dict (stored as JSON); created_at defaults to now."""
    if not isinstance(rows, (pl.DataFrame, pa.Table)):
        rows = [{**r, "params": json.dumps(r["params"], sort_keys=True) if isinstance(r.get("params"), Mapping)
                 else r.get("params")} for r in rows]
    t = TABLES["benchmarks"]
    frame = _frame(t, rows)
    if "created_at" not in frame.column_names:
        frame = frame.append_column("created_at", pa.array([now_utc()] * frame.num_rows, pa.timestamp("us")))
    _require(t, frame)
    with _writer(path, con) as c:
        _transaction(c, lambda: _upsert(c, t, frame))
    return frame.num_rows


# ---------------------------------------------------------------- audits

@lru_cache(maxsize=1)
def audits() -> dict[str, str]:
    """audits.sql as {name: query}, in file order, its table lists written out (`expand_each`)."""
    out: dict[str, str] = {}
    name = None
    body: list[str] = []
    for line in expand_each(AUDITS_SQL.read_text()).splitlines() + ["-- audit: <end>"]:
        if line.startswith("-- audit:"):
            if name is not None:
                out[name] = "\n".join(body).strip().rstrip(";").strip()
            name, body = line.removeprefix("-- audit:").strip(), []
        elif name is not None and not line.startswith("-- ====="):
            body.append(line)
    return out


@lru_cache(maxsize=None)
def audit_tables(name: str) -> frozenset[str]:
    """The store tables an audit reads (whole-word matches of table names in its SQL)."""
    sql = audits()[name]
    return frozenset(t for t in TABLES if re.search(rf"\b{t}\b", sql))


def _audits_touching(tables: set[str], with_runs: bool) -> list[str]:
    picked = []
    for name in audits():
        refs = audit_tables(name)
        if refs & tables and (with_runs or "runs" not in refs):
            picked.append(name)
    return picked


_AUDIT_COLUMNS: dict[str, tuple[str, ...]] = {}


def _audit_columns(c: duckdb.DuckDBPyConnection, name: str) -> tuple[str, ...]:
    if name not in _AUDIT_COLUMNS:
        res = c.execute(f"SELECT * FROM ({audits()[name]}) LIMIT 0")
        _AUDIT_COLUMNS[name] = tuple(d[0] for d in res.description)
        res.fetchall()
    return _AUDIT_COLUMNS[name]


def _counts(c: duckdb.DuckDBPyConnection, names: Sequence[str], run_key: str | None) -> list[tuple[str, int]]:
    """Offending rows per audit, in one query; with `run_key`, audits that report a run_key column
    count only that run's rows."""
    if not names:
        return []
    parts = []
    for i, name in enumerate(names):
        where = " WHERE run_key = $run_key" if run_key is not None and "run_key" in _audit_columns(c, name) else ""
        parts.append(f"SELECT {i} AS i, count(*) AS n FROM ({audits()[name]}){where}")
    params = {"run_key": run_key} if run_key is not None and any("$run_key" in p for p in parts) else None
    found = dict(c.execute(" UNION ALL ".join(parts), params).fetchall())
    return [(name, int(found[i])) for i, name in enumerate(names)]


def _raise_on_failures(c: duckdb.DuckDBPyConnection, names: Sequence[str], run_key: str | None) -> None:
    failures = [(n, k) for n, k in _counts(c, names, run_key) if k]
    if failures:
        first = failures[0][0]
        example = _one(c, f"SELECT * FROM ({audits()[first]}) LIMIT 1")
        raise AuditError("audits failed: " + ", ".join(f"{n} ({k} rows)" for n, k in failures)
                         + f"; e.g. {first}: {example}", failures)


def run_audits(con: duckdb.DuckDBPyConnection | str | os.PathLike | None = None, *,
               names: Sequence[str] | None = None, only_failures: bool = True,
               raise_on_failure: bool = False) -> list[tuple[str, int]]:
    """Run audits.sql (all, or `names`) on the whole store and return (audit, offending rows) pairs:
    only the failing ones by default (an empty list means all is well). `con` may be an open
    connection or a store path (a short read-only connection is opened)."""
    if con is None or isinstance(con, (str, os.PathLike)):
        with _reader(con, None, missing_ok=False) as c:
            return run_audits(c, names=names, only_failures=only_failures, raise_on_failure=raise_on_failure)
    names = list(audits()) if names is None else list(names)
    unknown = [n for n in names if n not in audits()]
    if unknown:
        raise StoreError(f"unknown audit(s) {', '.join(unknown)}")
    if raise_on_failure:
        _raise_on_failures(con, names, None)
    results = _counts(con, names, None)
    return [(n, k) for n, k in results if k or not only_failures]

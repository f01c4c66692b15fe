"""The SQL guard: run SQL a user typed (CLI `gandissect sql`, the dashboard's SQL page) safely.

Reads the store through a short read-only connection opened with external access disabled and the
configuration locked, so the query cannot write, read other files, attach databases, load extensions
or turn any of that back on. Before anything runs, DuckDB's own parser splits the text: exactly one
statement, of type SELECT (which covers WITH, FROM-first, SHOW, DESCRIBE, SUMMARIZE) or EXPLAIN of a
SELECT. A timer interrupts queries that run past the time limit; at most `row_limit` rows come back;
the connection's memory is capped at `MEMORY_LIMIT` (1 GB) and 2 threads, locked, so one query cannot
exhaust the machine (it fails with "Out of Memory" instead). Every refusal or failure is a `GuardError`
with a one-line message.

    from db.guard import guarded_query
    df = guarded_query("select * from unit_labels limit 5", path="gandissect.duckdb")
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb
import polars as pl

from db.errors import BadInput
from db.store import BASE_CONFIG, StoreError, StoreNotFound, StorePathError, connect, ensure_schema, store_path

MEMORY_LIMIT = "1GB"  # DuckDB memory_limit of a guarded connection (the README states it)
THREADS = 2
GUARD_CONFIG = {
    **BASE_CONFIG,  # autoinstall / autoload of extensions off
    "enable_external_access": False,
    "memory_limit": MEMORY_LIMIT,
    "threads": THREADS,
    "lock_configuration": True,
}

ST = duckdb.StatementType
_REASON_TEXT = {  # statement type name -> why it is refused (names missing from older DuckDBs are skipped)
    "COPY": "COPY reads or writes files",
    "COPY_DATABASE": "COPY DATABASE writes a database",
    "ATTACH": "ATTACH opens another database",
    "DETACH": "DETACH changes the attached databases",
    "LOAD": "INSTALL / LOAD of extensions is not allowed",
    "EXTENSION": "extensions are not allowed",
    "SET": "SET / RESET / USE would change settings",
    "VARIABLE_SET": "SET VARIABLE would change session state",
    "EXPORT": "EXPORT DATABASE writes files",
    "PRAGMA": "PRAGMA (and IMPORT DATABASE) can change the database or settings",
    "INSERT": "INSERT writes to the store",
    "UPDATE": "UPDATE writes to the store",
    "DELETE": "DELETE writes to the store",
    "MERGE_INTO": "MERGE writes to the store",
    "CREATE": "CREATE changes the store",
    "CREATE_FUNC": "CREATE FUNCTION / MACRO changes the store",
    "DROP": "DROP changes the store",
    "ALTER": "ALTER changes the store",
    "TRANSACTION": "transaction control is not needed for a read",
    "VACUUM": "VACUUM changes the store",
    "ANALYZE": "ANALYZE changes the store's statistics",
    "CALL": "CALL runs table functions and commands (use SELECT * FROM fn(...))",
    "PREPARE": "PREPARE / EXECUTE are not allowed",
    "EXECUTE": "PREPARE / EXECUTE are not allowed",
}
_REASONS: dict[object, str] = {getattr(ST, k): v for k, v in _REASON_TEXT.items() if hasattr(ST, k)}
_ALLOWED = "only one read-only SELECT (or EXPLAIN SELECT) is allowed"
_EXPLAIN = re.compile(r"^\s*explain(\s+analyze)?\s+", re.IGNORECASE)
_COMMENTS = re.compile(r"(--[^\n]*|/\*.*?\*/)", re.DOTALL)
# statements DuckDB's parser files under another type (their refusal names them, not the other type)
_BY_KEYWORD = {
    "analyze": "ANALYZE changes the store's statistics",
    "checkpoint": "CHECKPOINT writes the store",
    "force checkpoint": "FORCE CHECKPOINT writes the store",
}


def _keyword(sql: str, n: int = 1) -> str:
    """The first `n` words of the text, lower case, comments and parentheses skipped."""
    words = _COMMENTS.sub(" ", sql).replace("(", " ").split()
    return " ".join(words[:n]).lower()


class GuardError(BadInput):
    """User SQL refused (`refused` is True) or failed; the message is one clear line."""

    def __init__(self, message: str, refused: bool = True) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class GuardedResult:
    frame: pl.DataFrame
    truncated: bool  # more rows existed than row_limit
    seconds: float


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_sql(sql: str) -> str:
    """The single statement's text if it is a read-only SELECT / EXPLAIN SELECT; else GuardError."""
    if not sql or not sql.strip():
        raise GuardError("refused: the query is empty")
    parser = duckdb.connect(":memory:")
    try:
        statements = parser.extract_statements(sql)
        if _keyword(sql) in ("pivot", "unpivot") and (len(statements) != 1 or statements[0].type != ST.SELECT):
            raise GuardError(f"refused: a {_keyword(sql).upper()} without an IN list first creates a type "
                             f"(a write); list the values: PIVOT t ON col IN ('a', 'b') USING ...; {_ALLOWED}")
        if len(statements) != 1:
            raise GuardError(f"refused: {len(statements)} statements given; {_ALLOWED}")
        st = statements[0]
        if st.type == ST.EXPLAIN:
            inner = _EXPLAIN.sub("", st.query, count=1)
            inner_st = parser.extract_statements(inner) if inner != st.query else []
            if len(inner_st) != 1 or inner_st[0].type != ST.SELECT:
                raise GuardError(f"refused: EXPLAIN of anything but a SELECT; {_ALLOWED}")
        elif st.type != ST.SELECT:
            reason = _BY_KEYWORD.get(_keyword(st.query)) or _BY_KEYWORD.get(_keyword(st.query, 2)) or _REASONS.get(st.type, f"{st.type.name} statements are not allowed")
            raise GuardError(f"refused: {reason}; {_ALLOWED}")
        return st.query
    except duckdb.ParserException as e:
        raise GuardError(f"syntax error: {_first_line(e).removeprefix('Parser Error: ')}", refused=False) from e
    finally:
        parser.close()


@contextlib.contextmanager
def _guarded_connection(path: str | os.PathLike | None, missing_ok: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    """Read-only store connection with GUARD_CONFIG; with `missing_ok` and no store file, an empty
    in-memory store under the same configuration."""
    p = store_path(path)
    if missing_ok and not Path(p).exists():
        con = duckdb.connect(":memory:", config={k: v for k, v in GUARD_CONFIG.items() if k != "lock_configuration"})
        ensure_schema(con)
        con.execute("SET lock_configuration = true")
    else:
        con = connect(p, read_only=True, config=GUARD_CONFIG)
    try:
        yield con
    finally:
        con.close()


def run_guarded(sql: str, path: str | os.PathLike | None = None, row_limit: int = 10_000,
                timeout_s: float = 30.0, *, missing_ok: bool = False) -> GuardedResult:
    """Check, then run user SQL read-only with external access off, a time limit and a row limit."""
    if isinstance(row_limit, bool) or not isinstance(row_limit, int) or row_limit < 1:
        raise GuardError(f"the row limit must be a whole number >= 1, got {row_limit!r}", refused=False)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) \
            or timeout_s <= 0:
        raise GuardError(f"the time limit must be a number of seconds > 0, got {timeout_s!r}", refused=False)
    query = check_sql(sql)
    t0 = time.monotonic()
    try:
        with _guarded_connection(path, missing_ok) as con:
            timer = threading.Timer(timeout_s, con.interrupt)
            timer.start()
            try:
                frame = con.sql(query).limit(row_limit + 1).pl()
            finally:
                timer.cancel()
                timer.join()
    except (StoreNotFound, StorePathError) as e:
        raise GuardError(str(e), refused=False) from e
    except duckdb.InterruptException as e:
        raise GuardError(f"the query ran past the time limit of {timeout_s:g} s and was stopped",
                         refused=False) from e
    except duckdb.PermissionException as e:
        raise GuardError(f"refused: the query reaches outside the store, and external access (files, "
                         f"network, extensions) is disabled here: {_first_line(e)}") from e
    except duckdb.OutOfMemoryException as e:
        raise GuardError(f"query failed: it needs more than the {MEMORY_LIMIT} memory limit of this connection: "
                         f"{_first_line(e)}", refused=False) from e
    except duckdb.Error as e:
        raise GuardError(f"query failed: {_first_line(e)}", refused=False) from e
    truncated = frame.height > row_limit
    return GuardedResult(frame.head(row_limit), truncated, time.monotonic() - t0)


def guarded_query(sql: str, path: str | os.PathLike | None = None, row_limit: int = 10_000,
                  timeout_s: float = 30.0, *, missing_ok: bool = False) -> pl.DataFrame:
    """`run_guarded(...).frame`: at most `row_limit` rows of one read-only SELECT."""
    return run_guarded(sql, path, row_limit, timeout_s, missing_ok=missing_ok).frame

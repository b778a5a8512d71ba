"""A user's own SQL (`skd query`, the web app's SQL box) on a connection that cannot change anything.

Deciding by statement type is not enough (`EXPLAIN ANALYZE COPY ... TO 'file'` is an EXPLAIN), so the
statement check is only the friendly message: the guarantee is the connection. It is read-only, has no
access to files or the network beyond the corpus itself, loads and installs no extension, and its
settings are locked, so no statement can write a file, attach a database or change a setting.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from .db import Store, _connect
from .errors import SkdError, first_line

READ_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA"}
# Settings of the guarded connection (lock_configuration last: after it nothing can be SET).
GUARDED = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
}


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """One clear line for statements that are not reads (the connection would refuse them anyway)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise SkdError(f"SQL error: {first_line(e)}") from None
    if not statements:
        raise SkdError("no SQL statement given")
    for st in statements:
        kind = st.type.name
        if kind not in READ_STATEMENTS:
            raise SkdError(f"`skd query` only reads; {kind} statements are refused")


@dataclass
class QueryResult:
    """Rows as DuckDB gives them (no polars or pyarrow needed, so `skd query` starts fast), or an Arrow
    table when asked for (parquet output)."""
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    arrow: Any = None

    @property
    def height(self) -> int:
        return self.arrow.num_rows if self.arrow is not None else len(self.rows)


def run_user_sql(path: Path, sql: str, arrow: bool = False, wait: float | None = None,
                 limit: int | None = None, timeout: float | None = None) -> QueryResult:
    """The result of a user's read-only SQL over the corpus at `path`, opened just for this query (a
    reader holds the file no longer than its query, so writers wait as little as possible); its first LIMIT
    rows when given (fetched, not computed whole: the web app's SQL box on a million rows). A query still
    running after TIMEOUT seconds is stopped: it would hold the file from every writer."""
    Store(path, read_only=True, wait=wait).close()  # the usual checks: exists, is a corpus, migrated
    con = _connect(Path(path), read_only=True, config=GUARDED)
    timer = threading.Timer(timeout, con.interrupt) if timeout else None
    if timer:
        timer.start()
    try:
        check_read_only(con, sql)
        rel = con.sql(sql)
        if rel is None:  # PRAGMAs that return nothing
            return QueryResult([], [], [])
        columns, types = list(rel.columns), [str(t) for t in rel.types]
        if arrow:
            return QueryResult(columns, types, [], rel.to_arrow_table())
        return QueryResult(columns, types, rel.fetchall() if limit is None else rel.limit(limit).fetchall())
    except duckdb.InterruptException:
        raise SkdError(f"the query ran past {timeout:g} s and was stopped") from None
    except duckdb.Error as e:
        raise SkdError(f"SQL error: {first_line(e)}") from None
    finally:
        if timer:
            timer.cancel()
        con.close()

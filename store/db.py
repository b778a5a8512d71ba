"""The corpus database: one DuckDB file, one writing process, migrations applied on open."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from .errors import LockedError, SchemaError, SkdError
from .migrations import LATEST, migrate, schema_version

DEFAULT_DB = "skd.duckdb"
READ_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA"}


def skd_version() -> str:
    try:
        return version("skd")
    except PackageNotFoundError:
        return "0+unknown"


def default_path() -> Path:
    return Path(os.environ.get("SKD_DB") or DEFAULT_DB)


def _lock_holder(message: str) -> str:
    """'PID 123 (skd generate ...)' from DuckDB's lock message, as far as it can be told."""
    m = re.search(r"PID (\d+)", message)
    if not m:
        return "another process"
    pid = m.group(1)
    try:
        cmd = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
    except OSError:
        cmd = ""
    return f"process {pid}" + (f" ({cmd[:120]})" if cmd else "")


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as e:
        if "lock" in str(e).lower():
            raise LockedError(
                f"database {path} is locked by {_lock_holder(str(e))}; wait for it to finish or use another --db"
            ) from None
        raise SkdError(f"cannot open database {path}: {str(e).splitlines()[0]}") from None
    except duckdb.Error as e:
        raise SkdError(f"cannot open database {path}: {str(e).splitlines()[0]}") from None


class Store:
    """A corpus. `Store(path)` opens (creating and migrating) for writing; `read_only=True` for queries."""

    def __init__(self, path: str | Path | None = None, read_only: bool = False):
        self.path = Path(path) if path is not None else default_path()
        self.read_only = read_only
        if read_only:
            if not self.path.exists():
                raise SkdError(f"no corpus at {self.path}; create one with `skd init --db {self.path}`")
            self.con = self._open_read_only()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.con = _connect(self.path, read_only=False)
            try:
                migrate(self.con)
            except Exception:
                self.con.close()
                raise

    def _open_read_only(self) -> duckdb.DuckDBPyConnection:
        con = _connect(self.path, read_only=True)
        try:
            found = schema_version(con)
        except Exception:
            con.close()
            raise
        if found == LATEST:
            return con
        con.close()
        if found == 0:
            raise SchemaError(f"{self.path} is not an skd corpus (no schema); create one with `skd init`")
        if found > LATEST:
            raise SchemaError(f"database schema version {found} is newer than this skd understands ({LATEST})")
        Store(self.path).close()  # an older corpus: migrate it once, then read
        return _connect(self.path, read_only=True)

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def files_dir(self) -> Path:
        """Where artifacts that belong to this corpus live (shards, reject reports)."""
        return self.path.with_name(self.path.name + ".d")

    @property
    def schema_version(self) -> int:
        return schema_version(self.con)

    # -- SQL --------------------------------------------------------------------------------------
    def query(self, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        """Run SQL and return a polars DataFrame (through Arrow)."""
        rel = self.con.sql(sql, params=params) if params else self.con.sql(sql)
        return rel.pl() if rel is not None else pl.DataFrame()

    def read_query(self, sql: str) -> pl.DataFrame:
        """Like `query`, but refuses anything that is not a read (SELECT, EXPLAIN, PRAGMA)."""
        try:
            statements = self.con.extract_statements(sql)
        except duckdb.Error as e:
            raise SkdError(f"SQL error: {str(e).splitlines()[0]}") from None
        if not statements:
            raise SkdError("no SQL statement given")
        for st in statements:
            kind = st.type.name
            if kind not in READ_STATEMENTS:
                raise SkdError(f"`skd query` only reads; {kind} statements are refused")
        try:
            return self.query(sql)
        except duckdb.Error as e:
            raise SkdError(f"SQL error: {str(e).splitlines()[0]}") from None

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        rows = self.con.execute(sql, params or []).fetchall()  # fetchall: DuckDB 2 wants results drained
        return rows[0][0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    @contextmanager
    def bulk_load(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """For large inserts whose row order carries no meaning: DuckDB may then write rows in any
        order, in parallel and without order bookkeeping (a 1M-row ingest takes about 20% less time)."""
        self.con.execute("SET preserve_insertion_order = false")
        try:
            yield self.con
        finally:
            self.con.execute("RESET preserve_insertion_order")

    # -- runs -------------------------------------------------------------------------------------
    def start_run(self, stage: str, config: dict[str, Any]) -> str:
        """Record a stage execution (committed at once, so a crash leaves a visible 'running' row)."""
        run_id = f"{stage}-{datetime.now():%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.con.execute(
            "INSERT INTO runs (run_id, stage, config, started_at, status, skd_version) "
            "VALUES (?, ?, ?, current_timestamp, 'running', ?)",
            [run_id, stage, json.dumps(config, default=str, sort_keys=True), skd_version()],
        )
        return run_id

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None,
                   error: str | None = None) -> None:
        self.con.execute(
            "UPDATE runs SET finished_at = current_timestamp, status = ?, summary = ?, error = ? "
            "WHERE run_id = ?",
            [status, json.dumps(summary or {}, default=str, sort_keys=True), error, run_id],
        )

    # -- overview ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        tables = [r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_name <> 'skd_schema' ORDER BY table_name").fetchall()]
        counts = {t: self.scalar(f'SELECT count(*) FROM "{t}"') for t in tables}
        per_kind = dict(self.con.execute(
            "SELECT kind, count(*) FROM items GROUP BY kind ORDER BY kind").fetchall())
        per_relation = dict(self.con.execute(
            "SELECT relation, count(*) FROM items WHERE kind = 'triple' "
            "GROUP BY relation ORDER BY count(*) DESC, relation").fetchall())
        per_domain = dict(self.con.execute(
            "SELECT coalesce(domain, '(none)'), count(*) FROM items GROUP BY 1 ORDER BY 2 DESC, 1").fetchall())
        return {
            "path": str(self.path),
            "schema_version": self.schema_version,
            "skd_version": skd_version(),
            "tables": counts,
            "items_per_kind": per_kind,
            "triples_per_relation": per_relation,
            "items_per_domain": per_domain,
        }

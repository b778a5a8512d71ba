"""The corpus database: one DuckDB file, one writing process, migrations applied on open."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from .catalog import Critics, Evals, Generations, Labels, Runs, Scores, Students
from .errors import LockedError, SchemaError, SkdError
from .migrations import LATEST, migrate, schema_version
from .redact import redact, redact_value
from .version import VERSION

if TYPE_CHECKING:
    import polars as pl

    from .analytics import Analytics
    from .batch_jobs import BatchJobs, Usage
    from .dedup import Dedup
    from .embeddings import Embeddings
    from .items import Items
    from .snapshots import Snapshots

Params = list[Any] | dict[str, Any] | None  # positional (?) or named ($name) parameters

DEFAULT_DB = "skd.duckdb"
DEFAULT_WAIT = 300.0
log = logging.getLogger("skd.store")


def skd_version() -> str:
    return VERSION


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
    cmd = redact(cmd)  # the whole command line first: cut, a password in a URL would no longer look like one
    return f"process {pid}" + (f" ({cmd[:120]})" if cmd else "")


def _connect(path: Path, read_only: bool, config: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only, config=dict(config or {}))
    except duckdb.IOException as e:
        if "conflicting lock" in str(e).lower():  # another process holds it (not a file system without locks)
            raise LockedError(
                f"database {path} is locked by {_lock_holder(str(e))}; wait for it to finish or use another --db"
            ) from None
        raise SkdError(f"cannot open database {path}: {str(e).splitlines()[0]}") from None
    except duckdb.Error as e:
        raise SkdError(f"cannot open database {path}: {str(e).splitlines()[0]}") from None


def default_wait() -> float:
    """Seconds to wait for a corpus that another process holds: `--wait` / SKD_WAIT, else 300."""
    try:
        return max(0.0, float(os.environ.get("SKD_WAIT") or DEFAULT_WAIT))
    except ValueError:
        raise SkdError(f"SKD_WAIT={os.environ['SKD_WAIT']!r} is not a number of seconds") from None


class Store:
    """A corpus. `Store(path)` opens (creating and migrating) for writing; `read_only=True` for queries.
    While another process holds the file, it waits up to `wait` seconds (default: `default_wait()`),
    saying once who holds it, then gives up with one line naming the holder."""

    def __init__(self, path: str | Path | None = None, read_only: bool = False, wait: float | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.read_only = read_only
        self._in_transaction = False
        if read_only and not self.path.exists():
            raise SkdError(f"no corpus at {self.path}; create one with `skd init --db {self.path}`")
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SkdError(f"cannot create the folder of {self.path}: {e.strerror}") from None
        deadline = time.monotonic() + (default_wait() if wait is None else wait)
        said = False
        while True:
            try:
                self.con = self._open_read_only() if read_only else self._open_for_writing()
                return
            except LockedError as e:
                if time.monotonic() >= deadline:
                    raise
                if not said:
                    log.warning("%s; waiting (up to --wait seconds)", str(e).split(";")[0])
                    said = True
                time.sleep(0.25)

    def _open_for_writing(self) -> duckdb.DuckDBPyConnection:
        con = _connect(self.path, read_only=False)
        try:
            migrate(con)
            reap_dead_runs(con)
        except Exception:
            con.close()
            raise
        return con

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
        # an older corpus: migrate it once, then read. No wait of its own: a held lock comes back to the caller's
        # loop, which waits the caller's --wait, not the default
        Store(self.path, wait=0).close()
        return _connect(self.path, read_only=True)

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- typed verbs per table (store/catalog.py) --------------------------------------------------
    @property
    def critics(self) -> Critics:
        return Critics(self)

    @property
    def students(self) -> Students:
        return Students(self)

    @property
    def evals(self) -> Evals:
        return Evals(self)

    @property
    def runs(self) -> Runs:
        return Runs(self)

    @property
    def labels(self) -> Labels:
        return Labels(self)

    @property
    def scores(self) -> Scores:
        return Scores(self)

    @property
    def batch_jobs(self) -> BatchJobs:
        from .batch_jobs import BatchJobs
        return BatchJobs(self)

    @property
    def usage(self) -> Usage:
        from .batch_jobs import Usage
        return Usage(self)

    @property
    def generations(self) -> Generations:
        return Generations(self)

    # The verbs below live in their own modules, imported on first use (`from store import Store` stays cheap).
    @property
    def snapshots(self) -> Snapshots:
        from .snapshots import Snapshots
        return Snapshots(self)

    @property
    def items(self) -> Items:
        from .items import Items
        return Items(self)

    @property
    def embeddings(self) -> Embeddings:
        from .embeddings import Embeddings
        return Embeddings(self)

    @property
    def dedup(self) -> Dedup:
        from .dedup import Dedup
        return Dedup(self)

    @property
    def analytics(self) -> Analytics:
        from .analytics import Analytics
        return Analytics(self)

    @property
    def files_dir(self) -> Path:
        """Where artifacts that belong to this corpus live (shards, reject reports)."""
        return self.path.with_name(self.path.name + ".d")

    @property
    def schema_version(self) -> int:
        return schema_version(self.con)

    # -- SQL --------------------------------------------------------------------------------------
    def query(self, sql: str, params: Params = None) -> pl.DataFrame:
        """Run SQL and return a polars DataFrame (through Arrow)."""
        import polars as pl  # here, not at the top: commands that never call it start faster
        rel = self.con.sql(sql, params=params) if params else self.con.sql(sql)
        return rel.pl() if rel is not None else pl.DataFrame()

    def scalar(self, sql: str, params: Params = None) -> Any:
        rows = self.con.execute(sql, params or []).fetchall()  # fetchall: DuckDB 2 wants results drained
        return rows[0][0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction. Inside another, it is part of that one (so a verb that writes in a transaction
        can commit together with the caller's other writes, e.g. its run's record)."""
        if self._in_transaction:
            yield self.con
            return
        self.con.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            yield self.con
        except BaseException:
            self._in_transaction = False
            self.con.execute("ROLLBACK")
            raise
        self._in_transaction = False
        try:  # DuckDB commits an aborted transaction as a silent rollback: a failure caught inside must not pass
            self.con.execute("SELECT 1")
        except duckdb.TransactionException:
            self.con.execute("ROLLBACK")
            raise SkdError("a write failed inside its transaction, so nothing of it was stored") from None
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
            "INSERT INTO runs (run_id, stage, config, started_at, status, skd_version, pid, host, process_start) "
            "VALUES (?, ?, ?, current_timestamp, 'running', ?, ?, ?, ?)",
            [run_id, stage, json.dumps(redact_value(config), default=str, sort_keys=True), skd_version(),
             os.getpid(), socket.gethostname(), process_start(os.getpid())],
        )
        return run_id

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None,
                   error: str | None = None) -> None:
        self.con.execute(
            "UPDATE runs SET finished_at = current_timestamp, status = ?, summary = ?, error = ? "
            "WHERE run_id = ?",
            [status, json.dumps(redact_value(summary or {}), default=str, sort_keys=True),
             redact(error) if error else None, run_id],
        )

    def runs_per_status(self) -> dict[str, int]:
        """Runs per status, a 'running' run whose process is gone counted as interrupted (a reader cannot
        mark it; the next writer does)."""
        rows = self.con.execute("SELECT status, pid, host, process_start FROM runs").fetchall()
        counts: dict[str, int] = {}
        for status, pid, host, start in rows:
            status = "interrupted" if status == "running" and is_dead(pid, host, start) else status or "?"
            counts[status] = counts.get(status, 0) + 1
        return dict(sorted(counts.items()))

    # -- overview ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        tables = [r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_name <> 'skd_schema' ORDER BY table_name").fetchall()]
        counts = dict(sorted(self.con.execute(" UNION ALL ".join(  # one query: each costs start-up a few ms
            f"SELECT '{t}', count(*) FROM \"{t}\"" for t in tables)).fetchall())) if tables else {}
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
            "runs_per_status": self.runs_per_status(),
            "generation_cost": self.generation_cost(),
        }

    def generation_cost(self) -> dict[str, Any]:
        """Tokens and dollars per teacher, and what made each snapshot (recorded in its funnel when cut)."""
        snaps = {name: json.loads(cost) for name, cost in self.con.execute(
            "SELECT name, json_extract(funnel, '$.generation_cost') FROM snapshots "
            "WHERE json_extract(funnel, '$.generation_cost') IS NOT NULL ORDER BY created_at").fetchall()}
        return {"per_teacher": [t for t in self.usage.per_teacher() if t["requests"]], "per_snapshot": snaps}


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), to tell it from a later process with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def is_dead(pid: int | None, host: str | None, start: str | None) -> bool:
    """Whether the process that started a run on this machine is gone (unknown owners count as alive)."""
    if pid is None or host != socket.gethostname():
        return False
    now = process_start(pid)
    return now is None or (start is not None and now != start)


def reap_dead_runs(con: duckdb.DuckDBPyConnection) -> int:
    """Mark 'running' runs whose process is gone as interrupted; returns how many."""
    rows = con.execute("SELECT run_id, pid, host, process_start FROM runs WHERE status = 'running'").fetchall()
    dead = [run_id for run_id, pid, host, start in rows if is_dead(pid, host, start)]
    for run_id in dead:
        con.execute("UPDATE runs SET status = 'interrupted', finished_at = current_timestamp, error = "
                    "'its process ended before it finished (killed or crashed); rerun to resume' "
                    "WHERE run_id = ?", [run_id])
    return len(dead)

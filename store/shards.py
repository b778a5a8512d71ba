"""Staging shards: how long stages hand results to the store without holding it open.

A stage writes a *batch*: one parquet file per target table (say `generations` and `items` for one
chunk of teacher requests) in a temporary folder, renamed into place whole, so a kill never leaves a
half-written batch under a real name. `ingest_shards` moves each batch into the database in one short
transaction that also records it in `ingested_shards`: a batch is ingested entirely, once, or not at
all, and its folder is deleted once it is in. The same folders are what a Ray Data job would write; the
catalogue ingests them the same way.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .db import Store
from .errors import SkdError
from .ingest import Staged, _quote, check_staged, insert_new_items, parquet_sql, record_rejects

# Provenance columns an items shard may carry next to the item fields; they go to item_sources.
SOURCE_COLUMNS = ("run_id", "request_id", "sample_index", "prompt_hash", "teacher", "params", "source")
# Tables a batch may fill, in the order they are ingested.
TARGETS = ("requests", "generations", "items", "scores", "embeddings", "dedup_clusters")
# A row of these is one fact: two processes doing the same stage at once (two `skd critic score` in two terminals,
# `skd run` beside a command) each write it, and only the first is stored (a second score row of an item doubled
# it in every snapshot cut with that critic)
KEYS = {"requests": ("request_id",), "generations": ("request_id", "sample_index"), "scores": ("item_id", "critic_id"),
        "embeddings": ("item_id", "model")}


class ShardWriter:
    """Writes batches of shards into `directory`, each batch atomically."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, tables: dict[str, pa.Table | pl.DataFrame], name: str | None = None) -> Path:
        unknown = set(tables) - set(TARGETS)
        if unknown:
            raise SkdError(f"unknown shard target(s) {', '.join(sorted(unknown))}")
        name = name or uuid.uuid4().hex[:16]
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for target, rows in tables.items():
            table = rows.to_arrow() if isinstance(rows, pl.DataFrame) else rows
            path = tmp / f"{target}.parquet"
            pq.write_table(table, path)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, final)
        return final


def _key(batch: Path) -> str:
    return f"shard:{batch.parent.name}/{batch.name}"


def pending_shards(store: Store, directory: str | Path) -> list[Path]:
    """Batches in `directory` that are not ingested yet, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    done = {r[0] for r in store.con.execute("SELECT shard FROM ingested_shards").fetchall()}
    batches = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".") and _key(p) not in done]
    return sorted(batches, key=lambda p: (p.stat().st_mtime_ns, p.name))


def ingest_shards(store: Store, directory: str | Path, run_id: str | None = None) -> int:
    """Ingest every pending batch, one transaction each; returns the rows ingested."""
    return sum(ingest_batch(store, batch, run_id) for batch in pending_shards(store, directory))


def ingest_batch(store: Store, batch: Path, run_id: str | None = None) -> int:
    """Ingest one batch, then delete its folder: `ingested_shards` records it, so a kill between the two leaves
    a folder that is never read again (a million embeddings were stored twice on disk, as shards and in the
    database)."""
    try:
        rows = _ingest_batch(store, batch, run_id)
    except duckdb.InterruptException:  # Ctrl-C inside the query: the user's stop, not a bad batch
        raise KeyboardInterrupt from None
    except duckdb.Error as e:
        raise SkdError(f"cannot ingest shard batch {batch}: {str(e).splitlines()[0]}") from None
    shutil.rmtree(batch, ignore_errors=True)
    return rows


def _ingest_batch(store: Store, batch: Path, run_id: str | None) -> int:
    rows = 0
    with store.bulk_load(), store.transaction() as con:
        for target in TARGETS:
            shard = batch / f"{target}.parquet"
            if not shard.is_file():
                continue
            if target == "items":
                rows += _ingest_items(store, shard, run_id)
            else:
                rows += int(con.execute(insert_sql(target, shard)).fetchall()[0][0])
        con.execute("INSERT INTO ingested_shards (shard, target, rows, run_id) VALUES (?, 'batch', ?, ?)",
                    [_key(batch), rows, run_id])
    store.con.execute("DROP TABLE IF EXISTS _checked")
    return rows


def insert_sql(target: str, shard: Path) -> str:
    """The shard's rows into TARGET, those whose key is stored already left out."""
    src = f"read_parquet('{_quote(shard)}')"
    key = KEYS.get(target)
    if not key:
        return f"INSERT INTO {target} BY NAME SELECT * FROM {src}"
    same = " AND ".join(f"t.{k} = s.{k}" for k in key)
    return (f"INSERT INTO {target} BY NAME SELECT s.* FROM {src} s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {same})")


def _ingest_items(store: Store, shard: Path, run_id: str | None) -> int:
    con = store.con
    check_staged(con, Staged(sql=parquet_sql(con, shard, exclude=SOURCE_COLUMNS)), None)
    insert_new_items(con)
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{_quote(shard)}')").fetchall()}
    pairs = [(c, f"s.{c}") for c in SOURCE_COLUMNS if c in cols]
    if "run_id" not in cols and run_id:
        pairs.append(("run_id", f"'{run_id}'"))
    names = "".join(f", {n}" for n, _ in pairs)
    exprs = "".join(f", {e}" for _, e in pairs)
    con.execute(f"""
        INSERT INTO item_sources (item_id, row_number{names})
        SELECT c.item_id, c.row_number{exprs}
        FROM _checked c JOIN read_parquet('{_quote(shard)}', file_row_number = true) s
          ON c.row_number = s.file_row_number + 1
        WHERE c.reason IS NULL""")
    record_rejects(con, run_id or f"shard:{shard.parent.name}", [])
    return int(store.scalar("SELECT count(*) FROM _checked WHERE reason IS NULL"))


def open_store(db_path: str | Path, wait: float | None = None) -> Store:
    """Open for writing, waiting (`--wait`, default 300 s) while another process holds the lock: a long
    stage's staged work is safe on disk meanwhile."""
    return Store(db_path, wait=wait)


def commit_batch(db_path: str | Path, writer: ShardWriter, tables: dict[str, pa.Table], name: str,
                 run_id: str) -> int:
    """Write one staging batch, then ingest it in a short transaction with the database opened just for it."""
    batch = writer.write(tables, name=name)
    with open_store(db_path) as s:
        return ingest_batch(s, batch, run_id)


@dataclass
class BatchJob:
    """Work a long stage hands to an engine: the pending ROWS, and a class whose instance, built once per worker
    from KWARGS (it loads a model), turns a batch of rows into rows of TABLE. The class and its arguments are all
    a worker needs, so the same job runs in this process or in a Ray actor pool (`map_batches`)."""
    rows: pa.Table
    fn: type
    kwargs: dict[str, Any]
    table: str
    chunk: int


Mapper = Callable[[BatchJob], Iterable[pa.Table]]


def local_mapper(job: BatchJob) -> Iterator[pa.Table]:
    """The job in this process: one instance, the rows chunk by chunk, in order."""
    fn = job.fn(**job.kwargs)
    for start in range(0, job.rows.num_rows, job.chunk):
        yield fn(job.rows.slice(start, job.chunk))


def stage_job(db_path: str | Path, run_id: str, job: BatchJob, mapper: Mapper = local_mapper,
              on_rows: Callable[[int], None] | None = None, summary: Callable[[], dict] = dict) -> None:
    """The loop of a long stage: each table the engine returns is committed as one staging batch by this process
    alone (the one writer), whichever engine computed it. The run is finished, 'ok' or 'failed', with
    `summary()`, whatever happens; a rerun reads what is still pending, so it resumes after a kill."""
    writer = ShardWriter(Path(str(db_path) + ".d") / "shards" / run_id.split("-")[0])
    status = "failed"
    try:  # nothing pending: no engine is started and no model is loaded
        for k, out in enumerate(mapper(job) if job.rows.num_rows else ()):
            commit_batch(db_path, writer, {job.table: out}, f"{run_id}-{k:09d}", run_id)
            if on_rows:
                on_rows(out.num_rows)
        status = "ok"
    except KeyboardInterrupt:  # the user stopped it; a rerun resumes (what `skd info` counts apart from failures)
        status = "interrupted"
        raise
    finally:
        with open_store(db_path) as s:
            s.finish_run(run_id, status, summary())

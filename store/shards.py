"""Staging shards: how long stages hand results to the store without holding it open.

A stage writes parquet shards (to a temporary name, then an atomic rename, so a kill never leaves a
half-written shard under a real name); `ingest_shards` moves them into the database, each in its own
short transaction that also records the shard in `ingested_shards`, so no shard is ingested twice.
The same shards are what a Ray Data job would write: the catalogue ingests them the same way.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .db import Store
from .errors import SkdError
from .ingest import Staged, _quote, check_staged, insert_new_items, parquet_sql, record_rejects

# Provenance columns an items shard may carry next to the item fields; they go to item_sources.
SOURCE_COLUMNS = ("run_id", "request_id", "sample_index", "prompt_hash", "teacher", "params", "source")
PLAIN_TARGETS = ("generations", "scores", "embeddings", "dedup_clusters")


class ShardWriter:
    """Writes shards for one target table into `directory`, atomically."""

    def __init__(self, directory: str | Path, target: str, prefix: str = "shard"):
        if target != "items" and target not in PLAIN_TARGETS:
            raise SkdError(f"unknown shard target {target!r}")
        self.directory = Path(directory)
        self.target = target
        self.prefix = prefix
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, rows: pa.Table | pl.DataFrame, name: str | None = None) -> Path:
        table = rows.to_arrow() if isinstance(rows, pl.DataFrame) else rows
        name = name or f"{self.prefix}-{uuid.uuid4().hex[:12]}"
        final = self.directory / f"{self.target}--{name}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return final


def shard_target(path: Path) -> str:
    target = path.name.split("--", 1)[0]
    if target != "items" and target not in PLAIN_TARGETS:
        raise SkdError(f"{path.name}: not a shard name (expected TARGET--NAME.parquet)")
    return target


def pending_shards(store: Store, directory: str | Path) -> list[Path]:
    """Shards in `directory` that are not ingested yet, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    done = {r[0] for r in store.con.execute("SELECT shard FROM ingested_shards").fetchall()}
    shards = [p for p in directory.glob("*--*.parquet") if _key(p) not in done]
    return sorted(shards, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _key(path: Path) -> str:
    return f"shard:{path.parent.name}/{path.name}"


def ingest_shards(store: Store, directory: str | Path, run_id: str | None = None) -> int:
    """Ingest every pending shard, one transaction each; returns rows ingested."""
    total = 0
    for shard in pending_shards(store, directory):
        total += ingest_shard(store, shard, run_id)
    return total


def ingest_shard(store: Store, shard: Path, run_id: str | None = None) -> int:
    target = shard_target(shard)
    con = store.con
    if target == "items":
        check_staged(con, Staged(sql=parquet_sql(con, shard, exclude=SOURCE_COLUMNS)), None)
    with store.transaction():
        if target == "items":
            rows = _ingest_items(store, shard, run_id)
        else:
            rows = int(con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM read_parquet('{_quote(shard)}')"
                                   ).fetchall()[0][0])
        con.execute("INSERT INTO ingested_shards (shard, target, rows, run_id) VALUES (?, ?, ?, ?)",
                    [_key(shard), target, rows, run_id])
    con.execute("DROP TABLE IF EXISTS _checked")
    return rows


def _ingest_items(store: Store, shard: Path, run_id: str | None) -> int:
    con = store.con
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
    record_rejects(con, run_id or f"shard:{shard.name}", [])
    return int(store.scalar("SELECT count(*) FROM _checked WHERE reason IS NULL"))

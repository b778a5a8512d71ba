import subprocess
import sys
import time

import duckdb
import polars as pl
import pytest

from store import SCHEMA_VERSION, LockedError, SchemaError, SkdError, Store, ingest_file
from store.migrations import migrate
from tests.conftest import EXAMPLES, ROOT, run_skd


def test_new_database_has_the_architecture_tables(db_path):
    with Store(db_path) as s:
        tables = set(s.query("SELECT table_name FROM information_schema.tables")["table_name"])
        assert s.schema_version == SCHEMA_VERSION
    assert {"runs", "items", "item_sources", "generations", "labels", "critics", "scores", "embeddings",
            "dedup_clusters", "snapshots", "snapshot_items", "students", "evals"} <= tables


def test_old_schema_database_is_migrated_on_open(db_path):
    con = duckdb.connect(str(db_path))
    migrate(con, target=1)
    con.execute("INSERT INTO items (item_id, kind, text) VALUES ('abc', 'text', 'kept across migrations')")
    con.close()
    with Store(db_path, read_only=True) as s:  # even a reader gets the corpus migrated first
        assert s.schema_version == SCHEMA_VERSION
        assert s.scalar("SELECT text FROM items WHERE item_id = 'abc'") == "kept across migrations"
        assert s.scalar("SELECT count(*) FROM ingested_shards") == 0


def test_newer_schema_and_foreign_databases_are_refused(db_path, tmp_path):
    Store(db_path).close()
    con = duckdb.connect(str(db_path))
    con.execute("INSERT INTO skd_schema VALUES (99, current_timestamp)")
    con.close()
    with pytest.raises(SchemaError, match="newer than this skd"):
        Store(db_path)
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).execute("CREATE TABLE t (a INT)").close()
    with pytest.raises(SchemaError, match="no skd schema"):
        Store(other)
    proc = run_skd("info", db=db_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "newer than this skd" in proc.stderr


def test_read_only_store_needs_an_existing_corpus(tmp_path):
    with pytest.raises(SkdError, match="no corpus at"):
        Store(tmp_path / "missing.duckdb", read_only=True)


HOLDER = """
import sys, time
from store import Store
s = Store(sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


def test_second_writer_fails_fast_naming_the_lock_holder(db_path):
    with Store(db_path) as s:
        ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "ready"
        t = time.monotonic()
        with pytest.raises(LockedError, match=rf"locked by process {holder.pid}\b.*wait for it"):
            Store(db_path)
        assert time.monotonic() - t < 1.0
        proc = run_skd("ingest", str(EXAMPLES / "mini.jsonl"), db=db_path)
        assert proc.returncode == 2
        assert proc.stderr.startswith("skd: error: database") and proc.stderr.count("\n") == 1
        assert str(holder.pid) in proc.stderr and "Traceback" not in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    with Store(db_path, read_only=True) as s:  # nothing was lost or corrupted
        assert s.scalar("SELECT count(*) FROM items") == 26


def test_query_returns_polars_and_refuses_writes(db_path):
    with Store(db_path) as s:
        ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
    with Store(db_path, read_only=True) as s:
        df = s.read_query("SELECT kind, count(*) AS n FROM items GROUP BY kind ORDER BY kind")
        assert isinstance(df, pl.DataFrame)
        assert dict(df.iter_rows()) == {"qa": 3, "rationale": 3, "text": 2, "triple": 18}
        for sql in ("DELETE FROM items", "DROP TABLE items", "COPY items TO '/tmp/x.csv'",
                    "SELECT 1; UPDATE items SET kind = 'x'"):
            with pytest.raises(SkdError, match="only reads"):
                s.read_query(sql)
        with pytest.raises(SkdError, match="SQL error"):
            s.read_query("SELECT * FROM nowhere")

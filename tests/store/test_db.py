import json
import subprocess
import sys
import time

import duckdb
import pytest

from store import SCHEMA_VERSION, LockedError, SchemaError, SkdError, Store, ingest_file
from store.migrations import migrate
from store.user_sql import run_user_sql
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


def test_a_database_killed_before_its_first_migration_committed_opens(db_path):
    con = duckdb.connect(str(db_path))  # what a kill inside the first migration leaves: the version table, empty
    con.execute("CREATE TABLE skd_schema (version INTEGER, applied_at TIMESTAMP)")
    con.close()
    with Store(db_path) as s:
        assert s.schema_version == SCHEMA_VERSION


def test_a_db_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    p = run_skd("init", "--db", str(tmp_path / "afile" / "c.duckdb"))
    assert p.returncode == 2 and "cannot create the folder of" in p.stderr and p.stderr.count("\n") == 1


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
time.sleep(float(sys.argv[2]))
"""


def hold(db_path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db_path), str(seconds)], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "ready"
    return holder


def test_second_writer_gives_up_after_its_wait_naming_the_lock_holder(db_path):
    with Store(db_path) as s:
        ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
    holder = hold(db_path, 60)
    try:
        t = time.monotonic()
        with pytest.raises(LockedError, match=rf"locked by process {holder.pid}\b.*wait for it"):
            Store(db_path, wait=0)
        assert time.monotonic() - t < 1.0
        t = time.monotonic()
        proc = run_skd("--wait", "1.5", "ingest", str(EXAMPLES / "mini.jsonl"), db=db_path)
        assert time.monotonic() - t > 1.5  # it waited as long as it was allowed
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        note, error = proc.stderr.splitlines()
        assert note.startswith("skd: database") and "waiting" in note and str(holder.pid) in note
        assert error.startswith("skd: error: database") and str(holder.pid) in error
    finally:
        holder.kill()
        holder.wait()
    with Store(db_path, read_only=True) as s:  # nothing was lost or corrupted
        assert s.scalar("SELECT count(*) FROM items") == 26


OLD_READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_reader_of_an_old_corpus_waits_its_own_wait_for_the_migration(db_path):
    """A reader migrates an older corpus first; while another process reads it, that migration waited the default
    (300 s) whatever the reader's own --wait said."""
    con = duckdb.connect(str(db_path))
    migrate(con, target=1)
    con.close()
    holder = subprocess.Popen([sys.executable, "-c", OLD_READER, str(db_path), "60"], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "ready"
        t = time.monotonic()
        with pytest.raises(LockedError, match=rf"locked by process {holder.pid}\b"):
            Store(db_path, read_only=True, wait=0.5)
        assert time.monotonic() - t < 5
    finally:
        holder.kill()
        holder.wait()
    with Store(db_path, read_only=True) as s:  # once the other reader is gone, it migrates
        assert s.schema_version == SCHEMA_VERSION


def test_writer_waits_for_a_long_reader_instead_of_failing(db_path, tmp_path):
    """A process that holds the corpus for 3 s (a long query) delays a writer; the writer then goes on."""
    with Store(db_path) as s:
        ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
    more = tmp_path / "more.jsonl"
    more.write_text('{"text": "Ice floats on water."}\n')
    holder = hold(db_path, 3)
    try:
        proc = run_skd("ingest", str(more), db=db_path)
        assert proc.returncode == 0, proc.stderr
        assert f"locked by process {holder.pid}" in proc.stderr and "waiting" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM items") == 27


def test_a_killed_run_shows_as_interrupted(db_path):
    """A run whose process is gone reads as interrupted (skd info), and the next writer marks it so."""
    killed = subprocess.run([sys.executable, "-c", "import os, sys\nfrom store import Store\n"
                             "s = Store(sys.argv[1]); s.start_run('generate', {}); s.close(); os._exit(9)",
                             str(db_path)], cwd=ROOT)
    assert killed.returncode == 9
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT status FROM runs") == "running"  # as the killed process left it
        assert s.runs_per_status() == {"interrupted": 1}
    proc = run_skd("info", "--json", db=db_path)
    assert json.loads(proc.stdout)["runs_per_status"] == {"interrupted": 1}
    with Store(db_path) as s:
        run_id = s.start_run("ingest", {})  # this process is alive: its run stays running
        assert dict(s.con.execute("SELECT stage, status FROM runs").fetchall()) == {
            "generate": "interrupted", "ingest": "running"}
        s.finish_run(run_id, "ok")


def test_query_returns_rows_and_refuses_writes(db_path):
    with Store(db_path) as s:
        ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
    r = run_user_sql(db_path, "SELECT kind, count(*) AS n FROM items GROUP BY kind ORDER BY kind")
    assert (r.columns, r.types) == (["kind", "n"], ["VARCHAR", "BIGINT"])
    assert dict(r.rows) == {"qa": 3, "rationale": 3, "text": 2, "triple": 18}
    assert run_user_sql(db_path, "SELECT 1 AS x", arrow=True).arrow.to_pydict() == {"x": [1]}
    for sql in ("DELETE FROM items", "DROP TABLE items", "COPY items TO '/tmp/x.csv'",
                "SELECT 1; UPDATE items SET kind = 'x'"):
        with pytest.raises(SkdError, match="only reads"):
            run_user_sql(db_path, sql)
    with pytest.raises(SkdError, match="SQL error"):
        run_user_sql(db_path, "SELECT * FROM nowhere")
    started = time.monotonic()  # a query with a deadline (the web app's SQL box) is stopped, not left holding the file
    with pytest.raises(SkdError, match="ran past 0.5 s and was stopped"):
        run_user_sql(db_path, "SELECT sum(a.range * b.range) FROM range(100000000) a, range(100000) b", timeout=0.5)
    assert time.monotonic() - started < 10
    assert run_user_sql(db_path, "SELECT 2 AS x", timeout=0.5).rows == [(2,)]


@pytest.mark.parametrize("sql", [
    "EXPLAIN ANALYZE COPY (SELECT * FROM items) TO '{out}'",
    "EXPLAIN ANALYZE COPY (SELECT * FROM items) TO '{out}' (FORMAT parquet)",
    "PRAGMA force_checkpoint",
    "EXPLAIN ANALYZE ATTACH '{out}' AS other",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "EXPLAIN ANALYZE SET threads = 1",
    "SELECT * FROM read_csv('{src}')",
    "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
    "PRAGMA create_fts_index('items', 'item_id', 'tail')",
    "SELECT * FROM glob('/etc/*')",
])
def test_user_sql_cannot_write_read_files_or_reach_the_network(db_path, tmp_path, sql):
    """The connection refuses what the statement check lets through (EXPLAIN ANALYZE of a write, PRAGMAs):
    no file written, no other file read, no extension downloaded, no setting changed."""
    with Store(db_path) as s:
        ingest_file(s, EXAMPLES / "mini.jsonl", "jsonl")
    home = tmp_path / "home"
    home.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    out, src = tmp_path / "out.csv", EXAMPLES / "mini.jsonl"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HOME", str(home))  # where DuckDB would put downloaded extensions
        with pytest.raises(SkdError):
            run_user_sql(db_path, sql.format(out=out, src=src))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside the corpus
    assert not any(home.rglob("*"))  # no extensions folder
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM items") == 26


def test_a_transaction_whose_write_failed_inside_does_not_pass_as_committed(db_path):
    """DuckDB answers COMMIT of an aborted transaction with a silent rollback."""
    with Store(db_path) as s:
        with pytest.raises(SkdError, match="nothing of it was stored"), s.transaction() as con:
            con.execute("INSERT INTO items (item_id, kind, text) VALUES ('a', 'text', 'kept?')")
            with pytest.raises(duckdb.Error):
                con.execute("INSERT INTO no_such_table VALUES (1)")  # caught here: the transaction is aborted
        assert s.scalar("SELECT count(*) FROM items") == 0
        with s.transaction() as con:  # the next one works
            con.execute("INSERT INTO items (item_id, kind, text) VALUES ('b', 'text', 'kept')")
        assert s.scalar("SELECT count(*) FROM items") == 1

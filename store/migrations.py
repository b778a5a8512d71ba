"""Numbered schema migrations. Append only: never edit a migration that has shipped.

Opening a database applies every migration newer than its recorded version, each in its own
transaction, so an older corpus is upgraded in place and a failed upgrade leaves it as it was.
"""

from __future__ import annotations

import duckdb

from .errors import SchemaError

M001_CORE = """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY, stage VARCHAR NOT NULL, config JSON, started_at TIMESTAMP,
    finished_at TIMESTAMP, status VARCHAR, summary JSON, error VARCHAR, skd_version VARCHAR
);
CREATE TABLE items (
    item_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, head VARCHAR, relation VARCHAR, tail VARCHAR,
    question VARCHAR, answer VARCHAR, choices VARCHAR[], rationale VARCHAR, text VARCHAR,
    domain VARCHAR, extra JSON, created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE item_sources (
    item_id VARCHAR NOT NULL, run_id VARCHAR, request_id VARCHAR, sample_index INTEGER,
    prompt_hash VARCHAR, teacher VARCHAR, params JSON, source VARCHAR, row_number BIGINT,
    created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE generations (
    request_id VARCHAR NOT NULL, run_id VARCHAR, sample_index INTEGER, prompt_hash VARCHAR,
    text VARCHAR, parsed_ok BOOLEAN, error VARCHAR, n_items INTEGER,
    created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE labels (
    item_id VARCHAR NOT NULL, kind VARCHAR, head VARCHAR, relation VARCHAR, tail VARCHAR,
    question VARCHAR, answer VARCHAR, rationale VARCHAR, text VARCHAR, label INTEGER NOT NULL,
    source VARCHAR NOT NULL, votes_pos INTEGER, votes_total INTEGER, extra JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE critics (
    critic_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, path VARCHAR, base_model VARCHAR,
    mode VARCHAR, metrics JSON, thresholds JSON, config JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE scores (
    item_id VARCHAR NOT NULL, critic_id VARCHAR NOT NULL, score DOUBLE,
    created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE embeddings (
    item_id VARCHAR NOT NULL, model VARCHAR NOT NULL, vector FLOAT[],
    created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE dedup_clusters (
    item_id VARCHAR NOT NULL, method VARCHAR NOT NULL, threshold DOUBLE, scope VARCHAR,
    cluster_id VARCHAR, is_representative BOOLEAN, run_id VARCHAR
);
CREATE TABLE snapshots (
    snapshot_id VARCHAR PRIMARY KEY, name VARCHAR UNIQUE NOT NULL, content_hash VARCHAR,
    recipe JSON, funnel JSON, stats JSON, created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE snapshot_items (snapshot_id VARCHAR NOT NULL, item_id VARCHAR NOT NULL, split VARCHAR);
CREATE TABLE students (
    student_id VARCHAR PRIMARY KEY, snapshot_id VARCHAR, base_model VARCHAR, path VARCHAR,
    config JSON, created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE evals (
    eval_id VARCHAR PRIMARY KEY, model VARCHAR, student_id VARCHAR, snapshot_id VARCHAR,
    metrics JSON, config JSON, created_at TIMESTAMP DEFAULT current_timestamp
);
"""

# Ingest bookkeeping: which staging shards are in (so none is ingested twice) and the rows an
# ingest rejected, with their reason, queryable next to the data they were meant for.
M002_INGEST = """
CREATE TABLE ingested_shards (
    shard VARCHAR PRIMARY KEY, target VARCHAR NOT NULL, rows BIGINT, run_id VARCHAR,
    ingested_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE rejects (
    run_id VARCHAR NOT NULL, row_number BIGINT, reason VARCHAR NOT NULL, raw VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
"""

# Generation provenance: every teacher request (prompt, sampling, recipe metadata) and per-sample details.
M003_REQUESTS = """
CREATE TABLE requests (
    request_id VARCHAR NOT NULL, run_id VARCHAR, recipe VARCHAR, model VARCHAR, prompt VARCHAR,
    prompt_hash VARCHAR, params JSON, meta JSON, created_at TIMESTAMP DEFAULT current_timestamp
);
ALTER TABLE generations ADD COLUMN teacher VARCHAR;
ALTER TABLE generations ADD COLUMN finish_reason VARCHAR;
ALTER TABLE generations ADD COLUMN n_tokens INTEGER;
ALTER TABLE generations ADD COLUMN logprob DOUBLE;
"""

# Which process runs a stage, so a run whose process died (killed, crashed) shows as interrupted.
M004_RUN_OWNERS = """
ALTER TABLE runs ADD COLUMN pid INTEGER;
ALTER TABLE runs ADD COLUMN host VARCHAR;
ALTER TABLE runs ADD COLUMN process_start VARCHAR;
"""

# What each request cost (the provider's usage, and dollars where the teacher has a price), and the provider
# batch jobs a run submitted: recorded before they are paid for, so a rerun resumes a job instead of paying again.
M005_BATCH_JOBS = """
ALTER TABLE requests ADD COLUMN prompt_tokens INTEGER;
ALTER TABLE requests ADD COLUMN completion_tokens INTEGER;
ALTER TABLE requests ADD COLUMN cost DOUBLE;
ALTER TABLE requests ADD COLUMN batch_key VARCHAR;
CREATE TABLE batch_jobs (
    batch_key VARCHAR NOT NULL, run_id VARCHAR, recipe VARCHAR, model VARCHAR, endpoint VARCHAR, url VARCHAR,
    request_ids VARCHAR[], input_file_id VARCHAR, job_id VARCHAR, status VARCHAR, counts JSON,
    output_file_id VARCHAR, error_file_id VARCHAR, error VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp, updated_at TIMESTAMP, closed_at TIMESTAMP
);
CREATE TABLE batch_failures (
    request_id VARCHAR NOT NULL, batch_key VARCHAR, error VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp
);
"""

# Judgements typed into `skd serve`: one row per (item, annotator), the latest typed kept; a NULL label is a skip.
# `client_id` makes a judgement the browser sends twice (a lost reply, a retry while the corpus was busy) land once;
# `typed_at` (ms, the browser's clock) keeps an older judgement arriving late from replacing a newer one.
M006_JUDGEMENTS = """
CREATE TABLE judgements (
    item_id VARCHAR NOT NULL, annotator VARCHAR NOT NULL, label INTEGER, client_id VARCHAR, sample VARCHAR,
    typed_at BIGINT, created_at TIMESTAMP DEFAULT current_timestamp
);
"""

# A snapshot's cluster sizes as they were when it was cut: a later dedup run rewrites its setting's clusters, and an
# export of the same snapshot must not change with it
M007_SNAPSHOT_CLUSTERS = """
ALTER TABLE snapshot_items ADD COLUMN cluster_size BIGINT;
"""

MIGRATIONS: list[str] = [M001_CORE, M002_INGEST, M003_REQUESTS, M004_RUN_OWNERS, M005_BATCH_JOBS, M006_JUDGEMENTS,
                         M007_SNAPSHOT_CLUSTERS]
LATEST = len(MIGRATIONS)


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """0 for an empty database; raises for a database that is not skd's."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "skd_schema" not in tables:
        if tables:
            raise SchemaError("this database has tables but no skd schema; is it an skd corpus?")
        return 0
    row = con.execute("SELECT max(version) FROM skd_schema").fetchall()[0]
    return int(row[0] or 0)


def migrate(con: duckdb.DuckDBPyConnection, target: int = LATEST) -> int:
    """Bring the schema up to `target`; returns the version found before."""
    found = schema_version(con)
    if found > LATEST:
        raise SchemaError(
            f"database schema version {found} is newer than this skd understands ({LATEST}); upgrade skd"
        )
    if found == 0:
        # IF NOT EXISTS: a kill before the first migration committed leaves this table, empty (version 0)
        con.execute("CREATE TABLE IF NOT EXISTS skd_schema (version INTEGER, applied_at TIMESTAMP)")
    for version in range(found + 1, target + 1):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(MIGRATIONS[version - 1])
            con.execute("INSERT INTO skd_schema VALUES (?, current_timestamp)", [version])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return found

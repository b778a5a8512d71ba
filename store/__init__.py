"""The corpus store: one DuckDB file, migrations, typed reads and writes, staging shards, locking."""

from .db import DEFAULT_DB, Store, default_path, skd_version
from .errors import LockedError, SchemaError, SkdError
from .ingest import FORMATS, IngestResult, ingest_file
from .items import ITEM_COLUMNS, KINDS
from .labels import LABEL_FORMATS, LabelResult, import_labels
from .migrations import LATEST as SCHEMA_VERSION
from .models import MINILM, SMOLLM2, resolve_model
from .shards import ShardWriter, commit_batch, ingest_batch, ingest_shards, open_store, pending_shards, stage_in_chunks

__all__ = [
    "DEFAULT_DB", "FORMATS", "ITEM_COLUMNS", "IngestResult", "KINDS", "LABEL_FORMATS", "LabelResult", "LockedError",
    "MINILM", "SCHEMA_VERSION", "SMOLLM2", "SchemaError", "ShardWriter", "SkdError", "Store", "commit_batch",
    "default_path", "import_labels", "ingest_batch", "ingest_file", "ingest_shards", "open_store",
    "pending_shards", "resolve_model", "skd_version", "stage_in_chunks",
]

"""The corpus store: one DuckDB file, migrations, typed reads and writes, staging shards, locking.

Names are imported from their modules on first use (PEP 562), so `from store import SkdError, Store`
costs DuckDB only, not pyarrow and polars: commands like `skd info` and `skd query` start in a blink.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    ".catalog": ("user_filter", "where_sql"),
    ".db": ("DEFAULT_DB", "Store", "default_path", "skd_version"),
    ".errors": ("LockedError", "SchemaError", "SkdError"),
    ".files": ("file_digest", "write_atomic"),
    ".ingest": ("IngestResult", "ingest_file"),
    ".items": ("EMBEDDED_COLUMNS", "EXPORTED_COLUMNS", "FORMATS", "ITEM_COLUMNS", "KINDS", "LABEL_FORMATS", "SCOPES",
               "SAID", "SCORED_COLUMNS", "SIBLINGS", "TEACHER_NLL", "sibling_key"),
    ".labels": ("LabelResult", "import_labels"),
    ".migrations": ("SCHEMA_VERSION",),
    ".models": ("MINILM", "SMOLLM2", "model_prompt", "pad_with_eos", "resolve_model"),
    ".shards": ("BatchJob", "Mapper", "ShardWriter", "commit_batch", "ingest_batch", "ingest_shards", "local_mapper",
                "open_store", "pending_shards", "stage_job"),
    ".slices": ("Slice",),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}
__all__ = [
    "BatchJob", "DEFAULT_DB", "EMBEDDED_COLUMNS", "EXPORTED_COLUMNS", "FORMATS", "ITEM_COLUMNS", "IngestResult",
    "KINDS", "LABEL_FORMATS", "LabelResult", "LockedError", "MINILM", "Mapper", "SAID", "SCHEMA_VERSION", "SCOPES",
    "SCORED_COLUMNS", "SMOLLM2", "SIBLINGS", "SchemaError", "ShardWriter", "SkdError", "Slice", "Store", "TEACHER_NLL",
    "commit_batch",
    "default_path", "file_digest", "import_labels", "ingest_batch", "ingest_file", "ingest_shards", "local_mapper",
    "model_prompt",
    "open_store",
    "pad_with_eos", "pending_shards", "resolve_model", "sibling_key", "skd_version", "stage_job", "user_filter",
    "where_sql",
    "write_atomic",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE[name], __name__), "LATEST" if name == "SCHEMA_VERSION" else name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .catalog import user_filter, where_sql
    from .db import DEFAULT_DB, Store, default_path, skd_version
    from .errors import LockedError, SchemaError, SkdError
    from .ingest import IngestResult, ingest_file
    from .items import (
        EMBEDDED_COLUMNS,
        EXPORTED_COLUMNS,
        FORMATS,
        ITEM_COLUMNS,
        KINDS,
        LABEL_FORMATS,
        SAID,
        SCOPES,
        SCORED_COLUMNS,
        SIBLINGS,
        TEACHER_NLL,
        sibling_key,
    )
    from .labels import LabelResult, import_labels
    from .migrations import LATEST as SCHEMA_VERSION
    from .models import MINILM, SMOLLM2, model_prompt, pad_with_eos, resolve_model
    from .shards import (
        BatchJob,
        Mapper,
        ShardWriter,
        commit_batch,
        ingest_batch,
        ingest_shards,
        local_mapper,
        open_store,
        pending_shards,
        stage_job,
    )
    from .slices import Slice

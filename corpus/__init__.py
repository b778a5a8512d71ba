"""Embeddings, dedup (exact + semantic), diversity statistics, queries, snapshots, export and Hub push."""

from .dedup import METHODS, SCOPES, DedupResult, dedup
from .embed import EmbedSummary, embed_items, load_vectors
from .export import FORMATS, export_snapshot, snapshot_dataset, snapshot_frame
from .hub import push_snapshot
from .snapshot import (
           SnapshotRecipe,
           create_snapshot,
           diff_snapshots,
           headline,
           list_snapshots,
           parse_split,
           snapshot_row,
)
from .stats import corpus_stats, slice_sql

__all__ = ["FORMATS", "METHODS", "SCOPES", "DedupResult", "EmbedSummary", "SnapshotRecipe", "corpus_stats",
           "create_snapshot", "dedup", "diff_snapshots", "embed_items", "export_snapshot", "headline",
           "list_snapshots", "load_vectors", "parse_split", "push_snapshot", "slice_sql", "snapshot_dataset",
           "snapshot_frame", "snapshot_row"]

"""Embeddings, dedup (exact + semantic), diversity statistics, queries, snapshots, export and Hub push."""

from .dedup import METHODS, SCOPES, DedupConfig, DedupResult, dedup
from .embed import EmbedSummary, embed_items
from .export import FORMATS, export_snapshot, snapshot_dataset, snapshot_frame
from .hub import push_snapshot
from .snapshot import SliceSpec, SnapshotRecipe, create_snapshot, diff_snapshots, headline, list_snapshots, snapshot_row
from .stats import corpus_stats

__all__ = ["FORMATS", "METHODS", "SCOPES", "DedupConfig", "DedupResult", "EmbedSummary", "SliceSpec",
           "SnapshotRecipe", "corpus_stats", "create_snapshot", "dedup", "diff_snapshots", "embed_items",
           "export_snapshot", "headline", "list_snapshots", "push_snapshot", "snapshot_dataset",
           "snapshot_frame", "snapshot_row"]
